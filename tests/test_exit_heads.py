"""Exit heads (mrl/heads.py ExitHead): a residual linear map on one depth's pooled vector.

The reference for every embedding is computed here by hand from `transformers` outputs (the
hidden state of block k, mean-pooled over the mask, then ``(I + W) x + b``), never from the
Encoder being tested. Training tests run train.py on the tiny random BERT.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402
from mrl.config import parse_config  # noqa: E402
from mrl.heads import ExitHead  # noqa: E402
from mrl.model import Encoder  # noqa: E402
from mrl.saved_model import EXIT_HEADS_FILE  # noqa: E402
from tests.test_train import (  # noqa: E402,F401 (one_thread: the module's autouse fixture)
    assert_same_weights,
    one_thread,
    scored_pairs,
    simulate_crash,
)

TEXTS = ["the cat sat on the mat", "a dog ran", "the quick brown fox jumps over the lazy dog", "hello"]


def pooled_by_hand(folder: Path, texts: list[str], depth: int) -> torch.Tensor:
    """Mean of block ``depth``'s hidden states over each text's tokens: (N, D). BERT has no
    final norm, so this is what a model cut to ``depth`` blocks outputs."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    features = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**features, output_hidden_states=True).hidden_states[depth]  # (N, S, D)
    mask = features["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


def random_head(dim: int, seed: int) -> ExitHead:
    head = ExitHead(dim)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.linear.weight.copy_(0.2 * torch.randn(dim, dim, generator=generator))
        head.linear.bias.copy_(0.5 * torch.randn(dim, generator=generator))
    return head


@pytest.fixture()
def headed(tiny_model_dir) -> tuple[Encoder, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """The tiny 3-block model with random (non-identity) heads at depths 1 and 2, and their
    maps as plain tensors (weight I + W, bias b)."""
    encoder = Encoder(str(tiny_model_dir))
    encoder.add_exit_heads([1, 2])
    maps = {}
    for depth in (1, 2):
        head = random_head(encoder.dim, seed=depth)
        encoder.exit_heads[str(depth)] = head
        maps[depth] = (
            head.linear.weight.detach() + torch.eye(encoder.dim),
            head.linear.bias.detach().clone(),
        )
    return encoder, maps


def test_a_fresh_head_is_the_identity(tiny_model_dir):
    plain = Encoder(str(tiny_model_dir))
    with_heads = Encoder(str(tiny_model_dir))
    with_heads.add_exit_heads([1, 2, 3])
    for layers in (1, 2, 3):
        a = plain.encode(TEXTS, layers=layers, normalize=False)
        b = with_heads.encode(TEXTS, layers=layers, normalize=False)
        assert torch.equal(a, b)


def test_each_depth_goes_through_its_own_affine_map(headed, tiny_model_dir):
    encoder, maps = headed
    every = encoder.encode(TEXTS, all_layers=True, normalize=False)  # (3, N, D)
    for depth in (1, 2, 3):
        x = pooled_by_hand(tiny_model_dir, TEXTS, depth)
        expected = x @ maps[depth][0].T + maps[depth][1] if depth in maps else x  # depth 3: no head
        cut = encoder.encode(TEXTS, layers=depth, normalize=False)
        torch.testing.assert_close(cut, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(every[depth - 1], expected, atol=1e-5, rtol=1e-5)


def test_packed_and_bucketed_forwards_apply_the_heads_like_the_padded_one(headed, tiny_model_dir):
    encoder, maps = headed
    features = encoder.tokenize(TEXTS)
    encoder.eval()
    with torch.no_grad():
        padded = encoder(features, all_layers=True)
        for mode in ("pack", "buckets"):
            encoder.padding_free = mode
            torch.testing.assert_close(encoder(features, all_layers=True), padded, atol=1e-5, rtol=1e-5)
    encoder.padding_free = "off"


def test_the_head_gets_gradients_and_the_block_below_it_too(headed):
    encoder, _ = headed
    encoder.train()
    out = encoder(encoder.tokenize(TEXTS), all_layers=True)  # (3, N, D)
    out[1].sum().backward()  # depth 2 only
    assert encoder.exit_heads["2"].linear.weight.grad.abs().sum() > 0

    def untouched(p: torch.nn.Parameter) -> bool:  # no gradient, or an exact zero one
        return p.grad is None or not p.grad.any()

    assert untouched(encoder.exit_heads["1"].linear.weight)  # depth 1's vector was not used
    first_block = next(encoder.model.encoder.layer[0].parameters())
    assert not untouched(first_block)
    assert all(untouched(p) for p in encoder.model.encoder.layer[2].parameters())  # above depth 2


def test_save_and_load_keep_every_head(headed, tmp_path):
    encoder, _ = headed
    encoder.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "mrl_config.json").read_text())["exit_heads"] == [1, 2]
    assert set(load_file(str(tmp_path / "m" / EXIT_HEADS_FILE))) == {
        f"{d}.linear.{p}" for d in (1, 2) for p in ("weight", "bias")
    }
    # The full model has no head at its last depth, so nothing after pooling in modules.json.
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling"]
    again = Encoder(str(tmp_path / "m"))
    torch.testing.assert_close(
        again.encode(TEXTS, all_layers=True, normalize=False),
        encoder.encode(TEXTS, all_layers=True, normalize=False),
        atol=0,
        rtol=0,
    )


@pytest.mark.parametrize("k", [1, 2])
def test_a_cut_model_writes_its_head_as_a_dense_module(headed, tiny_model_dir, tmp_path, k):
    encoder, maps = headed
    encoder.save_truncated(tmp_path / "cut", k)
    folder = tmp_path / "cut"
    modules = json.loads((folder / "modules.json").read_text())
    assert modules[2]["type"] == "sentence_transformers.models.Dense"
    # Read the Dense files without our loader: the map a sentence-transformers user gets.
    dense = load_file(str(folder / modules[2]["path"] / "model.safetensors"))
    torch.testing.assert_close(dense["linear.weight"], maps[k][0])
    torch.testing.assert_close(dense["linear.bias"], maps[k][1])
    # The head of the new last depth is no longer an exit head; the shallower ones still are.
    assert (folder / EXIT_HEADS_FILE).exists() == (k > 1)
    cut = Encoder(str(folder))
    # Loaded here, the Dense is depth k's exit head again, so a shallower cut skips it.
    assert cut.num_layers == k and cut.head is None
    assert set(cut.exit_heads) == {str(d) for d in range(1, k + 1)}
    expected = pooled_by_hand(tiny_model_dir, TEXTS, k) @ maps[k][0].T + maps[k][1]
    torch.testing.assert_close(cut.encode(TEXTS, normalize=False), expected, atol=1e-5, rtol=1e-5)
    # A cut of the cut to depth 1 still goes through depth 1's head.
    if k == 2:
        one = pooled_by_hand(tiny_model_dir, TEXTS, 1) @ maps[1][0].T + maps[1][1]
        torch.testing.assert_close(cut.encode(TEXTS, layers=1, normalize=False), one, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ train.py


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    return {
        "train": scored_pairs(folder / "train.csv", 64, seed=1),
        "dev": scored_pairs(folder / "sts-dev.csv", 24, seed=2),
    }


def heads_args(model: Path, data: dict[str, Path]) -> list[str]:
    return [
        "--model", str(model),
        "--train-data", str(data["train"]),
        "--eval-data", str(data["dev"]),
        "--max-steps", "6",
        "--batch-size", "8",
        "--dims", "32", "16",
        "--2d", "random",
        "--n-layers-per-step", "-1",
        "--layer-distill", "kl",
        "--exit-heads", "shallow",
        "--eval-every", "3",
        "--log-every", "2",
        "--save-every", "3",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def heads_run(tiny_model_dir, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "heads"
    train.main([*heads_args(tiny_model_dir, data), "--output-dir", str(out)])
    return out


def test_training_moves_the_heads_at_their_own_learning_rate(heads_run, tiny_model_dir):
    heads = load_file(str(heads_run / "model" / EXIT_HEADS_FILE))
    assert set(heads) == {f"{d}.linear.{p}" for d in (1, 2) for p in ("weight", "bias")}
    assert all(t.abs().max() > 0 for t in heads.values())  # they left the identity
    # AdamW moves a weight by about lr per step: after 6 steps at 1e-3 (with warmup), a head
    # moved far more than the encoder's weights at 2e-5 did.
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    end = load_file(str(heads_run / "model" / "model.safetensors"))
    trunk_move = max((end[k] - start[k]).abs().max().item() for k in end if k in start)
    assert heads["1.linear.weight"].abs().max().item() > 10 * trunk_move
    config = json.loads((heads_run / "config.json").read_text())
    assert config["exit_heads"] == "shallow" and config["exit_head_lr"] == 1e-3
    card = (heads_run / "model" / "README.md").read_text()
    assert "| exit heads | `--exit-heads shallow`, lr 0.001, trained with the model |" in card


def test_resume_restores_the_heads_exactly(heads_run, tmp_path):
    b = tmp_path / "B"  # the uninterrupted run's copy, cut back to its step-3 checkpoint
    shutil.copytree(heads_run, b)
    simulate_crash(b, keep_step=3)
    train.main(["--output-dir", str(b), "--resume"])
    assert "resuming at step 3" in (b / "train.log").read_text()
    assert_same_weights(heads_run, b)
    ha, hb = (load_file(str(run / "model" / EXIT_HEADS_FILE)) for run in (heads_run, b))
    assert all(torch.equal(ha[key], hb[key]) for key in ha)


def test_a_separate_model_gets_a_head_at_its_last_depth_only(tiny_model_dir, data, tmp_path):
    out = tmp_path / "alone"
    args = heads_args(tiny_model_dir, data)
    args = [
        a for a in args if a not in ("--2d", "random", "--n-layers-per-step", "-1", "--layer-distill", "kl")
    ]
    args[args.index("shallow")] = "all"
    train.main([*args, "--max-steps", "2", "--output-dir", str(out)])
    assert not (out / "model" / EXIT_HEADS_FILE).exists()
    modules = json.loads((out / "model" / "modules.json").read_text())
    assert modules[2]["type"] == "sentence_transformers.models.Dense"  # the last depth's head
    # Loaded again, it is the head of depth 3 and of no other depth.
    again = Encoder(str(out / "model"))
    assert set(again.exit_heads) == {"3"} and again.head is None
    plain = Encoder(str(out / "model"))
    plain.exit_heads = None
    for layers in (1, 2):
        assert torch.equal(again.encode(TEXTS, layers=layers), plain.encode(TEXTS, layers=layers))
    assert not torch.equal(again.encode(TEXTS), plain.encode(TEXTS))


@pytest.mark.parametrize(
    ("extra", "contains"),
    [
        (["--exit-heads", "shallow"], "--exit-heads shallow: without --2d"),
        (["--exit-heads", "all", "--exit-head-lr", "0"], "--exit-head-lr 0: must be > 0"),
        (["--exit-heads", "all", "--exit-head-lr", "nan"], "--exit-head-lr nan: must be a finite number"),
        (["--exit-head-detach"], "--exit-head-detach needs --exit-heads shallow|all"),
    ],
)
def test_bad_exit_head_flags_are_one_line_errors(extra, contains):
    # The parser's refusal, which train.main prints as its one error line (tests/test_faults.py).
    with pytest.raises(ValueError) as info:
        parse_config(extra)
    assert contains in str(info.value) and "\n" not in str(info.value)


def test_detached_heads_leave_the_encoders_training_exactly_as_without_them(tiny_model_dir, data, tmp_path):
    """--exit-head-detach: the heads learn from the same losses on detached vectors and are
    clipped on their own, so the transformer's weights equal a run without heads, bit for bit,
    also when dims are sampled (the heads' loss replays the step's draws)."""
    args = heads_args(tiny_model_dir, data)
    cut = args.index("--exit-heads")
    plain = [*args[:cut], *args[cut + 2 :], "--n-dims-per-step", "1", "--max-steps", "4"]
    train.main([*plain, "--output-dir", str(tmp_path / "plain")])
    train.main(
        [*plain, "--exit-heads", "shallow", "--exit-head-detach", "--output-dir", str(tmp_path / "det")]
    )
    assert_same_weights(tmp_path / "plain", tmp_path / "det")
    heads = load_file(str(tmp_path / "det" / "model" / EXIT_HEADS_FILE))
    assert all(t.abs().max() > 0 for t in heads.values())  # they learned
    logged = {
        tag
        for line in (tmp_path / "det" / "metrics.jsonl").read_text().splitlines()
        for tag in json.loads(line)
    }
    assert any(tag.startswith("train/loss_heads_") for tag in logged), logged
    # Evaluated at a shallow depth, the two models differ by the heads only.
    a, b = Encoder(str(tmp_path / "plain" / "model")), Encoder(str(tmp_path / "det" / "model"))
    torch.testing.assert_close(
        b.encode(TEXTS, layers=2, normalize=False),
        a.encode(TEXTS, layers=2, normalize=False) @ (torch.eye(32) + heads["2.linear.weight"]).T
        + heads["2.linear.bias"],
        atol=1e-5,
        rtol=1e-5,
    )
    assert torch.equal(
        a.encode(TEXTS, normalize=False), b.encode(TEXTS, normalize=False)
    )  # no head at depth 3


@pytest.mark.parametrize("detach", [False, True])
def test_gradcache_trains_the_heads_like_plain_batches(data, tmp_path_factory, tmp_path, detach):
    """GradCache (--mini-batch-size) gives the heads (joint: through the re-encoded chunks;
    detached: from the cached loss) the gradients of the plain batch, on a dropout-free model."""
    from tests.conftest import make_tiny_model

    model = make_tiny_model(tmp_path_factory.mktemp("nodrop"), dropout=0.0)
    args = [
        *heads_args(model, data),
        "--max-steps",
        "3",
        "--eval-data",
        *(["--exit-head-detach"] if detach else []),
    ]
    train.main([*args, "--output-dir", str(tmp_path / "plain")])
    train.main([*args, "--mini-batch-size", "3", "--output-dir", str(tmp_path / "cached")])
    # Each tensor's difference between the two runs stays under 1% of how far training moved it
    # (heads start at 0; the encoder at the model's weights).
    start = load_file(str(model / "model.safetensors"))
    for name in (EXIT_HEADS_FILE, "model.safetensors"):
        a, b = (load_file(str(tmp_path / run / "model" / name)) for run in ("plain", "cached"))
        for key in a:
            moved = (a[key] - start.get(key, torch.zeros_like(a[key]))).abs().max()
            assert (a[key] - b[key]).abs().max() <= 0.01 * moved + 1e-7, key  # (key biases barely move)


def test_a_models_own_heads_stay_frozen_without_the_flag(heads_run, data, tmp_path):
    """Training a model that has exit heads, without --exit-heads, leaves them as they are
    (like a Dense head), and the saved model still carries them."""
    before = load_file(str(heads_run / "model" / EXIT_HEADS_FILE))
    args = ["--model", str(heads_run / "model"), "--train-data", str(data["train"]), "--eval-data"]
    train.main(
        [*args, "--max-steps", "2", "--batch-size", "8", "--lr", "1e-3", "--output-dir", str(tmp_path / "r")]
    )
    after = load_file(str(tmp_path / "r" / "model" / EXIT_HEADS_FILE))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("damage", "contains"),
    [
        (lambda f: (f / EXIT_HEADS_FILE).write_bytes(b"not safetensors"), "not a readable exit-heads file"),
        (lambda f: (f / "2_Dense").rename(f / "gone"), "no square Dense module there"),
    ],
)
def test_a_damaged_exit_head_file_is_a_one_line_error(headed, tmp_path, damage, contains):
    encoder, _ = headed
    encoder.add_exit_heads([3])  # a last-depth head too: written as 2_Dense
    encoder.save(tmp_path / "m")
    damage(tmp_path / "m")
    if contains.startswith("no square"):  # modules.json still lists the Dense: drop that entry
        modules = json.loads((tmp_path / "m" / "modules.json").read_text())[:2]
        (tmp_path / "m" / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match=contains) as error:
        Encoder(str(tmp_path / "m"))
    assert "\n" not in str(error.value) and str(tmp_path / "m") in str(error.value)


def test_exit_heads_skip_the_embedding_output_row(tiny_model_dir):
    """With embedding_layer the rows are depths 0..L: row 0 (the embedding output) has no head,
    row k gets depth k's head, exactly as without the extra row."""
    encoder = Encoder(str(tiny_model_dir)).eval()
    encoder.add_exit_heads([1, 2])
    with torch.no_grad():
        for head in encoder.exit_heads.values():
            for p in head.parameters():
                p.add_(0.1)  # not the identity
        features = encoder.tokenize(TEXTS)
        every = encoder(features, all_layers=True, embedding_layer=True)  # (L + 1, N, D)
        blocks = encoder(features, all_layers=True)
        raw = encoder.model(**features, output_hidden_states=True).hidden_states[0]
    torch.testing.assert_close(every[1:], blocks)
    mask = features["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(every[0], (raw * mask).sum(1) / mask.sum(1), atol=1e-6, rtol=1e-5)

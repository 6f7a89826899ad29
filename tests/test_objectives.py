"""The objectives table (mrl/objectives.py): names, needs, and a new objective trained end to end.

A fork adds an objective with one function and one table entry; these tests do exactly that (no
edit of train.py) and train two steps through `train.main`.
"""

from __future__ import annotations

import json
import math
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402
from mrl import objectives  # noqa: E402
from mrl.config import TrainConfig, parse_config  # noqa: E402
from mrl.losses import matryoshka_loss, prefix  # noqa: E402
from tests.fixture_text import distinct_sentences, write_csv  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    texts = distinct_sentences(48, seed=5)
    scored = [[texts[2 * i], texts[2 * i + 1], (i % 7) / 6] for i in range(24)]
    return {
        "train": write_csv(folder / "train.csv", ["sentence1", "sentence2", "score"], scored[:16]),
        "dev": write_csv(folder / "dev.csv", ["sentence1", "sentence2", "score"], scored[16:]),
        "pairs": write_csv(folder / "pairs.csv", ["anchor", "positive"], [r[:2] for r in scored]),
    }


def args(model: Path, data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "--model", str(model), "--train-data", str(data["train"]), "--eval-data", str(data["dev"]),
        "--max-steps", "2", "--batch-size", "4", "--dims", "32", "16", "--log-every", "1",
        "--output-dir", str(out), *extra,
    ]  # fmt: skip


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def error_of(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit):
        parse_config(argv)
    return capsys.readouterr().err


# ------------------------------------------------------------------------------- names


def test_unknown_names_are_errors_listing_the_known_ones(tmp_path, capsys):
    # From the command line (argparse lists the table's names)...
    err = error_of(["--loss", "angle"], capsys)
    assert "angle" in err and all(name in err for name in objectives.BASE_LOSSES)
    err = error_of(["--2d", "diagonal"], capsys)
    assert "diagonal" in err and all(name in err for name in objectives.WRAPPERS)
    # ...and from a config file, which argparse never sees: the table's own check.
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"loss": "angle"}))
    with pytest.raises(ValueError, match="--loss 'angle' is unknown; known: cosent, mnrl, mnrl-symmetric"):
        parse_config(["--config", str(path)])
    path.write_text(json.dumps({"two_d": "diagonal"}))
    with pytest.raises(ValueError, match="--2d 'diagonal' is unknown; known: off, random, fixed"):
        parse_config(["--config", str(path)])


def test_the_table_states_what_each_base_loss_needs():
    assert objectives.BASE_LOSSES["cosent"].needs_score
    assert not objectives.BASE_LOSSES["cosent"].in_batch_negatives
    for name in ("mnrl", "mnrl-symmetric"):
        assert objectives.BASE_LOSSES[name].in_batch_negatives
        assert not objectives.BASE_LOSSES[name].needs_score
        assert objectives.BASE_LOSSES[name].columns == (2, None)


def test_built_objectives_train_and_evaluate_the_declared_cells():
    gen = torch.Generator()
    off = objectives.build_objective(TrainConfig(dims=[16, 32]), 32, 3, gen)
    assert (off.all_layers, off.eval_dims, off.eval_layers) == (False, [32, 16], None)
    rnd = objectives.build_objective(TrainConfig(dims=[16, 32], two_d="random"), 32, 3, gen)
    assert (rnd.all_layers, rnd.eval_dims, rnd.eval_layers) == (True, [32, 16], [1, 2, 3])
    fixed = objectives.build_objective(
        TrainConfig(dims=[32], two_d="fixed", layer_dim_pairs=["1:8", "2:16"]), 32, 3, gen
    )
    assert (fixed.eval_dims, fixed.eval_layers) == ([32, 16, 8], [1, 2, 3])
    assert fixed.metadata == {"layer_dim_pairs": [(1, 8), (2, 16)]}


# ------------------------------------------------------------------------------- a new base loss


def cosine_mse_loss(columns: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The README's worked example: mean squared error between cos(u, v) and the gold score."""
    cos = (F.normalize(columns[0].float(), dim=-1) * F.normalize(columns[1].float(), dim=-1)).sum(-1)
    return ((cos - scores) ** 2).mean()


def test_a_registered_base_loss_trains_through_train_main(tiny_model_dir, data, tmp_path, monkeypatch):
    calls = []

    def recorded(columns, scores):
        loss = cosine_mse_loss(columns, scores)
        calls.append((tuple(columns.shape), scores.clone(), loss.item()))
        return loss

    entry = objectives.BaseLossEntry(bind=lambda config, local: recorded, needs_score=True, columns=(2, 2))
    monkeypatch.setitem(objectives.BASE_LOSSES, "cosine-mse", entry)
    run = train.main(args(tiny_model_dir, data, tmp_path / "run", "--loss", "cosine-mse"))

    # Two steps, each calling the new loss once per dim (32 then 16) on (2, 4, d) prefixes with
    # the batch's gold scores; the logged per-dim terms are exactly what it returned.
    assert [shape for shape, _, _ in calls] == [(2, 4, 32), (2, 4, 16)] * 2
    assert all(((s >= 0) & (s <= 1)).all() and s.shape == (4,) for _, s, _ in calls)
    logged = {m["step"]: m for m in metrics(run) if "train/loss" in m}
    for step in (1, 2):
        d32, d16 = calls[2 * step - 2][2], calls[2 * step - 1][2]
        assert logged[step]["train/loss_d32"] == pytest.approx(d32, rel=1e-6)
        assert logged[step]["train/loss_d16"] == pytest.approx(d16, rel=1e-6)
        assert logged[step]["train/loss"] == pytest.approx(d32 + d16, rel=1e-6)
    saved = json.loads((run / "model" / "mrl_config.json").read_text())
    assert saved["loss"] == "cosine-mse" and saved["trained_steps"] == 2


def test_a_registered_base_loss_declares_its_needs(tiny_model_dir, data, tmp_path, monkeypatch, capsys):
    # A loss that needs in-batch negatives gets duplicate-free batches, batch >= 2, and no
    # score column (pairs.csv has none: a needs_score loss would stop there).
    entry = objectives.BaseLossEntry(
        bind=lambda config, local: objectives.BASE_LOSSES["mnrl"].bind(config, local),
        in_batch_negatives=True,
        columns=(2, None),
    )
    monkeypatch.setitem(objectives.BASE_LOSSES, "my-nce", entry)
    with pytest.raises(ValueError, match="--batch-size"):
        parse_config(["--loss", "my-nce", "--batch-size", "1"])
    extra = ["--loss", "my-nce", "--train-data", str(data["pairs"])]
    run = train.main(args(tiny_model_dir, data, tmp_path / "run", *extra))
    config = json.loads((run / "config.json").read_text())
    assert config["derived"]["negatives_per_query"] == 3  # B - 1 other positives
    with pytest.raises(SystemExit):
        train.main(
            args(
                tiny_model_dir,
                data,
                tmp_path / "run2",
                "--loss",
                "cosent",
                "--train-data",
                str(data["pairs"]),
            )
        )
    assert "score" in capsys.readouterr().err  # CoSENT needs the score column pairs.csv lacks


# ------------------------------------------------------------------------------- a new 2D schedule


def first_and_final_loss(base_loss, layer_columns, labels, dims):
    """A toy 2D schedule: Matryoshka at the final layer plus block 1 at the smallest dim."""
    total, terms = matryoshka_loss(base_loss, layer_columns[-1], labels, dims)
    first = base_loss(prefix(layer_columns[0], min(dims)), labels)
    terms[f"l1_d{min(dims)}"] = first
    return total + first, terms


def build_first_and_final(base, config, dims, num_layers, generator):
    return objectives.Objective(
        partial(first_and_final_loss, base, dims=dims),
        all_layers=True,
        eval_dims=sorted(dims, reverse=True),
        eval_layers=[1, num_layers],
    )


def test_a_registered_2d_schedule_trains_through_train_main(tiny_model_dir, data, tmp_path, monkeypatch):
    entry = objectives.WrapperEntry(build=build_first_and_final, all_layers=True)
    monkeypatch.setitem(objectives.WRAPPERS, "first-and-final", entry)
    run = train.main(args(tiny_model_dir, data, tmp_path / "run", "--2d", "first-and-final"))
    logged = [m for m in metrics(run) if "train/loss" in m]
    assert [m["step"] for m in logged] == [1, 2]
    for m in logged:
        assert m["train/loss"] == pytest.approx(
            m["train/loss_d32"] + m["train/loss_d16"] + m["train/loss_l1_d16"]
        )
    saved = json.loads((run / "model" / "mrl_config.json").read_text())
    assert (saved["two_d"], saved["layers"], saved["dims"]) == ("first-and-final", [1, 3], [32, 16])
    evals = {tag for m in metrics(run) for tag in m if tag.startswith("val/")}
    assert {"val/dev/spearman_d16", "val/dev/spearman_l1_d16", "val/dev/spearman_l1_d32"} <= evals


# ------------------------------------------------------------------------------- what the needs imply


def test_in_batch_negative_losses_read_no_score_column(tiny_model_dir, data, tmp_path, capsys):
    """mnrl needs no score: a file whose 'score' column is not numeric trains anyway (the column is
    neither parsed nor gathered); CoSENT on the same file stops at that column."""
    texts = distinct_sentences(24, seed=9)
    rows = [[texts[2 * i], texts[2 * i + 1], "n/a"] for i in range(12)]
    path = write_csv(tmp_path / "scored-pairs.csv", ["anchor", "positive", "score"], rows)
    run = train.main(
        args(tiny_model_dir, data, tmp_path / "run", "--loss", "mnrl", "--train-data", str(path))
    )
    assert [m["step"] for m in metrics(run) if "train/loss" in m] == [1, 2]
    with pytest.raises(SystemExit):
        train.main(args(tiny_model_dir, data, tmp_path / "run2", "--train-data", str(path)))
    assert "'score'" in capsys.readouterr().err


def test_epochs_with_duplicate_free_batches_are_exact(tiny_model_dir, data, tmp_path):
    """4 rows share one anchor, 4 rows are unique: a duplicate-free batch of 4 holds at most one
    of the 4, so every epoch has exactly 1 full batch (the upper bound 8 // 4 would say 2).
    --epochs 3 is then 3 steps, one per epoch, and the linear schedule reaches 0 at step 3."""
    texts = distinct_sentences(13, seed=11)
    shared = texts[0]
    rows = [[shared, texts[1 + i]] for i in range(4)] + [
        [texts[5 + 2 * i], texts[6 + 2 * i]] for i in range(4)
    ]
    path = write_csv(tmp_path / "clashing.csv", ["anchor", "positive"], rows)
    extra = ["--loss", "mnrl", "--train-data", str(path), "--epochs", "3", "--warmup-ratio", "0"]
    argv = [a for a in args(tiny_model_dir, data, tmp_path / "run", *extra)]
    i = argv.index("--max-steps")
    del argv[i : i + 2]
    run = train.main(argv)
    derived = json.loads((run / "config.json").read_text())["derived"]
    assert (derived["steps_per_epoch"], derived["total_steps"]) == (1, 3)
    logged = {m["step"]: m for m in metrics(run) if "train/lr" in m}
    assert sorted(logged) == [1, 2, 3]
    # lr after step s of 3 (no warmup): peak * (1 - s / 3)
    for s in (1, 2, 3):
        assert logged[s]["train/lr"] == pytest.approx(2e-5 * (1 - s / 3), abs=1e-12)
    from mrl.checkpoint import load_checkpoint

    _, _, state = load_checkpoint(run)
    assert state["step"] == 3 and state["cursor"] == [2, 1]  # the 3rd epoch's only batch, and no more


# ------------------------------------------------------------------------------- issue 25


def cosent_by_hand(u: torch.Tensor, v: torch.Tensor, scores: torch.Tensor, scale: float = 20.0) -> float:
    """CoSENT written out: log(1 + sum over y_i < y_j of exp(s_i - s_j)), s = scale * cos."""
    s = [scale * float(u[i] @ v[i] / (u[i].norm() * v[i].norm())) for i in range(u.shape[0])]
    acc = sum(
        math.exp(s[i] - s[j])
        for i in range(len(s))
        for j in range(len(s))
        if float(scores[i]) < float(scores[j])
    )
    return math.log1p(acc)


def upstream_2d_by_hand(hidden_states, mask, scores, dims, weighting, drawn, kl_t=0.3):
    """Upstream's AdaptiveLayerLoss around MatryoshkaLoss (reference.md, 2D), transcribed: the final
    hidden state's Matryoshka CoSENT, plus for each drawn hidden-state index idx (0 = the embedding
    output) w(idx) / len(drawn) times its Matryoshka CoSENT, plus T * KL(softmax(final / T) ||
    softmax(h_idx / T)) (batch mean over both columns together), summed over the drawn."""
    pooled = []
    for h in hidden_states:  # (N, S, D) -> (N, D): mean over each row's real tokens, row by row
        pooled.append(torch.stack([h[i][mask[i].bool()].mean(0) for i in range(h.shape[0])]).double())
    n = pooled[0].shape[0] // 2

    def matryoshka(e):
        return sum(cosent_by_hand(e[:n, :d], e[n:, :d], scores) for d in dims)

    def weight(idx):
        return {"uniform": 1.0, "log": 1 / (1 + math.log(1 + idx)), "reciprocal": 1 / (1 + idx)}[weighting]

    final = pooled[-1]
    total = matryoshka(final)
    for idx in drawn:
        total += weight(idx) / len(drawn) * matryoshka(pooled[idx])
        kl = 0.0
        for r in range(final.shape[0]):
            p = torch.softmax(final[r] / kl_t, -1)
            log_q = torch.log_softmax(pooled[idx][r] / kl_t, -1)
            kl += float((p * (p.log() - log_q)).sum())
        total += kl_t * kl / final.shape[0]
    return total


@pytest.mark.parametrize("weighting", ["uniform", "log", "reciprocal"])
@pytest.mark.parametrize("n_layers", [-1, 2])
def test_upstream_2d_equals_its_transcription_on_a_real_forward(tiny_model_dir, weighting, n_layers):
    """--2d random with upstream's weightings: the objective on the encoder's real forward equals
    upstream's sum transcribed by hand over hidden states 0..L-1 (the embedding output included),
    every candidate (n_layers_per_step=-1) or the two drawn this step (read from the terms)."""
    from mrl.model import Encoder

    encoder = Encoder(str(tiny_model_dir)).eval()
    texts = distinct_sentences(12, seed=3)
    scores = torch.tensor([0.1, 0.9, 0.4, 0.4, 0.7, 0.2], dtype=torch.float64)
    config = TrainConfig(
        dims=[32, 16, 8], two_d="random", depth_weighting=weighting, n_layers_per_step=n_layers
    )
    objective = objectives.build_objective(config, 32, 3, torch.Generator().manual_seed(7))
    assert objective.embedding_layer
    features = encoder.tokenize(texts)
    with torch.no_grad():
        emb = encoder(features, all_layers=True, embedding_layer=objective.embedding_layer)  # (4, 12, 32)
        hidden = encoder.model(**features, output_hidden_states=True).hidden_states  # 4 x (12, S, 32)
        total, terms = objective.loss(emb.unflatten(-2, (2, -1)).double(), scores)
    drawn = sorted(int(k[1:]) for k in terms if k.startswith("l"))
    assert drawn == [0, 1, 2] if n_layers == -1 else len(drawn) == 2
    want = upstream_2d_by_hand(hidden, features["attention_mask"], scores, [32, 16, 8], weighting, drawn)
    assert total.item() == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_proportional_keeps_its_candidates_unless_asked(tiny_model_dir):
    """Ours is unchanged by default (blocks 1..L-1, no embedding row); --embedding-candidate adds
    the embedding output (term l0, weighted as block 1) for a later measurement."""
    gen = torch.Generator()
    plain = objectives.build_objective(TrainConfig(dims=[32], two_d="random"), 32, 3, gen)
    assert not plain.embedding_layer
    config = parse_config(["--2d", "random", "--embedding-candidate", "--n-layers-per-step", "-1"])
    opted = objectives.build_objective(config, 32, 3, gen)
    assert opted.embedding_layer and opted.eval_layers == [1, 2, 3]
    layers = torch.randn(4, 2, 6, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    total, terms = opted.loss(layers, torch.rand(6, dtype=torch.float64))
    assert {"l0", "l1", "l2"} <= set(terms)
    with pytest.raises(ValueError, match="--embedding-candidate needs --2d random"):
        parse_config(["--embedding-candidate"])


def test_gte_and_hardness_entries_describe_themselves(capsys):
    gte = objectives.BASE_LOSSES["gte"]
    assert gte.in_batch_negatives and gte.columns == (2, None) and "2308.03281" in gte.citation
    assert {"directions", "partition_mode", "hardness", "hardness_strength"} <= set(gte.fields)
    for name in ("mnrl", "mnrl-symmetric"):
        assert {"hardness", "hardness_strength"} <= set(objectives.BASE_LOSSES[name].fields)
    with pytest.raises(ValueError, match="--hardness needs --loss mnrl|mnrl-symmetric|gte"):
        parse_config(["--hardness", "all", "--hardness-strength", "2"])
    with pytest.raises(ValueError, match="--directions needs --loss gte"):
        parse_config(["--loss", "mnrl", "--directions", "query-doc"])
    with pytest.raises(ValueError, match="hardness-strength > 0"):
        parse_config(["--loss", "mnrl", "--hardness", "hard"])
    with pytest.raises(ValueError, match="query-query and doc-doc"):
        parse_config(["--loss", "gte", "--partition-mode", "per-direction"])
    with pytest.raises(ValueError, match="--directions"):
        parse_config(["--loss", "gte", "--directions", "doc-query"])


@pytest.mark.parametrize(
    "extra",
    [
        ["--loss", "gte", "--hardness", "all", "--hardness-strength", "3"],
        ["--loss", "mnrl-symmetric", "--hardness", "in-batch", "--hardness-strength", "3", "--2d", "random",
         "--depth-weighting", "log", "--n-layers-per-step", "-1"],
        ["--loss", "gte", "--mini-batch-size", "3", "--2d", "random", "--depth-weighting", "uniform"],
    ],
)  # fmt: skip
def test_gte_and_hardness_train_through_train_main(tiny_model_dir, data, tmp_path, extra):
    """Two steps of each new option (with 2D and GradCache), the card naming them."""
    argv = args(tiny_model_dir, data, tmp_path / "run", "--train-data", str(data["pairs"]), *extra)
    run = train.main(argv)
    logged = [m for m in metrics(run) if "train/loss" in m]
    assert [m["step"] for m in logged] == [1, 2] and all(math.isfinite(m["train/loss"]) for m in logged)
    if "--depth-weighting" in extra:
        assert any("train/loss_l0" in m for m in logged) or "--n-layers-per-step" not in extra
    card = (run / "model" / "README.md").read_text()
    assert extra[1] in card
    if "--hardness" in extra:
        assert "hardness weighting" in card and "Lan et al. 2025" in card


def test_upstream_2d_with_exit_heads_and_distillation_trains(tiny_model_dir, data, tmp_path):
    """The embedding-output row travels with the detached exit heads (depth 0 has no head) and
    is left out of distillation on plain sentences (blocks only): two steps train, l0 is logged."""
    extra = ["--2d", "random", "--depth-weighting", "reciprocal", "--n-layers-per-step", "-1",
             "--exit-heads", "shallow", "--exit-head-detach", "--layer-distill", "kl",
             "--distill-data", str(data["pairs"])]  # fmt: skip
    run = train.main(args(tiny_model_dir, data, tmp_path / "run", *extra))
    logged = [m for m in metrics(run) if "train/loss" in m]
    assert [m["step"] for m in logged] == [1, 2]
    for m in logged:
        assert {"train/loss_l0", "train/loss_heads_l0", "train/loss_unlabelled_distill"} <= set(m)
        assert math.isfinite(m["train/loss"])

"""The word-embedding gradient kept in one buffer (mrl/sparse_grad.py) against independent
references: a hand-written row-by-row sum in token order (what autograd's dense backward does),
autograd's own dense gradient, and whole training runs with ``--dense-embedding-grad``."""

from __future__ import annotations

import copy
import json
import random
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train.py lives in the repo root
import train  # noqa: E402
from mrl.config import TrainConfig, config_diff, parse_config  # noqa: E402
from mrl.sparse_grad import EmbeddingGradBuffer, why_not_sparse  # noqa: E402
from tests.fixture_text import distinct_sentences, write_csv  # noqa: E402


def hand_gradient(vocab: int, dim: int, ids: torch.Tensor, upstream: torch.Tensor, padding_idx: int):
    """d/dW of sum(W[ids] * upstream): each token's upstream row added to its id's row, in token order."""
    grad = torch.zeros(vocab, dim)
    for token, row in zip(ids.flatten().tolist(), upstream.reshape(-1, dim)):
        if token != padding_idx:  # the padding row never learns
            grad[token] += row
    return grad


@pytest.mark.parametrize("threads", [1, 2])
def test_one_backward_is_bit_for_bit_the_dense_gradient(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        embedding = nn.Embedding(40, 8, padding_idx=0)
        dense = copy.deepcopy(embedding)
        kept = EmbeddingGradBuffer(embedding)
        ids = torch.randint(0, 10, (6, 25))  # many repeats per row, and the padding id
        upstream = torch.randn(6, 25, 8)
        (embedding(ids) * upstream).sum().backward()
        (dense(ids) * upstream).sum().backward()
        assert embedding.weight.grad is kept.buffer  # the optimizer reads the kept buffer
        assert not embedding.weight.grad.is_sparse
        assert torch.equal(embedding.weight.grad, hand_gradient(40, 8, ids, upstream, padding_idx=0))
        assert torch.equal(embedding.weight.grad, dense.weight.grad)
    finally:
        torch.set_num_threads(before)


def test_each_step_sees_only_its_own_rows():
    """Three optimizer steps on different rows: after each reset the buffer is zero again, so
    every step's gradient and the AdamW weights equal the dense path's bit for bit."""
    torch.manual_seed(1)
    embedding = nn.Embedding(60, 8)
    dense = copy.deepcopy(embedding)
    kept = EmbeddingGradBuffer(embedding)
    opt_kept = torch.optim.AdamW(embedding.parameters(), lr=1e-2)
    opt_dense = torch.optim.AdamW(dense.parameters(), lr=1e-2)
    for step in range(3):
        ids = torch.randint(20 * step, 20 * step + 20, (4, 9))  # rows no earlier step touched
        upstream = torch.randn(4, 9, 8)
        (embedding(ids) * upstream).sum().backward()
        (dense(ids) * upstream).sum().backward()
        assert torch.equal(embedding.weight.grad, hand_gradient(60, 8, ids, upstream, padding_idx=-1))
        assert torch.equal(embedding.weight.grad, dense.weight.grad)
        for opt in (opt_kept, opt_dense):
            opt.step()
            opt.zero_grad(set_to_none=True)
        kept.reset()
        assert embedding.weight.grad is kept.buffer and not kept.buffer.any()
        assert torch.equal(embedding.weight, dense.weight)


def test_several_backwards_sum_to_the_dense_gradient_up_to_rounding():
    torch.manual_seed(2)
    embedding = nn.Embedding(30, 8)
    dense = copy.deepcopy(embedding)
    EmbeddingGradBuffer(embedding)
    expected = torch.zeros(30, 8)
    for _ in range(3):  # gradient accumulation / GradCache: backwards add up before the step
        ids, upstream = torch.randint(0, 30, (5, 7)), torch.randn(5, 7, 8)
        (embedding(ids) * upstream).sum().backward()
        (dense(ids) * upstream).sum().backward()
        expected += hand_gradient(30, 8, ids, upstream, padding_idx=-1)
    torch.testing.assert_close(embedding.weight.grad, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(embedding.weight.grad, dense.weight.grad, rtol=1e-6, atol=1e-6)


def test_a_nan_clip_coefficient_is_cleared_everywhere():
    """A NaN elsewhere in the clip group makes clip_grad_norm_ multiply every row by NaN; the
    reset must not leave NaN in rows the next step does not look up."""
    embedding, other = nn.Embedding(30, 4), nn.Linear(4, 1)
    kept = EmbeddingGradBuffer(embedding)
    (other(embedding(torch.tensor([1, 2]))).sum() * float("nan")).backward()
    embedding(torch.tensor([3])).sum().backward()  # the looked-up rows alone are finite here
    torch.nn.utils.clip_grad_norm_([embedding.weight, *other.parameters()], 1.0)
    assert kept.buffer[0].isnan().all()  # an untouched row: NaN through the clip coefficient
    kept.reset()
    assert not kept.buffer.isnan().any() and not kept.buffer.any()


def test_lookups_without_autograd_are_not_recorded():
    embedding = nn.Embedding(30, 4)
    kept = EmbeddingGradBuffer(embedding)
    with torch.no_grad():  # evaluation between steps
        embedding(torch.arange(30))
    assert kept.looked_up == []
    embedding(input=torch.tensor([[3, 4]]))  # the keyword form is recorded too
    assert [t.tolist() for t in kept.looked_up] == [[3, 4]]


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.embed.weight  # one table, two uses

    def get_input_embeddings(self):
        return self.embed


class Plain(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.embed = nn.Embedding(10, 4, **kwargs)

    def get_input_embeddings(self):
        return self.embed


def test_where_the_buffer_is_not_used():
    cpu = torch.device("cpu")
    assert why_not_sparse(Plain(), cpu, 1, compiled=False) is None
    assert "CPU" in why_not_sparse(Plain(), torch.device("cuda"), 1, compiled=False)
    assert "DDP" in why_not_sparse(Plain(), cpu, 2, compiled=False)
    assert "--compile" in why_not_sparse(Plain(), cpu, 1, compiled=True)
    assert "shared" in why_not_sparse(Tied(), cpu, 1, compiled=False)
    assert "renormalises" in why_not_sparse(Plain(max_norm=1.0), cpu, 1, compiled=False)
    assert "frequency" in why_not_sparse(Plain(scale_grad_by_freq=True), cpu, 1, compiled=False)
    custom = Plain()
    custom.embed = type("MyEmbedding", (nn.Embedding,), {})(10, 4)  # a subclass may look up its own way
    assert "plain nn.Embedding" in why_not_sparse(custom, cpu, 1, compiled=False)
    frozen = Plain()
    frozen.embed.weight.requires_grad_(False)
    assert "frozen" in why_not_sparse(frozen, cpu, 1, compiled=False)


# ------------------------------------------------------------------- whole training runs


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    rng = random.Random(5)
    texts = distinct_sentences(96, seed=5)
    scored = [[texts[2 * i], texts[2 * i + 1], round(rng.uniform(0, 1), 3)] for i in range(48)]
    return {
        "scored": write_csv(folder / "train.csv", ["sentence1", "sentence2", "score"], scored),
        "pairs": write_csv(folder / "pairs.csv", ["anchor", "positive"], [t[:2] for t in scored]),
    }


def run(tiny_model_dir, data: Path, out: Path, *flags: str) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main(
            [
                "--model", str(tiny_model_dir), "--train-data", str(data), "--eval-data",
                "--max-steps", "5", "--batch-size", "8", "--dims", "32", "16", "8",
                "--log-every", "5", "--output-dir", str(out), *flags,
            ]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return out


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


@pytest.mark.parametrize("recipe", ["cosent", "mnrl-2d"])
def test_training_learns_the_same_weights_bit_for_bit(recipe, tiny_model_dir, pairs, tmp_path):
    """One backward per step: the kept buffer changes nothing, to the last bit."""
    data, flags = (
        (pairs["scored"], ())
        if recipe == "cosent"
        else (pairs["pairs"], ("--loss", "mnrl", "--2d", "random", "--layer-distill", "kl"))
    )
    kept = run(tiny_model_dir, data, tmp_path / "kept", *flags)
    dense = run(tiny_model_dir, data, tmp_path / "dense", *flags, "--dense-embedding-grad")
    derived = json.loads((kept / "config.json").read_text())["derived"]
    assert derived["embedding_grad"] == "sparse rows into a kept buffer"
    assert json.loads((dense / "config.json").read_text())["derived"]["embedding_grad"] == (
        "dense (--dense-embedding-grad)"
    )
    a, b = weights(kept), weights(dense)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    # ... and the embeddings did train (a table that never moved would also be "equal")
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    key = next(k for k in a if k.endswith("word_embeddings.weight"))
    assert not torch.equal(a[key], start[key])


@pytest.mark.parametrize(
    "flags",
    [
        ["--grad-accum", "2"],  # two backwards per step
        ["--mini-batch-size", "4"],  # GradCache: one backward per chunk
        ["--padding-free", "buckets"],  # one lookup per sub-batch in one backward
    ],
)
def test_several_lookups_per_step_learn_the_same_weights_up_to_rounding(
    flags, tiny_model_dir, pairs, tmp_path
):
    kept = run(tiny_model_dir, pairs["scored"], tmp_path / "kept", *flags)
    dense = run(tiny_model_dir, pairs["scored"], tmp_path / "dense", *flags, "--dense-embedding-grad")
    a, b = weights(kept), weights(dense)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)


def test_resume_with_the_kept_buffer_is_exact(tiny_model_dir, pairs, tmp_path):
    """A run stopped after its step-3 checkpoint and resumed ends bit for bit where the
    uninterrupted run ends (the buffer starts at zero either way), and says which path it took."""
    # ... with dev evaluations between steps (encoding under no_grad records no lookups)
    flags = (
        "--save-every",
        "3",
        "--max-steps",
        "6",
        "--eval-data",
        str(pairs["scored"]),
        "--eval-every",
        "2",
    )
    whole = run(tiny_model_dir, pairs["scored"], tmp_path / "whole", *flags)
    resumed = Path(shutil.copytree(whole, tmp_path / "resumed"))  # cut back to step 3 below
    ckpts = resumed / "checkpoints"
    shutil.rmtree(ckpts / "step_00000006")
    (ckpts / "latest").write_text("step_00000003\n")
    shutil.rmtree(resumed / "model")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the thread count run() trains with: other counts round differently
    try:
        train.main(["--output-dir", str(resumed), "--resume"])
    finally:
        torch.set_num_threads(threads)
    assert "resuming at step 3" in (resumed / "train.log").read_text()
    assert "(embedding gradient: sparse rows into a kept buffer)" in (resumed / "train.log").read_text()
    a, b = weights(whole), weights(resumed)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_a_run_from_before_the_buffer_resumes_on_the_dense_path(tmp_path):
    """Its config.json has no dense_embedding_grad: it keeps autograd's path, whose sums match
    its own to the last bit also with several backwards per step, and --resume accepts it."""
    old = {**TrainConfig().to_dict(), "derived": {"total_steps": 6}}
    del old["dense_embedding_grad"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    config = parse_config(["--config", str(path)])
    assert config.dense_embedding_grad is True
    assert config_diff(old, config) == []
    assert parse_config([]).dense_embedding_grad is False  # new runs: the kept buffer


@pytest.mark.integration
def test_real_model_learns_the_same_weights_bit_for_bit(minilm_dir, shared_data, tmp_path):
    """all-MiniLM-L6-v2 (a 30522-row table) on STS-B pairs, packed random batches: 3 steps."""
    flags = ["--max-train-samples", "48", "--max-steps", "3", "--batch-size", "16", "--dims", "384", "64"]
    runs = {}
    for name, extra in (("kept", []), ("dense", ["--dense-embedding-grad"])):
        runs[name] = tmp_path / name
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            train.main(
                [
                    "--model", str(minilm_dir), "--train-data", str(shared_data / "stsb" / "en-train.csv"),
                    "--eval-data", "--log-every", "3", "--output-dir", str(runs[name]), *flags, *extra,
                ]
            )  # fmt: skip
        finally:
            torch.set_num_threads(threads)
    a, b = weights(runs["kept"]), weights(runs["dense"])
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    start = load_file(str(minilm_dir / "model.safetensors"))
    key = next(k for k in a if k.endswith("word_embeddings.weight"))
    assert not torch.equal(a[key], start[key].to(a[key].dtype))

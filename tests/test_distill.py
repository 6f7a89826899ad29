"""Self-distillation (issue 13): the loss terms against brute-force loops over the similarity
matrices, gradient checks, a teacher that receives no gradient, the --distill-data reader (it must
refuse and drop evaluation text), and end-to-end training with --distill-data on a tiny model.

The references use python floats and explicit loops; they never call mrl.losses helpers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train.py lives in the repo root
import train  # noqa: E402
from mrl.config import parse_config, validate  # noqa: E402
from mrl.data import DataError, evaluation_file_reason, load_distill_texts  # noqa: E402
from mrl.losses import (  # noqa: E402
    cosent_loss,
    fixed_pairs_loss,
    layer_distill_loss,
    layer_dropping_loss,
    prefix_distill_loss,
    similarity_distill,
    unlabelled_distill_loss,
    with_prefix_distill,
)
from tests.fixture_text import distinct_sentences, write_csv  # noqa: E402

TOL = {"rel": 1e-5, "abs": 1e-6}


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def cos_matrix_by_hand(x: torch.Tensor) -> list[list[float]]:
    """S[i][j] = cos(x_i, x_j) as python floats."""
    rows = x.tolist()
    norms = [math.sqrt(sum(v * v for v in r)) for r in rows]
    return [
        [sum(a * b for a, b in zip(ri, rj)) / (ni * nj) for rj, nj in zip(rows, norms)]
        for ri, ni in zip(rows, norms)
    ]


def distill_by_hand(
    student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float = 0.05
) -> float:
    n = student.shape[0]
    if kind == "emb":
        total = 0.0
        for s, t in zip(student.tolist(), teacher.tolist()):
            ns, nt = math.sqrt(sum(v * v for v in s)), math.sqrt(sum(v * v for v in t))
            total += sum((a / ns - b / nt) ** 2 for a, b in zip(s, t))
        return total / n
    ss, st = cos_matrix_by_hand(student), cos_matrix_by_hand(teacher)
    total = 0.0
    for i in range(n):
        others = [j for j in range(n) if j != i]
        if kind == "mse":
            total += sum((ss[i][j] - st[i][j]) ** 2 for j in others)
            continue
        zs = sum(math.exp(ss[i][j] / temperature) for j in others)
        zt = sum(math.exp(st[i][j] / temperature) for j in others)
        for j in others:
            p = math.exp(st[i][j] / temperature) / zt
            q = math.exp(ss[i][j] / temperature) / zs
            total += p * math.log(p / q)
    return total / n


# --------------------------------------------------------------------------------------------
# The distillation term
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["kl", "mse", "emb"])
@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_similarity_distill_matches_brute_force(kind, temperature):
    student, teacher = randn(7, 5, seed=1), randn(7, 5, seed=2)
    got = similarity_distill(student, teacher, kind, temperature).item()
    assert got == pytest.approx(distill_by_hand(student, teacher, kind, temperature), **TOL)


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_similarity_terms_allow_a_wider_teacher_and_vanish_for_the_same_structure(kind):
    teacher = randn(6, 8, seed=3)
    student = randn(6, 3, seed=4)
    assert similarity_distill(student, teacher, kind).item() == pytest.approx(
        distill_by_hand(student, teacher, kind), **TOL
    )
    # A rotated and rescaled copy has the same cosines: nothing to learn.
    q, _ = torch.linalg.qr(randn(8, 8, seed=5))
    assert similarity_distill(3.0 * teacher @ q, teacher, kind).item() == pytest.approx(0.0, abs=1e-10)


def test_emb_needs_equal_widths_and_unknown_kinds_are_refused():
    with pytest.raises(ValueError, match="equal widths"):
        similarity_distill(randn(4, 3), randn(4, 5), "emb")
    with pytest.raises(ValueError, match="kl"):
        similarity_distill(randn(4, 3), randn(4, 3), "cosine")


@pytest.mark.parametrize("kind", ["kl", "mse", "emb"])
def test_teacher_receives_no_gradient_and_student_gradient_is_exact(kind):
    teacher = randn(5, 4, seed=6).requires_grad_()
    student = randn(5, 4, seed=7).requires_grad_()
    similarity_distill(student, teacher, kind, 0.3).backward()
    assert teacher.grad is None
    assert student.grad.abs().sum() > 0
    fixed = teacher.detach()
    assert torch.autograd.gradcheck(
        lambda s: similarity_distill(s, fixed, kind, 0.3), (randn(5, 4, seed=8).requires_grad_(),)
    )


def test_distill_runs_in_fp32_under_bf16_autocast():
    student, teacher = randn(6, 8, seed=9).float(), randn(6, 8, seed=10).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = similarity_distill(student, teacher, "kl")
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(distill_by_hand(student.double(), teacher.double(), "kl"), rel=1e-4)


# --------------------------------------------------------------------------------------------
# Which cells learn from which teacher
# --------------------------------------------------------------------------------------------


def test_layer_distill_sums_cells_against_the_final_layer_at_the_same_dim():
    layers = randn(4, 2, 3, 8, seed=11).requires_grad_()  # (L, C, B, D): 6 texts per layer
    cells = [(1, 8), (2, 4), (3, 2), (4, 8)]  # (4, 8) is the final layer: skipped
    got = layer_distill_loss(layers, cells, partial(similarity_distill, kind="mse"))
    flat = layers.detach().reshape(4, 6, 8)
    expected = sum(distill_by_hand(flat[l - 1, :, :d], flat[3, :, :d], "mse") for l, d in cells[:3])
    assert got.item() == pytest.approx(expected, **TOL)
    got.backward()
    assert layers.grad[3].abs().sum() == 0  # the teacher (final layer) gets nothing
    assert layers.grad[0].abs().sum() > 0
    assert layers.grad[1, ..., 4:].abs().sum() == 0  # layer 2 is only trained at 4 dims


def test_prefix_distill_teaches_every_smaller_prefix_from_the_full_width():
    columns = randn(2, 4, 8, seed=12).requires_grad_()  # (C, B, D)
    got = prefix_distill_loss(columns, [8, 4, 2], partial(similarity_distill, kind="kl", temperature=0.2))
    flat = columns.detach().reshape(8, 8)
    expected = sum(distill_by_hand(flat[:, :d], flat, "kl", 0.2) for d in (4, 2))
    assert got.item() == pytest.approx(expected, **TOL)
    # Only the prefixes are students: values 5..8 are the teacher's alone and get no gradient.
    got.backward()
    assert columns.grad[..., 4:].abs().sum() == 0
    assert columns.grad[..., :4].abs().sum() > 0


def test_layer_dropping_adds_distillation_for_each_trained_layer_and_dim():
    layers = randn(3, 2, 5, 8, seed=13)  # (L, C, B, D) CoSENT pairs
    scores = torch.tensor([0.1, 0.9, 0.4, 0.6, 0.3], dtype=torch.float64)
    distill = partial(similarity_distill, kind="kl", temperature=0.1)
    common = dict(dims=[8, 4], n_layers_per_step=-1, kl_weight=0.0)
    plain, _ = layer_dropping_loss(cosent_loss, layers, scores, **common)
    total, terms = layer_dropping_loss(
        cosent_loss, layers, scores, **common, distill=distill, distill_weight=0.5
    )
    flat = layers.reshape(3, 10, 8)
    expected = sum(distill_by_hand(flat[l, :, :d], flat[2, :, :d], "kl", 0.1) for l in (0, 1) for d in (8, 4))
    assert terms["distill"].item() == pytest.approx(expected, **TOL)
    assert total.item() == pytest.approx(plain.item() + 0.5 * expected, **TOL)


def test_fixed_pairs_distil_only_their_shallow_pairs():
    layers = randn(3, 2, 5, 8, seed=14)
    scores = torch.tensor([0.1, 0.9, 0.4, 0.6, 0.3], dtype=torch.float64)
    distill = partial(similarity_distill, kind="emb")
    pairs = [(1, 2), (2, 4), (3, 8)]
    plain, _ = fixed_pairs_loss(cosent_loss, layers, scores, pairs, kl_weight=0.0)
    total, terms = fixed_pairs_loss(cosent_loss, layers, scores, pairs, kl_weight=0.0, distill=distill)
    flat = layers.reshape(3, 10, 8)
    expected = distill_by_hand(flat[0, :, :2], flat[2, :, :2], "emb") + distill_by_hand(
        flat[1, :, :4], flat[2, :, :4], "emb"
    )
    assert terms["distill"].item() == pytest.approx(expected, **TOL)
    assert total.item() == pytest.approx(plain.item() + expected, **TOL)


def test_with_prefix_distill_and_the_unlabelled_loss():
    columns = randn(2, 5, 8, seed=15)
    scores = torch.tensor([0.1, 0.9, 0.4, 0.6, 0.3], dtype=torch.float64)
    distill = partial(similarity_distill, kind="mse")

    def objective(c, labels):
        return cosent_loss(c, labels), {}

    total, terms = with_prefix_distill(objective, columns, scores, [8, 2], distill, weight=2.0)
    flat = columns.reshape(10, 8)
    expected = distill_by_hand(flat[:, :2], flat, "mse")
    assert terms["prefix_distill"].item() == pytest.approx(expected, **TOL)
    assert total.item() == pytest.approx(cosent_loss(columns, scores).item() + 2 * expected, **TOL)

    emb = randn(3, 6, 8, seed=16)  # (L, N, D): plain sentences, every layer
    kl = partial(similarity_distill, kind="kl", temperature=0.2)
    total, terms = unlabelled_distill_loss(emb, [(1, 8), (2, 4)], [4], distill, kl, prefix_weight=3.0)
    layer_part = distill_by_hand(emb[0], emb[2], "mse") + distill_by_hand(emb[1, :, :4], emb[2, :, :4], "mse")
    prefix_part = distill_by_hand(emb[2, :, :4], emb[2], "kl", 0.2)
    assert terms["unlabelled_distill"].item() == pytest.approx(layer_part, **TOL)
    assert terms["unlabelled_prefix_distill"].item() == pytest.approx(prefix_part, **TOL)
    assert total.item() == pytest.approx(layer_part + 3 * prefix_part, **TOL)
    with pytest.raises(ValueError, match="every layer"):
        unlabelled_distill_loss(emb[2], [(1, 8)], [], distill)


# --------------------------------------------------------------------------------------------
# --distill-data: every text column, never evaluation text
# --------------------------------------------------------------------------------------------


def test_distill_texts_use_every_text_column_once(tmp_path):
    nli = write_csv(tmp_path / "nli.csv", ["premise", "hypothesis", "label"],
                    [["a cat", "a dog", "neutral"], ["a cat", "the man", "entailment"]])  # fmt: skip
    triplets = write_csv(tmp_path / "t.csv", ["anchor", "positive", "negative"], [["x y", "the man", "z w"]])
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        json.dumps({"_id": "1", "title": "t one", "text": "doc one"}) + "\n"
        + json.dumps({"_id": "2", "title": "", "text": "doc two"}) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    texts, dropped = load_distill_texts([str(nli), str(triplets), str(corpus)])
    assert texts == ["a cat", "a dog", "the man", "x y", "z w", "t one", "doc one", "doc two"]
    assert dropped == 0


def test_distill_texts_refuse_evaluation_files_and_drop_evaluation_sentences(tmp_path):
    for folder, name in [("stsb", "en-test.csv"), ("stsb", "en-dev.csv"), ("sick", "train.csv")]:
        (tmp_path / folder).mkdir(exist_ok=True)
        path = write_csv(tmp_path / folder / name, ["sentence1", "sentence2", "score"], [["a", "b", "0.5"]])
        assert evaluation_file_reason(path)
        with pytest.raises(DataError, match="refusing to distil"):
            load_distill_texts([str(path)])
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"_id": "q", "text": "what is x"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="BEIR queries"):
        load_distill_texts([str(queries)])
    plain = write_csv(tmp_path / "plain.csv", ["premise", "hypothesis"], [["a", "what is x"], ["c", "d"]])
    assert evaluation_file_reason(plain) is None
    texts, dropped = load_distill_texts(
        [str(plain)], [str(tmp_path / "stsb" / "en-test.csv"), str(queries)], ["d"]
    )
    assert (texts, dropped) == (["c"], 3)  # "a" (STS-B test), "what is x" (a query), "d" (a dev text)
    with pytest.raises(DataError, match="no texts left"):
        load_distill_texts([str(plain)], exclude_texts=["a", "what is x", "c", "d"])


def test_distillation_flags_are_checked():
    with pytest.raises(ValueError, match="--layer-distill needs a 2D wrapper"):
        parse_config(["--layer-distill", "kl"])
    with pytest.raises(ValueError, match="--distill-data needs"):
        parse_config(["--distill-data", "x.csv"])
    with pytest.raises(ValueError, match="GradCache"):
        parse_config(["--prefix-distill", "kl", "--distill-data", "x.csv", "--mini-batch-size", "4"])
    with pytest.raises(SystemExit):  # argparse: emb cannot teach a prefix
        parse_config(["--prefix-distill", "emb"])
    with pytest.raises(ValueError, match="a prefix cannot learn it"):  # the table says so too
        validate(dataclasses.replace(parse_config([]), prefix_distill="emb"))
    with pytest.raises(ValueError, match="--distill-weight needs --layer-distill or --prefix-distill"):
        parse_config(["--distill-weight", "0.5"])  # no distillation reads it
    with pytest.raises(
        ValueError, match="--distill-temperature needs --layer-distill or --prefix-distill kl$"
    ):
        parse_config(["--2d", "random", "--layer-distill", "mse", "--distill-temperature", "0.1"])
    assert parse_config(["--prefix-distill", "kl", "--distill-temperature", "0.1"]).distill_temperature == 0.1


# --------------------------------------------------------------------------------------------
# End to end: two steps with --distill-data on a tiny model
# --------------------------------------------------------------------------------------------


def test_two_steps_with_distill_data(tiny_model_dir, tmp_path):
    torch.set_num_threads(1)
    texts = distinct_sentences(100, seed=21)
    train_csv = write_csv(tmp_path / "train.csv", ["sentence1", "sentence2", "score"],
                          [[texts[2 * i], texts[2 * i + 1], i / 20] for i in range(20)])  # fmt: skip
    dev_csv = write_csv(tmp_path / "dev.csv", ["sentence1", "sentence2", "score"],
                        [[texts[40 + 2 * i], texts[41 + 2 * i], i / 8] for i in range(8)])  # fmt: skip
    # 25 plain pairs = 50 texts, 2 of which are dev texts and must be dropped
    plain = [[texts[40], texts[41]]] + [[texts[56 + 2 * i], texts[57 + 2 * i]] for i in range(20)]
    plain_csv = write_csv(tmp_path / "plain.csv", ["premise", "hypothesis"], plain)
    common = [
        "--model", str(tiny_model_dir), "--train-data", str(train_csv), "--eval-data", str(dev_csv),
        "--max-steps", "2", "--batch-size", "4", "--dims", "32", "8", "--2d", "random",
        "--n-layers-per-step", "-1", "--layer-distill", "kl", "--log-every", "1", "--seed", "3",
    ]  # fmt: skip
    with_data = train.main([*common, "--distill-data", str(plain_csv), "--output-dir", str(tmp_path / "a")])
    without = train.main([*common, "--output-dir", str(tmp_path / "b")])
    config = json.loads((with_data / "config.json").read_text())
    assert config["derived"]["distill_texts"] == 40
    metrics = [json.loads(line) for line in (with_data / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in metrics if "train/loss" in m]
    assert len(logged) == 2
    for m in logged:
        assert m["train/loss_unlabelled_distill"] > 0 and m["train/loss_distill"] > 0
        # The total is the weighted sum of the logged terms (final layer at each dim, each
        # earlier layer at depth weight l/L, KL and both distillation terms at weight 1).
        parts = m["train/loss_d32"] + m["train/loss_d8"] + m["train/loss_l1"] / 3 + 2 * m["train/loss_l2"] / 3
        parts += m["train/loss_kl"] + m["train/loss_distill"] + m["train/loss_unlabelled_distill"]
        assert m["train/loss"] == pytest.approx(parts, rel=1e-5)
    # The labelled batches and their losses are the same; the extra batches changed the weights.
    base = [json.loads(line) for line in (without / "metrics.jsonl").read_text().splitlines()]
    assert logged[0]["train/loss_d32"] == next(m for m in base if "train/loss" in m)["train/loss_d32"]
    from safetensors.torch import load_file

    wa = load_file(str(with_data / "model" / "model.safetensors"))
    wb = load_file(str(without / "model" / "model.safetensors"))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)

"""STS evaluation against scipy on cosines computed by hand (numpy), with a fake encoder that
counts its calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from mrl.evaluation import correlations, evaluate_sts, format_table, score_pairs


def cosine_by_hand(a: np.ndarray, b: np.ndarray, d: int) -> np.ndarray:
    """Row-wise cosine of the first d values (slice, then normalise), in float64."""
    a = np.asarray(a, dtype=np.float64)[:, :d]
    b = np.asarray(b, dtype=np.float64)[:, :d]
    return np.array([x @ y / (np.sqrt(x @ x) * np.sqrt(y @ y)) for x, y in zip(a, b)])


def scores_by_hand(a: np.ndarray, b: np.ndarray, gold, d: int) -> tuple[float, float]:
    cos = cosine_by_hand(a, b, d)
    return 100 * spearmanr(gold, cos).statistic, 100 * pearsonr(gold, cos).statistic


# --------------------------------------------------------------------------------------------
# correlations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [3, 8, 16])
def test_correlations_match_scipy_on_prefix_cosines(d):
    torch.manual_seed(0)
    n = 30
    emb1 = torch.randn(n, 16) + 3.0  # an offset makes the prefix and full-width cosines differ
    emb2 = emb1 + torch.randn(n, 16) * torch.linspace(0.1, 3.0, n)[:, None]
    gold = np.random.default_rng(0).permutation(n).astype(float) / 5
    gold = gold + np.linspace(5, 0, n)  # correlated with the noise level, but not perfectly
    spearman, pearson = scores_by_hand(emb1.numpy(), emb2.numpy(), gold, d)
    got = correlations(emb1, emb2, list(gold), d)
    assert got["spearman"] == pytest.approx(spearman, abs=1e-4)
    assert got["pearson"] == pytest.approx(pearson, abs=1e-4)


def test_correlations_depend_on_prefix_width():
    """Only the first d values count: changing the tail changes nothing at width d."""
    torch.manual_seed(1)
    emb1, emb2 = torch.randn(20, 8), torch.randn(20, 8)
    gold = np.arange(20.0)
    tail_changed = emb2.clone()
    tail_changed[:, 4:] = torch.randn(20, 4) * 10
    assert correlations(emb1, tail_changed, gold, 4) == pytest.approx(correlations(emb1, emb2, gold, 4))
    assert correlations(emb1, tail_changed, gold, 8) != pytest.approx(correlations(emb1, emb2, gold, 8))


def test_correlations_perfect_rank_gives_100():
    n = 12
    theta = np.linspace(0.1, 1.5, n)  # angle grows, cosine falls
    emb1 = torch.zeros(n, 4)
    emb1[:, 0] = 2.0  # not unit norm: cosine must normalise
    emb2 = torch.zeros(n, 4)
    emb2[:, 0] = torch.tensor(np.cos(theta), dtype=torch.float32) * 3
    emb2[:, 1] = torch.tensor(np.sin(theta), dtype=torch.float32) * 3
    gold = list(np.exp(-5 * theta))  # a monotone, non-linear function of the cosine
    got = correlations(emb1, emb2, gold, 4)
    assert got["spearman"] == pytest.approx(100.0)
    assert got["pearson"] < 99.9  # rank-perfect but not linear
    reversed_gold = [-g for g in gold]
    assert correlations(emb1, emb2, reversed_gold, 4)["spearman"] == pytest.approx(-100.0)


# --------------------------------------------------------------------------------------------
# evaluate_sts with a fake encoder
# --------------------------------------------------------------------------------------------


class FakeEncoder:
    """Fixed vectors per text for each of `num_layers` layers; records every encode call."""

    def __init__(self, table: dict[str, torch.Tensor], num_layers: int):
        self.table = table  # text -> (L, D)
        self.num_layers = num_layers
        self.calls: list[tuple[list[str], bool]] = []

    def encode(self, texts, batch_size=64, all_layers=False, show_progress=False, normalize=True):
        assert not normalize, "evaluation slices raw embeddings and re-normalises each prefix itself"
        self.calls.append((list(texts), all_layers))
        stacked = torch.stack([self.table[t] for t in texts], dim=1)  # (L, N, D)
        return stacked if all_layers else stacked[-1]


LAYERS, DIM = 3, 16


@pytest.fixture
def sts_set():
    """Pairs with repeated texts (within and across columns) and a table of fixed vectors."""
    rng = np.random.default_rng(0)
    vocab = [f"sentence {i}" for i in range(14)]
    torch.manual_seed(0)
    base = torch.randn(len(vocab), DIM) + 1.0
    table = {
        t: torch.stack([base[i] + 0.5 * layer * torch.randn(DIM) for layer in range(LAYERS)])
        for i, t in enumerate(vocab)
    }
    n = 25
    sentences1 = [vocab[i] for i in rng.integers(0, len(vocab), n)]
    sentences2 = [vocab[i] for i in rng.integers(0, len(vocab), n)]
    # No text paired with itself: such pairs tie at cosine 1 exactly, and float32 rounding in the
    # code versus float64 here would break the tie differently and move the Spearman.
    sentences2 = [
        vocab[(vocab.index(b) + 1) % len(vocab)] if a == b else b for a, b in zip(sentences1, sentences2)
    ]
    assert set(sentences1) & set(sentences2)  # texts shared across the columns are encoded once
    # gold loosely follows the final-layer cosine, so correlations are neither 0 nor 100
    final1 = np.stack([table[t][-1].numpy() for t in sentences1])
    final2 = np.stack([table[t][-1].numpy() for t in sentences2])
    gold = list(cosine_by_hand(final1, final2, DIM) + rng.normal(0, 0.3, n))
    return table, sentences1, sentences2, gold


def expected_records(table, sentences1, sentences2, gold, layer, dims):
    a = np.stack([table[t][layer - 1].numpy() for t in sentences1])
    b = np.stack([table[t][layer - 1].numpy() for t in sentences2])
    cells = {d: scores_by_hand(a, b, gold, d) for d in dims}
    full = cells[max(dims)][0]
    return {d: (s, p, s / full) for d, (s, p) in cells.items()}


def check_records(records, table, sentences1, sentences2, gold, layers, dims):
    assert len(records) == len(layers) * len(dims)
    assert {(r["layer"], r["dim"]) for r in records} == {(la, d) for la in layers for d in dims}
    for layer in layers:
        expected = expected_records(table, sentences1, sentences2, gold, layer, dims)
        for r in (r for r in records if r["layer"] == layer):
            spearman, pearson, retention = expected[r["dim"]]
            assert r["spearman"] == pytest.approx(spearman, abs=1e-4)
            assert r["pearson"] == pytest.approx(pearson, abs=1e-4)
            assert r["retention"] == pytest.approx(retention, rel=1e-5)


def test_evaluate_sts_final_layer_encodes_each_text_once(sts_set):
    table, sentences1, sentences2, gold = sts_set
    fake = FakeEncoder(table, LAYERS)
    dims = [8, 16, 4]  # the largest dim is not first: retention is relative to the largest
    records = evaluate_sts(fake, sentences1, sentences2, gold, dims=dims)
    assert len(fake.calls) == 1
    texts, all_layers = fake.calls[0]
    assert not all_layers
    assert len(texts) == len(set(texts))  # no text encoded twice
    assert set(texts) == set(sentences1) | set(sentences2)
    check_records(records, table, sentences1, sentences2, gold, [LAYERS], dims)
    assert next(r for r in records if r["dim"] == 16)["retention"] == pytest.approx(1.0)


def test_evaluate_sts_every_layer_and_dim_from_one_call(sts_set):
    table, sentences1, sentences2, gold = sts_set
    fake = FakeEncoder(table, LAYERS)
    dims, layers = [16, 4], [1, 3, 2]
    records = evaluate_sts(fake, sentences1, sentences2, gold, dims=dims, layers=layers)
    assert len(fake.calls) == 1
    texts, all_layers = fake.calls[0]
    assert all_layers
    assert len(texts) == len(set(texts))
    assert set(texts) == set(sentences1) | set(sentences2)
    check_records(records, table, sentences1, sentences2, gold, layers, dims)
    for layer in layers:  # retention is per layer: 1 at that layer's largest dim
        top = next(r for r in records if r["layer"] == layer and r["dim"] == 16)
        assert top["retention"] == pytest.approx(1.0)


@pytest.mark.parametrize("layers", [[0], [LAYERS + 1], [1, -1]])
def test_evaluate_sts_layers_outside_range_raise(sts_set, layers):
    table, sentences1, sentences2, gold = sts_set
    fake = FakeEncoder(table, LAYERS)
    with pytest.raises(ValueError):
        evaluate_sts(fake, sentences1, sentences2, gold, dims=[16], layers=layers)


def test_evaluate_sts_length_mismatch_raises(sts_set):
    table, sentences1, sentences2, gold = sts_set
    with pytest.raises(ValueError):
        evaluate_sts(FakeEncoder(table, LAYERS), sentences1, sentences2[:-1], gold, dims=[16])


# --------------------------------------------------------------------------------------------
# format_table
# --------------------------------------------------------------------------------------------


def test_format_table_one_row_per_layer(sts_set):
    table, sentences1, sentences2, gold = sts_set
    dims, layers = [16, 8, 4], [1, 2, 3]
    records = evaluate_sts(FakeEncoder(table, LAYERS), sentences1, sentences2, gold, dims=dims, layers=layers)
    text = format_table(records)
    lines = text.strip().splitlines()
    assert len(lines) == 2 + len(layers)  # header, separator, one row per layer
    assert all(line.startswith("|") and line.endswith("|") for line in lines)
    n_columns = lines[0].count("|")
    assert n_columns == 1 + 1 + len(dims)  # layer column + one per dim
    assert all(line.count("|") == n_columns for line in lines)
    assert set(lines[1].replace("|", "").replace(" ", "")) <= {"-", ":"}
    for d in dims:
        assert str(d) in lines[0]
    rows = {int(line.split("|")[1]): line for line in lines[2:]}
    assert sorted(rows) == layers
    for r in records:  # every cell shows its metric value in its layer's row
        assert f"{r['spearman']:.2f}" in rows[r["layer"]]


# --------------------------------------------------------------------------------------------
# Stored precisions (eval.py --precisions with --sts) and bytes per vector (issue 26)
# --------------------------------------------------------------------------------------------


def unit_by_hand(a: np.ndarray, d: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)[:, :d]
    return a / np.sqrt((a * a).sum(1, keepdims=True))


def similarity_by_hand(a: np.ndarray, b: np.ndarray, d: int, precision: str) -> np.ndarray:
    """Both sides stored at ``precision``: int8 = 256 levels per dimension between the min and max
    of the set's own unit prefixes (both sides), then cosine; binary = +-1 signs, mean product."""
    ua, ub = unit_by_hand(a, d), unit_by_hand(b, d)
    if precision == "float32":
        return (ua * ub).sum(1)
    if precision == "int8":
        both = np.concatenate([ua, ub])
        low, high = both.min(0), both.max(0)
        step = (high - low) / 255
        ua, ub = (low + np.clip(np.round((u - low) / step), 0, 255) * step for u in (ua, ub))
        return (ua * ub).sum(1) / np.sqrt((ua * ua).sum(1) * (ub * ub).sum(1))
    sa, sb = np.where(ua > 0, 1.0, -1.0), np.where(ub > 0, 1.0, -1.0)
    return (sa * sb).sum(1) / d  # agreements minus disagreements, over d: 1 - 2 * hamming / d


@pytest.mark.parametrize("precision", ["int8", "binary"])
@pytest.mark.parametrize("d", [5, 16])
def test_correlations_at_stored_precisions_match_scipy_on_hand_similarities(precision, d):
    torch.manual_seed(3)
    n = 40
    emb1 = torch.randn(n, 16)
    emb2 = emb1 + torch.randn(n, 16) * torch.linspace(0.2, 2.0, n)[:, None]
    gold = np.linspace(5, 0, n) + np.random.default_rng(3).normal(0, 0.5, n)
    similarity = similarity_by_hand(emb1.numpy(), emb2.numpy(), d, precision)
    got = correlations(emb1, emb2, list(gold), d, precision)
    assert got["spearman"] == pytest.approx(100 * spearmanr(gold, similarity).statistic, abs=1e-4)
    assert got["pearson"] == pytest.approx(100 * pearsonr(gold, similarity).statistic, abs=1e-4)
    unsigned = {"int8": "uint8", "binary": "ubinary"}[precision]  # the same levels / bits
    assert correlations(emb1, emb2, list(gold), d, unsigned) == pytest.approx(got)


def test_score_pairs_records_every_precision_with_its_bytes(sts_set):
    table, sentences1, sentences2, gold = sts_set
    emb1 = torch.stack([torch.stack([table[t][la] for t in sentences1]) for la in (0, 2)])  # (2, N, D)
    emb2 = torch.stack([torch.stack([table[t][la] for t in sentences2]) for la in (0, 2)])
    dims, precisions = [5, 16], ["float32", "int8", "binary"]
    records = score_pairs(emb1, emb2, gold, dims, [1, 3], precisions)
    assert [(r["layer"], r["dim"], r["precision"], r["bytes"]) for r in records] == [
        (1, 5, "float32", 20), (1, 5, "int8", 5), (1, 5, "binary", 1),
        (1, 16, "float32", 64), (1, 16, "int8", 16), (1, 16, "binary", 2),
        (3, 5, "float32", 20), (3, 5, "int8", 5), (3, 5, "binary", 1),
        (3, 16, "float32", 64), (3, 16, "int8", 16), (3, 16, "binary", 2),
    ]  # fmt: skip
    for row, layer in ((0, 1), (2, 3)):
        a = np.stack([table[t][row].numpy() for t in sentences1])
        b = np.stack([table[t][row].numpy() for t in sentences2])
        full = 100 * spearmanr(gold, similarity_by_hand(a, b, 16, "float32")).statistic
        for r in (r for r in records if r["layer"] == layer):
            spearman = 100 * spearmanr(gold, similarity_by_hand(a, b, r["dim"], r["precision"])).statistic
            assert r["spearman"] == pytest.approx(spearman, abs=1e-4)
            assert r["retention"] == pytest.approx(spearman / full, rel=1e-4)  # vs float32 at 16
    # Without float32 there is nothing to retain against.
    only_bits = score_pairs(emb1, emb2, gold, dims, [1, 3], ["binary"])
    assert all(r["retention"] is None for r in only_bits)
    assert format_table(only_bits).count("|") > 0  # a table without retention still prints


def test_format_table_shows_bytes_per_vector(sts_set):
    table, sentences1, sentences2, gold = sts_set
    emb1 = torch.stack([table[t] for t in sentences1], dim=1)  # (L, N, D)
    emb2 = torch.stack([table[t] for t in sentences2], dim=1)
    floats = score_pairs(emb1, emb2, gold, [16, 8], [1, 2, 3])
    header = format_table(floats).splitlines()[0]
    assert header == "| layer | d=16 (64 B) | d=8 (32 B) |"  # float32: 4 bytes a dim
    # Records of an older eval_dev.json have no bytes: the table counts float32 itself.
    old = [{k: v for k, v in r.items() if k not in ("bytes", "precision")} for r in floats]
    assert format_table(old) == format_table(floats)
    # Several precisions: a row per (layer, precision), each cell with its own bytes.
    mixed = score_pairs(emb1, emb2, gold, [16, 8], [1, 2, 3], ["float32", "binary"])
    lines = format_table(mixed).splitlines()
    assert lines[0] == "| layer | precision | d=16 | d=8 |" and len(lines) == 2 + 3 * 2
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in lines[2:]}
    for r in mixed:
        cell = f"{r['spearman']:.2f} ({100 * r['retention']:.1f}%, {r['bytes']} B)"
        assert cell in rows[(str(r["layer"]), r["precision"])]
    assert "(2 B)" not in lines[0] and "2 B)" in rows[("3", "binary")]  # 16 sign bits

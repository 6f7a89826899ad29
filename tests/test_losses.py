"""Tests of mrl.losses against independent, hand-written references (reference.md, the docstrings).

The references below use python floats and explicit loops; they never call the helpers of
mrl.losses. Embeddings are float64; comparisons use a float32-sized tolerance because the
implementation computes its logits in fp32 (see `test_float64_inputs_keep_float64`).
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from mrl.losses import (
    check_dims,
    cosent_loss,
    depth_weight,
    fixed_pairs_loss,
    gte_loss,
    layer_dropping_loss,
    layer_kl,
    matryoshka_loss,
    mnrl_loss,
    prefix,
)

TOL = {"rel": 1e-5, "abs": 1e-6}


# --------------------------------------------------------------------------------------------
# Independent references (python floats, explicit loops)
# --------------------------------------------------------------------------------------------


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    """Seeded float64 normal samples."""
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def unit_by_hand(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| over the last axis, written out."""
    return x / torch.sqrt((x * x).sum(dim=-1, keepdim=True))


def cos_by_hand(u: torch.Tensor, v: torch.Tensor) -> float:
    """Cosine of two 1-D vectors as a python float."""
    u, v = u.tolist(), v.tolist()
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def logsumexp_by_hand(values: list[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def ce_by_hand(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target]."""
    return logsumexp_by_hand(logits) - logits[target]


def cosent_by_hand(columns: torch.Tensor, scores, scale: float = 20.0) -> float:
    """log(1 + sum over ordered pairs with y_i < y_j of exp(s_i - s_j))."""
    batch = columns.shape[1]
    y = [float(t) for t in scores]
    s = [scale * cos_by_hand(columns[0, i], columns[1, i]) for i in range(batch)]
    acc = 0.0
    for i in range(batch):
        for j in range(batch):
            if y[i] < y[j]:
                acc += math.exp(s[i] - s[j])
    return math.log1p(acc)


def mnrl_by_hand(columns: torch.Tensor, labels=None, scale: float = 20.0, symmetric: bool = False) -> float:
    """Mean CE of each anchor over [positives..., hard-neg column 1..., column 2...], target i."""
    n_cols, batch = columns.shape[0], columns.shape[1]
    candidates = [columns[c, j] for c in range(1, n_cols) for j in range(batch)]
    forward = 0.0
    for i in range(batch):
        logits = [scale * cos_by_hand(columns[0, i], cand) for cand in candidates]
        forward += ce_by_hand(logits, i) / batch
    if not symmetric:
        return forward
    backward = 0.0
    for i in range(batch):
        logits = [scale * cos_by_hand(columns[1, i], columns[0, j]) for j in range(batch)]
        backward += ce_by_hand(logits, i) / batch
    return (forward + backward) / 2


def matryoshka_by_hand(base_by_hand, columns: torch.Tensor, labels, dims, weights=None) -> float:
    """sum_k w_k * base(x[..., :d_k] / ||x[..., :d_k]||)."""
    weights = [1.0] * len(dims) if weights is None else weights
    return sum(w * base_by_hand(unit_by_hand(columns[..., :d]), labels) for d, w in zip(dims, weights))


def kl_by_hand(final: torch.Tensor, layer: torch.Tensor, temperature: float) -> float:
    """T * mean over rows of sum_k p_k (log p_k - log q_k), p = softmax(final/T), q = softmax(layer/T)."""
    rows_p = final.reshape(-1, final.shape[-1]).tolist()
    rows_q = layer.reshape(-1, layer.shape[-1]).tolist()
    acc = 0.0
    for fp, fq in zip(rows_p, rows_q):
        log_zp = logsumexp_by_hand([v / temperature for v in fp])
        log_zq = logsumexp_by_hand([v / temperature for v in fq])
        for a, b in zip(fp, fq):
            log_p, log_q = a / temperature - log_zp, b / temperature - log_zq
            acc += math.exp(log_p) * (log_p - log_q)
    return temperature * acc / len(rows_p)


# --------------------------------------------------------------------------------------------
# CoSENT
# --------------------------------------------------------------------------------------------


def test_cosent_matches_double_loop_with_ties():
    """cosent_loss == brute-force double loop over y_i < y_j (scores contain ties)."""
    columns = randn(2, 7, 5, seed=1)
    scores = torch.tensor([0.0, 2.5, 1.0, 2.5, 0.0, 4.0, 1.0], dtype=torch.float64)
    assert float(cosent_loss(columns, scores)) == pytest.approx(cosent_by_hand(columns, scores), **TOL)
    assert float(cosent_loss(columns, scores, scale=7.0)) == pytest.approx(
        cosent_by_hand(columns, scores, scale=7.0), **TOL
    )


def test_cosent_all_ties_is_zero():
    """All scores equal: no pair counts, so the loss is log(1) = 0 by hand."""
    columns = randn(2, 5, 4, seed=2)
    assert float(cosent_loss(columns, torch.full((5,), 3.0, dtype=torch.float64))) == 0.0


def test_cosent_closed_form_two_pairs():
    """Two pairs with known cosines: loss = log(1 + exp(20 * (c1 - c2))) by hand."""
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    v = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)  # c1 = 1/sqrt(2), c2 = 0
    scores = torch.tensor([0.0, 1.0], dtype=torch.float64)  # y1 < y2
    expected = math.log(1 + math.exp(20 * (1 / math.sqrt(2) - 0.0)))
    assert float(cosent_loss(torch.stack([u, v]), scores)) == pytest.approx(expected, **TOL)
    # reversed order: the well-ranked case, log(1 + exp(20 * (c2 - c1)))
    expected_rev = math.log(1 + math.exp(20 * (0.0 - 1 / math.sqrt(2))))
    assert float(cosent_loss(torch.stack([u, v]), scores.flip(0))) == pytest.approx(expected_rev, **TOL)


@pytest.mark.parametrize("transform", [lambda y: 3 * y + 1, torch.exp, lambda y: y**3, torch.atan])
def test_cosent_invariant_to_monotone_score_transforms(transform):
    """Only label order matters: a strictly increasing transform of y leaves the loss unchanged."""
    columns = randn(2, 6, 4, seed=3)
    scores = torch.tensor([0.2, -1.0, 0.7, 0.2, 2.0, -0.3], dtype=torch.float64)
    assert torch.equal(cosent_loss(columns, scores), cosent_loss(columns, transform(scores)))
    assert not torch.equal(cosent_loss(columns, scores), cosent_loss(columns, -scores))


def test_cosent_gradcheck():
    """autograd.gradcheck (finite differences) of cosent_loss on small float64 inputs."""
    columns = randn(2, 4, 3, seed=4).requires_grad_(True)
    scores = torch.tensor([0.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: cosent_loss(x, scores, scale=2.0), (columns,))


def test_cosent_rejects_wrong_column_count():
    """CoSENT needs exactly 2 columns (u, v)."""
    with pytest.raises(ValueError):
        cosent_loss(randn(3, 4, 5), torch.zeros(4, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# In-batch negatives (MNRL)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_hard_negative_columns", [0, 1, 2])
def test_mnrl_matches_brute_force(n_hard_negative_columns):
    """mnrl_loss == per-anchor -log softmax over [positives, hard-neg columns...] by hand."""
    columns = randn(2 + n_hard_negative_columns, 5, 6, seed=5)
    assert float(mnrl_loss(columns)) == pytest.approx(mnrl_by_hand(columns), **TOL)


@pytest.mark.parametrize("n_hard_negative_columns", [0, 1, 2])
def test_mnrl_symmetric_matches_brute_force(n_hard_negative_columns):
    """Symmetric mnrl == average of the forward term and positive-i-vs-anchors CE by hand."""
    columns = randn(2 + n_hard_negative_columns, 5, 6, seed=6)
    expected = mnrl_by_hand(columns, symmetric=True)
    assert float(mnrl_loss(columns, symmetric=True)) == pytest.approx(expected, **TOL)


def test_mnrl_scale_is_respected():
    """The scale argument multiplies the cosines (brute force at scale 5 vs 20)."""
    columns = randn(3, 4, 6, seed=7)
    assert float(mnrl_loss(columns, scale=5.0)) == pytest.approx(mnrl_by_hand(columns, scale=5.0), **TOL)
    assert float(mnrl_loss(columns, scale=5.0)) != pytest.approx(float(mnrl_loss(columns)), **TOL)


@pytest.mark.parametrize("symmetric", [False, True])
def test_mnrl_gradcheck(symmetric):
    """autograd.gradcheck (finite differences) of mnrl_loss on small float64 inputs."""
    columns = randn(3, 3, 4, seed=8).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: mnrl_loss(x, scale=2.0, symmetric=symmetric), (columns,))


def test_mnrl_hard_negative_layout():
    """Hard negatives are shared by all anchors (row order irrelevant); positives are per row."""
    columns = randn(4, 6, 5, seed=9)
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    shuffled_negatives = columns.clone()
    shuffled_negatives[2] = columns[2, perm]
    shuffled_negatives[3] = columns[3, perm.flip(0)]
    base = float(mnrl_loss(columns))
    assert float(mnrl_loss(shuffled_negatives)) == pytest.approx(base, **TOL)
    shuffled_positives = columns.clone()
    shuffled_positives[1] = columns[1, perm]
    assert float(mnrl_loss(shuffled_positives)) != pytest.approx(base, **TOL)


def test_mnrl_rejects_single_column():
    """In-batch negatives need an anchor and a positive column."""
    with pytest.raises(ValueError):
        mnrl_loss(randn(1, 4, 5))


@pytest.mark.parametrize(
    "loss",
    [
        lambda x: cosent_loss(x[:2], torch.arange(x.shape[1], dtype=torch.float64)),
        lambda x: mnrl_loss(x),
        lambda x: layer_kl(x[0], x[1], 0.3),
    ],
    ids=["cosent", "mnrl", "layer_kl"],
)
def test_float64_inputs_keep_float64(loss):
    """A float64 embedding must not be silently down-cast: the loss comes back in float64."""
    assert loss(randn(3, 4, 5, seed=10)).dtype == torch.float64


# --------------------------------------------------------------------------------------------
# prefix
# --------------------------------------------------------------------------------------------


def test_prefix_slices_then_normalises():
    """prefix(x, d) == x[:d] / ||x[:d]|| (by hand), unit norm at every d including D."""
    x = randn(3, 4, 8, seed=11) * 5
    for d in range(1, 9):
        got = prefix(x, d)
        assert got.shape == (3, 4, d)
        torch.testing.assert_close(got, unit_by_hand(x[..., :d]))
        torch.testing.assert_close(torch.sqrt((got * got).sum(-1)), torch.ones(3, 4, dtype=torch.float64))


def test_prefix_differs_from_normalise_then_slice():
    """Normalising the full vector first leaves prefixes with norm < 1: not what prefix returns."""
    x = randn(4, 8, seed=12)
    wrong = unit_by_hand(x)[..., :3]
    assert not torch.allclose(prefix(x, 3), wrong)
    assert bool((torch.sqrt((wrong * wrong).sum(-1)) < 1).all())


# --------------------------------------------------------------------------------------------
# Matryoshka
# --------------------------------------------------------------------------------------------

DIMS = [2, 4, 8]


def test_matryoshka_is_weighted_sum_over_dims_cosent():
    """matryoshka_loss == sum_k w_k * cosent(x[..., :d]/||x[..., :d]||) by hand, custom weights."""
    columns = randn(2, 6, 8, seed=13) * 3
    scores = torch.tensor([0.1, 0.5, 0.5, 0.9, 0.0, 0.3], dtype=torch.float64)
    weights = [0.5, 2.0, 1.5]
    total, terms = matryoshka_loss(cosent_loss, columns, scores, DIMS, weights)
    expected = matryoshka_by_hand(cosent_by_hand, columns, scores, DIMS, weights)
    assert float(total) == pytest.approx(expected, **TOL)
    assert set(terms) == {"d2", "d4", "d8"}
    for d in DIMS:  # unweighted terms
        expected_d = cosent_by_hand(unit_by_hand(columns[..., :d]), scores)
        assert float(terms[f"d{d}"]) == pytest.approx(expected_d, **TOL)


def test_matryoshka_is_sum_not_mean_mnrl():
    """Default weights are 1 (a sum): symmetric mnrl over dims by hand, with scale bound by partial."""
    columns = randn(3, 5, 8, seed=14)
    base = partial(mnrl_loss, scale=10.0, symmetric=True)
    ref = partial(mnrl_by_hand, scale=10.0, symmetric=True)
    total, _ = matryoshka_loss(base, columns, None, DIMS)
    assert float(total) == pytest.approx(matryoshka_by_hand(ref, columns, None, DIMS), **TOL)


def test_matryoshka_n_dims_per_step_samples_k_deterministically():
    """n_dims_per_step=k uses exactly k dims; same seed -> same dims; total = weighted sum of them."""
    columns = randn(3, 4, 16, seed=15)
    dims, weights = [2, 4, 8, 16], [1.0, 2.0, 3.0, 4.0]
    seen = set()
    for seed in range(20):
        runs = [
            matryoshka_loss(mnrl_loss, columns, None, dims, weights, 2, torch.Generator().manual_seed(seed))
            for _ in range(2)
        ]
        (total, terms), (total_again, terms_again) = runs
        assert len(terms) == 2 and set(terms) <= {f"d{d}" for d in dims}
        assert list(terms) == list(terms_again) and torch.equal(total, total_again)
        by_key = dict(zip((f"d{d}" for d in dims), weights))
        assert float(total) == pytest.approx(sum(by_key[k] * float(t) for k, t in terms.items()), **TOL)
        seen.add(tuple(terms))
    assert len(seen) > 1  # really sampled, not always the same pair


def test_matryoshka_term_has_no_gradient_beyond_its_dim():
    """The dim-d term is a function of x[..., :d] only: autograd gives exactly 0 beyond d."""
    columns = randn(3, 4, 8, seed=16).requires_grad_(True)
    _, terms = matryoshka_loss(mnrl_loss, columns, None, DIMS)
    for d in DIMS:
        (grad,) = torch.autograd.grad(terms[f"d{d}"], columns, retain_graph=True)
        assert bool((grad[..., d:] == 0).all())
        assert bool((grad[..., :d] != 0).any())


def test_matryoshka_weights_length_mismatch_raises():
    """One weight per dim; a wrong count is a ValueError."""
    with pytest.raises(ValueError):
        matryoshka_loss(mnrl_loss, randn(2, 3, 8), None, DIMS, weights=[1.0, 1.0])


@pytest.mark.parametrize("dims", [[0, 4], [-2, 4], [4, 4, 8], [4, 9], []])
def test_check_dims_rejects_bad_dims(dims):
    """Dims must be positive, unique and <= the model dim (8 here)."""
    with pytest.raises(ValueError):
        check_dims(dims, 8)


def test_check_dims_accepts_valid_dims():
    """Positive, unique dims up to the model dim pass silently."""
    check_dims([1, 4, 8], 8)


# --------------------------------------------------------------------------------------------
# Layer KL
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.3, 1.0])
def test_layer_kl_matches_hand_kl(temperature):
    """layer_kl == T * mean over rows of sum p (log p - log q), softmaxes written by hand."""
    final, layer = randn(2, 4, 6, seed=17), randn(2, 4, 6, seed=18)
    got = float(layer_kl(final, layer, temperature))
    assert got == pytest.approx(kl_by_hand(final, layer, temperature), **TOL)
    assert float(layer_kl(final, final, temperature)) == pytest.approx(0.0, abs=1e-6)


def test_layer_kl_detach_target():
    """detach_target=True: no gradient reaches `final`; False: it does."""
    for detach, expect_grad in [(True, False), (False, True)]:
        final = randn(4, 6, seed=19).requires_grad_(True)
        layer = randn(4, 6, seed=20).requires_grad_(True)
        layer_kl(final, layer, 0.3, detach_target=detach).backward()
        final_has_grad = final.grad is not None and bool((final.grad != 0).any())
        assert final_has_grad == expect_grad
        assert bool((layer.grad != 0).any())


# --------------------------------------------------------------------------------------------
# 2D: random layer dropping
# --------------------------------------------------------------------------------------------

SCORES = torch.tensor([0.0, 1.0, 0.5, 1.0, 2.0], dtype=torch.float64)


def depth_weight_by_hand(idx: int, num_layers: int, n_sampled: int, weighting: str) -> float:
    """The weight of hidden state ``idx`` (0 = the embedding layer's output, l = block l) with
    ``n_sampled`` layers drawn, written from the formulas (reference.md, 2D): ours l/L summed (the
    embedding output, an opt-in candidate, as block 1); upstream's (AdaptiveLayerLoss) on the
    hidden-state index, each divided by the number of layers drawn that step."""
    if weighting == "proportional":
        return max(idx, 1) / num_layers
    upstream = {"uniform": 1.0, "log": 1.0 / (1.0 + math.log(1.0 + idx)), "reciprocal": 1.0 / (1.0 + idx)}
    return upstream[weighting] / n_sampled


def test_depth_weights_by_hand_for_six_blocks():
    """The four weightings at L = 6 with one layer drawn, as numbers (embedding output, block 1, 2, 5)."""
    table = {
        "proportional": (1 / 6, 1 / 6, 2 / 6, 5 / 6),
        "uniform": (1.0, 1.0, 1.0, 1.0),
        "log": (1.0, 1 / (1 + math.log(2)), 1 / (1 + math.log(3)), 1 / (1 + math.log(6))),
        "reciprocal": (1.0, 0.5, 1 / 3, 1 / 6),
    }
    for weighting, expected in table.items():
        for idx, w in zip((0, 1, 2, 5), expected):
            assert depth_weight(idx, 6, weighting) == pytest.approx(w, rel=1e-12)
            assert depth_weight_by_hand(idx, 6, 1, weighting) == pytest.approx(w, rel=1e-12)
    with pytest.raises(ValueError, match="proportional"):
        depth_weight(1, 6, "linear")


def layer_dropping_by_hand(layers, labels, dims, weights, last, prior, kl_weight, temperature, weighting,
                           embedding_layer=False):  # fmt: skip
    """last * M(final) + sum_l prior * w(l) * M(layer l) + kl_weight * sum_l KL(final, layer l),
    every candidate drawn: hidden states 0..L-1 (row 0 of ``layers`` the embedding output) with
    ``embedding_layer``, else blocks 1..L-1 (row l - 1 block l)."""
    first = 0 if embedding_layer else 1
    num_layers = layers.shape[0] - 1 + first  # L blocks
    candidates = list(range(layers.shape[0] - 1))  # rows
    total = last * matryoshka_by_hand(cosent_by_hand, layers[-1], labels, dims, weights)
    for row in candidates:
        w = depth_weight_by_hand(row + first, num_layers, len(candidates), weighting)
        total += prior * w * matryoshka_by_hand(cosent_by_hand, layers[row], labels, dims, weights)
        total += kl_weight * kl_by_hand(layers[-1], layers[row], temperature)
    return total


@pytest.mark.parametrize(
    "weighting, embedding_layer",
    [("proportional", False), ("proportional", True), ("uniform", True), ("log", True), ("reciprocal", True)],
)
def test_layer_dropping_all_layers_matches_hand_total(weighting, embedding_layer):
    """n_layers_per_step=-1: total == the hand-built sum over every candidate (every weighting):
    with the embedding output, 4 rows are hidden states 0..3 of a 3-block model."""
    layers = randn(4, 2, 5, 8, seed=21) * 2
    kwargs = dict(last_layer_weight=1.5, prior_layers_weight=0.7, kl_weight=0.4, kl_temperature=0.5)
    total, terms = layer_dropping_loss(
        cosent_loss, layers, SCORES, DIMS, [1.0, 0.5, 2.0], n_layers_per_step=-1,
        depth_weighting=weighting, embedding_layer=embedding_layer, **kwargs,
    )  # fmt: skip
    expected = layer_dropping_by_hand(
        layers, SCORES, DIMS, [1.0, 0.5, 2.0], 1.5, 0.7, 0.4, 0.5, weighting, embedding_layer
    )
    assert float(total) == pytest.approx(expected, **TOL)
    names = {"l0", "l1", "l2"} if embedding_layer else {"l1", "l2", "l3"}
    assert set(terms) == {"d2", "d4", "d8", "kl"} | names
    kl_sum = sum(kl_by_hand(layers[-1], layers[i], 0.5) for i in range(3))
    assert float(terms["kl"]) == pytest.approx(kl_sum, **TOL)


@pytest.mark.parametrize("weighting", ["uniform", "log", "reciprocal"])
def test_upstream_weightings_need_the_embedding_output(weighting):
    """Upstream draws among hidden states 0..L-1: without the embedding output it is not upstream's sum."""
    with pytest.raises(ValueError, match="embedding_layer"):
        layer_dropping_loss(cosent_loss, randn(3, 2, 5, 8), SCORES, DIMS, depth_weighting=weighting)


def test_layer_dropping_samples_one_earlier_layer():
    """n_layers_per_step=1: exactly one "l{l}" key with l in 1..L-1, all of them reached over seeds."""
    layers = randn(5, 2, 5, 8, seed=22)
    seen = set()
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        total, terms = layer_dropping_loss(cosent_loss, layers, SCORES, DIMS, generator=gen)
        layer_keys = [k for k in terms if k.startswith("l")]
        assert len(layer_keys) == 1
        layer = int(layer_keys[0][1:])
        assert 1 <= layer <= 4
        assert set(terms) == {"d2", "d4", "d8", f"l{layer}", "kl"}
        m_layer = matryoshka_by_hand(cosent_by_hand, layers[layer - 1], SCORES, DIMS)
        expected = matryoshka_by_hand(cosent_by_hand, layers[-1], SCORES, DIMS)
        expected += layer / 5 * m_layer + kl_by_hand(layers[-1], layers[layer - 1], 0.3)
        assert float(total) == pytest.approx(expected, **TOL)
        assert float(terms[f"l{layer}"]) == pytest.approx(m_layer, **TOL)  # unweighted
        seen.add(layer)
    assert seen == {1, 2, 3, 4}


def test_layer_dropping_without_kl_has_no_kl_key():
    """kl_weight=0: no "kl" term, total = M(final) + sum_l w(l) M(layer l) by hand."""
    layers = randn(3, 2, 5, 8, seed=23)
    total, terms = layer_dropping_loss(cosent_loss, layers, SCORES, DIMS, n_layers_per_step=-1, kl_weight=0)
    assert "kl" not in terms
    expected = layer_dropping_by_hand(layers, SCORES, DIMS, None, 1.0, 1.0, 0.0, 0.3, "proportional")
    assert float(total) == pytest.approx(expected, **TOL)


@pytest.mark.parametrize(
    "weighting, embedding_layer",
    [("proportional", False), ("proportional", True), ("uniform", True), ("log", True), ("reciprocal", True)],
)
def test_layer_dropping_two_sampled_layers_by_hand(weighting, embedding_layer):
    """n_layers_per_step=2 of 4 candidates: the two drawn layers (read from the term keys)
    weighted by hand; upstream's weightings divide each by 2, ours does not. With the embedding
    output the 5 rows are hidden states 0..4 (4 blocks), else blocks 1..5; every candidate,
    the embedding output included, is drawn over the seeds."""
    layers = randn(5, 2, 5, 8, seed=25) * 2
    first = 0 if embedding_layer else 1
    num_layers = 4 if embedding_layer else 5
    seen = set()
    for seed in range(12):
        gen = torch.Generator().manual_seed(seed)
        total, terms = layer_dropping_loss(
            cosent_loss, layers, SCORES, DIMS, n_layers_per_step=2, kl_weight=0.3,
            depth_weighting=weighting, generator=gen, embedding_layer=embedding_layer,
        )  # fmt: skip
        drawn = sorted(int(k[1:]) for k in terms if k.startswith("l"))
        assert len(drawn) == 2 and all(first <= b <= first + 3 for b in drawn)
        seen.update(drawn)
        expected = matryoshka_by_hand(cosent_by_hand, layers[-1], SCORES, DIMS)
        for b in drawn:
            m = matryoshka_by_hand(cosent_by_hand, layers[b - first], SCORES, DIMS)
            expected += depth_weight_by_hand(b, num_layers, 2, weighting) * m
            expected += 0.3 * kl_by_hand(layers[-1], layers[b - first], 0.3)  # KL: summed, not averaged
        assert float(total) == pytest.approx(expected, **TOL)
    assert seen == set(range(first, first + 4))


# --------------------------------------------------------------------------------------------
# GTE's directions and hardness weighting (issue 25)
# --------------------------------------------------------------------------------------------


def gte_by_hand(columns, scale=20.0, directions=("query-doc",), joint=True, hardness="off", alpha=0.0):
    """GTE / hardness-weighted InfoNCE written from the formulas, one anchor at a time, as torch
    scalars (so autograd gives the reference gradient). For anchor i with query q_i, positive p_i
    and documents D (positives, then each hard-negative column): blocks query-doc s(q_i, D_j) (+
    alpha * stopgrad cos on the negatives of the chosen kind), query-query s(q_i, q_j) j != i,
    doc-query s(p_i, q_j) every j, doc-doc s(p_i, D_j) for documents of other queries."""
    n_cols, batch = columns.shape[0], columns.shape[1]

    def cos(u, v):
        return (u * v).sum() / torch.sqrt((u * u).sum() * (v * v).sum())

    docs = [(c, j) for c in range(1, n_cols) for j in range(batch)]  # (column, row) of each document
    total = 0.0
    for i in range(batch):
        q, p = columns[0, i], columns[1, i]
        blocks = {"query-doc": [], "query-query": [], "doc-query": [], "doc-doc": []}
        for c, j in docs:
            c_qd = cos(q, columns[c, j])
            logit = scale * c_qd
            is_positive = (c, j) == (1, i)
            is_own_hard = j == i and c >= 2
            boosted = {"off": False, "in-batch": j != i, "hard": is_own_hard, "all": not is_positive}[
                hardness
            ]
            if boosted:
                logit = logit + alpha * c_qd.detach()
            blocks["query-doc"].append(logit)
            if j != i:  # doc-doc: documents of other queries only
                blocks["doc-doc"].append(scale * cos(p, columns[c, j]))
        for j in range(batch):
            if j != i:
                blocks["query-query"].append(scale * cos(q, columns[0, j]))
            blocks["doc-query"].append(scale * cos(p, columns[0, j]))
        positive = scale * cos(q, p)  # never boosted

        def lse(values):
            return torch.logsumexp(torch.stack(values), 0)

        if joint:
            log_z = lse([v for d in directions for v in blocks[d]])
        else:
            log_z = sum(lse(blocks[d]) for d in directions) / len(directions)
        total = total + (log_z - positive)
    return total / batch


GTE_CASES = [  # (directions, partition mode, hardness, alpha)
    (("query-doc",), "joint", "off", 0.0),
    (("query-doc", "query-query", "doc-query", "doc-doc"), "joint", "off", 0.0),
    (("query-doc", "doc-doc"), "joint", "off", 0.0),
    (("query-doc", "doc-query"), "per-direction", "off", 0.0),
    (("query-doc",), "joint", "in-batch", 3.0),
    (("query-doc",), "joint", "hard", 3.0),
    (("query-doc",), "joint", "all", 3.0),
    (("query-doc", "query-query", "doc-query", "doc-doc"), "joint", "all", 5.0),
    (("query-doc", "doc-query"), "per-direction", "hard", 2.0),
]


@pytest.mark.parametrize("n_columns", [2, 3])
@pytest.mark.parametrize("directions, partition, hardness, alpha", GTE_CASES)
def test_gte_value_and_gradient_match_hand_transcription(n_columns, directions, partition, hardness, alpha):
    """Value and gradient (w.r.t. every embedding) equal the loop-by-loop transcription to 1e-6."""
    x = (randn(n_columns, 4, 8, seed=41) * 2).requires_grad_(True)
    got = gte_loss(x, None, 20.0, directions, partition, hardness, alpha)
    (got_grad,) = torch.autograd.grad(got, x)
    want = gte_by_hand(x, 20.0, directions, partition == "joint", hardness, alpha)
    (want_grad,) = torch.autograd.grad(want, x)
    assert got.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-6, atol=1e-6)


def test_gte_query_doc_alone_is_mnrl_and_per_direction_pair_is_symmetric():
    """The known special cases: query-doc alone = mnrl_loss; query-doc + doc-query per direction =
    mnrl_loss(symmetric=True) (upstream deprecates its symmetric loss for exactly this)."""
    x = randn(3, 5, 8, seed=42)
    assert float(gte_loss(x, directions=("query-doc",))) == pytest.approx(float(mnrl_loss(x)), rel=1e-12)
    pair = gte_loss(x, directions=("query-doc", "doc-query"), partition_mode="per-direction")
    assert float(pair) == pytest.approx(float(mnrl_loss(x, symmetric=True)), rel=1e-12)


def test_gte_hardness_weight_gets_no_gradient():
    """The hardness term is alpha * stopgrad(cos): with scale 0 the logits still differ by the
    hardness terms, but no gradient flows (every logit is a constant)."""
    x = randn(3, 4, 8, seed=43).requires_grad_(True)
    loss = gte_loss(x, scale=0.0, hardness="all", hardness_strength=4.0)
    assert loss.item() != pytest.approx(math.log(2 * 4), rel=1e-3)  # the weights changed the softmax
    (grad,) = torch.autograd.grad(loss, x)
    assert float(grad.abs().max()) == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(directions=("doc-query",)), "query-doc"),
        (dict(directions=("query-doc", "query-doc")), "distinct"),
        (dict(directions=("query-doc", "sideways")), "distinct"),
        (dict(directions=("query-doc", "query-query"), partition_mode="per-direction"), "positive"),
        (dict(partition_mode="separate"), "partition_mode"),
        (dict(hardness="most"), "hardness"),
    ],
)
def test_gte_bad_options_are_loud(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gte_loss(randn(2, 4, 8), **kwargs)


def test_gte_local_losses_average_to_the_global_loss():
    """mean over 2 ranks of gte_loss(global, local=rank's rows) == gte_loss(global), with gradient
    (every direction and hardness on: the masks and positives follow the global row index)."""
    x = randn(3, 8, 16, seed=44).requires_grad_(True)
    kwargs = dict(hardness="all", hardness_strength=2.0)
    whole = gte_loss(x, **kwargs)
    (want,) = torch.autograd.grad(whole, x)
    parts = [gte_loss(x, local=slice(4 * r, 4 * r + 4), **kwargs) for r in range(2)]
    mean = sum(parts) / 2
    (got,) = torch.autograd.grad(mean, x)
    assert mean.item() == pytest.approx(whole.item(), rel=1e-12)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# 2D: fixed (layer, dim) pairs
# --------------------------------------------------------------------------------------------


def test_fixed_pairs_matches_hand_total():
    """Sum over pairs + final-layer dims (overlap once) + KL on the first d values below layer L."""
    layers = randn(3, 3, 4, 8, seed=24) * 2
    pairs, weights = [(1, 2), (2, 4), (3, 8)], [0.5, 2.0, 1.5]
    total, terms = fixed_pairs_loss(mnrl_loss, layers, None, pairs, dims=[4, 8], weights=weights,
                                    kl_weight=0.25, kl_temperature=0.5)  # fmt: skip

    def term(layer, d):
        return mnrl_by_hand(unit_by_hand(layers[layer - 1, ..., :d]))

    kl = kl_by_hand(layers[-1, ..., :2], layers[0, ..., :2], 0.5)
    kl += kl_by_hand(layers[-1, ..., :4], layers[1, ..., :4], 0.5)
    # (3, 8) is both a pair (weight 1.5) and a final-layer dim: counted once; (3, 4) comes from dims
    expected = 0.5 * term(1, 2) + 2.0 * term(2, 4) + 1.5 * term(3, 8) + 1.0 * term(3, 4) + 0.25 * kl
    assert float(total) == pytest.approx(expected, **TOL)
    # the final layer's terms are named as in plain Matryoshka (d8, d4), earlier pairs l{l}_d{d}
    assert set(terms) == {"l1_d2", "l2_d4", "d8", "d4", "kl"}
    assert float(terms["d4"]) == pytest.approx(term(3, 4), **TOL)
    assert float(terms["l2_d4"]) == pytest.approx(term(2, 4), **TOL)
    assert float(terms["kl"]) == pytest.approx(kl, **TOL)


def test_fixed_pairs_final_layer_only_has_no_kl():
    """Pairs all at the final layer: a plain weighted sum, no "kl" key."""
    layers = randn(2, 2, 5, 8, seed=25)
    total, terms = fixed_pairs_loss(cosent_loss, layers, SCORES, [(2, 4), (2, 8)])
    assert "kl" not in terms
    expected = matryoshka_by_hand(cosent_by_hand, layers[-1], SCORES, [4, 8])
    assert float(total) == pytest.approx(expected, **TOL)


@pytest.mark.parametrize("bad_layer", [0, -1, 4])
def test_fixed_pairs_rejects_layer_outside_range(bad_layer):
    """Layers are 1-based, 1..L (L = 3 here); anything else is a ValueError."""
    with pytest.raises(ValueError):
        fixed_pairs_loss(mnrl_loss, randn(3, 2, 4, 8), None, [(1, 2), (bad_layer, 4)])


# --------------------------------------------------------------------------------------------
# Precision: every loss computes in fp32 with autocast off, even inside a bf16 autocast region
# --------------------------------------------------------------------------------------------


def test_bf16_autocast_would_round_the_logits():
    """The premise of the next test: on these inputs a bf16 matmul is off by more than 1e-3."""
    a, b = prefix(randn(16, 64, seed=40), 64).float(), prefix(randn(16, 64, seed=41), 64).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = 20 * (a @ b.T)
    assert rounded.dtype == torch.bfloat16
    assert float((rounded.double() - 20 * (a.double() @ b.double().T)).abs().max()) > 1e-3


@pytest.mark.parametrize(
    "name, fn",
    [
        ("cosent", lambda c, y: cosent_loss(c[:2], y)),
        ("mnrl", lambda c, y: mnrl_loss(c)),
        ("mnrl-symmetric", lambda c, y: mnrl_loss(c, symmetric=True)),
        ("kl", lambda c, y: layer_kl(c[0], c[1], 0.3)),
        ("matryoshka-mnrl", lambda c, y: matryoshka_loss(mnrl_loss, c, None, [64, 16])[0]),
        (
            "fixed-pairs",
            lambda c, y: fixed_pairs_loss(mnrl_loss, c[None].expand(2, -1, -1, -1), None, [(1, 16)])[0],
        ),
    ],
)
def test_losses_compute_in_fp32_under_bf16_autocast(name, fn):
    """Each loss on fp32 embeddings inside a bf16 autocast region equals the same loss computed in
    float64 by the same function (to fp32 rounding, 1e-5), and its gradient too: no bf16 matmul
    or softmax inside. The inputs are those of the test above, where bf16 errs by > 1e-3."""
    columns = randn(3, 16, 64, seed=40).float().requires_grad_(True)
    scores = torch.linspace(0, 1, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fn(columns, scores)
    assert loss.dtype == torch.float32
    (grad,) = torch.autograd.grad(loss, columns)
    exact_in = columns.detach().double().requires_grad_(True)
    exact = fn(exact_in, scores.double())
    (exact_grad,) = torch.autograd.grad(exact, exact_in)
    assert float(loss.detach()) == pytest.approx(float(exact.detach()), rel=1e-5, abs=1e-6)
    assert float((grad.double() - exact_grad).abs().max()) < 1e-5 * max(1.0, float(exact_grad.abs().max()))

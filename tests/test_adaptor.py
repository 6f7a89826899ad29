"""The Matryoshka-Adaptor (mrl/adaptor.py) against independent references: identity at init,
losses against brute-force loops, gradient checks, the dense export, PCA against numpy's SVD,
the saved head in an Encoder folder, and transforming embeddings without re-encoding."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mrl.adaptor import (
    Adaptor,
    NeighbourBatchSampler,
    adaptor_loss,
    corpus_neighbours,
    fit_pca,
    listwise_loss,
    neighbourhood_loss,
    pca_dense,
    pca_rotation,
    reconstruction_loss,
    similarity_loss,
)
from mrl.heads import (
    ST_DENSE,
    ST_IDENTITY,
    ST_NORMALIZE,
    Dense,
    dense_head,
    head_modules,
    load_head,
    save_head,
    transform_embeddings,
)
from mrl.model import Encoder


def _randomise(adaptor: Adaptor, seed: int = 0) -> Adaptor:
    """Give the adaptor non-zero weights everywhere (it starts with a zero last layer)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adaptor.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return adaptor


def _cos(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def _brute_pair_loss(orig: torch.Tensor, adapted: torch.Tensor, d: int, neighbours=None) -> float:
    """mean |cos(f_i[:d], f_j[:d]) - cos(e_i, e_j)| over i != j (or over j in neighbours[i])."""
    e, f = orig.tolist(), adapted.tolist()
    diffs = []
    for i in range(len(e)):
        js = neighbours[i] if neighbours is not None else [j for j in range(len(e)) if j != i]
        for j in js:
            diffs.append(abs(_cos(f[i][:d], f[j][:d]) - _cos(e[i], e[j])))
    return sum(diffs) / len(diffs)


def _brute_neighbours(orig: torch.Tensor, k: int) -> list[list[int]]:
    e = orig.tolist()
    out = []
    for i in range(len(e)):
        others = sorted((j for j in range(len(e)) if j != i), key=lambda j: -_cos(e[i], e[j]))
        out.append(others[:k])
    return out


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "mlp", "rotation"])
def test_identity_at_init(kind):
    torch.manual_seed(0)
    emb = 3 * torch.randn(7, 12)
    adaptor = Adaptor(12, kind, hidden=20)
    unit = emb / emb.norm(dim=-1, keepdim=True)
    assert torch.equal(adaptor(emb), adaptor(unit))  # scale-blind: the input is normalised
    torch.testing.assert_close(adaptor(emb), unit, rtol=0, atol=1e-7)
    # Every truncated cosine is that of the raw embedding.
    for d in (12, 5, 1):
        raw = torch.nn.functional.normalize(emb[:, :d], dim=-1)
        got = torch.nn.functional.normalize(adaptor(emb)[:, :d], dim=-1)
        torch.testing.assert_close(got @ got.T, raw @ raw.T, rtol=0, atol=1e-6)
    plain = Adaptor(12, kind, hidden=20, normalize_input=False)
    assert torch.equal(plain(emb), emb)


def test_adaptor_rejects_bad_settings():
    with pytest.raises(ValueError, match="kind"):
        Adaptor(8, "conv")
    with pytest.raises(ValueError, match="activation"):
        Adaptor(8, "mlp", activation="swish")


def test_forward_matches_the_formula():
    torch.manual_seed(1)
    emb = torch.randn(4, 6, dtype=torch.float64)
    linear = _randomise(Adaptor(6, "linear").double())
    mlp = _randomise(Adaptor(6, "mlp", hidden=5, activation="relu").double(), seed=1)
    x = emb / emb.norm(dim=-1, keepdim=True)
    w, b = linear.linear.weight, linear.linear.bias
    torch.testing.assert_close(linear(emb), x + x @ w.T + b)
    h = torch.relu(x @ mlp.fc1.weight.T + mlp.fc1.bias)
    torch.testing.assert_close(mlp(emb), x + h @ mlp.fc2.weight.T + mlp.fc2.bias)


def test_dense_export_equals_the_adaptor(tmp_path):
    torch.manual_seed(2)
    emb = torch.randn(9, 8)
    adaptor = _randomise(Adaptor(8, "linear"))
    weight, bias = adaptor.to_dense()
    torch.testing.assert_close(weight - torch.eye(8), adaptor.linear.weight.detach())
    torch.testing.assert_close(bias, adaptor.linear.bias.detach())
    head = torch.nn.Sequential(*head_modules(adaptor))
    torch.testing.assert_close(head(emb), adaptor(emb), rtol=1e-6, atol=1e-6)

    # On disk: the sentence-transformers layout (a Normalize module, then a Dense module whose
    # config and weight names are what that library's Dense reads).
    entries = save_head(tmp_path, list(head), first_index=2)
    assert [(e["idx"], e["path"], e["type"]) for e in entries] == [
        (2, "2_Normalize", ST_NORMALIZE),
        (3, "3_Dense", ST_DENSE),
    ]
    config = json.loads((tmp_path / "3_Dense" / "config.json").read_text())
    assert config == {"in_features": 8, "out_features": 8, "bias": True, "activation_function": ST_IDENTITY}
    weights = load_file(str(tmp_path / "3_Dense" / "model.safetensors"))
    assert sorted(weights) == ["linear.bias", "linear.weight"]
    torch.testing.assert_close(weights["linear.weight"], weight)
    # Applying the stored matrix by hand (normalise, then W' x + b) gives f(e).
    x = emb / emb.norm(dim=-1, keepdim=True)
    by_hand = x @ weights["linear.weight"].T + weights["linear.bias"]
    torch.testing.assert_close(by_hand, adaptor(emb), rtol=1e-6, atol=1e-6)
    loaded = load_head(tmp_path, entries)
    torch.testing.assert_close(loaded(emb), adaptor(emb), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="single dense layer"):
        Adaptor(8, "mlp").to_dense()


def test_mlp_head_round_trip(tmp_path):
    torch.manual_seed(3)
    emb = torch.randn(5, 6)
    adaptor = _randomise(Adaptor(6, "mlp", hidden=4, activation="tanh"))
    entries = save_head(tmp_path, head_modules(adaptor))
    assert entries[0]["type"] == "mrl.adaptor.Adaptor"
    torch.testing.assert_close(load_head(tmp_path, entries)(emb), adaptor(emb))


def test_load_head_skips_a_trailing_normalize_and_rejects_unknown_modules(tmp_path):
    entries = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": ST_NORMALIZE},
    ]
    assert load_head(tmp_path, entries) is None  # all-MiniLM-L6-v2's layout: no head
    bad = entries + [{"idx": 3, "name": "3", "path": "3_CNN", "type": "sentence_transformers.models.CNN"}]
    with pytest.raises(ValueError, match="CNN"):
        load_head(tmp_path, bad)


def test_dense_with_tanh_and_a_width_change(tmp_path):
    torch.manual_seed(4)
    weight, bias = torch.randn(3, 5), torch.randn(3)
    dense = Dense.from_weights(weight, bias)
    dense.activation = "torch.nn.modules.activation.Tanh"
    save_head(tmp_path, [dense])
    (tmp_path / "modules.json").write_text(
        json.dumps([{"idx": 0, "name": "0", "path": "0_Dense", "type": ST_DENSE}])
    )
    x = torch.randn(4, 5)
    torch.testing.assert_close(transform_embeddings(tmp_path, x), torch.tanh(x @ weight.T + bias))


# --------------------------------------------------------------------------------------------
# Losses against brute-force loops
# --------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_batch():
    torch.manual_seed(5)
    orig = torch.randn(6, 8, dtype=torch.float64)
    adapted = orig + 0.5 * torch.randn(6, 8, dtype=torch.float64)
    return orig, adapted


def test_similarity_loss_matches_loops(tiny_batch):
    orig, adapted = tiny_batch
    dims, weights = [8, 4, 2], [1.0, 0.5, 2.0]
    total, terms = similarity_loss(orig, adapted, dims, weights)
    expected = {d: _brute_pair_loss(orig, adapted, d) for d in dims}
    for d in dims:
        assert terms[f"d{d}"].item() == pytest.approx(expected[d], rel=1e-10)
    assert total.item() == pytest.approx(sum(w * expected[d] for d, w in zip(dims, weights)), rel=1e-10)


def test_neighbourhood_loss_matches_loops(tiny_batch):
    orig, adapted = tiny_batch
    dims = [8, 3]
    total, terms = neighbourhood_loss(orig, adapted, dims, k=2)
    neighbours = _brute_neighbours(orig, 2)
    expected = {d: _brute_pair_loss(orig, adapted, d, neighbours) for d in dims}
    for d in dims:
        assert terms[f"d{d}"].item() == pytest.approx(expected[d], rel=1e-10)
    assert total.item() == pytest.approx(sum(expected.values()), rel=1e-10)
    # k beyond the batch is capped at B - 1: every other row, i.e. the pairwise loss.
    _, capped = neighbourhood_loss(orig, adapted, [3], k=50)
    assert capped["d3"].item() == pytest.approx(_brute_pair_loss(orig, adapted, 3), rel=1e-10)


def _brute_listwise(orig: torch.Tensor, adapted: torch.Tensor, d: int, temperature: float) -> float:
    """mean_i KL(softmax_j cos(e_i, e_j) / T || softmax_j cos(f_i[:d], f_j[:d]) / T), j != i, by loops."""
    e, f = orig.tolist(), adapted.tolist()
    total = 0.0
    for i in range(len(e)):
        others = [j for j in range(len(e)) if j != i]
        p = [math.exp(_cos(e[i], e[j]) / temperature) for j in others]
        q = [math.exp(_cos(f[i][:d], f[j][:d]) / temperature) for j in others]
        p = [x / sum(p) for x in p]
        q = [x / sum(q) for x in q]
        total += sum(a * math.log(a / b) for a, b in zip(p, q))
    return total / len(e)


def test_listwise_loss_matches_loops(tiny_batch):
    orig, adapted = tiny_batch
    dims, weights = [8, 3], [2.0, 0.5]
    total, terms = listwise_loss(orig, adapted, dims, temperature=0.2, weights=weights)
    expected = {d: _brute_listwise(orig, adapted, d, 0.2) for d in dims}
    for d in dims:
        assert terms[f"d{d}"].item() == pytest.approx(expected[d], rel=1e-9)
    assert total.item() == pytest.approx(2.0 * expected[8] + 0.5 * expected[3], rel=1e-9)
    # Zero for the identity at full width; positive when a prefix reorders the neighbours.
    same = Adaptor(8).double()(orig)
    assert listwise_loss(orig, same, [8])[0].item() == pytest.approx(0, abs=1e-9)
    assert listwise_loss(orig, same, [2])[0].item() > 0


def test_losses_are_zero_for_the_identity(tiny_batch):
    orig, _ = tiny_batch
    adapted = Adaptor(8).double()(orig)
    assert similarity_loss(orig, adapted, [8])[0].item() == pytest.approx(0, abs=1e-12)
    assert neighbourhood_loss(orig, adapted, [8], k=3)[0].item() == pytest.approx(0, abs=1e-12)
    assert reconstruction_loss(orig, adapted).item() == pytest.approx(0, abs=1e-12)
    # ...but not at a truncated dim, which is what the adaptor is there to fix.
    assert similarity_loss(orig, adapted, [2])[0].item() > 0.01


def test_reconstruction_loss_matches_a_loop(tiny_batch):
    orig, adapted = tiny_batch
    e, f = orig.tolist(), adapted.tolist()
    expected = 0.0
    for row_e, row_f in zip(e, f):
        norm = math.sqrt(sum(v * v for v in row_e))
        expected += sum((b - a / norm) ** 2 for a, b in zip(row_e, row_f))
    assert reconstruction_loss(orig, adapted).item() == pytest.approx(expected / len(e), rel=1e-10)
    plain = sum(sum((b - a) ** 2 for a, b in zip(re, rf)) for re, rf in zip(e, f)) / len(e)
    assert reconstruction_loss(orig, adapted, normalize_input=False).item() == pytest.approx(plain, rel=1e-10)


def _brute_ranking(queries: torch.Tensor, docs: torch.Tensor, d: int, scale: float) -> float:
    """Mean over queries of -log softmax(scale * cos(q_i[:d], doc_j[:d]))_i, by loops."""
    q, p = queries.tolist(), docs.tolist()
    total = 0.0
    for i in range(len(q)):
        logits = [scale * _cos(q[i][:d], p[j][:d]) for j in range(len(p))]
        top = max(logits)
        total += -(logits[i] - top - math.log(sum(math.exp(x - top) for x in logits)))
    return total / len(q)


def test_adaptor_loss_combines_the_terms(tiny_batch):
    orig, adapted = tiny_batch
    torch.manual_seed(6)
    pairs = torch.randn(2, 4, 8, dtype=torch.float64)
    dims, dim_weights = [8, 4], [1.0, 3.0]
    total, terms = adaptor_loss(
        orig,
        adapted,
        dims,
        dim_weights,
        similarity_weight=0.5,
        neighbourhood_weight=2.0,
        k=3,
        listwise_weight=0.25,
        temperature=0.5,
        reconstruction_weight=0.1,
        pairs=pairs,
        ranking_weight=1.5,
        scale=10.0,
    )
    neighbours = _brute_neighbours(orig, 3)
    rec = reconstruction_loss(orig, adapted).item()
    expected_total = 0.1 * rec
    for d, w in zip(dims, dim_weights):
        sim = _brute_pair_loss(orig, adapted, d)
        nbr = _brute_pair_loss(orig, adapted, d, neighbours)
        rank = _brute_ranking(pairs[0], pairs[1], d, 10.0)
        lst = _brute_listwise(orig, adapted, d, 0.5)
        assert terms[f"list_d{d}"].item() == pytest.approx(lst, rel=1e-9)
        assert terms[f"sim_d{d}"].item() == pytest.approx(sim, rel=1e-9)
        assert terms[f"nbr_d{d}"].item() == pytest.approx(nbr, rel=1e-9)
        assert terms[f"rank_d{d}"].item() == pytest.approx(rank, rel=1e-9)
        per_dim = 0.5 * sim + 2.0 * nbr + 0.25 * lst + 1.5 * rank
        assert terms[f"d{d}"].item() == pytest.approx(per_dim, rel=1e-9)
        expected_total += w * per_dim
    assert terms["rec"].item() == pytest.approx(rec, rel=1e-12)
    assert total.item() == pytest.approx(expected_total, rel=1e-9)
    # A zero weight leaves its term out entirely.
    _, only_sim = adaptor_loss(orig, adapted, dims, neighbourhood_weight=0.0)
    assert sorted(only_sim) == ["d4", "d8", "sim_d4", "sim_d8"]


def test_gradients_of_the_losses_through_the_adaptor():
    """Finite differences (float64) through f = adaptor(e) for every loss term, linear and MLP."""
    torch.manual_seed(7)
    orig = torch.randn(4, 5, dtype=torch.float64)
    pairs_in = torch.randn(2, 3, 5, dtype=torch.float64)
    for kind in ("linear", "mlp"):
        adaptor = _randomise(Adaptor(5, kind, hidden=3).double(), seed=8)
        names = [name for name, _ in adaptor.named_parameters()]

        def loss_of(*flat, adaptor=adaptor, names=names):
            params = dict(zip(names, flat))
            adapted = torch.func.functional_call(adaptor, params, (orig,))
            pairs = torch.func.functional_call(adaptor, params, (pairs_in,))
            total, _ = adaptor_loss(
                orig,
                adapted,
                [5, 2],
                k=2,
                listwise_weight=0.7,
                temperature=0.3,
                reconstruction_weight=0.3,
                pairs=pairs,
                scale=5.0,
            )
            return total

        inputs = tuple(p.detach().clone().requires_grad_(True) for p in adaptor.parameters())
        assert torch.autograd.gradcheck(loss_of, inputs, eps=1e-6, atol=1e-5)


def test_loss_rejects_a_one_row_batch():
    with pytest.raises(ValueError, match="at least 2"):
        neighbourhood_loss(torch.randn(1, 4), torch.randn(1, 4), [4])


# --------------------------------------------------------------------------------------------
# PCA against numpy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("center", [True, False])
def test_pca_matches_numpy_svd(center):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 7)) @ rng.normal(size=(7, 7)) + rng.normal(size=7)
    mean, components, variances = fit_pca(torch.from_numpy(x), center=center)
    ref_mean = x.mean(0) if center else np.zeros(7)
    _, s, vt = np.linalg.svd(x - ref_mean, full_matrices=False)
    ref_var = s**2 / (len(x) - 1 if center else len(x))
    np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variances.numpy(), ref_var, rtol=1e-4)
    # Same axes up to sign: |<ours_k, numpy_k>| = 1.
    dots = np.abs((components.double().numpy() * vt).sum(-1))
    np.testing.assert_allclose(dots, np.ones(7), atol=1e-5)


def test_pca_dense_projects_on_the_top_axes():
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(40, 6)) * np.array([5, 3, 2, 1, 0.5, 0.1]) + 0.3
    weight, bias = pca_dense(torch.from_numpy(raw).float())
    unit = raw / np.linalg.norm(raw, axis=-1, keepdims=True)
    centred = unit - unit.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    head = torch.nn.Sequential(*dense_head(weight, bias))
    out = head(torch.from_numpy(raw).float()).detach().double().numpy()
    reference = centred @ vt.T  # (N, 6) coordinates on the principal axes, up to each axis' sign
    np.testing.assert_allclose(np.abs(out), np.abs(reference), atol=1e-5)
    # The first coordinate carries the largest variance.
    assert out[:, 0].var() == pytest.approx(out.var(0).max())


def test_pca_start_keeps_full_width_cosines_and_starts_each_prefix_at_uncentred_pca():
    rng = np.random.default_rng(2)
    raw = rng.normal(size=(60, 8)) * np.array([4, 3, 2, 1.5, 1, 0.5, 0.2, 0.1]) + 0.2
    emb = torch.from_numpy(raw).float()
    adaptor = Adaptor(8).start_from(pca_rotation(emb))
    out = adaptor(emb).detach().double().numpy()
    unit = raw / np.linalg.norm(raw, axis=-1, keepdims=True)
    # A rotation: every full-width cosine of the raw embeddings is unchanged.
    np.testing.assert_allclose(out @ out.T, unit @ unit.T, atol=1e-5)
    # Each coordinate is the projection on an axis of numpy's SVD of the uncentred unit vectors,
    # in order of singular value (up to the axis' sign).
    _, _, vt = np.linalg.svd(unit, full_matrices=False)
    np.testing.assert_allclose(np.abs(out), np.abs(unit @ vt.T), atol=1e-5)
    # Saved as one dense layer, it is the same function.
    weight, bias = adaptor.to_dense()
    np.testing.assert_allclose(unit @ weight.double().numpy().T + bias.double().numpy(), out, atol=1e-5)
    with pytest.raises(ValueError, match="linear"):
        Adaptor(8, "mlp").start_from(pca_rotation(emb))
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        Adaptor(8).start_from(torch.eye(4))


def test_rotation_stays_orthogonal_keeps_full_width_cosines_and_moves_the_prefixes():
    """The rotation adaptor after AdamW steps on a prefix-only loss: Q Q^T = I, every full-width
    cosine equals the raw embeddings' (numpy, float64), the prefixes changed, and the exported
    Dense layer (Q, 0) is the same function."""
    rng = np.random.default_rng(5)
    raw = rng.normal(size=(40, 12)) * np.linspace(2, 0.2, 12)
    emb = torch.from_numpy(raw).float()
    adaptor = Adaptor(12, "rotation")
    optimizer = torch.optim.AdamW(adaptor.parameters(), lr=0.05, weight_decay=0.0)
    original = adaptor(emb).detach()
    for _ in range(20):  # push the 3-dim prefix towards the raw full-width cosines
        total, _ = adaptor_loss(emb, adaptor(emb), dims=[3], similarity_weight=1.0, neighbourhood_weight=0.0)
        total.backward()
        optimizer.step()
        optimizer.zero_grad()
    weight, bias = adaptor.to_dense()
    q = weight.double().numpy()
    np.testing.assert_allclose(q @ q.T, np.eye(12), atol=1e-5)
    assert not bias.any()
    out = adaptor(emb).detach().double().numpy()
    unit = raw / np.linalg.norm(raw, axis=-1, keepdims=True)
    np.testing.assert_allclose(out @ out.T, unit @ unit.T, atol=1e-5)  # full width: unchanged
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
    assert np.abs(out[:, :3] - original[:, :3].double().numpy()).max() > 1e-2  # the prefix moved
    # The 3-dim prefix's similarity loss went down from the identity's.
    before, _ = similarity_loss(emb, original, [3])
    after, _ = similarity_loss(emb, torch.from_numpy(out).float(), [3])
    assert after < before
    head = torch.nn.Sequential(*head_modules(adaptor))
    torch.testing.assert_close(head(emb), adaptor(emb), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(unit @ q.T, out, atol=1e-5)  # Q applied by hand


def test_rotation_starts_from_an_orthogonal_matrix_only():
    torch.manual_seed(6)
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    emb = torch.randn(5, 8)
    adaptor = Adaptor(8, "rotation").start_from(q)
    unit = torch.nn.functional.normalize(emb, dim=-1)
    torch.testing.assert_close(adaptor(emb), unit @ q.T, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"orthogonal weight, got \|W W\^T - I\| = 3\.0e\+00"):
        Adaptor(8, "rotation").start_from(2 * q)
    with pytest.raises(ValueError, match="no bias"):
        Adaptor(8, "rotation").start_from(q, torch.ones(8))
    # A float32 rounding error in the start is removed: Q is orthogonal to float64 accuracy
    # of its float32 values, not to the input's 1e-5.
    noisy = q + 2e-6 * torch.randn(8, 8)
    start = Adaptor(8, "rotation").start_from(noisy).to_dense()[0].double()
    assert (start @ start.T - torch.eye(8, dtype=torch.float64)).abs().max() < 1e-6
    torch.testing.assert_close(start.float(), noisy, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------
# An adapted Encoder saves, loads and transforms like any other
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "mlp", "rotation"])
def test_saved_adapted_encoder_reproduces_f(tiny_model_dir, tmp_path, kind):
    texts = ["the cat sat on the mat", "a man plays guitar", "a dog runs in the park"]
    encoder = Encoder(tiny_model_dir)
    raw = encoder.encode(texts, normalize=False)  # (3, 32) the unadapted vectors
    adaptor = _randomise(Adaptor(encoder.dim, kind, hidden=16), seed=9)
    expected = adaptor(raw).detach()
    encoder.attach_head(head_modules(adaptor))
    torch.testing.assert_close(encoder.encode(texts, normalize=False), expected, rtol=1e-5, atol=1e-5)
    encoder.save(tmp_path / "model", {"adaptor": {"kind": kind}})

    modules = json.loads((tmp_path / "model" / "modules.json").read_text())
    assert [m["path"] for m in modules][:2] == ["", "1_Pooling"]
    assert len(modules) == (3 if kind == "mlp" else 4)
    reloaded = Encoder(tmp_path / "model")
    assert reloaded.metadata["adaptor"] == {"kind": kind}
    torch.testing.assert_close(reloaded.encode(texts, normalize=False), expected, rtol=1e-5, atol=1e-5)
    # Prefixes and every layer go through the head too.
    small = reloaded.encode(texts, dim=4)
    want = torch.nn.functional.normalize(expected[:, :4], dim=-1)
    torch.testing.assert_close(small, want, atol=1e-5, rtol=0)
    assert reloaded.encode(texts, all_layers=True, normalize=False).shape == (3, 3, 32)
    # Existing embeddings of the base model, transformed without the encoder.
    torch.testing.assert_close(transform_embeddings(tmp_path / "model", raw), expected, rtol=1e-5, atol=1e-5)


def test_model_without_head_is_unchanged(tiny_model_dir, tmp_path):
    encoder = Encoder(tiny_model_dir)
    assert encoder.head is None
    encoder.save(tmp_path / "m")
    assert len(json.loads((tmp_path / "m" / "modules.json").read_text())) == 2
    with pytest.raises(ValueError, match="no adaptor"):
        transform_embeddings(tmp_path / "m", torch.randn(2, 32))


# --------------------------------------------------------------------------------------------
# Neighbourhood batches
# --------------------------------------------------------------------------------------------


def test_corpus_neighbours_match_a_brute_force_sort():
    torch.manual_seed(10)
    corpus = torch.randn(30, 6)
    assert corpus_neighbours(corpus, 4).tolist() == _brute_neighbours(corpus.double(), 4)
    corpus[7] = 2 * corpus[3]  # a duplicate direction: ties with the row itself
    got = corpus_neighbours(corpus, 4)
    assert all(i not in row for i, row in enumerate(got.tolist()))
    assert got[3, 0] == 7 and got[7, 0] == 3
    with pytest.raises(ValueError, match="1..29"):
        corpus_neighbours(corpus, 30)


def test_neighbour_batches_hold_each_anchor_and_its_neighbours():
    torch.manual_seed(11)
    neighbours = corpus_neighbours(torch.randn(40, 5), 3)
    sampler = NeighbourBatchSampler(neighbours, batch_size=16, seed=5)  # 4 anchors a batch
    assert len(sampler) == 10
    batches = sampler.batches(0)
    assert len(batches) == 10
    anchors_seen = set()
    for batch in batches:
        assert len(batch) == len(set(batch)) <= 16
        # Each batch is the union of 4 anchors' neighbourhoods (anchor + its 3 neighbours).
        anchors = [i for i in batch if set(neighbours[i].tolist()) <= set(batch)]
        assert len(anchors) >= 4
        anchors_seen.update(anchors)
    assert len(anchors_seen) >= 40 - 4  # (nearly) every row was an anchor once this epoch
    assert sampler.batches(0) == batches  # a function of (seed, epoch): resumable
    assert sampler.batches(1) != batches

"""mrl.index (FAISS) against independent references: float64 brute-force top-k of numpy-normalised
prefixes, popcounts from numpy's packbits/unpackbits, the 8-bit scalar quantiser's codec written
out in numpy, a funnel re-ranked by hand, and eval.py's numpy path.

Tests that need faiss skip when it is absent (``pip install 'mrl[faiss]'``; CI installs it with
``.[dev]``); the missing-faiss error itself is tested without it.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import eval as eval_script
from mrl.index import INSTALL_HINT, FaissFunnel, MatryoshkaIndex, flat_search, import_faiss
from mrl.quantize import calibrate, dequantize_scalar, quantize_scalar
from mrl.retrieval import FunnelIndex


@pytest.fixture
def faiss():
    """faiss on one thread (deterministic HNSW builds), restored afterwards; skips if absent."""
    module = pytest.importorskip("faiss")
    threads = module.omp_get_max_threads()
    module.omp_set_num_threads(1)
    yield module
    module.omp_set_num_threads(threads)


def matryoshka_like(n: int, d: int, n_queries: int, seed: int = 0):
    """Clustered Gaussian docs whose per-dim scale decays along the vector (prefixes carry most
    of the signal) and queries that are noisy copies of random docs. float32 (n, d), (Q, d)."""
    rng = np.random.default_rng(seed)
    scale = 1 / (1 + np.arange(d) / 8)
    centres = rng.standard_normal((20, d))
    docs = (centres[rng.integers(0, 20, n)] + 0.8 * rng.standard_normal((n, d))) * scale
    queries = docs[rng.integers(0, n, n_queries)] + 0.5 * rng.standard_normal((n_queries, d)) * scale
    return docs.astype(np.float32), queries.astype(np.float32)


def np_prefix(x: np.ndarray, d: int) -> np.ndarray:
    """Slice then re-normalise, in float64 (the reference for mrl.losses.prefix)."""
    p = np.asarray(x, dtype=np.float64)[:, :d]
    return p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)


def brute_topk(queries, docs, d: int, k: int):
    """Exact top-k cosine of the d-prefixes with a full float64 score matrix."""
    scores = np_prefix(queries, d) @ np_prefix(docs, d).T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, 1), ids


def recall(got, want, k: int = 10) -> float:
    got, want = np.asarray(got)[:, :k], np.asarray(want)[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, want)]))


# --------------------------------------------------------------------------------------------
# Exact search on any prefix
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [4, 16, 48])
def test_flat_equals_brute_force_per_prefix(faiss, dim):
    rng = np.random.default_rng(1)
    docs = (rng.standard_normal((500, 48)) * rng.uniform(0.1, 5, (500, 1))).astype(np.float32)  # raw norms
    queries = rng.standard_normal((20, 48)).astype(np.float32)
    want_scores, want_ids = brute_topk(queries, docs, dim, 10)
    threshold = faiss.cvar.distance_compute_blas_threshold  # lowered while searching, then restored
    for corpus in (docs, torch.from_numpy(docs)):  # numpy or torch in
        scores, ids = MatryoshkaIndex.build(corpus, "flat", dim).search(torch.from_numpy(queries), 10)
        assert ids.dtype == torch.int64 and ids.shape == (20, 10)
        np.testing.assert_array_equal(ids.numpy(), want_ids)
        np.testing.assert_allclose(scores.numpy(), want_scores, atol=1e-5)
    assert faiss.cvar.distance_compute_blas_threshold == threshold


def test_flat_search_streams_chunks_and_equals_brute_force(faiss, tmp_path):
    docs, queries = matryoshka_like(1000, 32, 15)
    stored = np.lib.format.open_memmap(tmp_path / "docs.npy", "w+", np.float32, docs.shape)
    stored[:] = docs
    for dim in (8, 32):
        scores, ids = flat_search(queries, stored, 10, dim, chunk_size=77)  # 13 chunks, the last short
        want_scores, want_ids = brute_topk(queries, docs, dim, 10)
        np.testing.assert_array_equal(ids.numpy(), want_ids)
        np.testing.assert_allclose(scores.numpy(), want_scores, atol=1e-5)
    # Rows stored unit already: scored as they are (raw rows would give plain inner products).
    unit = np_prefix(docs, 32).astype(np.float32)
    scores, ids = flat_search(queries, unit, 10, chunk_size=77, unit_rows=True)
    want_scores, want_ids = brute_topk(queries, docs, 32, 10)
    np.testing.assert_array_equal(ids.numpy(), want_ids)
    np.testing.assert_allclose(scores.numpy(), want_scores, atol=1e-5)
    raw_ids = flat_search(queries, docs, 10, chunk_size=77, unit_rows=True)[1].numpy()
    want_raw = np.argsort(-(np_prefix(queries, 32) @ docs.astype(np.float64).T), axis=1, kind="stable")
    np.testing.assert_array_equal(raw_ids, want_raw[:, :10])


def test_ivf_probing_every_cell_is_exact(faiss):
    docs, queries = matryoshka_like(2000, 32, 20)
    index = MatryoshkaIndex.build(docs, "ivf", 16, nlist=10, train_size=1000)
    _, want_ids = brute_topk(queries, docs, 16, 10)
    np.testing.assert_array_equal(index.search(queries, 10, nprobe=10)[1].numpy(), want_ids)
    assert recall(index.search(queries, 10, nprobe=1)[1], want_ids) < 1  # one cell of ten misses some


# --------------------------------------------------------------------------------------------
# The funnel: approximate first stage, exact re-ranking from the stored vectors
# --------------------------------------------------------------------------------------------


def test_funnel_reranking_equals_reranking_by_hand(faiss):
    docs, queries = matryoshka_like(800, 48, 12)
    index = MatryoshkaIndex.build(docs, "flat", 8, [16, 48])
    scores, ids = index.search(queries, 5, [60, 20])
    # By hand: exact top 60 at 8 dims -> the best 20 of them at 16 dims -> the best 5 at 48 dims.
    _, stage1 = brute_topk(queries, docs, 8, 60)
    for qi in range(len(queries)):
        cand = stage1[qi]
        at16 = (np_prefix(docs[cand], 16) @ np_prefix(queries[qi : qi + 1], 16).T)[:, 0]
        cand = cand[np.argsort(-at16, kind="stable")[:20]]
        at48 = (np_prefix(docs[cand], 48) @ np_prefix(queries[qi : qi + 1], 48).T)[:, 0]
        order = np.argsort(-at48, kind="stable")[:5]
        np.testing.assert_array_equal(ids[qi].numpy(), cand[order])
        np.testing.assert_allclose(scores[qi].numpy(), at48[order], atol=1e-5)


def test_funnel_with_the_whole_corpus_shortlisted_is_exact_full_width_search(faiss):
    docs, queries = matryoshka_like(300, 32, 10)
    _, want = brute_topk(queries, docs, 32, 10)
    for kind in ("flat", "hnsw", "binary", "int8"):
        index = MatryoshkaIndex.build(docs, kind, 8, [32], ef_search=300)
        np.testing.assert_array_equal(index.search(queries, 10, [300])[1].numpy(), want, err_msg=kind)


def test_hnsw_funnel_recall(faiss):
    # 3000 docs, HNSW on the 16-dim prefixes, re-ranked at 64. Measured at seed 0: recall@10
    # against exact 64-dim search 0.97 with shortlist 50 (ef 32) and 0.994 with 100 (ef 64);
    # the first 16 dims alone find about 0.6 of it.
    docs, queries = matryoshka_like(3000, 64, 50)
    _, want = brute_topk(queries, docs, 64, 10)
    index = MatryoshkaIndex.build(docs, "hnsw", 16, [64], hnsw_m=16, ef_construction=40)
    assert recall(index.search(queries, 10, [100], ef_search=64)[1], want) >= 0.98
    assert recall(index.search(queries, 10, [50], ef_search=32)[1], want) >= 0.93
    prefix_only = MatryoshkaIndex.build(docs, "flat", 16).search(queries, 10)[1]
    assert recall(prefix_only, want) < 0.8  # the re-ranking is what brings the recall back
    # The HNSW stage itself against exact search at its own 16 dims, and wider ef helps.
    _, want16 = brute_topk(queries, docs, 16, 100)
    hnsw = MatryoshkaIndex.build(docs, "hnsw", 16, hnsw_m=16, ef_construction=40)
    low, high = (recall(hnsw.search(queries, 100, ef_search=ef)[1], want16, 100) for ef in (100, 400))
    assert 0.9 <= low <= high


def test_faiss_funnel_has_funnel_index_interface(faiss):
    docs, queries = matryoshka_like(500, 32, 8)
    tdocs, tqueries = torch.from_numpy(docs), torch.from_numpy(queries)
    stages = [(8, 500), (32, 5)]  # the whole corpus shortlisted: equals the numpy funnel
    ours, reference = FaissFunnel(tdocs, stages), FunnelIndex(tdocs, stages)
    np.testing.assert_array_equal(ours.search(tqueries)[1].numpy(), reference.search(tqueries)[1].numpy())
    assert ours.cost_per_query()["macs"] > 500 * 32  # re-ranking 500 at 32 dims + the HNSW distances
    binary = FaissFunnel(tdocs, [(32, 50), (32, 5)], binary_first=True)
    binary.search(tqueries)
    assert binary.cost_per_query() == {"macs": 50 * 32, "xor_bytes": 500 * 4}
    assert binary.bytes_per_doc() == {"scan": 4.0, "rerank": 4.0 * 32 + 4}


# --------------------------------------------------------------------------------------------
# Binary (Hamming) and int8 (scalar quantiser)
# --------------------------------------------------------------------------------------------


def test_binary_hamming_distances_equal_numpy_popcount(faiss):
    rng = np.random.default_rng(2)
    docs = rng.standard_normal((300, 40)).astype(np.float32)
    queries = rng.standard_normal((7, 40)).astype(np.float32)
    dim = 37  # not a multiple of 8: the last byte is padded with zero bits on both sides
    index = MatryoshkaIndex.build(docs, "binary", dim)
    scores, ids = index.search(queries, 300)  # every doc, nearest first
    qbits = np.packbits(queries[:, :dim] > 0, axis=1)  # (7, 5)
    dbits = np.packbits(docs[:, :dim] > 0, axis=1)  # (300, 5)
    popcount = np.unpackbits(qbits[:, None, :] ^ dbits[None, :, :], axis=2).sum(-1)  # (7, 300)
    distances = -scores.numpy()
    np.testing.assert_array_equal(distances, np.take_along_axis(popcount, ids.numpy(), 1))
    np.testing.assert_array_equal(distances, np.sort(popcount, axis=1))  # all docs, ascending
    assert index.bytes_per_doc() == {"scan": 5.0, "rerank": 0.0}


def test_int8_scalar_quantiser_equals_its_codec_in_numpy(faiss):
    docs, queries = matryoshka_like(400, 24, 10)
    index = MatryoshkaIndex.build(docs, "int8", 24, train_size=400)  # trained on every doc
    unit = np_prefix(docs, 24)
    low, width = unit.min(0), unit.max(0) - unit.min(0)
    trained = faiss.vector_to_array(index.faiss_index.sq.trained)
    np.testing.assert_allclose(trained, np.concatenate([low, width]), atol=1e-6)
    # FAISS's 8-bit codec: floor(255 t) (255 at t = 1), decoded to the middle of the level.
    t = np.clip((unit - low) / width, 0, 1)
    code = np.minimum(np.floor(255 * t), 255)
    decoded = low + (code + 0.5) / 255 * width
    stored = index.faiss_index.reconstruct_n(0, 400)
    level = width / 255
    assert np.mean(np.abs(stored - decoded) < 1e-5) > 0.999  # float32 rounding may move a rare code
    assert np.all(np.abs(stored - decoded) <= level + 1e-6)
    assert np.all(np.abs(stored - unit) <= level / 2 + 1e-6)  # within half a level of the value
    # mrl.quantize's int8 (the nearest of 256 values spaced one level apart from low to high) is
    # also within half a level of the value, so within one level of FAISS's.
    ranges = calibrate(torch.from_numpy(unit))
    ours = dequantize_scalar(quantize_scalar(torch.from_numpy(unit).float(), ranges), ranges).numpy()
    assert np.all(np.abs(ours - stored) <= level + 1e-6)
    # Search: float query against the decoded docs (asymmetric), as brute force on `stored`.
    scores, ids = index.search(queries, 10)
    want = np_prefix(queries, 24) @ stored.astype(np.float64).T
    want_ids = np.argsort(-want, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids.numpy(), want_ids)
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(want, want_ids, 1), atol=1e-5)
    assert index.bytes_per_doc()["scan"] == 24


# --------------------------------------------------------------------------------------------
# Save / load, bad input, the optional import
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, rerank",
    [("flat", []), ("hnsw", [32]), ("ivf", [16, 32]), ("int8", [32]), ("binary", [32]), ("binary", [])],
)
def test_save_load_round_trip(faiss, tmp_path, kind, rerank):
    docs, queries = matryoshka_like(600, 32, 9)
    stored = np.lib.format.open_memmap(tmp_path / "docs.npy", "w+", np.float32, docs.shape)
    stored[:] = docs  # built from a memmap: the index keeps a reference, save() copies it
    index = MatryoshkaIndex.build(stored, kind, 8, rerank, nlist=8, train_size=300, chunk_size=100)
    before = index.search(queries, 5, [40] * len(rerank))
    folder = index.save(tmp_path / "index")
    loaded = MatryoshkaIndex.load(folder)
    after = loaded.search(queries, 5, [40] * len(rerank))
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert loaded.meta() == index.meta() and loaded.bytes_per_doc() == index.bytes_per_doc()
    if rerank:
        assert isinstance(loaded.vectors, np.memmap)
        np.testing.assert_array_equal(np.asarray(loaded.vectors), docs[:, : max(rerank)])
        assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left
    with pytest.raises(FileExistsError, match="not empty"):
        index.save(folder)  # never overwritten


def test_load_and_build_errors(faiss, tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json"):
        MatryoshkaIndex.load(tmp_path)
    (tmp_path / "meta.json").write_text("{oops")
    with pytest.raises(ValueError, match="meta.json: not valid JSON"):
        MatryoshkaIndex.load(tmp_path)
    docs, queries = matryoshka_like(50, 16, 2)
    with pytest.raises(ValueError, match="kind"):
        MatryoshkaIndex.build(docs, "lsh", 8)
    with pytest.raises(ValueError, match="exceed the docs' width 16"):
        MatryoshkaIndex.build(docs, "flat", 8, [32])
    index = MatryoshkaIndex.build(docs, "flat", 8, [16])
    with pytest.raises(ValueError, match=r"needs \(Q, >= 16\)"):
        index.search(queries[:, :8], 5)
    with pytest.raises(ValueError, match="must each keep at least"):
        index.search(queries, 5, [3])
    scores, ids = index.search(queries, 60, [60])  # more than the 50 docs: padded with -1 / -inf
    assert (ids[:, 50:] == -1).all() and torch.isinf(scores[:, 50:]).all() and (ids[:, :50] >= 0).all()


def test_missing_faiss_is_one_line_naming_the_extra(monkeypatch, tiny_model_dir, capsys):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    with pytest.raises(ImportError) as error:
        import_faiss()
    assert INSTALL_HINT in str(error.value) and "\n" not in str(error.value)
    assert INSTALL_HINT == "pip install 'mrl[faiss]'"
    with pytest.raises(SystemExit):
        eval_script.main(["--model", str(tiny_model_dir), "--beir", "DIR", "--index", "faiss"])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --index faiss:") and INSTALL_HINT in err and "\n" not in err


# --------------------------------------------------------------------------------------------
# eval.py --index faiss reports the numpy path's metrics
# --------------------------------------------------------------------------------------------

TOY_DOCS = {
    "d0": "the cat sat on the mat", "d1": "a dog runs in the park", "d2": "the man is playing guitar",
    "d3": "a woman plays the guitar in the park", "d4": "the dog sat on a mat",
    "d5": "a man runs in the park", "d6": "cat and dog", "d7": "the mat is red", "d8": "a cat plays",
    "d9": "the park is green",
}  # fmt: skip
TOY_QUERIES = {"q1": "cat on a mat", "q2": "who plays guitar", "q3": "dog in the park", "q4": "a red mat"}
TOY_QRELS = [("q1", "d0", 2), ("q1", "d7", 1), ("q2", "d2", 1), ("q2", "d3", 2), ("q3", "d1", 2),
             ("q3", "d5", 1), ("q4", "d7", 1), ("q4", "d9", 0)]  # fmt: skip


def test_eval_py_faiss_reports_the_numpy_metrics(faiss, tiny_model_dir, tmp_path):
    folder = tmp_path / "toy"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in TOY_DOCS.items())
    )
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in TOY_QUERIES.items())
    )
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in TOY_QRELS)
    )
    argv = [
        "--model", str(tiny_model_dir), "--beir", str(folder), "--dims", "32", "16", "8",
        "--precisions", "float32", "int8", "binary", "--rescore", "6", "--funnel", "16:8", "32:3",
    ]  # fmt: skip
    numpy_run = eval_script.main(argv)["retrieval"]["toy"]
    out = tmp_path / "faiss.json"
    faiss_run = eval_script.main([*argv, "--index", "faiss", "--json", str(out)])["retrieval"]["toy"]
    assert faiss_run["index"] == "faiss" and numpy_run["index"] == "numpy"
    metrics = ("ndcg@10", "mrr@10", "recall@100", "map@100")
    for ours, reference in zip(faiss_run["records"], numpy_run["records"]):
        assert (ours["dim"], ours["precision"]) == (reference["dim"], reference["precision"])
        assert 0 <= ours["recall@10_vs_exact"] <= 1 and "recall@10_vs_exact" not in reference
        if ours["precision"] == "float32":  # exact search: the same metrics
            for name in metrics:
                assert ours[name] == pytest.approx(reference[name], abs=1e-6)
            assert ours["recall@10_vs_exact"] == 1.0
    funnel = faiss_run["funnel"]
    for name in ("ndcg@10", "mrr@10"):  # exact full-width search, through FAISS and through numpy
        assert funnel["exact"][name] == pytest.approx(numpy_run["funnel"]["exact"][name], abs=1e-6)
    assert 0 <= funnel["funnel"]["overlap@10"] <= 1
    assert "R@10 vs exact" in out.with_suffix(".md").read_text()

"""Retrieval: BEIR readers, ranking metrics, exact / quantised / funnel search, eval.py's retrieval mode.

References are written out here: metric values computed by hand (arithmetic in the comments),
a full score matrix with one `topk`, Hamming distances with python's ``bin(x).count("1")``,
numpy's packbits, and plain loops.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

import eval as eval_script
from mrl.losses import prefix
from mrl.model import Encoder
from mrl.quantize import (
    bytes_per_vector,
    calibrate,
    dequantize_scalar,
    hamming_distance,
    index_bytes,
    pack_bits,
    paired_hamming,
    quantize_scalar,
    sparse_bytes,
    unpack_signs,
)
from mrl.retrieval import (
    FunnelIndex,
    average_precision_at_k,
    embed_beir,
    evaluate_cells,
    exact_search,
    hamming_search,
    int8_search,
    load_beir,
    load_qrels,
    mrr_at_k,
    ndcg_at_k,
    overlap_at_k,
    parse_stages,
    ranking_metrics,
    recall_at_k,
    rescore,
    search,
)

# --------------------------------------------------------------------------------------------
# Metrics, against hand-computed values
# --------------------------------------------------------------------------------------------

# Graded qrels: d1 is highly relevant (2), d2 and d4 relevant (1), d3 judged not relevant (0).
RELS = {"d1": 2, "d2": 1, "d3": 0, "d4": 1}
RANKING = ["d2", "d5", "d1", "d3", "d6"]


def test_graded_ndcg_by_hand():
    # DCG@10 = rel(d2)/log2(1+1) + rel(d5)/log2(3) + rel(d1)/log2(4) + rel(d3)/log2(5) + 0
    #        = 1/1 + 0 + 2/2 + 0 + 0 = 2;  2 / 3.130930 = 0.638788
    # IDCG@10 (grades sorted 2, 1, 1) = 2/log2(2) + 1/log2(3) + 1/log2(4) = 2 + 0.63093 + 0.5
    idcg = 2 + 1 / math.log2(3) + 0.5
    assert ndcg_at_k(RANKING, RELS, 10) == pytest.approx(2 / idcg)
    assert ndcg_at_k(RANKING, RELS, 10) == pytest.approx(0.638788, abs=1e-6)
    # @2: DCG = 1; IDCG = 2 + 1/log2(3) (only the two best grades fit)
    assert ndcg_at_k(RANKING, RELS, 2) == pytest.approx(1 / (2 + 1 / math.log2(3)))
    # The ideal ranking scores 1; no relevant doc at all scores 0.
    assert ndcg_at_k(["d1", "d2", "d4"], RELS, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["d5", "d6"], RELS, 10) == 0.0
    assert ndcg_at_k(["d1"], {"d1": 0}, 10) == 0.0


def test_mrr_by_hand():
    assert mrr_at_k(RANKING, RELS, 10) == 1.0  # d2 (grade 1) at rank 1
    assert mrr_at_k(["d5", "d3", "d4"], RELS, 10) == pytest.approx(1 / 3)  # d3 has grade 0
    ranking = [f"x{i}" for i in range(10)] + ["d1"]  # first relevant at rank 11
    assert mrr_at_k(ranking, RELS, 10) == 0.0
    assert mrr_at_k(ranking, RELS, 11) == pytest.approx(1 / 11)


def test_recall_by_hand():
    assert recall_at_k(RANKING, RELS, 100) == pytest.approx(2 / 3)  # d2, d1 of {d1, d2, d4}
    assert recall_at_k(RANKING, RELS, 1) == pytest.approx(1 / 3)
    assert recall_at_k(RANKING, {"d3": 0}, 100) == 0.0


def test_map_divides_by_all_relevant_docs_like_trec_eval():
    # Relevant hits at rank 1 (d2) and rank 3 (d1): precisions 1/1 and 2/3.
    # trec_eval's map_cut divides by the 3 relevant docs in the qrels (d4 never retrieved).
    assert average_precision_at_k(RANKING, RELS, 100) == pytest.approx((1 + 2 / 3) / 3)
    # With the cut at 2 only the rank-1 hit counts, still divided by 3 (not by min(3, 2)).
    assert average_precision_at_k(RANKING, RELS, 2) == pytest.approx(1 / 3)
    assert average_precision_at_k(["d1", "d2", "d4"], RELS, 100) == pytest.approx(1.0)


def test_ranking_metrics_average_over_qrels_queries():
    qrels = {"q1": RELS, "q2": {"d9": 1}, "q3": {"d7": 1}}
    rankings = {"q1": RANKING, "q2": ["d9"], "q_not_judged": ["d1"]}  # q3 has no ranking: scores 0
    got = ranking_metrics(rankings, qrels)
    idcg = 2 + 1 / math.log2(3) + 0.5
    assert got["ndcg@10"] == pytest.approx((2 / idcg + 1 + 0) / 3)
    assert got["mrr@10"] == pytest.approx((1 + 1 + 0) / 3)
    assert got["recall@100"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert got["map@100"] == pytest.approx(((1 + 2 / 3) / 3 + 1 + 0) / 3)


def test_overlap_at_k():
    got = torch.tensor([[1, 2, 3], [4, 5, 6]])
    want = torch.tensor([[3, 2, 9], [7, 8, 9]])
    assert overlap_at_k(got, want, 3) == pytest.approx(2 / 6)
    assert overlap_at_k(got, got, 2) == 1.0


# --------------------------------------------------------------------------------------------
# BEIR readers
# --------------------------------------------------------------------------------------------


def write_beir(folder, corpus, queries, qrels_lines, split="test"):
    """Write a BEIR folder: corpus [(id, title, text)], queries [(id, text)], qrels lines."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for doc_id, title, text in corpus:
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as f:
        for query_id, text in queries:
            f.write(json.dumps({"_id": query_id, "text": text}) + "\n")
    (folder / "qrels" / f"{split}.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(line + "\n" for line in qrels_lines), encoding="utf-8"
    )
    return folder


def test_load_beir(tmp_path):
    folder = write_beir(
        tmp_path / "toy",
        [("a", "The title", "the text."), ("b", "", "only text "), ("c", "Only title", "")],
        [("q1", "first query"), ("q2", "not judged"), ("q3", "third")],
        ["q3\ta\t2", "q1\tb\t1", "q1\tc\t0"],
    )
    data = load_beir(folder)
    assert data.name == "toy"
    assert data.doc_ids == ["a", "b", "c"]
    assert data.doc_texts == ["The title the text.", "only text", "Only title"]  # title + " " + text
    assert data.query_ids == ["q1", "q3"]  # queries with qrels, in file order
    assert data.query_texts == ["first query", "third"]
    assert data.qrels == {"q1": {"b": 1, "c": 0}, "q3": {"a": 2}}


def test_load_beir_errors(tmp_path):
    folder = write_beir(tmp_path / "bad", [("a", "", "x")], [("q1", "y")], ["q1\tzzz\t1"])
    with pytest.raises(ValueError, match="not in corpus"):
        load_beir(folder)
    with pytest.raises(FileNotFoundError, match="dev.tsv"):
        load_beir(folder, split="dev")
    (folder / "qrels" / "test.tsv").write_text("q1\ta\n")
    with pytest.raises(ValueError, match="test.tsv:1: expected 3"):
        load_qrels(folder / "qrels" / "test.tsv")


# --------------------------------------------------------------------------------------------
# Exact search
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000, None])
@pytest.mark.parametrize("k", [1, 10, 200])
def test_chunked_exact_search_equals_full_matmul_topk(chunk_size, k):
    torch.manual_seed(0)
    queries = torch.randn(9, 16, dtype=torch.float64)
    docs = torch.randn(150, 16, dtype=torch.float64)
    scores, indices = exact_search(queries, docs, k, chunk_size)
    full = (queries.float() @ docs.float().T).topk(min(k, 150), dim=1)  # the reference
    assert indices.shape == (9, min(k, 150))
    assert torch.equal(indices, full.indices)
    torch.testing.assert_close(scores, full.values)


def test_exact_search_empty_corpus():
    scores, indices = exact_search(torch.randn(3, 4), torch.randn(0, 4), 5)
    assert scores.shape == indices.shape == (3, 0)


# --------------------------------------------------------------------------------------------
# Quantisation
# --------------------------------------------------------------------------------------------


def test_int8_round_trip_within_one_step():
    torch.manual_seed(0)
    sample = torch.randn(500, 24) * torch.linspace(0.1, 3, 24)  # dims of different spread
    sample[:, 5] = 0.25  # a constant dimension
    ranges = calibrate(sample)
    torch.testing.assert_close(ranges.low, sample.min(0).values)
    torch.testing.assert_close(ranges.high, sample.max(0).values)
    for precision in ("int8", "uint8"):
        codes = quantize_scalar(sample, ranges, precision)
        assert codes.dtype == getattr(torch, precision)
        error = (dequantize_scalar(codes, ranges) - sample).abs()  # (500, 24)
        step = (ranges.high - ranges.low) / 255
        assert (error <= step / 2 + 1e-6).all()  # rounding to the nearest of 256 levels
        assert (error[:, 5] == 0).all()
    uint8 = quantize_scalar(sample, ranges, "uint8").long()
    assert torch.equal(quantize_scalar(sample, ranges, "int8").long(), uint8 - 128)
    assert uint8.min() == 0 and uint8.max() == 255
    # Values outside the calibrated range clamp to its ends.
    outside = torch.stack([ranges.low - 1, ranges.high + 1])
    assert torch.equal(quantize_scalar(outside, ranges, "uint8").long()[:, 0], torch.tensor([0, 255]))


@pytest.mark.parametrize("d", [8, 13, 64, 384])
def test_pack_bits_matches_numpy_packbits(d):
    torch.manual_seed(d)
    x = torch.randn(6, d)
    expected = np.packbits((x > 0).numpy(), axis=-1)
    assert np.array_equal(pack_bits(x, "ubinary").numpy(), expected)
    assert np.array_equal(pack_bits(x, "binary").numpy().astype(np.int16), expected.astype(np.int16) - 128)
    assert bytes_per_vector(d, "binary") == expected.shape[1]
    signs = unpack_signs(pack_bits(x, "binary"), d)
    assert torch.equal(signs, torch.where(x > 0, 1.0, -1.0))


def popcount_by_hand(a: bytes, b: bytes) -> int:
    return sum(bin(x ^ y).count("1") for x, y in zip(a, b))


@pytest.mark.parametrize("n_bytes", [1, 3, 8, 48])
@pytest.mark.parametrize("use_lut", [True, False])
def test_hamming_distance_equals_bytewise_popcount(n_bytes, use_lut):
    rng = random.Random(n_bytes)
    queries = [bytes(rng.randrange(256) for _ in range(n_bytes)) for _ in range(4)]
    docs = [bytes(rng.randrange(256) for _ in range(n_bytes)) for _ in range(37)]
    q = torch.tensor([list(x) for x in queries], dtype=torch.uint8)
    d = torch.tensor([list(x) for x in docs], dtype=torch.uint8)
    got = hamming_distance(q, d, use_lut=use_lut)
    expected = [[popcount_by_hand(a, b) for b in docs] for a in queries]
    assert got.tolist() == expected
    # The int8 (binary) storage of the same bits gives the same distances.
    as_int8 = lambda t: (t.to(torch.int16) - 128).to(torch.int8)  # noqa: E731
    assert torch.equal(hamming_distance(as_int8(q), as_int8(d), use_lut=use_lut), got)


def test_paired_hamming_equals_bytewise_popcount():
    rng = random.Random(5)
    a = [bytes(rng.randrange(256) for _ in range(3)) for _ in range(40)]
    b = [bytes(rng.randrange(256) for _ in range(3)) for _ in range(40)]
    ta, tb = (torch.tensor([list(x) for x in rows], dtype=torch.uint8) for rows in (a, b))
    assert paired_hamming(ta, tb).tolist() == [popcount_by_hand(x, y) for x, y in zip(a, b)]
    as_int8 = (ta.to(torch.int16) - 128).to(torch.int8)  # binary storage: the same bits
    assert paired_hamming(as_int8, tb).tolist() == paired_hamming(ta, tb).tolist()


# --------------------------------------------------------------------------------------------
# Bytes per stored vector (issue 26): closed forms, numpy's own sizes, hand-computed sparse codes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 7, 8, 9, 20, 64, 383, 384])
def test_bytes_per_vector_closed_form_and_numpy_sizes(d):
    x = np.zeros((1, d))
    assert bytes_per_vector(d, "float32") == 4 * d == x.astype(np.float32).nbytes
    assert bytes_per_vector(d, "float16") == 2 * d == x.astype(np.float16).nbytes
    assert bytes_per_vector(d, "int8") == bytes_per_vector(d, "uint8") == d == x.astype(np.int8).nbytes
    packed = np.packbits(x > 0, axis=-1)  # what pack_bits stores: ceil(d / 8) bytes
    assert bytes_per_vector(d, "binary") == bytes_per_vector(d, "ubinary") == packed.nbytes
    assert bytes_per_vector(d, "binary") == math.ceil(d / 8)
    assert pack_bits(torch.randn(1, d), "binary").numel() == bytes_per_vector(d, "binary")


def test_bytes_per_vector_named_cases_and_refusals():
    # 20 sign bits need 3 bytes (the last one holds 4 bits and 4 zero pads); the SciFact record's
    # "a 384-dim binary vector is 48 bytes", int8 "1 byte a dim", float32 4.
    assert bytes_per_vector(20, "binary") == 3
    assert (bytes_per_vector(384, "binary"), bytes_per_vector(384, "int8")) == (48, 384)
    assert (bytes_per_vector(64, "float32"), bytes_per_vector(384, "float32")) == (256, 1536)
    with pytest.raises(ValueError, match="precision"):
        bytes_per_vector(8, "int4")
    with pytest.raises(ValueError, match="dim"):
        bytes_per_vector(0, "float32")


@pytest.mark.parametrize(
    "k, size, value_bytes, expected",
    [
        (1, 1, 4, 1 + 4),  # a 1-atom dictionary still needs a (1-byte) index
        (32, 256, 4, 32 * (1 + 4)),  # indices 0..255: one byte
        (32, 257, 4, 32 * (2 + 4)),  # index 256 needs a second byte
        (8, 1536, 4, 8 * (2 + 4)),  # CSR over a 4x384 dictionary, float32 values: 48 bytes
        (8, 1536, 2, 8 * (2 + 2)),  # the same with float16 values: 32 bytes
        (64, 65536, 2, 64 * (2 + 2)),  # indices 0..65535: two bytes
        (64, 65537, 4, 64 * (4 + 4)),  # there is no 3-byte index: four
    ],
)
def test_sparse_bytes_by_hand(k, size, value_bytes, expected):
    assert sparse_bytes(k, size, value_bytes) == expected
    # The index width from first principles: bits of the largest index, rounded up to 1, 2 or 4 bytes.
    need = max(1, math.ceil((size - 1).bit_length() / 8))
    assert index_bytes(size) == next(n for n in (1, 2, 4) if n >= need)


@pytest.mark.parametrize(
    "k, size, value_bytes, message",
    [(0, 256, 4, "k must"), (257, 256, 4, "k must"), (8, 256, 3, "value_bytes"), (8, 0, 4, "dictionary")],
)
def test_sparse_bytes_refusals(k, size, value_bytes, message):
    with pytest.raises(ValueError, match=message):
        sparse_bytes(k, size, value_bytes)


@pytest.mark.parametrize("chunk_size", [5, 16, None])
def test_hamming_search_equals_brute_force(chunk_size):
    torch.manual_seed(1)
    q = pack_bits(torch.randn(6, 20), "ubinary")  # 3 bytes: many tied distances
    d = pack_bits(torch.randn(90, 20), "ubinary")
    dist, index = hamming_search(q, d, 12, chunk_size)
    for i in range(6):
        brute = sorted((popcount_by_hand(bytes(q[i].tolist()), bytes(d[j].tolist())), j) for j in range(90))[
            :12
        ]  # by distance, ties by doc index
        assert list(zip(dist[i].tolist(), index[i].tolist())) == brute


def test_int8_search_equals_exact_search_on_dequantised_docs():
    torch.manual_seed(2)
    docs = prefix(torch.randn(120, 32), 32)
    queries = prefix(torch.randn(5, 32), 32)
    ranges = calibrate(docs)
    codes = quantize_scalar(docs, ranges, "int8")
    scores, index = int8_search(queries, codes, ranges, 10, chunk_size=17)
    reference = (queries @ dequantize_scalar(codes, ranges).T).topk(10)
    assert torch.equal(index, reference.indices)
    torch.testing.assert_close(scores, reference.values)


def test_rescore_binary_shortlist_with_float_query():
    torch.manual_seed(3)
    docs = torch.randn(50, 16)
    queries = torch.randn(4, 16)
    bits = pack_bits(docs, "ubinary")
    candidates = torch.stack([torch.randperm(50)[:8] for _ in range(4)])  # (4, 8)
    scores, index = rescore(queries, candidates, bits)
    signs = torch.where(docs > 0, 1.0, -1.0)
    for i in range(4):
        expected = sorted(((queries[i] @ signs[j]).item(), j) for j in candidates[i].tolist())[::-1]
        assert index[i].tolist() == [j for _, j in expected]
        torch.testing.assert_close(scores[i], torch.tensor([s for s, _ in expected]))
        # 0/1 bits instead of signs give the same order: q . bits = (q . signs + sum(q)) / 2.
        zero_one = [(queries[i] @ (docs[j] > 0).float()).item() for j in index[i].tolist()]
        assert zero_one == sorted(zero_one, reverse=True)


def test_rescore_int8_dequantises():
    torch.manual_seed(4)
    docs = torch.randn(30, 8)
    ranges = calibrate(docs)
    codes = quantize_scalar(docs, ranges, "uint8")
    queries = torch.randn(2, 8)
    candidates = torch.tensor([[0, 5, 9], [29, 1, 2]])
    scores, index = rescore(queries, candidates, codes, ranges)
    dequantised = dequantize_scalar(codes, ranges)
    for i in range(2):
        expected = sorted(((queries[i] @ dequantised[j]).item(), j) for j in candidates[i].tolist())[::-1]
        assert index[i].tolist() == [j for _, j in expected]


def test_search_precisions_with_full_shortlists_equal_references():
    torch.manual_seed(5)
    docs, queries = torch.randn(60, 24), torch.randn(7, 24)
    exact = (prefix(queries, 12) @ prefix(docs, 12).T).topk(10).indices
    assert torch.equal(search(queries, docs, 12, "float32", 10, chunk_size=9), exact)
    # Binary, every doc shortlisted and rescored: the float query against the signs.
    signs = torch.where(docs[:, :12] > 0, 1.0, -1.0)
    by_signs = (prefix(queries, 12) @ signs.T).argsort(dim=1, descending=True, stable=True)
    assert torch.equal(search(queries, docs, 12, "binary", 10, rescore_k=60), by_signs)
    # int8 calibrated on the corpus prefixes themselves.
    unit = prefix(docs, 12)
    ranges = calibrate(unit)
    reference = (prefix(queries, 12) @ dequantize_scalar(quantize_scalar(unit, ranges), ranges).T).topk(10)
    assert torch.equal(search(queries, docs, 12, "int8", 10), reference.indices)


# --------------------------------------------------------------------------------------------
# Funnel search
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary_first", [False, True])
def test_funnel_with_shortlist_the_whole_corpus_equals_exact_search(binary_first):
    torch.manual_seed(6)
    docs, queries = torch.randn(80, 32), torch.randn(6, 32)
    funnel = FunnelIndex(docs, [(8, 80), (16, 80), (32, 10)], binary_first)
    scores, index = funnel.search(queries, chunk_size=13)
    exact = (prefix(queries, 32) @ prefix(docs, 32).T).topk(10)
    assert torch.equal(index, exact.indices)
    torch.testing.assert_close(scores, exact.values)


def test_funnel_stages_and_cost():
    torch.manual_seed(7)
    docs, queries = torch.randn(100, 32), torch.randn(3, 32)
    funnel = FunnelIndex(docs, [(8, 20), (32, 5)])
    scores, index = funnel.search(queries)
    assert index.shape == (3, 5)
    for i in range(3):  # by hand: shortlist by 8-dim cosine, re-rank the 20 by 32-dim cosine
        short = (prefix(docs, 8) @ prefix(queries[i], 8)).topk(20).indices
        full = prefix(docs[short], 32) @ prefix(queries[i], 32)
        assert index[i].tolist() == short[full.topk(5).indices].tolist()
    # MACs: 100 docs x 8 dims + 20 shortlisted x 32 dims
    assert funnel.cost_per_query() == {"macs": 100 * 8 + 20 * 32, "xor_bytes": 0}
    assert funnel.bytes_per_doc() == {"scan": 32, "rerank": 4 * 32 + 4}
    binary = FunnelIndex(docs, [(16, 20), (32, 5)], binary_first=True)
    assert binary.cost_per_query() == {"macs": 20 * 32, "xor_bytes": 100 * 2}
    assert binary.bytes_per_doc()["scan"] == 2


def test_funnel_validation():
    docs = torch.randn(10, 8)
    with pytest.raises(ValueError, match="dim 9"):
        FunnelIndex(docs, [(9, 5)])
    with pytest.raises(ValueError, match="keeps 6"):
        FunnelIndex(docs, [(4, 5), (8, 6)])
    assert parse_stages(["64:200", "384:10"]) == [(64, 200), (384, 10)]
    with pytest.raises(ValueError, match="DIM:K"):
        parse_stages(["64-200"])


# --------------------------------------------------------------------------------------------
# An encoder on a tiny BEIR set, and eval.py's retrieval mode
# --------------------------------------------------------------------------------------------

TOY_DOCS = [
    ("d0", "cat", "the cat sat on the mat"),
    ("d1", "dog", "a dog runs in the park"),
    ("d2", "", "the man is playing guitar"),
    ("d3", "guitar", "a woman plays the guitar in the park"),
    ("d4", "", "the dog sat on a mat"),
    ("d5", "park", "a man runs in the park"),
    ("d6", "", "cat and dog"),
    ("d7", "mat", "the mat is red"),
]
TOY_QUERIES = [("q1", "cat on a mat"), ("q2", "who plays guitar"), ("q3", "dog in the park"), ("q4", "x")]
TOY_QRELS = ["q1\td0\t2", "q1\td7\t1", "q2\td2\t1", "q2\td3\t2", "q3\td1\t2", "q3\td5\t1", "q3\td6\t0"]


@pytest.fixture
def toy_beir(tmp_path):
    return write_beir(tmp_path / "toy", TOY_DOCS, TOY_QUERIES, TOY_QRELS)


def test_evaluate_cells_float_matches_a_brute_force_ranking(tiny_model_dir, toy_beir):
    encoder = Encoder(tiny_model_dir)
    data = load_beir(toy_beir)
    query_emb, doc_emb = embed_beir(encoder, data, doc_prefix="the ")
    assert query_emb.shape == (1, 3, 32) and doc_emb.shape == (1, 8, 32)
    torch.testing.assert_close(
        doc_emb[0], encoder.encode(["the " + t for t in data.doc_texts], normalize=False)
    )
    records = evaluate_cells(query_emb, doc_emb, data, [32, 8], ["float32", "int8", "binary"], [3])
    assert [(r["dim"], r["precision"], r["bytes"]) for r in records] == [
        (32, "float32", 128), (32, "int8", 32), (32, "binary", 4),
        (8, "float32", 32), (8, "int8", 8), (8, "binary", 1),
    ]  # fmt: skip
    for record in records:
        if record["precision"] != "float32":
            continue
        rankings = {}
        for qid, q in zip(data.query_ids, query_emb[0]):
            cosines = [
                (float(prefix(q, record["dim"]) @ prefix(doc, record["dim"])), doc_id)
                for doc_id, doc in zip(data.doc_ids, doc_emb[0])
            ]
            rankings[qid] = [doc_id for _, doc_id in sorted(cosines, reverse=True)]
        expected = ranking_metrics(rankings, data.qrels)
        for name in ("ndcg@10", "mrr@10", "recall@100", "map@100"):
            assert record[name] == pytest.approx(expected[name])
    assert records[0]["retention"] == pytest.approx(1.0)
    assert all(r["recall@100"] == pytest.approx(1.0) for r in records)  # 8 docs: all retrieved


def test_eval_py_retrieval_end_to_end(tiny_model_dir, toy_beir, tmp_path, capsys):
    out = tmp_path / "results" / "eval.json"
    argv = [
        "--model", str(tiny_model_dir), "--beir", str(toy_beir), "--dims", "32", "16",
        "--precisions", "float32", "int8", "binary", "--rescore", "5",
        "--funnel", "16:6", "32:3", "--query-prefix", "query ", "--json", str(out),
    ]  # fmt: skip
    results = eval_script.main(argv)
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(results))
    assert written["sets"] == {}  # no --sts needed
    toy = written["retrieval"]["toy"]
    assert toy["queries"] == 3 and toy["docs"] == 8 and toy["query_prefix"] == "query "
    cells = [(r["layer"], r["dim"], r["precision"], r["rescore"]) for r in toy["records"]]
    assert cells == [
        (3, 32, "float32", None), (3, 32, "int8", None), (3, 32, "binary", 5),
        (3, 16, "float32", None), (3, 16, "int8", None), (3, 16, "binary", 5),
    ]  # fmt: skip
    for r in toy["records"]:
        assert 0 <= r["ndcg@10"] <= 1 and 0 <= r["map@100"] <= 1
    funnel = toy["funnel"]
    assert funnel["exact"]["macs"] == 8 * 32
    assert funnel["funnel"]["macs"] == 8 * 16 + 6 * 32
    assert 0 <= funnel["funnel"]["overlap@10"] <= 1 and funnel["exact"]["overlap@10"] == 1
    printed = capsys.readouterr().out
    assert "nDCG@10" in printed and "binary +rescore 5" in printed and "funnel" in printed
    markdown = out.with_suffix(".md").read_text()
    assert "toy (3 queries, 8 docs" in markdown and "MACs/query" in markdown
    # Never overwrites without --overwrite.
    with pytest.raises(SystemExit):
        eval_script.main(argv)
    eval_script.main([*argv, "--overwrite"])


def test_eval_py_retrieval_per_layer_and_with_sts(tiny_model_dir, toy_beir, tmp_path):
    sts = tmp_path / "sts.csv"
    sts.write_text(
        "sentence1,sentence2,score\nthe cat,a cat,4.5\na dog runs,the man plays,0.5\n"
        "the mat,a mat,4.0\nguitar,park,1.0\n"
    )
    results = eval_script.main(
        ["--model", str(tiny_model_dir), "--beir", str(toy_beir), "--sts", str(sts), "--layers", "all",
         "--dims", "32", "8"]
    )  # fmt: skip
    assert [(r["layer"], r["dim"]) for r in results["sets"]["sts"]["records"]][:2] == [(1, 32), (1, 8)]
    records = results["retrieval"]["toy"]["records"]
    assert [(r["layer"], r["dim"], r["precision"]) for r in records] == [
        (layer, d, "float32") for layer in (1, 2, 3) for d in (32, 8)
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--sts and/or --beir"),
        (["--beir", "DIR", "--funnel", "64"], "DIM:K"),
        (["--beir", "DIR", "--funnel", "64:10"], "--funnel dims"),
        (["--beir", "DIR", "--rescore", "0"], "--rescore"),
        (["--beir", "/nonexistent/beir"], "--beir"),
    ],
)
def test_eval_py_retrieval_bad_input(tiny_model_dir, toy_beir, capsys, extra, message):
    extra = [str(toy_beir) if x == "DIR" else x for x in extra]
    with pytest.raises(SystemExit):
        eval_script.main(["--model", str(tiny_model_dir), *extra])
    assert message in capsys.readouterr().err


def test_eval_py_byte_budgets_end_to_end(tiny_model_dir, toy_beir, tmp_path, capsys):
    sts = tmp_path / "sts.csv"
    sts.write_text(
        "sentence1,sentence2,score\nthe cat,a cat,4.5\na dog runs,the man plays,0.5\n"
        "the mat,a mat,4.0\nguitar,park,1.0\ncat and dog,the dog sat,3.0\n"
    )
    out = tmp_path / "eval.json"
    argv = [
        "--model", str(tiny_model_dir), "--beir", str(toy_beir), "--sts", str(sts), "--dims", "32", "20",
        "--precisions", "float32", "int8", "binary", "--rescore", "5", "--bytes", "64", "3", "1", "16",
        "--json", str(out),
    ]  # fmt: skip
    eval_script.main(argv)
    written = json.loads(out.read_text())
    # The smallest cell is 20 sign bits = 3 bytes: budget 1 is a warning before encoding, not an error.
    err = capsys.readouterr().err
    assert "warning: --bytes 1: no evaluated cell fits (the smallest is d=20 binary, 3 B)" in err
    assert "--bytes 3" not in err
    closed_form = {"float32": lambda d: 4 * d, "int8": lambda d: d, "binary": lambda d: -(-d // 8)}
    for section, name, metric in (("sets", "sts", "spearman"), ("retrieval", "toy", "ndcg@10")):
        entry = written[section][name]
        records = entry["records"]
        assert {(r["dim"], r["precision"]) for r in records} == {
            (d, p) for d in (32, 20) for p in ("float32", "int8", "binary")
        }
        for r in records:  # every record of both kinds carries its bytes per stored vector
            assert r["bytes"] == closed_form[r["precision"]](r["dim"])
        assert [row["budget"] for row in entry["budgets"]] == [1, 3, 16, 64]
        for row in entry["budgets"]:
            fits = [r for r in records if r["bytes"] <= row["budget"]]
            assert len(row["fits"]) == len(fits)
            if not fits:
                assert row["best"] is None
                continue
            best = max(fits, key=lambda r: (r[metric], -r["bytes"]))  # brute force
            cell = (best["layer"], best["dim"], best["precision"], best["bytes"], best[metric])
            assert cell == tuple(row["best"][k] for k in ("layer", "dim", "precision", "bytes", metric))
    # 3 bytes: only the 20-dim binary cell; 16 bytes: binary at both dims (3 and 4 bytes).
    toy = written["retrieval"]["toy"]["budgets"]
    assert [(c["dim"], c["precision"], c["rescore"]) for c in toy[1]["fits"]] == [(20, "binary", 5)]
    assert sorted(c["dim"] for c in toy[2]["fits"]) == [20, 32]
    markdown = out.with_suffix(".md").read_text()
    assert markdown.count("Best cell within each byte budget") == 2
    assert "| 1 B | nothing fits | | | 0 |" in markdown
    assert "| 3 B | layer 3, d=20, binary +rescore 5 | 3 |" in markdown
    assert "| layer | precision | d=32 | d=20 |" in markdown  # STS: a row per precision


@pytest.mark.parametrize(
    "budgets, message",
    [
        (["0"], "--bytes 0: a budget must be at least 1 byte"),
        (["16", "-8"], "--bytes -8: a budget must be at least 1 byte"),
        (["16", "32", "16"], "--bytes: 16 is given twice"),
        (["1.5"], "--bytes"),
    ],
)
def test_eval_py_bad_byte_budgets_are_one_line(tiny_model_dir, toy_beir, capsys, budgets, message):
    with pytest.raises(SystemExit):
        eval_script.main(["--model", str(tiny_model_dir), "--beir", str(toy_beir), "--bytes", *budgets])
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------------------------
# Integration: all-MiniLM-L6-v2 on a SciFact subset
# --------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_minilm_scifact_subset_binary_rescore_recovers_float(minilm_dir, shared_data):
    # The first 30 test queries, their relevant docs plus 300 other docs (a fixed random pick):
    # about 340 docs to encode, ~20 s on 2 CPU cores. nDCG@10 of random ranking would be ~0.05.
    full = load_beir(shared_data / "scifact")
    query_ids = full.query_ids[:30]
    relevant = {d for q in query_ids for d in full.qrels[q]}
    others = [d for d in full.doc_ids if d not in relevant]
    keep = relevant | set(random.Random(0).sample(others, 300))
    doc_index = [i for i, d in enumerate(full.doc_ids) if d in keep]
    data = type(full)(
        doc_ids=[full.doc_ids[i] for i in doc_index],
        doc_texts=[full.doc_texts[i] for i in doc_index],
        query_ids=query_ids,
        query_texts=full.query_texts[:30],
        qrels={q: full.qrels[q] for q in query_ids},
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        encoder = Encoder(minilm_dir)
        query_emb, doc_emb = embed_beir(encoder, data, batch_size=32)
    finally:
        torch.set_num_threads(threads)
    records = evaluate_cells(query_emb, doc_emb, data, [384, 128], ["float32", "int8", "binary"], [6], 50)
    cell = {(r["dim"], r["precision"]): r for r in records}
    float_ndcg = cell[(384, "float32")]["ndcg@10"]
    assert float_ndcg > 0.5  # all-MiniLM-L6-v2 scores 0.645 on the full SciFact corpus
    assert cell[(384, "int8")]["ndcg@10"] > 0.95 * float_ndcg
    assert cell[(384, "binary")]["ndcg@10"] > 0.85 * float_ndcg  # Hamming top 50, rescored
    assert cell[(128, "float32")]["ndcg@10"] > 0.75  # a prefix of a model not trained for it

"""Retrieval with Matryoshka embeddings: BEIR data, ranking metrics, exact / quantised / funnel search.

Scores are dot products: give unit vectors (``mrl.losses.prefix``) for cosine similarity. Every
search scans the corpus in chunks and keeps a running top-k, so the (Q, N) score matrix is never
built at once (a 1M x 384 float32 corpus with 1000 queries would need 4 GB for it).

- `exact_search`: float dot products, chunked matmul + top-k merge.
- `int8_search`: float query against dequantised int8/uint8 docs (asymmetric: only the corpus is
  stored quantised, the query stays float).
- `hamming_search`: packed sign bits, smallest Hamming distance first (popcount of the XOR);
  `rescore` re-ranks its shortlist with the float query against the docs' signs.
- `FunnelIndex`: shortlist with the first d_1 dims (float, or their sign bits), then re-rank the
  shortlist with more dims, stage after stage (Matryoshka "funnel" / adaptive retrieval, Kusupati
  et al. 2022), with the multiply-adds each query costs.

Metrics follow BEIR (which calls pytrec_eval / trec_eval): nDCG@k with graded gains, MRR@k,
Recall@k, MAP@k; see `ranking_metrics` for the exact definitions.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from mrl.data import DataError, RepeatedKey, is_blank, no_repeated_keys, text_lines
from mrl.evaluation import encode_layers
from mrl.losses import prefix
from mrl.quantize import (
    Ranges,
    bytes_per_vector,
    calibrate,
    dequantize_scalar,
    hamming_distance,
    pack_bits,
    quantize_scalar,
    unpack_signs,
)
from mrl.runtime import parse_int_pairs

METRIC_NAMES = ("ndcg@10", "mrr@10", "recall@100", "map@100")
# Scores of a (Q, chunk) block at most this many elements (64 MB of float32) unless told otherwise.
_BLOCK_ELEMENTS = 1 << 24

# --------------------------------------------------------------------------------------------
# BEIR data
# --------------------------------------------------------------------------------------------


@dataclass
class BeirData:
    """A BEIR-layout retrieval set: corpus, the queries that have qrels, graded qrels."""

    doc_ids: list[str]
    doc_texts: list[str]  # title and text joined with a space, stripped
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance grade}
    name: str = ""
    no_relevant: int = 0  # queries whose every grade is <= 0: kept, they score 0 (as in BEIR)

    def __len__(self) -> int:
        return len(self.query_ids)


def _lines(path: Path):
    """(line number, text) of a UTF-8 file, streamed; bounded by `mrl.data.MAX_LINE_BYTES` per
    line, and a non-UTF-8 byte, a folder or a missing file are errors naming the path (and line)."""
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with path.open("rb") as f:
            yield from enumerate(text_lines(f, str(path)), 1)
    except DataError as error:
        raise ValueError(str(error)) from None


def _read_jsonl(path: Path) -> dict[str, tuple[int, dict]]:
    """{id: (line, record)} of a BEIR JSONL file; a repeated ``_id`` is an error naming both lines
    (keeping either record would silently change the metrics)."""
    rows: dict[str, tuple[int, dict]] = {}
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=no_repeated_keys)
        except RepeatedKey as error:
            raise ValueError(f"{path}:{number}: key {error.args[0]!r} appears twice in one record") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not a JSON object ({error.msg})") from None
        except RecursionError:  # e.g. [[[[...]]]] thousands deep: hostile, not data
            raise ValueError(f"{path}:{number}: JSON nested too deeply") from None
        if not isinstance(row, dict) or "_id" not in row:
            raise ValueError(f"{path}:{number}: needs an object with an '_id' field")
        if not isinstance(row["_id"], (str, int)) or isinstance(row["_id"], bool) or str(row["_id"]) == "":
            raise ValueError(f"{path}:{number}: '_id' must be a non-empty string or integer: {row['_id']!r}")
        key = str(row["_id"])
        if key in rows:
            raise ValueError(f"{path}:{number}: _id {key!r} repeats line {rows[key][0]}")
        rows[key] = (number, row)
    if not rows:
        raise ValueError(f"{path}: no records")
    return rows


def load_corpus(path: str | Path) -> dict[str, str]:
    """corpus.jsonl -> {doc id: "title text"} (BEIR joins title and text with a space)."""
    return {
        key: (str(row.get("title") or "") + " " + str(row.get("text") or "")).strip()
        for key, (_, row) in _read_jsonl(Path(path)).items()
    }


def load_queries(path: str | Path) -> dict[str, str]:
    """queries.jsonl -> {query id: text}; a query with no visible text is an error (file:line)."""
    queries = {}
    for key, (number, row) in _read_jsonl(Path(path)).items():
        text = str(row.get("text") or "")
        if is_blank(text):
            raise ValueError(f"{path}:{number}: query {key!r} has no text")
        queries[key] = text
    return queries


def load_qrels(path: str | Path, lines: dict | None = None) -> dict[str, dict[str, int]]:
    """qrels TSV ``query-id corpus-id score`` (a header line is skipped) -> {qid: {doc id: grade}}.

    Grades are integers (a fraction or a non-finite number is an error, not silently cut); a
    (query, doc) pair given twice is an error naming both lines. ``lines``, if given, receives
    ``{(qid, doc id): line}`` for error messages about unknown ids.
    """
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    seen: dict[tuple[str, str], int] = {} if lines is None else lines
    for number, line in _lines(path):
        parts = line.rstrip("\r\n").split("\t")
        if not line.strip():
            continue
        if len(parts) != 3:
            raise ValueError(f"{path}:{number}: expected 3 tab-separated fields, got {len(parts)}")
        try:
            value = float(parts[2])
        except ValueError:
            if number == 1:  # the header
                continue
            raise ValueError(f"{path}:{number}: relevance {parts[2]!r} is not a number") from None
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"{path}:{number}: relevance {parts[2]!r} is not an integer grade")
        pair = (parts[0], parts[1])
        if pair in seen:
            repeated = f"query {parts[0]!r} and doc {parts[1]!r} repeat line {seen[pair]}"
            raise ValueError(f"{path}:{number}: {repeated}")
        seen[pair] = number
        qrels.setdefault(parts[0], {})[parts[1]] = int(value)
    if not qrels:
        raise ValueError(f"{path}: no qrels (expected lines of query-id, corpus-id, score)")
    return qrels


def load_beir(folder: str | Path, split: str = "test") -> BeirData:
    """Read a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).

    Keeps the queries that appear in the qrels (in file order). Qrels naming queries or docs that
    are not in queries.jsonl / corpus.jsonl are an error naming the qrels line: they would
    silently change every metric. So are repeated ids (see `load_corpus`, `load_qrels`). A query
    with no relevant doc (every grade 0) is kept and scores 0, as in BEIR, with a warning; qrels
    with no relevant doc at all are an error.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder}: is a file; a BEIR set is a folder (corpus.jsonl, queries.jsonl, qrels/)")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist")
    corpus = load_corpus(folder / "corpus.jsonl")
    queries = load_queries(folder / "queries.jsonl")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    lines: dict[tuple[str, str], int] = {}
    qrels = load_qrels(qrels_path, lines)
    for (qid, doc), number in sorted(lines.items(), key=lambda item: item[1]):
        if qid not in queries:
            raise ValueError(f"{qrels_path}:{number}: query {qid!r} is not in queries.jsonl")
        if doc not in corpus:
            raise ValueError(f"{qrels_path}:{number}: doc {doc!r} is not in corpus.jsonl")
    query_ids = [q for q in queries if q in qrels]
    if not any(grade > 0 for q in query_ids for grade in qrels[q].values()):
        raise ValueError(
            f"{qrels_path}: every relevance grade is 0 or less: no query has a relevant doc, so every "
            "metric is 0 (is the grade column the third?)"
        )
    # A query with no relevant doc has no ideal ranking: its nDCG is undefined (0 / 0). BEIR scores
    # it 0 (pytrec_eval's ndcg_cut keeps 0 when the ideal DCG is 0, and BEIR averages over every
    # query it returns), and so do we, so that our numbers compare with BEIR's tables; but the
    # mean then mixes in queries no model can score on, so it is said (issue 28).
    no_relevant = [q for q in query_ids if not any(grade > 0 for grade in qrels[q].values())]
    if no_relevant:
        judged, total = len(query_ids) - len(no_relevant), len(query_ids)
        print(
            f"warning: {qrels_path}: {len(no_relevant)} of {total} queries have no relevant doc "
            f"(grades 0 or less; first: {no_relevant[0]!r}); they are kept and score 0 in every metric, "
            f"as in BEIR (the mean over the {judged} with one is the printed mean x {total}/{judged})",
            file=sys.stderr,
        )
    empty = [key for key, text in corpus.items() if is_blank(text)]
    if len(empty) == len(corpus):
        raise ValueError(f"{folder / 'corpus.jsonl'}: every document is empty (no title, no text)")
    if empty:  # real corpora have a few (title-only pages lost their title): kept, but said
        print(
            f"warning: {folder / 'corpus.jsonl'}: {len(empty)} of {len(corpus)} documents are empty "
            f"(no title, no text; first: _id {empty[0]!r}); they are kept and can still be retrieved",
            file=sys.stderr,
        )
    return BeirData(
        doc_ids=list(corpus),
        doc_texts=list(corpus.values()),
        query_ids=query_ids,
        query_texts=[queries[q] for q in query_ids],
        qrels={q: qrels[q] for q in query_ids},
        name=folder.name,
        no_relevant=len(no_relevant),
    )


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def ndcg_at_k(ranking: Sequence[str], rels: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k with graded gains: ``DCG = sum_{r=1..k} rel(doc_r) / log2(r + 1)`` over the ranking,
    divided by the same sum over the qrels' grades sorted high to low (the ideal ranking).
    Grades <= 0 count as 0. 0 when the query has no relevant doc."""
    dcg = sum(max(rels.get(doc, 0), 0) / math.log2(rank + 1) for rank, doc in enumerate(ranking[:k], 1))
    ideal_grades = sorted((g for g in rels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal_grades, 1))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(ranking: Sequence[str], rels: Mapping[str, int], k: int = 10) -> float:
    """1 / rank of the first relevant (grade > 0) doc within the top k, else 0."""
    for rank, doc in enumerate(ranking[:k], 1):
        if rels.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def recall_at_k(ranking: Sequence[str], rels: Mapping[str, int], k: int = 100) -> float:
    """Share of the relevant (grade > 0) docs that are in the top k; 0 if none is relevant."""
    relevant = {doc for doc, g in rels.items() if g > 0}
    return len(relevant.intersection(ranking[:k])) / len(relevant) if relevant else 0.0


def average_precision_at_k(ranking: Sequence[str], rels: Mapping[str, int], k: int = 100) -> float:
    """MAP@k term of one query, as trec_eval's ``map_cut_k`` (what BEIR reports as MAP@k):
    the sum of precision@r over the ranks r <= k that hold a relevant doc, divided by the **total**
    number of relevant docs (not by min(that, k)); 0 if none is relevant."""
    n_relevant = sum(1 for g in rels.values() if g > 0)
    if n_relevant == 0:
        return 0.0
    hits, total = 0, 0.0
    for rank, doc in enumerate(ranking[:k], 1):
        if rels.get(doc, 0) > 0:
            hits += 1
            total += hits / rank
    return total / n_relevant


def ranking_metrics(
    rankings: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]
) -> dict[str, float]:
    """nDCG@10, MRR@10, Recall@100 and MAP@100 (fractions in 0..1), averaged over the qrels' queries.

    rankings: query id -> doc ids, best first. A query of the qrels with no ranking scores 0.
    We rank by our own scores as given; trec_eval would re-sort ties by doc id (only matters for
    exactly equal scores, e.g. Hamming distances without rescoring).
    """
    if not qrels:
        raise ValueError("no qrels to evaluate")
    per_metric = {
        "ndcg@10": lambda r, q: ndcg_at_k(r, q, 10),
        "mrr@10": lambda r, q: mrr_at_k(r, q, 10),
        "recall@100": lambda r, q: recall_at_k(r, q, 100),
        "map@100": lambda r, q: average_precision_at_k(r, q, 100),
    }
    return {
        name: sum(fn(list(rankings.get(qid, [])), rels) for qid, rels in qrels.items()) / len(qrels)
        for name, fn in per_metric.items()
    }


def overlap_at_k(indices: Tensor, reference: Tensor, k: int = 10) -> float:
    """Mean share of the reference top-k that ``indices`` also return in their top k ("recall@k
    against exact search"). indices, reference: (Q, >= k) doc indices, best first."""
    got, want = indices[:, :k], reference[:, :k]
    hits = (got[:, :, None] == want[:, None, :]).any(-1).sum().item()  # (Q, k, k) -> count
    return hits / want.numel() if want.numel() else 0.0


# --------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------


def _chunk_rows(n_queries: int, chunk_size: int | None) -> int:
    """Docs per chunk: as given, else as many as keep a (Q, chunk) block under _BLOCK_ELEMENTS."""
    return chunk_size or max(1024, _BLOCK_ELEMENTS // max(n_queries, 1))


def _merge_topk(best: tuple[Tensor, Tensor] | None, scores: Tensor, index: Tensor, k: int, largest: bool):
    """Running top-k: merge the kept (Q, k) with a chunk's candidates (Q, c); indices are global."""
    if best is not None:
        scores = torch.cat([best[0], scores], dim=1)
        index = torch.cat([best[1], index], dim=1)
    top, pos = scores.topk(min(k, scores.shape[1]), dim=1, largest=largest)
    return top, index.gather(1, pos)


def exact_search(
    queries: Tensor, docs: Tensor, k: int, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Top-k docs by dot product: queries (Q, d), docs (N, d) -> scores, indices (Q, min(k, N)).

    The corpus is scanned in chunks of ``chunk_size`` docs (default: a (Q, chunk) block of at most
    16M scores); each chunk's top k is merged into the running top k. Same result as
    ``(queries @ docs.T).topk(k)`` (up to the order of exactly tied scores).
    """
    if queries.shape[-1] != docs.shape[-1]:
        raise ValueError(f"queries have width {queries.shape[-1]}, docs {docs.shape[-1]}")
    chunk = _chunk_rows(queries.shape[0], chunk_size)
    queries = queries.float()
    return _chunked_topk(
        queries.shape[0], docs.shape[0], chunk, k, lambda rows: queries @ docs[rows].float().T
    )


def int8_search(
    queries: Tensor, codes: Tensor, ranges: Ranges, k: int, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Float queries (Q, d) against int8/uint8 docs (N, d): top-k of ``q . dequantise(code)``.

    With ``dequantise(c) = low + (c + offset) * step`` (offset 128 for int8, 0 for uint8) the score
    is ``(q * step) . c + q . (low + offset * step)``: each chunk of codes is only converted to
    float (the corpus stays 1 byte per value), and the second term is one number per query.
    Chunks default to at most 4096 docs so the converted block stays in cache.
    """
    chunk = chunk_size or min(_chunk_rows(queries.shape[0], None), 4096)
    queries = queries.float()
    offset = 128.0 if codes.dtype == torch.int8 else 0.0
    scaled = queries * ranges.step  # (Q, d)
    constant = queries @ (ranges.low + offset * ranges.step)  # (Q,)
    return _chunked_topk(
        queries.shape[0],
        codes.shape[0],
        chunk,
        k,
        lambda rows: scaled @ codes[rows].float().T + constant[:, None],
    )


def _chunked_topk(n_queries: int, n_docs: int, chunk: int, k: int, score_rows) -> tuple[Tensor, Tensor]:
    """Running top-k (largest first) over the corpus in chunks: ``score_rows(slice)`` gives the
    (Q, c) scores of one chunk of docs. Returns scores, indices (Q, min(k, N))."""
    best = None
    for start in range(0, n_docs, chunk):
        scores = score_rows(slice(start, start + chunk))  # (Q, c)
        top, pos = scores.topk(min(k, scores.shape[1]), dim=1)
        best = _merge_topk(best, top, pos + start, k, largest=True)
    if best is None:
        return torch.empty(n_queries, 0), torch.empty(n_queries, 0, dtype=torch.long)
    return best


def hamming_search(
    query_bits: Tensor, doc_bits: Tensor, k: int, chunk_size: int | None = None, use_lut: bool = False
) -> tuple[Tensor, Tensor]:
    """Smallest Hamming distance first: packed (Q, B), (N, B) -> distances (int64), indices (Q, k).

    Ties (frequent: distances are small integers) go to the lower doc index, deterministically:
    the search ranks the key ``distance * N + index``, which is unique per doc.
    """
    n_docs = doc_bits.shape[0]
    chunk = _chunk_rows(query_bits.shape[0], chunk_size)
    # int32 keys (4x faster top-k than int64 here) whenever the largest key fits.
    key_dtype = torch.int32 if (8 * doc_bits.shape[-1] + 1) * n_docs < 2**31 else torch.int64
    best = None
    for start in range(0, n_docs, chunk):
        dist = hamming_distance(query_bits, doc_bits[start : start + chunk], use_lut=use_lut)  # (Q, c)
        index = torch.arange(start, start + dist.shape[1], dtype=key_dtype)
        key = dist.to(key_dtype).mul_(n_docs).add_(index)  # (Q, c) unique per doc
        if best is not None:
            key = torch.cat([best, key], dim=1)  # merge with the running top k
        best = key.topk(min(k, key.shape[1]), dim=1, largest=False).values
    if best is None:
        empty = torch.empty(query_bits.shape[0], 0, dtype=torch.long)
        return empty, empty.clone()
    return (best // n_docs).long(), (best % n_docs).long()


def gather_float(docs: Tensor, index: Tensor, dim: int, ranges: Ranges | None = None) -> Tensor:
    """Rows ``index`` (any shape) of a stored corpus as float (..., dim): float rows as they are,
    int8/uint8 codes dequantised with ``ranges``, packed bits as +-1 signs."""
    rows = docs[index]
    if docs.dtype in (torch.int8, torch.uint8) and ranges is not None:
        return dequantize_scalar(rows.reshape(-1, rows.shape[-1]), ranges).view(*rows.shape[:-1], -1)
    if docs.dtype in (torch.int8, torch.uint8):
        return unpack_signs(rows, dim)
    return rows[..., :dim].float()


def rescore(
    queries: Tensor,
    candidates: Tensor,
    docs: Tensor,
    ranges: Ranges | None = None,
    query_batch: int = 256,
) -> tuple[Tensor, Tensor]:
    """Re-rank a shortlist with the float query: scores, indices (Q, K), best first.

    queries: (Q, d) float; candidates: (Q, K) doc indices; docs: the stored corpus, float (N, d),
    int8/uint8 codes (N, d) with their ``ranges``, or packed bits (N, ceil(d / 8)) without ranges
    (scored against the docs' +-1 signs; signs or 0/1 bits give the same order, since
    ``q . bits = (q . signs + sum(q)) / 2``).
    """
    dim = queries.shape[-1]
    all_scores = []
    for start in range(0, queries.shape[0], query_batch):
        cand = candidates[start : start + query_batch]  # (q, K)
        rows = gather_float(docs, cand, dim, ranges)  # (q, K, d)
        all_scores.append(torch.einsum("qkd,qd->qk", rows, queries[start : start + query_batch].float()))
    scores = torch.cat(all_scores) if all_scores else queries.new_empty(0, candidates.shape[1])
    order = scores.argsort(dim=1, descending=True, stable=True)
    return scores.gather(1, order), candidates.gather(1, order)


def search(
    queries: Tensor,
    docs: Tensor,
    dim: int,
    precision: str,
    k: int,
    rescore_k: int | None = None,
    ranges: Ranges | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Top-k doc indices (Q, k) at one Matryoshka dim and precision, from full-width embeddings.

    queries (Q, D), docs (N, D): raw or unit float embeddings; each side is cut to its prefix
    ``prefix(x, dim)`` (slice, re-normalise) so dot products are cosines. float32: exact search;
    int8/uint8: the corpus prefixes quantised with ``ranges`` (default: calibrated on the corpus
    itself), searched with the float query; binary/ubinary: Hamming search over the sign bits,
    then, with ``rescore_k``, the top ``rescore_k`` re-ranked by the float query against the
    signs (the returned list then has ``rescore_k`` entries: ask for at least k). Rescoring does
    not apply to int8, whose search already uses the float query.
    """
    q = prefix(queries.float(), dim)  # (Q, dim)
    d = prefix(docs.float(), dim)  # (N, dim)
    if precision == "float32":
        return exact_search(q, d, k, chunk_size)[1]
    if precision in ("int8", "uint8"):
        ranges = ranges or calibrate(d)
        return int8_search(q, quantize_scalar(d, ranges, precision), ranges, k, chunk_size)[1]
    if precision in ("binary", "ubinary"):
        doc_bits = pack_bits(d, precision)
        shortlist = hamming_search(pack_bits(q, precision), doc_bits, rescore_k or k, chunk_size)[1]
        if not rescore_k:
            return shortlist
        return rescore(q, shortlist, doc_bits)[1]
    raise ValueError(f"unknown precision {precision!r}")


# --------------------------------------------------------------------------------------------
# Funnel search
# --------------------------------------------------------------------------------------------


def parse_stages(specs: Sequence[str]) -> list[tuple[int, int]]:
    """``["64:200", "384:10"]`` -> ``[(64, 200), (384, 10)]`` (dim, docs kept)."""
    return parse_int_pairs(list(specs), "funnel stage", "DIM:K, e.g. 64:200")


def check_stages(stages: Sequence[tuple[int, int]], width: int | None = None) -> None:
    """Raise ValueError unless ``stages`` is a funnel: at least one stage, each keeping 1 to the
    previous stage's k docs, dims in 1..``width`` (when known). Cheap: call it before encoding."""
    if not stages:
        raise ValueError("a funnel needs at least one (dim, k) stage")
    for i, (dim, keep) in enumerate(stages):
        if dim < 1 or (width is not None and dim > width):
            raise ValueError(f"funnel stage {i + 1}: dim {dim} outside 1..{width or 'the model dim'}")
        if keep < 1 or (i and keep > stages[i - 1][1]):
            raise ValueError(f"funnel stage {i + 1}: keeps {keep}; each stage keeps 1..previous k docs")


@dataclass
class FunnelIndex:
    """Funnel search over a corpus of full-width embeddings ``docs`` (N, D), raw or unit.

    ``stages = [(d_1, k_1), (d_2, k_2), ...]``: stage 1 scores the whole corpus with the first d_1
    dims (cosine of the prefixes; with ``binary_first``, Hamming distance of their sign bits) and
    keeps k_1 docs; each next stage re-scores only the kept docs with the cosine at d_i and keeps
    k_i. The last stage's list is the result. With stages ``[(D, k)]`` this is exact search.

    Built once per corpus (`build`): stage 1's table (unit prefixes (N, d_1) float32, or bits
    (N, d_1 / 8)), and for every later stage the norm of each doc's d_i-prefix (N,), so that a
    re-ranking stage costs k_{i-1} * d_i multiply-adds (a dot with the raw prefix, divided by
    the stored norm) instead of re-normalising the gathered prefixes.
    """

    docs: Tensor
    stages: list[tuple[int, int]]
    binary_first: bool = False
    first_table: Tensor = field(init=False, repr=False)
    prefix_norms: list[Tensor] = field(init=False, repr=False)

    def __post_init__(self):
        check_stages(self.stages, self.docs.shape[-1])
        self.docs = self.docs.float()
        first = prefix(self.docs, self.stages[0][0])  # (N, d_1) unit rows
        self.first_table = pack_bits(first, "ubinary") if self.binary_first else first.contiguous()
        self.prefix_norms = [
            self.docs[:, :dim].norm(dim=-1).clamp(min=1e-12) for dim, _ in self.stages[1:]
        ]  # each (N,)

    def search(
        self, queries: Tensor, chunk_size: int | None = None, query_batch: int = 16
    ) -> tuple[Tensor, Tensor]:
        """queries (Q, D) -> scores, indices (Q, k_last); the scores are the last stage's cosines
        (or negative Hamming distances for a single binary stage). Re-ranking gathers the
        candidates of ``query_batch`` queries at a time (a (query_batch, k, d) block)."""
        dim, keep = self.stages[0]
        q = prefix(queries.float(), dim)
        if self.binary_first:
            dist, index = hamming_search(pack_bits(q, "ubinary"), self.first_table, keep, chunk_size)
            scores = -dist.float()
        else:
            scores, index = exact_search(q, self.first_table, keep, chunk_size)
        for (dim, keep), norms in zip(self.stages[1:], self.prefix_norms):
            q = prefix(queries.float(), dim)  # (Q, d_i) unit
            scores = torch.cat(
                [
                    self._cosines(q[i : i + query_batch], index[i : i + query_batch], dim, norms)
                    for i in range(0, q.shape[0], query_batch)
                ]
            )  # (Q, k_prev)
            scores, pos = scores.topk(min(keep, scores.shape[1]), dim=1)
            index = index.gather(1, pos)
        return scores, index

    def _cosines(self, q: Tensor, index: Tensor, dim: int, norms: Tensor) -> Tensor:
        """Cosines at ``dim`` of unit queries q (q, dim) with their candidates index (q, k)."""
        rows = self.docs.index_select(0, index.flatten())[:, :dim]  # (q * k, dim) raw prefixes
        rows = rows.view(*index.shape, dim)  # (q, k, dim)
        return (rows @ q[:, :, None])[..., 0] / norms[index]  # (q, k)

    def cost_per_query(self) -> dict[str, int]:
        """Work per query: ``macs`` float multiply-adds of the similarity computations (stage 1:
        N * d_1, later stages: k_{i-1} * d_i; query normalisation and top-k excluded) and
        ``xor_bytes`` (bytes XOR-ed and popcounted by a binary first stage)."""
        n = self.docs.shape[0]
        first_dim = self.stages[0][0]
        macs = 0 if self.binary_first else n * first_dim
        xor_bytes = n * ((first_dim + 7) // 8) if self.binary_first else 0
        kept = min(self.stages[0][1], n)
        for dim, keep in self.stages[1:]:
            macs += kept * dim
            kept = min(keep, kept)
        return {"macs": macs, "xor_bytes": xor_bytes}

    def bytes_per_doc(self) -> dict[str, int]:
        """Storage per doc: ``scan`` (the stage-1 table, scanned for every query) and ``rerank``
        (what re-ranking reads, for a few docs per query: the float prefix up to the largest later
        dim plus one float norm per later stage; could live on disk)."""
        first_dim = self.stages[0][0]
        scan = bytes_per_vector(first_dim, "ubinary" if self.binary_first else "float32")
        later = [dim for dim, _ in self.stages[1:]]
        rerank = 4 * max(later) + 4 * len(later) if later else 0
        return {"scan": scan, "rerank": rerank}


# --------------------------------------------------------------------------------------------
# Evaluation of an encoder on a BEIR set, per (layer, dim, precision)
# --------------------------------------------------------------------------------------------


def embed_beir(
    encoder,
    data: BeirData,
    layers: Sequence[int] | None = None,
    query_prefix: str = "",
    doc_prefix: str = "",
    batch_size: int = 64,
    show_progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Encode queries and corpus once at full width: (Lsel, Q, D) and (Lsel, N, D), un-normalised.

    layers: 1-based layers to keep (all of them from one pass), or None for the final layer only.
    The prefixes (e.g. "query: ", "passage: ") are prepended to the texts.
    """
    queries = [query_prefix + t for t in data.query_texts]
    docs = [doc_prefix + t for t in data.doc_texts]

    return (
        encode_layers(encoder, queries, layers, batch_size, show_progress),
        encode_layers(encoder, docs, layers, batch_size, show_progress),
    )


def rankings_from_indices(indices: Tensor, data: BeirData) -> dict[str, list[str]]:
    """(Q, k) doc indices -> {query id: [doc ids, best first]}."""
    return {qid: [data.doc_ids[i] for i in row] for qid, row in zip(data.query_ids, indices.tolist())}


def evaluate_cells(
    query_emb: Tensor,
    doc_emb: Tensor,
    data: BeirData,
    dims: Sequence[int],
    precisions: Sequence[str] = ("float32",),
    layers: Sequence[int] | None = None,
    rescore_k: int | None = None,
    search_fn=None,
    recall_vs_exact: bool = False,
) -> list[dict]:
    """Score every (layer, dim, precision) cell on one encoding of the set.

    query_emb (Lsel, Q, D), doc_emb (Lsel, N, D) from `embed_beir`; layers labels the Lsel rows.
    Each cell searches the top 100 (or ``rescore_k`` for rescored binary) and records
    ``{"layer", "dim", "precision", "bytes", "rescore", "seconds", **metrics, "retention"}``,
    retention being nDCG@10 over the float32 nDCG@10 at the layer's largest dim (when scored).
    int8/uint8 ranges are calibrated on the corpus prefixes at each dim.
    ``search_fn`` replaces `search` (same signature; e.g. `mrl.index.search_cells`, FAISS), and
    ``recall_vs_exact`` adds ``"recall@10_vs_exact"``: the share of this module's exact float32
    top 10 at the same dim that the cell's top 10 holds.
    """
    search_fn = search_fn or search
    layers = list(layers) if layers is not None else [None] * query_emb.shape[0]
    records = []
    for layer, q_layer, d_layer in zip(layers, query_emb, doc_emb):
        cells = []
        for dim in dims:
            for precision in precisions:
                binary = precision in ("binary", "ubinary")
                start = time.perf_counter()
                index = search_fn(q_layer, d_layer, dim, precision, 100, rescore_k if binary else None)
                seconds = time.perf_counter() - start
                if recall_vs_exact:
                    exact = search(q_layer, d_layer, dim, "float32", 10)
                    extra = {"recall@10_vs_exact": overlap_at_k(index, exact, min(10, exact.shape[1]))}
                else:
                    extra = {}
                cells.append(
                    {
                        "layer": layer,
                        "dim": dim,
                        "precision": precision,
                        "bytes": bytes_per_vector(dim, precision),
                        "rescore": rescore_k if binary else None,
                        "seconds": seconds,
                        **ranking_metrics(rankings_from_indices(index, data), data.qrels),
                        **extra,
                    }
                )
        full = [c for c in cells if c["precision"] == "float32" and c["dim"] == max(dims)]
        for cell in cells:
            cell["retention"] = cell["ndcg@10"] / full[0]["ndcg@10"] if full and full[0]["ndcg@10"] else None
        records.extend(cells)
    return records


def evaluate_funnel(
    queries: Tensor,
    docs: Tensor,
    data: BeirData,
    stages: Sequence[tuple[int, int]],
    binary_first: bool = False,
    index_class=None,
) -> dict:
    """A funnel against full-width exact search on one layer's embeddings (Q, D), (N, D).

    Both return the funnel's final k docs; reports nDCG@10, MRR@10, the overlap of the funnel's
    top 10 with the exact top 10, multiply-adds and measured seconds per query (all queries in
    one batch, so this is throughput-style latency on this machine). ``index_class`` replaces
    `FunnelIndex` (same interface; e.g. `mrl.index.FaissFunnel`).
    """
    index_class = index_class or FunnelIndex
    width = docs.shape[-1]
    keep = stages[-1][1]
    results = {}
    exact = index_class(docs, [(width, keep)])
    funnel = index_class(docs, list(stages), binary_first)
    indices = {}
    for name, index in (("exact", exact), ("funnel", funnel)):
        start = time.perf_counter()
        indices[name] = index.search(queries)[1]
        seconds = time.perf_counter() - start
        metrics = ranking_metrics(rankings_from_indices(indices[name], data), data.qrels)
        results[name] = {
            "stages": index.stages,
            "binary_first": index.binary_first,
            "ndcg@10": metrics["ndcg@10"],
            "mrr@10": metrics["mrr@10"],
            **index.cost_per_query(),
            "bytes_per_doc": index.bytes_per_doc(),
            "ms_per_query": 1000 * seconds / max(len(data), 1),
        }
    results["funnel"]["overlap@10"] = overlap_at_k(indices["funnel"], indices["exact"], min(10, keep))
    results["exact"]["overlap@10"] = 1.0
    return results


def format_cells(records: list[dict]) -> str:
    """Markdown table of `evaluate_cells` records: one row per (layer, dim, precision), plus a
    recall@10 vs exact column when the records have one."""
    vs_exact = any("recall@10_vs_exact" in r for r in records)
    lines = [
        "| layer | dim | precision | bytes/vec | nDCG@10 | MRR@10 | R@100 | MAP@100 | retention |"
        + (" R@10 vs exact |" if vs_exact else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if vs_exact else ""),
    ]
    for r in records:
        precision = r["precision"] + (f" +rescore {r['rescore']}" if r.get("rescore") else "")
        retention = "" if r["retention"] is None else f"{100 * r['retention']:.1f}%"
        line = (
            f"| {r['layer']} | {r['dim']} | {precision} | {r['bytes']} | {100 * r['ndcg@10']:.2f} "
            f"| {100 * r['mrr@10']:.2f} | {100 * r['recall@100']:.2f} | {100 * r['map@100']:.2f} "
            f"| {retention} |"
        )
        if vs_exact:
            recall = r.get("recall@10_vs_exact")
            line += " |" if recall is None else f" {100 * recall:.1f}% |"
        lines.append(line)
    return "\n".join(lines)


def format_funnel(result: dict) -> str:
    """Markdown table of an `evaluate_funnel` result: exact vs funnel."""
    lines = [
        "| search | stages | nDCG@10 | MRR@10 | overlap@10 vs exact | MACs/query | XOR bytes/query "
        "| ms/query |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("exact", "funnel"):
        r = result[name]
        stages = " -> ".join(f"{d}:{k}" for d, k in r["stages"])
        stages += " (binary first)" if r["binary_first"] else ""
        lines.append(
            f"| {name} | {stages} | {100 * r['ndcg@10']:.2f} | {100 * r['mrr@10']:.2f} "
            f"| {100 * r['overlap@10']:.1f}% | {r['macs']:,} | {r['xor_bytes']:,} | {r['ms_per_query']:.3f} |"
        )
    return "\n".join(lines)

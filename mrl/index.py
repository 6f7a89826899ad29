"""A FAISS index for Matryoshka embeddings: exact, HNSW / IVF funnel, int8 and binary search.

Built once, saved, loaded and queried; ``pip install 'mrl[faiss]'`` (faiss-cpu) is needed, and
this module imports it only when an index is built or loaded. `mrl.retrieval` / `mrl.quantize` stay
the numpy/torch reference the tests compare this module to.

    from mrl.index import MatryoshkaIndex

    # docs (N, 384), queries (Q, 384): raw or unit float embeddings (numpy, torch or np.memmap)
    exact = MatryoshkaIndex.build(docs, kind="flat", dim=64)  # exact cosine of the 64-dim prefixes
    funnel = MatryoshkaIndex.build(docs, kind="hnsw", dim=64, rerank_dims=[384])
    scores, ids = funnel.search(queries, k=10, shortlist=[200])  # HNSW top 200 at 64 dims -> 10 at 384
    funnel.save("corpus.mrlindex")
    funnel = MatryoshkaIndex.load("corpus.mrlindex")  # float vectors memory-mapped

A search has a **first stage** over the whole corpus, on the unit prefix of width ``dim``
(``prefix(x, dim)`` as in `mrl.losses.prefix`: slice, then re-normalise, so inner products are
cosines), by ``kind``:

- ``flat``: exact inner product (``IndexFlatIP``), 4 * dim bytes per doc.
- ``hnsw``: approximate, a navigable small-world graph (``IndexHNSWFlat``, Malkov & Yashunin 2018):
  ``hnsw_m`` links per node, ``ef_construction`` / ``ef_search`` candidates kept while building /
  searching (more: better recall, slower).
- ``ivf``: approximate, k-means cells (``IndexIVFFlat``): ``nlist`` centroids trained on a corpus
  sample, each query scans the ``nprobe`` nearest cells. With ``nprobe = nlist`` it is exact.
- ``int8``: FAISS's scalar quantiser (``IndexScalarQuantizer``, ``QT_8bit``): per-dimension
  ``[low, low + width]`` from a corpus sample, ``code = floor(255 * clip((x - low) / width, 0, 1))``
  (255 at the top), decoded to the middle of its level, ``low + (code + 0.5) * width / 255``; the
  float query is scored against the decoded docs (asymmetric, like `mrl.retrieval.int8_search`,
  whose codec instead maps a value to the nearest of 256 values spaced ``width / 255`` apart
  from low to high: both are within half a level of the value).
- ``binary``: sign bits (`mrl.quantize.pack_bits`) in an ``IndexBinaryFlat``: exhaustive Hamming
  distance (XOR + popcount), ceil(dim / 8) bytes per doc; scores are ``-distance``.

then optional **re-ranking stages** (the Matryoshka funnel, Kusupati et al. 2022): with
``rerank_dims = [d_2, ..., d_m]`` the first stage keeps ``shortlist[0]`` docs, stage i re-scores the
kept docs with the cosine of their d_i prefixes, read from the stored float vectors, and keeps
``shortlist[i - 1]`` (the last stage keeps ``k``). The index stores the raw float rows up to
``max(rerank_dims)`` (a reference to ``docs`` when they are float32 already, e.g. a memmap, so a
10M-vector corpus is not copied into RAM) and each doc's prefix norm at every re-rank dim, so a
stage costs ``shortlist * d_i`` multiply-adds plus reading that many rows.

`flat_search` is exact search over a corpus streamed in chunks (a memmap bigger than RAM), and
`search_cells` / `FaissFunnel` are the drop-in counterparts of `mrl.retrieval.search` and
`mrl.retrieval.FunnelIndex` that ``eval.py --index faiss`` uses.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mrl.losses import prefix
from mrl.quantize import bytes_per_vector, pack_bits

KINDS = ("flat", "hnsw", "ivf", "int8", "binary")
INSTALL_HINT = "pip install 'mrl[faiss]'"
_FORMAT = 1  # version of the saved layout (meta.json "format")


def import_faiss():
    """The faiss module, or an ImportError whose message is one line naming the extra to install."""
    try:
        import faiss
    except ImportError:
        raise ImportError(f"faiss is not installed: {INSTALL_HINT} (or pip install faiss-cpu)") from None
    return faiss


@contextlib.contextmanager
def _blas_for_batches(faiss, n_queries: int):
    """Let FAISS's brute force score a batch of 3 or more queries with BLAS (one matrix product),
    then restore the setting. faiss-cpu 1.15 ships ``distance_compute_blas_threshold = 128000``,
    which here sends every search to its per-query SIMD loop. Measured on 100k x 384 docs, one
    thread: that loop costs 11.8 ms of CPU per query at any batch size; BLAS costs 28 ms for one
    query, 6.2 ms per query for 5 and 1.4 ms for 50. IVF's assignment of docs to cells while
    building is such a batch too."""
    previous = faiss.cvar.distance_compute_blas_threshold
    if n_queries >= 3:
        faiss.cvar.distance_compute_blas_threshold = min(previous, 20)
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = previous


def _float_rows(x) -> np.ndarray:
    """A (n, d) float32 numpy view of x when possible (torch CPU tensor, numpy array, memmap),
    otherwise a float32 copy."""
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        return x.numpy() if x.dtype == torch.float32 else x.float().numpy()
    x = np.asarray(x)
    return x if x.dtype == np.float32 else x.astype(np.float32)


def unit_prefix(x, dim: int) -> np.ndarray:
    """``prefix(x, dim)`` (slice, re-normalise; `mrl.losses.prefix`) as a contiguous float32 array."""
    rows = torch.from_numpy(np.ascontiguousarray(_float_rows(x)[:, :dim]))
    return np.ascontiguousarray(prefix(rows, dim).numpy())


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class MatryoshkaIndex:
    """One first stage (a FAISS index over the unit ``dim``-prefixes) plus optional re-ranking
    stages from stored float vectors; see the module docstring. Make one with `build` or `load`."""

    def __init__(
        self,
        kind: str,
        dim: int,
        rerank_dims: Sequence[int] = (),
        *,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 128,
        nlist: int | None = None,
        nprobe: int = 16,
    ):
        if kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
        if dim < 1 or any(d < 1 for d in rerank_dims):
            raise ValueError(f"dims must be positive, got dim={dim}, rerank_dims={list(rerank_dims)}")
        self.kind, self.dim, self.rerank_dims = kind, int(dim), [int(d) for d in rerank_dims]
        self.hnsw_m, self.ef_construction, self.ef_search = hnsw_m, ef_construction, ef_search
        self.nlist, self.nprobe = nlist, nprobe
        self.faiss_index = None  # the first stage
        self.vectors: np.ndarray | None = None  # (N, max(rerank_dims)) raw float32 rows
        self.norms: np.ndarray | None = None  # (N, len(rerank_dims)) prefix norms, float32
        self.ntotal = 0
        self.width = 0  # width of the vectors the index was built from

    # ---------------------------------------------------------------------------------------
    # Building
    # ---------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        docs,
        kind: str = "flat",
        dim: int | None = None,
        rerank_dims: Sequence[int] = (),
        *,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 128,
        nlist: int | None = None,
        nprobe: int = 16,
        train_size: int = 100_000,
        chunk_size: int = 65_536,
        seed: int = 0,
    ) -> MatryoshkaIndex:
        """Index docs (N, D): raw or unit float embeddings, numpy / torch / np.memmap.

        The corpus is read ``chunk_size`` rows at a time (prefixed, normalised, added), so a
        memmap never has to fit in memory, except what the index itself holds. ``dim`` defaults
        to D. ivf and int8 are trained on ``train_size`` rows drawn at random (``seed``); ivf's
        ``nlist`` defaults to ``4 sqrt(N)``, capped so that every centroid gets 39 training rows.
        The re-ranking vectors are a reference to docs when they are float32 (no copy).
        """
        faiss = import_faiss()
        docs = _float_rows(docs)  # a view when float32 already (a memmap stays a memmap)
        if docs.ndim != 2:
            raise ValueError(f"docs must be (N, D), got shape {tuple(docs.shape)}")
        n, width = docs.shape
        dim = width if dim is None else dim
        self = cls(
            kind, dim, rerank_dims, hnsw_m=hnsw_m, ef_construction=ef_construction,
            ef_search=ef_search, nlist=nlist, nprobe=nprobe,
        )  # fmt: skip
        bad = [d for d in [dim, *self.rerank_dims] if d > width]
        if bad:
            raise ValueError(f"dims {bad} exceed the docs' width {width}")
        if n == 0:
            raise ValueError("cannot index an empty corpus")
        self.width = width
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
        elif kind == "ivf":
            sample_n = min(train_size, n)
            self.nlist = nlist or max(1, min(int(4 * math.sqrt(n)), sample_n // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
        elif kind == "int8":
            index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        else:  # binary: FAISS counts bits in whole bytes; pack_bits pads the last byte with zeros
            index = faiss.IndexBinaryFlat(8 * bytes_per_vector(dim, "binary"))
        with _blas_for_batches(faiss, min(n, chunk_size)):  # k-means, IVF's assignment of docs to cells
            if kind in ("ivf", "int8"):
                rng = np.random.default_rng(seed)
                rows = np.sort(rng.choice(n, size=min(train_size, n), replace=False))  # sorted: memmap reads
                index.train(unit_prefix(docs[rows], dim))
            for rows in _chunks(n, chunk_size):
                unit = unit_prefix(docs[rows], dim)  # (c, dim)
                index.add(pack_bits(torch.from_numpy(unit), "ubinary").numpy() if kind == "binary" else unit)
        self.faiss_index = index
        self.ntotal = n
        if self.rerank_dims:
            self.vectors = docs[:, : max(self.rerank_dims)]
            self.norms = np.empty((n, len(self.rerank_dims)), dtype=np.float32)
            for rows in _chunks(n, chunk_size):
                block = docs[rows]
                for j, d in enumerate(self.rerank_dims):
                    self.norms[rows, j] = np.maximum(np.linalg.norm(block[:, :d], axis=1), 1e-12)
        return self

    # ---------------------------------------------------------------------------------------
    # Searching
    # ---------------------------------------------------------------------------------------

    def search(
        self,
        queries,
        k: int,
        shortlist: Sequence[int] | None = None,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
        query_batch: int = 64,
    ) -> tuple[Tensor, Tensor]:
        """queries (Q, >= the largest dim used), raw or unit -> scores, ids: (Q, k) float32, int64.

        ``shortlist``: docs kept by the first stage and each re-ranking stage but the last, one per
        entry of ``rerank_dims`` (default: 10 k each). ``ef_search`` / ``nprobe`` override the
        index's defaults for this call (HNSW searches with at least the first stage's shortlist).
        Scores are cosines of the last stage (binary without re-ranking: minus the Hamming
        distance). When fewer than k docs are found (an approximate stage that reached fewer),
        the missing entries have id -1 and score -inf.
        """
        if self.faiss_index is None:
            raise ValueError("the index is empty: use MatryoshkaIndex.build or MatryoshkaIndex.load")
        faiss = import_faiss()
        q = _float_rows(queries)
        need = max([self.dim, *self.rerank_dims])
        if q.ndim != 2 or q.shape[1] < need:
            raise ValueError(f"queries have shape {tuple(q.shape)}; this index needs (Q, >= {need})")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if shortlist is None:
            shortlist = [10 * k] * len(self.rerank_dims)
        shortlist = [int(s) for s in shortlist]
        if len(shortlist) != len(self.rerank_dims):
            n_stages = len(self.rerank_dims)
            raise ValueError(f"{n_stages} re-ranking stages need {n_stages} shortlists, got {shortlist}")
        keeps = [*shortlist, k]  # docs kept after the first stage and after every re-ranking stage
        if any(a < b for a, b in zip(keeps, keeps[1:])):
            raise ValueError(
                f"shortlists {shortlist} must each keep at least what the next stage keeps (k={k})"
            )
        keeps = [min(x, self.ntotal) for x in keeps]

        unit = unit_prefix(q, self.dim)
        first = keeps[0]
        if self.kind == "binary":
            dist, ids = self.faiss_index.search(pack_bits(torch.from_numpy(unit), "ubinary").numpy(), first)
            scores = -dist.astype(np.float32)
        elif self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(ef_search or self.ef_search, first))
            scores, ids = self.faiss_index.search(unit, first, params=params)
        elif self.kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=min(nprobe or self.nprobe, self.nlist))
            scores, ids = self.faiss_index.search(unit, first, params=params)
        else:
            with _blas_for_batches(faiss, unit.shape[0]):
                scores, ids = self.faiss_index.search(unit, first)
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        for j, (dim, keep) in enumerate(zip(self.rerank_dims, keeps[1:])):
            scores, ids = self._rerank(q, ids, j, dim, keep, query_batch)
        if scores.shape[1] < k:  # a corpus smaller than k
            pad = k - scores.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return torch.from_numpy(np.ascontiguousarray(scores)), torch.from_numpy(ids.astype(np.int64))

    def _rerank(self, q: np.ndarray, ids: np.ndarray, stage: int, dim: int, keep: int, query_batch: int):
        """Cosines at ``dim`` of queries q (Q, >= dim) with their candidates ids (Q, K) from the
        stored vectors; keep the best ``keep`` (stable order on ties). -1 ids score -inf."""
        unit = unit_prefix(q, dim)  # (Q, dim)
        out_scores = np.empty((ids.shape[0], keep), dtype=np.float32)
        out_ids = np.empty((ids.shape[0], keep), dtype=np.int64)
        for rows in _chunks(ids.shape[0], query_batch):
            cand = ids[rows]  # (b, K)
            valid = cand >= 0
            safe = np.where(valid, cand, 0)
            vec = self.vectors[safe.ravel(), :dim].reshape(*cand.shape, dim)  # (b, K, dim) raw rows
            cos = np.matmul(vec, unit[rows, :, None])[..., 0] / self.norms[safe, stage]  # (b, K)
            cos = np.where(valid, cos, -np.inf).astype(np.float32)
            order = np.argsort(-cos, axis=1, kind="stable")[:, :keep]
            out_scores[rows] = np.take_along_axis(cos, order, 1)
            out_ids[rows] = np.take_along_axis(cand, order, 1)
        return out_scores, out_ids

    # ---------------------------------------------------------------------------------------
    # Sizes, saving, loading
    # ---------------------------------------------------------------------------------------

    def bytes_per_doc(self) -> dict[str, float]:
        """Storage per doc: ``scan``, the first stage's index (codes, plus the graph's links for
        hnsw and the stored 8-byte id for ivf), and ``rerank``, the float rows and norms that
        re-ranking reads for a few docs per query (these can stay on disk, memory-mapped)."""
        if self.kind in ("flat", "int8", "binary"):
            scan = float(bytes_per_vector(self.dim, {"flat": "float32"}.get(self.kind, self.kind)))
        elif self.kind == "hnsw":  # vectors + 4-byte neighbour ids of every level's link lists
            links = self.faiss_index.hnsw.neighbors.size() * 4
            scan = 4 * self.dim + links / max(self.ntotal, 1)
        else:
            scan = float(4 * self.dim + 8)
        rerank = 4 * max(self.rerank_dims) + 4 * len(self.rerank_dims) if self.rerank_dims else 0
        return {"scan": scan, "rerank": float(rerank)}

    def meta(self) -> dict:
        return {
            "format": _FORMAT,
            "kind": self.kind,
            "dim": self.dim,
            "rerank_dims": self.rerank_dims,
            "ntotal": self.ntotal,
            "width": self.width,
            "hnsw_m": self.hnsw_m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
        }

    def save(self, folder: str | Path, chunk_size: int = 65_536) -> Path:
        """Write ``folder/``: meta.json, index.faiss (the first stage) and, with re-ranking,
        vectors.npy (N, max(rerank_dims)) and norms.npy. Written to a temporary folder beside it
        and renamed into place; an existing non-empty folder is never overwritten."""
        faiss = import_faiss()
        folder = Path(folder)
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise FileExistsError(f"{folder} exists and is not empty; choose another path")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            if self.kind == "binary":
                faiss.write_index_binary(self.faiss_index, str(tmp / "index.faiss"))
            else:
                faiss.write_index(self.faiss_index, str(tmp / "index.faiss"))
            if self.rerank_dims:
                out = np.lib.format.open_memmap(tmp / "vectors.npy", "w+", np.float32, self.vectors.shape)
                for rows in _chunks(self.ntotal, chunk_size):  # streamed: the rows may be a memmap
                    out[rows] = self.vectors[rows]
                out.flush()
                del out
                np.save(tmp / "norms.npy", self.norms)
            (tmp / "meta.json").write_text(json.dumps(self.meta(), indent=2) + "\n", encoding="utf-8")
            if folder.exists():
                folder.rmdir()  # empty (checked above)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> MatryoshkaIndex:
        """Read an index written by `save`; the float re-ranking vectors are memory-mapped unless
        ``mmap=False`` (a search reads only its candidates' rows)."""
        faiss = import_faiss()
        folder = Path(folder)
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path} does not exist: not a folder written by MatryoshkaIndex.save"
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{meta_path}: not valid JSON ({error.msg})") from None
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{meta_path}: format {meta.get('format')!r}, this version reads {_FORMAT}")
        self = cls(
            meta["kind"], meta["dim"], meta["rerank_dims"], hnsw_m=meta["hnsw_m"],
            ef_construction=meta["ef_construction"], ef_search=meta["ef_search"], nlist=meta["nlist"],
            nprobe=meta["nprobe"],
        )  # fmt: skip
        self.ntotal, self.width = meta["ntotal"], meta["width"]
        read = faiss.read_index_binary if self.kind == "binary" else faiss.read_index
        self.faiss_index = read(str(folder / "index.faiss"))
        if self.faiss_index.ntotal != self.ntotal:
            held = self.faiss_index.ntotal
            raise ValueError(f"{folder}/index.faiss holds {held} docs, meta.json says {self.ntotal}")
        if self.rerank_dims:
            self.vectors = np.load(folder / "vectors.npy", mmap_mode="r" if mmap else None)
            self.norms = np.load(folder / "norms.npy")
            if self.vectors.shape[0] != self.ntotal or self.norms.shape[0] != self.ntotal:
                raise ValueError(f"{folder}: vectors.npy / norms.npy do not have {self.ntotal} rows")
        return self


# --------------------------------------------------------------------------------------------
# Exact search over a corpus streamed from disk
# --------------------------------------------------------------------------------------------


def flat_search(
    queries, docs, k: int, dim: int | None = None, chunk_size: int = 262_144, unit_rows: bool = False
):
    """Exact top-k cosine of the ``dim``-prefixes over docs (N, D) read ``chunk_size`` rows at a
    time (a memmap bigger than RAM never has to be in memory): FAISS brute force on each chunk,
    merged in a running heap. -> scores (Q, k) float32, ids (Q, k) int64 (torch).

    ``unit_rows``: the docs' ``dim``-prefixes are unit vectors already (a corpus stored
    normalised, searched at full width), so the chunks are scored as stored instead of being
    re-normalised on every search (which costs more than the search for a few queries).
    """
    faiss = import_faiss()
    docs = _float_rows(docs)
    dim = docs.shape[1] if dim is None else dim
    unit = unit_prefix(queries, dim)
    heap = faiss.ResultHeap(unit.shape[0], min(k, docs.shape[0]), keep_max=True)
    for rows in _chunks(docs.shape[0], chunk_size):
        block = np.ascontiguousarray(docs[rows, :dim]) if unit_rows else unit_prefix(docs[rows], dim)
        with _blas_for_batches(faiss, unit.shape[0]):
            scores, ids = faiss.knn(unit, block, min(k, block.shape[0]), faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, ids + rows.start)
    heap.finalize()
    return torch.from_numpy(heap.D.copy()), torch.from_numpy(heap.I.astype(np.int64))


# --------------------------------------------------------------------------------------------
# The counterparts of mrl.retrieval's search functions (eval.py --index faiss)
# --------------------------------------------------------------------------------------------


def search_cells(
    queries: Tensor, docs: Tensor, dim: int, precision: str, k: int, rescore_k: int | None = None
) -> Tensor:
    """`mrl.retrieval.search` through FAISS: top-k doc indices (Q, k) at one dim and precision.

    float32: exact (flat); int8/uint8: FAISS's 8-bit scalar quantiser trained on the corpus
    prefixes (the two storage conventions are the same 256 levels); binary/ubinary: Hamming in
    a binary index, then with ``rescore_k`` the top ``rescore_k`` re-ranked by the float query
    against the docs' signs, as `mrl.retrieval.search` does (which re-ranker the float vectors
    give: see `FaissFunnel` with ``binary_first``).
    """
    from mrl.retrieval import rescore

    k = min(k, docs.shape[0])
    if precision == "float32":
        return MatryoshkaIndex.build(docs, "flat", dim).search(queries, k)[1]
    if precision in ("int8", "uint8"):
        return MatryoshkaIndex.build(docs, "int8", dim, train_size=docs.shape[0]).search(queries, k)[1]
    if precision in ("binary", "ubinary"):
        index = MatryoshkaIndex.build(docs, "binary", dim)
        shortlist = index.search(queries, min(rescore_k or k, docs.shape[0]))[1]
        if not rescore_k:
            return shortlist
        doc_bits = pack_bits(torch.from_numpy(unit_prefix(docs, dim)), "ubinary")
        return rescore(torch.from_numpy(unit_prefix(queries, dim)), shortlist, doc_bits)[1]
    raise ValueError(f"unknown precision {precision!r}")


class FaissFunnel:
    """`mrl.retrieval.FunnelIndex`'s interface (stages, search, cost_per_query, bytes_per_doc)
    on a `MatryoshkaIndex`: stage 1 is HNSW on the d_1 prefixes (binary Hamming with
    ``binary_first``; exact flat when it is the only stage), later stages re-rank from the stored
    float vectors. ``macs`` of an HNSW stage are measured: distance computations of the last
    search (FAISS's counters) times d_1, per query."""

    def __init__(self, docs: Tensor, stages: Sequence[tuple[int, int]], binary_first: bool = False, **params):
        if not stages:
            raise ValueError("a funnel needs at least one (dim, k) stage")
        self.stages = [(int(d), int(k)) for d, k in stages]
        self.binary_first = binary_first
        first_dim = self.stages[0][0]
        kind = "binary" if binary_first else ("hnsw" if len(self.stages) > 1 else "flat")
        self.index = MatryoshkaIndex.build(docs, kind, first_dim, [d for d, _ in self.stages[1:]], **params)
        self._distances_per_query = None

    def search(self, queries: Tensor) -> tuple[Tensor, Tensor]:
        faiss = import_faiss()
        faiss.cvar.hnsw_stats.reset()
        keeps = [k for _, k in self.stages]
        result = self.index.search(queries, keeps[-1], keeps[:-1])
        if self.index.kind == "hnsw":
            self._distances_per_query = faiss.cvar.hnsw_stats.ndis / max(queries.shape[0], 1)
        return result

    def cost_per_query(self) -> dict[str, int]:
        n, (first_dim, first_keep) = self.index.ntotal, self.stages[0]
        if self.index.kind == "binary":
            macs, xor_bytes = 0, n * bytes_per_vector(first_dim, "binary")
        elif self.index.kind == "hnsw":
            macs, xor_bytes = round((self._distances_per_query or 0) * first_dim), 0
        else:
            macs, xor_bytes = n * first_dim, 0
        kept = min(first_keep, n)
        for dim, keep in self.stages[1:]:
            macs += kept * dim
            kept = min(keep, kept)
        return {"macs": macs, "xor_bytes": xor_bytes}

    def bytes_per_doc(self) -> dict[str, float]:
        return self.index.bytes_per_doc()

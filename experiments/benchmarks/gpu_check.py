"""GPU check: real Matryoshka MNRL training steps of mrl's train.py on one GPU, no weights needed.

    python experiments/benchmarks/gpu_check.py --out experiments/results/$(date +%F)_gpu_check.md
    python experiments/benchmarks/gpu_check.py --tiny      # a CPU smoke test of this script (seconds)

Builds two randomly initialised encoders from a config (what matters for speed is the shape, not
the weights): an mpnet-base-sized MPNet (768 wide, 12 layers, 12 heads, FFN 3072) and a
MiniLM-L6-sized BERT (384 wide, 6 layers, 12 heads, FFN 1536), each with a WordPiece vocabulary
of placeholder words, and a synthetic (anchor, positive) CSV whose texts have lengths drawn like
short NLI sentences (log-normal, median ~14 tokens, capped at 128). Each row runs `train.py`
in a fresh process for --steps steps of Matryoshka MNRL (random batches) with fp32 / bf16 / fp16
autocast, with and without `--compile`, padded (`--padding-free off`) and packed (`pack`), and
reads its metrics.jsonl: real tokens/s and step time (medians after the warm-up steps, longer
for compiled rows), the padding ratio (computed / real tokens), peak GPU memory, and the model
FLOPs utilisation: 6 x non-embedding parameters + 12 x layers x width x mean length FLOPs per real
token (forward + backward, attention included), divided by the device's dense peak for that
precision (fp32 rows: the non-tensor-core fp32 peak, since train.py leaves TF32 off). Peaks are
known for H100/H200/A100/L40S/A10G/L4/T4 by name; `--peak-tflops FP32 HALF` gives others.
Rows stop being started once --budget-s is spent (default 420 s, so it fits in 8 minutes).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Dense peak TFLOP/s: (fp32 without tensor cores, bf16/fp16 tensor cores), SXM where it matters.
PEAKS = {
    "H200": (66.9, 989.4),
    "H100": (66.9, 989.4),
    "A100": (19.5, 312.0),
    "L40S": (91.6, 362.1),
    "A10G": (31.2, 125.0),
    "L4": (30.3, 121.0),
    "T4": (8.1, 65.0),
}

MODELS = {
    # name: (model_type, hidden, layers, heads, ffn, vocab, batch, dims)
    "mpnet-base-sized": ("mpnet", 768, 12, 12, 3072, 30527, 128, [768, 512, 256, 128, 64]),
    "minilm-sized": ("bert", 384, 6, 12, 1536, 30522, 256, [384, 256, 128, 64, 32]),
}
TINY = {"tiny-bert": ("bert", 32, 2, 4, 64, 200, 8, [32, 16])}


def build_model(folder: Path, model_type: str, hidden: int, layers: int, heads: int, ffn: int, vocab: int):
    """A random encoder + WordPiece tokenizer whose vocabulary is [PAD] [UNK] [CLS] [SEP] [MASK] w5 w6 ..."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer, MPNetConfig, MPNetModel

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(5, vocab)]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), model_max_length=512)
    shape = dict(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    if model_type == "mpnet":
        model = MPNetModel(MPNetConfig(**shape, max_position_embeddings=514))
    else:
        model = BertModel(BertConfig(**shape, max_position_embeddings=512))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    return non_embedding


def write_pairs(path: Path, n: int, vocab: int, seed: int = 0) -> float:
    """n (anchor, positive) rows of placeholder words; returns the mean token count (with [CLS]/[SEP])."""
    import random

    rng = random.Random(seed)
    lengths = []
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["anchor", "positive"])
        for _ in range(n):
            row = []
            for _ in range(2):
                words = min(126, max(1, round(math.exp(rng.gauss(math.log(12), 0.5)))))
                lengths.append(words + 2)
                row.append(" ".join(f"w{rng.randrange(5, vocab)}" for _ in range(words)))
            writer.writerow(row)
    return sum(lengths) / len(lengths)


def run_row(
    args, folder: Path, data: Path, batch: int, dims: list[int], flags: list[str], warmup: int
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        command = [
            sys.executable, str(REPO / "train.py"), "--model", str(folder), "--train-data", str(data),
            "--loss", "mnrl", "--dims", *map(str, dims), "--batch-size", str(batch),
            "--max-steps", str(args.steps), "--log-every", "1", "--eval-data", "--no-group-by-length",
            "--max-seq-length", "128", "--device", args.device, "--output-dir", str(run), *flags,
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            return {"error": done.stderr.strip().splitlines()[-1][:200] if done.stderr.strip() else "failed"}
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "perf/tokens_per_s" in r and r["step"] > warmup] or [
        r for r in records if "perf/tokens_per_s" in r
    ]
    return {
        "tokens_per_s": statistics.median(r["perf/tokens_per_s"] for r in steps),
        "step_ms": 1000 * statistics.median(batch / r["perf/samples_per_s"] for r in steps),
        "padding_ratio": statistics.median(r.get("perf/padding_ratio", float("nan")) for r in steps),
        "max_mem_gb": max(r["perf/max_mem_gb"] for r in records if "perf/max_mem_gb" in r),
        "wall_s": wall,
    }


def device_peaks(args) -> tuple[str, tuple[float, float] | None]:
    import torch

    if args.peak_tflops:
        return "given", tuple(args.peak_tflops)
    if args.device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, peaks in PEAKS.items():
            if key in name:
                return name, peaks
        return name, None
    return "cpu", None


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: a tiny BERT, 2 rows, 3 steps")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    parser.add_argument("--steps", type=int, default=None, help="steps per row (default 25; 3 with --tiny)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no row after this many seconds")
    parser.add_argument("--models", nargs="*", help="subset of: " + ", ".join(MODELS))
    parser.add_argument("--peak-tflops", type=float, nargs=2, metavar=("FP32", "HALF"))
    parser.add_argument("--out", help="also write the table (Markdown) here")
    args = parser.parse_args(argv)
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    args.steps = args.steps or (3 if args.tiny else 25)

    import torch

    models = TINY if args.tiny else {k: v for k, v in MODELS.items() if not args.models or k in args.models}
    if args.tiny:
        rows = [("fp32", False, "pack"), ("bf16", False, "off")]
    else:  # (precision, compile, padding-free)
        rows = [
            ("fp32", False, "off"), ("fp32", False, "pack"), ("bf16", False, "off"), ("bf16", False, "pack"),
            ("fp16", False, "pack"), ("bf16", True, "off"), ("bf16", True, "pack"),
        ]  # fmt: skip
    device_name, peaks = device_peaks(args)
    start = time.perf_counter()
    lines = [
        f"device: {device_name}; torch {torch.__version__}; {args.steps} steps per row; Matryoshka MNRL, "
        "random batches, synthetic pairs (log-normal lengths, median ~14 tokens)",
        "",
        "| model | batch | precision | compile | padding-free | real tokens/s | step ms | padding ratio | "
        "peak mem GB | MFU | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, (kind, hidden, layers, heads, ffn, vocab, batch, dims) in models.items():
            folder = Path(tmp) / name
            non_embedding = build_model(folder, kind, hidden, layers, heads, ffn, vocab)
            data = Path(tmp) / f"{name}.csv"
            mean_len = write_pairs(data, batch * (args.steps + 2), vocab)
            flops_per_token = 6 * non_embedding + 12 * layers * hidden * mean_len
            for precision, compiled, padding_free in rows:
                label = f"| {name} | {batch} | {precision} | {'yes' if compiled else 'no'} | {padding_free} |"
                if time.perf_counter() - start > args.budget_s:
                    lines.append(f"{label} skipped (time budget) |||||||")
                    continue
                flags = ["--precision", precision, "--padding-free", padding_free]
                flags += ["--compile"] if compiled else []
                warmup = max(2, args.steps // 3) if compiled else min(3, args.steps - 1)
                r = run_row(args, folder, data, batch, dims, flags, warmup)
                if "error" in r:
                    lines.append(f"{label} error: {r['error']} |||||||")
                else:
                    peak = peaks[0 if precision == "fp32" else 1] if peaks else None
                    mfu = (
                        f"{100 * r['tokens_per_s'] * flops_per_token / (peak * 1e12):.1f}%" if peak else "n/a"
                    )
                    lines.append(
                        f"{label} {r['tokens_per_s']:.0f} | {r['step_ms']:.1f} | {r['padding_ratio']:.2f} | "
                        f"{r['max_mem_gb']:.2f} | {mfu} | {r['wall_s']:.0f} |"
                    )
                print(lines[-1], file=sys.stderr, flush=True)
    lines.append(f"\ntotal {time.perf_counter() - start:.0f} s; load {os.getloadavg()[0]:.1f}")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n", encoding="utf-8")
    return table


if __name__ == "__main__":
    main()

"""Encode time per depth of a model with exit heads, with and without the heads (J's README).

    OMP_NUM_THREADS=2 python experiments/2026-12-01_stsb_exit_heads/encode_time.py \
        /tmp/mrl-exp-j/2d-all-distill-kl-data-heads-detached-s12/model --data ../shared/data

Encodes the 2,758 sentences of STS-B test at every depth, with the heads and with them removed
(the same weights otherwise), three times each after one warm-up pass, and prints the median
wall seconds and the ratio to the full depth. A head is one D x D matrix product per text.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    import torch

    from mrl.model import Encoder

    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with open(Path(args.data) / "stsb" / "en-test.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]
    encoder = Encoder(args.model)
    heads = encoder.exit_heads

    def seconds(layers: int, with_heads: bool) -> float:
        encoder.exit_heads = heads if with_heads else None
        encoder.encode(texts[:256], layers=layers)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            encoder.encode(texts, layers=layers)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    print(f"{len(texts)} texts, {torch.get_num_threads()} threads, model {args.model}\n")
    print("| layers | s without heads | s with heads | heads' cost | vs full depth |")
    print("|---|---|---|---|---|")
    full = seconds(encoder.num_layers, False)
    for layers in range(encoder.num_layers, 0, -1):
        plain = full if layers == encoder.num_layers else seconds(layers, False)
        headed = seconds(layers, True)
        cost = 100 * (headed / plain - 1)
        print(f"| {layers} | {plain:.2f} | {headed:.2f} | {cost:+.1f}% | {headed / full:.2f} |")


if __name__ == "__main__":
    main()

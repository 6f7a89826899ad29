"""The GPU check script runs end to end in its tiny CPU mode (real train.py steps, its table)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_mode_trains_every_row_and_writes_the_table(gpu_check, tmp_path):
    out = tmp_path / "table.md"
    table = gpu_check.main(["--tiny", "--out", str(out)])
    assert out.read_text(encoding="utf-8") == table + "\n"
    rows = [line for line in table.splitlines() if line.startswith("| tiny-bert")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert "error" not in row and "skipped" not in row, row
        tokens_per_s, step_ms, padding_ratio, mem = (float(c) for c in cells[5:9])
        assert tokens_per_s > 0 and step_ms > 0 and mem > 0
        assert padding_ratio >= 1.0
        assert cells[9] == "n/a"  # no known peak for a CPU


def test_model_flops_and_peaks_are_known_for_the_check_gpus(gpu_check, tmp_path):
    """The MFU numerator counts the encoder's non-embedding weights: brute-force count for MiniLM size."""
    kind, hidden, layers, heads, ffn, vocab, _, _ = gpu_check.MODELS["minilm-sized"]
    n = gpu_check.build_model(tmp_path / "m", kind, hidden, layers, heads, 4 * hidden, 100)
    per_layer = 4 * (hidden * hidden + hidden) + 2 * hidden * ffn + ffn + hidden + 2 * 2 * hidden
    pooler = hidden * hidden + hidden
    assert n == layers * per_layer + pooler
    assert gpu_check.PEAKS["H200"] == (66.9, 989.4)

"""experiments/summarize.py: tables from recorded eval JSON, checked against hand-computed values."""

import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "summarize", Path(__file__).resolve().parents[1] / "experiments" / "summarize.py"
)
summarize = importlib.util.module_from_spec(spec)
spec.loader.exec_module(summarize)


def write_result(folder: Path, name: str, spearman: dict, ndcg: dict | None = None, wall: int = 100):
    """One eval.py-shaped JSON: spearman/ndcg are {(layer, dim): value}."""
    sts_records = [{"layer": l, "dim": d, "spearman": v} for (l, d), v in spearman.items()]
    # eval.py --precisions scores STS at int8/binary too: those rows must not leak into the tables
    sts_records += [{"layer": l, "dim": d, "precision": "binary", "spearman": -7.0} for l, d in spearman]
    result = {"sets": {"en-test": {"records": sts_records}}, "train_wall_s": wall}
    if ndcg is not None:
        records = [{"layer": l, "dim": d, "precision": "float32", "ndcg@10": v} for (l, d), v in ndcg.items()]
        # a binary row must not leak into the float32 table
        records.append({"layer": 2, "dim": 8, "precision": "binary", "rescore": 10, "ndcg@10": 0.99})
        result["retrieval"] = {"scifact": {"records": records}}
    (folder / "results").mkdir(parents=True, exist_ok=True)
    (folder / "results" / f"{name}.json").write_text(json.dumps(result))


def test_tables_mean_std_retention_and_ndcg(tmp_path):
    # seeds 12 and 13: d=8 values 80 and 84 -> mean 82, sample std sqrt(8) = 2.83
    write_result(
        tmp_path,
        "mrl-s12",
        {(2, 8): 80.0, (2, 4): 60.0, (1, 8): 50.0, (1, 4): 40.0},
        {(2, 8): 0.5, (2, 4): 0.25, (1, 8): 0.2, (1, 4): 0.1},
    )
    write_result(
        tmp_path,
        "mrl-s13",
        {(2, 8): 84.0, (2, 4): 70.0, (1, 8): 52.0, (1, 4): 42.0},
        {(2, 8): 0.7, (2, 4): 0.35, (1, 8): 0.2, (1, 4): 0.1},
        wall=120,
    )
    text = summarize.tables(summarize.load(tmp_path))
    assert "| mrl | 12,13 | 82.00 ± 2.83 | 65.00 ± 7.07 |" in text
    # retention: mean of 60/80 and 70/84 = (0.75 + 0.8333) / 2
    assert "| mrl | 100.0% | 79.2% |" in text
    assert "| 1 | 51.0 | 41.0 |" in text  # layer 1 means
    # nDCG x100, float32 rows only: (50, 70) and (25, 35)
    assert "| mrl | 12,13 | 60.00 ± 14.14 | 30.00 ± 7.07 |" in text
    assert "| mrl | 110.00 ± 14.14 |" in text


def test_compare_adds_baseline_rows_and_rejects_unknown_variants(tmp_path):
    write_result(tmp_path / "a", "base-s12", {(1, 8): 70.0})
    write_result(tmp_path / "c", "ablation-s12", {(1, 8): 71.0})
    runs = summarize.load(tmp_path / "c")
    summarize.add_compared(runs, f"{tmp_path / 'a'}:base")
    assert "| base [a] | 12 | 70.00 |" in summarize.tables(runs)
    with pytest.raises(SystemExit, match="no results/missing"):
        summarize.add_compared(runs, f"{tmp_path / 'a'}:missing")


def test_models_of_different_depths_use_their_own_last_layer(tmp_path):
    # A 3-layer 2D model next to a separately trained 1-layer model (its only layer is its last).
    write_result(tmp_path, "twod-s12", {(3, 8): 80.0, (3, 4): 70.0, (1, 8): 50.0, (1, 4): 40.0})
    write_result(tmp_path, "twod-s13", {(3, 8): 82.0, (3, 4): 72.0, (1, 8): 54.0, (1, 4): 44.0})
    write_result(tmp_path, "layers1-alone-s12", {(1, 8): 60.0, (1, 4): 30.0})
    text = summarize.tables(summarize.load(tmp_path))
    assert "at the full depth (each model's last layer)" in text
    assert "| layers1-alone | 12 | 60.00 | 30.00 |" in text
    assert "| twod | 12,13 | 81.00 ± 1.41 | 71.00 ± 1.41 |" in text
    # by depth at the full dim: 3 layers, then 1 layer (std of 50 and 54 = 2.83)
    assert "| twod | 12,13 | 81.00 ± 1.41 | 52.00 ± 2.83 |" in text
    assert "| layers1-alone | 12 |  | 60.00 |" in text
    assert "| layers1-alone | 100.0% | 50.0% |" in text

"""L's table: STS-B test Spearman and SciFact nDCG@10 (x100) at full depth, per variant, mean ±
std over the seeds present, against F's standard and Matryoshka MNRL rows (this code, fp32).

    python experiments/2026-12-08_nli_gte_hardness/table.py
"""

import json
import statistics
from pathlib import Path

here = Path(__file__).resolve().parent
F = here.parent / "2026-11-30_nli_distill" / "results"
SEEDS = (12, 13, 14)
DIMS = (384, 64, 16)
ROWS = [
    ("standard MNRL (F)", F, "standard"),
    ("Matryoshka MNRL (F)", F, "matryoshka"),
    ("GTE, 4 directions", here / "results", "gte"),
    ("GTE, 4 directions, Matryoshka", here / "results", "gte-matryoshka"),
    ("MNRL + hardness (all, alpha 9)", here / "results", "hardness"),
    ("MNRL + hardness, Matryoshka", here / "results", "hardness-matryoshka"),
]


def scores(path: Path) -> dict[str, float]:
    """{"sts_d384": ..., "ndcg_d384": ...} at the model's last layer (6)."""
    result = json.loads(path.read_text())
    out = {}
    for r in result["sets"]["en-test"]["records"]:
        if r["layer"] == 6 and r.get("precision", "float32") == "float32":
            out[f"sts_d{r['dim']}"] = r["spearman"]
    for r in result["retrieval"]["scifact"]["records"]:
        if r["layer"] == 6 and r["precision"] == "float32":
            out[f"ndcg_d{r['dim']}"] = 100 * r["ndcg@10"]
    return out


def cell(values: list[float]) -> str:
    if not values:
        return ""
    return f"{statistics.mean(values):.2f}" + (
        f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    )


def main() -> None:
    keys = [f"sts_d{d}" for d in DIMS] + [f"ndcg_d{d}" for d in DIMS]
    print(
        "| variant | "
        + " | ".join(f"STS-B d={d}" for d in DIMS)
        + " | "
        + " | ".join(f"SciFact d={d}" for d in DIMS)
        + " | seeds |"
    )
    print("|---|" + "---|" * (len(keys) + 1))
    for label, folder, name in ROWS:
        runs = {s: scores(p) for s in SEEDS if (p := folder / f"{name}-s{s}.json").is_file()}
        if runs:
            cells = [cell([r[k] for r in runs.values()]) for k in keys]
            print(f"| {label} | " + " | ".join(cells) + f" | {' '.join(map(str, runs))} |")
    # Seed 12 alone, where the new variants have one seed: the like-for-like comparison.
    print("\nSeed 12 only:\n")
    print(
        "| variant | "
        + " | ".join(f"STS-B d={d}" for d in DIMS)
        + " | "
        + " | ".join(f"SciFact d={d}" for d in DIMS)
        + " |"
    )
    print("|---|" + "---|" * len(keys))
    for label, folder, name in ROWS:
        path = folder / f"{name}-s12.json"
        if path.is_file():
            r = scores(path)
            print(f"| {label} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + " |")


if __name__ == "__main__":
    main()

"""F's out-of-domain table from results/ood/<run>.json (ood.sh: eval.py --json on SICK and MSRP).

    python experiments/2026-11-30_nli_distill/ood_table.py

Spearman x100, full depth, at 384 / 128 / 64 / 32 / 16 dims, mean +- sample std over the seeds of
each variant: SICK relatedness (train.csv, 4,500 pairs, and dev.csv, 500 pairs) and MSRP test
(1,725 pairs; Spearman of the cosine with the 0/1 paraphrase label, a monotone function of the ROC
AUC). None of these sets is trained on in F's recipes. Nothing is computed that is not in the
JSON files.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
DIMS = [384, 128, 64, 32, 16]
SETS = [("sick", "train", "SICK train"), ("sick", "dev", "SICK dev"), ("msrp", "test", "MSRP test")]


def main() -> None:
    runs: dict = defaultdict(lambda: defaultdict(list))  # {(set, variant): {dim: [values]}}
    for path in sorted((HERE / "results" / "ood").glob("*.json")):
        variant = re.fullmatch(r"(.+)-s\d+", path.stem)[1]
        for source, content in json.loads(path.read_text()).items():
            for name, scored in content["sets"].items():
                for r in scored["records"]:
                    runs[(source, name, variant)][r["dim"]].append(r["spearman"])
    for source, name, title in SETS:
        print(f"\n{title}: Spearman x100, mean ± std over seeds\n")
        print("| variant | seeds | " + " | ".join(f"d={d}" for d in DIMS) + " |")
        print("|---|---|" + "---|" * len(DIMS))
        for (src, set_name, variant), cells in sorted(runs.items()):
            if (src, set_name) != (source, name):
                continue
            row = []
            for dim in DIMS:
                values = cells.get(dim, [])
                spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
                row.append(f"{statistics.mean(values):.2f}{spread}" if values else "")
            n = max(len(v) for v in cells.values())
            print(f"| {variant} | {n} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

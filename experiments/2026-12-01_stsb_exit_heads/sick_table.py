"""J's out-of-domain table from results/sick/<run>.json (eval.py --json of sick.sh).

    python experiments/2026-12-01_stsb_exit_heads/sick_table.py

SICK relatedness Spearman x100 (train.csv, 4,500 pairs, and dev.csv, 500 pairs, never trained on
here), at each cut depth (6 / 4 / 2 layers) and 384 / 64 / 16 dims, mean +- sample std over the
seeds of each variant. A separately trained k-layer model is read at its own depth k. Nothing
is computed that is not in the JSON files.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
CELLS = [(6, 384), (6, 64), (6, 16), (4, 384), (4, 64), (4, 16), (2, 384), (2, 64), (2, 16)]


def main() -> None:
    runs: dict = defaultdict(lambda: defaultdict(list))  # {(set, variant): {(layer, dim): [values]}}
    for path in sorted((HERE / "results" / "sick").glob("*.json")):
        variant = re.fullmatch(r"(.+)-s\d+", path.stem)[1].replace("E-", "E: ")
        for name, content in json.loads(path.read_text())["sets"].items():
            for r in content["records"]:
                runs[(name, variant)][(r["layer"], r["dim"])].append(r["spearman"])
    for set_name in ("train", "dev"):
        print(f"\nSICK {set_name}: Spearman x100, mean ± std over seeds\n")
        print("| variant | seeds | " + " | ".join(f"{l}L d={d}" for l, d in CELLS) + " |")
        print("|---|---|" + "---|" * len(CELLS))
        for (name, variant), cells in sorted(runs.items()):
            if name != set_name:
                continue
            n = max(len(v) for v in cells.values())
            row = []
            for cell in CELLS:
                own = re.search(r"layers(\d+)-alone", variant)
                # A separate k-layer model is read at its own depth only (not at cuts of it).
                values = cells.get(cell, []) if not own or cell[0] == int(own[1]) else []
                spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
                row.append(f"{statistics.mean(values):.2f}{spread}" if values else "")
            print(f"| {variant} | {n} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

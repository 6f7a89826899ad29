"""Tables of this experiment from results/<variant>-s<seed>.json (eval.py --json output).

    python experiments/2026-11-30_random_batches_ood/table.py

Per evaluation set (STS-B test, SICK train, SICK dev, and the SICK mean of the two): Spearman x100
at every dim for every run, the mean +- sample std over seeds per variant, and the mean of the
per-seed differences random - grouped with the number of seeds where random is ahead. Nothing is
computed that is not in the JSON files.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load() -> dict[str, dict[int, dict[str, dict[int, float]]]]:
    """{variant: {seed: {set: {dim: spearman}}}} at the full depth; adds the 'SICK (mean)' set."""
    runs: dict = defaultdict(dict)
    for path in sorted((HERE / "results").glob("*.json")):
        match = re.fullmatch(r"(.+)-s(\d+)", path.stem)
        if not match:
            continue
        result = json.loads(path.read_text())
        sets = {}
        for key, content in result["sets"].items():
            parent = Path(content["source"]).parent.name  # stsb, sick
            name = {"stsb": "STS-B", "sick": "SICK"}.get(parent, parent) + " " + key.replace("en-", "")
            deepest = max(r["layer"] for r in content["records"])
            sets[name] = {r["dim"]: r["spearman"] for r in content["records"] if r["layer"] == deepest}
        sick = [cells for name, cells in sets.items() if "sick" in name.lower()]
        if len(sick) == 2:
            sets["SICK (mean of train, dev)"] = {d: (sick[0][d] + sick[1][d]) / 2 for d in sick[0]}
        runs[match[1]][int(match[2])] = sets
    return runs


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    runs = load()
    any_run = next(iter(next(iter(runs.values())).values()))
    for set_name in any_run:
        dims = sorted(any_run[set_name], reverse=True)
        head = "| variant | seed | " + " | ".join(f"d={d}" for d in dims) + " |"
        lines = [f"### {set_name}: Spearman x100, full depth", "", head, "|---|---|" + "---|" * len(dims)]
        for variant in sorted(runs):
            seeds = sorted(runs[variant])
            for seed in seeds:
                cells = runs[variant][seed][set_name]
                lines.append(f"| {variant} | {seed} | " + " | ".join(f"{cells[d]:.2f}" for d in dims) + " |")
            if len(seeds) > 1:
                means = [fmt([runs[variant][s][set_name][d] for s in seeds]) for d in dims]
                lines.append(f"| **{variant}** | mean ± std | " + " | ".join(means) + " |")
        if "grouped" in runs and "random" in runs:
            paired = sorted(set(runs["grouped"]) & set(runs["random"]))
            if paired:
                diffs = []
                for d in dims:
                    delta = [runs["random"][s][set_name][d] - runs["grouped"][s][set_name][d] for s in paired]
                    ahead = sum(x > 0 for x in delta)
                    diffs.append(f"{statistics.mean(delta):+.2f} ({ahead}/{len(paired)})")
                seeds = ",".join(map(str, paired))
                lines.append(f"| random - grouped | {seeds} | " + " | ".join(diffs) + " |")
        print("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

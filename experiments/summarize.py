"""Regenerate an experiment's tables (and plots) from its recorded eval JSON files.

    python experiments/summarize.py experiments/2026-11-27_stsb_cosent
    python experiments/summarize.py experiments/2026-11-27_stsb_cosent --plots   # needs matplotlib

Reads ``<experiment>/results/<variant>-s<seed>.json`` (written by ``eval.py --json``), groups
runs by variant, and prints Markdown tables of STS-B test Spearman x100 (mean +- standard deviation
over seeds) per dim at the full depth, retention vs the full dim, and per layer x dim. With
--plots it writes ``spearman_vs_dims.png`` and one ``layers_x_dims_<variant>.png`` heatmap per
variant next to the results. Nothing is computed here that is not in the JSON files.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path


def load(folder: Path) -> dict[str, dict[int, dict]]:
    """{variant: {seed: result}} from results/<variant>-s<seed>.json."""
    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    for path in sorted((folder / "results").glob("*.json")):
        match = re.fullmatch(r"(.+)-s(\d+)", path.stem)
        if match:
            runs[match[1]][int(match[2])] = json.loads(path.read_text())
    return runs


def cells(result: dict) -> dict[tuple[int, int], float]:
    """{(layer, dim): spearman} of the first STS set in one eval.py result."""
    (records,) = [s["records"] for s in result["sets"].values()][:1]
    return {(r["layer"], r["dim"]): r["spearman"] for r in records}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def tables(runs: dict[str, dict[int, dict]]) -> str:
    out = []
    any_result = next(iter(next(iter(runs.values())).values()))
    all_cells = cells(any_result)
    dims = sorted({d for _, d in all_cells}, reverse=True)
    top = max(layer for layer, _ in all_cells)
    out.append(f"### Spearman x100 at the full depth ({top} layers), mean ± std over seeds\n")
    out.append("| variant | seeds | " + " | ".join(f"d={d}" for d in dims) + " |")
    out.append("|---|---|" + "---|" * len(dims))
    for variant, by_seed in runs.items():
        per_seed = [cells(r) for r in by_seed.values()]
        row = [mean_std([c[(top, d)] for c in per_seed if (top, d) in c]) for d in dims]
        out.append(f"| {variant} | {','.join(map(str, by_seed))} | " + " | ".join(row) + " |")
    out.append("\n### Retention vs the full dim (mean over seeds)\n")
    out.append("| variant | " + " | ".join(f"d={d}" for d in dims) + " |")
    out.append("|---|" + "---|" * len(dims))
    for variant, by_seed in runs.items():
        per_seed = [cells(r) for r in by_seed.values()]
        row = [
            f"{100 * statistics.mean(c[(top, d)] / c[(top, dims[0])] for c in per_seed):.1f}%" for d in dims
        ]
        out.append(f"| {variant} | " + " | ".join(row) + " |")
    for variant, by_seed in runs.items():
        per_seed = [cells(r) for r in by_seed.values()]
        layers = sorted({layer for layer, _ in per_seed[0]}, reverse=True)
        if len(layers) < 2:
            continue
        out.append(f"\n### {variant}: layers x dims, Spearman x100 (mean over seeds {list(by_seed)})\n")
        out.append("| layers | " + " | ".join(f"d={d}" for d in dims) + " |")
        out.append("|---|" + "---|" * len(dims))
        for layer in layers:
            row = [f"{statistics.mean(c[(layer, d)] for c in per_seed):.1f}" for d in dims]
            out.append(f"| {layer} | " + " | ".join(row) + " |")
    walls = {v: [r.get("train_wall_s") for r in s.values() if r.get("train_wall_s")] for v, s in runs.items()}
    out.append("\n### Training wall time per run (s, includes model loading and two dev evaluations)\n")
    out.append("| variant | " + " | ".join(f"{v}" for v in walls) + " |")
    out.append("|---|" + "---|" * len(walls))
    out.append("| seconds | " + " | ".join(mean_std(w) if w else "n/a" for w in walls.values()) + " |")
    return "\n".join(out)


def plots(runs: dict[str, dict[int, dict]], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, by_seed in runs.items():
        per_seed = [cells(r) for r in by_seed.values()]
        top = max(layer for layer, _ in per_seed[0])
        dims = sorted({d for _, d in per_seed[0]})
        means = [statistics.mean(c[(top, d)] for c in per_seed) for d in dims]
        ax.plot(dims, means, marker="o", label=variant)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("embedding dims kept")
    ax.set_ylabel("STS-B test Spearman x100")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "spearman_vs_dims.png", dpi=120)
    for variant, by_seed in runs.items():
        per_seed = [cells(r) for r in by_seed.values()]
        layers = sorted({layer for layer, _ in per_seed[0]})
        dims = sorted({d for _, d in per_seed[0]})
        if len(layers) < 2:
            continue
        grid = [[statistics.mean(c[(layer, d)] for c in per_seed) for d in dims] for layer in layers]
        fig, ax = plt.subplots(figsize=(6, 4))
        image = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(dims)), [str(d) for d in dims])
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
        ax.set_xlabel("dims")
        ax.set_ylabel("layers")
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", color="white", fontsize=8)
        ax.set_title(f"{variant}: STS-B test Spearman x100")
        fig.colorbar(image)
        fig.tight_layout()
        fig.savefig(folder / f"layers_x_dims_{variant}.png", dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiment", type=Path, help="an experiments/<date>_<slug> folder")
    parser.add_argument("--plots", action="store_true", help="also write PNG plots (needs matplotlib)")
    args = parser.parse_args(argv)
    runs = load(args.experiment)
    if not runs:
        raise SystemExit(f"{args.experiment}/results: no <variant>-s<seed>.json files")
    print(tables(runs))
    if args.plots:
        plots(runs, args.experiment)


if __name__ == "__main__":
    main()

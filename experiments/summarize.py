"""Regenerate an experiment's tables (and plots) from its recorded eval JSON files.

    python experiments/summarize.py experiments/2026-11-27_stsb_cosent
    python experiments/summarize.py experiments/2026-11-27_stsb_cosent --plots   # needs matplotlib
    python experiments/summarize.py experiments/2026-11-27_stsb_ablations \
        --compare experiments/2026-11-27_stsb_cosent:matryoshka,2d-random

Reads ``<experiment>/results/<variant>-s<seed>.json`` (written by ``eval.py --json``), groups
runs by variant, and prints Markdown tables of STS-B test Spearman x100 (mean +- standard deviation
over seeds) per dim at the full depth, retention vs the full dim, and per layer x dim. When the
results also hold a retrieval section (``eval.py --beir``), the same tables follow for nDCG@10 x100
(float32 embeddings). ``--compare FOLDER:VARIANT,...`` adds another experiment's variants as
baseline rows, named ``VARIANT [FOLDER]``. With --plots it writes ``spearman_vs_dims.png`` (and
``ndcg_vs_dims.png``) and one ``layers_x_dims_<variant>.png`` heatmap per variant next to the
results. Nothing is computed here that is not in the JSON files.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

Cells = dict[tuple[int, int], float]


def load(folder: Path) -> dict[str, dict[int, dict]]:
    """{variant: {seed: result}} from results/<variant>-s<seed>.json."""
    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    for path in sorted((folder / "results").glob("*.json")):
        match = re.fullmatch(r"(.+)-s(\d+)", path.stem)
        if match:
            runs[match[1]][int(match[2])] = json.loads(path.read_text())
    return runs


def sts_cells(result: dict) -> Cells:
    """{(layer, dim): Spearman x100} of the first STS set in one eval.py result (float32 cells:
    eval.py --precisions adds int8/binary records at the same (layer, dim); older files have float32
    records without a precision)."""
    (records,) = [s["records"] for s in result["sets"].values()][:1]
    floats = (r for r in records if r.get("precision", "float32") == "float32")
    return {(r["layer"], r["dim"]): r["spearman"] for r in floats}


def ndcg_cells(result: dict) -> Cells:
    """{(layer, dim): nDCG@10 x100} of float32 search on the first retrieval set, or {}."""
    sets = list(result.get("retrieval", {}).values())
    if not sets:
        return {}
    return {
        (r["layer"], r["dim"]): 100 * r["ndcg@10"]
        for r in sets[0]["records"]
        if r["precision"] == "float32" and not r.get("rescore")
    }


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def metric_tables(runs: dict[str, dict[int, dict]], cells, metric: str, heatmaps: bool = True) -> list[str]:
    """Full-depth mean ± std per dim, retention, and (multi-layer runs) layers x dims means."""
    per_variant = {v: [cells(r) for r in by_seed.values()] for v, by_seed in runs.items()}
    per_variant = {v: c for v, c in per_variant.items() if c and c[0]}
    if not per_variant:
        return []
    first = next(iter(per_variant.values()))[0]
    dims = sorted({d for _, d in first}, reverse=True)
    # Each model's own last layer (a separately trained k-layer model has k of them).
    tops = {v: max(layer for layer, _ in per_seed[0]) for v, per_seed in per_variant.items()}
    depth = f"{tops[next(iter(tops))]} layers" if len(set(tops.values())) == 1 else "each model's last layer"
    out = [f"### {metric} at the full depth ({depth}), mean ± std over seeds\n"]
    out.append("| variant | seeds | " + " | ".join(f"d={d}" for d in dims) + " |")
    out.append("|---|---|" + "---|" * len(dims))
    for variant, per_seed in per_variant.items():
        top = tops[variant]
        row = [mean_std([c[(top, d)] for c in per_seed if (top, d) in c]) for d in dims]
        seeds = ",".join(map(str, runs[variant]))
        out.append(f"| {variant} | {seeds} | " + " | ".join(row) + " |")
    all_layers = sorted({layer for c in per_variant.values() for layer, _ in c[0]}, reverse=True)
    if len(all_layers) > 1:
        out.append(f"\n### {metric} at d={dims[0]} by depth (layers kept), mean ± std over seeds\n")
        out.append("| variant | seeds | " + " | ".join(f"{layer} layers" for layer in all_layers) + " |")
        out.append("|---|---|" + "---|" * len(all_layers))
        for variant, per_seed in per_variant.items():
            row = [
                mean_std([c[(layer, dims[0])] for c in per_seed]) if (layer, dims[0]) in per_seed[0] else ""
                for layer in all_layers
            ]
            out.append(f"| {variant} | {','.join(map(str, runs[variant]))} | " + " | ".join(row) + " |")
    out.append(f"\n### {metric}: retention vs the full dim (mean over seeds)\n")
    out.append("| variant | " + " | ".join(f"d={d}" for d in dims) + " |")
    out.append("|---|" + "---|" * len(dims))
    for variant, per_seed in per_variant.items():
        top = tops[variant]
        ratios = {d: [c[(top, d)] / c[(top, dims[0])] for c in per_seed] for d in dims}
        row = [f"{100 * statistics.mean(ratios[d]):.1f}%" for d in dims]
        out.append(f"| {variant} | " + " | ".join(row) + " |")
    for variant, per_seed in per_variant.items():
        layers = sorted({layer for layer, _ in per_seed[0]}, reverse=True)
        if len(layers) < 2 or not heatmaps:
            continue
        out.append(f"\n### {variant}: layers x dims, {metric} (mean over seeds {list(runs[variant])})\n")
        out.append("| layers | " + " | ".join(f"d={d}" for d in dims) + " |")
        out.append("|---|" + "---|" * len(dims))
        for layer in layers:
            row = [f"{statistics.mean(c[(layer, d)] for c in per_seed):.1f}" for d in dims]
            out.append(f"| {layer} | " + " | ".join(row) + " |")
    out.append("")
    return out


def tables(runs: dict[str, dict[int, dict]], heatmaps: bool = True) -> str:
    out = metric_tables(runs, sts_cells, "STS-B test Spearman x100", heatmaps)
    out += metric_tables(runs, ndcg_cells, "SciFact nDCG@10 x100", heatmaps)
    walls = {v: [r["train_wall_s"] for r in s.values() if r.get("train_wall_s")] for v, s in runs.items()}
    out.append("### Training wall time per run (s, includes model loading and two dev evaluations)\n")
    out.append("| variant | seconds |")
    out.append("|---|---|")
    out += [f"| {v} | {mean_std(w) if w else 'n/a'} |" for v, w in walls.items()]
    return "\n".join(out)


def plots(runs: dict[str, dict[int, dict]], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for cells, ylabel, filename in (
        (sts_cells, "STS-B test Spearman x100", "spearman_vs_dims.png"),
        (ndcg_cells, "SciFact nDCG@10 x100", "ndcg_vs_dims.png"),
    ):
        curves = {v: [cells(r) for r in s.values()] for v, s in runs.items()}
        curves = {v: c for v, c in curves.items() if c and c[0]}
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for variant, per_seed in curves.items():
            top = max(layer for layer, _ in per_seed[0])
            dims = sorted({d for _, d in per_seed[0]})
            means = [statistics.mean(c[(top, d)] for c in per_seed) for d in dims]
            ax.plot(dims, means, marker="o", label=variant)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("embedding dims kept")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / filename, dpi=120)
        plt.close(fig)
    for variant, by_seed in runs.items():
        per_seed = [sts_cells(r) for r in by_seed.values()]
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
        plt.close(fig)


def add_compared(runs: dict[str, dict[int, dict]], spec: str) -> None:
    """Add FOLDER:VARIANT[,VARIANT...] from another experiment as rows 'VARIANT [FOLDER name]'."""
    folder, _, names = spec.rpartition(":")
    if not folder or not names:
        raise SystemExit(f"--compare {spec!r}: expected FOLDER:VARIANT[,VARIANT...]")
    other = load(Path(folder))
    for name in names.split(","):
        if name not in other:
            raise SystemExit(f"--compare {spec!r}: no results/{name}-s<seed>.json in {folder}")
        runs[f"{name} [{Path(folder).name}]"] = other[name]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiment", type=Path, help="an experiments/<date>_<slug> folder")
    parser.add_argument(
        "--compare",
        nargs="*",
        default=[],
        metavar="FOLDER:VARIANT,...",
        help="baseline rows from another experiment's results",
    )
    parser.add_argument("--no-heatmaps", action="store_true", help="skip the layers x dims tables")
    parser.add_argument("--plots", action="store_true", help="also write PNG plots (needs matplotlib)")
    args = parser.parse_args(argv)
    own = load(args.experiment)
    if not own:
        raise SystemExit(f"{args.experiment}/results: no <variant>-s<seed>.json files")
    runs = dict(own)
    for spec in args.compare:
        add_compared(runs, spec)
    print(tables(runs, heatmaps=not args.no_heatmaps))
    if args.plots:  # plots show this experiment's own runs only
        plots(own, args.experiment)


if __name__ == "__main__":
    main()

"""The routes to a k-layer model, side by side: STS-B test and SICK (out of domain) Spearman x100
at the student's own depth, mean ± std over the seeds present, and what each route cost to train.

    python experiments/2026-12-08_stsb_teacher/table.py

Routes: a cut of J's 2D model (one run serves every depth), E's and J's separately trained k-layer
models (without and with an exit head), and the students distilled here from a frozen teacher.
"""

import json
import statistics
from pathlib import Path

here = Path(__file__).resolve().parent
experiments = here.parent
J = experiments / "2026-12-01_stsb_exit_heads" / "results"
E = experiments / "2026-11-30_stsb_distill" / "results"
SEEDS = (12, 13, 14)
DIMS = (384, 64, 16)


def score(path: Path, set_name: str, layer: int, dim: int) -> float | None:
    if not path.is_file():
        return None
    records = json.loads(path.read_text())["sets"].get(set_name, {}).get("records", [])
    return next((r["spearman"] for r in records if r["layer"] == layer and r["dim"] == dim), None)


def routes(k: int) -> list[tuple[str, callable, callable]]:
    """(label, STS-B result file of a seed, SICK result file of a seed)."""
    cut = "2d-all-distill-kl-data-heads-detached"
    rows = [
        (
            f"cut of J's 2D model ({cut})",
            lambda s: J / f"{cut}-s{s}.json",
            lambda s: J / "sick" / f"{cut}-s{s}.json",
        ),
        (
            f"separate {k}-layer model, no head (E)",
            lambda s: E / f"layers{k}-alone-s{s}.json",
            lambda s: J / "sick" / f"E-layers{k}-alone-s{s}.json",
        ),
        (
            f"separate {k}-layer model + head (J)",
            lambda s: J / f"layers{k}-alone-head-s{s}.json",
            lambda s: J / "sick" / f"layers{k}-alone-head-s{s}.json",
        ),
    ]
    for variant in ("none", "none-head", "mse-data", "mse-data-head"):
        name = f"student-{k}L-{variant}"
        rows.append(
            (
                f"{'distilled' if 'mse' in variant else 'control'}: {name}",
                lambda s, n=name: here / "results" / f"{n}-s{s}.json",
                lambda s, n=name: here / "results" / f"{n}-s{s}.json",
            )
        )
    return rows


def cell(values: list[float]) -> str:
    if not values:
        return ""
    mean = statistics.mean(values)
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def wall(path: Path) -> float | None:
    return json.loads(path.read_text()).get("train_wall_s") if path.is_file() else None


def main() -> None:
    for k in (2, 4):
        print(f"\n### {k} layers (STS-B test; SICK train+dev mean), Spearman x100\n")
        heads = [f"STS-B d={d}" for d in DIMS] + ["SICK d=384", "seeds", "train s (one run)"]
        print("| route | " + " | ".join(heads) + " |")
        print("|---|" + "---|" * len(heads))
        for label, sts, sick in routes(k):
            seeds = [s for s in SEEDS if sts(s).is_file()]
            if not seeds:
                continue
            cells = [
                cell([v for s in seeds if (v := score(sts(s), "en-test", k, d)) is not None]) for d in DIMS
            ]
            sick_values = []
            for s in seeds:
                parts = [score(sick(s), name, k, 384) for name in ("train", "dev")]
                if None not in parts:
                    sick_values.append(statistics.mean(parts))
            walls = [w for s in seeds if (w := wall(sts(s))) is not None]
            cells += [
                cell(sick_values),
                " ".join(map(str, seeds)),
                f"{statistics.median(walls):.0f}" if walls else "",
            ]
            print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

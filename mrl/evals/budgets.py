"""Byte budgets (issue 26): which evaluated cells fit in B bytes per stored vector, and the best.

A cell is one record of any evaluator: a (layer, dim, precision) of STS or BEIR (with BEIR's
``rescore``), later a sparse code's k. Its size is the record's ``bytes``, the one count of
`mrl.quantize` (`bytes_per_vector`, `sparse_bytes`). ``eval.py --bytes 16 32 64`` adds
``entry["budgets"]`` (`fit_budgets`) to each set's JSON entry and the table of `budget_section`
("budget -> best cell -> score") to its Markdown, console text and model-card section.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mrl.evaluation import record_bytes

# The keys that name a cell (those a record has), copied into each budget's list of cells.
CELL_KEYS = ("layer", "dim", "precision", "rescore", "k", "bytes")


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def fit_budgets(records: Sequence[dict], budgets: Sequence[int], metric: str) -> list[dict]:
    """For each budget (ascending): ``{"budget", "best", "fits"}``. ``fits`` lists every cell whose
    bytes are at most the budget, best ``metric`` first (a missing or NaN score last; ties: fewer
    bytes first, then record order); ``best`` is its first cell, or None when no cell with a score
    fits. Each cell is ``{<its CELL_KEYS>, metric: score}``."""
    rows = []
    for budget in sorted(budgets):
        fits = [r for r in records if record_bytes(r) <= budget]
        fits.sort(key=lambda r: (0, -r[metric], record_bytes(r)) if _finite(r.get(metric)) else (1, 0, 0))
        cells = [{key: r[key] for key in CELL_KEYS if key in r} for r in fits]
        for cell, r in zip(cells, fits):
            cell.update(bytes=record_bytes(r), **{metric: r.get(metric)})
        best = cells[0] if cells and _finite(cells[0][metric]) else None
        rows.append({"budget": budget, "best": best, "fits": cells})
    return rows


def describe_cell(cell: dict) -> str:
    """``layer 6, d=128, binary +rescore 100`` (the parts a cell has)."""
    parts = [f"layer {cell['layer']}"] if cell.get("layer") is not None else []
    parts += [f"d={cell['dim']}"] if "dim" in cell else []
    parts += [f"k={cell['k']}"] if cell.get("k") is not None else []
    precision = cell.get("precision", "float32")
    parts.append(precision + (f" +rescore {cell['rescore']}" if cell.get("rescore") else ""))
    return ", ".join(parts)


def format_budgets(rows: Sequence[dict], metric: str, title: str, scale: float = 1.0) -> str:
    """Markdown table of `fit_budgets` rows: budget, best cell, its bytes, its score x ``scale``
    (the set's tables' convention), and how many evaluated cells fit."""
    lines = [f"| budget | best cell | bytes/vec | {title} | cells that fit |", "|---|---|---|---|---|"]
    for row in rows:
        best = row["best"]
        if best is None:
            lines.append(f"| {row['budget']} B | nothing fits | | | {len(row['fits'])} |")
        else:
            cell = f"{describe_cell(best)} | {best['bytes']} | {scale * best[metric]:.2f}"
            lines.append(f"| {row['budget']} B | {cell} | {len(row['fits'])} |")
    return "\n".join(lines)


def budget_section(evaluator, entry: dict) -> str:
    """The text that follows a set's table when its entry has ``budgets`` ('' when not)."""
    if not entry.get("budgets"):
        return ""
    scale = getattr(evaluator, "scale", 1.0)  # BEIR records hold fractions, its tables show x100
    table = format_budgets(entry["budgets"], evaluator.metric, evaluator.title, scale)
    return f"\nBest cell within each byte budget (bytes per stored vector):\n\n{table}\n"

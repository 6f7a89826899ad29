"""Evaluators: one interface (`mrl.evals.base.Evaluator`), one file per kind, one table.

A new kind of evaluation is a file here with a class that has the interface's attributes and
methods, plus its line in `EVALUATORS`. It then gets an ``eval.py --<kind>`` flag, its own JSON
section and Markdown, model-card sections, TensorBoard tags ``val/<set>/<metric>_d64``, a chart
category and a row of the retention plot when training scores it (`evaluate_all`).
"""

from __future__ import annotations

from collections.abc import Mapping

from mrl.evals.base import Evaluator, evaluate_all, scalars_of, score_all, tag
from mrl.evals.beir import BeirEvaluator
from mrl.evals.mteb import MtebEvaluator
from mrl.evals.sts import StsEvaluator

__all__ = [
    "EVALUATORS",
    "BeirEvaluator",
    "Evaluator",
    "MtebEvaluator",
    "StsEvaluator",
    "dev_evaluators",
    "evaluate_all",
    "evaluator_for",
    "scalars_of",
    "score_all",
    "tag",
]

# kind -> evaluator class (the class, and its `load` for eval.py, are the factories). The order is
# eval.py's flag, output and JSON order and the card's section order.
EVALUATORS: dict[str, type[Evaluator]] = {
    "sts": StsEvaluator,
    "beir": BeirEvaluator,
    "mteb": MtebEvaluator,  # the mteb package (an optional extra), imported when --mteb is used
}


def evaluator_for(records: list[dict]) -> type[Evaluator]:
    """The registered kind whose metrics a set's records hold: what the card and the plot use
    for records read back from a file (``eval_dev.json`` stores records only)."""
    keys = set(records[0]) if records else set()
    for evaluator in EVALUATORS.values():
        if set(evaluator.metrics) <= keys:
            return evaluator
    raise ValueError(f"records with keys {sorted(keys)} match no evaluator of mrl.evals.EVALUATORS")


def dev_evaluators(eval_sets: Mapping) -> dict[str, StsEvaluator]:
    """train.py's dev sets (``{name: mrl.data.Examples}``, scored pairs of --eval-data) as evaluators."""
    return {name: StsEvaluator.from_examples(name, examples) for name, examples in eval_sets.items()}

"""The evaluator interface (issue #24), and the training-time functions that drive it.

An evaluator is one set (a dev or test file) plus what its kind knows: how to embed the set and
how to score it at every (layer, dim) cell, which metrics a record holds, which one is primary,
and how records read as tables. Everything that reports evaluations goes through it: training
(`evaluate_all`, `score_all`), ``eval.py`` (its ``--<kind>`` flag, JSON and tables), TensorBoard
(`tag`; the chart layout and retention plot of `mrl.tracking`) and the model card (`mrl.card`).
The kinds are registered in `mrl.evals.EVALUATORS`.

Scoring is two calls, so that every cell comes from ONE forward pass and vectors from elsewhere
(the adaptor's cached dev vectors) are scored by the same code:

    embeddings = evaluator.encode(encoder, layers, batch_size)  # the only forward pass
    records = evaluator.score(embeddings, dims, layers)         # every (layer, dim) cell

A record is a flat JSON-able dict: ``{"layer", "dim", <each of metrics>, "retention", ...}``.
Training and its plots want one record per (layer, dim); a kind may add axes for eval.py (BEIR's
precisions), which training then leaves at one value.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any, ClassVar, Protocol


class Evaluator(Protocol):
    """What every kind of evaluation provides (`mrl.evals.sts`, `mrl.evals.beir`: one file each).

    The class attributes describe the kind, so the card and the plots can read them from the
    class alone (from records saved by an earlier run): see `mrl.evals.evaluator_for`.
    """

    metric: ClassVar[str]  # the primary metric: a record key; TensorBoard val/<set>/<metric>_d64
    metrics: ClassVar[tuple[str, ...]]  # every metric a record holds (the primary one included)
    label: ClassVar[str]  # the primary metric's name on TensorBoard charts: "Spearman"
    title: ClassVar[str]  # the primary metric as recorded, for tables and plots: "Spearman x100"
    retention: ClassVar[str]  # what retention divides by, for headings: "retention vs the largest dim"
    section: ClassVar[str]  # eval.py --json: results[section][set name] = `result`
    help: ClassVar[str]  # eval.py --<kind> SPEC...: the flag's help

    name: str  # the set's name: tags, JSON keys, card headings

    @staticmethod
    def set_name(spec: str) -> str:
        """The name the set of ``spec`` (an eval.py argument) will have, known before loading."""
        ...

    @classmethod
    def load(cls, spec: str, args: argparse.Namespace, encoder) -> Evaluator:
        """The set named by an eval.py ``--<kind>`` argument; its options come from eval.py's
        flags ``args``; ``encoder`` is there for checks against the model (dims, tokens).
        Raises ValueError with the one-line message eval.py prints."""
        ...

    def encode(
        self, encoder, layers: Sequence[int] | None, batch_size: int = 64, show_progress: bool = False
    ) -> Any:
        """The set's raw embeddings at each of ``layers`` (1-based; None: the final layer only),
        from one forward pass; whatever `score` takes."""
        ...

    def score(self, embeddings: Any, dims: Sequence[int], layers: Sequence[int | None]) -> list[dict]:
        """Records for every (layer, dim) cell; ``layers`` labels the embeddings' layer rows
        (None: vectors that are no encoder's layer, e.g. the adaptor's)."""
        ...

    def result(self, embeddings: Any, records: list[dict], encode_seconds: float, seconds: float) -> dict:
        """eval.py's JSON entry for this set (its records, sizes, timings and any extras)."""
        ...

    @staticmethod
    def table(records: list[dict]) -> str:
        """The records as a Markdown table (console, train.log, eval.py's .md, the card)."""
        ...

    @classmethod
    def report(cls, name: str, entry: dict) -> tuple[str, str]:
        """eval.py's text for a `result` entry: (Markdown section of the .md file, console text)."""
        ...

    @classmethod
    def card_section(cls, name: str, entry: dict) -> str:
        """The model card's section for a `result` entry (``eval.py --add-to-card``)."""
        ...


def tag(set_name: str, metric: str, record: Mapping[str, Any], final_layer: int | None) -> str:
    """The TensorBoard tag of a record's primary metric, fixed once (README):
    ``val/<set>/<metric>_d64`` at the final layer, ``val/<set>/<metric>_l3_d64`` at layer 3."""
    cell = f"d{record['dim']}" if record["layer"] == final_layer else f"l{record['layer']}_d{record['dim']}"
    return f"val/{set_name}/{metric}_{cell}"


def scalars_of(
    evaluators: Mapping[str, Evaluator], records: Mapping[str, list[dict]], final_layer: int | None
) -> dict[str, float]:
    """``{tag: primary metric}`` of every record of every set, in record order."""
    scalars = {}
    for name, recs in records.items():
        metric = evaluators[name].metric
        for record in recs:
            key = tag(name, metric, record, final_layer)
            if key in scalars:  # e.g. BEIR at several precisions: a later record would replace it
                raise ValueError(f"{name}: two records have the tag {key}; training logs one record a cell")
            scalars[key] = record[metric]
    return scalars


def evaluate_all(
    evaluators: Mapping[str, Evaluator],
    encoder,
    dims: Sequence[int],
    layers: Sequence[int] | None,
    batch_size: int = 64,
    autocast=None,
    show_progress: bool = False,
) -> tuple[dict[str, float], dict[str, list[dict]]]:
    """Every set at every (layer, dim) cell -> ``({tag: value}, {set: records})``.

    evaluators: ``{set name: evaluator}``; layers: 1-based, None for the final layer only (tags
    at ``encoder.num_layers`` carry no layer). Each set is encoded once, under ``autocast`` (a
    context manager; default none); scoring runs outside it, in float32.
    """
    records = {}
    for name, evaluator in evaluators.items():
        with autocast or nullcontext():
            embeddings = evaluator.encode(encoder, layers, batch_size, show_progress)
        records[name] = evaluator.score(embeddings, dims, layers or [encoder.num_layers])
    return scalars_of(evaluators, records, encoder.num_layers), records


def score_all(
    evaluators: Mapping[str, Evaluator], embeddings: Mapping[str, Any], dims: Sequence[int]
) -> tuple[dict[str, float], dict[str, list[dict]]]:
    """`evaluate_all` for vectors that are already there (``{set name: what evaluator.encode
    would return, with one layer row}``, e.g. the adaptor's adapted dev vectors): the records'
    layer is None and the tags are ``val/<set>/<metric>_d64``."""
    records = {name: ev.score(embeddings[name], dims, [None]) for name, ev in evaluators.items()}
    return scalars_of(evaluators, records, None), records

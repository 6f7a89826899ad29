"""STS: Spearman (primary) and Pearson x100 between gold scores and the cosine of each pair's
prefixes, per (layer, dim), and with eval.py's ``--precisions`` per stored precision (both sides
int8 or sign bits; `mrl.evaluation.pair_similarity`). The math is `mrl.evaluation` (`embed_pairs`,
`score_pairs`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor

from mrl.data import DataError, check_scored_set, check_tokenized, load_source, source_name
from mrl.evaluation import embed_pairs, format_table, score_pairs


@dataclass
class StsEvaluator:
    """A scored-pairs set. Without texts it scores given vectors only (the adaptor's dev sets)."""

    name: str
    scores: list[float]
    sentences1: list[str] = field(default_factory=list)
    sentences2: list[str] = field(default_factory=list)
    source: str = ""
    precisions: Sequence[str] = ("float32",)  # eval.py --precisions; training scores float32 only

    metric: ClassVar[str] = "spearman"
    metrics: ClassVar[tuple[str, ...]] = ("spearman", "pearson")
    label: ClassVar[str] = "Spearman"
    title: ClassVar[str] = "Spearman x100"
    retention: ClassVar[str] = "retention vs the largest dim"
    section: ClassVar[str] = "sets"
    help: ClassVar[str] = (
        "STS sets: files with sentence1,sentence2,score or HUB_ID@split (default split: test)"
    )

    def __post_init__(self):
        if self.sentences1 and not (len(self.sentences1) == len(self.sentences2) == len(self.scores)):
            raise ValueError(f"{self.name}: sentences1, sentences2 and scores must have the same length")

    @classmethod
    def from_examples(cls, name: str, examples) -> StsEvaluator:
        """From `mrl.data.Examples` with two text columns and scores (train.py's --eval-data)."""
        return cls(name, list(examples.scores), examples.columns[0], examples.columns[1], examples.source)

    @staticmethod
    def set_name(spec: str) -> str:
        return source_name(spec)

    @classmethod
    def load(cls, spec: str, args, encoder) -> StsEvaluator:
        """A file or ``HUB_ID@split`` (default split: test); columns from ``--text-columns`` /
        ``--score-column``."""
        try:
            examples = load_source(
                spec, "test", text_columns=args.text_columns, score_column=args.score_column
            )
        except (DataError, ImportError) as error:
            raise ValueError(str(error)) from None
        if examples.n_columns != 2 or examples.scores is None:
            raise ValueError(f"--sts {examples.source}: needs 2 text columns and a score column")
        try:
            check_scored_set(examples, "--sts")  # constant gold scores, two pairs: no correlation
        except DataError as error:
            raise ValueError(str(error)) from None
        check_tokenized(examples, encoder)  # a text of nothing but special tokens: a DataError
        evaluator = cls.from_examples(source_name(spec), examples)
        evaluator.precisions = tuple(args.precisions)
        return evaluator

    def encode(
        self, encoder, layers: Sequence[int] | None, batch_size: int = 64, show_progress: bool = False
    ) -> tuple[Tensor, Tensor]:
        """(Lsel, N, D) for each side of the N pairs, every distinct text encoded once."""
        return embed_pairs(encoder, self.sentences1, self.sentences2, layers, batch_size, show_progress)

    def score(
        self, embeddings: tuple[Tensor, Tensor], dims: Sequence[int], layers: Sequence[int | None]
    ) -> list[dict]:
        return score_pairs(*embeddings, self.scores, dims, layers, self.precisions)

    def result(self, embeddings, records: list[dict], encode_seconds: float, seconds: float) -> dict:
        return {"source": self.source, "pairs": len(self.scores), "seconds": seconds, "records": records}

    table = staticmethod(format_table)

    @classmethod
    def report(cls, name: str, entry: dict) -> tuple[str, str]:
        table = format_table(entry["records"])
        markdown = f"### {name} ({entry['pairs']} pairs): {cls.title} (retention vs largest dim)\n\n{table}\n"
        where = f"{entry['source']}, {entry['pairs']} pairs, {entry['seconds']:.1f} s"
        return markdown, f"\n{name} ({where}): {cls.title} (retention)\n{table}"

    @classmethod
    def card_section(cls, name: str, entry: dict) -> str:
        return (
            f"### {name} ({entry['pairs']} pairs, `{entry['source']}`): {cls.title} ({cls.retention})"
            f"\n\n{format_table(entry['records'])}\n"
        )

"""BEIR retrieval: nDCG@10 (primary), MRR@10, Recall@100, MAP@100 per (layer, dim, precision),
and optionally a funnel against exact search. The math is `mrl.retrieval` (`embed_beir`,
`evaluate_cells`, `evaluate_funnel`); ``index="faiss"`` searches with `mrl.index` instead."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from torch import Tensor

from mrl.retrieval import (
    METRIC_NAMES,
    BeirData,
    embed_beir,
    evaluate_cells,
    evaluate_funnel,
    format_cells,
    format_funnel,
    load_beir,
    parse_stages,
)


@dataclass
class BeirEvaluator:
    """A BEIR set and how to search it. Training logs one record per (layer, dim): keep the
    default single precision there."""

    name: str
    data: BeirData
    folder: str = ""
    query_prefix: str = ""
    doc_prefix: str = ""
    precisions: Sequence[str] = ("float32",)
    rescore: int | None = None  # binary precisions: re-rank the Hamming top k with the float query
    index: str = "numpy"  # or "faiss" (mrl.index): every cell adds recall@10 vs exact search
    stages: list[tuple[int, int]] | None = None  # a funnel (dim, k) per stage, on the last layer
    funnel_binary: bool = False

    metric: ClassVar[str] = "ndcg@10"
    metrics: ClassVar[tuple[str, ...]] = METRIC_NAMES
    label: ClassVar[str] = "nDCG@10"
    title: ClassVar[str] = "nDCG@10"
    scale: ClassVar[float] = 100  # records hold fractions; tables (and byte budgets) show x100
    retention: ClassVar[str] = "retention = nDCG@10 vs float32 at the largest dim"
    section: ClassVar[str] = "retrieval"
    help: ClassVar[str] = "retrieval sets: BEIR folders (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)"

    @staticmethod
    def set_name(spec: str) -> str:
        return Path(spec).name

    @classmethod
    def load(cls, spec: str, args, encoder) -> BeirEvaluator:
        """A BEIR folder (qrels of ``--split``) with eval.py's retrieval flags (prefixes,
        ``--precisions``, ``--rescore``, ``--index``, ``--funnel``)."""
        stages = parse_stages(args.funnel) if args.funnel else None
        bad = [d for d, _ in stages or [] if not 1 <= d <= encoder.dim]
        if bad:
            raise ValueError(f"--funnel dims {bad}: the model's embedding dim is {encoder.dim}")
        try:
            data = load_beir(spec, args.split)
        except (OSError, ValueError) as error:
            raise ValueError(f"--beir: {error}") from None
        return cls(
            data.name or str(spec), data, str(spec), args.query_prefix, args.doc_prefix, args.precisions,
            args.rescore, args.index, stages, args.funnel_binary,
        )  # fmt: skip

    def encode(
        self, encoder, layers: Sequence[int] | None, batch_size: int = 64, show_progress: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Queries (Lsel, Q, D) and corpus (Lsel, N, D), each encoded once with its prefix."""
        return embed_beir(
            encoder, self.data, layers, self.query_prefix, self.doc_prefix, batch_size, show_progress
        )

    def score(
        self, embeddings: tuple[Tensor, Tensor], dims: Sequence[int], layers: Sequence[int | None]
    ) -> list[dict]:
        search_fn = None  # mrl.retrieval's own search
        if self.index == "faiss":
            from mrl.index import search_cells as search_fn
        query_emb, doc_emb = embeddings
        return evaluate_cells(
            query_emb, doc_emb, self.data, dims, self.precisions, layers, self.rescore, search_fn,
            recall_vs_exact=self.index == "faiss",
        )  # fmt: skip

    def result(self, embeddings, records: list[dict], encode_seconds: float, seconds: float) -> dict:
        entry = {
            "folder": self.folder,
            "queries": len(self.data),
            "docs": len(self.data.doc_ids),
            "query_prefix": self.query_prefix,
            "doc_prefix": self.doc_prefix,
            "index": self.index,
            "encode_seconds": encode_seconds,
            "records": records,
        }
        if self.data.no_relevant:  # in the mean as 0 (as BEIR does), and said in the tables
            entry["queries_without_relevant_doc"] = self.data.no_relevant
        if self.stages:  # on the last evaluated layer
            funnel_class = None  # mrl.retrieval.FunnelIndex
            if self.index == "faiss":
                from mrl.index import FaissFunnel as funnel_class
            query_emb, doc_emb = embeddings
            entry["funnel"] = evaluate_funnel(
                query_emb[-1], doc_emb[-1], self.data, self.stages, self.funnel_binary, funnel_class
            )
        return entry

    table = staticmethod(format_cells)

    @staticmethod
    def _queries(entry: dict) -> str:
        """'300 queries', or '300 queries (2 with no relevant doc, scored 0)'."""
        text = f"{entry['queries']} queries"
        if entry.get("queries_without_relevant_doc"):
            text += f" ({entry['queries_without_relevant_doc']} with no relevant doc, scored 0)"
        return text

    @classmethod
    def report(cls, name: str, entry: dict) -> tuple[str, str]:
        header = f"{name} ({cls._queries(entry)}, {entry['docs']} docs, "
        header += f"encoded in {entry['encode_seconds']:.1f} s)"
        header += ", searched with faiss" if entry["index"] == "faiss" else ""
        text = f"### {header}: x100 ({cls.retention})\n\n{format_cells(entry['records'])}\n"
        if entry.get("funnel"):
            text += f"\nFunnel vs exact search (layer {entry['records'][-1]['layer']}):\n\n"
            text += format_funnel(entry["funnel"]) + "\n"
        return text, "\n" + text

    @classmethod
    def card_section(cls, name: str, entry: dict) -> str:
        text = (
            f"### {name} ({cls._queries(entry)}, {entry['docs']} docs): retrieval x100 "
            f"({cls.retention})\n\n{format_cells(entry['records'])}\n"
        )
        if entry.get("funnel"):
            text += f"\nFunnel vs exact search:\n\n{format_funnel(entry['funnel'])}\n"
        return text

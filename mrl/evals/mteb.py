"""MTEB through the `mteb` package (issue 27): ``eval.py --mteb TASK`` scores a task with mteb's
own evaluators (its retrieval search and pytrec_eval metrics, its STS correlations, ...) at every
(layer, dim) cell, and reports mteb's main score of the task.

TASK is one of
- a BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv of ``--split``): a retrieval task
  built from the local files (`mrl.retrieval.load_beir` reads them), main score nDCG@10;
- an STS file (two text columns and a score, as ``--sts`` reads it): an STS task, main score
  Spearman of the cosine;
- an MTEB task name (``SciFact``, ``STSBenchmark``, ...): mteb's own task, whose data mteb reads
  from the Hugging Face hub (or its local cache). Offline and uncached it is refused in one line.

mteb is an optional extra (``pip install 'mrl[mteb]'``, i.e. ``mteb-core``: mteb's code without
the packages that run models; its ``mteb.evaluate`` wants sentence-transformers, so each task is
run through its own public ``AbsTask.evaluate``). Our `Encoder` meets mteb's `EncoderProtocol`
through `CellEncoder`: one (layer, dim) cell, texts prefixed with the task's own prompts where it
has them (a local task's prompts are ``--query-prefix`` / ``--doc-prefix``).

As everywhere in eval.py, each text is encoded once at full width (every layer in one pass):
`encode` runs the task once with a recording `CellEncoder` that encodes what mteb asks for and
keeps it; `score` then runs the task once per cell on slices of those vectors.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from mrl.data import DataError, check_scored_set, check_tokenized, is_local, load_source
from mrl.evaluation import encode_layers, format_table
from mrl.hub import offline_reason
from mrl.losses import prefix
from mrl.quantize import bytes_per_vector
from mrl.retrieval import load_beir

INSTALL = "pip install 'mrl[mteb]'"


def import_mteb():
    """The mteb package, or an ImportError saying how to install the extra."""
    try:
        import mteb
    except ImportError as error:
        raise ImportError(f"needs the mteb extra ({INSTALL}): {error}") from None
    return mteb


def task_prompt(metadata, prompt_type) -> str:
    """The task's own prompt for texts of ``prompt_type`` (mteb's PromptType: query, document, or
    None for the texts of symmetric tasks): a dict prompt's entry for that type; a string prompt
    (an instruction) for queries and symmetric texts, not documents; "" when it has none."""
    prompt = metadata.prompt
    kind = getattr(prompt_type, "value", prompt_type)
    if isinstance(prompt, dict):
        return (prompt.get(kind) or "") if kind else ""
    return (prompt or "") if kind != "document" else ""


def with_prompt(prompt: str, text: str) -> str:
    """``prompt`` before ``text``, with a space between unless the prompt ends in one."""
    return text if not prompt else prompt + text if prompt[-1].isspace() else f"{prompt} {text}"


class CellEncoder:
    """mteb's `EncoderProtocol` (``encode``, ``similarity``, ``similarity_pairwise``,
    ``mteb_model_meta``) at one (layer, dim) cell.

    ``vectors(texts)`` gives the full-width raw vectors (N, D) of the prompted texts at the cell's
    layer; ``encode`` returns their first ``dim`` values re-normalised (slice, then normalise).
    """

    mteb_model_meta = None  # no ModelMeta: mteb's evaluators score without one

    def __init__(self, vectors: Callable[[list[str]], Tensor], dim: int):
        self.vectors, self.dim = vectors, dim

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
        prompt = task_prompt(task_metadata, prompt_type)
        texts = [with_prompt(prompt, text) for batch in inputs for text in batch["text"]]
        return prefix(self.vectors(texts).float(), self.dim).numpy()  # (N, dim), unit rows

    def similarity(self, embeddings1, embeddings2):
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2):
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)


@dataclass
class MtebVectors:
    """Raw full-width vectors of every (prompted) text a task encodes: (Lsel, U, D), one row per text."""

    rows: dict[str, int] = field(default_factory=dict)
    chunks: list[Tensor] = field(default_factory=list)  # (Lsel, n, D) each, before `stack`
    emb: Tensor | None = None

    def stack(self) -> MtebVectors:
        self.emb, self.chunks = torch.cat(self.chunks, dim=1), []
        return self

    def at(self, row: int) -> Callable[[list[str]], Tensor]:
        """The vectors of given texts at layer row ``row``, (N, D)."""

        def vectors(texts: list[str]) -> Tensor:
            missing = [t for t in texts if t not in self.rows]
            if missing:  # the task asked for a text the recording pass did not see
                raise RuntimeError(f"mteb asked for a text that was not encoded: {missing[0][:80]!r}")
            return self.emb[row, [self.rows[t] for t in texts]]

        return vectors


@functools.cache
def local_task_classes() -> tuple[type, type]:
    """mteb task classes (subclasses of its AbsTaskRetrieval and AbsTaskSTS) whose ``load_data``
    reads local files: made on first use, so that importing mrl.evals needs no mteb."""
    mteb = import_mteb()
    from datasets import Dataset, DatasetDict
    from mteb.abstasks import AbsTaskRetrieval, AbsTaskSTS

    class LocalRetrieval(AbsTaskRetrieval):
        """A BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv (`mrl.retrieval.load_beir`)."""

        def __init__(self, folder: str, split: str, prompts: dict[str, str]):
            self.metadata = local_metadata(mteb, folder, "Retrieval", "ndcg_at_10", split, prompts)
            super().__init__()
            self.folder, self.split = folder, split

        def load_data(self, num_proc=None, **kwargs):
            if self.data_loaded:
                return
            data = load_beir(self.folder, self.split)  # validated: one-line ValueErrors
            corpus = Dataset.from_dict(
                {"id": data.doc_ids, "title": [""] * len(data.doc_ids), "text": data.doc_texts}
            )
            queries = Dataset.from_dict({"id": data.query_ids, "text": data.query_texts})
            split = {"corpus": corpus, "queries": queries, "relevant_docs": data.qrels, "top_ranked": None}
            self.dataset = {"default": {self.split: split}}
            self.data_loaded = True

    class LocalSTS(AbsTaskSTS):
        """An STS file: two text columns and a gold score (`mrl.data.load_source`)."""

        def __init__(self, path: str, split: str, text_columns=None, score_column="score"):
            self.metadata = local_metadata(mteb, path, "STS", "cosine_spearman", split, None)
            super().__init__()
            self.path, self.split = path, split
            self.text_columns, self.score_column = text_columns, score_column
            self.examples = None

        def load_data(self, num_proc=None, **kwargs):
            if self.data_loaded:
                return
            try:
                examples = load_source(
                    self.path, self.split, text_columns=self.text_columns, score_column=self.score_column
                )
                if examples.n_columns != 2 or examples.scores is None:
                    raise DataError(f"--mteb {examples.source}: needs 2 text columns and a score column")
                check_scored_set(examples, "--mteb")
            except (DataError, ImportError) as error:
                raise ValueError(str(error)) from None
            # mteb scales the gold scores to [0, 1] by these; correlations do not depend on it.
            self.min_score, self.max_score = min(examples.scores), max(examples.scores)
            rows = {
                "sentence1": examples.columns[0],
                "sentence2": examples.columns[1],
                "score": examples.scores,
            }
            self.dataset = DatasetDict({self.split: Dataset.from_dict(rows)})
            self.examples = examples
            self.data_loaded = True

    return LocalRetrieval, LocalSTS


def local_metadata(mteb, source: str, kind: str, main_score: str, split: str, prompts):
    return mteb.TaskMetadata(
        name=Path(source).name,
        dataset={"path": str(source), "revision": "local"},
        description=f"{kind} task read from the local {source}",
        type=kind,
        category="t2t",
        modalities=["text"],
        eval_splits=[split],
        eval_langs=[],
        main_score=main_score,
        prompt=prompts or None,
    )


def one_line(error: BaseException) -> str:
    text = str(error).strip().strip("'\"")
    return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__


def named_task(name: str, split: str):
    """mteb's task ``name`` with its data loaded, and the split to score; ValueError (one line)
    when mteb has no such task or its data cannot be read. While the hub is out of reach
    (`mrl.hub.offline_reason`: HF_HUB_OFFLINE, or a failed 3-second probe) only the local cache
    is read, at once, instead of `datasets` retrying for half a minute."""
    offline = offline_reason()
    if offline and "datasets" not in sys.modules:
        os.environ["HF_DATASETS_OFFLINE"] = "1"  # read by `datasets` on import: the local cache only
    mteb = import_mteb()
    try:
        task = mteb.get_task(name)
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"--mteb {name}: not a BEIR folder, an STS file or an MTEB task name ({one_line(error)})"
        ) from None
    if task.metadata.modalities != ["text"]:
        raise ValueError(f"--mteb {name}: a task on {task.metadata.modalities}; eval.py encodes text only")
    splits = list(task.metadata.eval_splits)
    if split not in splits:
        if split != "test":  # --split given: say which the task has
            raise ValueError(f"--split {split}: MTEB task {name} has the splits {splits}")
        split = splits[0]
    no_hub = (
        f"--mteb {name}: mteb reads this task's data ({task.metadata.dataset['path']}) from the Hugging "
        f"Face hub, which cannot be reached ({offline}), and it is not in the local cache; give a BEIR "
        "folder or an STS file (or connect and retry)"
    )
    import datasets

    if offline and not datasets.config.HF_HUB_OFFLINE:  # imported online before: it would retry
        raise ValueError(no_hub)
    try:
        task.load_data()
    except Exception as error:  # datasets and huggingface_hub raise many kinds
        if offline:
            raise ValueError(no_hub) from None
        where = task.metadata.dataset["path"]
        raise ValueError(f"--mteb {name}: cannot load its data ({where}): {one_line(error)}") from None
    return task, split


@dataclass
class MtebEvaluator:
    """An mteb task: scored by mteb's own evaluator at every (layer, dim) cell."""

    name: str
    task: Any  # an mteb AbsTask, its data loaded
    split: str
    source: str  # the folder / file, or "mteb:<task name>"
    batch_size: int = 64

    metric: ClassVar[str] = "main_score"
    metrics: ClassVar[tuple[str, ...]] = ("main_score",)
    label: ClassVar[str] = "MTEB main score"
    title: ClassVar[str] = "MTEB main score x100"
    retention: ClassVar[str] = "retention vs the largest dim"
    section: ClassVar[str] = "mteb"
    help: ClassVar[str] = (
        f"MTEB tasks scored by the mteb package ({INSTALL}): a BEIR folder, an STS file, or an MTEB "
        "task name (its data comes from the Hugging Face hub)"
    )

    @staticmethod
    def set_name(spec: str) -> str:
        return Path(spec).stem if is_local(spec) and not Path(spec).is_dir() else Path(spec).name

    @classmethod
    def load(cls, spec: str, args, encoder) -> MtebEvaluator:
        """A local BEIR folder or STS file as an mteb task, or mteb's task of that name."""
        try:
            if not is_local(spec):  # an MTEB task name
                task, split = named_task(spec, args.split)
                return cls(spec, task, split, f"mteb:{task.metadata.name}", args.batch_size)
            import_mteb()  # (local_task_classes is made once: it would not ask again)
            local_retrieval, local_sts = local_task_classes()
        except ImportError as error:
            raise ValueError(f"--mteb {spec}: {error}") from None
        name = cls.set_name(spec)
        if Path(spec).is_dir():
            prompts = {"query": args.query_prefix, "document": args.doc_prefix}
            task = local_retrieval(spec, args.split, {k: v for k, v in prompts.items() if v})
            try:
                task.load_data()
            except (OSError, ValueError) as error:
                raise ValueError(f"--mteb: {error}") from None
            return cls(name, task, args.split, spec, args.batch_size)
        task = local_sts(spec, "test", args.text_columns, args.score_column)
        task.load_data()
        try:
            check_tokenized(task.examples, encoder)  # a text of nothing but special tokens
        except DataError as error:
            raise ValueError(str(error)) from None
        return cls(name, task, "test", spec, args.batch_size)

    def run(self, model: CellEncoder) -> float:
        """mteb's main score of the task for ``model``: the mean over the task's subsets (languages), as
        mteb's own results average them. mteb's and datasets' bars stay off: they would draw one per
        run and cell (the encoding has its own, `encode`)."""
        import datasets

        quiet = not datasets.are_progress_bars_disabled()
        if quiet:
            datasets.disable_progress_bars()
        try:
            encode_kwargs = {"batch_size": self.batch_size, "show_progress_bar": False}
            scores = self.task.evaluate(model, self.split, encode_kwargs=encode_kwargs)
        finally:
            if quiet:
                datasets.enable_progress_bars()
        return sum(s["main_score"] for s in scores.values()) / len(scores)

    def encode(
        self, encoder, layers: Sequence[int] | None, batch_size: int = 64, show_progress: bool = False
    ) -> MtebVectors:
        """Every text the task encodes, at each of ``layers`` (1-based; None: the final layer),
        from one forward pass each: one run of the task with a recording encoder."""
        seen = MtebVectors()

        def record(texts: list[str]) -> Tensor:
            new = list(dict.fromkeys(t for t in texts if t not in seen.rows))
            if new:
                emb = encode_layers(encoder, new, layers, batch_size, show_progress)  # (Lsel, n, D)
                start = sum(chunk.shape[1] for chunk in seen.chunks)
                seen.rows.update({text: start + i for i, text in enumerate(new)})
                seen.chunks.append(emb)
            if len(seen.chunks) > 1:
                seen.chunks = [torch.cat(seen.chunks, dim=1)]  # one tensor that look-ups index
            if not texts:
                return torch.zeros(0, encoder.dim)
            return seen.chunks[0][-1, [seen.rows[t] for t in texts]]

        self.run(CellEncoder(record, encoder.dim))
        return seen.stack()

    def score(self, embeddings: MtebVectors, dims: Sequence[int], layers: Sequence[int | None]) -> list[dict]:
        records = []
        for row, layer in enumerate(layers):
            cells = [
                {
                    "layer": layer,
                    "dim": dim,
                    "precision": "float32",  # what mteb scores: the vectors as they are
                    "bytes": bytes_per_vector(dim, "float32"),
                    "main_score": 100 * self.run(CellEncoder(embeddings.at(row), dim)),
                }
                for dim in dims
            ]
            full = max(cells, key=lambda cell: cell["dim"])["main_score"]
            for cell in cells:
                cell["retention"] = cell["main_score"] / full if full else float("nan")
            records.extend(cells)
        return records

    def result(self, embeddings, records: list[dict], encode_seconds: float, seconds: float) -> dict:
        metadata = self.task.metadata
        return {
            "task": metadata.name,
            "type": metadata.type,
            "split": self.split,
            "main_score": metadata.main_score,
            "source": self.source,
            "prompts": metadata.prompt,
            "subsets": list(self.task.hf_subsets or ["default"]),
            "mteb_version": import_mteb().__version__,
            "texts": len(embeddings.rows),
            "encode_seconds": encode_seconds,
            "seconds": seconds,
            "records": records,
        }

    @staticmethod
    def table(records: list[dict]) -> str:
        return format_table(records, "main_score")

    @classmethod
    def _heading(cls, name: str, entry: dict) -> str:
        return (
            f"{name} (MTEB {entry['type']} task {entry['task']}, split {entry['split']}, main score "
            f"{entry['main_score']}, mteb {entry['mteb_version']})"
        )

    @classmethod
    def report(cls, name: str, entry: dict) -> tuple[str, str]:
        table = format_table(entry["records"], "main_score")
        heading = cls._heading(name, entry)
        markdown = f"### {heading}: x100 ({cls.retention})\n\n{table}\n"
        where = f"{entry['texts']} texts encoded in {entry['encode_seconds']:.1f} s, {entry['seconds']:.1f} s"
        return markdown, f"\n{heading}, {where}: x100 (retention)\n{table}"

    @classmethod
    def card_section(cls, name: str, entry: dict) -> str:
        table = format_table(entry["records"], "main_score")
        return f"### {cls._heading(name, entry)}: x100 ({cls.retention})\n\n{table}\n"

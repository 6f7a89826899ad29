"""ONNX export of a cut: a saved model at (layers, dim) as one ONNX graph, and running it.

    # the quickstart's model at full depth, 64 dims, plus an int8 variant
    python -m mrl.onnx_export runs/stsb-matryoshka/model runs/stsb-matryoshka/onnx-d64 --dim 64 --int8
    # a 2D model's 2-block, 64-dim cell; STS-B test scored with PyTorch, ONNX and int8 for the card
    python -m mrl.onnx_export MODEL OUT --layers 2 --dim 64 --int8 --sts ../shared/data/stsb/en-test.csv

MODEL is what eval.py takes: a model folder, a training run folder (its final model) or a hub id.
The graph takes ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the tokenizer
makes them), each (N, S) int64 with dynamic N and S, and returns ``sentence_embedding``
(N, dim) float32: the first ``layers`` blocks only, the model's pooling, depth ``layers``' exit
head and the model's head if it has them, the first ``dim`` values, L2-normalised. That is
``Encoder.encode(texts, layers=..., dim=...)`` with its defaults (`CutModule`);
``--no-normalize`` keeps the raw prefix (``normalize=False``).

OUT gets ``model.onnx`` (``model_int8.onnx`` with ``--int8``: ONNX Runtime's dynamic
quantisation, int8 weights of the matrix products), the tokenizer files (their maximum length set
to the model's, so ``truncation=True`` cuts where `Encoder` does), ``onnx_cut.json`` (the cut and
the parity measured) and ``README.md`` (a card with usage). Before OUT appears, ONNX Runtime
embeds a few texts (``--sts``: every text of the set) and the export is refused unless each
cosine to the PyTorch encoder's is at least `PARITY_MIN_COSINE`. Everything is written to a
temporary sibling folder first: a refused or failed export leaves no OUT, and an existing OUT
is replaced (with ``--overwrite`` only) when the new one is complete.

Exporter: torch's default, torch.export-based ``torch.onnx.export(dynamo=True)`` (it needs
``onnxscript``); the TorchScript one is deprecated since torch 2.9. Graphs over 2 GB (protobuf's
limit for one file) are refused. `OnnxEncoder` runs an exported folder: texts -> (N, dim) numpy.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mrl.blocks import truncated_blocks
from mrl.losses import prefix
from mrl.pooling import pool

INSTALL_HINT = "pip install 'mrl[onnx]'"
MODEL_FILE, INT8_FILE, CUT_FILE, CARD_FILE = "model.onnx", "model_int8.onnx", "onnx_cut.json", "README.md"
# Not "embedding": a value inside BERT's exported graph already has that name (ORT refuses the file).
OUTPUT_NAME = "sentence_embedding"
# The export is refused below this cosine between ONNX Runtime's and PyTorch's embedding of a text.
PARITY_MIN_COSINE = 0.99999
MAX_GRAPH_BYTES = 2 << 30  # one ONNX file is a protobuf, which cannot exceed 2 GB
# Texts for the export-time check when no --sts set is given: short and long, punctuation,
# digits, accents, so the batch has padding and several lengths.
CHECK_TEXTS = [
    "A man is playing a guitar.",
    "Hi",
    "A woman is slicing an onion on the kitchen table while the radio plays an old song.",
    "the cat sat on the mat",
    "Stocks fell 3.5% on Tuesday, the steepest drop since 2020!",
    "Café au lait, s'il vous plaît.",
    "Someone plays music.",
    "Two dogs run in the park; one of them carries a red ball and the other one chases it.",
]


def import_onnxruntime():
    """The onnxruntime module, or an ImportError whose message is one line naming the extra."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(f"onnxruntime is not installed: {INSTALL_HINT}") from None
    return onnxruntime


def check_exporter() -> None:
    """ImportError (one line naming the extra) unless onnx, onnxscript (torch's exporter needs
    it) and onnxruntime (the parity check) are installed."""
    import_onnxruntime()
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            raise ImportError(f"{name} is not installed: {INSTALL_HINT}") from None


# --------------------------------------------------------------------------------------------
# The module that is exported
# --------------------------------------------------------------------------------------------


class CutModule(nn.Module):
    """The served embedding of one (layers, dim) cell of an `Encoder`, as one module.

    ``(input_ids, attention_mask[, token_type_ids])``, each (N, S) -> (N, dim). It owns a copy of
    the transformer holding only its first ``layers`` blocks (`truncated_blocks` while copying),
    so the exported graph has no other block; then, as `Encoder._pooled` and `encode` do: the
    model's pooling, the exit head of depth ``layers`` (if the model has one), the head (if
    any), the first ``dim`` values, and unit length when ``normalize`` (after the slice).
    """

    def __init__(self, encoder, layers: int, dim: int, normalize: bool = True):
        super().__init__()
        with truncated_blocks(encoder.model, layers):
            # Inside the context the model has `layers` blocks and says so in its config.
            self.transformer = copy.deepcopy(encoder.model).float().eval()
        heads = encoder.exit_heads
        self.exit_head = copy.deepcopy(heads[str(layers)]) if heads and str(layers) in heads else None
        self.head = copy.deepcopy(encoder.head)
        self.pooling, self.dim, self.normalize = encoder.pooling, dim, normalize

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            features["token_type_ids"] = token_type_ids
        hidden = self.transformer(**features, return_dict=True).last_hidden_state  # (N, S, H)
        pooled = pool(hidden, attention_mask, self.pooling)  # (N, H)
        if self.exit_head is not None:
            pooled = self.exit_head(pooled)
        if self.head is not None:
            pooled = self.head(pooled)  # (N, D)
        return prefix(pooled, self.dim) if self.normalize else pooled[:, : self.dim]  # (N, dim)


def input_names(encoder) -> list[str]:
    """The graph's inputs: what `Encoder.pad` gives the model (token_type_ids only where the
    tokenizer makes them), in `CutModule.forward`'s order."""
    names = ["input_ids", "attention_mask"]
    return names + (["token_type_ids"] if "token_type_ids" in encoder.tokenizer.model_input_names else [])


def check_cut(encoder, layers: int | None, dim: int | None) -> tuple[int, int]:
    """``(layers, dim)`` with None as the model's full depth / width; ValueError naming the flag."""
    layers = encoder.num_layers if layers is None else layers
    dim = encoder.dim if dim is None else dim
    if not 1 <= layers <= encoder.num_layers:
        raise ValueError(f"--layers {layers}: the model has blocks 1..{encoder.num_layers}")
    if not 1 <= dim <= encoder.dim:
        raise ValueError(f"--dim {dim}: the model's embedding has 1..{encoder.dim} dims")
    return layers, dim


# --------------------------------------------------------------------------------------------
# Running an exported folder
# --------------------------------------------------------------------------------------------


class OnnxEncoder:
    """An exported cut run by ONNX Runtime on the CPU: texts -> (N, dim) float32, in input order.

    Texts are tokenised once, sorted by length and padded per batch, as `Encoder.encode` does.
    ``int8``: run ``model_int8.onnx``; ``threads``: ONNX Runtime's intra-op threads (None: its
    default, one per physical core).
    """

    def __init__(self, folder: str | os.PathLike, int8: bool = False, threads: int | None = None):
        from transformers import AutoTokenizer

        ort = import_onnxruntime()
        self.folder = Path(folder)
        self.cut: dict[str, Any] = json.loads((self.folder / CUT_FILE).read_text(encoding="utf-8"))
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        graph = self.folder / (INT8_FILE if int8 else MODEL_FILE)
        self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """(N, dim) float32 embeddings of ``texts``."""
        if self.cut.get("do_lower_case"):
            texts = [t.lower() for t in texts]
        if not texts:
            return np.zeros((0, self.cut["dim"]), dtype=np.float32)
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.cut["max_seq_length"])["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
        out = np.empty((len(ids), self.cut["dim"]), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = self.pad([ids[i] for i in rows])
            out[rows] = self.session.run(None, {name: batch[name] for name in self.input_names})[0]
        return out

    def pad(self, ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """Id lists padded to the longest on the tokenizer's side: int64 arrays, each (N, S)."""
        longest = max(len(row) for row in ids)
        input_ids = np.full((len(ids), longest), self.tokenizer.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(ids), longest), dtype=np.int64)
        left = self.tokenizer.padding_side == "left"
        for i, row in enumerate(ids):
            span = slice(longest - len(row), longest) if left else slice(0, len(row))
            input_ids[i, span] = row
            attention_mask[i, span] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": np.zeros_like(input_ids),
        }


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (N, d) arrays, in float64: (N,)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def sts_spearman(emb: np.ndarray, gold: Sequence[float]) -> float:
    """Spearman x100 of the pairs' cosine against ``gold``: emb (2P, d) holds the first texts of
    the P pairs, then the second ones."""
    from scipy.stats import spearmanr

    half = len(gold)
    return float(spearmanr(gold, cosines(emb[:half], emb[half:])).statistic) * 100


# --------------------------------------------------------------------------------------------
# Exporting
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's and the quantiser's warnings and log lines (a deprecated pytree spec,
    torchvision ops it skips, "consider pre-processing") say nothing about this graph; the
    export-time parity check is what counts."""
    loggers = [logging.getLogger("torch.onnx"), logging.getLogger()]  # the quantiser logs on root
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def write_graph(
    module: CutModule, example: dict[str, Tensor], names: list[str], path: Path, opset: int | None
):
    """``torch.onnx.export`` of ``module`` with dynamic batch and sequence axes on every input."""
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    args = tuple(example[name] for name in names)
    with _quiet_exporter(), torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_shapes=tuple({0: batch, 1: sequence} for _ in names),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def export_cut(
    encoder,
    out: str | os.PathLike,
    layers: int | None = None,
    dim: int | None = None,
    *,
    normalize: bool = True,
    int8: bool = False,
    opset: int | None = None,
    overwrite: bool = False,
    sts: tuple[list[str], list[str], list[float]] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Export ``encoder`` at (layers, dim) to the folder ``out`` (see the module docstring).

    ``sts``: (sentences1, sentences2, gold scores) of a scored set; its texts are the parity check's
    and the card gets the Spearman of PyTorch, ONNX and int8. Returns the cut description written
    to ``onnx_cut.json``. ValueError (one line) for a bad cell, an existing ``out`` without
    ``overwrite``, or a parity below `PARITY_MIN_COSINE`; then nothing is left behind.
    """
    import onnx

    check_exporter()
    layers, dim = check_cut(encoder, layers, dim)
    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"OUT {out} exists; choose another folder or pass --overwrite")
    graph_bytes = sum(p.numel() * 4 for p in encoder.parameters())  # exported in float32
    if graph_bytes >= MAX_GRAPH_BYTES:
        raise ValueError(
            f"{encoder.name_or_path}: {graph_bytes / 2**30:.1f} GB of weights; one ONNX file holds < 2 GB"
        )
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)  # a leftover of a killed export by this pid
    staging.mkdir(parents=True)
    try:
        names = input_names(encoder)
        module = CutModule(encoder, layers, dim, normalize).cpu()
        example = encoder.tokenize(CHECK_TEXTS[:3])  # three lengths: the example batch has padding
        write_graph(module, example, names, staging / MODEL_FILE, opset)
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            with _quiet_exporter():
                quantize_dynamic(staging / MODEL_FILE, staging / INT8_FILE, weight_type=QuantType.QInt8)
        _save_tokenizer(encoder, staging)
        cut = describe_cut(encoder, layers, dim, normalize, names, onnx.load(staging / MODEL_FILE))
        cut["int8"] = INT8_FILE if int8 else None
        (staging / CUT_FILE).write_text(json.dumps(cut, indent=2) + "\n", encoding="utf-8")
        cut["parity"] = measure_parity(encoder, staging, cut, sts, threads)
        worst = cut["parity"]["onnx"]["cosine_min"]
        if not worst >= PARITY_MIN_COSINE:  # `not >=`: a NaN is refused too
            raise ValueError(
                f"{out}: not written: ONNX Runtime's embedding differs from PyTorch's (cosine {worst:.7f} < "
                f"{PARITY_MIN_COSINE} on {cut['parity']['texts']} texts)"
            )
        (staging / CUT_FILE).write_text(json.dumps(cut, indent=2) + "\n", encoding="utf-8")
        (staging / CARD_FILE).write_text(card_text(cut, str(out)), encoding="utf-8")
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # only ever this call's own folder
        raise
    return cut


def _save_tokenizer(encoder, folder: Path) -> None:
    """The tokenizer files, with the model's maximum length as theirs (restored on the encoder)."""
    tokenizer = encoder.tokenizer
    saved = tokenizer.model_max_length
    tokenizer.model_max_length = encoder.max_seq_length
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.model_max_length = saved


def _publish(staging: Path, out: Path) -> None:
    """Move the finished folder to ``out``; an existing ``out`` (``--overwrite``) is replaced only
    now, and removed only once the new one is in place."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def describe_cut(encoder, layers: int, dim: int, normalize: bool, names: list[str], graph) -> dict[str, Any]:
    """What ``onnx_cut.json`` says about the cut (and the card shows)."""
    import onnx
    import onnxruntime

    import mrl

    heads = encoder.exit_heads
    return {
        "source": str(encoder.name_or_path),
        "layers": layers,
        "num_layers": encoder.num_layers,
        "dim": dim,
        "full_dim": encoder.dim,
        "pooling": encoder.pooling,
        "exit_head": bool(heads and str(layers) in heads),
        "head": [type(m).__name__ for m in encoder.head] if encoder.head is not None else [],
        "normalize": normalize,
        "max_seq_length": encoder.max_seq_length,
        "do_lower_case": encoder.do_lower_case,
        "inputs": names,
        "output": OUTPUT_NAME,
        "opset": next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")),
        "versions": {
            "mrl": mrl.__version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }


def measure_parity(
    encoder, folder: Path, cut: dict[str, Any], sts: tuple | None, threads: int | None
) -> dict[str, Any]:
    """Cosine of ONNX Runtime's embedding (fp32, and int8 if exported) to the PyTorch encoder's,
    per text (min, mean), on `CHECK_TEXTS` or every text of ``sts`` (then with the Spearman x100
    of each)."""
    texts = [*sts[0], *sts[1]] if sts else CHECK_TEXTS
    threads = threads or torch.get_num_threads()
    reference = encoder.encode(
        texts, batch_size=32, layers=cut["layers"], dim=cut["dim"], normalize=cut["normalize"]
    ).numpy()  # (N, dim)
    result: dict[str, Any] = {"texts": len(texts), "reference": "mrl.model.Encoder.encode (PyTorch)"}
    runs = {"onnx": False, **({"onnx_int8": True} if cut["int8"] else {})}
    if sts:
        result["spearman"] = {"pytorch": sts_spearman(reference, sts[2])}
    for name, int8 in runs.items():
        emb = OnnxEncoder(folder, int8=int8, threads=threads).encode(texts)
        cos = cosines(emb, reference)
        result[name] = {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}
        if sts:
            result["spearman"][name] = sts_spearman(emb, sts[2])
    return result


# --------------------------------------------------------------------------------------------
# The card
# --------------------------------------------------------------------------------------------


def usage_snippet(folder: str, cut: dict[str, Any]) -> str:
    """The card's Python: tokenizer files + ONNX Runtime, no torch and no mrl."""
    lower = (
        "texts = [t.lower() for t in texts]  # the model lower-cases text first\n"
        if cut["do_lower_case"]
        else ""
    )
    unit = "unit vectors: cosine = dot product" if cut["normalize"] else "raw: normalise before a cosine"
    return f"""import onnxruntime as ort
from transformers import AutoTokenizer

folder = "{folder}"
tokenizer = AutoTokenizer.from_pretrained(folder)
session = ort.InferenceSession(f"{{folder}}/{MODEL_FILE}", providers=["CPUExecutionProvider"])
texts = ["A man is playing a guitar.", "Someone plays music."]
{lower}batch = tokenizer(texts, padding=True, truncation=True, return_tensors="np")
inputs = {{i.name: batch[i.name] for i in session.get_inputs()}}
emb = session.run(None, inputs)[0]  # (2, {cut["dim"]}) float32, {unit}
"""


SPEARMAN_COLUMNS = (("PyTorch", "pytorch"), ("ONNX Runtime", "onnx"), ("ONNX Runtime int8", "onnx_int8"))


def card_text(cut: dict[str, Any], folder: str) -> str:
    """README.md of the exported ``folder``: what the graph computes, the parity measured, usage."""
    parity = cut["parity"]
    head = ", ".join(cut["head"]) if cut["head"] else "none"
    exit_head = f"depth {cut['layers']}'s, inside the graph" if cut["exit_head"] else "none"
    normalised = "yes: unit vectors (cosine = dot product)" if cut["normalize"] else "no: the raw prefix"
    inputs = ", ".join(f"`{name}`" for name in cut["inputs"])
    versions = ", ".join(f"{k} {v}" for k, v in cut["versions"].items())
    rows = [
        ("source", f"`{cut['source']}`"),
        ("blocks", f"the first {cut['layers']} of {cut['num_layers']}"),
        ("dims", f"the first {cut['dim']} of {cut['full_dim']}"),
        ("pooling", cut["pooling"]),
        ("exit head", exit_head),
        ("head after pooling", head),
        ("normalised", normalised),
        ("max sequence length", f"{cut['max_seq_length']} tokens (the tokenizer files truncate there)"),
        ("inputs", f"{inputs}: (batch, sequence) int64, both axes dynamic"),
        ("output", f"`{cut['output']}`: (batch, {cut['dim']}) float32"),
        ("files", f"`{MODEL_FILE}`" + (f", `{INT8_FILE}` (dynamic int8 weights)" if cut["int8"] else "")),
        ("opset, versions", f"{cut['opset']}; {versions}"),
    ]
    table = "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])
    checks = [
        f"| {name} | {parity[key]['cosine_min']:.7f} | {parity[key]['cosine_mean']:.7f} |"
        for name, key in (("ONNX Runtime, fp32", "onnx"), ("ONNX Runtime, int8", "onnx_int8"))
        if key in parity
    ]
    text = f"""---
library_name: "onnx"
pipeline_tag: "sentence-similarity"
tags: ["onnx", "matryoshka", "sentence-embeddings", "mrl"]
---

# ONNX: {cut["layers"]} blocks, {cut["dim"]} dims

One ONNX graph computing what `Encoder("{cut["source"]}").encode(texts, layers={cut["layers"]}, \
dim={cut["dim"]}{"" if cut["normalize"] else ", normalize=False"})` computes (`python -m mrl.onnx_export`).

{table}

## Parity at export

Cosine to the PyTorch encoder's embedding on {parity["texts"]} texts (the export is refused below
{PARITY_MIN_COSINE}):

| | min | mean |
|---|---|---|
{chr(10).join(checks)}
"""
    if "spearman" in parity:
        named = [(n, k) for n, k in SPEARMAN_COLUMNS if k in parity["spearman"]]
        text += "\nSpearman x100 of the scored set's pairs (`--sts`):\n\n"
        text += "| | " + " | ".join(n for n, _ in named) + " |\n|---|" + "---|" * len(named) + "\n"
        text += "| Spearman | " + " | ".join(f"{parity['spearman'][k]:.2f}" for _, k in named) + " |\n"
    text += f"\n## Usage\n\n```python\n{usage_snippet(folder, cut)}```\n"
    if cut["int8"]:
        text += f"\nFor the int8 variant, load `{INT8_FILE}` instead.\n"
    return text


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from mrl.runtime import OneLineParser

    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="model folder, training run folder, or hub id (as eval.py --model)")
    parser.add_argument(
        "out", help="folder to create (model.onnx, tokenizer files, onnx_cut.json, README.md)"
    )
    parser.add_argument("--layers", type=int, help="transformer blocks to keep (default: all)")
    parser.add_argument("--dim", type=int, help="embedding dims to keep (default: all)")
    parser.add_argument(
        "--int8", action="store_true", help="also write model_int8.onnx (dynamic int8 weights)"
    )
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--no-normalize", action="store_true", help="output the raw prefix, not unit vectors")
    parser.add_argument("--sts", help="a scored pairs file: parity on its texts, Spearman on the card")
    parser.add_argument("--max-seq-length", type=int, help="override the model's maximum length")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT folder")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from mrl.model import Encoder
    from mrl.rundir import check_writable
    from mrl.runtime import main_error, quiet_transformers

    args = build_parser().parse_args(argv)
    # ---- every flag is checked before the model is loaded ----
    for flag, value in (("--layers", args.layers), ("--dim", args.dim), ("--opset", args.opset),
                        ("--max-seq-length", args.max_seq_length)):  # fmt: skip
        if value is not None and value < 1:
            main_error(f"{flag} {value}: must be at least 1")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        main_error(f"OUT {out} exists; choose another folder or pass --overwrite")
    try:
        check_writable(out, "OUT")
        check_exporter()
    except ValueError as error:
        main_error(str(error))
    except ImportError as error:
        main_error(str(error).splitlines()[0])
    sts = None
    if args.sts:
        from mrl.data import DataError, load_source

        try:
            examples = load_source(args.sts, "test")
        except (DataError, ImportError, OSError) as error:
            main_error(f"--sts {args.sts}: {str(error).splitlines()[0]}")
        if examples.n_columns != 2 or examples.scores is None:
            main_error(f"--sts {args.sts}: needs 2 text columns and a score column")
        sts = (list(examples.columns[0]), list(examples.columns[1]), list(examples.scores))
    quiet_transformers()
    try:
        encoder = Encoder(args.model, max_seq_length=args.max_seq_length)
    except (OSError, ValueError) as error:
        main_error(f"--model: {str(error).splitlines()[0]}")
    if encoder.name_or_path != args.model:
        print(f"note: {args.model} is a training run; exporting its final model {encoder.name_or_path}")
    try:
        check_cut(encoder, args.layers, args.dim)
    except ValueError as error:
        main_error(str(error))
    try:
        cut = export_cut(
            encoder, out, args.layers, args.dim, normalize=not args.no_normalize, int8=args.int8,
            opset=args.opset, overwrite=args.overwrite, sts=sts,
        )  # fmt: skip
    except ValueError as error:
        main_error(str(error).splitlines()[0])
    parity = cut["parity"]
    blocks = f"{cut['layers']} block" + ("s" if cut["layers"] > 1 else "")
    line = f"wrote {out}: the first {blocks}, {cut['dim']} dims; cosine to PyTorch"
    line += f" min {parity['onnx']['cosine_min']:.7f}"
    if "onnx_int8" in parity:
        line += f" (int8: {parity['onnx_int8']['cosine_min']:.5f})"
    print(line + f" on {parity['texts']} texts")
    for name, value in parity.get("spearman", {}).items():
        print(f"  Spearman x100 {name}: {value:.2f}")
    return cut


if __name__ == "__main__":
    main()

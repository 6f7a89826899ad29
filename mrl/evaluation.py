"""STS evaluation per Matryoshka dim (and per layer for 2D models), encoding each text once.

Every (layer, dim) cell is scored from the same forward pass: the texts are encoded once at full
width (all layers at once for 2D), then each cell slices and re-normalises (`mrl.losses.prefix`).
Scores are Spearman and Pearson correlations x 100 between gold scores and cosine similarity;
Spearman is the primary number. Retention at d is score(d) / score(full dim).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from torch import Tensor

from mrl.losses import prefix
from mrl.quantize import (
    PRECISIONS,
    bytes_per_vector,
    calibrate,
    dequantize_scalar,
    pack_bits,
    paired_hamming,
    quantize_scalar,
)


def pair_similarity(emb1: Tensor, emb2: Tensor, dim: int, precision: str = "float32") -> np.ndarray:
    """(N,) similarity of each pair's ``dim``-prefixes when both sides are stored at ``precision``.

    float32: cosine of the unit prefixes. int8/uint8: cosine of the dequantised codes, with
    per-dimension ranges calibrated on this set's own unit prefixes (both sides: the set is the
    corpus). binary/ubinary: ``1 - 2 * hamming / dim`` of the sign bits, which is the cosine of the
    +-1 sign vectors. emb1, emb2: (N, D) un-normalised embeddings of the two sides.
    """
    u1, u2 = prefix(emb1.float(), dim), prefix(emb2.float(), dim)  # (N, dim) unit prefixes
    if precision == "float32":
        return (u1 * u2).sum(-1).numpy().astype(np.float64)
    if precision in ("int8", "uint8"):
        ranges = calibrate(torch.cat([u1, u2]))
        v1 = dequantize_scalar(quantize_scalar(u1, ranges, precision), ranges)
        v2 = dequantize_scalar(quantize_scalar(u2, ranges, precision), ranges)
        return torch.nn.functional.cosine_similarity(v1, v2, dim=-1).numpy().astype(np.float64)
    if precision in ("binary", "ubinary"):
        distance = paired_hamming(pack_bits(u1, precision), pack_bits(u2, precision))  # (N,)
        return 1 - 2 * distance.numpy().astype(np.float64) / dim
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def correlations(
    emb1: Tensor, emb2: Tensor, gold: Sequence[float], dim: int, precision: str = "float32"
) -> dict[str, float]:
    """Spearman and Pearson x100 of the pairs' similarity (`pair_similarity`: the cosine of
    prefix(emb1, dim) and prefix(emb2, dim) at float32) against ``gold``.

    emb1, emb2: (N, D) un-normalised embeddings of the two sides of N pairs.
    """
    similarity = pair_similarity(emb1, emb2, dim, precision)
    gold = np.asarray(gold, dtype=np.float64)
    return {
        "spearman": float(spearmanr(gold, similarity).statistic) * 100,
        "pearson": float(pearsonr(gold, similarity).statistic) * 100,
    }


def encode_layers(
    encoder,
    texts: Sequence[str],
    layers: Sequence[int] | None,
    batch_size: int = 64,
    show_progress: bool = False,
) -> Tensor:
    """Raw full-width embeddings of ``texts`` at each of ``layers`` (1-based), all from one pass:
    (len(layers), N, D); ``layers=None`` gives the final layer only, (1, N, D)."""
    if layers is None:
        return encoder.encode(texts, batch_size=batch_size, show_progress=show_progress, normalize=False)[
            None
        ]
    bad = [layer for layer in layers if not 1 <= layer <= encoder.num_layers]
    if bad:
        raise ValueError(f"layers {bad} are outside 1..{encoder.num_layers}")
    every = encoder.encode(
        texts, batch_size=batch_size, all_layers=True, show_progress=show_progress, normalize=False
    )  # (L, N, D)
    return every[[layer - 1 for layer in layers]]


def embed_pairs(
    encoder,
    sentences1: Sequence[str],
    sentences2: Sequence[str],
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
    show_progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Raw embeddings of both sides of N pairs at each of ``layers`` (1-based; None = the final
    layer only), every distinct text encoded once, all layers from one pass: two (Lsel, N, D)."""
    if len(sentences1) != len(sentences2):
        raise ValueError("sentences1 and sentences2 must have the same length")
    unique = list(dict.fromkeys([*sentences1, *sentences2]))
    row = {text: i for i, text in enumerate(unique)}
    index1 = torch.tensor([row[t] for t in sentences1], dtype=torch.long)
    index2 = torch.tensor([row[t] for t in sentences2], dtype=torch.long)
    emb = encode_layers(encoder, unique, layers, batch_size, show_progress)  # (Lsel, U, D)
    return emb[:, index1], emb[:, index2]


def score_pairs(
    emb1: Tensor,
    emb2: Tensor,
    scores: Sequence[float],
    dims: Sequence[int],
    layers: Sequence[int | None],
    precisions: Sequence[str] = ("float32",),
) -> list[dict[str, float]]:
    """One record per (layer, dim, precision) of N scored pairs: ``{"layer", "dim", "precision",
    "bytes", "spearman", "pearson", "retention"}``, bytes being one stored vector's
    (`mrl.quantize.bytes_per_vector`) and retention the Spearman over the float32 Spearman at the
    layer's largest evaluated dim (None when float32 is not scored). Training scores float32 only.

    emb1, emb2: (Lsel, N, D) un-normalised embeddings of the two sides (`embed_pairs`, or vectors
    from anywhere); layers labels their Lsel rows (None: vectors that are no encoder's layer).
    """
    records = []
    for layer, layer1, layer2 in zip(layers, emb1, emb2):
        cells = [
            {
                "layer": layer,
                "dim": d,
                "precision": precision,
                "bytes": bytes_per_vector(d, precision),
                **correlations(layer1, layer2, scores, d, precision),
            }
            for d in dims
            for precision in precisions
        ]
        full = [c["spearman"] for c in cells if c["dim"] == max(dims) and c["precision"] == "float32"]
        for cell in cells:
            if not full:
                cell["retention"] = None
            else:
                cell["retention"] = cell["spearman"] / full[0] if full[0] else float("nan")
        records.extend(cells)
    return records


def evaluate_sts(
    encoder,
    sentences1: Sequence[str],
    sentences2: Sequence[str],
    scores: Sequence[float],
    dims: Sequence[int],
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
    show_progress: bool = False,
) -> list[dict[str, float]]:
    """Score an STS set at every dim (and every listed layer, 1-based; None = final layer only).

    encoder: an `mrl.model.Encoder` (anything with ``encode(texts, batch_size, all_layers)``,
    ``num_layers``). Unique texts are encoded once (`embed_pairs`). Returns one record per
    (layer, dim) (`score_pairs`): ``{"layer", "dim", "spearman", "pearson", "retention"}``.
    """
    if not (len(sentences1) == len(sentences2) == len(scores)):
        raise ValueError("sentences1, sentences2 and scores must have the same length")
    emb1, emb2 = embed_pairs(encoder, sentences1, sentences2, layers, batch_size, show_progress)
    return score_pairs(emb1, emb2, scores, dims, layers or [encoder.num_layers])


def record_bytes(record: dict) -> int:
    """A record's bytes per stored vector: its ``bytes``, or for a record written before records
    had one (a float32 record of an older eval_dev.json) `bytes_per_vector` of its dim."""
    return record.get("bytes") or bytes_per_vector(record["dim"], record.get("precision", "float32"))


def format_table(records: list[dict[str, float]], metric: str = "spearman") -> str:
    """A Markdown table: one row per layer, one column per dim (headed with its bytes per vector,
    ``d=64 (256 B)``), ``metric`` with retention in %. With several precisions a row per (layer,
    precision), and each cell shows its own bytes.

    records: as returned by `evaluate_sts` / `score_pairs`.
    """
    dims = sorted({r["dim"] for r in records}, reverse=True)
    layers = sorted({r["layer"] for r in records}, reverse=True)
    precisions = list(dict.fromkeys(r.get("precision", "float32") for r in records))
    cell = {(r["layer"], r.get("precision", "float32"), r["dim"]): r for r in records}

    def label(layer):  # None: vectors from no chosen depth (an adaptor on the frozen model's output)
        return "all" if layer is None else layer

    def text(r, with_bytes):
        retention = [] if r["retention"] is None else [f"{100 * r['retention']:.1f}%"]
        extra = ", ".join(retention + ([f"{record_bytes(r)} B"] if with_bytes else []))
        return f"{r[metric]:.2f}" + (f" ({extra})" if extra else "")

    if len(precisions) == 1:
        (precision,) = precisions
        first = {}  # bytes depend on (dim, precision) only: the header says them once
        for r in records:
            first.setdefault(r["dim"], r)
        heads = [f"d={d} ({record_bytes(first[d])} B)" for d in dims]
        lines = ["| layer | " + " | ".join(heads) + " |", "|---|" + "---|" * len(dims)]
        for layer in layers:
            values = [text(cell[key], False) if (key := (layer, precision, d)) in cell else "" for d in dims]
            lines.append(f"| {label(layer)} | " + " | ".join(values) + " |")
        return "\n".join(lines)
    lines = [
        "| layer | precision | " + " | ".join(f"d={d}" for d in dims) + " |",
        "|---|---|" + "---|" * len(dims),
    ]
    for layer in layers:
        for precision in precisions:
            values = [text(cell[key], True) if (key := (layer, precision, d)) in cell else "" for d in dims]
            lines.append(f"| {label(layer)} | {precision} | " + " | ".join(values) + " |")
    return "\n".join(lines)

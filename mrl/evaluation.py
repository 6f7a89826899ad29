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


def correlations(emb1: Tensor, emb2: Tensor, gold: Sequence[float], dim: int) -> dict[str, float]:
    """Spearman and Pearson x100 of cos(prefix(emb1, dim), prefix(emb2, dim)) against ``gold``.

    emb1, emb2: (N, D) un-normalised embeddings of the two sides of N pairs.
    """
    cosine = (prefix(emb1.float(), dim) * prefix(emb2.float(), dim)).sum(-1).numpy().astype(np.float64)
    gold = np.asarray(gold, dtype=np.float64)
    return {
        "spearman": float(spearmanr(gold, cosine).statistic) * 100,
        "pearson": float(pearsonr(gold, cosine).statistic) * 100,
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
    emb1: Tensor, emb2: Tensor, scores: Sequence[float], dims: Sequence[int], layers: Sequence[int | None]
) -> list[dict[str, float]]:
    """One record per (layer, dim) of N scored pairs: ``{"layer", "dim", "spearman", "pearson",
    "retention"}``, retention being the Spearman at that dim over the Spearman at the layer's
    largest evaluated dim.

    emb1, emb2: (Lsel, N, D) un-normalised embeddings of the two sides (`embed_pairs`, or vectors
    from anywhere); layers labels their Lsel rows (None: vectors that are no encoder's layer).
    """
    records = []
    for layer, layer1, layer2 in zip(layers, emb1, emb2):
        cells = [{"layer": layer, "dim": d, **correlations(layer1, layer2, scores, d)} for d in dims]
        full = cells[int(np.argmax(dims))]["spearman"]
        for cell in cells:
            cell["retention"] = cell["spearman"] / full if full else float("nan")
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


def format_table(records: list[dict[str, float]], metric: str = "spearman") -> str:
    """A Markdown table: one row per layer, one column per dim, ``metric`` with retention in %.

    records: as returned by `evaluate_sts`.
    """
    dims = sorted({r["dim"] for r in records}, reverse=True)
    layers = sorted({r["layer"] for r in records}, reverse=True)
    cell = {(r["layer"], r["dim"]): r for r in records}
    lines = [
        "| layer | " + " | ".join(f"d={d}" for d in dims) + " |",
        "|---|" + "---|" * len(dims),
    ]
    for layer in layers:
        values = []
        for d in dims:
            r = cell.get((layer, d))
            values.append("" if r is None else f"{r[metric]:.2f} ({100 * r['retention']:.1f}%)")
        # layer None: vectors that came from no chosen depth (an adaptor on the frozen model's output)
        lines.append(f"| {'all' if layer is None else layer} | " + " | ".join(values) + " |")
    return "\n".join(lines)

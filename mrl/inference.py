"""Inference: texts -> embeddings without a graph, sliced, normalised and optionally quantised.

`encode` (what `Encoder.encode` runs) tokenises once, batches texts of similar length together,
runs the encoder (only its first k blocks with ``layers=k``, see `mrl.blocks.truncated_blocks`),
puts the rows back in input order, then keeps the Matryoshka prefix and normalises it (slice
first, then normalise, as `mrl.losses.prefix` does), and quantises it to int8 / uint8 codes or
sign bits (`mrl.quantize`) if asked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mrl.blocks import truncated_blocks
from mrl.losses import prefix
from mrl.progress import progress
from mrl.quantize import PRECISIONS, Ranges, calibrate, quantize

if TYPE_CHECKING:
    from mrl.model import Encoder


def encode(
    encoder: Encoder,
    texts: Sequence[str],
    batch_size: int = 64,
    all_layers: bool = False,
    show_progress: bool = False,
    *,
    dim: int | None = None,
    layers: int | None = None,
    normalize: bool = True,
    precision: str = "float32",
    calibration: Ranges | Tensor | None = None,
) -> Tensor:
    """Embed texts without a graph, in input order, on the CPU.

    With the defaults: the full-width, unit-length float32 embedding (N, D) (or every
    block's, (L, N, D), with ``all_layers``). ``normalize=False`` gives the raw pooled
    vector, which is what evaluation slices (it re-normalises each prefix itself).

    - ``layers=k`` runs only the first k transformer blocks (the rest are not executed, see
      `truncated_blocks`) and pools the model's ``last_hidden_state``; with ``all_layers`` the
      result is (k, N, D).
    - ``dim=d`` keeps the first d values (a Matryoshka prefix); ``normalize=True`` then scales
      each vector to unit length, **after** the slice, as `mrl.losses.prefix` does.
    - ``precision``: "float32", "int8"/"uint8" (codes on 256 levels with per-dimension ranges,
      `mrl.quantize`), "binary"/"ubinary" (sign bits packed 8 per byte: (N, ceil(d / 8))).
      For int8/uint8, ``calibration`` is either `mrl.quantize.Ranges` of width d, or a sample of
      embeddings (M, >= d) that goes through the same slice/normalise as the output (so pass
      raw full-width embeddings of a corpus sample). **If None, the ranges are calibrated on
      the texts being encoded**, which makes each call's codes incomparable with another
      call's: calibrate once and pass the ranges when encoding queries and docs separately.
      Quantised outputs are int8/uint8 tensors; not available with ``all_layers``.

    Texts are batched by length (less padding, same result), then put back in order.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if all_layers and precision != "float32":
        raise ValueError("all_layers returns float32 per-layer embeddings; quantise one layer at a time")
    if dim is not None and not 1 <= dim <= encoder.dim:
        raise ValueError(f"dim must be in 1..{encoder.dim}, got {dim}")
    if layers is not None and not 1 <= layers <= encoder.num_layers:
        raise ValueError(f"layers must be in 1..{encoder.num_layers}, got {layers}")
    if calibration is not None and precision not in ("int8", "uint8"):
        raise ValueError(f"calibration is only used by int8/uint8, not {precision!r}")

    width = dim or encoder.dim
    n_layers = layers or encoder.num_layers
    was_training = encoder.training
    encoder.eval()
    # Tokenise everything once and batch by token count: batches of equal lengths carry
    # (almost) no padding, which pooling ignores anyway, so only the speed changes.
    ids = encoder.token_ids(texts) if len(texts) else []
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]), reverse=True)
    chunks = []
    truncation = truncated_blocks(encoder.model, layers) if layers else contextlib.nullcontext()
    try:
        with truncation, torch.inference_mode():
            starts = range(0, len(order), batch_size)
            batches = [order[start : start + batch_size] for start in starts]
            tokens = [sum(len(ids[i]) for i in rows) for rows in batches]
            for rows in progress(batches, [len(r) for r in batches], tokens, "encode", show=show_progress):
                batch = encoder.pad([ids[i] for i in rows])
                features = {k: v.to(encoder.device) for k, v in batch.items()}
                chunks.append(encoder(features, all_layers=all_layers).float().cpu())
    finally:
        encoder.train(was_training)
    # Built outside inference mode: the result is an ordinary tensor that autograd may use
    # (e.g. as distillation targets).
    if chunks:
        sorted_emb = torch.cat(chunks, dim=-2)  # (..., N, D) in length order
        emb = torch.empty_like(sorted_emb)
        emb[..., order, :] = sorted_emb
    else:
        emb = torch.empty((n_layers, 0, encoder.dim) if all_layers else (0, encoder.dim))
    emb = _slice_and_normalize(emb, width, normalize)  # (..., N, d)
    if precision in ("int8", "uint8"):
        ranges = _resolve_calibration(calibration, emb, width, normalize)
        return quantize(emb, precision, ranges)
    return quantize(emb, precision)


def _slice_and_normalize(emb: Tensor, width: int, normalize: bool) -> Tensor:
    """(..., D) -> (..., width): the Matryoshka prefix (`mrl.losses.prefix`), or the raw slice."""
    return (prefix(emb, width) if normalize else emb[..., :width]).contiguous()


def _resolve_calibration(
    calibration: Ranges | Tensor | None, emb: Tensor, width: int, normalize: bool
) -> Ranges:
    """Ranges for int8/uint8: given ranges (width must match), a sample put through the same
    slice/normalise as ``emb``, or, with None, ``emb`` itself."""
    if calibration is None:
        if emb.shape[0] == 0:  # nothing to calibrate on, and nothing to quantise
            return Ranges(low=torch.zeros(width), high=torch.zeros(width))
        return calibrate(emb)
    if isinstance(calibration, Ranges):
        if calibration.dim != width:
            raise ValueError(f"calibration ranges have width {calibration.dim}, the output {width}")
        return calibration
    if isinstance(calibration, (list, tuple)) and any(isinstance(item, str) for item in calibration):
        raise ValueError(
            "calibration takes Ranges or raw embeddings of a corpus sample (M, >= d), e.g. "
            "encoder.encode(sample_texts, normalize=False), not the texts themselves"
        )
    sample = torch.as_tensor(calibration).float()
    if sample.ndim != 2 or sample.shape[-1] < width:
        raise ValueError(f"calibration sample must be (M, >= {width}), got {tuple(sample.shape)}")
    # Normalising is scale-invariant, so a sample that was already sliced/normalised is unchanged.
    return calibrate(_slice_and_normalize(sample, width, normalize))

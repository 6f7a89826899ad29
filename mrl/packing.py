"""Padding-free batches: run a batch exactly as drawn without computing its padding.

A random batch mixes short and long texts; padded to its longest, most of the computed tokens
can be padding (2.4x the real ones on STS-B train). Two ways to skip them, both keeping the
batch (and so what the loss sees) as drawn; the embeddings equal the padded forward's up to
float rounding (tests/test_packing.py checks values and gradients):

- **packing** (`plan_rows` + `pack`): the texts are laid end to end into a few rows of length T
  (first-fit decreasing), each text's position ids restart at the model's first position, and a
  block-diagonal (R, 1, T, T) attention mask keeps every token inside its own text. Linear layers
  then compute only real tokens (plus a little slack at row ends); attention costs R x T^2 instead
  of sum(len^2), which is why there are several rows, not one: `plan_rows` picks the row length
  that minimises ``R * T * (1 + T / (6 * hidden))`` (linear FLOPs per token are ~24 h^2 per layer,
  attention FLOPs ~4 h T, hence the ratio T / 6h). It needs a model whose position ids and
  attention mask we can pass (`packing_support`): BERT and RoBERTa-like models (SDPA or eager
  attention) and MPNet, whose relative position bias depends only on the distance between two
  tokens, which packing leaves unchanged within a text.
- **adaptive length buckets** (`plan_buckets`): any model. The texts are sorted by length and
  cut into contiguous sub-batches, each padded to its own longest; the number of sub-batches and
  the cut points minimise the same per-token cost plus ``overhead`` tokens per extra forward call
  (exact dynamic programme).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# First position id of a text: BERT counts from 0; RoBERTa-style models from padding_idx + 1.
_POSITION_START = {"bert": "zero", "roberta": "pad+1", "xlm-roberta": "pad+1", "mpnet": "pad+1"}
PADDING_FREE_MODES = ("off", "buckets", "pack", "auto")


def token_cost(n_rows: int, width: int, hidden: int) -> float:
    """Relative compute of a forward over (n_rows, width) tokens: linear layers + attention."""
    return n_rows * width * (1.0 + width / (6.0 * hidden))


def packing_support(model) -> str | None:
    """None if `pack` works for this transformers model, else the reason it does not."""
    config = model.config
    kind = _POSITION_START.get(config.model_type)
    if kind is None:
        return f"model type {config.model_type!r} (packing knows bert, roberta, xlm-roberta, mpnet)"
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return f"position_embedding_type {config.position_embedding_type!r}"
    attention = getattr(config, "_attn_implementation", None) or "eager"
    if config.model_type != "mpnet" and attention not in ("sdpa", "eager"):
        return f"attention implementation {attention!r} (packing passes a 4D mask: sdpa or eager)"
    if getattr(config, "is_decoder", False):
        return "a decoder (causal) model"
    return None


def plan_buckets(lengths: Sequence[int], hidden: int, overhead: float = 32.0) -> list[list[int]]:
    """Sub-batches (lists of row indices, longest first) minimising sum of `token_cost` + overhead each.

    lengths: real token count of each of the N texts. Cuts are searched over the texts sorted by
    length (a bucket is a contiguous run of them); exact O(N^2) dynamic programme over cut points
    where the length changes.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    sorted_len = [lengths[i] for i in order]
    n = len(order)
    # A bucket may start only where the length changes (or at 0): same cost, far fewer cuts.
    starts = [i for i in range(n) if i == 0 or sorted_len[i] != sorted_len[i - 1]] + [n]
    best = {n: (0.0, None)}
    for a in reversed(starts[:-1]):
        options = []
        for b in starts:
            if b <= a:
                continue
            cost = token_cost(b - a, sorted_len[a], hidden) + overhead + best[b][0]
            options.append((cost, b))
        best[a] = min(options)
    buckets, a = [], 0
    while a < n:
        b = best[a][1]
        buckets.append(order[a:b])
        a = b
    return buckets


def _first_fit(order: list[int], lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: texts (longest first) into rows of at most ``capacity`` tokens."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        for r, room in enumerate(free):
            if room >= lengths[i]:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows


def plan_rows(lengths: Sequence[int], hidden: int) -> list[list[int]]:
    """Packed rows (lists of text indices) minimising `token_cost` of (rows, longest row).

    Row capacities tried: the longest text times 1, 1.5, 2, 3, 4, 6, ... up to all texts in one row.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    longest, total = lengths[order[0]], sum(lengths)
    best, capacity, factor = None, longest, 1.0
    while True:
        rows = _first_fit(order, lengths, capacity)
        width = max(sum(lengths[i] for i in row) for row in rows)
        cost = token_cost(len(rows), width, hidden)
        if best is None or cost < best[0]:
            best = (cost, rows)
        if capacity >= total:
            return best[1]
        factor = factor * 1.5 if factor < 2 else factor + (1 if factor < 4 else 2)
        capacity = min(total, int(longest * factor))


def pack(
    features: dict[str, Tensor], lengths: Sequence[int], rows: list[list[int]], model
) -> tuple[dict[str, Tensor], Tensor]:
    """Lay the texts of a padded batch end to end in ``rows``.

    features: (N, S) input_ids, attention_mask (and token_type_ids), padded right or left.
    lengths: real tokens per text (N,); rows: text indices per packed row (from `plan_rows`).
    Returns the model inputs for the packed batch, each (R, T), with ``position_ids`` restarting
    per text and a 4D block-diagonal ``attention_mask`` (R, 1, T, T) (bool for SDPA, additive for
    eager attention; slack tokens at a row's end attend only to each other), and ``index`` (N, S):
    the flat position in the (R * T) packed tokens of every padded-layout token (padding maps to
    some real position of its own text and is masked by the pooling). ``hidden.flatten(-3, -2)
    [..., index, :]`` puts packed states (..., R, T, D) back in the padded layout (..., N, S, D).
    """
    mask = features["attention_mask"]
    device = mask.device
    n_rows = len(rows)
    width = max(sum(lengths[i] for i in row) for row in rows)
    base = [0] * len(lengths)
    for r, row in enumerate(rows):
        offset = r * width
        for i in row:
            base[i] = offset
            offset += lengths[i]
    base_t = torch.tensor(base, dtype=torch.long, device=device)  # (N,) first flat slot of each text
    real = mask.bool()  # (N, S)
    within = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (N, S) rank of each real token in its text
    index = base_t[:, None] + within  # (N, S)
    flat_real = index[real]  # (sum len,) where the real tokens go

    config = model.config
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    # RoBERTa-style position ids start after the embeddings' padding index (MPNet fixes it at 1,
    # whatever the config says).
    padding_idx = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    padding_idx = pad_id if padding_idx is None else padding_idx
    start = 0 if _POSITION_START[config.model_type] == "zero" else padding_idx + 1
    total = n_rows * width
    packed = {}
    ids = torch.full((total,), pad_id, dtype=features["input_ids"].dtype, device=device)
    ids[flat_real] = features["input_ids"][real]
    packed["input_ids"] = ids.view(n_rows, width)
    if "token_type_ids" in features:
        types = torch.zeros(total, dtype=features["token_type_ids"].dtype, device=device)
        types[flat_real] = features["token_type_ids"][real]
        packed["token_type_ids"] = types.view(n_rows, width)
    positions = torch.full((total,), start, dtype=torch.long, device=device)
    positions[flat_real] = within[real] + start
    packed["position_ids"] = positions.view(n_rows, width)
    segment = torch.full((total,), -1, dtype=torch.long, device=device)  # -1: slack at a row's end
    segment[flat_real] = torch.arange(len(lengths), device=device).repeat_interleave(
        torch.as_tensor(lengths, device=device)
    )
    segment = segment.view(n_rows, width)
    allowed = segment[:, None, :, None] == segment[:, None, None, :]  # (R, 1, T, T)
    if config.model_type != "mpnet" and getattr(config, "_attn_implementation", None) == "sdpa":
        packed["attention_mask"] = allowed
    else:  # eager attention adds the mask to the scores
        dtype = next(model.parameters()).dtype
        packed["attention_mask"] = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    return packed, index

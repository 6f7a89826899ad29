"""The word embeddings' gradient without a (vocab, D) allocation and zero-fill every step.

Why: autograd's embedding backward allocates a fresh dense (vocab, D) gradient and zero-fills it
on every backward: 47 MB for BERT's 30522 x 384 table, whose zero-fill alone took 30 ms of a
~600 ms CPU step in the profile, and whose fresh pages the kernel faults in on top of that
(76-106 ms a step in all, experiments/results/2026-12-01_step_cost.md), although a batch of 16
pairs looks up a few hundred rows. Here the embedding emits a sparse gradient (the rows it looked
up), autograd adds it in place into a dense buffer that lives across steps, and after the
optimizer step only the rows looked up are zeroed again.

Nothing the model learns changes: clipping, the loss scaler, the optimizer and the logs see a dense
gradient of the usual shape. When each backward looks the table up once (packed or unsplit
batches) it is bit for bit the gradient autograd builds: the same additions, row by row, in token
order (tests/test_sparse_grad.py). When a backward covers several lookups (adaptive buckets,
Encoder(length_buckets=K), gradient accumulation, GradCache, --distill-data batches) the sums are the same
up to float rounding: a1 + a2 + b1 + b2 in one running sum instead of (a1 + a2) + (b1 + b2) for a
row two lookups touch.

The row-wise reset relies on one rule: between a backward and the reset, only operations that
scale the whole gradient by one factor touch it (clipping, the loss scaler's unscale), so rows no
lookup reached stay exactly zero, unless the factor is NaN, which `reset` detects. A gradient hook
that writes other rows (noise, a per-row edit) would break it: use --dense-embedding-grad then.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def why_not_sparse(model: nn.Module, device: torch.device, world_size: int, compiled: bool) -> str | None:
    """Why the buffer cannot be used for this run, or None when it can."""
    if device.type != "cpu":
        # On CUDA a cached allocation and a memset of 47 MB take microseconds: nothing to win.
        return "not on CPU"
    if world_size > 1:
        return "DDP decides at wrapping time whether to expect sparse gradients"
    if compiled:
        return "--compile"
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if type(embedding) is not nn.Embedding:
        return "the input embeddings are not a plain nn.Embedding"
    if not embedding.weight.requires_grad:
        return "the input embeddings are frozen"
    if embedding.max_norm is not None or embedding.scale_grad_by_freq:
        return "the embedding renormalises rows or scales gradients by frequency"
    # A table also used elsewhere (tied weights) gets dense gradients there: rows the lookups
    # never touched would then hold gradient that the row-wise reset would not clear.
    holders = [m for m in model.modules() if any(p is embedding.weight for p in m.parameters(recurse=False))]
    if len(holders) > 1:
        return "the embedding table is shared with another module"
    return None


class EmbeddingGradBuffer:
    """Keeps ``embedding.weight.grad`` a persistent dense buffer filled by sparse backwards.

    Call `reset` after every ``optimizer.zero_grad(set_to_none=True)``. It puts the buffer back
    as the gradient with the rows looked up since the last reset set to zero: the only rows a
    sparse backward can have written. Lookups are recorded by a forward pre-hook, only while
    autograd records (evaluation under no_grad adds nothing).
    """

    def __init__(self, embedding: nn.Embedding):
        self.embedding = embedding
        embedding.sparse = True  # backward: a sparse (vocab, D) tensor of the looked-up rows only
        self.buffer = torch.zeros_like(embedding.weight, memory_format=torch.contiguous_format)
        self.looked_up: list[Tensor] = []  # ids (any shape) of every lookup since the last reset
        embedding.register_forward_pre_hook(self._record, with_kwargs=True)
        embedding.weight.grad = self.buffer

    def _record(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if torch.is_grad_enabled():
            ids = args[0] if args else kwargs["input"]
            self.looked_up.append(ids.detach().flatten())

    def reset(self) -> None:
        """Zero the rows looked up since the last reset and make the buffer the gradient again."""
        if self.looked_up:
            rows = torch.cat(self.looked_up).unique()  # (R,) distinct token ids
            self.looked_up.clear()
            # Clipping multiplies the whole buffer by one coefficient: finite keeps the untouched
            # rows at zero, NaN (a non-finite norm, e.g. an fp16 overflow) reaches every row, and
            # then the looked-up rows show it too.
            if torch.isfinite(self.buffer.index_select(0, rows)).all():
                self.buffer.index_fill_(0, rows, 0.0)
            else:
                self.buffer.zero_()
        self.embedding.weight.grad = self.buffer

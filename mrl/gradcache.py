"""GradCache (Gao et al., 2021): a contrastive loss over a large batch in constant activation memory.

In-batch negatives get better with the batch size, but the encoder's activations grow with it.
GradCache splits the encoder work from the loss:

1. encode the batch in chunks **without** a graph, remembering each chunk's RNG state;
2. compute the loss on the detached embeddings and backward it to the embeddings only, giving
   ``G = dL / dE`` (N x D values, cheap);
3. re-encode each chunk **with** a graph under its saved RNG state (the same dropout masks) and
   backward the surrogate ``<E_chunk, G_chunk>``, whose parameter gradient is the chunk's share
   of ``dL / dtheta``. Summed over chunks this is the full-batch gradient.

The price is a second forward pass over the batch (about +1/3 compute). Unlike gradient
accumulation, which splits the batch into independent losses (fewer negatives per anchor), this
keeps every row's negatives from the whole batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class _RngState:
    """The global CPU generator's state and, for a CUDA device, that device's generator state."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def _chunk_rows(mask: Tensor, chunk_size: int | None, chunk_tokens: int | None) -> list[list[int]]:
    """Row indices of each chunk.

    By text count only: consecutive rows, ``chunk_size`` at a time. With a token budget: the rows
    sorted by length (longest first), each chunk taking rows while (its rows) x (its longest row)
    stays within ``chunk_tokens`` padded tokens (and within ``chunk_size`` rows when given); a
    row longer than the budget is a chunk of its own. Sorting keeps rows of similar length
    together, so the budget is spent on real tokens rather than on padding.
    """
    n = mask.shape[0]
    if chunk_tokens is None:
        return [list(range(start, min(start + chunk_size, n))) for start in range(0, n, chunk_size)]
    lengths = mask.sum(-1).tolist()
    order = sorted(range(n), key=lambda i: -lengths[i])
    chunks: list[list[int]] = []
    for i in order:
        current = chunks[-1] if chunks else None
        fits = (
            current is not None
            and (len(current) + 1) * lengths[current[0]] <= chunk_tokens
            and (chunk_size is None or len(current) < chunk_size)
        )
        if fits:
            current.append(i)
        else:
            chunks.append([i])
    return chunks


def _chunks(features: dict[str, Tensor], rows_per_chunk: list[list[int]]) -> list[dict[str, Tensor]]:
    """The (N, S) feature tensors' rows of each chunk, each chunk trimmed to its longest row.

    Only trailing columns that are padding in every row of the chunk are cut (right padding), so
    the real tokens keep their positions; pooling ignores padding, so the embeddings are those of
    the untrimmed batch. With left padding nothing is cut.
    """
    mask = features["attention_mask"]  # (N, S)
    out = []
    for rows in rows_per_chunk:
        index = torch.tensor(rows, device=mask.device)
        used = mask[index].any(dim=0).nonzero()  # columns holding a real token in some row
        width = int(used.max()) + 1 if used.numel() else 1
        out.append({k: v[index, :width] if v.dim() >= 2 else v[index] for k, v in features.items()})
    return out


def gradcache_step(
    encode: Callable[[dict[str, Tensor]], Tensor],
    features: dict[str, Tensor],
    chunk_size: int | None,
    loss_fn: Callable[[Tensor], tuple[Tensor, dict[str, Tensor]]],
    backward: Callable[[Tensor], Any] = lambda loss: loss.backward(),
    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    chunk_tokens: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One GradCache forward/backward over a batch; parameter gradients land in ``.grad``.

    encode: features of n rows -> embeddings with the text axis at -2: (n, D), or (L, n, D) with
        every block's embedding for 2D. Put the autocast context inside it.
    features: the tokenised batch, (N, S) tensors (N = C * B texts, column-major as the trainer
        tokenises them). It is split into consecutive chunks of ``chunk_size`` rows, each trimmed
        to its own longest row; or, with ``chunk_tokens``, into chunks of rows sorted by length
        holding at most that many padded tokens each (and at most ``chunk_size`` rows if given),
        so that memory follows tokens, not texts. The loss always sees the rows in input order.
    loss_fn: all N embeddings (..., N, D) -> ``(loss, terms)``; it unflattens the columns and
        applies the Matryoshka / 2D wrapper (and, under DDP, gathers across ranks).
    backward: how to backward the loss, e.g. ``lambda l: scaler.scale(l / grad_accum).backward()``;
        the re-encoded chunks then backward the (scaled) embedding gradient as it is.
    no_sync: DDP's ``model.no_sync``, so that the gradients are all-reduced once, in the last
        chunk's backward. With gradient accumulation, call `gradcache_step` inside
        ``model.no_sync()`` on all but the last micro-step, as usual (the contexts nest).
    Returns ``(loss, terms)`` detached.

    Memory: the activations of one chunk plus the O(N x D) (or O(L x N x D)) embeddings and their
    gradient, whatever N is. Composes with Matryoshka (``loss_fn`` sums the per-dim losses before
    step 2), with 2D (the per-layer embeddings are cached: ``encode`` returns (L, n, D)), with
    AMP (the caller's autocast inside ``encode``/``loss_fn`` and its scaler in ``backward``;
    the cached embeddings and their gradient are kept in at least fp32), with DDP (gather inside
    ``loss_fn``) and with gradient accumulation (gradients add up in ``.grad``).

    Dropout: each chunk's RNG state (CPU and, for features on a CUDA device, that device's) is
    saved before its no-grad pass and restored before its re-encoding, so both passes draw the
    same masks. Afterwards the RNG is left where step 1 left it (as if each chunk had been
    encoded once), so the run stays deterministic and replayable. ``loss_fn`` should draw its own
    random choices (dims, layers) from its own generator: global draws made inside it are undone.
    """
    if chunk_size is None and chunk_tokens is None:
        raise ValueError("give chunk_size, chunk_tokens or both")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    mask = features["attention_mask"]
    rows = _chunk_rows(mask, chunk_size, chunk_tokens)
    chunks = _chunks(features, rows)
    device = mask.device
    # Chunk order -> input order (None: already in input order).
    order = torch.tensor([i for chunk in rows for i in chunk], device=device)
    if torch.equal(order, torch.arange(len(order), device=device)):
        order = None

    # Step 1: embeddings without a graph, remembering each chunk's RNG state.
    states, cached = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_RngState(device))
            cached.append(encode(chunk))  # (..., n, D)
    after_step1 = _RngState(device)

    # Step 2: the loss on detached embeddings; its gradient w.r.t. each embedding.
    emb = torch.cat(cached, dim=-2).detach()  # (..., N, D) in chunk order
    if order is not None:
        emb = emb.index_select(-2, torch.argsort(order))  # input order
    emb = emb.to(torch.promote_types(emb.dtype, torch.float32)).requires_grad_(True)
    del cached
    loss, terms = loss_fn(emb)
    backward(loss)
    if emb.grad is None:
        raise RuntimeError("loss_fn's loss does not depend on the embeddings it was given")
    grad = emb.grad if order is None else emb.grad.index_select(-2, order)  # chunk order
    grads = grad.split([len(chunk) for chunk in rows], dim=-2)

    # Step 3: re-encode each chunk with a graph and the same dropout; backward <emb, grad>.
    for i, (chunk, state, grad) in enumerate(zip(chunks, states, grads)):
        state.restore()
        sync = no_sync() if i < len(chunks) - 1 else contextlib.nullcontext()
        with sync:
            chunk_emb = encode(chunk)  # (..., n, D) with a graph
            surrogate = (chunk_emb.to(grad.dtype) * grad).sum()  # in fp32: d/dtheta = G . dE/dtheta
            surrogate.backward()
    after_step1.restore()
    return loss.detach(), {k: v.detach() for k, v in terms.items()}

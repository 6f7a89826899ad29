"""The pooling table: how the token states of a text become one vector.

`POOLINGS` holds one `PoolingEntry` per pooling, and it is the only place that knows them:

- ``pool``: the function, ``(hidden (..., N, S, D), attention_mask (N, S)) -> (..., N, D)``.
  Leading axes of ``hidden`` (the L layers of one pass) broadcast; padding never changes the
  result (the mask is 1 for real tokens, 0 for padding, on either side);
- ``st_flag``: the key of the sentence-transformers ``1_Pooling/config.json`` that is true for it
  (`mrl.saved_model` writes it, and reads a downloaded model's pooling from it);
- ``card_code``: the same function written out for plain `transformers` users, as the model card
  shows it (`mrl.card`; tests/test_card.py runs it against the encoder).

`POOLING_MODES`, the ``--pooling`` choices of train.py and eval.py, is a live view of the table's
keys: adding a pooling is one entry below and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of the real tokens: (..., N, S, D), (N, S) -> (..., N, D)."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (N, S, 1)
    # Clamp the count so an all-padding row gives 0, not NaN.
    return (hidden * mask).sum(-2) / mask.sum(-2).clamp(min=1e-9)


def cls_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """The first token's state ([CLS]; right padding only): (..., N, S, D) -> (..., N, D)."""
    return hidden[..., 0, :]


def max_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Max over the real tokens, per feature: (..., N, S, D), (N, S) -> (..., N, D)."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (N, S, 1)
    # masked_fill returns a new tensor: the model's hidden states are not mutated.
    filled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min)
    return filled.max(dim=-2).values


def last_token_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """The last real token's state (decoder-style models): (..., N, S, D), (N, S) -> (..., N, D)."""
    # Position of the last real token, for right- or left-padded batches alike.
    seq_len = attention_mask.shape[-1]
    positions = torch.arange(seq_len, device=attention_mask.device)
    last = (positions * attention_mask.long()).argmax(dim=-1)  # (N,)
    index = last.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])  # (N, 1, D)
    index = index.expand(*hidden.shape[:-3], -1, -1, -1)
    return hidden.gather(-2, index).squeeze(-2)


@dataclass(frozen=True)
class PoolingEntry:
    """One pooling: its function, its sentence-transformers flag and the card's version of it.

    pool: ``(hidden (..., N, S, D), attention_mask (N, S)) -> (..., N, D)``.
    st_flag: the ``1_Pooling/config.json`` key that is true for this pooling (one of
        `ST_POOLING_FLAGS`, or a new key of your own, which that library will not know).
    card_code: Python source defining ``pool(tokens, attention_mask)`` with plain torch, for the
        card's transformers snippet: it must give the same vectors as ``pool`` on (N, S, D).
    """

    pool: Callable[[Tensor, Tensor], Tensor]
    st_flag: str
    card_code: str


POOLINGS: dict[str, PoolingEntry] = {
    "mean": PoolingEntry(
        mean_pool,
        "pooling_mode_mean_tokens",
        """def pool(tokens, attention_mask):  # (N, S, D), (N, S) -> (N, D): mean of the real tokens
    mask = attention_mask.unsqueeze(-1).to(tokens.dtype)  # (N, S, 1)
    return (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)""",
    ),
    "cls": PoolingEntry(
        cls_pool,
        "pooling_mode_cls_token",
        """def pool(tokens, attention_mask):  # (N, S, D), (N, S) -> (N, D): the first ([CLS]) token
    return tokens[:, 0]""",
    ),
    "max": PoolingEntry(
        max_pool,
        "pooling_mode_max_tokens",
        """def pool(tokens, attention_mask):  # (N, S, D), (N, S) -> (N, D): max over the real tokens
    mask = attention_mask.unsqueeze(-1).bool()  # (N, S, 1)
    return tokens.masked_fill(~mask, torch.finfo(tokens.dtype).min).max(1).values""",
    ),
    "lasttoken": PoolingEntry(
        last_token_pool,
        "pooling_mode_lasttoken",
        """def pool(tokens, attention_mask):  # (N, S, D), (N, S) -> (N, D): the last real token
    positions = torch.arange(tokens.shape[1])  # (S,)
    last = (positions * attention_mask).argmax(1)  # (N,): for left or right padding
    return tokens[torch.arange(len(last)), last]""",
    ),
}
# A view, not a copy: a pooling added to the table (at run time too) is a valid --pooling choice.
POOLING_MODES = POOLINGS.keys()

# Every mode flag of sentence-transformers' 1_Pooling/config.json, in the order that library
# writes them; a saved model sets its pooling's flag and writes every other one as false.
ST_POOLING_FLAGS = (
    "pooling_mode_cls_token",
    "pooling_mode_mean_tokens",
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)


def check_pooling(mode: str) -> PoolingEntry:
    """The table entry of ``mode``, or a ValueError listing the known poolings."""
    if mode not in POOLINGS:
        raise ValueError(f"pooling must be one of {tuple(POOLING_MODES)}, got {mode!r}")
    return POOLINGS[mode]


def pool(hidden: Tensor, attention_mask: Tensor, mode: str = "mean") -> Tensor:
    """Pool token states into one vector per text; padding never changes the result.

    hidden: (..., N, S, D) token states (leading axes, e.g. layers, broadcast);
    attention_mask: (N, S) 1 for real tokens, 0 for padding. Returns (..., N, D).
    """
    return check_pooling(mode).pool(hidden, attention_mask)


def st_pooling_flags(mode: str) -> dict[str, bool]:
    """The mode flags of a sentence-transformers 1_Pooling/config.json for our pooling ``mode``."""
    flag = POOLINGS[mode].st_flag
    return {name: name == flag for name in dict.fromkeys((*ST_POOLING_FLAGS, flag))}


def pooling_from_st_config(config: dict[str, Any]) -> str | None:
    """Our pooling name from a sentence-transformers 1_Pooling/config.json (None if unsupported)."""
    chosen = [mode for mode, entry in POOLINGS.items() if config.get(entry.st_flag)]
    return chosen[0] if len(chosen) == 1 else None

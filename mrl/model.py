"""The encoder: a `transformers.AutoModel` plus our pooling; every layer from one pass.

One forward pass gives the **full-dim, un-normalised** pooled embedding ``(N, D)``, or with
``all_layers=True`` the pooled output of every transformer block ``(L, N, D)`` (index ``l - 1`` is
block ``l``; the last entry is the final embedding). Truncation to Matryoshka prefixes and
normalisation happen in the loss and at inference (`mrl.losses.prefix`), never here.

A model may carry a **head** after pooling (Dense modules, or our MLP adaptor; `mrl.heads`),
applied to every pooled output, and **exit heads** (`mrl.heads.ExitHead`): one small residual
linear map per depth k, applied to block k's pooled vector only, so a cut to k blocks can map its
states into the embedding space without bending blocks that also feed the deeper ones.

Each other job has its own module:
- `mrl.pooling`: the pooling table (the function, its sentence-transformers flag, the card's code);
- `mrl.saved_model`: the saved folder (transformers files, sentence-transformers side files,
  ``mrl_config.json``, exit heads), read by the constructor, written by `Encoder.save` and
  `Encoder.save_truncated`;
- `mrl.blocks`: running only the first k transformer blocks;
- `mrl.inference`: `Encoder.encode` (batches by length, prefix, normalise, quantise);
- `mrl.packing`: the padding-free layouts of `Encoder.forward`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mrl.blocks import find_final_norm
from mrl.heads import ExitHead
from mrl.inference import encode
from mrl.packing import PADDING_FREE_MODES, pack, packing_support, plan_buckets, plan_rows
from mrl.pooling import POOLING_MODES, pool, pooling_from_st_config
from mrl.quantize import Ranges
from mrl.saved_model import (
    METADATA_FILE,
    load_exit_heads,
    load_model_head,
    load_transformer,
    read_side_file,
    resolve_model_path,
    save_model,
    save_truncated,
    split_last_exit_head,
)


class Encoder(nn.Module):
    """A transformers encoder with our pooling.

    ``Encoder("sentence-transformers/all-MiniLM-L6-v2")`` or ``Encoder("/path/to/folder")``.
    Settings not given are read from the model folder when it has them (our ``mrl_config.json``,
    then the sentence-transformers files), else: mean pooling, the model's maximum length.
    ``trust_remote_code`` stays off unless asked: it runs Python code shipped with the weights.
    """

    def __init__(
        self,
        name_or_path: str,
        pooling: str | None = None,
        max_seq_length: int | None = None,
        do_lower_case: bool | None = None,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        length_buckets: int = 1,
        padding_free: str = "off",
    ):
        super().__init__()
        name_or_path = resolve_model_path(str(name_or_path))
        self.name_or_path = name_or_path
        self.model, self.tokenizer = load_transformer(name_or_path, trust_remote_code, model_kwargs)
        self.metadata: dict[str, Any] = read_side_file(name_or_path, METADATA_FILE) or {}
        st_config = read_side_file(name_or_path, "sentence_bert_config.json") or {}
        pooling_config = read_side_file(name_or_path, "1_Pooling/config.json") or {}

        self.pooling = pooling or self.metadata.get("pooling") or pooling_from_st_config(pooling_config)
        self.pooling = self.pooling or "mean"
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {tuple(POOLING_MODES)}, got {self.pooling!r}")
        model_limit = min(
            getattr(self.model.config, "max_position_embeddings", None) or 10**9,
            self.tokenizer.model_max_length or 10**9,
        )
        # Never beyond the model's position embeddings: longer inputs would crash mid-run.
        requested = max_seq_length or st_config.get("max_seq_length") or 512
        self.max_seq_length = int(min(requested, model_limit))
        special = self.tokenizer.num_special_tokens_to_add()
        if self.max_seq_length <= special:
            raise ValueError(
                f"max_seq_length (--max-seq-length) {self.max_seq_length} leaves no room for text: the "
                f"tokenizer adds {special} special tokens to every text"
            )
        # Some sentence-transformers models lower-case text before a cased tokenizer sees it.
        self.do_lower_case = bool(
            do_lower_case if do_lower_case is not None else st_config.get("do_lower_case")
        )
        # Modules after pooling (Dense, an adaptor), applied to every pooled output; None for most.
        self.head: nn.Sequential | None = load_model_head(name_or_path)
        # Per-depth exit heads (see ExitHead), keyed by the depth as a string; None for most models.
        self.exit_heads: nn.ModuleDict | None = load_exit_heads(name_or_path)
        self.exit_heads_detached = False  # see apply_exit_heads
        if self.metadata.get("exit_head_last_depth"):  # the first Dense is the last depth's exit head
            self.head, self.exit_heads = split_last_exit_head(
                name_or_path, self.head, self.exit_heads, self.num_layers
            )
        self.length_buckets = length_buckets  # see forward() (train.py: --length-buckets)
        self.final_norm = find_final_norm(self.model)  # a name in self.model, or None
        if padding_free not in PADDING_FREE_MODES:
            raise ValueError(f"padding_free must be one of {PADDING_FREE_MODES}, got {padding_free!r}")
        why_not = packing_support(self.model)
        if padding_free == "pack" and why_not:
            raise ValueError(f"padding_free='pack' is not available for this model: {why_not}")
        # "auto": packed rows where the model allows it, else adaptive length buckets.
        self.padding_free = "buckets" if padding_free == "auto" and why_not else padding_free
        self.padding_free = "pack" if self.padding_free == "auto" else self.padding_free
        # Tokens the model computed (padding included) in forward passes with a graph; the
        # trainer divides by the real tokens to log perf/padding_ratio.
        self.computed_tokens = 0
        if self.tokenizer.pad_token is None:  # decoder-style tokenizers (last-token pooling)
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def dim(self) -> int:
        """Width D of the full embedding (the head's output width when a Dense head changes it)."""
        widths = [m.out_features for m in self.head or [] if hasattr(m, "out_features")]
        return int(widths[-1]) if widths else int(self.model.config.hidden_size)

    def attach_head(self, modules: Sequence[nn.Module]) -> None:
        """Run ``modules`` after pooling from now on, after any head the model already has
        (e.g. `mrl.heads.head_modules(adaptor)`); `save` writes them into modules.json."""
        kept = list(self.head or []) + list(modules)
        self.head = nn.Sequential(*kept).to(self.device) if kept else None

    def add_exit_heads(self, depths: Sequence[int]) -> None:
        """Give each depth in ``depths`` (1..L) an identity-initialised `ExitHead`, keeping any it has."""
        bad = [k for k in depths if not 1 <= k <= self.num_layers]
        if bad:
            raise ValueError(f"exit-head depths {bad} are outside 1..{self.num_layers}")
        heads = self.exit_heads if self.exit_heads is not None else nn.ModuleDict()
        width = int(self.model.config.hidden_size)
        for k in depths:
            if str(k) not in heads:
                heads[str(k)] = ExitHead(width).to(self.device)
        self.exit_heads = heads or None

    def _through_exit_heads(self, pooled: Tensor, all_layers: bool, embedding_layer: bool = False) -> Tensor:
        """Apply depth k's exit head to depth k's pooled vector: (N, D) or (L, N, D), same shape.

        Without ``all_layers`` the vector is the last block's, and the model has as many blocks
        as it runs now (`truncated_blocks` lowers ``num_layers`` to the cut depth)."""
        heads = self.exit_heads
        if not heads or (self.training and self.exit_heads_detached):
            return pooled  # detached: the trainer applies them itself (see `apply_exit_heads`)
        return self.apply_exit_heads(pooled, all_layers, embedding_layer)

    def apply_exit_heads(self, pooled: Tensor, all_layers: bool, embedding_layer: bool = False) -> Tensor:
        """The exit heads on pooled vectors: (..., D) of the last depth, or (L, ..., D) of every
        depth with ``all_layers``; depths without a head pass unchanged.

        With ``exit_heads_detached`` the forward pass in training mode returns the vectors
        without the heads, and the trainer calls this on a detached copy: the heads then learn
        from the same losses while the blocks train exactly as without them. With
        ``embedding_layer`` row 0 is the embedding output (depth 0, no head) and row k depth k."""
        heads = self.exit_heads
        if not heads:
            return pooled
        if not all_layers:
            depth = str(self.num_layers)
            return heads[depth](pooled) if depth in heads else pooled
        first = 0 if embedding_layer else 1
        rows = [
            heads[str(k)](row) if str(k) in heads else row for k, row in enumerate(pooled.unbind(0), first)
        ]
        return torch.stack(rows)

    @property
    def num_layers(self) -> int:
        """Number L of transformer blocks."""
        return int(self.model.config.num_hidden_layers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Tokenise a list of N texts with dynamic padding (to the longest, at most max_seq_length).

        Returns CPU tensors: input_ids, attention_mask (and token_type_ids where the model has
        them), each (N, S).
        """
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        return dict(
            self.tokenizer(
                list(texts),
                padding=True,
                truncation=True,
                max_length=self.max_seq_length,
                return_tensors="pt",
            )
        )

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (special tokens added, truncated to max_seq_length, not padded).

        With `pad` this splits `tokenize` in two, so a trainer can tokenise its data once up
        front and only pad per batch: ``pad(token_ids(texts)) == tokenize(texts)``.
        """
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_seq_length)["input_ids"]

    def pad(self, ids: Sequence[Sequence[int]]) -> dict[str, Tensor]:
        """Pad id lists to the longest into the model's input tensors, each (N, S), like `tokenize`."""
        longest = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), longest), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), longest), dtype=torch.long)
        left = self.tokenizer.padding_side == "left"
        for i, row in enumerate(ids):
            span = slice(longest - len(row), longest) if left else slice(0, len(row))
            input_ids[i, span] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, span] = 1
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.tokenizer.model_input_names:
            features["token_type_ids"] = torch.zeros_like(input_ids)
        return features

    def forward(
        self, features: dict[str, Tensor], all_layers: bool = False, embedding_layer: bool = False
    ) -> Tensor:
        """Pooled embeddings: (N, D), or (L, N, D) for every block with ``all_layers``.

        The embedding of block ``l`` pools ``hidden_states[l]`` passed through the model's final
        norm if it has one (ModernBERT; none in BERT-like models): the vector a model cut to l
        blocks serves. For the final block we pool ``last_hidden_state``.

        ``embedding_layer`` (with ``all_layers``): (L + 1, N, D), row 0 the pooled output of the
        embedding layer (``hidden_states[0]``, before any block; through the final norm like the
        other rows), row ``l`` block ``l``. Upstream's 2D (AdaptiveLayerLoss) counts it among the
        layers it draws (issue 25; `mrl.losses.layer_dropping_loss`).

        With ``length_buckets`` k > 1 the N rows are sorted by length and run as k sub-batches,
        each cut to its own longest row: a random training batch of short and long texts then
        computes far fewer padding tokens (results equal up to float rounding; dropout masks
        are drawn per sub-batch).

        ``padding_free`` (constructor) plans this per batch instead (`mrl.packing`): "pack" lays
        the texts end to end in a few rows with block-diagonal attention, "buckets" picks the
        number of sub-batches and the cut points from the token lengths, "auto" packs where the
        model allows it. The batch is the one given, whatever the layout; on a GPU the N lengths
        are copied to the host to plan it (one small synchronisation per forward).
        """
        mask = features["attention_mask"]
        n = mask.shape[0]
        groups = None
        if embedding_layer and not all_layers:
            raise ValueError("embedding_layer=True needs all_layers=True")
        if self.padding_free != "off" and n > 1:
            lengths = mask.sum(-1).tolist()  # host copy of N ints: the layout is planned on the CPU
            if self.padding_free == "pack":
                return self._packed(features, lengths, all_layers, embedding_layer)
            groups = plan_buckets(lengths, self.dim)
        elif min(self.length_buckets, n) > 1:
            order = mask.sum(-1).argsort(descending=True)  # (N,) longest first
            groups = [rows.tolist() for rows in order.tensor_split(min(self.length_buckets, n))]
        if groups is None or len(groups) == 1:
            return self._pooled(features, all_layers, embedding_layer)
        # Same rows, less padding: run texts of similar length together, then restore the
        # order. Which texts share a batch (and so the loss) is unchanged.
        parts = []
        for rows in groups:
            rows_t = torch.tensor(rows, device=mask.device)
            keep = mask[rows_t].any(0)  # the token positions some row of this bucket uses
            trimmed = {k: v[rows_t][:, keep] for k, v in features.items()}
            parts.append(self._pooled(trimmed, all_layers, embedding_layer))
        order = torch.tensor([i for rows in groups for i in rows], device=mask.device)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(n, device=order.device)
        return torch.cat(parts, dim=-2).index_select(-2, inverse)  # (..., N, D) in input order

    def _packed(
        self, features: dict[str, Tensor], lengths: list[int], all_layers: bool, embedding_layer: bool = False
    ) -> Tensor:
        """The batch as packed rows (see `mrl.packing`), pooled in its padded layout: (N, D) or
        (L, N, D) ((L + 1, N, D) with ``embedding_layer``)."""
        rows = plan_rows(lengths, self.dim)
        packed, index = pack(features, lengths, rows, self.model)
        if torch.is_grad_enabled():
            self.computed_tokens += packed["input_ids"].numel()
        out = self.model(**packed, output_hidden_states=all_layers, return_dict=True)
        mask = features["attention_mask"]

        def unpack(hidden: Tensor) -> Tensor:  # (..., R, T, D) -> (..., N, S, D), padded layout
            return hidden.flatten(-3, -2)[..., index, :]

        if not all_layers:
            pooled = pool(unpack(out.last_hidden_state), mask, self.pooling)  # (N, D)
        else:
            hidden = list(out.hidden_states[0 if embedding_layer else 1 :])
            hidden[-1] = out.last_hidden_state
            pooled = pool(unpack(torch.stack(hidden)), mask, self.pooling)  # (L, N, D) or (L + 1, N, D)
        pooled = self._through_exit_heads(pooled, all_layers, embedding_layer)
        # The head (if any) acts on the last axis, as in `_pooled`.
        return self.head(pooled) if self.head is not None else pooled

    def _pooled(self, features: dict[str, Tensor], all_layers: bool, embedding_layer: bool = False) -> Tensor:
        """One pass of the model over ``features``: (N, D) or (L, N, D) ((L + 1, N, D) with
        ``embedding_layer``: row 0 the embedding output)."""
        if torch.is_grad_enabled():
            self.computed_tokens += features["attention_mask"].numel()
        out = self.model(**features, output_hidden_states=all_layers, return_dict=True)
        mask = features["attention_mask"]
        if not all_layers:
            pooled = pool(out.last_hidden_state, mask, self.pooling)  # (N, D)
        else:
            # L tensors (N, S, D); [0] is the embedding layer, kept with embedding_layer (L + 1)
            hidden = list(out.hidden_states[0 if embedding_layer else 1 :])
            # Block l's vector is what a model cut to its first l blocks outputs (`truncated_blocks`,
            # `save_truncated`, encode(layers=l)): its final norm, if it has one, applies to block l.
            # Upstream pools the raw hidden_states[l]; for models without a final norm it is the same.
            if self.final_norm is not None:
                norm = self.model.get_submodule(self.final_norm)
                hidden = [norm(h) for h in hidden[:-1]] + [hidden[-1]]
            hidden[-1] = out.last_hidden_state
            pooled = pool(torch.stack(hidden), mask, self.pooling)  # (L, N, D) or (L + 1, N, D)
        pooled = self._through_exit_heads(pooled, all_layers, embedding_layer)
        # The head (if any) acts on the last axis, so every layer's embedding goes through it.
        return self.head(pooled) if self.head is not None else pooled

    def encode(
        self,
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
        """Embed texts without a graph, in input order, on the CPU (`mrl.inference.encode`).

        With the defaults: the full-width, unit-length float32 embedding (N, D) (or every
        block's, (L, N, D), with ``all_layers``); ``dim=d`` a Matryoshka prefix, ``layers=k``
        the first k blocks only, ``normalize=False`` the raw pooled vector, ``precision`` int8 /
        uint8 / binary / ubinary codes (with ``calibration``).
        """
        return encode(
            self,
            texts,
            batch_size,
            all_layers,
            show_progress,
            dim=dim,
            layers=layers,
            normalize=normalize,
            precision=precision,
            calibration=calibration,
        )

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
        """Write a folder that `AutoModel` and the sentence-transformers library both load, with
        ``metadata`` (trained dims, layers, the adaptor's recipe...) in our ``mrl_config.json``
        (`mrl.saved_model.save_model`)."""
        save_model(self, path, metadata)

    def save_truncated(self, path: str | os.PathLike, k: int, metadata: dict[str, Any] | None = None) -> None:
        """Write a standalone model with only the first ``k`` blocks, whose embedding equals
        ``self.encode(texts, layers=k)`` (`mrl.saved_model.save_truncated`)."""
        save_truncated(self, path, k, metadata)

"""The encoder: a `transformers.AutoModel` plus our own pooling, and the saved-model layout.

One forward pass gives the **full-dim, un-normalised** pooled embedding ``(N, D)``, or with
``all_layers=True`` the pooled output of every transformer block ``(L, N, D)`` (index ``l - 1`` is
block ``l``; the last entry is the final embedding). Truncation to Matryoshka prefixes and
normalisation happen in the loss and at inference (`mrl.losses.prefix`), never here.

A saved model is a folder that `AutoModel`/`AutoTokenizer` load, that also carries the small JSON
files the sentence-transformers library reads (modules.json, 1_Pooling/, sentence_bert_config.json),
and our own ``mrl_config.json`` with the trained dims, layers and pooling.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

POOLING_MODES = ("mean", "cls", "max", "lasttoken")
METADATA_FILE = "mrl_config.json"


def pool(hidden: Tensor, attention_mask: Tensor, mode: str = "mean") -> Tensor:
    """Pool token states into one vector per text; padding never changes the result.

    hidden: (..., N, S, D) token states (leading axes, e.g. layers, broadcast);
    attention_mask: (N, S) 1 for real tokens, 0 for padding. Returns (..., N, D).
    """
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (N, S, 1)
    if mode == "mean":
        # Clamp the count so an all-padding row gives 0, not NaN.
        return (hidden * mask).sum(-2) / mask.sum(-2).clamp(min=1e-9)
    if mode == "cls":
        return hidden[..., 0, :]
    if mode == "max":
        # masked_fill returns a new tensor: the model's hidden states are not mutated.
        filled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min)
        return filled.max(dim=-2).values
    if mode == "lasttoken":
        # Position of the last real token, for right- or left-padded batches alike.
        seq_len = attention_mask.shape[-1]
        positions = torch.arange(seq_len, device=attention_mask.device)
        last = (positions * attention_mask.long()).argmax(dim=-1)  # (N,)
        index = last.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])  # (N, 1, D)
        index = index.expand(*hidden.shape[:-3], -1, -1, -1)
        return hidden.gather(-2, index).squeeze(-2)
    raise ValueError(f"pooling must be one of {POOLING_MODES}, got {mode!r}")


def _read_side_file(name_or_path: str, filename: str) -> dict[str, Any] | None:
    """A JSON file stored next to the weights (local folder or hub repo), or None if absent."""
    local = Path(name_or_path)
    if local.is_dir():
        path = local / filename
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    from transformers.utils import cached_file

    try:
        path = cached_file(
            name_or_path,
            filename,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except OSError:
        return None
    return json.loads(Path(path).read_text(encoding="utf-8")) if path else None


def _pooling_from_st_config(config: dict[str, Any]) -> str | None:
    """Our pooling name from a sentence-transformers 1_Pooling/config.json (None if unsupported)."""
    flags = {
        "pooling_mode_mean_tokens": "mean",
        "pooling_mode_cls_token": "cls",
        "pooling_mode_max_tokens": "max",
        "pooling_mode_lasttoken": "lasttoken",
    }
    chosen = [mode for key, mode in flags.items() if config.get(key)]
    return chosen[0] if len(chosen) == 1 else None


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
    ):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        name_or_path = str(name_or_path)
        if _looks_like_path(name_or_path) and not Path(name_or_path).exists():
            raise FileNotFoundError(f"model folder {name_or_path} does not exist")
        self.name_or_path = name_or_path
        self.model = AutoModel.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, **(model_kwargs or {})
        )
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        self.metadata: dict[str, Any] = _read_side_file(name_or_path, METADATA_FILE) or {}
        st_config = _read_side_file(name_or_path, "sentence_bert_config.json") or {}
        pooling_config = _read_side_file(name_or_path, "1_Pooling/config.json") or {}

        self.pooling = pooling or self.metadata.get("pooling") or _pooling_from_st_config(pooling_config)
        self.pooling = self.pooling or "mean"
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        model_limit = min(
            getattr(self.model.config, "max_position_embeddings", None) or 10**9,
            self.tokenizer.model_max_length or 10**9,
        )
        self.max_seq_length = int(max_seq_length or st_config.get("max_seq_length") or min(model_limit, 512))
        # Some sentence-transformers models lower-case text before a cased tokenizer sees it.
        self.do_lower_case = bool(
            do_lower_case if do_lower_case is not None else st_config.get("do_lower_case")
        )
        if self.tokenizer.pad_token is None:  # decoder-style tokenizers (last-token pooling)
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def dim(self) -> int:
        """Width D of the full embedding."""
        return int(self.model.config.hidden_size)

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

    def forward(self, features: dict[str, Tensor], all_layers: bool = False) -> Tensor:
        """Pooled embeddings: (N, D), or (L, N, D) for every block with ``all_layers``.

        The embedding of block ``l`` pools ``hidden_states[l]``; for the final block we pool
        ``last_hidden_state``, which is the same tensor for BERT-like models and includes the
        final norm for models that have one (e.g. ModernBERT), as the model's users expect.
        """
        out = self.model(**features, output_hidden_states=all_layers, return_dict=True)
        mask = features["attention_mask"]
        if not all_layers:
            return pool(out.last_hidden_state, mask, self.pooling)  # (N, D)
        hidden = list(out.hidden_states[1:])  # L tensors (N, S, D); [0] is the embedding layer
        hidden[-1] = out.last_hidden_state
        return pool(torch.stack(hidden), mask, self.pooling)  # (L, N, D)

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        all_layers: bool = False,
        show_progress: bool = False,
    ) -> Tensor:
        """Embed texts without a graph: (N, D) or (L, N, D) float32 on the CPU, in input order.

        Texts are batched by length (less padding, same result), then put back in order.
        Un-normalised, full width: slice with ``mrl.losses.prefix`` for a Matryoshka dim.
        """
        was_training = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        chunks = []
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), disable=not show_progress, desc="encode"):
                batch = [texts[i] for i in order[start : start + batch_size]]
                features = {k: v.to(self.device) for k, v in self.tokenize(batch).items()}
                chunks.append(self(features, all_layers=all_layers).float().cpu())
        self.train(was_training)
        # Built outside inference mode: the result is an ordinary tensor that autograd may use
        # (e.g. as distillation targets).
        if not chunks:
            shape = (self.num_layers, 0, self.dim) if all_layers else (0, self.dim)
            return torch.empty(shape)
        sorted_emb = torch.cat(chunks, dim=-2)  # (..., N, D) in length order
        result = torch.empty_like(sorted_emb)
        result[..., order, :] = sorted_emb
        return result

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
        """Write a folder that `AutoModel` and the sentence-transformers library both load.

        HF files (config.json, model.safetensors, tokenizer files), the sentence-transformers
        module layout (transformer at "", pooling at "1_Pooling"; no Normalize module, so that
        ``truncate_dim`` there slices the raw vector and the cosine re-normalises it), and our
        ``mrl_config.json`` with ``metadata`` (trained dims, layers...).
        """
        import transformers

        import mrl

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        pooling_config = {
            "word_embedding_dimension": self.dim,
            "pooling_mode_cls_token": self.pooling == "cls",
            "pooling_mode_mean_tokens": self.pooling == "mean",
            "pooling_mode_max_tokens": self.pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": self.pooling == "lasttoken",
            "include_prompt": True,
        }
        st_config = {"max_seq_length": self.max_seq_length, "do_lower_case": self.do_lower_case}
        versions = {
            "mrl": mrl.__version__,
            "transformers": transformers.__version__,
            "pytorch": torch.__version__,
        }
        st_meta = {
            "__version__": versions,
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        }
        ours = {
            **self.metadata,
            **(metadata or {}),
            "pooling": self.pooling,
            "max_seq_length": self.max_seq_length,
            "dim": self.dim,
            "num_layers": self.num_layers,
        }
        (path / "1_Pooling").mkdir(exist_ok=True)
        for name, content in [
            ("modules.json", modules),
            ("1_Pooling/config.json", pooling_config),
            ("sentence_bert_config.json", st_config),
            ("config_sentence_transformers.json", st_meta),
            (METADATA_FILE, ours),
        ]:
            (path / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub id ("org/name"): absolute, ./relative, ~, 3+ parts, or a
    name whose parent folder exists here (``runs/model`` when ``runs/`` exists)."""
    parent = Path(name).parent
    return (
        name.startswith(("/", ".", "~")) or name.count("/") > 1 or (parent != Path(".") and parent.is_dir())
    )

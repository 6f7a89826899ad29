"""The modules after pooling: a model's head, and the per-depth exit heads of a 2D model.

A **head** is what a saved model runs on every pooled vector, in the sentence-transformers module
layout (modules.json entries after Pooling): `Normalize`, `Dense`, or our MLP adaptor
(`mrl.adaptor.Adaptor`, which only `mrl` loads). `save_head` / `load_head` write and read those
module folders; `head_modules` / `dense_head` build a head from a trained adaptor or a plain
(D_out, D) matrix; `transform_embeddings` applies a saved head to embeddings already computed.

An **exit head** (`ExitHead`) is one small residual linear map per depth k, applied to block k's
pooled vector only (`mrl.model.Encoder.apply_exit_heads`); `mrl.saved_model` stores them.

The adaptor's own training (the `Adaptor` module, its losses, PCA, data) stays in `mrl.adaptor`;
this file imports it only to save or load an MLP adaptor (`_adaptor_class`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

if TYPE_CHECKING:
    from mrl.adaptor import Adaptor

# sentence-transformers module types and the activation name its Dense config stores.
ST_NORMALIZE = "sentence_transformers.models.Normalize"
ST_DENSE = "sentence_transformers.models.Dense"
ST_IDENTITY = "torch.nn.modules.linear.Identity"
ST_TANH = "torch.nn.modules.activation.Tanh"
# Our residual MLP has no sentence-transformers equivalent: its modules.json entry names this class,
# which that library cannot import unless mrl is installed, so it fails loudly instead of silently
# returning unadapted embeddings.
MLP_TYPE = "mrl.adaptor.Adaptor"
WEIGHTS_FILE = "model.safetensors"


# --------------------------------------------------------------------------------------------
# Exit heads: one residual map per depth
# --------------------------------------------------------------------------------------------


class ExitHead(nn.Module):
    """``x + W x + b`` on the pooled vector of one depth, with W and b starting at 0 (the identity).

    (..., D) -> (..., D); D * D + D parameters (0.15 M at D = 384, under 1% of MiniLM-L6). The
    residual form means a freshly added head changes nothing until training moves it.
    """

    def __init__(self, dim: int):
        super().__init__()
        # skip_init: no random init to overwrite, and no draw from the global RNG (dropout masks
        # after adding heads stay those of a run without them).
        self.linear = torch.nn.utils.skip_init(nn.Linear, dim, dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.linear(x)

    @classmethod
    def from_dense(cls, weight: Tensor, bias: Tensor) -> ExitHead:
        """The head whose map equals a Dense layer's ``weight @ x + bias`` (the inverse of
        `dense_weights`): W = weight - I."""
        head = cls(weight.shape[0])
        with torch.no_grad():
            head.linear.weight.copy_(
                weight - torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
            )
            head.linear.bias.copy_(bias)
        return head

    def dense_weights(self) -> tuple[Tensor, Tensor]:
        """The same map as one Dense layer: (weight I + W (D, D), bias b (D,))."""
        weight = self.linear.weight.detach()
        eye = torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
        return weight + eye, self.linear.bias.detach().clone()


# --------------------------------------------------------------------------------------------
# The head: what runs after pooling, saved in the sentence-transformers module layout
# --------------------------------------------------------------------------------------------


class Normalize(nn.Module):
    """Unit length along the last axis (sentence-transformers' Normalize module)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1, eps=1e-12)


class Dense(nn.Module):
    """``act(W x + b)``: a sentence-transformers Dense module (weights ``linear.weight``/``linear.bias``
    in ``model.safetensors``, config ``in_features``, ``out_features``, ``bias``,
    ``activation_function``). Identity and Tanh activations are supported."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = ST_IDENTITY):
        super().__init__()
        if activation not in (ST_IDENTITY, ST_TANH):
            raise ValueError(f"Dense activation {activation!r} is not supported (only Identity and Tanh)")
        self.in_features, self.out_features, self.bias = in_features, out_features, bias
        self.activation = activation
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        y = self.linear(x)
        return torch.tanh(y) if self.activation == ST_TANH else y

    @classmethod
    def from_weights(cls, weight: Tensor, bias: Tensor | None) -> Dense:
        """A Dense layer holding ``weight`` (out, in) and ``bias`` (out,)."""
        layer = cls(weight.shape[1], weight.shape[0], bias is not None)
        with torch.no_grad():
            layer.linear.weight.copy_(weight)
            if bias is not None:
                layer.linear.bias.copy_(bias)
        return layer

    def config(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias,
            "activation_function": self.activation,
        }


def head_modules(adaptor: Adaptor) -> list[nn.Module]:
    """What the saved model runs after pooling: [Normalize, Dense(I + W, b)] for a linear adaptor
    that normalises its input ([Normalize, Dense(Q, 0)] for a rotation), [Dense] without, and
    [the Adaptor itself] for an MLP."""
    if adaptor.kind == "mlp":
        return [adaptor]
    dense = Dense.from_weights(*adaptor.to_dense())
    return [Normalize(), dense] if adaptor.normalize_input else [dense]


def dense_head(weight: Tensor, bias: Tensor | None, normalize_input: bool = True) -> list[nn.Module]:
    """A head [Normalize, Dense] from a (D_out, D) weight and bias, e.g. `pca_dense`'s."""
    dense = Dense.from_weights(weight, bias)
    return [Normalize(), dense] if normalize_input else [dense]


def save_head(folder: str | os.PathLike, modules: Sequence[nn.Module], first_index: int = 0) -> list[dict]:
    """Write each head module to ``folder/{index}_{Name}/`` and return their modules.json entries.

    ``first_index``: the index of the first head module in the model's module list (2 after the
    transformer and pooling). Normalize has no files; Dense gets ``config.json`` and
    ``model.safetensors`` (``linear.weight``, ``linear.bias``); an MLP Adaptor gets
    ``config.json`` (`Adaptor.config`) and ``model.safetensors`` (its state dict).
    """
    folder = Path(folder)
    entries = []
    for offset, module in enumerate(modules):
        index = first_index + offset
        if isinstance(module, Normalize):
            kind, path, config = ST_NORMALIZE, f"{index}_Normalize", None
        elif isinstance(module, Dense):
            kind, path, config = ST_DENSE, f"{index}_Dense", module.config()
        elif isinstance(module, _adaptor_class()):
            kind, path, config = MLP_TYPE, f"{index}_Adaptor", module.config()
        else:
            raise TypeError(f"cannot save a head module of type {type(module).__name__}")
        (folder / path).mkdir(parents=True, exist_ok=True)
        if config is not None:
            (folder / path / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            save_file(state, str(folder / path / WEIGHTS_FILE))
        entries.append({"idx": index, "name": str(index), "path": path, "type": kind})
    return entries


def load_head(folder: str | os.PathLike, entries: Sequence[dict] | None = None) -> nn.Sequential | None:
    """The modules that follow pooling in a saved model (or a saved head) folder, or None.

    ``entries``: the folder's modules.json list (read from the folder when None; a folder without
    it has no head). Transformer and Pooling entries are skipped. A **trailing** Normalize is
    skipped too: our encoder returns un-normalised vectors and every prefix is normalised anyway,
    so it changes no cosine (this keeps plain sentence-transformers models as they were). Any
    other module type is an error naming the folder.
    """
    folder = Path(folder)
    if entries is None:
        path = folder / "modules.json"
        if not path.is_file():
            return None
        entries = json.loads(path.read_text(encoding="utf-8"))
    kept = [e for e in entries if not e["type"].endswith((".Transformer", ".Pooling"))]
    while kept and kept[-1]["type"] == ST_NORMALIZE:
        kept.pop()
    modules: list[nn.Module] = []
    for entry in kept:
        where = folder / entry["path"]
        if entry["type"] == ST_NORMALIZE:
            modules.append(Normalize())
            continue
        if entry["type"] not in (ST_DENSE, MLP_TYPE):
            raise ValueError(f"{folder}/modules.json: module type {entry['type']!r} is not supported here")
        config = json.loads((where / "config.json").read_text(encoding="utf-8"))
        if entry["type"] == ST_DENSE:
            module: nn.Module = Dense(
                config["in_features"],
                config["out_features"],
                config.get("bias", True),
                config.get("activation_function", ST_IDENTITY),
            )
        else:
            module = _adaptor_class()(**config)
        weights = where / WEIGHTS_FILE
        if weights.is_file():
            state = load_file(str(weights))
        elif (where / "pytorch_model.bin").is_file():  # older sentence-transformers saves
            state = torch.load(where / "pytorch_model.bin", weights_only=True, map_location="cpu")
        else:
            raise FileNotFoundError(f"{where}: no {WEIGHTS_FILE} (or pytorch_model.bin)")
        module.load_state_dict(state)
        modules.append(module)
    return nn.Sequential(*modules) if modules else None


def _adaptor_class() -> type[nn.Module]:
    """`mrl.adaptor.Adaptor`, imported only when a head holds something other than Normalize and
    Dense (an MLP adaptor): loading or saving any other model leaves the adaptor's training code
    unimported."""
    from mrl.adaptor import Adaptor

    return Adaptor


def transform_embeddings(head: str | os.PathLike | nn.Module, emb: Tensor, batch_size: int = 65536) -> Tensor:
    """Apply a saved adaptor (a model or head folder, or a module) to existing embeddings of the
    unadapted model, without re-encoding: (N, D) -> (N, D_out), float32, no graph."""
    module = load_head(head) if not isinstance(head, nn.Module) else head
    if module is None:
        raise ValueError(f"{head}: no adaptor (no module after pooling in modules.json)")
    module = module.float().eval()
    with torch.inference_mode():
        out = [module(emb[i : i + batch_size].float()) for i in range(0, emb.shape[0], batch_size)]
    return torch.cat(out) if out else emb.new_zeros((0, emb.shape[-1]))

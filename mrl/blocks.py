"""Running a transformer on its first k blocks only: the depth axis of the 2D models.

`find_blocks` finds the list of transformer blocks in most `transformers` encoders,
`truncated_blocks` runs a model with only its first k of them (`Encoder.encode(layers=k)`,
`Encoder.save_truncated`), and `find_final_norm` names the norm some models (ModernBERT, Llama)
apply after their last block, which a cut model applies after block k.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


def find_blocks(model: nn.Module) -> tuple[nn.Module, str]:
    """The (parent module, attribute name) of the model's list of transformer blocks.

    It is the ``nn.ModuleList`` whose length is ``config.num_hidden_layers``: ``encoder.layer``
    in BERT, RoBERTa, XLM-R and MPNet, ``layers`` in ModernBERT, ``transformer.layer`` in
    DistilBERT, and so on for most `transformers` encoders. If several lists qualify (a
    per-layer list of something else), the one holding the most parameters is the blocks.
    """
    n = getattr(model.config, "num_hidden_layers", None)
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and name:
            parent_name, _, attr = name.rpartition(".")
            size = sum(p.numel() for p in module.parameters())
            found.append((size, model.get_submodule(parent_name) if parent_name else model, attr))
    if not found:
        raise ValueError(f"no nn.ModuleList of length num_hidden_layers={n} in {type(model).__name__}")
    _, parent, attr = max(found, key=lambda item: item[0])
    return parent, attr


def find_final_norm(model: nn.Module) -> str | None:
    """The name (for ``model.get_submodule``) of the norm a model applies after its last block
    (ModernBERT's ``final_norm``, Llama's ``norm``, GPT-2's ``ln_f``), or None (BERT, RoBERTa,
    XLM-R, MPNet, DistilBERT, ELECTRA).

    It is the one sibling of the block list (`find_blocks`) whose class is a norm. A model's
    ``last_hidden_state`` has passed through it, while ``hidden_states[l]`` of the blocks before
    the last have not: see `mrl.model.Encoder._pooled`.
    """
    parent, attr = find_blocks(model)
    prefix = next(name for name, module in model.named_modules() if module is parent)
    norms = [n for n, m in parent.named_children() if n != attr and "norm" in type(m).__name__.lower()]
    return (f"{prefix}.{norms[0]}" if prefix else norms[0]) if len(norms) == 1 else None


@contextlib.contextmanager
def truncated_blocks(model: nn.Module, k: int) -> Iterator[nn.Module]:
    """Within the block, ``model`` runs only its first ``k`` transformer blocks.

    Swaps the block list for one holding the first k blocks (the same module objects, so weights
    and hooks are shared) and sets ``config.num_hidden_layers = k`` (and slices a per-layer
    ``config.layer_types``), restoring all of it on exit, exceptions included. The model's
    ``last_hidden_state`` is then block k's output, passed through whatever the model applies
    after its blocks (nothing in BERT; the final norm in ModernBERT), i.e. exactly what a k-layer
    model with these weights outputs. Not thread-safe: it edits the model in place.
    """
    parent, attr = find_blocks(model)
    blocks = getattr(parent, attr)
    if not 1 <= k <= len(blocks):
        raise ValueError(f"k must be in 1..{len(blocks)}, got {k}")
    config = model.config
    saved = {"num_hidden_layers": config.num_hidden_layers}
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, (list, tuple)) and len(layer_types) == len(blocks):
        saved["layer_types"] = layer_types
    setattr(parent, attr, nn.ModuleList(list(blocks)[:k]))
    try:
        config.num_hidden_layers = k
        if "layer_types" in saved:
            config.layer_types = list(layer_types)[:k]
        yield model
    finally:
        setattr(parent, attr, blocks)
        for key, value in saved.items():
            setattr(config, key, value)

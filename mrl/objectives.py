"""The objectives table: every base loss and every Matryoshka / 2D wrapper that `train.py` can train.

An objective is a **base loss** (``--loss``: CoSENT, in-batch negatives, ...) inside a **wrapper**
(``--2d``: plain Matryoshka over dims, 2D random layer dropping, 2D fixed (layer, dim) pairs).
This module is the one place that knows them:

- each `BaseLossEntry` says what the loss needs from the data (a score column; in-batch
  negatives, i.e. duplicate-free batches and candidates gathered across ranks; how many text
  columns) and how its function is bound from the config;
- each `WrapperEntry` says how its loss is built from the config and which (layer, dim) cells
  it trains and evaluates, plus its own config checks.

`train.py` and `mrl.config.validate` only ask this table (`build_objective`, `validate_config`,
`validate_for_model`); an unknown name is an error listing the known ones. Adding a base loss or a
2D schedule is one pure function in `mrl/losses.py` plus one entry below (README, "Adding an
objective"); nothing in `train.py` changes.

The math stays in `mrl/losses.py` (pure functions over tensors); this module only wires config
fields to their arguments. It reads the config by attribute and does not import `mrl.config`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor

from mrl.losses import (
    BaseLoss,
    check_dims,
    cosent_loss,
    fixed_pairs_loss,
    layer_dropping_loss,
    matryoshka_loss,
    mnrl_loss,
)

Config = Any  # a `mrl.config.TrainConfig` (read by attribute only)
LossFn = Callable[[Tensor, Tensor | None], tuple[Tensor, dict[str, Tensor]]]


# --------------------------------------------------------------------------------------------
# Base losses: base_loss(columns (C, B, d), labels) -> scalar
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseLossEntry:
    """A base loss and what it needs.

    bind: ``(config, local) -> base_loss(columns, labels)``. ``local`` is this rank's rows of a
        batch gathered across ranks (`mrl.dist.rank_slice`), given only to losses with
        ``in_batch_negatives`` (the others score the whole gathered batch on every rank).
    needs_score: labels are a score column (loaded as ``--score-column``, default "score",
        range-checked and gathered across ranks). Without it no score column is read at all.
    in_batch_negatives: rows of a batch are each other's negatives, so a batch must hold no
        duplicate text (a false negative otherwise) and at least 2 rows.
    columns: (fewest, most) text columns per row; most = None for no limit.
    """

    bind: Callable[[Config, slice | None], BaseLoss]
    needs_score: bool = False
    in_batch_negatives: bool = False
    columns: tuple[int, int | None] = (2, 2)
    help: str = ""


BASE_LOSSES: dict[str, BaseLossEntry] = {
    "cosent": BaseLossEntry(
        bind=lambda config, local: partial(cosent_loss, scale=config.scale),
        needs_score=True,
        columns=(2, 2),
        help="CoSENT on scored pairs",
    ),
    "mnrl": BaseLossEntry(
        bind=lambda config, local: partial(mnrl_loss, scale=config.scale, local=local),
        in_batch_negatives=True,
        columns=(2, None),
        help="in-batch negatives (anchor, positive, hard negatives...)",
    ),
    "mnrl-symmetric": BaseLossEntry(
        bind=lambda config, local: partial(mnrl_loss, scale=config.scale, symmetric=True, local=local),
        in_batch_negatives=True,
        columns=(2, None),
        help="in-batch negatives, plus the positive -> anchor direction",
    ),
}


# --------------------------------------------------------------------------------------------
# Wrappers: how the base loss is applied over dims (and layers), and which cells are evaluated
# --------------------------------------------------------------------------------------------


@dataclass
class Objective:
    """What the training loop needs from the chosen objective (built once per run).

    loss: ``(columns, labels) -> (total, {name: term})`` with columns (C, B, D), or (L, C, B, D)
        for every block when ``all_layers``. Term names are the TensorBoard tags after
        ``train/loss_``: ``d{dim}`` for the final layer, ``l{layer}...`` for earlier ones.
    eval_dims, eval_layers: the (layer, dim) grid evaluated on the dev sets and stored in the
        saved model's metadata (``eval_layers=None``: the final layer only).
    metadata: extra keys for the saved model's metadata and config.json's derived section.
    """

    loss: LossFn
    all_layers: bool
    eval_dims: list[int]
    eval_layers: list[int] | None
    metadata: dict[str, Any] = field(default_factory=dict)


def _nothing(*_args: Any) -> None:
    return None


@dataclass(frozen=True)
class WrapperEntry:
    """A Matryoshka / 2D wrapper.

    build: ``(base_loss, config, dims, num_layers, generator) -> Objective``; ``dims`` is
        ``--dims`` or the model's full dim; ``generator`` draws its random choices (the same on
        every rank, saved in checkpoints).
    all_layers: the loss takes every block's embedding, (L, C, B, D).
    validate: config checks that need no model (raise ValueError naming the flag).
    validate_for_model: checks against the model's dim and number of blocks.
    """

    build: Callable[[BaseLoss, Config, list[int], int, torch.Generator], Objective]
    all_layers: bool = False
    validate: Callable[[Config], None] = _nothing
    validate_for_model: Callable[[Config, int, int], None] = _nothing
    help: str = ""


def _matryoshka(base: BaseLoss, config: Config, dims: list[int], num_layers: int, generator) -> Objective:
    loss = partial(
        matryoshka_loss,
        base,
        dims=dims,
        weights=config.dim_weights,
        n_dims_per_step=config.n_dims_per_step,
        generator=generator,
    )
    return Objective(loss, all_layers=False, eval_dims=sorted(dims, reverse=True), eval_layers=None)


def _layer_dropping(base: BaseLoss, config: Config, dims: list[int], num_layers: int, generator) -> Objective:
    loss = partial(
        layer_dropping_loss,
        base,
        dims=dims,
        weights=config.dim_weights,
        n_dims_per_step=config.n_dims_per_step,
        n_layers_per_step=config.n_layers_per_step,
        last_layer_weight=config.last_layer_weight,
        prior_layers_weight=config.prior_layers_weight,
        kl_weight=config.kl_weight,
        kl_temperature=config.kl_temperature,
        depth_weighting=config.depth_weighting,
        detach_kl_target=config.detach_kl_target,
        generator=generator,
    )
    layers = list(range(1, num_layers + 1))
    return Objective(loss, all_layers=True, eval_dims=sorted(dims, reverse=True), eval_layers=layers)


def _check_layer_dropping(config: Config) -> None:
    if config.n_layers_per_step == 0 or config.n_layers_per_step < -1:
        raise ValueError("--n-layers-per-step must be >= 1, or -1 for every earlier layer")


def parse_int_pairs(specs: list[str], flag: str, form: str) -> list[tuple[int, int]]:
    """``["2:32", "4:64"]`` -> ``[(2, 32), (4, 64)]``; a bad spec is a ValueError naming ``flag``
    and the expected ``form`` (e.g. "LAYER:DIM (e.g. 4:64)")."""
    pairs = []
    for spec in specs:
        try:
            a, b = (int(part) for part in spec.split(":"))
        except ValueError:
            raise ValueError(f"{flag}: '{spec}' is not {form}") from None
        pairs.append((a, b))
    return pairs


def parse_pairs(specs: list[str]) -> list[tuple[int, int]]:
    """``--layer-dim-pairs`` strings ``LAYER:DIM`` -> ``[(layer, dim)]``."""
    return parse_int_pairs(specs, "--layer-dim-pairs", "LAYER:DIM (e.g. 4:64)")


def default_pairs(dims: list[int], num_layers: int) -> list[tuple[int, int]]:
    """Fixed-mode schedule when none is given: dims small to large over evenly spaced layers,
    ending at (L, largest dim) -- e.g. 12 layers, 6 dims -> (2,d1), (4,d2), ..., (12,d6)."""
    ordered = sorted(dims)
    n = len(ordered)
    return [(max(1, round(num_layers * (k + 1) / n)), d) for k, d in enumerate(ordered)]


def _fixed_pairs(base: BaseLoss, config: Config, dims: list[int], num_layers: int, generator) -> Objective:
    pairs = parse_pairs(config.layer_dim_pairs) if config.layer_dim_pairs else default_pairs(dims, num_layers)
    loss = partial(
        fixed_pairs_loss,
        base,
        pairs=pairs,
        dims=dims,
        kl_weight=config.kl_weight,
        kl_temperature=config.kl_temperature,
        detach_kl_target=config.detach_kl_target,
    )
    # Every trained dim is evaluated at every evaluated layer (the pairs add their own dims).
    return Objective(
        loss,
        all_layers=True,
        eval_dims=sorted(set(dims) | {d for _, d in pairs}, reverse=True),
        eval_layers=sorted({layer for layer, _ in pairs} | {num_layers}),
        metadata={"layer_dim_pairs": pairs},
    )


def _check_fixed_pairs(config: Config) -> None:
    if config.dim_weights is not None or config.n_dims_per_step is not None:
        raise ValueError(
            "--dim-weights and --n-dims-per-step apply to --2d off/random; fixed mode sums its pairs"
        )
    if config.layer_dim_pairs is not None:
        pairs = parse_pairs(config.layer_dim_pairs)
        # fixed_pairs_loss refuses repeats; say so now, not at the first step (issue 14).
        repeated = sorted({f"{layer}:{d}" for layer, d in pairs if pairs.count((layer, d)) > 1})
        if repeated:
            raise ValueError(f"--layer-dim-pairs repeats {', '.join(repeated)}")


def _check_fixed_pairs_for_model(config: Config, model_dim: int, num_layers: int) -> None:
    for layer, d in parse_pairs(config.layer_dim_pairs or []):
        if not 1 <= layer <= num_layers:
            raise ValueError(f"--layer-dim-pairs {layer}:{d}: the model has layers 1..{num_layers}")
        if not 1 <= d <= model_dim:
            raise ValueError(f"--layer-dim-pairs {layer}:{d}: dims must be in 1..{model_dim}")


WRAPPERS: dict[str, WrapperEntry] = {
    "off": WrapperEntry(build=_matryoshka, help="Matryoshka over --dims at the final layer"),
    "random": WrapperEntry(
        build=_layer_dropping,
        all_layers=True,
        validate=_check_layer_dropping,
        help="2D: the final layer plus randomly sampled earlier layers (2DMSE)",
    ),
    "fixed": WrapperEntry(
        build=_fixed_pairs,
        all_layers=True,
        validate=_check_fixed_pairs,
        validate_for_model=_check_fixed_pairs_for_model,
        help="2D: a fixed (layer, dim) schedule (Starbucks)",
    ),
}


# --------------------------------------------------------------------------------------------
# What train.py and mrl.config ask
# --------------------------------------------------------------------------------------------


def base_loss_entry(name: str) -> BaseLossEntry:
    """The table entry of ``--loss name``; an unknown name lists the known ones."""
    if name not in BASE_LOSSES:
        raise ValueError(f"--loss '{name}' is unknown; known: {', '.join(BASE_LOSSES)}")
    return BASE_LOSSES[name]


def wrapper_entry(name: str) -> WrapperEntry:
    """The table entry of ``--2d name``; an unknown name lists the known ones."""
    if name not in WRAPPERS:
        raise ValueError(f"--2d '{name}' is unknown; known: {', '.join(WRAPPERS)}")
    return WRAPPERS[name]


def validate_config(config: Config) -> None:
    """Objective checks that need no model or data (raise ValueError naming the flag)."""
    base, wrapper = base_loss_entry(config.loss), wrapper_entry(config.two_d)
    if config.dims is not None:
        check_dims(config.dims, flag="--dims")
    if base.in_batch_negatives and config.batch_size < 2:
        raise ValueError("--batch-size 1 leaves in-batch negatives with no negatives; use at least 2")
    if config.layer_dim_pairs is not None and config.two_d != "fixed":
        raise ValueError("--layer-dim-pairs needs --2d fixed")
    wrapper.validate(config)


def validate_for_model(config: Config, model_dim: int, num_layers: int) -> None:
    """Checks against the loaded model: the dims and the wrapper's layers must exist in it."""
    check_dims(config.dims or [model_dim], model_dim, flag="--dims")
    wrapper = wrapper_entry(config.two_d)
    if wrapper.all_layers and num_layers < 2:
        raise ValueError(f"--2d {config.two_d} needs a model with at least 2 layers")
    wrapper.validate_for_model(config, model_dim, num_layers)


def build_objective(
    config: Config, model_dim: int, num_layers: int, generator: torch.Generator, local: slice | None = None
) -> Objective:
    """The loss the loop calls, bound once: base loss from ``--loss``, wrapper from ``--2d``.

    ``local``: this rank's rows when columns are gathered across ranks (in-batch negatives only).
    """
    base = base_loss_entry(config.loss)
    base_loss = base.bind(config, local if base.in_batch_negatives else None)
    dims = list(config.dims or [model_dim])
    return wrapper_entry(config.two_d).build(base_loss, config, dims, num_layers, generator)

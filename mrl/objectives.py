"""The objectives table: every base loss and every Matryoshka / 2D wrapper that `train.py` can train.

An objective is a **base loss** (``--loss``: CoSENT, in-batch negatives, ...) inside a **wrapper**
(``--2d``: plain Matryoshka over dims, 2D random layer dropping, 2D fixed (layer, dim) pairs).
This module is the one place that knows them:

- each `BaseLossEntry` says what the loss needs from the data (a score column; in-batch
  negatives, i.e. duplicate-free batches and candidates gathered across ranks; how many text
  columns) and how its function is bound from the config;
- each `WrapperEntry` says how its loss is built from the config and which (layer, dim) cells
  it trains and evaluates, plus its own config checks;
- each `DistillEntry` is a self-distillation term (``--layer-distill``, ``--prefix-distill``):
  how a student's embeddings are pulled toward the model's own final layer / full width;
- each `TeacherEntry` is a teacher-distillation term (``--teacher-loss``): how the student's
  embeddings learn a frozen ``--teacher``'s cached ones at every Matryoshka dim.

Every entry also describes itself: ``fields``, the config fields it reads (`mrl.config.validate`
refuses such a field set while no chosen entry reads it: ``--n-layers-per-step needs --2d
random``), ``citation`` (shown in ``--help``) and ``card``, its line of the model card's recipe
(`mrl.card`, a ``str.format`` template over the run's config.json). The name is the table key.

`train.py` builds the loss with `build_objective`; `mrl.config` runs every check (the ones that
follow from the table's properties and each entry's own ``validate`` hooks). An unknown name is an
error listing the known ones. Adding a base loss or a 2D schedule is one pure function in
`mrl/losses.py` plus one entry below (README, "Extending"); nothing in `train.py` changes.

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
    AVERAGED_WEIGHTINGS,
    DIRECTIONS,
    BaseLoss,
    Distill,
    cosent_loss,
    embedding_mse,
    fixed_pairs_loss,
    gte_loss,
    layer_dropping_loss,
    matryoshka_loss,
    mnrl_loss,
    similarity_distill,
    teacher_distill_loss,
    unlabelled_distill_loss,
    with_prefix_distill,
)
from mrl.runtime import parse_int_pairs

Config = Any  # a `mrl.config.TrainConfig` (read by attribute only)
LossFn = Callable[[Tensor, Tensor | None], tuple[Tensor, dict[str, Tensor]]]


# --------------------------------------------------------------------------------------------
# Base losses: base_loss(columns (C, B, d), labels) -> scalar
# --------------------------------------------------------------------------------------------


def _nothing(*_args: Any) -> None:
    return None


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
    help, citation: one line each for ``--help``.
    fields: the config fields ``bind`` reads.
    card: the model card's text after the name, a ``str.format`` template over config.json.
    validate: its own config checks (raise ValueError naming the flag); run by `mrl.config.validate`.
    """

    bind: Callable[[Config, slice | None], BaseLoss]
    needs_score: bool = False
    in_batch_negatives: bool = False
    columns: tuple[int, int | None] = (2, 2)
    help: str = ""
    fields: tuple[str, ...] = ()
    citation: str = ""
    card: str = ""
    validate: Callable[[Config], None] = _nothing


def _in_batch(config: Config, local: slice | None, symmetric: bool = False) -> BaseLoss:
    """mnrl / mnrl-symmetric: `mnrl_loss` as before issue 25, or with ``--hardness`` the same
    directions through `gte_loss` (query -> doc; plus doc -> query per direction if symmetric)."""
    if config.hardness == "off":
        return partial(mnrl_loss, scale=config.scale, symmetric=symmetric, local=local)
    return partial(
        gte_loss,
        scale=config.scale,
        directions=("query-doc", "doc-query") if symmetric else ("query-doc",),
        partition_mode="per-direction",
        hardness=config.hardness,
        hardness_strength=config.hardness_strength,
        local=local,
    )


def _gte(config: Config, local: slice | None) -> BaseLoss:
    return partial(
        gte_loss,
        scale=config.scale,
        directions=tuple(config.directions),
        partition_mode=config.partition_mode,
        hardness=config.hardness,
        hardness_strength=config.hardness_strength,
        local=local,
    )


def _check_hardness(config: Config) -> None:
    if config.hardness_strength < 0:
        raise ValueError("--hardness-strength must not be negative")
    if config.hardness != "off" and config.hardness_strength == 0:
        raise ValueError(
            f"--hardness {config.hardness} needs --hardness-strength > 0 (alpha; 0 is no weighting)"
        )
    if config.hardness == "off" and config.hardness_strength != 0:
        raise ValueError("--hardness-strength needs --hardness in-batch|hard|all")


def _check_gte(config: Config) -> None:
    _check_hardness(config)
    directions = list(config.directions)
    unknown = [x for x in directions if x not in DIRECTIONS]
    if unknown or "query-doc" not in directions or len(set(directions)) != len(directions):
        raise ValueError(
            f"--directions: each once, among {', '.join(DIRECTIONS)}, with query-doc (it holds the "
            f"positive); got {' '.join(directions)}"
        )
    if config.partition_mode == "per-direction" and {"query-query", "doc-doc"} & set(directions):
        raise ValueError(
            "--partition-mode per-direction: every direction's softmax must hold the positive; "
            "query-query and doc-doc never do (use joint)"
        )


_HARDNESS_FIELDS = ("hardness", "hardness_strength")
# The card line of --hardness (mrl/card.py adds it after the loss of any entry that reads it).
HARDNESS_CARD = "`--hardness {hardness}`, alpha {hardness_strength} (Lan et al. 2025)"


BASE_LOSSES: dict[str, BaseLossEntry] = {
    "cosent": BaseLossEntry(
        bind=lambda config, local: partial(cosent_loss, scale=config.scale),
        needs_score=True,
        columns=(2, 2),
        help="CoSENT on scored pairs",
        fields=("scale",),
        citation="Su 2022, kexue.fm/archives/8847",
        card="scale {scale}",
    ),
    "mnrl": BaseLossEntry(
        bind=_in_batch,
        in_batch_negatives=True,
        columns=(2, None),
        help="in-batch negatives (anchor, positive, hard negatives...); --hardness weights the hard ones",
        fields=("scale", *_HARDNESS_FIELDS),
        citation="Henderson et al. 2017, arXiv:1705.00652; hardness: Lan et al. 2025, arXiv:2503.04812",
        card="scale {scale}",
        validate=_check_hardness,
    ),
    "mnrl-symmetric": BaseLossEntry(
        bind=partial(_in_batch, symmetric=True),
        in_batch_negatives=True,
        columns=(2, None),
        help="in-batch negatives, plus the positive -> anchor direction",
        fields=("scale", *_HARDNESS_FIELDS),
        citation="Henderson et al. 2017, arXiv:1705.00652; hardness: Lan et al. 2025, arXiv:2503.04812",
        card="scale {scale}",
        validate=_check_hardness,
    ),
    "gte": BaseLossEntry(
        bind=_gte,
        in_batch_negatives=True,
        columns=(2, None),
        help="in-batch negatives in up to four directions, one softmax per anchor (see --directions)",
        fields=("scale", "directions", "partition_mode", *_HARDNESS_FIELDS),
        citation="Li et al. 2023 (GTE), arXiv:2308.03281; hardness: Lan et al. 2025, arXiv:2503.04812",
        card="scale {scale}, directions {directions}, {partition_mode} softmax",
        validate=_check_gte,
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
    shallow_cells: the (layer, dim) cells below the final layer that the wrapper trains; with
        ``--layer-distill`` they are the students on plain sentences (``--distill-data``).
    unlabelled: ``emb -> (total, terms)`` for a batch of plain sentences, emb (N, D) or
        (L, N, D): only the distillation terms; None when no distillation is on.
    embedding_layer: with ``all_layers``, the loss also takes the pooled embedding-layer output
        as row 0: (L + 1, C, B, D) (`mrl.model.Encoder.forward`; upstream's 2D candidates).
    teacher: ``(student, teacher) -> (weighted total, {"teacher_d{d}": term})`` with the final
        layer's (..., N, D) embeddings and a frozen teacher's (..., N, D') of the same texts
        (``--teacher``); None without a teacher.
    """

    loss: LossFn
    all_layers: bool
    eval_dims: list[int]
    eval_layers: list[int] | None
    metadata: dict[str, Any] = field(default_factory=dict)
    shallow_cells: list[tuple[int, int]] = field(default_factory=list)
    unlabelled: Callable[[Tensor], tuple[Tensor, dict[str, Tensor]]] | None = None
    embedding_layer: bool = False
    teacher: Callable[[Tensor, Tensor], tuple[Tensor, dict[str, Tensor]]] | None = None


@dataclass(frozen=True)
class WrapperEntry:
    """A Matryoshka / 2D wrapper.

    build: ``(base_loss, config, dims, num_layers, generator) -> Objective``; ``dims`` is
        ``--dims`` or the model's full dim; ``generator`` draws its random choices (the same on
        every rank, saved in checkpoints).
    all_layers: the loss takes every block's embedding, (L, C, B, D).
    validate: its own config checks that need no model (raise ValueError naming the flag); run
        by `mrl.config.validate`.
    validate_for_model: its checks against the model's dim and number of blocks.
    help, citation: one line each for ``--help``.
    fields: the config fields ``build`` reads.
    card: the model card's text after the evaluated layers, a ``str.format`` template over
        config.json.
    """

    build: Callable[[BaseLoss, Config, list[int], int, torch.Generator], Objective]
    all_layers: bool = False
    validate: Callable[[Config], None] = _nothing
    validate_for_model: Callable[[Config, int, int], None] = _nothing
    help: str = ""
    fields: tuple[str, ...] = ()
    citation: str = ""
    card: str = ""


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
    # Upstream's weightings draw among hidden states 0..L-1, the embedding output included (issue
    # 25); ours ("proportional") among blocks 1..L-1 unless --embedding-candidate adds it.
    embedding_layer = config.depth_weighting in AVERAGED_WEIGHTINGS or config.embedding_candidate
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
        embedding_layer=embedding_layer,
        **layer_distill_args(config),
    )
    layers = list(range(1, num_layers + 1))
    return Objective(
        loss,
        all_layers=True,
        eval_dims=sorted(dims, reverse=True),
        eval_layers=layers,
        shallow_cells=[(layer, d) for layer in layers[:-1] for d in dims],
        embedding_layer=embedding_layer,
    )


def _check_layer_dropping(config: Config) -> None:
    if config.n_layers_per_step == 0 or config.n_layers_per_step < -1:
        raise ValueError("--n-layers-per-step must be >= 1, or -1 for every earlier layer")


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
        **layer_distill_args(config),
    )
    # Every trained dim is evaluated at every evaluated layer (the pairs add their own dims).
    return Objective(
        loss,
        all_layers=True,
        eval_dims=sorted(set(dims) | {d for _, d in pairs}, reverse=True),
        eval_layers=sorted({layer for layer, _ in pairs} | {num_layers}),
        metadata={"layer_dim_pairs": pairs},
        shallow_cells=[(layer, d) for layer, d in pairs if layer < num_layers],
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


# What the 2D wrappers read besides --dims: the KL term pulling shallow layers toward the final one.
_KL_FIELDS = ("kl_weight", "kl_temperature", "detach_kl_target")
_KL_CARD = "KL weight {kl_weight} (T {kl_temperature})"

WRAPPERS: dict[str, WrapperEntry] = {
    "off": WrapperEntry(
        build=_matryoshka,
        help="Matryoshka over --dims at the final layer",
        fields=("dim_weights", "n_dims_per_step"),
        citation="Kusupati et al. 2022, arXiv:2205.13147",
    ),
    "random": WrapperEntry(
        build=_layer_dropping,
        all_layers=True,
        validate=_check_layer_dropping,
        help="2D: the final layer plus randomly sampled earlier layers (2DMSE)",
        fields=(
            "dim_weights",
            "n_dims_per_step",
            "n_layers_per_step",
            "last_layer_weight",
            "prior_layers_weight",
            "depth_weighting",
            "embedding_candidate",
            *_KL_FIELDS,
        ),
        citation="Li et al. 2024, arXiv:2402.14776",
        card=_KL_CARD + ", {n_layers_per_step} layer(s)/step, depth weighting {depth_weighting}",
    ),
    "fixed": WrapperEntry(
        build=_fixed_pairs,
        all_layers=True,
        validate=_check_fixed_pairs,
        validate_for_model=_check_fixed_pairs_for_model,
        help="2D: a fixed (layer, dim) schedule (Starbucks)",
        fields=("layer_dim_pairs", *_KL_FIELDS),
        citation="Zhuang et al. 2024, arXiv:2410.13230",
        card=_KL_CARD,
    ),
}


# --------------------------------------------------------------------------------------------
# Self-distillation: distill(student (N, d), teacher (N, d')) -> scalar, the teacher detached.
# The teacher is the model itself: its final layer (--layer-distill, for each shallow cell a 2D
# wrapper trains) or its full width (--prefix-distill, for each smaller --dims prefix).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistillEntry:
    """A self-distillation term.

    bind: ``config -> distill(student, teacher)``.
    prefix: it compares similarities only, so a d-prefix can learn it from the full width
        (an embedding-level term cannot: the prefix is part of its own teacher).
    help, citation: one line each for ``--help``.
    fields: the config fields ``bind`` reads, and --distill-weight (every term is weighed by it).
    card: the model card's text after the name, a ``str.format`` template over config.json.
    """

    bind: Callable[[Config], Distill]
    prefix: bool = True
    help: str = ""
    fields: tuple[str, ...] = ("distill_weight",)
    citation: str = ""
    card: str = ""


DISTILLS: dict[str, DistillEntry] = {
    "kl": DistillEntry(
        bind=lambda config: partial(similarity_distill, kind="kl", temperature=config.distill_temperature),
        help="row-wise KL between the in-batch similarity matrices (temperature --distill-temperature)",
        fields=("distill_weight", "distill_temperature"),
        citation="ours: experiment E",
        card="T {distill_temperature}",
    ),
    "mse": DistillEntry(
        bind=lambda config: partial(similarity_distill, kind="mse"),
        help="squared error between the in-batch similarity matrices",
        citation="ours: experiment E",
    ),
    "emb": DistillEntry(
        bind=lambda config: partial(similarity_distill, kind="emb"),
        prefix=False,
        help="squared error between the unit embeddings (layer distillation only)",
        citation="ours: experiment E",
    ),
}


def distill_entry(name: str, flag: str) -> DistillEntry:
    """The table entry of ``flag name``; an unknown name lists the known ones."""
    if name not in DISTILLS:
        raise ValueError(f"{flag} '{name}' is unknown; known: off, {', '.join(DISTILLS)}")
    return DISTILLS[name]


def layer_distill_args(config: Config) -> dict[str, Any]:
    """Keyword arguments of a 2D wrapper's loss for ``--layer-distill`` (none when it is off)."""
    if config.layer_distill == "off":
        return {}
    distill = distill_entry(config.layer_distill, "--layer-distill").bind(config)
    return {"distill": distill, "distill_weight": config.distill_weight}


def add_distillation(objective: Objective, config: Config, dims: list[int]) -> Objective:
    """``--prefix-distill`` on the labelled loss, and the loss of ``--distill-data`` batches."""
    prefix = None
    if config.prefix_distill != "off":
        prefix = distill_entry(config.prefix_distill, "--prefix-distill").bind(config)
        objective.loss = partial(
            with_prefix_distill, objective.loss, dims=dims, distill=prefix, weight=config.distill_weight
        )
    layer = layer_distill_args(config).get("distill")
    if layer is not None or prefix is not None:
        objective.unlabelled = partial(
            unlabelled_distill_loss,
            layer_cells=objective.shallow_cells if layer is not None else [],
            prefix_dims=dims if prefix is not None else [],
            layer_distill=layer,
            prefix_distill=prefix,
            layer_weight=config.distill_weight,
            prefix_weight=config.distill_weight,
        )
    return objective


# --------------------------------------------------------------------------------------------
# Teacher distillation: distill(student (N, d), teacher (N, d)) -> scalar at every --dims d, the
# teacher another, frozen model (--teacher) whose embeddings were computed once and cached.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherEntry:
    """A teacher-distillation term (``--teacher-loss``).

    bind: ``config -> distill(student prefix, teacher prefix)``, applied at every --dims d.
    help, citation: one line each for ``--help``.
    fields: the config fields ``bind`` reads, and --teacher-weight (the term is weighed by it).
    card: the model card's text after the name, a ``str.format`` template over config.json.
    """

    bind: Callable[[Config], Distill]
    help: str = ""
    fields: tuple[str, ...] = ("teacher_weight",)
    citation: str = ""
    card: str = ""


TEACHERS: dict[str, TeacherEntry] = {
    "mse": TeacherEntry(
        bind=lambda config: embedding_mse,
        help="mean squared error between the student's and the teacher's raw d-prefixes",
        citation="Reimers & Gurevych 2020, arXiv:2004.09813 (MSE distillation)",
        card="MSE of the raw d-prefixes",
    ),
    "kl": TeacherEntry(
        bind=lambda config: partial(similarity_distill, kind="kl", temperature=config.teacher_temperature),
        help="row-wise KL between the student's and the teacher's in-batch similarities at d "
        "(temperature --teacher-temperature)",
        fields=("teacher_weight", "teacher_temperature"),
        citation="ours: experiment E's similarity KL",
        card="row-wise similarity KL, T {teacher_temperature}",
    ),
}


def teacher_entry(name: str) -> TeacherEntry:
    """The table entry of ``--teacher-loss name``; an unknown name lists the known ones."""
    if name not in TEACHERS:
        raise ValueError(f"--teacher-loss '{name}' is unknown; known: {', '.join(TEACHERS)}")
    return TEACHERS[name]


def add_teacher(objective: Objective, config: Config, dims: list[int]) -> Objective:
    """``--teacher``: the term that pulls the final layer toward the teacher at every dim,
    weighed by --dim-weights (as the Matryoshka loss) and, as a whole, by --teacher-weight."""
    if config.teacher is None:
        return objective
    distill = teacher_entry(config.teacher_loss).bind(config)
    weights = [config.teacher_weight * w for w in config.dim_weights or [1.0] * len(dims)]
    objective.teacher = partial(teacher_distill_loss, dims=dims, distill=distill, weights=weights)
    return objective


# --------------------------------------------------------------------------------------------
# What train.py and mrl.config ask (mrl.config runs the checks)
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


def build_objective(
    config: Config, model_dim: int, num_layers: int, generator: torch.Generator, local: slice | None = None
) -> Objective:
    """The loss the loop calls, bound once: base loss from ``--loss``, wrapper from ``--2d``.

    ``local``: this rank's rows when columns are gathered across ranks (in-batch negatives only).
    """
    base = base_loss_entry(config.loss)
    base_loss = base.bind(config, local if base.in_batch_negatives else None)
    dims = list(config.dims or [model_dim])
    objective = wrapper_entry(config.two_d).build(base_loss, config, dims, num_layers, generator)
    return add_teacher(add_distillation(objective, config, dims), config, dims)

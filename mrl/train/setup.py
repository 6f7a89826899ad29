"""Setting a training up: data, encoder, batches, optimiser and LR schedule.

Each function does one part of `train.py`'s "data, model, objective, batches, optimizer" phase
and stops with a one-line error naming the flag when the input cannot work. The adaptor's
training (`mrl/train/adaptor.py`) reuses the encoder, optimiser and batch stream from here.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch

from mrl.config import TrainConfig, validate_for_model, validate_for_teacher
from mrl.data import (
    BatchSampler,
    BatchSizeError,
    DataError,
    Examples,
    TokenizingCollator,
    check_scored_set,
    check_tokenized,
    load_distill_texts,
    load_source,
    parse_where,
    source_name,
)
from mrl.dist import gather_nograd
from mrl.embcache import cache_folder
from mrl.model import Encoder
from mrl.objectives import BaseLossEntry
from mrl.rundir import recorded_derived
from mrl.runtime import main_error
from mrl.teacher import TeacherTargets, teacher_targets


def lr_factor(step: int, warmup_steps: int, total_steps: int, scheduler: str) -> float:
    """Multiplier of the peak LR at ``step``: linear warmup from 0, then linear/cosine/constant."""
    if step < warmup_steps:
        return step / warmup_steps
    if scheduler == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return max(0.0, 1.0 - progress)


def batch_stream(sampler: BatchSampler, examples, collate, epoch: int, position: int, rows: slice):
    """Yield ``(batch, (epoch, next_position))`` forever, epoch after epoch.

    The sampler draws global batches (world_size * B rows, free of duplicate texts as a whole);
    this process keeps ``rows``, its rank's B of them, so that all ranks together see exactly
    what one process with the global batch would. The order is a function of (seed, epoch) only,
    so a resumed run rebuilds the epoch and starts at ``position``: two integers in the checkpoint.
    """
    while True:
        batches = sampler.batches(epoch)
        for i in range(position, len(batches)):
            yield collate([examples[j] for j in batches[i][rows]]), (epoch, i + 1)
        epoch, position = epoch + 1, 0


def load_data(config: TrainConfig, base: BaseLossEntry):
    """The training examples and the dev sets, checked against what the base loss needs."""
    try:
        where = {}
        for spec in config.where:
            where.update(parse_where(spec))
        score_column = (config.score_column or "score") if base.needs_score else None
        train = load_source(
            config.train_data,
            config.train_split,
            config.train_subset,
            config.text_columns,
            score_column,
            where or None,
            tuple(config.score_range) if config.score_range and score_column else None,
            read_scores=base.needs_score,  # a loss without scores neither parses nor gathers them
        )
        eval_sets = {
            source_name(s): load_source(s, "validation", score_column="score") for s in config.eval_data
        }
    except (DataError, ValueError, ImportError, FileNotFoundError) as error:
        main_error(str(error))
    if config.max_train_samples:
        train.columns = [col[: config.max_train_samples] for col in train.columns]
        train.scores = train.scores[: config.max_train_samples] if train.scores else None
    fewest, most = base.columns
    if (
        train.n_columns < fewest
        or (most is not None and train.n_columns > most)
        or (base.needs_score and train.scores is None)
    ):
        wanted = f"{fewest}" + ("" if most == fewest else f" to {most}" if most else " or more")
        score = " and a score column" if base.needs_score else ""
        main_error(
            f"--loss {config.loss} needs {wanted} text columns{score}; "
            f"{train.source} has columns {train.column_names} and {'a' if train.scores else 'no'} score"
        )
    check_eval_sets(eval_sets, config.eval_data)
    # CoSENT learns from the order of scores within a batch: with every score equal there is no
    # pair to order, the loss is exactly 0 and so is its gradient (a run that trains nothing).
    if config.loss == "cosent" and train.scores and len(set(train.scores)) == 1:
        main_error(
            f"--loss cosent: every score in {train.source} is {train.scores[0]:g}; CoSENT learns from "
            "differences between scores (loss and gradient would be 0): check --score-column"
        )
    return train, eval_sets


def check_eval_sets(eval_sets: dict[str, Examples], specs: list[str]) -> None:
    """The dev sets of ``--eval-data`` (the encoder's and the adaptor's): each one scored pairs
    that can give a correlation, and no two of one name (one would overwrite the other); else one
    line naming the flag and the file."""
    for ex in eval_sets.values():
        if ex.n_columns != 2 or ex.scores is None:
            main_error(f"--eval-data {ex.source}: needs 2 text columns and a score column")
        try:
            check_scored_set(ex, "--eval-data")  # constant gold scores, two pairs: no correlation
        except DataError as error:
            main_error(str(error))
    if len(eval_sets) < len(specs):  # two dev sets of one name would overwrite each other
        main_error(f"--eval-data {specs}: two sets have the same name; rename one file")


def build_encoder(config: TrainConfig, device: torch.device, world_size: int):
    """``(encoder, model)``: the raw `Encoder` (eval, saving) and what the step calls (DDP, compiled)."""
    try:
        encoder = Encoder(
            config.model,
            config.pooling,
            config.max_seq_length,
            trust_remote_code=config.trust_remote_code,
            padding_free=config.padding_free,
        ).to(device)
        validate_for_model(config, encoder.dim, encoder.num_layers, has_head=encoder.head is not None)
    except (OSError, ValueError) as error:
        main_error(str(error).splitlines()[0])
    # BERT-style pooler heads are never used by our pooling: freeze them, so AdamW leaves them
    # alone and DDP does not wait for gradients that never come.
    pooler = getattr(encoder.model, "pooler", None)
    if isinstance(pooler, torch.nn.Module):
        pooler.requires_grad_(False)
    if config.exit_heads == "none" and encoder.exit_heads:
        encoder.exit_heads.requires_grad_(False)  # a model's own heads stay as they are, like its head
    if config.exit_heads != "none":  # new heads start as the identity; a model's own are kept
        depths = list(range(1, encoder.num_layers)) if config.two_d != "off" else []  # what a loss reaches
        encoder.add_exit_heads(depths + ([encoder.num_layers] if config.exit_heads == "all" else []))
        encoder.exit_heads_detached = config.exit_head_detach
    if encoder.head is not None:
        # A head after pooling (a Dense layer, an adaptor) stays as it is: checkpoints hold the
        # transformer's weights only, and the saved model writes the head back unchanged.
        encoder.head.requires_grad_(False)
    if config.gradient_checkpointing:
        encoder.model.gradient_checkpointing_enable()
    model = encoder
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            encoder,
            device_ids=[device.index] if device.type == "cuda" else None,
            # A step that samples some depths leaves the other depths' exit heads without gradient.
            find_unused_parameters=encoder.exit_heads is not None,
        )
    if config.compile:
        # Every new padded length is a new shape: dynamic=True avoids one recompile per length.
        model = torch.compile(model, dynamic=True)
    return encoder, model


def make_batches(
    config: TrainConfig, train, encoder: Encoder, world_size: int, avoid_duplicates: bool, warn=None
):
    """``(collate, sampler)``: every training text is tokenised once; a step only pads. ``warn``
    gets the data's warnings (`mrl.data.check_token_ids`; default stderr)."""
    unique_texts = list(dict.fromkeys(text for column in train.columns for text in column))
    token_ids = dict(zip(unique_texts, encoder.token_ids(unique_texts)))
    try:  # a text of nothing but special tokens would train on [CLS] [SEP] alone
        check_tokenized(train, encoder, token_ids, warn)
    except DataError as error:
        main_error(str(error))
    collate = TokenizingCollator(lambda texts: encoder.pad([token_ids[t] for t in texts]))
    # A pair is padded to its longest column (all columns go through one forward).
    lengths = [max(len(token_ids[column[i]]) for column in train.columns) for i in range(len(train))]
    try:
        sampler = BatchSampler(
            train,
            config.batch_size * world_size,  # global batches; each rank takes its slice
            seed=config.seed,
            drop_last=True,
            # In-batch negatives: a repeated text in a batch would be a false negative.
            avoid_duplicates=avoid_duplicates,
            lengths=lengths if config.group_by_length else None,
        )
    except BatchSizeError as error:
        main_error(error.for_flag("--batch-size", config.batch_size))
    except ValueError as error:
        main_error(f"--batch-size: {error}")
    return collate, sampler


def make_distill_batches(config: TrainConfig, encoder: Encoder, eval_sets: dict, texts_per_batch: int):
    """``--distill-data``: ``(batch n -> {"features", "texts"}, the distinct texts)`` of plain sentences.

    Batch n is a function of (seed, n) only, so a resumed run needs no extra state. Every text of
    the dev sets and of ``--distill-exclude`` is dropped (see `mrl.data.load_distill_texts`).
    """
    exclude = [t for ex in eval_sets.values() for column in ex.columns for t in column]
    try:
        texts, dropped = load_distill_texts(config.distill_data, config.distill_exclude, exclude)
    except (DataError, ValueError) as error:
        main_error(str(error))
    print(f"--distill-data: {len(texts)} distinct texts ({dropped} dropped: they are evaluation text)")
    ids = encoder.token_ids(texts)
    try:
        sampler = BatchSampler(
            Examples([texts], None, "--distill-data", ["text"]),
            config.distill_batch_size or texts_per_batch,
            seed=config.seed + 2,
            lengths=[len(i) for i in ids] if config.group_by_length else None,
        )
    except BatchSizeError as error:
        main_error(error.for_flag("--distill-batch-size", config.distill_batch_size or texts_per_batch))
    except ValueError as error:
        main_error(f"--distill-batch-size: {error}")

    def batch(n: int) -> dict:
        rows = sampler.batches(n // len(sampler))[n % len(sampler)]  # epoch n // len, batch n % len
        return {"features": encoder.pad([ids[i] for i in rows]), "texts": [texts[i] for i in rows]}

    return batch, texts


def build_teacher(
    config: TrainConfig, run_dir: Path, texts: list[str], model_dim: int, device: torch.device
) -> TeacherTargets:
    """``--teacher``: its embeddings of ``texts`` (every training and --distill-data text), from
    the cache or computed once (`mrl.teacher`). Refused in one line when its width cannot serve
    --dims, and on --resume when the teacher's weights changed (both before anything is embedded)."""
    recorded = recorded_derived(run_dir, "teacher_model_key") if config.resume else None

    def check(dim: int, key: str) -> None:
        validate_for_teacher(config, dim, model_dim)
        if recorded and recorded != key:
            raise ValueError(
                f"--resume: the teacher {config.teacher} changed since the run started (model key "
                f"{recorded[:12]} -> {key[:12]}); restore it or start a new run"
            )

    try:
        return teacher_targets(
            config.teacher,
            texts,
            cache_folder(config.embedding_cache),
            config.max_seq_length,
            config.trust_remote_code,
            device,
            check=check,
        )
    except (OSError, ValueError) as error:
        main_error(str(error).splitlines()[0])


def count_steps(config: TrainConfig, sampler: BatchSampler) -> tuple[int, int, int]:
    """``(steps_per_epoch, total_steps, warmup_steps)``: steps_per_epoch is epoch 0's.

    ``--epochs`` counts each epoch's real batches: with duplicate-free batches their number
    changes from epoch to epoch (clashes decide how many fill up), so an upper bound would spill
    into the next epoch and size the LR schedule wrong.
    """
    epochs = 1 if config.max_steps else config.epochs
    try:  # building an epoch's batches finds out whether duplicate-free ones can be filled
        steps = [max(1, sampler.num_batches(epoch) // config.grad_accum) for epoch in range(epochs)]
        if config.max_steps:  # and so for every epoch --max-steps reaches (not in the loop, later)
            fill_epochs(sampler, config.max_steps * config.grad_accum)
    except BatchSizeError as error:
        main_error(error.for_flag("--batch-size", config.batch_size))
    total_steps = config.max_steps or sum(steps)
    return steps[0], total_steps, round(config.warmup_ratio * total_steps)


def fill_epochs(sampler, batches: int) -> None:
    """Build the epochs that the first ``batches`` batches of `batch_stream` reach: a BatchSizeError
    now (for the caller to name its flag) rather than a traceback steps later. Duplicate-free epochs
    differ in how many batches fill up, and in principle one could fill none."""
    epoch = 0
    while batches > 0:
        batches -= sampler.num_batches(epoch)
        epoch += 1


def build_optimizer(
    encoder: Encoder, config: TrainConfig, device: torch.device, warmup_steps: int, total_steps: int
):
    """``(clip_groups, optimizer, schedule)``: AdamW, no weight decay on biases and LayerNorm
    weights (the 1-D parameters), as is customary; warmup then the chosen decay. Exit heads learn
    at their own --exit-head-lr: at the encoder's lr a freshly added map would barely move.
    ``clip_groups``: the parameter lists whose gradient norms are clipped one by one (`clip`):
    one list, or, with detached exit heads, the encoder's and the heads' (so the heads' gradients
    do not change how much the encoder's are scaled down)."""
    exit_heads = getattr(encoder, "exit_heads", None)
    heads = {id(p) for p in exit_heads.parameters()} if exit_heads else set()
    params = [p for p in encoder.parameters() if p.requires_grad]
    trunk = [p for p in params if id(p) not in heads]
    head = [p for p in params if id(p) in heads]
    detached = getattr(encoder, "exit_heads_detached", False) and head
    clip_groups = [trunk, head] if detached else [params]
    groups = [
        {"params": [p for p in trunk if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in trunk if p.ndim < 2], "weight_decay": 0.0},
    ]
    if head:
        groups += [
            {
                "params": [p for p in head if p.ndim >= 2],
                "weight_decay": config.weight_decay,
                "lr": config.exit_head_lr,
            },
            {"params": [p for p in head if p.ndim < 2], "weight_decay": 0.0, "lr": config.exit_head_lr},
        ]
    # The fused kernel updates all tensors in one pass (on CPU: 13 ms instead of 67 ms a step
    # for MiniLM-L6).
    optimizer = torch.optim.AdamW(groups, lr=config.lr, fused=device.type in ("cuda", "cpu"))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        partial(lr_factor, warmup_steps=warmup_steps, total_steps=total_steps, scheduler=config.scheduler),
    )
    return clip_groups, optimizer, schedule


def clip(clip_groups: list[list[torch.nn.Parameter]], max_norm: float) -> torch.Tensor:
    """Clip each group's gradient norm to ``max_norm`` (0: no clipping); returns the first group's
    norm before clipping (the encoder's, which train/grad_norm logs)."""
    norms = [
        torch.nn.utils.clip_grad_norm_(group, max_norm if max_norm > 0 else float("inf"))
        for group in clip_groups
    ]
    return norms[0]


def to_device(batch: dict, device: torch.device, gather: bool):
    """A collated batch's ``(features, labels)`` on ``device``; labels (scores) of the whole global
    batch when columns are gathered across ranks, None for losses without scores."""
    features = {k: v.to(device, non_blocking=True) for k, v in batch["features"].items()}
    labels = batch["labels"].to(device) if batch["labels"] is not None else None
    if gather and labels is not None:
        labels = gather_nograd(labels)
    return features, labels

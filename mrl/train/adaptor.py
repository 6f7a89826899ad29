"""The adaptor's training (``--adaptor``): a small head on a frozen encoder's cached embeddings.

Trains only ``f(e) = x + g(x)`` (or ``Q x`` for a rotation), ``x = e / |e|`` (`mrl.adaptor`). The
corpus (and pairs, and dev sets) are embedded once, cached on disk by model and content
(`mrl.embcache`), so a second run starts in seconds; the loop (`mrl/train/loop.py`, the same as the
encoder's) then only touches vectors. Per step: B corpus rows (B, D) -> f ->
`mrl.adaptor.adaptor_loss` over the Matryoshka dims (similarity / neighbourhood / reconstruction,
and the pairs' ranking loss) -> AdamW. Saves ``model/`` (the encoder with the adaptor after
pooling: Normalize + Dense for a linear or rotation one) or, from precomputed embeddings,
``adaptor/`` (the head alone, for `mrl.adaptor.transform_embeddings`). Checkpoints hold the
adaptor, optimizer, schedule and both data positions, so ``--resume`` continues exactly.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from mrl.adaptor import (
    Adaptor,
    AdaptorData,
    NeighbourBatchSampler,
    adaptor_loss,
    corpus_neighbours,
    embed_adaptor_data,
    load_adaptor_data,
    load_adaptor_texts,
    pca_rotation,
)
from mrl.card import write_card
from mrl.checkpoint import save_folder_atomic, write_text_atomic
from mrl.config import TrainConfig, parse_loss_weights
from mrl.data import BatchSampler, BatchSizeError, DataError, Examples, load_source, source_name
from mrl.embcache import cache_folder
from mrl.evaluation import correlations, format_table, score_pairs
from mrl.heads import head_modules, save_head
from mrl.losses import check_dims
from mrl.model import Encoder
from mrl.rundir import check_data
from mrl.runtime import main_error
from mrl.tracking import Tracker
from mrl.train.loop import Meter
from mrl.train.setup import (
    batch_stream,
    build_encoder,
    build_optimizer,
    check_eval_sets,
    clip,
    fill_epochs,
)
from mrl.train.state import TrainState


@dataclass
class AdaptorTraining:
    """Everything one step of the adaptor's training touches (see `build`)."""

    config: TrainConfig
    run_dir: Path
    adaptor: Adaptor
    encoder: Encoder | None  # None when the vectors were precomputed (--adaptor-embeddings)
    data: AdaptorData
    objective: Callable  # partial(adaptor_loss, ...)
    corpus: torch.Tensor  # (N, D) frozen vectors, on the device
    pairs: torch.Tensor | None  # (2, P, D) query and document vectors, or None
    sampler: Any
    pair_sampler: BatchSampler | None
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    clip_groups: list[list[torch.nn.Parameter]]
    dims: list[int]
    loss_weights: dict[str, float]
    total_steps: int
    derived: dict[str, Any]
    embed_seconds: float
    cache_dir: Path
    state_keys: tuple[str, ...] = ("step", "cursor", "pair_cursor", "optimizer", "schedule")
    loss_tag: str = "train/adaptor_loss"
    corpus_rows: Iterator | None = None
    pair_rows: Iterator | None = None
    train_start: float = 0.0

    @property
    def weights(self) -> torch.nn.Module:
        return self.adaptor

    @property
    def has_dev(self) -> bool:
        return bool(self.data.dev)

    def step(self, state: TrainState, meter: Meter) -> torch.Tensor:
        """One optimiser step on B corpus rows (and P pairs); returns the gradient norm."""
        adaptor = self.adaptor
        rows, state.cursor = next(self.corpus_rows)
        original = self.corpus[rows]  # (B, D) frozen vectors
        batch_pairs = None
        if self.pair_rows is not None:
            pair_index, state.pair_cursor = next(self.pair_rows)
            batch_pairs = adaptor(self.pairs[:, pair_index])  # (2, P, D) adapted query, document
        loss, terms = self.objective(original, adaptor(original), pairs=batch_pairs)
        if not torch.isfinite(loss):
            raise SystemExit(f"error: non-finite adaptor loss at step {state.step}")
        loss.backward()
        grad_norm = clip(self.clip_groups, self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        meter.add(loss, terms, len(rows), 0)
        return grad_norm

    def start(self, state: TrainState, tracker: Tracker) -> None:
        """Log the start, and position both data streams at ``state``'s cursors."""
        tracker.print(
            f"resuming at step {state.step} from {state.folder}"
            if state.resumed_step is not None
            else f"adaptor run: {json.dumps(self.derived)}"
        )
        tracker.print(f"embeddings ready in {self.embed_seconds:.1f} s (cache: {self.cache_dir})")
        self.corpus_rows = batch_stream(
            self.sampler, range(len(self.corpus)), torch.tensor, *state.cursor, rows=slice(None)
        )
        if self.pair_sampler:
            self.pair_rows = batch_stream(
                self.pair_sampler,
                range(self.pairs.shape[1]),
                torch.tensor,
                *state.pair_cursor,
                rows=slice(None),
            )
        self.train_start = time.perf_counter()

    def evaluate(self) -> tuple[dict[str, float], dict[str, list[dict]]]:
        """STS dev Spearman of the adapted cached vectors -> ({tag: value}, {set: records}); the
        records (one per dim, no layer: the encoder is frozen) go to eval_dev.json and the card."""
        scalars, records = {}, {}
        device = self.corpus.device
        with torch.no_grad():
            for name, (first, second, scores) in self.data.dev.items():
                a, b = self.adaptor(first.to(device)).cpu(), self.adaptor(second.to(device)).cpu()
                for d in self.dims:
                    scalars[f"val/{name}/spearman_d{d}"] = correlations(a, b, scores, d)["spearman"]
                records[name] = score_pairs(a[None], b[None], scores, sorted(self.dims, reverse=True), [None])
        return scalars, records

    def extra_state(self) -> dict[str, Any]:
        return {}  # nothing here is random after the start

    def load_extra_state(self, saved: dict[str, Any]) -> None:
        pass

    def finish(self, state: TrainState, records: dict[str, list[dict]], tracker: Tracker) -> Path:
        """The adapted model (or the adaptor alone), with its recipe."""
        config, adaptor, run_dir = self.config, self.adaptor, self.run_dir
        train_seconds = time.perf_counter() - self.train_start
        tracker.scalars(
            state.step, {"perf/train_seconds": train_seconds, "perf/embed_seconds": self.embed_seconds}
        )
        recipe = {
            **adaptor.config(),
            "loss_weights": self.loss_weights,
            "k": config.adaptor_k,
            "temperature": config.adaptor_temperature,
            "neighbours": config.adaptor_neighbours,
            "init": config.adaptor_init,
            "dims": self.dims,
            "dim_weights": config.dim_weights,
            "base_model": None if config.adaptor_embeddings else config.model,
            "data": self.data.info,
            "trained_steps": state.step,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "seed": config.seed,
        }
        if records:  # the last dev evaluation, as the encoder's runs keep it
            write_text_atomic(run_dir / "eval_dev.json", json.dumps(records, indent=2))
            for name, recs in records.items():
                tracker.print(f"\n{name} (dev), Spearman x100 (retention):\n{format_table(recs)}")
        adaptor.eval()
        # Written beside, then renamed: a full disk leaves the old folder or none, never half of one.
        if self.encoder is not None:
            self.encoder.attach_head(head_modules(adaptor))
            where = run_dir / "model"
            meta = {"dims": sorted(self.dims, reverse=True), "adaptor": recipe}
            save_folder_atomic(where, lambda folder: self.encoder.save(folder, meta))
            # A card like any trained model's (mrl/card.py): what it was trained from, dev scores.
            wall = time.perf_counter() - self.train_start + self.embed_seconds
            tracker.print(f"model card: {write_card(where, run_dir, None, wall, state.resumed_step)}")
        else:
            where = run_dir / "adaptor"

            def write_adaptor(folder: Path) -> None:
                entries = save_head(folder, head_modules(adaptor))
                write_text_atomic(folder / "modules.json", json.dumps(entries, indent=2) + "\n")
                write_text_atomic(folder / "adaptor.json", json.dumps(recipe, indent=2) + "\n")

            save_folder_atomic(where, write_adaptor)
        tracker.print(f"done in {train_seconds:.1f} s of training: adaptor saved to {where}")
        return run_dir


def build(config: TrainConfig, run_dir: Path, device: torch.device) -> AdaptorTraining:
    """The cached vectors (encoded once), the adaptor, its loss, samplers and optimiser."""
    torch.manual_seed(config.seed)  # the MLP's first layer; nothing else here is random
    cache_dir = cache_folder(config.embedding_cache)
    start = time.perf_counter()
    data, encoder, fingerprint = load_vectors(config, run_dir, device, cache_dir)
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
    sampler, pair_sampler = make_samplers(config, data)
    # (after every refusal, so that a refused run prints one line)
    if len(data.corpus) < dim:  # the fitted map is under-determined: most directions see no data
        print(
            f"warning: the adaptor is fitted on {len(data.corpus)} vectors of {dim} dims: fewer vectors "
            "than dims leave most of the map unconstrained by data (use a larger corpus)",
            file=sys.stderr,
        )
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
    return AdaptorTraining(
        config=config, run_dir=run_dir, adaptor=adaptor, encoder=encoder, data=data, objective=objective,
        corpus=corpus, pairs=pairs, sampler=sampler, pair_sampler=pair_sampler, optimizer=optimizer,
        schedule=schedule, clip_groups=clip_groups, dims=dims, loss_weights=weights,
        total_steps=total_steps, derived=derived, embed_seconds=embed_seconds, cache_dir=cache_dir,
    )  # fmt: skip


def load_vectors(config: TrainConfig, run_dir: Path, device: torch.device, cache_dir: Path):
    """``(data, encoder, fingerprint)``: the frozen vectors, embedded by the encoder (cached) or
    read from --adaptor-embeddings (encoder None), and the data file's fingerprint for --resume."""
    encoder = None
    # The vectors come from a file: --resume on a changed one would silently mix two corpora
    # (checked on the file's bytes before anything is encoded; rows are not counted here).
    spec = config.adaptor_embeddings or config.train_data
    try:
        fingerprint = check_data(run_dir, spec, None, config.resume) if Path(spec).is_file() else None
    except ValueError as error:
        main_error(str(error))
    try:
        if config.adaptor_embeddings:
            return load_adaptor_data(config.adaptor_embeddings, config.adaptor_pairs), None, fingerprint
        dev_sets = {
            source_name(s): load_source(s, "validation", score_column="score") for s in config.eval_data
        }
        loaded = load_adaptor_texts(config.train_data, config.adaptor_pairs, config.text_columns)
    except (DataError, ValueError, ImportError, FileNotFoundError) as error:
        main_error(str(error).splitlines()[0])
    # Everything the texts alone can refuse is refused here, before the encoder is loaded and the
    # corpus encoded (minutes on a real one): dev sets with no correlation (as the encoder's
    # training and eval.py refuse them), batch sizes, neighbours, and pairs too repetitive for
    # one batch without a repeated text.
    check_eval_sets(dev_sets, config.eval_data)
    check_corpus_batches(config, len(loaded.texts), str(config.train_data))
    if loaded.queries is not None:
        make_pair_sampler(config, [loaded.queries, loaded.docs], run_steps(config, len(loaded.texts)))
    try:
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
            loaded=loaded,
        )
    except (DataError, ValueError, ImportError, FileNotFoundError) as error:
        main_error(str(error).splitlines()[0])
    return data, encoder, fingerprint


def check_corpus_batches(config: TrainConfig, n: int, source: str) -> None:
    """Batches of ``n`` corpus rows must fill: one line naming the flag that cannot be met."""
    m, batch = config.adaptor_neighbours, config.batch_size
    if m and m >= n:  # a row's neighbours are other rows
        main_error(
            f"--adaptor-neighbours {m}: {source} has {n} texts, so a row has at most {n - 1} other rows "
            f"to be its neighbours; use at most {n - 1}, or 0 for random batches"
        )
    if m and max(1, batch // (1 + m)) > n:
        main_error(
            f"--batch-size {batch}: with --adaptor-neighbours {m} a batch is {batch // (1 + m)} anchors "
            f"and their neighbours, more anchors than the {n} texts of {source}; lower --batch-size"
        )
    if not m and batch > n:
        main_error(
            f"--batch-size {batch}: larger than the {n} texts of {source} (a batch is never partial); "
            "lower --batch-size"
        )


def run_steps(config: TrainConfig, n: int) -> int:
    """The run's steps on a corpus of ``n`` rows (an epoch: len() of `make_samplers`' sampler)."""
    anchors = max(1, config.batch_size // (1 + config.adaptor_neighbours))
    per_epoch = n // (anchors if config.adaptor_neighbours else config.batch_size)
    return config.max_steps or config.epochs * per_epoch


def make_pair_sampler(config: TrainConfig, keys: list[list[str]], steps: int) -> BatchSampler:
    """Batches of pairs for the ranking loss, with in-batch negatives: no query or document twice
    in a batch (a false negative). The epochs that ``steps`` (one pair batch each) reach are built
    here, so that pairs too repetitive for one such batch are one line naming
    --adaptor-pair-batch-size, not a traceback later."""
    keyed = Examples(keys, None, str(config.adaptor_pairs), ["query", "document"])
    batch = min(config.adaptor_pair_batch_size, len(keyed))
    try:
        sampler = BatchSampler(keyed, batch, seed=config.seed, drop_last=True, avoid_duplicates=True)
        fill_epochs(sampler, steps)
    except BatchSizeError as error:
        main_error(error.for_flag("--adaptor-pair-batch-size", config.adaptor_pair_batch_size))
    return sampler


def make_samplers(config: TrainConfig, data: AdaptorData):
    """``(corpus sampler, pair sampler or None)``: batches of corpus rows, and of pairs."""
    source = str(config.adaptor_embeddings or config.train_data)
    check_corpus_batches(config, len(data.corpus), source)
    if config.adaptor_neighbours:  # anchors and their nearest corpus rows (mrl/adaptor.py)
        neighbours = corpus_neighbours(data.corpus, config.adaptor_neighbours)
        sampler = NeighbourBatchSampler(neighbours, config.batch_size, seed=config.seed)
    else:
        sampler = BatchSampler(
            range(len(data.corpus)), config.batch_size, seed=config.seed, drop_last=True, source=source
        )
    pair_sampler = None
    if data.pairs is not None:
        pair_sampler = make_pair_sampler(config, data.pair_keys, run_steps(config, len(data.corpus)))
    return sampler, pair_sampler

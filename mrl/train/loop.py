"""The one training loop, which the encoder's and the adaptor's trainings both run.

Per iteration, at the top: evaluate on the dev sets (at step 0 for the zero-shot baseline, every
``--eval-every`` steps and at the end), save a checkpoint (every ``--save-every`` steps, at the
end, and when a signal asked to stop), stop if asked; then one optimiser step (``job.step``: the
whole step, forward to optimiser, in one function of `mrl/train/encoder.py` or
`mrl/train/adaptor.py`) and, every ``--log-every`` steps, a log line and the scalars.

A job is anything with the attributes and methods `Job` lists (`EncoderTraining`,
`AdaptorTraining`): no base class, no callbacks.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from mrl.checkpoint import save_checkpoint
from mrl.dist import barrier, broadcast_object
from mrl.progress import duration
from mrl.runtime import peak_memory_gb, stop_on_signals
from mrl.tracking import Tracker
from mrl.train.state import TrainState, checkpoint_state


class Job(Protocol):
    """What the loop needs from a kind of training."""

    total_steps: int
    weights: torch.nn.Module  # saved as each checkpoint's model.safetensors
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    state_keys: tuple[str, ...]  # what a readable state.pt must hold
    loss_tag: str  # "train/loss", or "train/adaptor_loss" for the adaptor
    has_dev: bool  # False: no dev sets, evaluate is never called

    def step(self, state: TrainState, meter: Meter) -> torch.Tensor: ...  # one optimiser step -> grad norm
    def evaluate(self) -> tuple[dict[str, float], dict[str, list[dict]]]: ...  # dev scalars, records
    def extra_state(self) -> dict[str, Any]: ...  # resumable state beyond position/optimizer/schedule
    def load_extra_state(self, saved: dict[str, Any]) -> None: ...


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


def save_is_due(step: int, config, last_save: float, world_size: int = 1) -> bool:
    """Every ``--save-every`` steps, and when ``--save-every-minutes`` passed since the last save.

    The clock is rank 0's, sent to the others: every rank must join the checkpoint's gathers.
    """
    if step == 0:
        return False
    if config.save_every and step % config.save_every == 0:
        return True
    if not config.save_every_minutes:
        return False
    late = time.perf_counter() - last_save >= 60 * config.save_every_minutes
    return bool(broadcast_object(late)) if world_size > 1 else late


def eval_due(step: int, last_step: bool, eval_every: int) -> bool:
    """Step 0 (the zero-shot baseline), every ``eval_every`` steps (0: never between) and the end."""
    return last_step or step == 0 or bool(eval_every and step % eval_every == 0)


def run_loop(
    job: Job, state: TrainState, config, tracker: Tracker, run_dir: Path, world_size: int = 1,
    main_process: bool = True,
) -> dict[str, list[dict]]:  # fmt: skip
    """Train ``job`` from ``state`` to ``job.total_steps``; returns the last dev records.

    SIGTERM (a scheduler's kill) and SIGINT (Ctrl-C) end the current step, save and exit with
    128 + the signal's number; ``--resume`` continues from there.
    """
    from tqdm.auto import tqdm

    # A bar for people at a terminal; logs get the "step N/M" lines instead of bar redraws.
    progress = tqdm(
        total=job.total_steps,
        initial=state.step,
        desc="train",
        dynamic_ncols=True,
        disable=not (main_process and sys.stderr.isatty()),
    )
    meter, records = Meter(), {}
    clock = (time.perf_counter(), state.step)  # for the log line's elapsed time and ETA
    last_save = time.perf_counter()  # for --save-every-minutes
    try:
        with stop_on_signals() as stop:
            while True:
                last_step = state.step == job.total_steps
                redo = state.step != state.resumed_step  # a resumed step was evaluated and saved before
                if (
                    main_process
                    and job.has_dev
                    and redo
                    and eval_due(state.step, last_step, config.eval_every)
                ):
                    scalars, records = job.evaluate()
                    tracker.scalars(state.step, scalars)
                    final = [
                        f"{t[4:]}={v:.2f}" for t, v in scalars.items() if not re.search(r"_l\d+_d\d+$", t)
                    ]
                    tracker.print(f"step {state.step} eval: " + "  ".join(final))
                save_due = save_is_due(state.step, config, last_save, world_size)
                if redo and (last_step or save_due or stop):
                    saved = checkpoint_state(state, job)  # on every rank: it gathers their RNG states
                    if main_process:
                        save_checkpoint(run_dir, state.step, job.weights, saved, config.keep_last)
                    last_save = time.perf_counter()
                barrier()  # the other ranks wait for rank 0's evaluation and checkpoint
                if stop and not last_step:
                    name = signal.Signals(stop["signal"]).name
                    tracker.print(f"{name}: saved a checkpoint at step {state.step}; continue with --resume")
                    raise SystemExit(128 + stop["signal"])
                if last_step:
                    break
                meter.start_clock()

                grad_norm = job.step(state, meter)  # forward, loss, backward, clip, optimiser
                state.step += 1
                progress.update(1)

                if state.step % config.log_every == 0 or state.step == job.total_steps:
                    scalars = log_scalars(job, meter.means(world_size), grad_norm)
                    tracker.scalars(state.step, scalars)
                    log_line(tracker, progress, job, state.step, scalars, clock)
    finally:
        progress.close()
    return records


def log_scalars(job: Job, means: dict[str, float], grad_norm: torch.Tensor) -> dict[str, float]:
    """The logged scalars of a step: the meter's means, LR, gradient norm and peak memory."""
    if job.loss_tag != "train/loss":  # the adaptor's losses have their own tags; it counts no tokens
        means = {
            key.replace("train/loss", job.loss_tag): value
            for key, value in means.items()
            if key != "perf/tokens_per_s"
        }
    device = next(job.weights.parameters()).device
    return {
        **means,
        "train/lr": job.schedule.get_last_lr()[0],
        "train/grad_norm": grad_norm.item(),
        "perf/max_mem_gb": peak_memory_gb(device),
    }


def log_line(
    tracker: Tracker, progress, job: Job, step: int, scalars: dict[str, float], clock: tuple[float, int]
) -> None:
    """The console/train.log line and the progress bar's numbers for a logged step: a log file
    (nohup, Slurm) gets the elapsed time and an ETA that a terminal's bar would show."""
    loss, lr, speed = scalars[job.loss_tag], scalars["train/lr"], scalars["perf/samples_per_s"]
    progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{speed:.1f}")
    what = "loss" if job.loss_tag == "train/loss" else "adaptor loss"
    tracker.print(
        f"step {step}/{job.total_steps} {what} {loss:.4f} lr {lr:.3e} "
        f"grad_norm {scalars['train/grad_norm']:.3f} {speed:.1f} samples/s "
        f"| {timing(step, job.total_steps, clock)}"
    )


def timing(step: int, total_steps: int, clock: tuple[float, int]) -> str:
    """``elapsed 1m05s, ETA 3m10s``: since this process started the loop at step ``clock[1]``."""
    start, first_step = clock
    elapsed = time.perf_counter() - start
    done = step - first_step
    eta = elapsed / done * (total_steps - step) if done else 0.0
    return f"elapsed {duration(elapsed)}, ETA {duration(eta)}"

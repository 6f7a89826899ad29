"""Where a run is, and the one resume path.

A checkpoint (`mrl.checkpoint`) is the job's weights (``model.safetensors``) plus ``state.pt``:
the step, the data positions, the optimizer and LR schedule, and whatever else the job needs to
continue exactly (the encoder's GradScaler, RNG states and exit heads). Both trainings write and
read it through the two functions below, so ``--resume`` works the same way for each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrl.checkpoint import CheckpointUnreadable, load_checkpoint
from mrl.runtime import main_error


@dataclass
class TrainState:
    """The loop's position: what a checkpoint stores beside the weights and optimizer.

    cursor: ``(epoch, next batch)`` of the training rows (a function of the seed: two integers
        rebuild the data order). pair_cursor: the adaptor's (query, document) pairs; None for the
        encoder. resumed_step: the step restored from a checkpoint (it was evaluated and saved
        before, so the loop does neither again); None for a fresh run.
    """

    step: int = 0
    cursor: tuple[int, int] = (0, 0)
    pair_cursor: tuple[int, int] | None = None
    resumed_step: int | None = None
    folder: Path | None = None  # the checkpoint resumed from


def checkpoint_state(state: TrainState, job) -> dict[str, Any]:
    """What ``state.pt`` holds: position, optimizer, schedule, then the job's own parts.

    Called on every rank (the encoder gathers each rank's RNG state); rank 0 writes it.
    """
    saved: dict[str, Any] = {"step": state.step, "cursor": list(state.cursor)}
    if state.pair_cursor is not None:
        saved["pair_cursor"] = list(state.pair_cursor)
    saved["optimizer"] = job.optimizer.state_dict()
    saved["schedule"] = job.schedule.state_dict()
    return {**saved, **job.extra_state()}


def restore(run_dir: Path, job, state: TrainState) -> TrainState:
    """``--resume``: load the newest readable checkpoint into the job; the state it continues from.

    A run with checkpoints none of which is readable stops (never silently starts again); a run
    with no checkpoint yet starts again from step 0.
    """
    try:
        folder, weights, saved = load_checkpoint(
            run_dir, log=print, model=job.weights, required=job.state_keys
        )
    except CheckpointUnreadable as error:
        main_error(f"--resume: {error}; nothing was changed")
    except FileNotFoundError:
        final = [name for name in ("model", "adaptor") if (run_dir / name).exists()]
        if final:
            main_error(f"--resume: {run_dir} has a final {final[0]}/ but no checkpoint; nothing to resume")
        print(f"--resume: {run_dir} has no checkpoint yet; starting it again from step 0")
        return state
    job.weights.load_state_dict(weights)
    job.optimizer.load_state_dict(saved["optimizer"])
    job.schedule.load_state_dict(saved["schedule"])
    job.load_extra_state(saved)
    pairs = saved.get("pair_cursor")
    return TrainState(
        step=saved["step"],
        cursor=tuple(saved["cursor"]),
        pair_cursor=tuple(pairs) if pairs is not None else state.pair_cursor,
        resumed_step=saved["step"],
        folder=folder,
    )


def already_finished(run_dir: Path, job, state: TrainState) -> bool:
    """``--resume`` of a run whose newest checkpoint is its last step and whose final model
    (``model/``, or ``adaptor/`` for an adaptor) is saved: there is nothing to do. True after
    saying so; the final folder is not written again (that would drop what ``eval.py
    --add-to-card`` added to its card). A run whose final save did not happen is finished as before."""
    if state.resumed_step is None or state.step < job.total_steps:
        return False
    done = (("model", "config.json"), ("adaptor", "adaptor.json"))
    final = [run_dir / name for name, file in done if (run_dir / name / file).is_file()]
    if not final:
        return False
    print(
        f"--resume: {run_dir} is already finished (step {state.step} of {job.total_steps}); "
        f"nothing to do: {final[0]} and its card are left as they are"
    )
    return True

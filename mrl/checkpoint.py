"""Resumable checkpoints, written atomically.

A checkpoint is a folder ``<run>/checkpoints/step_00000100/`` with
- ``model.safetensors``: the encoder's weights (no pickle);
- ``state.pt``: optimizer, LR schedule, GradScaler, step, data position and RNG states, made only
  of tensors and plain Python values so it loads with ``torch.load(weights_only=True)``;
- ``meta.json``: step and time, for people.
It is written to a hidden temporary folder and renamed into place; only then does the
``checkpoints/latest`` pointer move (written to a temporary file and ``os.replace``d). A crash at
any moment therefore leaves the previous checkpoint and pointer intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (best effort; not all platforms allow opening a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave a half-written twin behind
        raise
    _fsync_dir(path.parent)


class SaveError(OSError):
    """An atomic save failed (disk full, read-only...); nothing half-written was left behind.
    The message is one line naming what was being written, the cause and what is intact."""


def _cause(error: BaseException, folder: Path) -> str:
    """One line about why a write failed, with the free space where it was written."""
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror
    else:  # torch and safetensors wrap the OS error in their own exception types
        reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"
    with contextlib.suppress(OSError):
        reason += f"; {shutil.disk_usage(folder).free / 2**20:.1f} MiB free there"
    return reason


def save_folder_atomic(path: Path, write) -> None:
    """``write(tmp)`` fills a temporary sibling folder, which then replaces ``path`` in one
    rename; on any failure the temporary folder is removed and `SaveError` raised, so ``path``
    is either the old complete folder or the new complete one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    old = path.with_name(f".{path.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except Exception as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise SaveError(f"cannot write {path}: {_cause(error, path.parent)}") from error
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(path.parent)


def save_checkpoint(
    run_dir: Path, step: int, model: torch.nn.Module, state: dict[str, Any], keep_last: int
) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, prune to ``keep_last``."""
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    for stale in root.glob(".tmp_*"):  # left by a process killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp_{name}_{os.getpid()}"
    # safetensors refuses tensors that share memory (tied weights): copy every repeat.
    weights, seen = {}, set()
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().contiguous().cpu()
        if tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        weights[key] = tensor
    final = root / name
    try:
        tmp.mkdir()
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, "time": time.time()}) + "\n")
        for file in tmp.iterdir():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():  # the same step saved again (e.g. SIGTERM right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        write_text_atomic(root / LATEST, name + "\n")
    except Exception as error:
        # Disk full, quota, read-only...: leave no partial folder, keep the previous checkpoint.
        shutil.rmtree(tmp, ignore_errors=True)
        previous = [p.name for p in list_checkpoints(run_dir) if p != final]
        intact = f"{previous[-1]} is intact" if previous else "no earlier checkpoint"
        raise SaveError(
            f"cannot save checkpoint {name} in {root}: {_cause(error, root)}; {intact}; "
            "fix the cause (a full disk?), then continue with --resume"
        ) from error
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Completed checkpoint folders of a run, oldest first (temporary folders are ignored)."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


class CheckpointUnreadable(ValueError):
    """A run has checkpoints but none can be read; the message is one line naming each cause."""


# What every encoder training's state.pt holds
# (mrl/train/state.py checkpoint_state + EncoderTraining.extra_state).
STATE_KEYS = ("step", "cursor", "optimizer", "schedule", "scaler", "rng_cpu", "rng_cuda", "rng_loss")


def load_checkpoint(
    run_dir: Path, log=print, model: torch.nn.Module | None = None, required: tuple[str, ...] = ()
) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
    """The newest readable checkpoint: ``(folder, weights, state)``.

    Starts from the ``latest`` pointer; a checkpoint that cannot be read (truncated, corrupt,
    missing one of the ``required`` state keys, or, with ``model``, weights whose names or shapes do not fit
    it) is reported through ``log`` and the previous one is tried. Raises FileNotFoundError when
    the run has no checkpoint at all, and `CheckpointUnreadable` when it has some but none is
    readable (a resume must then stop, not start again).
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    if root.exists() and not root.is_dir():
        raise CheckpointUnreadable(f"{root} is a file, not the folder of checkpoints")
    candidates = list(reversed(list_checkpoints(run_dir)))
    pointer = root / LATEST
    try:
        latest = root / pointer.read_text().strip() if pointer.is_file() else None
    except (OSError, UnicodeDecodeError):
        latest = None
    if latest in candidates:  # newer folders than the pointer are incomplete saves: skip them
        candidates = candidates[candidates.index(latest) :]
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()} if model is not None else None
    reasons = []
    for folder in candidates:
        part = "model.safetensors"
        try:
            weights = load_file(str(folder / part))
            part = "state.pt"
            state = torch.load(folder / part, weights_only=True, map_location="cpu")
            if not isinstance(state, dict) or any(key not in state for key in required):
                raise ValueError("it lacks part of the training state")
            part = "model.safetensors"
            if expected is not None and {k: tuple(v.shape) for k, v in weights.items()} != expected:
                raise ValueError("its weights do not fit the model (other names or shapes)")
        except Exception as error:  # any unreadable file means: fall back to the previous one
            reason = (str(error).strip().splitlines() or [""])[0][:160]
            reasons.append(f"{folder.name}/{part}: {type(error).__name__}: {reason}")
            what = f"{part}: {type(error).__name__}: {error}"
            log(f"checkpoint {folder} is unreadable ({what}); trying an older one")
            continue
        return folder, weights, state
    if reasons:
        raise CheckpointUnreadable(
            f"{run_dir}: none of its {len(reasons)} checkpoints is readable ({'; '.join(reasons)})"
        )
    raise FileNotFoundError(f"{run_dir}: no readable checkpoint under {root}")

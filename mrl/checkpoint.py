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
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
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
    tmp.mkdir()
    # safetensors refuses tensors that share memory (tied weights): copy every repeat.
    weights, seen = {}, set()
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().contiguous().cpu()
        if tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        weights[key] = tensor
    save_file(weights, str(tmp / "model.safetensors"))
    torch.save(state, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps({"step": step, "time": time.time()}) + "\n")
    for file in tmp.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    final = root / name
    if final.exists():  # the same step saved again (e.g. SIGTERM right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    write_text_atomic(root / LATEST, name + "\n")
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Completed checkpoint folders of a run, oldest first (temporary folders are ignored)."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def load_checkpoint(run_dir: Path, log=print) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
    """The newest readable checkpoint: ``(folder, weights, state)``.

    Starts from the ``latest`` pointer; a checkpoint that cannot be read (truncated, corrupt)
    is reported through ``log`` and the previous one is tried. Raises FileNotFoundError when
    the run has no readable checkpoint.
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    candidates = list(reversed(list_checkpoints(run_dir)))
    pointer = root / LATEST
    if pointer.is_file():
        latest = root / pointer.read_text().strip()
        if latest in candidates:  # newer folders than the pointer are incomplete saves: skip them
            candidates = candidates[candidates.index(latest) :]
    for folder in candidates:
        try:
            weights = load_file(str(folder / "model.safetensors"))
            state = torch.load(folder / "state.pt", weights_only=True, map_location="cpu")
        except Exception as error:  # any unreadable file means: fall back to the previous one
            log(f"checkpoint {folder} is unreadable ({type(error).__name__}: {error}); trying an older one")
            continue
        return folder, weights, state
    raise FileNotFoundError(f"{run_dir}: no readable checkpoint under {root}")

"""Checkpoints: round trip, pruning, atomicity under a crash, fallback past an unreadable one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

import mrl.checkpoint as checkpoint
from mrl.checkpoint import CheckpointUnreadable, SaveError, list_checkpoints, load_checkpoint, save_checkpoint


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))


def make_state(model: nn.Module, step: int) -> dict:
    """A state like train.py's: optimizer/schedule dicts, RNG byte tensors, ints, lists, nesting."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 6)).sum().backward()
    optimizer.step()
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return {
        "step": step,
        "cursor": [1, 3],
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_loss": torch.Generator().manual_seed(step).get_state(),
        "rng_cuda": None,
        "nested": {"a": [1, 2.5, {"b": torch.arange(3)}], "flag": True, "name": "x"},
    }


def assert_same(a, b, where="state"):
    """Recursive equality; tensors must match in dtype, shape and every bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert type(a) is type(b) and a == b, where


def pointer(run: Path) -> str:
    return (run / "checkpoints" / "latest").read_text().strip()


def names(run: Path) -> list[str]:
    return [p.name for p in list_checkpoints(run)]


def test_round_trip_of_weights_and_state(tmp_path):
    model = make_model(0)
    state = make_state(model, step=7)
    folder = save_checkpoint(tmp_path, 7, model, state, keep_last=2)
    assert folder == tmp_path / "checkpoints" / "step_00000007"
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.safetensors", "state.pt"]
    assert pointer(tmp_path) == "step_00000007"

    # state.pt is plain tensors and Python values: loadable without pickle's arbitrary code.
    assert_same(torch.load(folder / "state.pt", weights_only=True), state)

    loaded_folder, weights, loaded_state = load_checkpoint(tmp_path, log=pytest.fail)
    assert loaded_folder == folder
    assert_same(weights, dict(model.state_dict()), "weights")
    assert_same(loaded_state, state)

    # The weights restore into a fresh model of the same shape.
    fresh = make_model(1)
    fresh.load_state_dict(weights)
    x = torch.randn(2, 6)
    assert torch.equal(fresh(x), model(x))


def test_tied_weights_round_trip(tmp_path):
    # A model whose state_dict holds one tensor under two names (tied embeddings, shared layers).
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    model[1].weight = model[0].weight
    save_checkpoint(tmp_path, 1, model, {"step": 1}, keep_last=1)
    _, weights, _ = load_checkpoint(tmp_path)
    fresh = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    fresh[1].weight = fresh[0].weight
    fresh.load_state_dict(weights)
    assert torch.equal(fresh[0].weight, model[0].weight)


@pytest.mark.parametrize("keep_last", [1, 2, 3])
def test_keep_last_prunes_older_checkpoints(tmp_path, keep_last):
    model = make_model(0)
    for step in (5, 10, 15, 20, 25):
        save_checkpoint(tmp_path, step, model, {"step": step}, keep_last=keep_last)
    expected = [f"step_{s:08d}" for s in (5, 10, 15, 20, 25)][-keep_last:]
    assert names(tmp_path) == expected
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == sorted([*expected, "latest"])
    assert pointer(tmp_path) == "step_00000025"
    assert load_checkpoint(tmp_path)[2]["step"] == 25


def test_checkpoint_names_sort_by_step(tmp_path):
    model = make_model(0)
    for step in (9, 10, 100, 1000):
        save_checkpoint(tmp_path, step, model, {"step": step}, keep_last=2)
    assert names(tmp_path) == ["step_00000100", "step_00001000"]
    assert load_checkpoint(tmp_path)[2]["step"] == 1000


def test_saving_the_same_step_again_replaces_it(tmp_path):
    save_checkpoint(tmp_path, 3, make_model(0), {"step": 3, "v": 1}, keep_last=2)
    save_checkpoint(tmp_path, 3, make_model(1), {"step": 3, "v": 2}, keep_last=2)
    _, weights, state = load_checkpoint(tmp_path)
    assert state["v"] == 2
    assert_same(weights, dict(make_model(1).state_dict()), "weights")


# ---------------------------------------------------------------------------- crash safety


def two_checkpoints(run: Path) -> tuple[nn.Module, dict]:
    """Steps 1 and 2 saved; returns step 2's model and state (what a crash must preserve)."""
    save_checkpoint(run, 1, make_model(1), {"step": 1}, keep_last=3)
    model = make_model(2)
    state = make_state(model, step=2)
    save_checkpoint(run, 2, model, state, keep_last=3)
    return model, state


def assert_previous_intact(run: Path, model: nn.Module, state: dict) -> None:
    assert pointer(run) == "step_00000002"
    assert names(run) == ["step_00000001", "step_00000002"]
    folder, weights, loaded = load_checkpoint(run, log=pytest.fail)
    assert folder.name == "step_00000002"
    assert_same(weights, dict(model.state_dict()), "weights")
    assert_same(loaded, state)


class Crash(Exception):
    pass


def raises_crash():
    """A failure while saving is reported as one SaveError (whose cause is the failure) after the
    temporary folder is removed; the previous checkpoint must be intact either way."""
    return pytest.raises(SaveError, check=lambda error: isinstance(error.__cause__, Crash))


def test_crash_while_writing_weights_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, state = two_checkpoints(tmp_path)

    def half_written(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":')  # a torn file
        raise Crash("killed while writing weights")

    monkeypatch.setattr(checkpoint, "save_file", half_written)
    with raises_crash():
        save_checkpoint(tmp_path, 3, make_model(3), make_state(make_model(3), 3), keep_last=3)
    monkeypatch.undo()
    assert_previous_intact(tmp_path, model, state)

    # The next save of that step (after a restart) succeeds over the leftover temporary folder.
    save_checkpoint(tmp_path, 3, make_model(3), {"step": 3}, keep_last=3)
    assert pointer(tmp_path) == "step_00000003"
    assert load_checkpoint(tmp_path, log=pytest.fail)[2] == {"step": 3}


def test_crash_while_writing_state_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, state = two_checkpoints(tmp_path)
    real_save = torch.save

    def torn_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(Path(f).read_bytes()[:50])
        raise Crash("killed while writing state")

    monkeypatch.setattr(torch, "save", torn_save)
    with raises_crash():
        save_checkpoint(tmp_path, 3, make_model(3), {"step": 3}, keep_last=3)
    monkeypatch.undo()
    assert_previous_intact(tmp_path, model, state)


@pytest.mark.parametrize("crash_on", ["folder", "pointer"])
def test_crash_at_a_rename_keeps_previous_checkpoint_and_pointer(tmp_path, monkeypatch, crash_on):
    model, state = two_checkpoints(tmp_path)
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        is_pointer = Path(dst).name == "latest"
        if (crash_on == "pointer") == is_pointer:
            raise Crash(f"killed before moving {dst}")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with raises_crash():
        save_checkpoint(tmp_path, 3, make_model(3), {"step": 3}, keep_last=3)
    monkeypatch.undo()
    assert pointer(tmp_path) == "step_00000002"
    if crash_on == "folder":
        assert_previous_intact(tmp_path, model, state)
    else:
        # The folder is in place but the pointer never moved to it: resume follows the pointer.
        folder, weights, loaded = load_checkpoint(tmp_path, log=pytest.fail)
        assert folder.name == "step_00000002"
        assert_same(loaded, state)
        assert_same(weights, dict(model.state_dict()), "weights")


# ---------------------------------------------------------------------------- loading


@pytest.mark.parametrize("file", ["model.safetensors", "state.pt"])
def test_truncated_newest_checkpoint_falls_back_to_previous(tmp_path, file):
    model, state = two_checkpoints(tmp_path)
    save_checkpoint(tmp_path, 3, make_model(3), make_state(make_model(3), 3), keep_last=3)
    path = tmp_path / "checkpoints" / "step_00000003" / file
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    messages = []
    folder, weights, loaded = load_checkpoint(tmp_path, log=messages.append)
    assert folder.name == "step_00000002"
    assert_same(loaded, state)
    assert_same(weights, dict(model.state_dict()), "weights")
    assert len(messages) == 1
    assert "step_00000003" in messages[0]


def test_every_checkpoint_unreadable_is_not_the_same_as_none(tmp_path):
    # Issue 14: a run whose checkpoints are all unreadable must not look like a run that never
    # saved one (which --resume restarts from step 0): it is its own error, naming each cause.
    save_checkpoint(tmp_path, 1, make_model(1), {"step": 1}, keep_last=2)
    (tmp_path / "checkpoints" / "step_00000001" / "model.safetensors").write_bytes(b"")
    messages = []
    unreadable = "step_00000001/model.safetensors: SafetensorError"
    with pytest.raises(CheckpointUnreadable, match=unreadable) as info:
        load_checkpoint(tmp_path, log=messages.append)
    assert not isinstance(info.value, FileNotFoundError)
    assert len(messages) == 1


def test_no_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing-run")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path)  # a run directory without checkpoints/
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / ".tmp_step_00000005_123").mkdir()
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path)


def test_leftover_tmp_folder_is_ignored(tmp_path):
    model, state = two_checkpoints(tmp_path)
    leftover = tmp_path / "checkpoints" / ".tmp_step_00000009_4242"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"garbage")
    assert names(tmp_path) == ["step_00000001", "step_00000002"]
    assert_previous_intact(tmp_path, model, state)
    # Pruning counts only real checkpoints, and never touches the pointer's target.
    save_checkpoint(tmp_path, 3, make_model(3), {"step": 3}, keep_last=1)
    assert names(tmp_path) == ["step_00000003"]
    assert load_checkpoint(tmp_path, log=pytest.fail)[2] == {"step": 3}


def test_pointer_to_a_missing_folder_uses_the_newest_readable(tmp_path):
    model, state = two_checkpoints(tmp_path)
    (tmp_path / "checkpoints" / "latest").write_text("step_00000099\n")
    folder, _, loaded = load_checkpoint(tmp_path, log=pytest.fail)
    assert folder.name == "step_00000002"
    assert_same(loaded, state)

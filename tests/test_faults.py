"""Nothing lost, nothing silent (issue 14): eleven classes of faults and bad input, table-driven.

Each case states its input, the exit code, what the single ``error:`` line must name, and checks
that nothing was created and nothing changed (every byte of the folders involved). Classes:

 1. one process per run folder (a lock for the life of the run, also under torchrun)
 2. a resume never silently restarts (every checkpoint unreadable: stop, change nothing)
 3. a resume checks the training data (size, rows, content hash)
 4. every numeric setting checked before anything is created, from flags and config files
 5. texts that are empty in any real sense (invisible characters, only special tokens)
 6. filesystem faults: output path a file or under one, read-only, disk full while saving
 7. eval.py checks every flag before encoding; pickles that would run code; run folders
 8. BEIR files: repeated ids, qrels naming unknown ids, non-integer grades
 9. bounded memory on hostile files (an enormous line fails fast at file:line)
10. distributed start-up: a timeout flag, what it waits for, an unreachable master in one line
11. a missing path or a folder is never sent to the hub

Every run trains the tiny random BERT of conftest.py on one CPU thread (bitwise reproducible).
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # train.py and eval.py live in the repo root
import eval as eval_script  # noqa: E402
import mrl.train.run_files  # noqa: E402
import train  # noqa: E402
from mrl import checkpoint, data, dist, objectives, rundir, tracking  # noqa: E402
from mrl.config import TrainConfig, parse_config  # noqa: E402
from mrl.model import Encoder  # noqa: E402
from tests.conftest import make_tiny_model  # noqa: E402
from tests.fixture_text import distinct_sentences, write_csv  # noqa: E402

HEADER = ["sentence1", "sentence2", "score"]


def pair_rows(n: int, seed: int) -> list[list]:
    rng = random.Random(seed)
    texts = distinct_sentences(2 * n, seed)
    return [[texts[2 * i], texts[2 * i + 1], f"{rng.uniform(0, 1):.3f}"] for i in range(n)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    return {
        "train": write_csv(folder / "train.csv", HEADER, pair_rows(64, seed=1)),
        "dev": write_csv(folder / "sts-dev.csv", HEADER, pair_rows(16, seed=2)),
    }


def run_args(model: Path, train_csv: Path, out: Path) -> list[str]:
    """4 steps, checkpoints at 2 and 4, no dev sets: a finished run in about a second."""
    return [
        "--model", str(model),
        "--train-data", str(train_csv),
        "--eval-data",
        "--max-steps", "4",
        "--batch-size", "8",
        "--dims", "32", "16",
        "--log-every", "1",
        "--save-every", "2",
        "--keep-last", "3",
        "--device", "cpu",
        "--output-dir", str(out),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tiny_model_dir, files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "finished"
    train.main(run_args(tiny_model_dir, files["train"], out))
    return out


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "weights differ from the uninterrupted run"


def history(run: Path) -> dict:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    points = [((r["step"], k), v) for r in records for k, v in r.items() if k not in ("step", "time")]
    assert len(points) == len(dict(points)), "a (step, tag) point is logged twice"
    return {key: v for key, v in points if not key[1].startswith("perf/")}


def tree(root: Path) -> dict[str, bytes | str]:
    """Every path under ``root`` with its bytes (files), link target or "dir": the whole state."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        if p.is_symlink():
            out[key] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[key] = "dir"
        else:
            out[key] = p.read_bytes()
    return out


def refused(
    call, capsys, root: Path, code: int, contains, *, absent=("Traceback", "hub datasets need")
) -> str:
    """Run ``call()``: it must exit with ``code``, print exactly one non-empty stderr line, an
    ``error:`` line holding every text of ``contains``, and leave every byte under ``root`` as it
    was (nothing created, nothing changed, nothing removed). Returns the line."""
    before = tree(root)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        call()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert info.value.code == code, (info.value.code, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    for text in contains:
        assert text in lines[0], (text, lines[0])
    for text in absent:
        assert text not in lines[0], (text, lines[0])
    assert tree(root) == before, "files were created, changed or removed"
    return lines[0]


def config_refused(argv: list[str], capsys, contains) -> str:
    """``parse_config(argv)`` must refuse ``argv`` with the one line ``train.main`` prints for it
    (``train.main`` prints ``error: `` + a ValueError's text, exit code 2; argparse prints its own
    one line, exit code 2), holding every text of ``contains``. The parser writes nothing; that
    ``train.main`` stops there before creating anything is `test_train_main_stops_at_a_bad_setting`.
    Returns the line."""
    capsys.readouterr()
    try:
        parse_config(argv)
    except ValueError as error:
        line = f"error: {error}"
        assert "\n" not in line, line
    except SystemExit as stop:
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert stop.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
        line = lines[0]
    else:
        raise AssertionError(f"accepted: {argv}")
    for text in contains:
        assert text in line, (text, line)
    assert "Traceback" not in line and "hub datasets need" not in line, line
    return line


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def crash_after(run: Path, step: int) -> None:
    """What a kill right after checkpoint ``step`` leaves: later checkpoints and model/ gone."""
    for folder in (run / "checkpoints").glob("step_*"):
        if int(folder.name.removeprefix("step_")) > step:
            shutil.rmtree(folder)
    (run / "checkpoints" / "latest").write_text(f"step_{step:08d}\n")
    shutil.rmtree(run / "model", ignore_errors=True)


# ============================================================================================
# 1. One process per run folder
# ============================================================================================

# A holder written with fcntl alone (not our RunLock): the lock protocol, not our code, is tested.
HOLDER = """
import fcntl, json, os, socket, sys, time
fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.ftruncate(fd, 0)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}).encode())
print("held", flush=True)
time.sleep(600)
"""


def hold_lock(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


LOCK_CASES = [
    # (case, how the folder looks while another process holds it, argv: "resume" or "fresh")
    ("resume-a-running-run", "finished", "resume"),
    ("fresh-into-a-folder-just-created-by-another", "empty", "fresh"),
    ("fresh-into-a-running-run", "finished", "fresh"),
]


@pytest.mark.parametrize("case, folder, how", LOCK_CASES, ids=[c[0] for c in LOCK_CASES])
def test_a_second_training_stops_naming_the_folder_and_the_holder(
    finished, tiny_model_dir, files, tmp_path, capsys, case, folder, how
):
    run = tmp_path / "run"
    if folder == "finished":
        copy_run(finished, run)
    else:
        run.mkdir()
    holder = hold_lock(run)
    try:
        argv = ["--output-dir", str(run), "--resume"]
        if how == "fresh":
            argv = run_args(tiny_model_dir, files["train"], run)
        line = refused(
            lambda: train.main(argv), capsys, tmp_path, 2, [str(run), "in use", f"pid {holder.pid}"]
        )
        assert socket.gethostname() in line
    finally:
        stop(holder)


def test_the_lock_dies_with_its_holder_even_on_sigkill(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    crash_after(run, 2)
    holder = hold_lock(run)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (run / ".lock").exists() and rundir.lock_holder(run) is None  # stale file, no lock
    train.main(["--output-dir", str(run), "--resume"])
    assert_same_weights(finished, run)
    assert not (run / ".lock").exists()  # released and removed at the end of the run


def test_two_trainings_started_on_one_folder(tiny_model_dir, files, tmp_path, capsys):
    """A real second process: the first one keeps training, the second stops at once."""
    out = tmp_path / "run"
    argv = [*run_args(tiny_model_dir, files["train"], out), "--max-steps", "12", "--save-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen(
            [sys.executable, "train.py", *argv], cwd=REPO, env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoints" / "latest").exists():
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
            time.sleep(0.05)
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            train.main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2
        (line,) = [line for line in err.splitlines() if line.strip()]
        assert str(out) in line and "in use" in line and f"pid {first.pid}" in line
        assert first.poll() is None, "the second process only returned after the first had finished"
        assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()[-2000:]
    finally:
        stop(first)
    # The first run is whole and its own: one start summary, its own command line, 12 steps.
    assert sum(line.startswith("run: ") for line in (out / "train.log").read_text().splitlines()) == 1
    assert json.loads((out / "run.json").read_text())["argv"] == argv
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000012"
    assert not (out / ".lock").exists()


def _torchrun_worker(rank: int, port: int, argv: list[str], out: str) -> None:
    """One of two ranks, started as torchrun starts them, with its stderr captured."""
    import io

    torch.set_num_threads(1)
    env = {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_PORT": str(port)}
    os.environ.update(env, MASTER_ADDR="127.0.0.1")
    # Another training takes the lock right after this run's early check: only rank 0's claim
    # can see it, and rank 1 must learn it from rank 0 instead of waiting at the next collective.
    mrl.train.run_files.lock_holder = lambda run_dir: None
    sys.stderr = io.StringIO()
    try:
        train.main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code
    Path(out, f"rank{rank}.json").write_text(json.dumps({"code": code, "stderr": sys.stderr.getvalue()}))


def test_under_torchrun_a_refused_lock_stops_every_rank(tiny_model_dir, files, tmp_path):
    # (A 2-rank run that gets its lock is tests/test_scale.py's torchrun test.)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    taken = tmp_path / "taken"
    argv = [*run_args(tiny_model_dir, files["train"], taken), "--dist-timeout", "120"]
    taken.mkdir()
    lock = rundir.RunLock(taken)  # this test process is "the other training"
    try:
        torch.multiprocessing.spawn(_torchrun_worker, args=(port, argv, str(tmp_path)), nprocs=2, join=True)
    finally:
        lock.release()
    for rank in range(2):  # both ranks stop with rank 0's line, none waits for the other
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["code"] == 2, result
        (line,) = [x for x in result["stderr"].splitlines() if x.strip()]
        assert line.startswith("error: ") and str(taken) in line and f"pid {os.getpid()}" in line
    assert sorted(p.name for p in taken.iterdir()) == []  # nothing written; our lock file went


def test_a_filesystem_without_locks_trains_and_says_so(tiny_model_dir, files, tmp_path, capsys, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(rundir.fcntl, "flock", no_locks)
    out = tmp_path / "run"
    train.main(run_args(tiny_model_dir, files["train"], out))
    err = capsys.readouterr().err
    assert f"note: {out} is on a filesystem without file locks" in err
    assert (out / "model" / "model.safetensors").is_file() and not (out / ".lock").exists()


def test_a_run_that_fails_in_process_releases_its_lock(tiny_model_dir, files, tmp_path, monkeypatch):
    # A NaN loss ends the run inside main (train.py takes its loss from the objectives table).
    entry = objectives.BASE_LOSSES["cosent"]
    poisoned = lambda config, local: lambda *a: entry.bind(config, local)(*a) * float("nan")  # noqa: E731
    monkeypatch.setitem(objectives.BASE_LOSSES, "cosent", dataclasses.replace(entry, bind=poisoned))
    run = tmp_path / "run"
    with pytest.raises(SystemExit):
        train.main(run_args(tiny_model_dir, files["train"], run))
    assert rundir.lock_holder(run) is None and not (run / ".lock").exists()
    monkeypatch.undo()
    shutil.rmtree(run)
    train.main(run_args(tiny_model_dir, files["train"], run))  # the same process can train there again


# ============================================================================================
# 2. A resume never silently restarts
# ============================================================================================


class _Evil:
    """Unpickling this runs a shell command (what a hostile state.pt or pytorch_model.bin does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _damage(run: Path, how: str, tmp_path: Path) -> None:
    folders = sorted((run / "checkpoints").glob("step_*"))
    if how == "weights-of-another-model":
        other = load_file(
            str(make_tiny_model(tmp_path / "other-model", hidden_size=16) / "model.safetensors")
        )
    for i, folder in enumerate(folders):
        w, s = folder / "model.safetensors", folder / "state.pt"
        if how == "weights-truncated" or (how == "mixed" and i == 0):
            w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
        elif how == "weights-empty":
            w.write_bytes(b"")
        elif how == "state-garbage" or (how == "mixed" and i == 1):
            s.write_bytes(os.urandom(4096))
        elif how == "state-code-pickle":
            torch.save({"step": 2, "x": _Evil(tmp_path / "PWNED")}, s)
        elif how == "state-missing-keys":
            torch.save({"step": 2}, s)
        elif how == "state-not-a-dict":
            torch.save([1, 2, 3], s)
        elif how == "weights-of-another-model":
            save_file(other, str(w))
        elif how == "files-missing":
            w.unlink()
            s.unlink()
    if how == "pointer-garbage-too":
        (run / "checkpoints" / "latest").write_bytes(b"\xff\xfe\x00garbage")
        for folder in folders:
            (folder / "state.pt").write_bytes(b"PK\x03\x04 not a zip")


RESUME_CASES = [
    # (case, damage, texts of the line)
    ("weights-truncated", "weights-truncated", ["none of its 2 checkpoints", "SafetensorError"]),
    ("weights-empty", "weights-empty", ["none of its 2 checkpoints"]),
    ("state-garbage", "state-garbage", ["none of its 2 checkpoints", "state"]),
    ("state-would-run-code", "state-code-pickle", ["none of its 2 checkpoints", "UnpicklingError"]),
    ("state-missing-keys", "state-missing-keys", ["state.pt", "lacks part of the training state"]),
    ("state-not-a-dict", "state-not-a-dict", ["state.pt", "lacks part of the training state"]),
    ("weights-of-another-model", "weights-of-another-model", ["do not fit the model"]),
    ("files-missing", "files-missing", ["none of its 2 checkpoints"]),
    ("mixed-faults", "mixed", ["step_00000002", "step_00000004"]),
    ("pointer-garbage-too", "pointer-garbage-too", ["none of its 2 checkpoints"]),
]


@pytest.mark.parametrize("case, how, contains", RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_resume_with_every_checkpoint_unreadable_stops_and_changes_nothing(
    finished, tmp_path, capsys, case, how, contains
):
    run = copy_run(finished, tmp_path / "run")  # checkpoints at steps 2 and 4
    shutil.rmtree(run / "model")  # no final model: a resume that went on would write one
    _damage(run, how, tmp_path)
    refused(
        lambda: train.main(["--output-dir", str(run), "--resume"]),
        capsys,
        tmp_path,
        2,
        ["--resume", str(run), "nothing was changed", *contains],
    )
    assert not (tmp_path / "PWNED").exists()


OTHER_RESUME_CASES = [
    ("no-checkpoint-but-a-final-model", ["has a final model/ but no checkpoint"]),
    ("config-json-not-json", ["config.json", "cannot parse"]),
    ("config-json-a-list", ["config.json", "expected a table/object"]),
    ("config-json-a-folder", ["no config.json"]),
    ("checkpoints-a-file", ["is a file, not the folder of checkpoints"]),
]


@pytest.mark.parametrize("case, contains", OTHER_RESUME_CASES, ids=[c[0] for c in OTHER_RESUME_CASES])
def test_resume_refuses_what_it_cannot_honour(finished, tmp_path, capsys, case, contains):
    run = copy_run(finished, tmp_path / "run")
    if case == "no-checkpoint-but-a-final-model":
        shutil.rmtree(run / "checkpoints")
    elif case == "config-json-not-json":
        (run / "config.json").write_text("{")
    elif case == "config-json-a-list":
        (run / "config.json").write_text("[]")
    elif case == "checkpoints-a-file":
        shutil.rmtree(run / "checkpoints")
        shutil.rmtree(run / "model")
        (run / "checkpoints").write_text("not a folder\n")
    else:
        (run / "config.json").unlink()
        (run / "config.json").mkdir()
    refused(lambda: train.main(["--output-dir", str(run), "--resume"]), capsys, tmp_path, 2, contains)


def test_resume_past_a_garbled_pointer_and_one_bad_checkpoint_is_exact(finished, tmp_path):
    # The control: while one checkpoint is readable, --resume uses it and the result is exact.
    run = copy_run(finished, tmp_path / "run")
    shutil.rmtree(run / "model")
    (run / "checkpoints" / "latest").write_bytes(b"\xff\xfe")
    w = run / "checkpoints" / "step_00000004" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    train.main(["--output-dir", str(run), "--resume"])
    assert_same_weights(finished, run)
    assert history(run) == history(finished)


# ============================================================================================
# 3. A resume checks the data, not only the flags
# ============================================================================================


@pytest.fixture(scope="module")
def data_run(tiny_model_dir, files, tmp_path_factory) -> tuple[Path, Path]:
    """A finished run on its own copy of the training file (the cases below edit that file)."""
    folder = tmp_path_factory.mktemp("fingerprint")
    train_csv = folder / "train.csv"
    shutil.copy(files["train"], train_csv)
    run = folder / "run"
    train.main(run_args(tiny_model_dir, train_csv, run))
    return run, train_csv


def _edit(text: str, how: str) -> str:
    lines = text.splitlines(keepends=True)
    if how == "score-digit":  # same size, same rows
        last = lines[5].rstrip("\r\n")
        digit = "1" if last[-1] != "1" else "2"
        lines[5] = last[:-1] + digit + lines[5][len(last) :]
    elif how == "row-appended":
        lines.append("a new cat sat,a new dog ran,0.500\r\n")
    elif how == "row-removed":
        del lines[-1]
    elif how == "rows-swapped":  # same size, same rows, same multiset of rows
        lines[3], lines[40] = lines[40], lines[3]
    elif how == "word-in-the-middle":
        lines[32] = lines[32].replace("a", "e", 1) if "a" in lines[32] else "x" + lines[32][1:]
    elif how == "line-ends":
        return "".join(line.rstrip("\r\n") + "\n" for line in lines)
    elif how == "last-newline-dropped":
        return text.rstrip("\r\n")
    return "".join(lines)


DATA_CASES = [
    ("score-digit", ["content hash"]),
    ("row-appended", ["rows 64 -> 65", "bytes"]),
    ("row-removed", ["rows 64 -> 63"]),
    ("rows-swapped", ["content hash"]),
    ("word-in-the-middle", ["content hash"]),
    ("line-ends", ["bytes", "content hash"]),
    ("last-newline-dropped", ["bytes"]),
]


@pytest.mark.parametrize("how, contains", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_resume_on_changed_data_refuses_saying_what_changed(data_run, tmp_path, capsys, how, contains):
    finished_run, train_csv = data_run
    run = copy_run(finished_run, tmp_path / "run")
    crash_after(run, 2)
    original = train_csv.read_bytes()
    edited = _edit(original.decode(), how).encode()
    assert edited != original
    train_csv.write_bytes(edited)
    try:
        refused(
            lambda: train.main(["--output-dir", str(run), "--resume"]),
            capsys,
            tmp_path,
            2,
            ["--resume", str(train_csv), "changed", *contains],
        )
    finally:
        train_csv.write_bytes(original)


def test_resume_with_the_data_gone_is_one_line(data_run, tmp_path, capsys):
    finished_run, train_csv = data_run
    run = copy_run(finished_run, tmp_path / "run")
    crash_after(run, 2)
    original = train_csv.read_bytes()
    train_csv.unlink()
    try:
        refused(
            lambda: train.main(["--output-dir", str(run), "--resume"]), capsys, tmp_path, 2, ["no such file"]
        )
    finally:
        train_csv.write_bytes(original)


@pytest.mark.parametrize("how", ["touched", "old-run-without-fingerprint"])
def test_resume_on_the_same_data_is_exact(data_run, tmp_path, how):
    finished_run, train_csv = data_run
    run = copy_run(finished_run, tmp_path / "run")
    crash_after(run, 2)
    if how == "touched":  # a copy or a touch changes the time, not the data
        os.utime(train_csv, (time.time() + 100, time.time() + 100))
    else:  # a run from before fingerprints: resumed unchecked, as before
        config = json.loads((run / "config.json").read_text())
        del config["derived"]["train_data_fingerprint"]
        (run / "config.json").write_text(json.dumps(config, indent=2))
    train.main(["--output-dir", str(run), "--resume"])
    assert_same_weights(finished_run, run)


def test_fingerprint_is_recorded_and_matches_an_independent_hash(data_run):
    import hashlib

    run, train_csv = data_run
    recorded = json.loads((run / "config.json").read_text())["derived"]["train_data_fingerprint"]
    raw = train_csv.read_bytes()
    assert recorded["size"] == len(raw) and recorded["rows"] == 64
    assert recorded["hash"] == hashlib.sha256(raw).hexdigest()[:32]


def test_large_files_are_hashed_by_samples_that_see_head_tail_and_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "WHOLE_FILE_BYTES", 1 << 20)  # a 3 MiB file is "large" here
    path = tmp_path / "big.csv"
    body = bytearray(os.urandom(3 << 20))
    path.write_bytes(body)
    examples = data.Examples([["x"] * 10, ["y"] * 10], None, str(path), ["a", "b"])
    base = rundir.data_fingerprint(str(path), examples)
    assert base["hashed"].startswith("first/last MiB")
    size = len(body)
    stride = (size - 2 * rundir._EDGE) // (rundir._BLOCKS + 1)
    for offset in (0, 1000, size - 1, rundir._EDGE + stride, rundir._EDGE + 7 * stride + 5):
        changed = bytearray(body)
        changed[offset] ^= 0xFF
        path.write_bytes(changed)
        assert rundir.fingerprint_changes(base, rundir.data_fingerprint(str(path), examples)), offset


# ============================================================================================
# 4. Every numeric setting checked before anything is created
# ============================================================================================

NUMBER_CASES = [
    # (case, flags, text of the line)
    ("lr-nan", ["--lr", "nan"], "--lr"),
    ("lr-inf", ["--lr", "inf"], "--lr"),
    ("lr-negative", ["--lr=-1e-5"], "--lr"),
    ("lr-zero", ["--lr", "0"], "--lr"),
    ("lr-absurd", ["--lr", "10"], "--lr"),
    ("scale-zero", ["--scale", "0"], "--scale"),
    ("scale-negative", ["--scale=-20"], "--scale"),
    ("scale-nan", ["--scale", "nan"], "--scale"),
    ("scale-inf", ["--scale", "inf"], "--scale"),
    ("scale-huge", ["--scale", "1e30"], "--scale"),
    ("scale-tiny", ["--scale", "1e-30"], "--scale"),
    ("kl-temperature-zero", ["--2d", "random", "--kl-temperature", "0"], "--kl-temperature"),
    ("kl-temperature-nan", ["--2d", "random", "--kl-temperature", "nan"], "--kl-temperature"),
    ("kl-temperature-denormal", ["--2d", "random", "--kl-temperature", "1e-44"], "--kl-temperature"),
    ("kl-temperature-inf", ["--2d", "random", "--kl-temperature", "inf"], "--kl-temperature"),
    ("kl-weight-negative", ["--2d", "random", "--kl-weight=-1"], "--kl-weight"),
    ("kl-weight-nan", ["--2d", "random", "--kl-weight", "nan"], "--kl-weight"),
    ("dim-weights-nan", ["--dims", "32", "16", "--dim-weights", "1", "nan"], "--dim-weights"),
    ("dim-weights-inf", ["--dims", "32", "16", "--dim-weights", "inf", "1"], "--dim-weights"),
    ("dim-weights-negative", ["--dims", "32", "16", "--dim-weights", "1", "-1"], "--dim-weights"),
    ("dim-weights-all-zero", ["--dims", "32", "16", "--dim-weights", "0", "0"], "--dim-weights"),
    ("dim-weights-overflowing", ["--dims", "32", "16", "--dim-weights", "1e300", "1e300"], "--dim-weights"),
    ("kl-weight-huge", ["--2d", "random", "--kl-weight", "1e7"], "--kl-weight"),
    ("last-layer-weight-nan", ["--2d", "random", "--last-layer-weight", "nan"], "--last-layer-weight"),
    ("prior-layers-weight-neg", ["--2d", "random", "--prior-layers-weight=-2"], "--prior-layers-weight"),
    (
        "both-layer-weights-zero",
        ["--2d", "random", "--last-layer-weight", "0", "--prior-layers-weight", "0"],
        "--prior-layers-weight",
    ),
    ("max-grad-norm-nan", ["--max-grad-norm", "nan"], "--max-grad-norm"),
    ("max-grad-norm-inf", ["--max-grad-norm", "inf"], "--max-grad-norm"),
    ("max-grad-norm-negative", ["--max-grad-norm=-1"], "--max-grad-norm"),
    ("weight-decay-nan", ["--weight-decay", "nan"], "--weight-decay"),
    ("weight-decay-negative", ["--weight-decay=-0.1"], "--weight-decay"),
    ("weight-decay-times-lr-1", ["--weight-decay", "1e5", "--lr", "1e-5"], "--weight-decay"),
    ("warmup-ratio-nan", ["--warmup-ratio", "nan"], "--warmup-ratio"),
    ("warmup-ratio-negative", ["--warmup-ratio=-0.1"], "--warmup-ratio"),
    ("max-train-samples-zero", ["--max-train-samples", "0"], "--max-train-samples"),
    ("max-train-samples-negative", ["--max-train-samples=-8"], "--max-train-samples"),
    ("n-dims-per-step-beyond", ["--dims", "32", "16", "--n-dims-per-step", "3"], "--n-dims-per-step"),
    ("layer-dim-pairs-repeated", ["--2d", "fixed", "--layer-dim-pairs", "1:8", "1:8"], "--layer-dim-pairs"),
    ("seed-negative", ["--seed=-1"], "--seed"),
    ("seed-too-big", ["--seed", str(2**64)], "--seed"),
    ("dist-timeout-zero", ["--dist-timeout", "0"], "--dist-timeout"),
    ("dist-timeout-nan", ["--dist-timeout", "nan"], "--dist-timeout"),
    ("score-range-nan", ["--score-range", "nan", "1"], "--score-range"),
    ("eval-batch-size-zero", ["--eval-batch-size", "0"], "--eval-batch-size"),
    # argparse's own errors are one line too
    ("negative-without-equals", ["--lr", "-1e-5"], "--lr=-1e-5"),
    ("not-a-number", ["--lr", "fast"], "--lr"),
    ("unknown-flag", ["--learning-rate", "1e-5"], "--learning-rate"),
    ("bad-choice", ["--loss", "triplet"], "--loss"),
]


@pytest.mark.parametrize("case, flags, flag", NUMBER_CASES, ids=[c[0] for c in NUMBER_CASES])
def test_bad_numbers_on_the_command_line(capsys, case, flags, flag):
    config_refused(flags, capsys, [flag])


# The same values from a config file (JSON accepts NaN and Infinity, TOML nan and inf).
FILE_CASES = [
    ("lr", float("nan")),
    ("lr", float("inf")),
    ("scale", 0.0),
    ("kl_temperature", -1.0),
    ("kl_weight", float("nan")),
    ("dim_weights", [float("nan"), 1.0]),
    ("max_grad_norm", float("-inf")),
    ("weight_decay", 1e6),
    ("warmup_ratio", float("nan")),
    ("max_train_samples", 0),
    ("dist_timeout", 0.0),
    ("lr", 1e10),
]


def _toml(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, float) and abs(value) == float("inf"):
        return "inf" if value > 0 else "-inf"
    return repr(value)


@pytest.mark.parametrize("suffix", [".json", ".toml"])
@pytest.mark.parametrize("key, value", FILE_CASES, ids=[f"{k}={v}" for k, v in FILE_CASES])
def test_bad_numbers_in_a_config_file(tmp_path, capsys, key, value, suffix):
    config = tmp_path / f"config{suffix}"
    extra = {"dims": [32, 16]} if key == "dim_weights" else {}
    extra = {"two_d": "random"} if key.startswith("kl_") else extra  # the 2D wrappers read them
    if suffix == ".json":
        config.write_text(json.dumps({key: value, **extra}))
    else:
        config.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in {key: value, **extra}.items()))
    flag = "--" + key.replace("_", "-")
    config_refused(
        ["--config", str(config), "--max-steps", "4"], capsys, [flag, f"(set in --config {config})"]
    )


@pytest.mark.parametrize("how", ["config-file", "flag"])
def test_train_main_stops_at_a_bad_setting(tiny_model_dir, files, tmp_path, capsys, how):
    """What the parser refuses (the cases above), train.main refuses in one line, exit code 2,
    before creating or changing anything: a value from a config file and an argparse error."""
    argv = run_args(tiny_model_dir, files["train"], tmp_path / "out")
    if how == "config-file":
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"lr": float("nan")}))
        argv, contains = ["--config", str(config), *argv], ["--lr", f"(set in --config {config})"]
    else:
        argv, contains = [*argv, "--lr", "fast"], ["--lr", "invalid float value"]
    refused(lambda: train.main(argv), capsys, tmp_path, 2, contains)


def test_valid_edge_values_still_pass():
    for argv in (
        ["--scale", "1e4"],
        ["--scale", "1e-4"],
        ["--2d", "random", "--kl-temperature", "1e-4"],
        ["--weight-decay", "0", "--max-grad-norm", "0", "--warmup-ratio", "0"],
        ["--dims", "32", "16", "--dim-weights", "0", "1"],
        ["--2d", "random", "--last-layer-weight", "0"],
        ["--max-train-samples", "1", "--seed", "0"],
        ["--dims", "32", "16", "--n-dims-per-step", "2"],
    ):
        parse_config(argv)
    assert TrainConfig().dist_timeout == 1800


def test_max_train_samples_is_honoured(tiny_model_dir, files, tmp_path):
    out = tmp_path / "out"
    train.main([*run_args(tiny_model_dir, files["train"], out), "--max-train-samples", "16"])
    derived = json.loads((out / "config.json").read_text())["derived"]
    assert derived["steps_per_epoch"] == 16 // 8


# ============================================================================================
# 5. Texts that are empty in any real sense
# ============================================================================================

BLANKS = [
    ("nothing", ""),
    ("spaces", "   "),
    ("tab-and-newline", "\t\n"),
    ("no-break-space", "\u00a0\u3000"),
    ("zero-width-space", "\u200b"),
    ("zero-width-joiners", "\u200c\u200d"),
    ("word-joiner", "\u2060"),
    ("bom", "\ufeff"),
    ("soft-hyphen", "\u00ad"),
    ("bidi-marks", "\u200e\u200f\u202a\u202c"),
    ("nul-and-controls", "\x00\x01\x1f\x7f"),
    ("hangul-filler", "\u3164"),
    ("braille-blank", "\u2800"),
    ("variation-selector", "\ufe0f"),
    ("mixed-invisible", " \u200b\t\ufeff\u2060 "),
    # Visible to a person, but nothing of it survives the tokenizer:
    ("only-special-tokens", "[SEP]"),
    ("special-tokens-and-space", " [CLS] [PAD] "),
    ("combining-accent-alone", "\u0301"),
]


def _table(path: Path, rows: list[list[str]], header=HEADER) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(header, row))) + "\n" for row in rows), encoding="utf-8")
        return path
    return write_csv(path, header, rows)


@pytest.mark.parametrize("kind", [".csv", ".jsonl"])
@pytest.mark.parametrize("case, text", BLANKS, ids=[c[0] for c in BLANKS])
def test_an_empty_training_text_names_file_line_and_column(
    tiny_model_dir, tmp_path, capsys, case, text, kind
):
    if kind == ".csv" and "\x00" in text:
        text = text.replace("\x00", "")  # csv cannot hold NUL; JSONL can
    rows = pair_rows(16, seed=3)
    rows[6][1] = text  # line 8 (header is line 1), column sentence2
    path = _table(tmp_path / f"train{kind}", rows)
    line = 8 if kind == ".csv" else 7  # CSV: the header is line 1
    argv = run_args(tiny_model_dir, path, tmp_path / "out")
    refused(lambda: train.main(argv), capsys, tmp_path, 2, [f"{path}:{line}:", "'sentence2'", "empty"])


def test_a_lone_surrogate_in_jsonl_names_file_line_and_column(tiny_model_dir, tmp_path, capsys):
    rows = pair_rows(16, seed=3)
    lines = [json.dumps(dict(zip(HEADER, row))) for row in rows]
    lines[4] = '{"sentence1": "a cat \\ud800 sat", "sentence2": "a dog", "score": "0.5"}'
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    argv = run_args(tiny_model_dir, path, tmp_path / "out")
    refused(lambda: train.main(argv), capsys, tmp_path, 2, [f"{path}:5:", "'sentence1'", "surrogate"])


@pytest.mark.parametrize("where", ["hard-negative", "dev-set", "eval.py"])
def test_empty_texts_are_caught_in_every_column_and_every_set(tiny_model_dir, files, tmp_path, capsys, where):
    if where == "hard-negative":
        header = ["anchor", "positive", "negative"]
        texts = distinct_sentences(48, 4)
        rows = [texts[3 * i : 3 * i + 3] for i in range(16)]
        rows[9][2] = "\u200b\u200b"
        path = _table(tmp_path / "triplets.csv", rows, header)
        argv = [*run_args(tiny_model_dir, path, tmp_path / "out"), "--loss", "mnrl"]
        call, expected = (lambda: train.main(argv)), [f"{path}:11:", "'negative'"]
    else:
        rows = pair_rows(16, seed=5)
        rows[2][0] = "[SEP] [CLS]"
        path = _table(tmp_path / "sts.csv", rows)
        if where == "dev-set":
            argv = run_args(tiny_model_dir, files["train"], tmp_path / "out")
            argv[argv.index("--eval-data") + 1 : argv.index("--eval-data") + 1] = [str(path)]
            call = lambda: train.main(argv)  # noqa: E731
        else:
            call = lambda: eval_script.main(["--model", str(tiny_model_dir), "--sts", str(path)])  # noqa: E731
        expected = [f"{path}:4:", "'sentence1'", "empty"]
    refused(call, capsys, tmp_path, 2, expected)


def test_texts_with_content_are_not_empty(tiny_model_dir):
    # Controls: unknown characters ([UNK]) are content, as are single letters and digits.
    encoder = Encoder(str(tiny_model_dir))
    texts = ["a", "7", "😀", "猫咪在玩耍", "a\u200bb", "caf\u00e9", "x\u0301"]
    examples = data.Examples([texts, texts], None, "controls", ["a", "b"])
    ids = dict(zip(texts, encoder.token_ids(texts)))
    warnings = []
    data.check_token_ids(examples, ids.__getitem__, encoder.tokenizer, warnings.append)
    assert not any(data.is_blank(t) for t in texts)
    # The emoji and the Chinese text are [UNK] only to this vocabulary: kept, and counted (issue 28).
    (line,) = warnings
    assert "controls: 4 of 14 texts are nothing but unknown tokens ([UNK])" in line
    assert "(first: line 3, column 'a': '😀')" in line


def test_a_max_seq_length_with_no_room_for_text(tiny_model_dir, files, tmp_path, capsys):
    argv = [*run_args(tiny_model_dir, files["train"], tmp_path / "out"), "--max-seq-length", "2"]
    refused(lambda: train.main(argv), capsys, tmp_path, 2, ["--max-seq-length", "2", "special tokens"])


# ============================================================================================
# 6. Filesystem faults
# ============================================================================================


def _read_only_tmpfs(folder: Path):
    """A real read-only filesystem when this machine lets us mount one (root), else None."""
    folder.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True
    )
    return folder if result.returncode == 0 else None


OUTPUT_CASES = [
    # (case, how the output path is made, text of the line)
    ("output-dir-is-a-file", "file", "is a file"),
    ("output-dir-under-a-file", "under-file", "is a file"),
    ("output-dir-deep-under-a-file", "deep-under-file", "is a file"),
    ("output-dir-broken-link", "broken-link", "broken symbolic link"),
    ("output-dir-not-writable", "no-access", "cannot write"),
    ("output-dir-read-only-fs", "ro-tmpfs", "read-only filesystem"),
    ("resume-in-a-place-not-writable", "resume-no-access", "cannot write"),
]


@pytest.mark.parametrize("case, how, text", OUTPUT_CASES, ids=[c[0] for c in OUTPUT_CASES])
def test_output_paths_that_cannot_be_written_are_refused_up_front(
    finished, tiny_model_dir, files, tmp_path, capsys, monkeypatch, case, how, text
):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("an earlier result\n")
    out = work / "out"
    argv = run_args(tiny_model_dir, files["train"], out)
    if how == "file":
        out = work / "notes.txt"
    elif how == "under-file":
        out = work / "notes.txt" / "run"
    elif how == "deep-under-file":
        out = work / "notes.txt" / "a" / "b" / "run"
    elif how == "broken-link":
        out.symlink_to(work / "nowhere")
    elif how == "no-access":
        real = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode, **k: False if Path(p) == work else real(p, mode, **k)
        )
    elif how == "ro-tmpfs":
        mounted = _read_only_tmpfs(tmp_path / "ro")
        if mounted is None:
            pytest.skip("cannot mount a read-only tmpfs here (needs root)")
        out = mounted / "run"
    elif how == "resume-no-access":
        out = copy_run(finished, work / "run")
        argv = ["--output-dir", str(out), "--resume"]
        real = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode, **k: False if Path(p) == out else real(p, mode, **k)
        )
    argv = [*argv, "--output-dir", str(out)] if how != "resume-no-access" else argv
    try:
        refused(lambda: train.main(argv), capsys, tmp_path, 2, ["--output-dir", str(out), text])
    finally:
        if how == "ro-tmpfs":
            subprocess.run(["umount", str(tmp_path / "ro")], check=True)


def _enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _inject(monkeypatch, where: str) -> None:
    """Make the disk "full" at one write of step 4 (or the final model, or a log line)."""
    if where == "weights":
        real = checkpoint.save_file

        def save_file_full(tensors, filename, *a, **k):
            if "step_00000004" in filename:
                Path(filename).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{")  # what fit
                raise _enospc(filename)
            return real(tensors, filename, *a, **k)

        monkeypatch.setattr(checkpoint, "save_file", save_file_full)
    elif where == "state":
        real = torch.save

        def torch_save_full(obj, f, *a, **k):
            if "step_00000004" in str(f):
                Path(f).write_bytes(b"PK\x03\x04")
                # What torch really raises on a full disk (measured on a 64 KiB tmpfs).
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
            return real(obj, f, *a, **k)

        monkeypatch.setattr(torch, "save", torch_save_full)
    elif where == "pointer":
        real = checkpoint.write_text_atomic

        def pointer_full(path, text):
            if Path(path).name == "latest" and "step_00000004" in text:
                raise _enospc(path)
            return real(path, text)

        monkeypatch.setattr(checkpoint, "write_text_atomic", pointer_full)
    elif where == "final-model":
        real = Encoder.save

        def save_full(self, path, metadata=None):
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "config.json").write_text('{"half": ')
            raise _enospc(Path(path) / "model.safetensors")

        monkeypatch.setattr(Encoder, "save", save_full)
    elif where == "metrics-line":
        real_open = open

        def open_full(file, mode="r", *a, **k):
            if Path(file).name == "metrics.jsonl" and "a" in mode and _steps_logged(file) >= 3:
                raise _enospc(file)
            return real_open(file, mode, *a, **k)

        monkeypatch.setattr(tracking, "open", open_full, raising=False)


def _steps_logged(file) -> int:
    path = Path(file)
    return len(path.read_text().splitlines()) if path.exists() else 0


DISK_FULL_CASES = [
    # (case, where the disk fills up, the checkpoint left as latest, text of the line)
    (
        "while-writing-weights",
        "weights",
        2,
        ["step_00000004", "No space left on device", "step_00000002 is intact"],
    ),
    ("while-writing-state", "state", 2, ["step_00000004", "unexpected pos", "step_00000002 is intact"]),
    ("while-moving-the-pointer", "pointer", 2, ["step_00000004", "No space left on device"]),
    ("while-writing-the-final-model", "final-model", 4, ["model", "No space left on device"]),
    ("while-logging", "metrics-line", 2, ["metrics.jsonl", "No space left on device"]),
]


@pytest.mark.parametrize(
    "case, where, latest, contains", DISK_FULL_CASES, ids=[c[0] for c in DISK_FULL_CASES]
)
def test_disk_full_is_one_line_leaves_nothing_half_written_and_resume_works_after(
    finished, tiny_model_dir, files, tmp_path, capsys, monkeypatch, case, where, latest, contains
):
    out = tmp_path / "run"
    _inject(monkeypatch, where)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        train.main(run_args(tiny_model_dir, files["train"], out))
    err = capsys.readouterr().err
    assert info.value.code == 1 and "Traceback" not in err, err[-3000:]
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    for text in contains:
        assert text in line, (text, line)
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name or ".old" in p.name or p.name == ".lock"]
    assert not leftovers, leftovers
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step_{latest:08d}"
    assert not (out / "model").exists()
    # Space is freed: --resume ends exactly where the uninterrupted run did.
    monkeypatch.undo()
    train.main(["--output-dir", str(out), "--resume"])
    assert_same_weights(finished, out)
    assert history(out) == history(finished)


def test_a_real_full_disk_then_resume(finished, tiny_model_dir, files, tmp_path, capsys):
    """A real ENOSPC from the kernel: a tmpfs that holds one checkpoint but not two."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=640k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = disk / "run"
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            train.main(run_args(tiny_model_dir, files["train"], out))
        err = capsys.readouterr().err
        assert info.value.code == 1 and "Traceback" not in err, err[-3000:]
        (line,) = [x for x in err.splitlines() if x.startswith("error:")]
        assert "step_00000004" in line and "step_00000002 is intact" in line, line
        assert not [p for p in out.rglob("*") if ".tmp" in p.name], "a temporary checkpoint was left"
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)  # space freed
        train.main(["--output-dir", str(out), "--resume"])
        assert_same_weights(finished, out)
        assert history(out) == history(finished)
    finally:
        # Lazily: the failed run's TensorBoard writer (never closed) still holds a file there.
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_file_size_limit_from_the_kernel_then_resume(finished, tiny_model_dir, files, tmp_path, capsys):
    """RLIMIT_FSIZE makes the kernel fail every write past 200 KB (EFBIG) in torch, safetensors and
    Python alike, without privileges: no checkpoint fits, the run stops in one line, and a
    resume with the limit lifted starts again from step 0 and ends exactly as the clean run."""
    import resource

    out = tmp_path / "run"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    capsys.readouterr()
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))
        with pytest.raises(SystemExit) as info:
            train.main(run_args(tiny_model_dir, files["train"], out))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    err = capsys.readouterr().err
    assert info.value.code == 1 and "Traceback" not in err, err[-3000:]
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "step_00000002" in line and "no earlier checkpoint" in line, line
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    train.main(["--output-dir", str(out), "--resume"])
    assert_same_weights(finished, out)
    assert history(out) == history(finished)


# ============================================================================================
# 7. eval.py: every flag checked before encoding
# ============================================================================================


@pytest.fixture
def no_encoding(monkeypatch):
    """Fail loudly if anything is encoded: the refusals below must come before that."""

    def forbidden(self, *args, **kwargs):
        raise AssertionError("encoded before refusing")

    monkeypatch.setattr(Encoder, "_pooled", forbidden)


@pytest.fixture(scope="module")
def toy_beir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("beir") / "toy"
    _write_beir(folder)
    return folder


def _write_beir(folder: Path, corpus=None, queries=None, qrels=None) -> Path:
    docs = distinct_sentences(12, 9)
    corpus = corpus or [json.dumps({"_id": f"d{i}", "title": "", "text": t}) for i, t in enumerate(docs)]
    queries = queries or [
        json.dumps({"_id": f"q{i}", "text": t}) for i, t in enumerate(distinct_sentences(4, 10))
    ]
    qrels = qrels or ["query-id\tcorpus-id\tscore", "q0\td1\t1", "q1\td2\t2", "q2\td3\t1", "q3\td4\t1"]
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    return folder


def _pickled_model(folder: Path, tiny: Path, marker: Path) -> Path:
    shutil.copytree(tiny, folder)
    (folder / "model.safetensors").unlink()
    torch.save({"embeddings.word_embeddings.weight": _Evil(marker)}, folder / "pytorch_model.bin")
    return folder


EVAL_CASES = [
    # (case, argv after --model MODEL, text of the line); {tmp} is the test's folder
    ("batch-size-zero", ["--sts", "{dev}", "--batch-size", "0"], "--batch-size"),
    ("batch-size-negative", ["--sts", "{dev}", "--batch-size", "-4"], "--batch-size"),
    ("max-seq-length-zero", ["--sts", "{dev}", "--max-seq-length", "0"], "--max-seq-length"),
    ("max-seq-length-no-room", ["--sts", "{dev}", "--max-seq-length", "2"], "--max-seq-length"),
    ("dims-zero", ["--sts", "{dev}", "--dims", "32", "0"], "--dims"),
    ("dims-repeated", ["--sts", "{dev}", "--dims", "16", "16"], "--dims"),
    ("dims-beyond-model", ["--sts", "{dev}", "--dims", "64"], "--dims"),
    ("layers-not-numbers", ["--sts", "{dev}", "--layers", "x"], "--layers"),
    ("layers-beyond-model", ["--sts", "{dev}", "--layers", "9"], "--layers"),
    ("funnel-bad-syntax", ["--beir", "{beir}", "--funnel", "64"], "--funnel"),
    ("funnel-k-grows", ["--beir", "{beir}", "--funnel", "16:5", "32:10"], "--funnel"),
    ("funnel-dim-zero", ["--beir", "{beir}", "--funnel", "0:5"], "--funnel"),
    ("funnel-k-zero", ["--beir", "{beir}", "--funnel", "16:0"], "--funnel"),
    ("funnel-dim-beyond-model", ["--beir", "{beir}", "--funnel", "64:5"], "--funnel"),
    ("funnel-without-beir", ["--sts", "{dev}", "--funnel", "16:5"], "--beir"),
    ("funnel-binary-without-funnel", ["--beir", "{beir}", "--funnel-binary"], "--funnel"),
    ("rescore-zero", ["--beir", "{beir}", "--precisions", "binary", "--rescore", "0"], "--rescore"),
    ("rescore-without-binary", ["--beir", "{beir}", "--rescore", "50"], "--rescore"),
    ("json-is-a-folder", ["--sts", "{dev}", "--json", "{tmp}/work"], "is a folder"),
    ("json-is-its-own-markdown", ["--sts", "{dev}", "--json", "{tmp}/work/out.md"], "same file"),
    ("json-under-a-file", ["--sts", "{dev}", "--json", "{tmp}/work/notes.txt/out.json"], "is a file"),
    ("json-markdown-sibling-is-a-folder", ["--sts", "{dev}", "--json", "{tmp}/work/res.json"], "is a folder"),
    ("json-exists", ["--sts", "{dev}", "--json", "{tmp}/work/notes.json"], "--overwrite"),
    ("device-cuda-without-cuda", ["--sts", "{dev}", "--device", "cuda"], "CUDA"),
    ("device-unknown", ["--sts", "{dev}", "--device", "gpu"], "--device"),
    ("device-mps-without-mps", ["--sts", "{dev}", "--device", "mps"], "MPS"),
    ("sts-a-folder", ["--sts", "{tmp}/work"], "is a folder"),
    ("sts-missing", ["--sts", "{tmp}/nope.csv"], "no such file"),
    ("sts-same-name-twice", ["--sts", "{dev}", "{tmp}/work/sts-dev.csv"], "same name"),
    ("beir-a-file", ["--beir", "{dev}"], "is a file"),
    ("beir-missing", ["--beir", "{tmp}/no-beir"], "does not exist"),
    ("nothing-to-do", [], "--sts"),
]


@pytest.mark.parametrize("case, args, text", EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_eval_checks_every_flag_before_encoding(
    tiny_model_dir, files, toy_beir, tmp_path, capsys, no_encoding, case, args, text
):
    if case == "device-cuda-without-cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("earlier\n")
    (work / "notes.json").write_text("{}\n")
    (work / "res.md").mkdir()
    shutil.copy(files["dev"], work / "sts-dev.csv")
    fill = {"{dev}": str(files["dev"]), "{beir}": str(toy_beir), "{tmp}": str(tmp_path)}
    argv = ["--model", str(tiny_model_dir)]
    for arg in args:
        for key, value in fill.items():
            arg = arg.replace(key, value)
        argv.append(arg)
    refused(lambda: eval_script.main(argv), capsys, tmp_path, 2, [text])


MODEL_CASES = [
    ("weights-pickle-that-runs-code", ["pickle that would run code", "posix.system"]),
    ("weights-truncated", ["cannot load the model", "SafetensorError"]),
    ("run-without-final-model", ["training run without a final model", "--resume"]),
    ("a-file", ["is a file, not a model folder"]),
    ("folder-without-config", ["no config.json"]),
]


@pytest.mark.parametrize("case, contains", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
@pytest.mark.parametrize("script", ["eval.py", "train.py"])
def test_models_that_cannot_be_loaded_safely_are_one_line(
    finished, tiny_model_dir, files, tmp_path, capsys, no_encoding, case, contains, script
):
    marker = tmp_path / "PWNED"
    if case == "weights-pickle-that-runs-code":
        model = _pickled_model(tmp_path / "model", tiny_model_dir, marker)
    elif case == "weights-truncated":
        model = shutil.copytree(tiny_model_dir, tmp_path / "model")
        w = model / "model.safetensors"
        w.write_bytes(w.read_bytes()[:1000])
    elif case == "run-without-final-model":
        model = copy_run(finished, tmp_path / "run")
        shutil.rmtree(model / "model")
    elif case == "a-file":
        model = tmp_path / "model.safetensors"
        shutil.copy(tiny_model_dir / "model.safetensors", model)
    else:
        model = tmp_path / "model"
        model.mkdir()
        shutil.copy(tiny_model_dir / "vocab.txt", model)
    if script == "eval.py":
        call = lambda: eval_script.main(["--model", str(model), "--sts", str(files["dev"])])  # noqa: E731
    else:
        argv = run_args(model, files["train"], tmp_path / "out")
        call = lambda: train.main(argv)  # noqa: E731
    refused(call, capsys, tmp_path, 2, contains)
    assert not marker.exists(), "code in the pickle ran"


def test_a_run_folder_as_model_means_its_final_model(finished, files, tmp_path, capsys):
    a = eval_script.main(["--model", str(finished), "--sts", str(files["dev"])])
    assert f"evaluating its final model {finished / 'model'}" in capsys.readouterr().out
    b = eval_script.main(["--model", str(finished / "model"), "--sts", str(files["dev"])])
    assert a["sets"]["sts-dev"]["records"] == b["sets"]["sts-dev"]["records"]


def test_eval_disk_full_while_writing_results_is_one_line(
    tiny_model_dir, files, tmp_path, capsys, monkeypatch
):
    real = eval_script.write_text_atomic

    def full(path, text):
        if Path(path).suffix == ".md":
            raise _enospc(path)
        return real(path, text)

    monkeypatch.setattr(eval_script, "write_text_atomic", full)
    out = tmp_path / "res" / "out.json"
    with pytest.raises(SystemExit) as info:
        eval_script.main(["--model", str(tiny_model_dir), "--sts", str(files["dev"]), "--json", str(out)])
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.strip()]
    assert info.value.code == 1 and line.startswith("error: ") and "No space left on device" in line
    assert not [p for p in out.parent.iterdir() if ".tmp" in p.name]


# ============================================================================================
# 8. Never silently wrong metrics: BEIR files
# ============================================================================================


def _beir_case(folder: Path, case: str) -> tuple[Path, list[str]]:
    docs = [
        json.dumps({"_id": f"d{i}", "title": "", "text": t}) for i, t in enumerate(distinct_sentences(12, 9))
    ]
    queries = [json.dumps({"_id": f"q{i}", "text": t}) for i, t in enumerate(distinct_sentences(4, 10))]
    qrels = ["query-id\tcorpus-id\tscore", "q0\td1\t1", "q1\td2\t2", "q2\td3\t1", "q3\td4\t1"]
    expect = {
        "doc-id-repeated": ("corpus.jsonl:7:", "'d2' repeats line 3"),
        "doc-id-int-and-string": ("corpus.jsonl:14:", "'5' repeats line 13"),
        "query-id-repeated": ("queries.jsonl:4:", "'q1' repeats line 2"),
        "qrels-pair-repeated": ("test.tsv:6:", "repeat line 2"),
        "qrels-pair-conflicting": ("test.tsv:6:", "repeat line 3"),
        "qrels-unknown-query": ("test.tsv:4:", "query 'q9'"),
        "qrels-unknown-doc": ("test.tsv:5:", "doc 'd99'"),
        "qrels-fractional-grade": ("test.tsv:3:", "'1.5' is not an integer"),
        "qrels-infinite-grade": ("test.tsv:3:", "'inf' is not an integer"),
        "qrels-nan-grade": ("test.tsv:3:", "'nan' is not an integer"),
        "qrels-empty": ("test.tsv", "no qrels"),
        "qrels-two-fields": ("test.tsv:3:", "expected 3"),
        "id-missing": ("corpus.jsonl:2:", "'_id'"),
        "id-null": ("corpus.jsonl:2:", "'_id'"),
        "id-empty": ("queries.jsonl:1:", "'_id'"),
        "id-a-list": ("corpus.jsonl:2:", "'_id'"),
        "query-without-text": ("queries.jsonl:3:", "no text"),
        "query-zero-width": ("queries.jsonl:2:", "no text"),
        "corpus-empty": ("corpus.jsonl", "no records"),
        "qrels-not-utf8": ("test.tsv:2:", "not UTF-8"),
        "qrels-missing": ("test.tsv", "does not exist"),
    }[case]
    if case == "doc-id-repeated":
        docs[6] = json.dumps({"_id": "d2", "title": "", "text": "another text"})
    elif case == "doc-id-int-and-string":
        docs += [json.dumps({"_id": 5, "text": "five"}), json.dumps({"_id": "5", "text": "five again"})]
    elif case == "query-id-repeated":
        queries[3] = json.dumps({"_id": "q1", "text": "again"})
    elif case == "qrels-pair-repeated":
        qrels.append("q0\td1\t1")
    elif case == "qrels-pair-conflicting":
        qrels.append("q1\td2\t0")
    elif case == "qrels-unknown-query":
        qrels[3] = "q9\td3\t1"
    elif case == "qrels-unknown-doc":
        qrels[4] = "q3\td99\t1"
    elif case in ("qrels-fractional-grade", "qrels-infinite-grade", "qrels-nan-grade"):
        qrels[2] = "q1\td2\t" + {"qrels-fractional-grade": "1.5", "qrels-infinite-grade": "inf"}.get(
            case, "nan"
        )
    elif case == "qrels-empty":
        qrels = ["query-id\tcorpus-id\tscore"]
    elif case == "qrels-two-fields":
        qrels[2] = "q1\td2"
    elif case == "id-missing":
        docs[1] = json.dumps({"title": "", "text": "no id"})
    elif case == "id-null":
        docs[1] = json.dumps({"_id": None, "text": "null id"})
    elif case == "id-empty":
        queries[0] = json.dumps({"_id": "", "text": "empty id"})
    elif case == "id-a-list":
        docs[1] = json.dumps({"_id": ["d1"], "text": "list id"})
    elif case == "query-without-text":
        queries[2] = json.dumps({"_id": "q2"})
    elif case == "query-zero-width":
        queries[1] = json.dumps({"_id": "q1", "text": "\u200b \u2060"})
    elif case == "corpus-empty":
        docs = [""]
    _write_beir(folder, docs, queries, qrels)
    if case == "qrels-not-utf8":
        (folder / "qrels" / "test.tsv").write_bytes(b"query-id\tcorpus-id\tscore\nq0\td\xe91\t1\n")
    elif case == "qrels-missing":
        (folder / "qrels" / "test.tsv").unlink()
    return folder, list(expect)


BEIR_CASES = [
    "doc-id-repeated",
    "doc-id-int-and-string",
    "query-id-repeated",
    "qrels-pair-repeated",
    "qrels-pair-conflicting",
    "qrels-unknown-query",
    "qrels-unknown-doc",
    "qrels-fractional-grade",
    "qrels-infinite-grade",
    "qrels-nan-grade",
    "qrels-empty",
    "qrels-two-fields",
    "id-missing",
    "id-null",
    "id-empty",
    "id-a-list",
    "query-without-text",
    "query-zero-width",
    "corpus-empty",
    "qrels-not-utf8",
    "qrels-missing",
]


@pytest.mark.parametrize("case", BEIR_CASES)
def test_beir_files_that_would_change_the_metrics_silently_are_errors(
    tiny_model_dir, tmp_path, capsys, no_encoding, case
):
    folder, contains = _beir_case(tmp_path / "set", case)
    argv = ["--model", str(tiny_model_dir), "--beir", str(folder), "--json", str(tmp_path / "out.json")]
    refused(lambda: eval_script.main(argv), capsys, tmp_path, 2, ["--beir", *contains])


# ============================================================================================
# 9. Bounded memory on hostile files
# ============================================================================================


def _enormous(path: Path, line: int, size: int, total: int = 0) -> Path:
    """A file whose line ``line`` is ``size`` bytes long, padded with ordinary lines to ``total``."""
    head = {".csv": "sentence1,sentence2,score\n", ".tsv": "sentence1\tsentence2\tscore\n", ".jsonl": ""}[
        path.suffix
    ]
    ordinary = {
        ".csv": "a cat sat,a dog ran,0.5\n",
        ".tsv": "a cat sat\ta dog ran\t0.5\n",
        ".jsonl": '{"sentence1": "a cat", "sentence2": "a dog", "score": 0.5}\n',
    }[path.suffix]
    with open(path, "w") as f:
        f.write(head)
        for _ in range(line - 1 - (1 if head else 0)):
            f.write(ordinary)
        f.write("x" * size + "\n")
        while f.tell() < total:
            f.write(ordinary * 1000)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_an_enormous_line_fails_at_its_line_number(tmp_path, suffix):
    path = _enormous(tmp_path / f"big{suffix}", line=3, size=data.MAX_LINE_BYTES + 10)
    with pytest.raises(data.DataError) as info:
        data.read_rows(path)
    assert f"{path}:3: line longer than 4 MiB" in str(info.value)


def test_peak_memory_does_not_grow_with_the_file(tmp_path, monkeypatch):
    # 1 MiB lines are "enormous" here; files of 8 and 32 MiB with one such line at line 5.
    monkeypatch.setattr(data, "MAX_LINE_BYTES", 1 << 20)
    peaks = {}
    for total in (8 << 20, 32 << 20):
        path = _enormous(tmp_path / f"big{total}.jsonl", line=5, size=3 << 20, total=total)
        tracemalloc.start()
        with pytest.raises(data.DataError, match=":5: line longer"):
            data.read_rows(path)
        peaks[total] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        path.unlink()
    assert max(peaks.values()) < 4 << 20, peaks  # about one line's worth, not the file
    assert abs(peaks[32 << 20] - peaks[8 << 20]) < 1 << 20, peaks


HOSTILE_CASES = [
    ("binary-blob-named-csv", ".csv", ":1:"),
    ("json-nested-too-deeply", ".jsonl", ":3: JSON nested too deeply"),
    ("unterminated-quote", ".csv", "field larger than field limit"),
    ("enormous-line-in-training-data", ".jsonl", ":2: line longer than"),
]


@pytest.mark.parametrize("case, suffix, text", HOSTILE_CASES, ids=[c[0] for c in HOSTILE_CASES])
def test_hostile_training_files_are_one_line(tiny_model_dir, tmp_path, capsys, case, suffix, text):
    path = tmp_path / f"data{suffix}"
    if case == "binary-blob-named-csv":
        path.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(1 << 16)) * 80)  # 5 MiB
    elif case == "json-nested-too-deeply":
        ok = '{"sentence1": "a cat", "sentence2": "a dog", "score": 0.5}\n'
        path.write_text(ok * 2 + '{"sentence1": ' + "[" * 200000 + "]" * 200000 + "}\n")
    elif case == "unterminated-quote":
        path.write_text('sentence1,sentence2,score\n"a cat sat' + ",a dog\n" * 40000)
    else:
        _enormous(path, line=2, size=data.MAX_LINE_BYTES + 1)
    argv = run_args(tiny_model_dir, path, tmp_path / "out")
    refused(lambda: train.main(argv), capsys, tmp_path, 2, [str(path), text])


@pytest.mark.parametrize("file", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_an_enormous_line_in_a_beir_file_fails_at_its_line(
    tiny_model_dir, tmp_path, capsys, no_encoding, file
):
    folder = _write_beir(tmp_path / "set")
    with open(folder / file, "a") as f:
        f.write("x" * (data.MAX_LINE_BYTES + 1) + "\n")
    lines = len((folder / file).read_text().splitlines())
    argv = ["--model", str(tiny_model_dir), "--beir", str(folder)]
    refused(
        lambda: eval_script.main(argv),
        capsys,
        tmp_path,
        2,
        [f"{file.split('/')[-1]}:{lines}:", "line longer"],
    )


CONFIG_FILE_CASES = [
    ("enormous", '{"lr": 1e-5, "note": "' + "x" * (2 << 20) + '"}', "bytes"),
    ("nested-too-deeply", '{"lr": ' + "[" * 200000 + "]" * 200000 + "}", "cannot parse"),
    ("a-folder", None, "is a folder"),
]


@pytest.mark.parametrize("case, text, expected", CONFIG_FILE_CASES, ids=[c[0] for c in CONFIG_FILE_CASES])
def test_hostile_config_files_are_one_line(tmp_path, capsys, case, text, expected):
    config = tmp_path / "config.json"
    if text is None:
        config.mkdir()
    else:
        config.write_text(text)
    config_refused(["--config", str(config)], capsys, ["--config", str(config), expected])


# ============================================================================================
# 10. No silent hangs: distributed start-up
# ============================================================================================


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DIST_CASES = [
    # (case, environment, text of the line)
    (
        "master-unreachable",
        {"RANK": "1", "MASTER_ADDR": "127.0.0.1"},
        ["rank 1/2", "--dist-timeout", "within 0.5 s"],
    ),
    ("master-unresolvable", {"RANK": "1", "MASTER_ADDR": "no-such-host.invalid"}, ["no-such-host.invalid"]),
    ("nobody-joins-rank-0", {"RANK": "0", "MASTER_ADDR": "127.0.0.1"}, ["rank 0/2", "1/2 clients joined"]),
    ("rank-missing", {"RANK": None, "MASTER_ADDR": "127.0.0.1"}, ["RANK is not set"]),
    ("rank-not-a-number", {"RANK": "one", "MASTER_ADDR": "127.0.0.1"}, ["RANK='one'"]),
    ("rank-beyond-world", {"RANK": "2", "MASTER_ADDR": "127.0.0.1"}, ["RANK=2 is outside 0..1"]),
    ("world-not-a-number", {"WORLD_SIZE": "two", "RANK": "0"}, ["WORLD_SIZE='two'"]),
    ("master-port-unset", {"RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": None}, ["MASTER_PORT"]),
]


@pytest.mark.parametrize("case, env, contains", DIST_CASES, ids=[c[0] for c in DIST_CASES])
def test_distributed_start_up_faults_are_one_line_within_the_timeout(
    tiny_model_dir, files, tmp_path, capsys, monkeypatch, case, env, contains
):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setenv("LOCAL_RANK", "0")
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    # A short limit: the unreachable, unresolvable and lonely-rank-0 cases each wait it out (twice)
    argv = [*run_args(tiny_model_dir, files["train"], tmp_path / "out"), "--dist-timeout", "0.5"]
    start = time.monotonic()
    refused(lambda: train.main(argv), capsys, tmp_path, 2, contains)
    assert time.monotonic() - start < 30  # the limit is 0.5 s; torch retries once before giving up
    assert not torch.distributed.is_initialized()


def test_a_slow_start_says_what_it_waits_for(monkeypatch, capfd):
    monkeypatch.setattr(dist, "STARTUP_NOTICE_S", 0.2)
    port = _free_port()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    with pytest.raises(dist.DistStartError):
        dist.init_distributed("cpu", datetime.timedelta(seconds=0.5))
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    # The notice, and none of torch's C++ retry logs with stack traces.
    assert lines == [
        f"rank 1/2: connecting to the process group at 127.0.0.1:{port} (MASTER_ADDR:MASTER_PORT); "
        "waiting for all 2 processes to join, for at most 0.5 s (--dist-timeout)"
    ], err[-2000:]


def test_the_timeout_reaches_the_process_group(tiny_model_dir, files, tmp_path, monkeypatch):
    seen = {}

    def init_process_group(**kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(torch.distributed, "init_process_group", init_process_group)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit):
        train.main(run_args(tiny_model_dir, files["train"], tmp_path / "out"))
    assert seen["timeout"] == datetime.timedelta(seconds=1800)  # the default of --dist-timeout


# ============================================================================================
# 11. Messages that point the right way
# ============================================================================================

PATH_CASES = [
    # (case, the --train-data value, text of the line)
    ("a-folder", "{tmp}/work", "is a folder"),
    ("a-folder-with-trailing-slash", "{tmp}/work/", "is a folder"),
    ("a-folder-named-like-a-file", "{tmp}/work/looks.csv", "is a folder"),
    ("missing-absolute-path", "{tmp}/missing/train", "no such file"),
    ("missing-relative-path", "./no-such-train-file", "no such file"),
    ("missing-parent-relative", "../no-such-train-file", "no such file"),
    ("missing-with-trailing-slash", "no-such-folder/", "no such file"),
    ("missing-under-an-existing-folder", "{tmp}/work/train", "no such file"),
    ("missing-txt", "no-such-train.txt", "no such file"),
    ("missing-parquet", "no-such-train.parquet", "no such file"),
    ("existing-file-without-suffix", "{tmp}/work/trainfile", "unknown file type"),
    ("existing-txt", "{tmp}/work/train.txt", "unknown file type"),
    ("home-path", "~/no-such-train-file", "no such file"),
]


@pytest.mark.parametrize("case, spec, text", PATH_CASES, ids=[c[0] for c in PATH_CASES])
@pytest.mark.parametrize("flag", ["--train-data", "--eval-data", "eval.py --sts"])
def test_a_missing_path_or_a_folder_is_never_a_hub_dataset(
    tiny_model_dir, files, tmp_path, capsys, case, spec, text, flag
):
    work = tmp_path / "work"
    (work / "looks.csv").mkdir(parents=True)
    (work / "trainfile").write_text("sentence1,sentence2,score\na,b,0.5\n")
    (work / "train.txt").write_text("sentence1,sentence2,score\na,b,0.5\n")
    spec = spec.replace("{tmp}", str(tmp_path))
    if flag == "eval.py --sts":
        call = lambda: eval_script.main(["--model", str(tiny_model_dir), "--sts", spec])  # noqa: E731
    else:
        argv = run_args(tiny_model_dir, files["train"], tmp_path / "out")
        if flag == "--train-data":
            argv[argv.index("--train-data") + 1] = spec
        else:
            argv.insert(argv.index("--eval-data") + 1, spec)
        call = lambda: train.main(argv)  # noqa: E731
    refused(call, capsys, tmp_path, 2, [str(Path(spec)), text])


def test_a_hub_id_without_datasets_says_both_readings(tiny_model_dir, tmp_path, capsys):
    try:
        import datasets  # noqa: F401

        pytest.skip("the datasets package is installed: a hub id would be fetched")
    except ImportError:
        pass
    argv = run_args(tiny_model_dir, Path("some-org/some-set"), tmp_path / "out")
    refused(
        lambda: train.main(argv),
        capsys,
        tmp_path,
        2,
        ["some-org/some-set", "no such local file", "datasets"],
        absent=("Traceback",),
    )


# ============================================================================================
# The same guarantees in train.py --adaptor (the same loop and resume path, mrl/train/)
# ============================================================================================


@pytest.fixture(scope="module")
def adaptor_run(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A finished 4-step adaptor run (checkpoints at 2 and 4) on its own copy of a pairs file."""
    folder = tmp_path_factory.mktemp("adaptor")
    corpus = write_csv(folder / "corpus.csv", HEADER, pair_rows(32, seed=7))
    cache = tmp_path_factory.mktemp("embedding-cache")
    argv = [
        "--adaptor", "linear",
        "--model", str(tiny_model_dir),
        "--train-data", str(corpus),
        "--eval-data",
        "--embedding-cache", str(cache),
        "--dims", "32", "16",
        "--max-steps", "4",
        "--batch-size", "8",
        "--save-every", "2",
        "--keep-last", "3",
        "--log-every", "1",
        "--device", "cpu",
    ]  # fmt: skip
    run = folder / "run"
    train.main([*argv, "--output-dir", str(run)])
    return run, corpus, argv


def _adaptor_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "step_00000004" / "model.safetensors"))


ADAPTOR_CASES = [
    # (case, what is done to a copy of the finished run, text of the line)
    ("lock-held", "hold", ["in use"]),
    ("every-checkpoint-unreadable", "damage", ["none of its 2 checkpoints", "nothing was changed"]),
    ("no-checkpoint-but-a-final-model", "no-checkpoints", ["has a final model/ but no checkpoint"]),
    ("training-data-changed", "edit-data", ["changed since the run started", "size", "content hash"]),
]


@pytest.mark.parametrize("case, how, contains", ADAPTOR_CASES, ids=[c[0] for c in ADAPTOR_CASES])
def test_adaptor_resume_refuses_what_it_cannot_honour(adaptor_run, tmp_path, capsys, case, how, contains):
    finished_run, corpus, _ = adaptor_run
    run = copy_run(finished_run, tmp_path / "run")
    shutil.rmtree(run / "model")
    holder, original = None, corpus.read_bytes()
    if how == "hold":
        holder = hold_lock(run)
    elif how == "damage":
        for folder in (run / "checkpoints").glob("step_*"):
            (folder / "state.pt").write_bytes(b"garbage")
    elif how == "no-checkpoints":
        shutil.rmtree(run / "checkpoints")
        shutil.copytree(finished_run / "model", run / "model")
    else:
        corpus.write_bytes(original + b"a new cat,a new dog,0.5\r\n")
    try:
        argv = ["--output-dir", str(run), "--resume"]
        refused(
            lambda: train.main(argv),
            capsys,
            tmp_path,
            2,
            ["--resume" if holder is None else str(run), *contains],
        )
    finally:
        corpus.write_bytes(original)
        if holder is not None:
            stop(holder)


def test_adaptor_disk_full_while_saving_then_resume(adaptor_run, tmp_path, capsys, monkeypatch):
    finished_run, _, argv = adaptor_run
    out = tmp_path / "run"
    real = Encoder.save

    def save_full(self, path, metadata=None):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "config.json").write_text('{"half": ')
        raise _enospc(Path(path) / "model.safetensors")

    monkeypatch.setattr(Encoder, "save", save_full)
    with pytest.raises(SystemExit) as info:
        train.main([*argv, "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "Traceback" not in err, err[-3000:]
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "No space left on device" in line and str(out / "model") in line
    assert not (out / "model").exists() and not [p for p in out.rglob("*") if ".tmp" in p.name]
    monkeypatch.setattr(Encoder, "save", real)
    train.main(["--output-dir", str(out), "--resume"])
    assert (out / "model" / "model.safetensors").is_file()
    got, want = _adaptor_weights(out), _adaptor_weights(finished_run)
    assert all(torch.equal(got[k], want[k]) for k in want)

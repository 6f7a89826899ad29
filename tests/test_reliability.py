"""Reliability: exact resume after a crash, atomic checkpoints, and clear errors for bad input.

Every run trains the tiny random BERT of conftest.py (3 layers, 32 dims, dropout on) on a tiny CSV
of scored pairs, on one CPU thread, so runs are bitwise reproducible and take a few seconds.

- A run SIGKILLed at a random point (a real ``python train.py`` process) and continued with
  ``--resume`` ends with the same weights, bit for bit, as an uninterrupted run, and logs each
  (step, tag) point once. The kill point comes from ``random.Random(KILL_SEED)``; every assertion
  message names the seed, and ``MRL_KILL_SEED=...`` reruns (or soaks) other kill points.
- SIGTERM ends the step, saves a checkpoint, exits with 128 + 15 and resumes exactly.
- An unreadable newest checkpoint is reported, the previous one is used, and the result is exact.
- A non-finite loss stops an fp32 run naming the step and the batch; under fp16 the GradScaler
  skips the step instead and the run goes on.
- Bad input is one ``error:`` line on stderr naming the file:line, column or flag, and nothing on
  disk changes.
- Nothing is unpickled unsafely: state.pt loads with ``weights_only=True``, weights are safetensors,
  and ``trust_remote_code`` is off unless asked for.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # train.py lives in the repo root
import mrl.train.setup  # noqa: E402
import train  # noqa: E402
from mrl.checkpoint import list_checkpoints, load_checkpoint  # noqa: E402
from mrl.config import TrainConfig, parse_config, validate_for_model  # noqa: E402
from tests.fixture_text import WORDS, distinct_sentences, sentence, write_csv  # noqa: E402,F401

KILL_SEED = int(os.environ.get("MRL_KILL_SEED", "20240611"))
CRASH_STEPS = 40  # long enough that a kill at step <= 30 (+ < 0.1 s) lands mid-run


def pair_rows(n: int, seed: int) -> list[list]:
    rng = random.Random(seed)
    texts = distinct_sentences(2 * n, seed)
    return [[texts[2 * i], texts[2 * i + 1], round(rng.uniform(0, 1), 3)] for i in range(n)]


def scored_pairs(path: Path, n: int, seed: int) -> Path:
    return write_csv(path, ["sentence1", "sentence2", "score"], pair_rows(n, seed))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: the tiny model gains nothing from more, the subprocesses use one too (so
    in-process and subprocess runs use the same kernels), and the CPU may be shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    return {
        "train": scored_pairs(folder / "train.csv", 64, seed=1),  # 8 batches of 8: epochs roll over
        "dev": scored_pairs(folder / "sts-dev.csv", 16, seed=2),
    }


# ------------------------------------------------------------------------------------ helpers


def crash_args(model: Path, data: dict[str, Path], out: Path) -> list[str]:
    """The config of the crash tests: a checkpoint every step, a log line every step (so no
    logged value averages over a window that straddles the resume point), evals every 10."""
    return [
        "--model", str(model),
        "--train-data", str(data["train"]),
        "--eval-data", str(data["dev"]),
        "--max-steps", str(CRASH_STEPS),
        "--batch-size", "8",
        "--dims", "32", "16", "8",
        "--eval-every", "10",
        "--log-every", "1",
        "--save-every", "1",
        "--device", "cpu",
        "--output-dir", str(out),
    ]  # fmt: skip


def short_args(model: Path, data: dict[str, Path], out: Path) -> list[str]:
    return [
        "--model", str(model),
        "--train-data", str(data["train"]),
        "--eval-data",  # no dev sets
        "--max-steps", "10",
        "--batch-size", "8",
        "--dims", "32", "16", "8",
        "--log-every", "1",
        "--save-every", "2",
        "--keep-last", "3",
        "--device", "cpu",
        "--output-dir", str(out),
    ]  # fmt: skip


def with_flag(argv: list[str], flag: str, *values: str) -> list[str]:
    """``argv`` with ``flag``'s values replaced (or the flag appended)."""
    if flag not in argv:
        return [*argv, flag, *values]
    i = argv.index(flag)
    j = i + 1
    while j < len(argv) and not argv[j].startswith("--"):
        j += 1
    return [*argv[:i], flag, *values, *argv[j:]]


@pytest.fixture(scope="module")
def reference(tiny_model_dir, data, tmp_path_factory) -> Path:
    """The uninterrupted run the crashed-and-resumed runs must reproduce."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    train.main(crash_args(tiny_model_dir, data, out))
    return out


@pytest.fixture(scope="module")
def finished(tiny_model_dir, data, tmp_path_factory) -> Path:
    """A finished 10-step run with checkpoints at steps 6, 8 and 10."""
    out = tmp_path_factory.mktemp("runs") / "finished"
    train.main(short_args(tiny_model_dir, data, out))
    return out


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def assert_same_weights(expected: dict[str, torch.Tensor], run: Path, context: str = "") -> None:
    got = weights(run)
    assert got.keys() == expected.keys(), context
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"{context} weights differ from the uninterrupted run: {different[:5]}"


def read_metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]  # every line is one valid JSON object


def history(run: Path, context: str = "") -> dict[tuple[int, str], float]:
    """{(step, tag): value} of metrics.jsonl without timings; each point must appear once."""
    points = [
        ((m["step"], tag), value)
        for m in read_metrics(run)
        for tag, value in m.items()
        if tag not in ("step", "time")
    ]
    duplicated = sorted(key for key, n in Counter(key for key, _ in points).items() if n > 1)
    assert not duplicated, f"{context} duplicated (step, tag) points in metrics.jsonl: {duplicated[:5]}"
    return {key: value for key, value in points if not key[1].startswith("perf/")}


def checkpoint_steps(run: Path) -> list[int]:
    return [int(p.name.removeprefix("step_")) for p in list_checkpoints(run)]


def latest_step(run: Path) -> int | None:
    """The step ``checkpoints/latest`` points at (it is replaced atomically: safe to poll)."""
    try:
        return int((run / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    except (FileNotFoundError, ValueError):
        return None


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def start_train(argv: list[str], logs: Path) -> subprocess.Popen:
    """``python train.py ...`` from the repo root on one CPU thread; stdout/stderr to files (a
    pipe nobody reads could fill up and stall the run)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env["TOKENIZERS_PARALLELISM"] = "false"
    with open(logs / "stdout.txt", "wb") as out, open(logs / "stderr.txt", "wb") as err:
        return subprocess.Popen(
            [sys.executable, "train.py", *argv], cwd=REPO, env=env, stdout=out, stderr=err
        )


def wait_until(proc: subprocess.Popen, ready, logs: Path, what: str, timeout: float = 180.0):
    """Poll ``ready()`` until it returns a truthy value; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = ready()
        if found:
            return found
        if proc.poll() is not None:
            tail = (logs / "stderr.txt").read_text(errors="replace")[-2000:]
            pytest.fail(f"train.py exited with {proc.returncode} before {what}:\n{tail}")
        time.sleep(0.01)
    pytest.fail(f"train.py did not reach {what} within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------- 1. SIGKILL, then --resume


def test_sigkill_at_a_random_step_then_resume_is_bitwise_exact(reference, tiny_model_dir, data, tmp_path):
    rng = random.Random(KILL_SEED)
    kill_after_step = rng.randint(3, 30)
    delay = rng.uniform(0.0, 0.1)  # lands anywhere in a step: forward, backward, save, eval
    where = f"MRL_KILL_SEED={KILL_SEED} (kill after step {kill_after_step} + {delay:.3f} s)"

    run = tmp_path / "killed"
    proc = start_train(crash_args(tiny_model_dir, data, run), tmp_path)
    try:
        wait_until(
            proc,
            lambda: (latest_step(run) or 0) >= kill_after_step,
            tmp_path,
            f"checkpoint {kill_after_step}",
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        stop(proc)
    # The kill must have hit a running process, or this test proves nothing.
    assert proc.returncode == -signal.SIGKILL, f"{where}: train.py ended with {proc.returncode}"
    killed_at = latest_step(run)
    assert killed_at is not None and kill_after_step <= killed_at < CRASH_STEPS, (where, killed_at)
    assert not (run / "model").exists(), where

    train.main(["--output-dir", str(run), "--resume"])
    assert_same_weights(weights(reference), run, where)
    assert history(run, where) == history(reference), f"{where}: logged values differ"
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{CRASH_STEPS:08d}", where


def test_resume_survives_a_torn_last_line_in_metrics_jsonl(finished, tmp_path):
    # A crash in the middle of a write (a full disk, a power cut) can leave half a JSON line at
    # the end of metrics.jsonl; it belongs to a step after the checkpoint and must not stop --resume.
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    expected, expected_history = weights(finished), history(finished)
    shutil.rmtree(run / "checkpoints" / "step_00000010")
    (run / "checkpoints" / "latest").write_text("step_00000008\n")
    shutil.rmtree(run / "model")
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 10, "train/lo')

    train.main(["--output-dir", str(run), "--resume"])
    assert_same_weights(expected, run, "resumed past a torn metrics line:")
    assert history(run) == expected_history


# ------------------------------------------------------------------- 2. SIGTERM saves and exits


def test_sigterm_saves_a_checkpoint_exits_143_and_resumes_exactly(reference, tiny_model_dir, data, tmp_path):
    # --save-every 0 (it may differ on --resume): the only checkpoint is the one SIGTERM writes.
    run = tmp_path / "terminated"
    argv = with_flag(crash_args(tiny_model_dir, data, run), "--save-every", "0")
    proc = start_train(argv, tmp_path)
    log = run / "train.log"
    try:
        wait_until(
            proc,
            lambda: log.is_file() and f"step 3/{CRASH_STEPS} " in log.read_text(),
            tmp_path,
            "step 3",
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        stop(proc)
    stdout = (tmp_path / "stdout.txt").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, stdout[-2000:])

    lines = [line for line in stdout.splitlines() if "SIGTERM" in line]
    assert len(lines) == 1, stdout[-2000:]
    match = re.search(r"checkpoint at step (\d+)", lines[0])
    assert match, lines[0]
    stopped_at = int(match.group(1))
    assert 3 <= stopped_at < CRASH_STEPS
    assert checkpoint_steps(run) == [stopped_at]
    assert latest_step(run) == stopped_at
    meta = json.loads((run / "checkpoints" / f"step_{stopped_at:08d}" / "meta.json").read_text())
    assert meta["step"] == stopped_at
    assert not (run / "model").exists()

    train.main(["--output-dir", str(run), "--resume"])
    assert_same_weights(weights(reference), run, f"SIGTERM at step {stopped_at}:")
    assert history(run) == history(reference)


# ------------------------------------------------------------ 3. corrupt newest checkpoint


@pytest.mark.parametrize("file", ["model.safetensors", "state.pt"])
def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one(finished, tmp_path, capsys, file):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    expected, expected_history = weights(finished), history(finished)
    newest = run / "checkpoints" / "step_00000010"
    assert checkpoint_steps(run) == [6, 8, 10] and latest_step(run) == 10
    # A crash that left the newest checkpoint half written (e.g. a full disk), before model/.
    damaged = newest / file
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    shutil.rmtree(run / "model")
    capsys.readouterr()

    train.main(["--output-dir", str(run), "--resume"])
    out = capsys.readouterr().out
    unreadable = [line for line in out.splitlines() if " is unreadable " in line]
    assert len(unreadable) == 1 and str(newest) in unreadable[0], out[-2000:]
    assert "resuming at step 8" in out
    assert_same_weights(expected, run, f"resumed past a damaged {file}:")
    assert history(run) == expected_history
    # The newest checkpoint was written again, whole.
    folder, _, state = load_checkpoint(run, log=pytest.fail)
    assert folder == newest and state["step"] == 10


# ------------------------------------------------------------------------------ 4. determinism


def test_same_seed_gives_identical_weights_and_another_seed_does_not(
    finished, tiny_model_dir, data, tmp_path
):
    again = tmp_path / "again"
    train.main(with_flag(short_args(tiny_model_dir, data, again), "--save-every", "0"))
    assert_same_weights(weights(finished), again, "same seed:")
    assert history(again) == history(finished)

    other = tmp_path / "other-seed"
    train.main([*short_args(tiny_model_dir, data, other), "--seed", "13"])
    a, b = weights(finished), weights(other)
    assert any(not torch.equal(a[k], b[k]) for k in a), "seed 13 trained the same weights as seed 12"


# -------------------------------------------------------------------------------- 5. bad input


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    """One defect each, at a known line (the header is line 1, row i is line i + 2)."""
    folder = tmp_path_factory.mktemp("bad")
    header = ["sentence1", "sentence2", "score"]

    def variant(name: str, index: int, row: list, encoding: str = "utf-8") -> Path:
        rows = pair_rows(16, seed=5)
        rows[index] = row
        return write_csv(folder / name, header, rows, encoding)

    return {
        "empty-text": variant("empty-text.csv", 3, ["a cat sat", "  ", 0.5]),  # line 5
        "score-abc": variant("score-abc.csv", 2, ["a cat sat", "a dog ran", "abc"]),  # line 4
        "score-nan": variant("score-nan.csv", 4, ["a cat sat", "a dog ran", "nan"]),  # line 6
        "score-7": variant("score-7.csv", 1, ["a cat sat", "a dog ran", 7]),  # line 3
        "ragged": variant("ragged.csv", 5, ["a cat sat", "0.5"]),  # line 7
        "latin-1": variant(
            "latin-1.csv", 6, ["a caf\xe9 in the park", "a dog ran", 0.5], "latin-1"
        ),  # line 8
    }


# (case id, {flag: values} replacing the base flags, [text the error line must contain]).
# "{tmp}" is the test's tmp_path, "{bad:NAME}" a bad_files entry, "{run}" a finished run's copy.
BAD_INPUT = [
    ("missing-train-file", {"--train-data": ["{tmp}/missing.csv"]}, ["missing.csv"]),
    (
        "misspelled-column",
        {"--text-columns": ["sentence1", "sentnce2"]},
        ["'sentnce2'", "did you mean 'sentence2'"],
    ),
    ("empty-text", {"--train-data": ["{bad:empty-text}"]}, ["empty-text.csv:5:", "'sentence2'"]),
    ("score-abc", {"--train-data": ["{bad:score-abc}"]}, ["score-abc.csv:4:", "'score'", "abc"]),
    ("score-nan", {"--train-data": ["{bad:score-nan}"]}, ["score-nan.csv:6:", "'score'", "nan"]),
    ("score-out-of-range", {"--train-data": ["{bad:score-7}"]}, ["score-7.csv:3:", "--score-range"]),
    ("ragged-row", {"--train-data": ["{bad:ragged}"]}, ["ragged.csv:7:"]),
    ("not-utf-8", {"--train-data": ["{bad:latin-1}"]}, ["latin-1.csv:8:", "UTF-8"]),
    ("output-dir-not-empty", {"--output-dir": ["{tmp}/taken"]}, ["--output-dir", "--resume"]),
    ("resume-changed-lr", {"argv": ["--output-dir", "{run}", "--resume", "--lr", "1e-3"]}, ["lr"]),
    ("model-missing", {"--model": ["{tmp}/no-such-model"]}, ["no-such-model"]),
    ("model-empty-folder", {"--model": ["{tmp}/empty-model"]}, ["empty-model"]),
    ("model-not-a-model", {"--model": ["{tmp}/text-only"]}, ["text-only"]),
]


# Bad settings: refused by the parser, or against the model's width and depth (the tiny model:
# 32 dims, 3 layers) by validate_for_model; train.main prints either as its one error line before
# writing anything (tests/test_faults.py, test_train_main_stops_at_a_bad_setting).
BAD_SETTINGS = [
    ("dim-zero", ["--dims", "32", "0"], ["--dims"]),
    ("dim-negative", ["--dims", "32", "-8"], ["--dims"]),
    ("dim-duplicated", ["--dims", "32", "16", "16"], ["--dims"]),
    ("dim-beyond-model", ["--dims", "64", "32"], ["--dims", "64"]),
    ("dim-weights-length", ["--dims", "32", "16", "--dim-weights", "1", "1", "1"], ["--dim-weights"]),
    ("layer-beyond-model", ["--2d", "fixed", "--layer-dim-pairs", "9:16"], ["--layer-dim-pairs", "9:16"]),
    ("mnrl-batch-of-one", ["--loss", "mnrl", "--batch-size", "1"], ["--batch-size"]),
]


@pytest.mark.parametrize("argv, expected", [c[1:] for c in BAD_SETTINGS], ids=[c[0] for c in BAD_SETTINGS])
def test_bad_settings_are_one_error_line(argv, expected):
    with pytest.raises(ValueError) as info:
        validate_for_model(parse_config(argv), model_dim=32, num_layers=3)
    assert "\n" not in str(info.value)
    for text in expected:
        assert text in str(info.value), (text, str(info.value))


@pytest.mark.parametrize("change, expected", [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_error_line_and_writes_nothing(
    finished, tiny_model_dir, data, bad_files, tmp_path, capsys, change, expected
):
    (tmp_path / "empty-model").mkdir()
    (tmp_path / "text-only").mkdir()
    (tmp_path / "text-only" / "README.txt").write_text("not a model\n")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("an earlier experiment\n")
    run = tmp_path / "run"
    shutil.copytree(finished, run)

    def fill(value: str) -> str:
        value = value.replace("{tmp}", str(tmp_path)).replace("{run}", str(run))
        name = re.fullmatch(r"\{bad:(.+)\}", value)
        return str(bad_files[name.group(1)]) if name else value

    flags = {
        "--model": [str(tiny_model_dir)],
        "--train-data": [str(data["train"])],
        "--eval-data": [],
        "--dims": ["32", "16"],
        "--max-steps": ["2"],
        "--batch-size": ["8"],
        "--device": ["cpu"],
        "--output-dir": [str(tmp_path / "out")],
    }
    flags.update({flag: [fill(v) for v in values] for flag, values in change.items()})
    argv = (
        [fill(v) for v in flags.pop("argv")]
        if "argv" in flags
        else [x for f, v in flags.items() for x in (f, *v)]
    )
    before = {folder: snapshot(tmp_path / folder) for folder in ("taken", "run", "empty-model", "text-only")}
    capsys.readouterr()

    with pytest.raises(SystemExit) as info:
        train.main(argv)
    assert info.value.code not in (0, None)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not (tmp_path / "out").exists()
    for folder, files in before.items():
        assert snapshot(tmp_path / folder) == files, f"{folder} changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-model", "run", "taken", "text-only"]


# -------------------------------------------------------------------------- 6. non-finite loss


def poison_step(monkeypatch, at_step: int, value: float, n_dims: int = 3) -> None:
    """Make every CoSENT term of the optimizer step that starts at ``at_step`` (completed steps)
    equal ``value``. train.py gets its loss from the objectives table: the entry is patched."""
    from mrl import objectives
    from mrl.losses import cosent_loss

    calls = []

    def loss(columns, scores, scale=20.0):
        result = cosent_loss(columns, scores, scale=scale)
        calls.append(None)
        return result * value if (len(calls) - 1) // n_dims == at_step else result

    entry = dataclasses.replace(
        objectives.BASE_LOSSES["cosent"], bind=lambda config, local: partial(loss, scale=config.scale)
    )
    monkeypatch.setitem(objectives.BASE_LOSSES, "cosent", entry)


def test_nan_loss_stops_the_run_naming_step_and_batch(tiny_model_dir, data, tmp_path, monkeypatch):
    poison_step(monkeypatch, at_step=3, value=float("nan"))
    collated = []  # the first-column texts of every training batch, in order

    class Recording(mrl.train.setup.TokenizingCollator):
        def __call__(self, items):
            batch = super().__call__(items)
            collated.append(batch["texts"])
            return batch

    monkeypatch.setattr(mrl.train.setup, "TokenizingCollator", Recording)
    run = tmp_path / "nan"
    argv = with_flag(short_args(tiny_model_dir, data, run), "--save-every", "1")
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    assert info.value.code not in (0, None)
    # The step named is the number of completed optimizer steps: the checkpoint to resume from.
    assert "step 3" in str(info.value.code) and "train.log" in str(info.value.code)

    # The first texts of the offending batch (the 4th, and the last one collated) are logged.
    assert len(collated) == 4
    (line,) = [line for line in (run / "train.log").read_text().splitlines() if "non-finite" in line]
    assert "step 3" in line
    assert ast.literal_eval(line.split("last batch: ", 1)[1]) == collated[-1][:3]

    # Nothing after the fault was saved: the newest checkpoint is the last good step.
    assert max(checkpoint_steps(run)) == 3 and latest_step(run) == 3
    assert not (run / "model").exists()


def cpu_fp16_supported() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
        torch.amp.GradScaler("cpu")
    except (RuntimeError, TypeError, ValueError):
        return False
    return y.dtype == torch.float16


@pytest.mark.skipif(not cpu_fp16_supported(), reason="fp16 autocast / GradScaler unsupported on CPU")
def test_fp16_overflow_skips_the_step_and_the_run_goes_on(tiny_model_dir, data, tmp_path, monkeypatch):
    poison_step(monkeypatch, at_step=3, value=float("inf"))
    run = tmp_path / "fp16"
    train.main(with_flag(short_args(tiny_model_dir, data, run), "--precision", "fp16"))
    log = (run / "train.log").read_text()
    assert "step 4: fp16 gradients overflowed; step skipped" in log
    assert "done" in log and (run / "model" / "model.safetensors").is_file()
    # AdamW counts only the steps it took: one fewer per overflow (ours, and any natural one).
    skipped = log.count("overflowed")
    state = torch.load(run / "checkpoints" / "step_00000010" / "state.pt", weights_only=True)
    taken = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert taken == {10.0 - skipped}
    final = weights(run)
    assert all(torch.isfinite(t).all() for t in final.values())


# ------------------------------------------------------------------------------ 7. safe loading


def test_checkpoints_load_without_pickle_and_remote_code_is_off(
    finished, monkeypatch, tiny_model_dir, data, tmp_path
):
    # Every checkpoint: state.pt loads with weights_only=True, weights are safetensors.
    for folder in list_checkpoints(finished):
        assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.safetensors", "state.pt"]
        state = torch.load(folder / "state.pt", weights_only=True, map_location="cpu")
        assert state["step"] == int(folder.name.removeprefix("step_"))
        assert load_file(str(folder / "model.safetensors")).keys() == weights(finished).keys()
    # No pickled weights anywhere in the run; the final model is safetensors only.
    pickles = [
        p for p in finished.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl") and p.name != "state.pt"
    ]
    assert not pickles
    assert (finished / "model" / "model.safetensors").is_file()

    # trust_remote_code: off in the dataclass, on the command line and in the run's config.json ...
    assert TrainConfig().trust_remote_code is False
    assert parse_config([]).trust_remote_code is False
    assert json.loads((finished / "config.json").read_text())["trust_remote_code"] is False
    # ... and what reaches the model loader.
    seen = []

    class Spy(mrl.train.setup.Encoder):
        def __init__(self, *args, trust_remote_code=None, **kwargs):
            seen.append(trust_remote_code)
            super().__init__(*args, trust_remote_code=trust_remote_code, **kwargs)

    monkeypatch.setattr(mrl.train.setup, "Encoder", Spy)
    train.main(with_flag(short_args(tiny_model_dir, data, tmp_path / "spy"), "--max-steps", "1"))
    assert seen == [False]

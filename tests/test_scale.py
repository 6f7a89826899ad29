"""Scale-out through the real train.py: torchrun DDP and GradCache give the run of one process
with the global batch (the exact gradient checks live in test_dist.py / test_gradcache.py).

A dropout-free tiny BERT is used where runs are compared, since dropout masks depend on how
the batch is split. Tolerances: logged losses 1e-5 relative (same math, different reduction
order); weights after 4 AdamW steps 2e-4 absolute (Adam divides near-zero gradients by their
own tiny second moments, which amplifies float rounding in a few entries).
"""

import csv
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import eval as eval_script
import train
from tests.conftest import make_tiny_model

REPO = Path(__file__).resolve().parents[1]
WORDS = "the a cat dog sat on mat man woman is play guitar runs in park".split()


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_nodrop"), dropout=0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("scale_data")
    rng = random.Random(1)
    triplets = folder / "triplets.csv"
    with open(triplets, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["anchor", "positive", "negative"])
        for i in range(64):  # a unique first word keeps every text distinct
            writer.writerow([f"{c}{i} " + " ".join(rng.choices(WORDS, k=4)) for c in "apn"])
    dev = folder / "dev.csv"
    with open(dev, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence1", "sentence2", "score"])
        for i in range(16):
            writer.writerow([" ".join(rng.choices(WORDS, k=5)), " ".join(rng.choices(WORDS, k=5)), i / 15])
    return {"triplets": triplets, "dev": dev}


def common(model: Path, data: dict[str, Path]) -> list[str]:
    return [
        "--model", str(model), "--train-data", str(data["triplets"]), "--eval-data", str(data["dev"]),
        "--loss", "mnrl", "--dims", "32", "16", "--max-steps", "4", "--log-every", "1",
        "--device", "cpu", "--lr", "1e-3", "--eval-every", "0",
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        f"--master_port={free_port()}", "--master_addr=127.0.0.1", "train.py", *args,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


def assert_same_run(a: Path, b: Path, weight_atol: float = 2e-4) -> None:
    la, lb = losses(a), losses(b)
    assert [s for s, _ in la] == [s for s, _ in lb] == [1, 2, 3, 4]
    for (_, x), (_, y) in zip(la, lb):
        assert x == pytest.approx(y, rel=1e-5)
    wa = load_file(str(a / "model" / "model.safetensors"))
    wb = load_file(str(b / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=weight_atol, rtol=0, msg=key)


@pytest.fixture(scope="module")
def single_run(no_dropout_model, data, tmp_path_factory) -> Path:
    """One process, global batch 8: the reference for the 2-process runs."""
    out = tmp_path_factory.mktemp("single") / "run"
    torch.set_num_threads(1)
    train.main([*common(no_dropout_model, data), "--batch-size", "8", "--output-dir", str(out)])
    return out


@pytest.fixture(scope="module")
def ddp_run(no_dropout_model, data, tmp_path_factory) -> Path:
    """2 gloo processes x batch 4 with checkpoints at steps 2 and 4: one torchrun run shared by the
    equality test and the resume test (its uninterrupted run), since every torchrun start costs
    seconds of imports in three processes. Tests read it; the resume test resumes a copy."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    torchrun(
        [*common(no_dropout_model, data), "--batch-size", "4", "--save-every", "2", "--output-dir", str(out)]
    )
    return out


def test_torchrun_two_processes_equal_one_process_with_the_global_batch(ddp_run, data, single_run):
    """2 gloo processes x batch 4 (negatives gathered across ranks) == 1 process x batch 8;
    the saved model is read by eval.py. (The checkpoints that ddp_run also writes for the resume
    test do not change the run: compared here with a run that writes none.)"""
    out = ddp_run
    assert_same_run(out, single_run)
    derived = json.loads((out / "config.json").read_text())["derived"]
    assert derived["world_size"] == 2 and derived["global_batch"] == 8
    assert derived["negatives_per_query"] == 7 + 8  # other positives + every hard negative
    results = eval_script.main(["--model", str(out / "model"), "--sts", str(data["dev"])])
    assert {r["dim"] for r in results["sets"]["dev"]["records"]} == {32, 16}


def test_torchrun_resume_continues_exactly(ddp_run, tmp_path):
    """A distributed run stopped after its step-2 checkpoint and resumed under torchrun ends with
    the weights of an uninterrupted distributed run (bitwise: gloo reduces in a fixed order).
    The stopped run is a copy of the shared uninterrupted one (ddp_run) cut back to step 2."""
    import shutil

    straight = ddp_run
    resumed = Path(shutil.copytree(straight, tmp_path / "resumed"))
    # Simulate a crash right after the step-2 checkpoint.
    shutil.rmtree(resumed / "model")
    shutil.rmtree(resumed / "checkpoints" / "step_00000004")
    (resumed / "checkpoints" / "latest").write_text("step_00000002\n")
    torchrun(["--output-dir", str(resumed), "--resume"])
    wa = load_file(str(straight / "model" / "model.safetensors"))
    wb = load_file(str(resumed / "model" / "model.safetensors"))
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    assert losses(straight) == losses(resumed)


def test_gradcache_in_train_equals_plain_batches(no_dropout_model, data, single_run, tmp_path):
    """--mini-batch-size 3 (chunks of 3 of the 24 texts) trains like the plain batch of 8."""
    out = tmp_path / "gradcache"
    train.main([*common(no_dropout_model, data), "--batch-size", "8", "--mini-batch-size", "3",
                "--output-dir", str(out)])  # fmt: skip
    assert_same_run(out, single_run)


def test_gradcache_with_dropout_and_2d_is_deterministic(tiny_model_dir, data, tmp_path):
    """With dropout on, GradCache + 2D layer dropping replays the same run from the same seed."""
    args = [*common(tiny_model_dir, data), "--batch-size", "8", "--mini-batch-size", "5", "--2d", "random"]
    train.main([*args, "--output-dir", str(tmp_path / "a")])
    train.main([*args, "--output-dir", str(tmp_path / "b")])
    wa = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    tags = {
        tag
        for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
        for tag in json.loads(line)
    }
    assert any(tag.startswith("train/loss_l") for tag in tags)


def test_torchrun_with_exit_heads_equals_one_process(no_dropout_model, data, tmp_path):
    """Exit heads under DDP: with one earlier layer drawn a step, the other depths' heads get no
    gradient (DDP must be told so); heads and weights equal one process with the global batch."""
    heads = ["--2d", "random", "--exit-heads", "shallow"]
    single = tmp_path / "single"
    torch.set_num_threads(1)
    train.main([*common(no_dropout_model, data), *heads, "--batch-size", "8", "--output-dir", str(single)])
    ddp = tmp_path / "ddp"
    torchrun([*common(no_dropout_model, data), *heads, "--batch-size", "4", "--output-dir", str(ddp)])
    assert_same_run(ddp, single)
    ha, hb = (load_file(str(run / "model" / "exit_heads.safetensors")) for run in (ddp, single))
    assert ha.keys() == hb.keys() == {f"{d}.linear.{p}" for d in (1, 2) for p in ("weight", "bias")}
    for key in ha:
        torch.testing.assert_close(ha[key], hb[key], atol=2e-4, rtol=0, msg=key)
    assert any(t.abs().max() > 0 for t in ha.values())


def test_torchrun_refuses_detached_exit_heads_in_one_line(no_dropout_model, data, tmp_path):
    out = tmp_path / "ddp"
    args = [
        *common(no_dropout_model, data),
        "--2d",
        "random",
        "--exit-heads",
        "shallow",
        "--exit-head-detach",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
        "--master_addr=127.0.0.1", "train.py", *args, "--batch-size", "4", "--output-dir", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "error: --exit-head-detach runs in one process for now" in done.stderr
    assert not out.exists()

"""The training loop's pieces on their own: `mrl.train.loop` (the one loop, Meter, the log
scalars) and `mrl.train.state` (checkpoint content, the one resume path), driven by a toy job
(a 2-weight linear model and plain SGD), so each property is checked without an encoder.

The references are hand counts: which steps are evaluated, saved and logged for given cadences,
the SGD weights after N steps in closed form, and the meter's means by hand.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mrl.checkpoint import list_checkpoints  # noqa: E402
from mrl.tracking import Tracker  # noqa: E402
from mrl.train import loop as loop_module  # noqa: E402
from mrl.train.loop import Meter, duration, eval_due, log_scalars, run_loop, timing  # noqa: E402
from mrl.train.state import TrainState, checkpoint_state, restore  # noqa: E402

LR = 0.1


@dataclass
class ToyJob:
    """Minimises (w . x)^2 with x = (1, 1) by SGD: w_{t+1} = w_t - LR * 2 (w . x) x, so the
    weights after each step are known in closed form. Records what the loop asked of it."""

    total_steps: int
    signal_at: int | None = None  # send ourselves SIGTERM during this step
    calls: list = field(default_factory=list)
    state_keys: tuple[str, ...] = ("step", "cursor", "optimizer", "schedule", "draws")
    loss_tag: str = "train/loss"
    has_dev: bool = True

    def __post_init__(self):
        self.weights = torch.nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.weights.weight.copy_(torch.tensor([[1.0, 2.0]]))
        self.optimizer = torch.optim.SGD(self.weights.parameters(), lr=LR)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)
        self.draws = 0  # stands for a job's own resumable state (the encoder's RNG states)

    def step(self, state: TrainState, meter: Meter) -> torch.Tensor:
        self.calls.append(("step", state.step))
        if self.signal_at == state.step:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step: the loop must finish the step
        loss = self.weights(torch.ones(1, 2)).pow(2).sum()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.schedule.step()
        self.draws += 1
        state.cursor = (0, state.cursor[1] + 1)
        meter.add(loss, {"d2": loss * 2}, samples=4, tokens=10, computed=15)
        return torch.tensor(0.5)

    def evaluate(self):
        self.calls.append(("eval", None))
        return {"val/dev/spearman_d2": 1.0, "val/dev/spearman_l1_d2": 2.0}, {"dev": [{"layer": 1}]}

    def extra_state(self):
        return {"draws": self.draws}

    def load_extra_state(self, saved):
        self.draws = saved["draws"]


def closed_form(steps: int) -> torch.Tensor:
    """w after ``steps`` SGD steps on (w . 1)^2 from (1, 2): s = w . 1 shrinks by (1 - 4 LR)."""
    w = torch.tensor([1.0, 2.0])
    for _ in range(steps):
        w = w - LR * 2 * w.sum() * torch.ones(2)
    return w


def config(**values):
    defaults = {"eval_every": 0, "save_every": 0, "save_every_minutes": 0, "keep_last": 2, "log_every": 1}
    return SimpleNamespace(**{**defaults, **values})


def run(job: ToyJob, run_dir: Path, state: TrainState | None = None, **cadence) -> TrainState:
    state = state or TrainState()
    tracker = Tracker(run_dir)
    try:
        run_loop(job, state, config(**cadence), tracker, run_dir)
    finally:
        tracker.close()
    return state


def logged(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "total, every, expected",
    [(6, 0, [0, 6]), (6, 2, [0, 2, 4, 6]), (7, 3, [0, 3, 6, 7]), (1, 5, [0, 1])],
)
def test_evaluation_steps_by_hand(total, every, expected):
    assert [s for s in range(total + 1) if eval_due(s, s == total, every)] == expected


def test_a_checkpoint_when_the_minutes_passed_since_the_last_one(tmp_path, monkeypatch):
    # A fake clock: each step takes 4 minutes, so with --save-every-minutes 10 a checkpoint falls
    # at step 3 (12 min), then 6 (12 min after 3), and the end, whatever --save-every says.
    now = [0.0]
    monkeypatch.setattr(loop_module.time, "perf_counter", lambda: now[0])
    job = ToyJob(total_steps=7)
    step = job.step

    def slow_step(state, meter):
        now[0] += 240.0
        return step(state, meter)

    job.step = slow_step
    saved = []
    monkeypatch.setattr(loop_module, "save_checkpoint", lambda run_dir, at, *rest: saved.append(at))
    run(job, tmp_path, save_every_minutes=10)
    assert saved == [3, 6, 7]
    assert torch.allclose(job.weights.weight[0], closed_form(7))  # saving changes no step


def test_the_loop_steps_evaluates_saves_and_logs_on_its_cadences(tmp_path):
    job = ToyJob(total_steps=5)
    state = run(job, tmp_path, eval_every=2, save_every=2, log_every=2)
    assert state.step == 5 and state.cursor == (0, 5)
    # Evaluation at the top of an iteration: step 0, every 2, and the end; a step between each.
    assert job.calls == [
        ("eval", None), ("step", 0), ("step", 1), ("eval", None), ("step", 2), ("step", 3),
        ("eval", None), ("step", 4), ("eval", None),
    ]  # fmt: skip
    assert torch.allclose(job.weights.weight[0], closed_form(5))
    # Checkpoints at 2, 4 and the end, pruned to the last 2, each holding that step's weights.
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]
    # Log lines every 2 steps and at the last one, with the meter's means and the job's tags.
    metrics = logged(tmp_path)
    train = [m for m in metrics if "train/loss" in m]
    assert [m["step"] for m in train] == [2, 4, 5]
    assert all(m["train/lr"] == LR and m["train/grad_norm"] == 0.5 for m in train)
    assert all(m["train/loss_d2"] == pytest.approx(2 * m["train/loss"]) for m in train)
    assert [m["step"] for m in metrics if "val/dev/spearman_d2" in m] == [0, 2, 4, 5]
    log = (tmp_path / "train.log").read_text()
    assert "step 2 eval: dev/spearman_d2=1.00\n" in log  # the final layer's cells only
    assert "step 5/5 loss " in log


def test_meter_means_by_hand():
    meter = Meter()
    meter.add(torch.tensor(1.0), {"d8": torch.tensor(3.0)}, samples=4, tokens=10, computed=15)
    meter.add(torch.tensor(3.0), {"d8": torch.tensor(5.0)}, samples=4, tokens=30, computed=25)
    means = meter.means(world_size=1)
    assert means["train/loss"] == 2.0 and means["train/loss_d8"] == 4.0
    assert means["perf/padding_ratio"] == 1.0  # (15 + 25) computed for 40 real tokens
    assert means["perf/tokens_per_s"] == pytest.approx(5 * means["perf/samples_per_s"])  # 40 / 8
    assert meter.sums == {} and meter.samples == 0  # starts afresh


def test_adaptor_tags_rename_the_loss_and_drop_tokens():
    job = ToyJob(total_steps=1, loss_tag="train/adaptor_loss")
    means = {"train/loss": 1.0, "train/loss_d8": 2.0, "perf/tokens_per_s": 0.0, "perf/samples_per_s": 3.0}
    scalars = log_scalars(job, means, torch.tensor(0.25))
    assert scalars["train/adaptor_loss"] == 1.0 and scalars["train/adaptor_loss_d8"] == 2.0
    assert "perf/tokens_per_s" not in scalars and "train/loss" not in scalars
    assert scalars["train/grad_norm"] == 0.25 and scalars["train/lr"] == LR


def test_checkpoint_state_holds_position_optimizer_schedule_and_the_jobs_own(tmp_path):
    job = ToyJob(total_steps=1)
    saved = checkpoint_state(TrainState(step=3, cursor=(1, 7)), job)
    assert list(saved) == ["step", "cursor", "optimizer", "schedule", "draws"]
    assert saved["step"] == 3 and saved["cursor"] == [1, 7]
    with_pairs = checkpoint_state(TrainState(step=3, cursor=(1, 7), pair_cursor=(0, 2)), job)
    assert list(with_pairs)[:3] == ["step", "cursor", "pair_cursor"] and with_pairs["pair_cursor"] == [0, 2]


def test_resume_continues_exactly_where_an_uninterrupted_run_goes(tmp_path):
    whole = ToyJob(total_steps=6)
    run(whole, tmp_path / "whole")
    first = ToyJob(total_steps=6)
    run(first, tmp_path / "part", save_every=4)  # checkpoints at 4 and 6; resume from 4
    (tmp_path / "part" / "checkpoints" / "latest").write_text("step_00000004\n")
    second = ToyJob(total_steps=6)
    state = restore(tmp_path / "part", second, TrainState())
    assert (state.step, state.cursor, state.resumed_step) == (4, (0, 4), 4)
    assert second.draws == 4 and torch.allclose(second.weights.weight[0], closed_form(4))
    run(second, tmp_path / "part", state)
    # The resumed step is neither evaluated nor saved again; the run ends where the whole one did.
    assert second.calls == [("step", 4), ("step", 5), ("eval", None)]
    assert torch.equal(second.weights.weight, whole.weights.weight) and second.draws == 6


def test_restore_without_a_checkpoint(tmp_path, capsys):
    fresh = TrainState()
    assert restore(tmp_path, ToyJob(total_steps=1), fresh) is fresh
    assert "has no checkpoint yet; starting it again from step 0" in capsys.readouterr().out
    (tmp_path / "model").mkdir()
    with pytest.raises(SystemExit):
        restore(tmp_path, ToyJob(total_steps=1), fresh)
    assert "has a final model/ but no checkpoint" in capsys.readouterr().err


def test_a_signal_ends_the_step_saves_and_exits(tmp_path):
    job = ToyJob(total_steps=10, signal_at=2)
    with pytest.raises(SystemExit) as stop:
        run(job, tmp_path)
    assert stop.value.code == 128 + signal.SIGTERM
    assert job.calls[-1] == ("step", 2)  # the step it arrived in was finished, no later one begun
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003"]
    assert (
        "SIGTERM: saved a checkpoint at step 3; continue with --resume"
        in (tmp_path / "train.log").read_text()
    )


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (42, "42s"), (65, "1m05s"), (3600 + 180, "1h03m")])
def test_durations_read_as_people_write_them(seconds, text):
    assert duration(seconds) == text


def test_the_log_line_says_elapsed_time_and_eta(tmp_path, monkeypatch):
    """A resumed run's ETA counts only the steps this process did: 2 steps in 10 s, 4 to go."""
    with monkeypatch.context() as patch:
        patch.setattr("mrl.train.loop.time.perf_counter", lambda: 110.0)
        assert timing(step=7, total_steps=11, clock=(100.0, 5)) == "elapsed 10s, ETA 20s"
    run(ToyJob(total_steps=3), tmp_path)
    lines = [
        line for line in (tmp_path / "train.log").read_text().splitlines() if line.startswith("step 3/3")
    ]
    assert len(lines) == 1 and " | elapsed " in lines[0] and lines[0].endswith("ETA 0s")

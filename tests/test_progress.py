"""Progress lines for logs (mrl/progress.py): a line every `every` seconds with a rate and an ETA
extrapolated from the batches' costs, a plain pass-through when off."""

import io
import sys

import pytest

from mrl import progress as progress_module
from mrl.progress import duration, progress


class FakeClock:
    """perf_counter that advances by a batch's cost (seconds) each time a batch is consumed."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_off_yields_everything_and_prints_nothing(capsys):
    assert list(progress([1, 2, 3], [1, 1, 1], [1, 1, 1], "encode", show=False)) == [1, 2, 3]
    assert capsys.readouterr().err == ""


def test_log_lines_every_interval_with_rate_and_cost_weighted_eta(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_module.time, "perf_counter", clock)
    err = io.StringIO()  # not a terminal: log lines, not a bar
    monkeypatch.setattr(sys, "stderr", err)
    sizes, costs = [10, 10, 10, 10], [30.0, 10.0, 10.0, 10.0]  # the first batch holds the longest texts
    for i, _ in enumerate(progress(["a", "b", "c", "d"], sizes, costs, "encode", every=25.0)):
        clock.now += costs[i]  # each batch takes its cost in seconds
    lines = err.getvalue().splitlines()
    # After batch 1 (t=30 s, 10 of 40 texts, cost 30 of 60): rate 10/30 texts/s, ETA 30 * 30/30 = 30 s.
    # After batch 2 (t=40 s): only 10 s since the last line, below every=25. After batch 3 (t=50):
    # 20 s, still below. No line after the last batch (the caller reports the end).
    assert lines == ["encode: 10/40 texts, 0.3 texts/s, elapsed 30s, ETA 30s"]


@pytest.mark.parametrize(
    "seconds, text", [(0, "0s"), (59.4, "59s"), (60, "1m00s"), (185, "3m05s"), (7380, "2h03m")]
)
def test_duration(seconds, text):
    assert duration(seconds) == text

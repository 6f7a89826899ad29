"""The first hour of a new user: help text, column options, progress bars, offline defaults.

- ``train.py --help`` states each default once, never "(default: None)".
- A score column with another name fails with one line that names ``--score-column``; eval.py has
  the same column options as train.py, and they select the same numbers as a renamed file.
- eval.py shows progress bars while encoding when stderr is a terminal, none otherwise.
- A local --train-data without --eval-data evaluates on the dev file beside it, or on nothing.
- A hub id while the hub is out of reach stops at once with one line (no half minute of retries);
  the probe is faked here (no network is used either way).
"""

from __future__ import annotations

import io
import random
import re
import socket
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train.py / eval.py live in the repo root
import eval as eval_script  # noqa: E402
import train  # noqa: E402
from mrl import hub  # noqa: E402
from mrl.config import build_parser, parse_config  # noqa: E402
from mrl.model import Encoder  # noqa: E402
from tests.fixture_text import distinct_sentences, write_csv  # noqa: E402
from tests.test_train import one_thread  # noqa: E402,F401 (autouse: one torch thread)


@pytest.fixture(scope="module")
def pairs() -> list[list]:
    rng = random.Random(3)
    texts = distinct_sentences(96, seed=9)
    return [[texts[2 * i], texts[2 * i + 1], round(rng.random(), 3)] for i in range(48)]


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


# ------------------------------------------------------------------------------ train.py --help


def test_help_states_each_default_once():
    text = build_parser().format_help()
    assert "(default: None)" not in text
    # One entry per option: from its flag to the next line that starts another option.
    entries = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    assert len(entries) > 50
    for entry in entries:
        assert len(re.findall(r"\bdefault\b", entry)) <= 1, entry
    flat = " ".join(text.split())
    for expected in ("(default: 2e-05)", "(default: 16)", "(default: cosent)", "(default: [0.0, 1.0])"):
        assert flat.count(expected) == 1, expected


# ------------------------------------------------------------------------------ column options


def test_score_column_with_another_name_names_the_flag(tiny_model_dir, pairs, tmp_path, capsys):
    data = write_csv(tmp_path / "labelled.csv", ["sentence1", "sentence2", "label"], pairs)
    out = tmp_path / "run"
    with pytest.raises(SystemExit):
        train.main(
            [
                "--model",
                str(tiny_model_dir),
                "--train-data",
                str(data),
                "--eval-data",
                "--output-dir",
                str(out),
            ]
        )
    message = error_line(capsys)
    assert str(data) in message and "'score'" in message and "--score-column" in message
    assert not out.exists()

    with pytest.raises(SystemExit):
        eval_script.main(["--model", str(tiny_model_dir), "--sts", str(data)])
    message = error_line(capsys)
    assert str(data) in message and "--score-column" in message


def test_eval_column_options_select_the_same_numbers(tiny_model_dir, pairs, tmp_path):
    renamed = [[b, a, s] for a, b, s in pairs]  # columns in another order, under other names
    plain = write_csv(tmp_path / "plain.csv", ["sentence1", "sentence2", "score"], pairs)
    odd = write_csv(tmp_path / "odd.csv", ["right", "left", "gold"], renamed)
    common = ["--model", str(tiny_model_dir), "--dims", "32", "8"]
    a = eval_script.main([*common, "--sts", str(plain)])["sets"]["plain"]["records"]
    b = eval_script.main(
        [*common, "--sts", str(odd), "--text-columns", "left", "right", "--score-column", "gold"]
    )
    b = b["sets"]["odd"]["records"]
    assert [(r["dim"], round(r["spearman"], 6)) for r in a] == [
        (r["dim"], round(r["spearman"], 6)) for r in b
    ]


# ------------------------------------------------------------------------------ progress bars


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_eval_progress_bars_only_on_a_terminal(tiny_model_dir, pairs, tmp_path, monkeypatch, capsys):
    data = write_csv(tmp_path / "sts.csv", ["sentence1", "sentence2", "score"], pairs)
    args = ["--model", str(tiny_model_dir), "--sts", str(data), "--batch-size", "8"]
    eval_script.main(args)
    # Not a terminal: no bar in the logs (a line every 30 s instead: tests/test_progress.py).
    assert "encode" not in capsys.readouterr().err

    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    eval_script.main(args)
    bars = terminal.getvalue()
    unique_texts = len({t for row in pairs for t in row[:2]})
    assert "encode" in bars and f"{unique_texts}/{unique_texts}" in bars  # every text


def test_train_progress_bar_only_on_a_terminal(tiny_model_dir, pairs, tmp_path, monkeypatch, capsys):
    data = write_csv(tmp_path / "train.csv", ["sentence1", "sentence2", "score"], pairs)
    args = ["--model", str(tiny_model_dir), "--train-data", str(data), "--eval-data", "--max-steps", "3",
            "--batch-size", "4", "--log-every", "1"]  # fmt: skip
    train.main([*args, "--output-dir", str(tmp_path / "logs")])
    err = capsys.readouterr().err
    assert "train:" not in err and "it/s" not in err  # not a terminal: no bar redraws in the logs
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    train.main([*args, "--output-dir", str(tmp_path / "tty")])
    assert "train:" in terminal.getvalue() and "3/3" in terminal.getvalue()


# ------------------------------------------------------------------------------ offline defaults


def test_local_training_file_gets_a_local_dev_set_or_none(tmp_path, pairs):
    folder = tmp_path / "stsb"
    folder.mkdir()
    train_file = write_csv(folder / "en-train.csv", ["sentence1", "sentence2", "score"], pairs)
    assert parse_config(["--train-data", str(train_file)]).eval_data == []  # no dev file beside it
    dev = write_csv(folder / "en-dev.csv", ["sentence1", "sentence2", "score"], pairs[:8])
    assert parse_config(["--train-data", str(train_file)]).eval_data == [str(dev)]
    assert parse_config(["--train-data", str(train_file), "--eval-data"]).eval_data == []  # asked: none
    other = write_csv(tmp_path / "x.csv", ["sentence1", "sentence2", "score"], pairs[:8])
    assert parse_config(["--train-data", str(train_file), "--eval-data", str(other)]).eval_data == [
        str(other)
    ]
    # A dev file without a score column (e.g. MSRP's labels) is not a dev set for Spearman.
    msrp = tmp_path / "msrp"
    msrp.mkdir()
    write_csv(msrp / "train.csv", ["sentence1", "sentence2", "label"], [r[:2] + [1] for r in pairs])
    write_csv(msrp / "dev.csv", ["sentence1", "sentence2", "label"], [r[:2] + [1] for r in pairs[:8]])
    assert parse_config(["--train-data", str(msrp / "train.csv"), "--loss", "mnrl"]).eval_data == []
    # A hub dataset keeps the hub's dev split.
    assert parse_config(["--train-data", "sentence-transformers/stsb"]).eval_data == [
        "sentence-transformers/stsb@validation"
    ]


def test_run_on_local_files_evaluates_on_the_dev_file_beside_them(tiny_model_dir, pairs, tmp_path):
    write_csv(tmp_path / "zh-train.csv", ["sentence1", "sentence2", "score"], pairs)
    write_csv(tmp_path / "zh-dev.csv", ["sentence1", "sentence2", "score"], pairs[:16])
    out = train.main(
        ["--model", str(tiny_model_dir), "--train-data", str(tmp_path / "zh-train.csv"), "--max-steps", "2",
         "--batch-size", "8", "--output-dir", str(tmp_path / "run")]
    )  # fmt: skip
    assert (out / "eval_dev.json").read_text().startswith('{\n  "zh-dev"')


@pytest.fixture
def unreachable_hub(monkeypatch):
    """The probe's connection fails at once, as on a machine without network (DNS error)."""

    def refuse(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    for name in hub._PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # "0" is not offline; setenv also restores the variable after the test (load_hub_examples
    # sets it to "1" when the hub is out of reach).
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub.socket, "create_connection", refuse)
    hub.offline_reason.cache_clear()
    yield
    hub.offline_reason.cache_clear()


def test_unreachable_hub_is_reported_at_once(unreachable_hub, pairs, tmp_path, capsys):
    data = write_csv(tmp_path / "train.csv", ["sentence1", "sentence2", "score"], pairs)
    start = time.perf_counter()
    with pytest.raises(SystemExit):  # the default --model is a hub id
        train.main(["--train-data", str(data), "--output-dir", str(tmp_path / "run")])
    seconds = time.perf_counter() - start
    message = error_line(capsys)
    assert "sentence-transformers/all-MiniLM-L6-v2" in message
    assert "hub cannot be used (huggingface.co:443 is unreachable (Name or service not known))" in message
    assert seconds < 10, seconds  # the libraries' own retries take about 30 s
    assert not (tmp_path / "run").exists()

    with pytest.raises(SystemExit):  # a hub dataset (whether or not `datasets` is installed)
        train.main(
            ["--train-data", "someone/some-dataset", "--eval-data", "--output-dir", str(tmp_path / "r2")]
        )
    message = error_line(capsys)
    assert "someone/some-dataset" in message and "hub cannot be used" in message


def test_offline_reason(monkeypatch, unreachable_hub):
    assert hub.offline_reason().startswith("huggingface.co:443 is unreachable")
    hub.offline_reason.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.offline_reason() == "HF_HUB_OFFLINE is set"
    hub.offline_reason.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert hub.offline_reason() is None  # only the proxy knows: leave it to the libraries


def test_local_folders_never_probe_the_hub(tiny_model_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("probed the hub for a local folder")

    hub.offline_reason.cache_clear()
    monkeypatch.setattr(hub.socket, "create_connection", fail)
    assert Encoder(tiny_model_dir).dim == 32
    hub.offline_reason.cache_clear()


def test_calibration_with_texts_is_a_clear_error(tiny_model_dir):
    encoder = Encoder(tiny_model_dir)
    with pytest.raises(ValueError, match=r"not the texts themselves"):
        encoder.encode(["a cat"], precision="int8", calibration=["a dog", "a man"])

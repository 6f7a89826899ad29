"""TensorBoard for many runs: the custom-scalars layout, the HParams session and the retention plot.

Each check reads the event files back with TensorBoard's own EventAccumulator and protos (no
network, no TensorFlow) and compares them with what the run wrote elsewhere (config.json,
eval_dev.json, metrics.jsonl), never with the tracker's own helpers.
"""

from __future__ import annotations

import json
import random
import re
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train.py lives in the repo root
import train  # noqa: E402
from mrl.tracking import hparam_values, scalar_layout  # noqa: E402
from tests.fixture_text import distinct_sentences, write_csv  # noqa: E402
from tests.test_train import one_thread  # noqa: E402,F401 (autouse: one torch thread)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tracking-data")
    rng = random.Random(0)
    texts = distinct_sentences(120, seed=5)
    rows = [[texts[2 * i], texts[2 * i + 1], round(rng.random(), 3)] for i in range(60)]
    return {
        "train": write_csv(folder / "train.csv", ["sentence1", "sentence2", "score"], rows[:40]),
        "dev": write_csv(folder / "sts-dev.csv", ["sentence1", "sentence2", "score"], rows[40:]),
    }


def run(model: Path, files: dict[str, Path], out: Path, *extra: str) -> Path:
    return train.main(
        [
            "--model", str(model), "--train-data", str(files["train"]), "--eval-data", str(files["dev"]),
            "--max-steps", "3", "--batch-size", "8", "--dims", "32", "16", "8", "--log-every", "1",
            "--output-dir", str(out), *extra,
        ]
    )  # fmt: skip


@pytest.fixture(scope="module")
def run_2d(tiny_model_dir, files, tmp_path_factory) -> Path:
    return run(tiny_model_dir, files, tmp_path_factory.mktemp("runs") / "2d", "--2d", "random")


def accumulator(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0, "images": 0})
    acc.Reload()
    return acc


def read_layout(tb: Path) -> dict[str, list[str]]:
    """{chart title: [tag regexes]} from the custom-scalars config event."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    acc = accumulator(tb)
    events = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(events[-1].tensor_proto.string_val[0])
    return {chart.title: list(chart.multiline.tag) for cat in layout.category for chart in cat.chart}


def matched(regexes: list[str], tags: list[str]) -> set[str]:
    return {tag for tag in tags if any(re.search(rx, tag) for rx in regexes)}


def test_layout_charts_collect_the_logged_tags(run_2d):
    layout = read_layout(run_2d / "tb")
    tags = accumulator(run_2d / "tb").Tags()["scalars"]
    # What each chart must hold, written out by hand from the README's tag table.
    per_dim_loss = {"train/loss_d32", "train/loss_d16", "train/loss_d8"}
    assert per_dim_loss <= set(tags)
    assert matched(layout["loss at every dim (final layer)"], tags) == per_dim_loss
    assert matched(layout["every set and dim (final layer)"], tags) == {
        "val/sts-dev/spearman_d32",
        "val/sts-dev/spearman_d16",
        "val/sts-dev/spearman_d8",
    }
    for layer in (1, 2):  # the earlier layers of the 3-layer model
        assert matched(layout[f"2D: layer {layer}, every dim"], tags) == {
            f"val/sts-dev/spearman_l{layer}_d{d}" for d in (32, 16, 8)
        }
    assert matched(layout["2D: d=16, every layer"], tags) == {
        "val/sts-dev/spearman_l1_d16",
        "val/sts-dev/spearman_l2_d16",
        "val/sts-dev/spearman_d16",
    }
    layer_losses = {t for t in tags if t.startswith("train/loss_l")} | {"train/loss_kl"}
    assert len(layer_losses) >= 2
    assert matched(layout["2D: earlier layers and KL"], tags) == layer_losses


def test_layout_without_2d_has_no_layer_charts():
    titles = {title for charts in scalar_layout([64, 32], None, 6).values() for title in charts}
    assert titles == {"total loss", "loss at every dim (final layer)", "every set and dim (final layer)"}
    # A run that evaluates only its final layer (e.g. 2D fixed with pairs at L only) is 1D too.
    assert scalar_layout([64], [6], 6) == scalar_layout([64], None, 6)


def test_hparams_session_holds_the_config_and_the_final_dev_metrics(run_2d):
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    acc = accumulator(run_2d / "tb" / "hparams")
    content = acc.PluginTagToContent("hparams")
    # Session start and end only: an experiment summary would impose this run's columns on all.
    assert set(content) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
    assert end.session_end_info.status == api_pb2.STATUS_SUCCESS

    config = json.loads((run_2d / "config.json").read_text())
    hp = start.session_start_info.hparams
    assert hp["lr"].number_value == config["lr"] == 2e-5
    assert hp["two_d"].string_value == "random"
    assert config["group_by_length"] is False and config["compile"] is False  # the defaults
    assert hp["group_by_length"].bool_value is False and hp["compile"].bool_value is False
    assert json.loads(hp["dims"].string_value) == config["dims"] == [32, 16, 8]
    assert hp["max_steps"].number_value == 3
    assert hp["derived.total_steps"].number_value == config["derived"]["total_steps"]
    assert hp["output_dir"].string_value == str(run_2d)
    assert json.loads(hp["train_subset"].string_value) is None  # None stays a column, as "null"
    # Every config key is a column, so runs of an ablation share them.
    assert {k for k in config if k != "derived"} <= set(hp)

    # The metric columns: the final dev evaluation (eval_dev.json) and the last logged train loss.
    dev = json.loads((run_2d / "eval_dev.json").read_text())["sts-dev"]
    last_loss = [json.loads(line) for line in (run_2d / "metrics.jsonl").read_text().splitlines()]
    last_loss = [m["train/loss"] for m in last_loss if "train/loss" in m][-1]
    expected = {"train/loss": last_loss}
    for r in dev:
        cell = f"d{r['dim']}" if r["layer"] == 3 else f"l{r['layer']}_d{r['dim']}"
        expected[f"val/sts-dev/spearman_{cell}"] = r["spearman"]
    scalars = {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}
    assert set(scalars) == set(expected)
    for tag, events in scalars.items():
        assert len(events) == 1 and events[0].step == 3
        assert events[0].value == pytest.approx(expected[tag], abs=1e-4), tag


def test_retention_plot_is_a_png_and_an_image_summary(run_2d):
    png = run_2d / "retention.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    images = accumulator(run_2d / "tb").Images("val/retention")
    assert len(images) == 1 and images[0].step == 3
    assert (images[0].width, images[0].height) == (width, height)
    assert width > height  # 2D: the Spearman-vs-dim panel and the layers x dims grid side by side


def test_without_matplotlib_the_run_ends_with_a_note(tiny_model_dir, files, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)  # import matplotlib -> ImportError
    out = run(tiny_model_dir, files, tmp_path / "no-mpl")
    assert (out / "model").is_dir() and (out / "eval_dev.json").is_file()
    assert not (out / "retention.png").exists()
    assert "matplotlib is not installed: no retention plot" in (out / "train.log").read_text()
    assert "val/retention" not in accumulator(out / "tb").Tags()["images"]


def test_hparam_values_flattens_what_tensorboard_cannot_show():
    flat = hparam_values(
        {"a": [1, 2], "b": None, "c": True, "d": 0.5, "e": {"f": 3, "g": [4]}, "h": float("nan")}
    )
    assert flat == {"a": "[1, 2]", "b": "null", "c": True, "d": 0.5, "e.f": 3, "e.g": "[4]", "h": "NaN"}

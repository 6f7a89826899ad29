"""Where numbers go: TensorBoard (``<run>/tb/``), ``<run>/metrics.jsonl`` and ``<run>/train.log``.

One global step everywhere: the optimizer step. Tags are fixed once (see README):
``train/loss``, ``train/loss_d64``, ``train/loss_l3``, ``train/lr``, ``train/grad_norm``,
``val/<set>/<metric>_d64`` (``val/<set>/<metric>_l3_d64`` for earlier layers of 2D models; the
metric is the set's evaluator's primary one, ``spearman`` for STS: `mrl.evals.base.tag`),
``perf/samples_per_s``, ``perf/tokens_per_s``, ``perf/max_mem_gb``.
A Tracker made with ``enabled=False`` (ranks other than 0) does nothing.

Which metric and what to call it come from the dev sets' evaluators (`mrl.evals`): anything with
their ``metric``, ``label`` and ``title`` attributes, passed in; `scalar_layout` alone falls back
to the STS evaluator when given none.

For comparing many runs (``tensorboard --logdir runs``) every run also gets:
- a custom-scalars layout (`scalar_layout`): every ``train/loss_d*`` on one chart, every
  ``val/*/<metric>_d*`` on another (one category per primary metric), and for 2D one chart per
  layer and one per dim;
- an HParams session in ``tb/hparams/`` (`Tracker.start_hparams`, `Tracker.finish`): the resolved
  config as hyperparameters and the final dev metrics, so ablation runs line up as rows of the
  HParams table. Only the session summaries are written, never an experiment summary: with one,
  TensorBoard would take that run's list of hyperparameters and metrics for every run;
- a retention plot at the end (`retention_figure`): each set's primary metric against dim (and
  the layers x dims grid for 2D), as ``RUN/retention.png`` and the image summary
  ``val/retention``. It needs the optional matplotlib; without it the run logs a note and skips
  the plot.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mrl.checkpoint import write_text_atomic


class Tracker:
    """Writes scalars to TensorBoard and metrics.jsonl, and messages to stdout and train.log.

    ``purge_step``: when resuming, drop everything logged at or after this step (TensorBoard's
    purge_step, and the same lines of metrics.jsonl), so a resumed run has no doubled points.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, purge_step: int | None = None):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.writer = None
        self.purge_step = purge_step
        self.latest: dict[str, float] = {}  # the last value logged of each tag (for the HParams row)
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.metrics_path = self.run_dir / "metrics.jsonl"
        if purge_step is not None and self.metrics_path.exists():
            kept = []
            for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line torn by the crash we are resuming from
                    print(f"note: dropping an unreadable line of {self.metrics_path}: {line[:60]!r}")
                    continue
                if record["step"] < purge_step:
                    kept.append(line)
                    self.latest.update({k: v for k, v in record.items() if k not in ("step", "time")})
            write_text_atomic(self.metrics_path, "".join(line + "\n" for line in kept))
        self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge_step)
        self.log_file = open(self.run_dir / "train.log", "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Log ``{tag: value}`` at ``step`` (already Python floats: call .item() before)."""
        if not self.enabled:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.latest.update(values)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")

    def print(self, message: str) -> None:
        """A line for people: stdout and train.log."""
        if not self.enabled:
            return
        tqdm.write(message)
        self.log_file.write(message + "\n")
        self.log_file.flush()

    def start_hparams(
        self,
        hparams: dict[str, Any],
        layers: list[int] | None,
        num_layers: int,
        dims: list[int],
        evaluators: Mapping[str, Any] | None = None,
    ) -> None:
        """At the start of a run: the custom-scalars layout and the HParams session start.

        hparams: the resolved config (and derived quantities); values that TensorBoard cannot
        show (lists, None) are written as their JSON text. layers: the evaluated layers (None:
        the final one only); dims: the evaluated dims; evaluators: the dev sets' ``{name:
        evaluator}`` (see `scalar_layout`).
        """
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer.add_custom_scalars(scalar_layout(dims, layers, num_layers, evaluators))
        # A run of its own below tb/: its scalars are exactly the HParams table's metric columns.
        self.hparams_writer = SummaryWriter(str(self.run_dir / "tb" / "hparams"), purge_step=self.purge_step)
        self.hparams_writer.file_writer.add_summary(hparams_session(hparam_values(hparams)))
        self.hparams_writer.flush()

    def finish(self, step: int, records: dict[str, list[dict]], evaluators: Mapping[str, Any]) -> Path | None:
        """At the end of a run: the HParams row's metrics, and the retention plot.

        The metrics are the last value this run logged of ``train/loss`` and of every ``val/*``
        tag (the final dev evaluation), whatever its evaluator. records: ``{set: records}`` of
        that evaluation (`mrl.evals.evaluate_all`), and evaluators ``{set: its evaluator}``, for
        the plot. Returns the PNG path, or None when there is nothing to plot or no matplotlib.
        """
        if not self.enabled:
            return None
        writer = getattr(self, "hparams_writer", None)
        if writer is not None:
            for tag, value in self.latest.items():
                if tag == "train/loss" or tag.startswith("val/"):
                    writer.add_scalar(tag, value, step)
            writer.file_writer.add_summary(hparams_session(None))
            writer.flush()
        if not records:
            return None
        try:
            figure = retention_figure(records, evaluators)
        except ImportError:
            self.print("note: matplotlib is not installed: no retention plot (pip install -e '.[plots]')")
            return None
        png = self.run_dir / "retention.png"
        figure.savefig(png, dpi=100)
        self.writer.add_image("val/retention", figure_to_array(figure), step, dataformats="HWC")
        self.writer.flush()
        return png

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.log_file.close()
            if getattr(self, "hparams_writer", None) is not None:
                self.hparams_writer.close()


def scalar_layout(
    dims: list[int], layers: list[int] | None, num_layers: int, evaluators: Mapping[str, Any] | None = None
) -> dict:
    """The custom-scalars layout: {category: {chart title: ["Multiline", [tag regexes]]}}.

    One "dev" category per primary metric among ``evaluators`` (``{set: evaluator}``: their
    ``metric`` and ``label``); None means train.py's --eval-data sets, scored pairs (STS).
    Regexes, not tag lists, so that the same layout fits every run of an ablation (other dims,
    other sets) and TensorBoard merges the charts of all runs into one.
    """
    if evaluators is None:
        from mrl.evals import StsEvaluator  # here, not at the top: tracking sits below the evaluators

        evaluators = {"": StsEvaluator}
    labels = {e.metric: e.label for e in evaluators.values()}  # each primary metric once, in order
    layout = {
        "Matryoshka: training loss": {
            "total loss": ["Multiline", [r"^train/loss$"]],
            "loss at every dim (final layer)": ["Multiline", [r"^train/loss_d\d+$"]],
        },
    }
    for metric, label in labels.items():
        m = re.escape(metric)
        layout[f"Matryoshka: dev {label}"] = {
            "every set and dim (final layer)": ["Multiline", [rf"^val/.*/{m}_d\d+$"]],
        }
    earlier = [layer for layer in layers or [] if layer != num_layers]
    if earlier:
        layout["Matryoshka: training loss"]["2D: earlier layers and KL"] = [
            "Multiline",
            [r"^train/loss_l\d+(_d\d+)?$", r"^train/loss_kl$"],
        ]
        for metric, label in labels.items():
            m, dev = re.escape(metric), layout[f"Matryoshka: dev {label}"]
            for layer in earlier:
                dev[f"2D: layer {layer}, every dim"] = ["Multiline", [rf"^val/.*/{m}_l{layer}_d\d+$"]]
            for dim in sorted(dims, reverse=True):
                dev[f"2D: d={dim}, every layer"] = ["Multiline", [rf"^val/.*/{m}_(l\d+_)?d{dim}$"]]
    return layout


def hparam_values(hparams: dict[str, Any]) -> dict[str, Any]:
    """Flatten a config for the HParams plugin: bool/int/float/str stay, anything else (lists,
    None, nested dicts, flattened with '.') becomes JSON text, so every run has every column."""
    flat = {}
    for key, value in hparams.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in hparam_values(value).items()})
        elif isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value)):
            flat[key] = value
        else:
            flat[key] = json.dumps(value)
    return flat


def hparams_session(hparams: dict[str, Any] | None):
    """The HParams plugin's session summary: its start (``hparams`` given: bool/number/str
    values, see `hparam_values`) or its successful end (None). Built from TensorBoard's own
    protos, so no TensorFlow is needed, and booleans stay booleans."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    if hparams is None:
        tag = metadata.SESSION_END_INFO_TAG
        data = plugin_data_pb2.HParamsPluginData(
            session_end_info=plugin_data_pb2.SessionEndInfo(
                status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time()
            ),
            version=metadata.PLUGIN_DATA_VERSION,
        )
    else:
        tag = metadata.SESSION_START_INFO_TAG
        start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for key, value in hparams.items():
            if isinstance(value, bool):
                start.hparams[key].bool_value = value
            elif isinstance(value, (int, float)):
                start.hparams[key].number_value = value
            else:
                start.hparams[key].string_value = str(value)
        data = plugin_data_pb2.HParamsPluginData(
            session_start_info=start, version=metadata.PLUGIN_DATA_VERSION
        )
    plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=data.SerializeToString())
    return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))])


def retention_figure(records: dict[str, list[dict]], evaluators: Mapping[str, Any]):
    """A matplotlib Figure, one row per dev set: its evaluator's primary metric (``evaluators``:
    ``{set: evaluator}``, its ``metric`` and ``title``) against dim at the final layer (log-2
    axis, retention in % beside each point); for 2D records also the layers x dims grid.
    Raises ImportError without matplotlib. Uses no pyplot (no global backend state)."""
    import matplotlib  # noqa: F401  (ImportError here when the optional extra is absent)
    from matplotlib.figure import Figure

    two_d = any(len({r["layer"] for r in recs}) > 1 for recs in records.values())
    figure = Figure(figsize=(11 if two_d else 6, 4 * len(records)), layout="constrained")
    axes = figure.subplots(len(records), 2 if two_d else 1, squeeze=False)
    for row, (name, recs) in zip(axes, records.items()):
        metric, title = evaluators[name].metric, evaluators[name].title
        final = max(r["layer"] for r in recs)
        line = sorted((r for r in recs if r["layer"] == final), key=lambda r: r["dim"])
        ax = row[0]
        ax.plot([r["dim"] for r in line], [r[metric] for r in line], marker="o")
        for r in line:
            retention = "" if r["retention"] is None else f"{100 * r['retention']:.1f}%"
            ax.annotate(retention, (r["dim"], r[metric]), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=8)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xticks([r["dim"] for r in line], [str(r["dim"]) for r in line])
        ax.set_xlabel("dims kept")
        ax.set_ylabel(title)
        ax.set_title(f"{name}: final layer ({final}), retention vs largest dim")
        ax.grid(alpha=0.3)
        if two_d:
            dims = sorted({r["dim"] for r in recs})
            layers = sorted({r["layer"] for r in recs})
            cell = {(r["layer"], r["dim"]): r[metric] for r in recs}
            grid = [[cell.get((layer, d), float("nan")) for d in dims] for layer in layers]
            ax = row[1]
            image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
            for i, layer in enumerate(layers):
                for j, d in enumerate(dims):
                    if (layer, d) in cell:
                        ax.text(
                            j, i, f"{cell[layer, d]:.1f}", ha="center", va="center", fontsize=8, color="w"
                        )
            ax.set_xticks(range(len(dims)), [str(d) for d in dims])
            ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
            ax.set_xlabel("dims kept")
            ax.set_ylabel("layers kept")
            ax.set_title(f"{name}: {title}, layers x dims")
            figure.colorbar(image, ax=ax)
    return figure


def figure_to_array(figure):
    """(H, W, 3) uint8 pixels of a Figure, for ``add_image``."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()

"""Where numbers go: TensorBoard (``<run>/tb/``), ``<run>/metrics.jsonl`` and ``<run>/train.log``.

One global step everywhere: the optimizer step. Tags are fixed once (see README):
``train/loss``, ``train/loss_d64``, ``train/loss_l3``, ``train/lr``, ``train/grad_norm``,
``val/<set>/spearman_d64`` (``val/<set>/spearman_l3_d64`` for earlier layers of 2D models),
``perf/samples_per_s``, ``perf/tokens_per_s``, ``perf/max_mem_gb``.
A Tracker made with ``enabled=False`` (ranks other than 0) does nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

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
            write_text_atomic(self.metrics_path, "".join(line + "\n" for line in kept))
        self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge_step)
        self.log_file = open(self.run_dir / "train.log", "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Log ``{tag: value}`` at ``step`` (already Python floats: call .item() before)."""
        if not self.enabled:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")

    def print(self, message: str) -> None:
        """A line for people: stdout and train.log."""
        if not self.enabled:
            return
        tqdm.write(message)
        self.log_file.write(message + "\n")
        self.log_file.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.log_file.close()

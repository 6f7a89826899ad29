"""Progress of a long phase that reads well both at a terminal and in a log file.

At a terminal: a tqdm bar. In a log (nohup, Slurm, CI: stderr is not a terminal) a bar is a
single line of carriage returns that nobody sees until it ends, so instead one plain line every
``every`` seconds: ``encode: 1,216/5,183 texts, 40.5 texts/s, elapsed 30s, ETA 1m38s``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def duration(seconds: float) -> str:
    """42s, 3m05s, 2h03m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress(
    batches: Iterable[T],
    sizes: list[int],
    costs: list[float],
    desc: str,
    unit: str = "texts",
    show: bool = True,
    every: float = 30.0,
) -> Iterator[T]:
    """Yield ``batches`` while reporting progress on stderr.

    sizes: items per batch (what the rate counts); costs: the work per batch (e.g. tokens),
    which the ETA extrapolates from, since batches sorted by length are not equally slow.
    """
    if not show:
        yield from batches
        return
    if sys.stderr.isatty():
        bar = tqdm(total=sum(sizes), desc=desc, unit=unit[:-1] if unit.endswith("s") else unit)
        for batch, size in zip(batches, sizes):
            yield batch
            bar.update(size)
        bar.close()
        return
    total, total_cost = sum(sizes), sum(costs) or 1.0
    start = last = time.perf_counter()
    done = done_cost = 0
    for batch, size, cost in zip(batches, sizes, costs):
        yield batch
        done, done_cost = done + size, done_cost + cost
        now = time.perf_counter()
        if now - last >= every and done < total:
            last, elapsed = now, now - start
            eta = elapsed / done_cost * (total_cost - done_cost) if done_cost else 0.0
            print(
                f"{desc}: {done:,}/{total:,} {unit}, {done / elapsed:.1f} {unit}/s, "
                f"elapsed {duration(elapsed)}, ETA {duration(eta)}",
                file=sys.stderr,
                flush=True,
            )

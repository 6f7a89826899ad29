"""A frozen teacher (``--teacher``): its embeddings of every training text, computed once, cached.

The student learns the teacher's embeddings of the texts it trains on (`mrl.losses.
teacher_distill_loss`). The teacher never runs during training: `teacher_targets` loads it, embeds
every distinct training and ``--distill-data`` text once through `mrl.embcache.cached_embeddings`
(keyed by the teacher's weights, tokenizer, pooling and maximum length, and by the texts; a second
run or a ``--resume`` reads the file back), then lets the model go. A step looks its texts' rows
up by text (`TeacherTargets.__call__`).

    targets = teacher_targets("runs/teacher", texts, cache_folder(None), max_seq_length=128)
    batch_targets = targets(batch_texts)  # (N, D') raw pooled vectors
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from mrl.embcache import cache_path, cached_embeddings, model_key, texts_key
from mrl.model import Encoder


class TeacherTargets:
    """The teacher's raw (un-normalised) embeddings of a fixed set of texts, looked up by text.

    vectors: (U, D') float32 on the CPU, row i for ``texts[i]``; ``source``: the --teacher given;
    ``key``: the teacher's model key (`mrl.embcache.model_key`), recorded so a resume can tell a
    changed teacher; ``seconds``: how long getting the vectors took (reading them back from the
    cache, or computing them), ``from_cache``: which.
    """

    def __init__(
        self, texts: Sequence[str], vectors: Tensor, source: str, key: str, seconds: float = 0.0,
        from_cache: bool = False,
    ):  # fmt: skip
        if len(texts) != vectors.shape[0]:
            raise ValueError(f"{len(texts)} texts for {vectors.shape[0]} teacher vectors")
        self.row = {text: i for i, text in enumerate(texts)}
        self.vectors, self.source, self.key = vectors, source, key
        self.seconds, self.from_cache = seconds, from_cache

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[-1])

    def __len__(self) -> int:
        return len(self.row)

    def __call__(self, texts: Sequence[str], device: torch.device | str = "cpu") -> Tensor:
        """(N, D') teacher vectors of ``texts`` (each one of the texts it was built on)."""
        rows = torch.tensor([self.row[text] for text in texts], dtype=torch.long)
        return self.vectors[rows].to(device, non_blocking=True)


def teacher_targets(
    name: str,
    texts: Sequence[str],
    cache_dir: str | Path | None,
    max_seq_length: int | None = None,
    trust_remote_code: bool = False,
    device: torch.device | str = "cpu",
    check: Callable[[int, str], None] | None = None,
    log=print,
) -> TeacherTargets:
    """Load the teacher ``name`` (hub id, model folder, run folder), call ``check(its dim, its
    model key)`` before any text is embedded (it raises to refuse), embed the distinct ``texts``
    once (or read them from the cache), and free the model.

    The teacher keeps its own pooling; ``max_seq_length`` is the student's, so both see the same
    tokens of each text (capped at the teacher's own limit).
    """
    texts = list(dict.fromkeys(texts))  # distinct, in first-seen order (the cache's data key)
    teacher = Encoder(name, max_seq_length=max_seq_length, trust_remote_code=trust_remote_code)
    teacher = teacher.to(device).eval().requires_grad_(False)
    key = model_key(teacher)
    if check is not None:
        check(teacher.dim, key)
    cached = cache_dir is not None and cache_path(cache_dir, key, texts_key(texts)).is_file()
    start = time.perf_counter()
    # A fixed batch size: the vectors must not depend on a flag a resume may change.
    vectors = cached_embeddings(teacher, texts, cache_dir, batch_size=64, log=log)
    seconds = time.perf_counter() - start
    how = (
        f"read from {cache_dir}"
        if cached
        else f"computed in {seconds:.0f} s" + (f", cached in {cache_dir}" if cache_dir is not None else "")
    )
    log(f"--teacher {name}: its vectors of {len(texts)} distinct texts {how}")
    del teacher  # never on the training graph, and no memory held during training
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return TeacherTargets(texts, vectors.float().contiguous(), name, key, seconds, cached)

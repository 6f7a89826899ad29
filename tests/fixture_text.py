"""Small text and CSV fixtures shared by the end-to-end tests (test_train, test_reliability)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

# Mostly whole words of the tiny vocabulary (short token sequences), plus a few that the tiny
# tokenizer spells out character by character.
WORDS = (
    "the a an cat dog man woman sat on mat is are play plays playing guitar runs run in park "
    "red blue big small house"
).split()


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6)))


def distinct_sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen[sentence(rng)] = None
    return list(seen)


def write_csv(path: Path, header: list[str], rows: list[list], encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path

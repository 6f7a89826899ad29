"""Training data: local CSV/TSV/JSONL readers, column mapping, a tokenising collator, batch samplers.

Every file is a table with a header (JSONL: one object per line). It is mapped to one of the three
shapes the losses train on:

    (text, text, score)              CoSENT on scored pairs         stsb/en-train.csv
    (text, text)                     in-batch negatives on pairs    nli/snli-dev.csv, where label=entailment
    (anchor, positive, negative...)  in-batch plus hard negatives   nli/allnli-triplets.csv

    from torch.utils.data import DataLoader
    from mrl.data import BatchSampler, TokenizingCollator, load_examples

    ex = load_examples("../shared/data/nli/snli-dev.csv", where={"label": "entailment"})
    sampler = BatchSampler(ex, batch_size=64, seed=0, avoid_duplicates=True)
    loader = DataLoader(ex, batch_sampler=sampler, collate_fn=TokenizingCollator(encoder.tokenize))
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for batch in loader:  # batch["features"] holds C*B texts, column-major
            ...

Bad data fails at load time, not mid-run, with a one-line DataError that starts with
"file:line:" (the header is line 1; for JSONL the line of the record).
"""

from __future__ import annotations

import codecs
import csv
import difflib
import errno
import itertools
import json
import math
import os
import re
import stat
import sys
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mrl.hub import offline_error, offline_reason

Row = tuple[int, dict[str, str]]  # (line number in the file, column name -> value)

# Suffix -> field delimiter; None means JSON lines.
_FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None}

# Layouts tried in order when text_columns is None: (required columns, append negative* columns).
# A triplet file may carry several hard negatives: negative, negative_1, negative_2, ...
_LAYOUTS = [
    (("sentence1", "sentence2"), False),
    (("anchor", "positive"), True),
    (("premise", "hypothesis"), False),
    (("query", "positive"), True),
    (("text1", "text2"), False),
]


class DataError(ValueError):
    """Bad input data; the message is one line that starts with ``source:line:`` (or ``source:``)."""


@dataclass
class Examples:
    """C parallel text columns of N rows each, plus an optional score per row."""

    columns: list[list[str]]  # C lists of N texts
    scores: list[float] | None  # N scores, or None for unscored pairs / tuples
    source: str
    column_names: list[str]  # the C names the columns were read from
    lines: list[int] | None = None  # N line numbers in the source (for error messages), if known

    def __post_init__(self):
        lengths = {len(col) for col in self.columns}
        if self.scores is not None:
            lengths.add(len(self.scores))
        if len(lengths) > 1:
            raise ValueError(f"{self.source}: columns and scores differ in length: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    @property
    def n_columns(self) -> int:
        return len(self.columns)

    def __getitem__(self, i: int) -> tuple[tuple[str, ...], float | None]:
        return tuple(col[i] for col in self.columns), None if self.scores is None else self.scores[i]


# ----------------------------------------------------------------------------- reading files


# A physical line longer than this is refused (file:line) before it is held in memory: no text
# of an embedding dataset comes near it, and a hostile or mislabelled file (one huge line, a
# binary blob) must fail fast instead of filling the memory. CSV fields have csv's own limit.
MAX_LINE_BYTES = 4 << 20


def file_kind(path: Path) -> str:
    """What a path that exists but is neither a file nor a folder is, in words."""
    mode = os.stat(path).st_mode
    for test, kind in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def missing_reason(path: Path) -> str:
    """Why an existing-looking ``path`` cannot be read: "no such file", a broken symbolic link, or
    a loop of symbolic links (which ``Path.exists`` also reports as missing)."""
    if not path.is_symlink():
        return "no such file"
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "is a loop of symbolic links (each points back to another); fix the link"
        return f"is a broken symbolic link (to {os.readlink(path)}, which does not exist)"
    return "no such file"


def read_rows(path: str | Path) -> tuple[list[str], list[Row]]:
    """Read a CSV (``.csv``), TSV (``.tsv``) or JSON-lines (``.jsonl``/``.json``) file with a header.

    Returns ``(header, rows)`` where each row is ``(line, {column: value})``. Text must be UTF-8
    (a BOM is allowed). Blank lines are skipped. A JSONL header is the union of the records' keys,
    and a record may lack some of them. The file is streamed line by line; a line longer than
    `MAX_LINE_BYTES` is an error, so memory beyond the rows kept never grows with the file.
    """
    path = Path(path)
    source = str(path)
    if path.is_dir():
        raise DataError(f"{source}: is a folder, not a data file (.csv, .tsv, .jsonl or .json)")
    if not path.exists():
        raise DataError(f"{source}: {missing_reason(path)}")
    if not path.is_file():  # open() of a FIFO blocks until a writer comes: it would hang forever
        raise DataError(f"{source}: is {file_kind(path)}, not a regular file; write the data to a file first")
    if path.suffix.lower() not in _FORMATS:
        raise DataError(f"{source}: unknown file type {path.suffix!r}; expected .csv, .tsv, .jsonl or .json")
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below, after the generator is consumed)
    except FileNotFoundError:
        raise DataError(f"{source}: no such file") from None
    except OSError as e:
        raise DataError(f"{source}: cannot read ({e.strerror})") from None
    with f:
        lines = text_lines(f, source)
        delimiter = _FORMATS[path.suffix.lower()]
        if delimiter is None:
            header, rows = _read_jsonl(lines, source)
        else:
            header, rows = _read_delimited(lines, source, delimiter)
    return header, rows


def text_lines(f, source: str):
    """The decoded lines of binary file ``f`` (line ends kept), checked one at a time.

    Splits on "\n" and, as universal newlines do, on a lone "\r"; line numbers count both.
    A UTF-8 error names the line and the byte offset in the file (BOM included).
    """
    offset = 0
    for number in itertools.count(1):
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES:
            raise DataError(
                f"{source}:{number}: line longer than {MAX_LINE_BYTES >> 20} MiB; no text of an embedding "
                "dataset is that long (is this really a text file of the type its name says?)"
            )
        body = raw[len(codecs.BOM_UTF8) :] if offset == 0 and raw.startswith(codecs.BOM_UTF8) else raw
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            at = offset + len(raw) - len(body) + e.start
            where = f"{source}:{number}: not UTF-8 (byte 0x{body[e.start]:02x} at offset {at})"
            raise DataError(f"{where}; re-save the file as UTF-8") from None
        offset += len(raw)
        yield text


def _universal_lines(lines):
    """Split further on a lone "\r" (old Mac line ends), keeping the ends, as newline="" does."""
    for line in lines:
        if "\r" in line.rstrip("\r\n"):
            yield from re.split(r"(?<=\r)(?!\n)", line)
        else:
            yield line


def _read_delimited(lines, source: str, delimiter: str) -> tuple[list[str], list[Row]]:
    # TSV files in the wild (STS-B, BEIR qrels) hold literal unbalanced quotes, so quotes are only
    # special in CSV. Lines keep their ends so csv sees quoted newlines and line_num stays physical.
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader(_universal_lines(lines), delimiter=delimiter, quoting=quoting)
    header: list[str] | None = None
    rows: list[Row] = []
    end = 0  # last physical line consumed; a record starts on the next one
    while True:
        start = end + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise DataError(f"{source}:{reader.line_num}: {e}") from None
        end = reader.line_num
        if not any(f.strip() for f in fields):
            continue
        if header is None:
            header = _check_header([f.strip() for f in fields], source, start)
        elif len(fields) != len(header):
            n, m = len(fields), len(header)
            if n < m:
                hint = "no value for " + ", ".join(repr(c) for c in header[n:])
            else:
                hint = f"{n - m} extra after column {header[-1]!r} (an unquoted delimiter inside a text?)"
            columns = ", ".join(header)
            raise DataError(f"{source}:{start}: {n} fields but the header has {m} ({columns}); {hint}")
        else:
            rows.append((start, dict(zip(header, fields))))
    if header is None:
        raise DataError(f"{source}: empty file (expected a header line)")
    if not rows:
        raise DataError(f"{source}: no rows after the header")
    return header, rows


def _check_header(names: list[str], source: str, line: int) -> list[str]:
    for i, name in enumerate(names):
        if not name:
            raise DataError(f"{source}:{line}: header field {i + 1} has no name")
        if name in names[:i]:
            raise DataError(f"{source}:{line}: column {name!r} appears twice in the header")
    return names


class RepeatedKey(ValueError):
    """A JSON object with a key given twice (``json`` keeps the last silently)."""


def no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for ``json.loads``: ``{"text": "a", "text": "b"}`` would keep "b" and
    drop "a" without a word; raise `RepeatedKey` instead."""
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise RepeatedKey(key)
        record[key] = value
    return record


def check_scored_set(examples: Examples, flag: str) -> None:
    """An evaluation set of scored pairs must be able to give a correlation: at least 3 pairs
    (2 points correlate +-1 whatever the model) and gold scores that are not all equal (the
    correlation is then nan in every cell). DataError naming ``flag`` and the file."""
    scores = examples.scores or []
    if len(scores) < 3:
        raise DataError(
            f"{flag} {examples.source}: {len(scores)} scored pair(s); a correlation needs at least 3 "
            "(with 2 it is +-1 whatever the model)"
        )
    if len(set(scores)) == 1:
        raise DataError(
            f"{flag} {examples.source}: every gold score is {scores[0]:g}; a correlation with constant "
            "scores is nan (check --score-column)"
        )


def _read_jsonl(lines, source: str) -> tuple[list[str], list[Row]]:
    header: dict[str, None] = {}  # an ordered set: keys in order of first appearance
    rows: list[Row] = []
    # Lines end at "\n" only: a JSON string cannot hold a raw newline, and a trailing "\r" is whitespace.
    for line, chunk in enumerate(lines, start=1):
        if not chunk.strip():
            continue
        try:
            record = json.loads(chunk, object_pairs_hook=no_repeated_keys)
            if not isinstance(record, dict):
                kind = type(record).__name__
                raise DataError(f"{source}:{line}: expected a JSON object per line, got {kind}")
            rows.append((line, {key: _as_text(value) for key, value in record.items()}))
        except json.JSONDecodeError as e:
            message = f"{source}:{line}: not valid JSON ({e.msg}); expected one object per line"
            raise DataError(message) from None
        except RecursionError:  # e.g. [[[[...]]]] thousands deep: hostile, not data
            raise DataError(f"{source}:{line}: JSON nested too deeply") from None
        except RepeatedKey as e:
            raise DataError(f"{source}:{line}: key {e.args[0]!r} appears twice in one record") from None
        header.update(dict.fromkeys(record))
    if not rows:
        raise DataError(f"{source}: empty file (expected one JSON object per line)")
    return list(header), rows


def _as_text(value) -> str:
    """A JSON / hub value as the string a CSV cell would hold (None -> '', so it reads as empty)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


# ----------------------------------------------------------------------------- mapping to examples


def load_examples(
    path: str | Path,
    text_columns: Sequence[str] | None = None,
    score_column: str | None = None,
    where: dict[str, str] | None = None,
    score_range: tuple[float, float] | None = None,
    *,
    read_scores: bool = True,
) -> Examples:
    """Read a local file and map it to Examples.

    text_columns: names of the text columns, in order. None picks the first known layout in the
        header: (sentence1, sentence2), (anchor, positive, negative...), (premise, hypothesis),
        (query, positive, negative...), (text1, text2); "negative..." is every column whose name
        starts with "negative", in file order.
    score_column: the float score per row. None uses a column named "score" if there is one.
    where: keep only rows whose columns equal these values (case-insensitive), e.g.
        {"label": "entailment"}. Rows are filtered before they are checked.
    score_range: (low, high): a score outside it is an error (e.g. a 0-5 file where 0-1 is meant).
    read_scores: False reads no score at all, not even a "score" column (losses that need none:
        its values are then neither parsed nor checked, and ``scores`` is None).
    """
    header, rows = read_rows(path)
    return _to_examples(header, rows, str(path), text_columns, score_column, where, score_range, read_scores)


def load_hub_examples(
    name: str,
    subset: str | None = None,
    split: str = "train",
    text_columns: Sequence[str] | None = None,
    score_column: str | None = None,
    where: dict[str, str] | None = None,
    score_range: tuple[float, float] | None = None,
    *,
    read_scores: bool = True,
) -> Examples:
    """Like load_examples, for a Hugging Face hub dataset (e.g. "sentence-transformers/stsb").

    Needs the optional ``datasets`` package. Line numbers in errors are 0-based dataset indices.
    """
    offline = offline_reason()  # the hub out of reach: say so now, not after retries (mrl/hub.py)
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # read by `datasets` on import: the local cache only
    try:
        import datasets
    except ImportError:
        # load_source adds "no such local file": the user may have meant a file that is not there.
        message = "hub datasets need the optional `datasets` package: pip install -e '.[hub]'"
        if offline:
            message += f", and the Hugging Face hub cannot be used ({offline})"
        raise ImportError(message) from None
    try:
        ds = datasets.load_dataset(name, subset, split=split)
    except Exception:
        if offline:  # whatever `datasets` raises offline (ConnectionError, FileNotFoundError...)
            raise DataError(offline_error(name, "data file", offline)) from None
        raise
    source = f"{name}{'/' + subset if subset else ''}[{split}]"
    rows = [(i, {key: _as_text(value) for key, value in record.items()}) for i, record in enumerate(ds)]
    if not rows:
        raise DataError(f"{source}: no rows")
    return _to_examples(
        list(ds.column_names), rows, source, text_columns, score_column, where, score_range, read_scores
    )


def parse_where(spec: str) -> dict[str, str]:
    """Parse a CLI filter: "label=entailment" or "label=entailment,lang=en" -> dict."""
    where: dict[str, str] = {}
    for part in spec.split(","):
        column, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not column or not value or column in where:
            raise ValueError(f"bad where spec {spec!r}: expected column=value[,column=value...]")
        where[column] = value
    return where


def _to_examples(
    header, rows, source, text_columns, score_column, where, score_range=None, read_scores=True
) -> Examples:
    if isinstance(text_columns, str):
        text_columns = [text_columns]
    names = _detect_layout(header, source) if text_columns is None else list(text_columns)
    if not names:
        raise ValueError(f"{source}: text_columns is empty")
    if not read_scores:
        score_column = None
    elif score_column is None and "score" in header:
        score_column = "score"
    for column in names:
        _require_column(column, header, source, "--text-columns")
    if score_column:
        _require_column(score_column, header, source, "--score-column")
    for column in where or {}:
        _require_column(column, header, source, "--where")
    if where:
        rows = _filter(rows, where, source)

    columns: list[list[str]] = [[] for _ in names]
    scores: list[float] | None = [] if score_column else None
    for line, row in rows:
        for name, column in zip(names, columns):
            text = row.get(name)
            if text is None:  # only JSONL / hub records can lack a key
                raise DataError(f"{source}:{line}: no field {name!r} in this record")
            check_text(text, source, line, name)
            column.append(text)
        if scores is not None:
            score = _parse_score(row.get(score_column, ""), source, line, score_column)
            if score_range is not None and not score_range[0] <= score <= score_range[1]:
                raise DataError(
                    f"{source}:{line}: column {score_column!r}: {score:g} is outside the expected range "
                    f"[{score_range[0]:g}, {score_range[1]:g}] (another scale? set --score-range LOW HIGH)"
                )
            scores.append(score)
    return Examples(columns, scores, source, names, [line for line, _ in rows])


# Characters that render as nothing although Unicode does not file them as spaces or format
# characters: Hangul fillers, the braille blank, variation selectors.
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800") | frozenset(
    chr(c) for r in (range(0xFE00, 0xFE10), range(0xE0100, 0xE01F0)) for c in r
)


def is_blank(text: str) -> bool:
    """True when ``text`` shows nothing: only whitespace, control characters (Cc), format
    characters such as zero-width spaces and joiners, bidi marks, soft hyphens, BOMs (Cf), or
    other invisible fillers."""
    return all(ch.isspace() or ch in _INVISIBLE or unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


def check_text(text: str, source: str, line: int, column: str) -> None:
    """Raise a DataError naming file:line and column for a text that is empty in any real sense
    (it would still encode, to the special tokens only, and silently poison the loss) or that
    holds a lone surrogate (a JSON escape such as "\\ud800"; no tokenizer can encode it)."""
    if is_blank(text):
        shown = f" (only invisible characters: {text[:12]!r})" if text.strip() else ""
        raise DataError(f"{source}:{line}: column {column!r} is empty{shown}")
    for i, ch in enumerate(text):
        if unicodedata.category(ch) == "Cs":
            raise DataError(
                f"{source}:{line}: column {column!r}: a lone surrogate {ch!r} at character {i + 1} "
                "is not valid Unicode"
            )


def check_tokenized(
    examples: Examples, encoder, token_ids: dict[str, list[int]] | None = None, warn=None
) -> None:
    """`check_token_ids` with ``encoder``'s tokenizer; ``token_ids`` ({text: ids}) if already
    computed, else every distinct text is tokenised once here."""
    if token_ids is None:
        texts = list(dict.fromkeys(text for column in examples.columns for text in column))
        token_ids = dict(zip(texts, encoder.token_ids(texts)))
    check_token_ids(examples, token_ids.__getitem__, encoder.tokenizer, warn)


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def check_token_ids(
    examples: Examples, token_ids: Callable[[str], Sequence[int]], tokenizer, warn=None
) -> None:
    """Raise a DataError (file:line, column) for the first text whose token ids are all special
    tokens of ``tokenizer`` ([CLS], [SEP], [PAD], ...): nothing of it is left for the model, e.g.
    only characters the tokenizer drops (accents, controls).

    A text of nothing but unknown tokens ([UNK]: an emoji, a script the vocabulary lacks) is kept
    as data: it may mean something to a model whose vocabulary has it, and one such text in a file
    is normal. But the model sees every such text as much the same one, so they are counted and
    ``warn`` gets one line (default: stderr) naming the file, the count and the first line. A file
    of nothing else is a tokenizer that cannot read it (or one without a vocabulary): an error.
    """
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    unknown = []  # (line, column) of each text of [UNK] (and special tokens) only
    total = 0
    for name, column in zip(examples.column_names, examples.columns):
        for i, text in enumerate(column):
            ids = token_ids(text)
            line = examples.lines[i] if examples.lines else i + 1
            if all(t in special for t in ids):
                raise DataError(
                    f"{examples.source}:{line}: column {name!r} is empty after tokenisation "
                    f"(only special tokens left: {text[:40]!r})"
                )
            total += 1
            if tokenizer.unk_token_id is not None and all(
                t in special or t == tokenizer.unk_token_id for t in ids
            ):
                unknown.append((line, name, text))
    if not unknown:
        return
    if len(unknown) == total:
        raise DataError(
            f"{examples.source}: every text is empty after tokenisation (nothing but unknown tokens "
            f"{tokenizer.unk_token!s}): this model's tokenizer does not cover the data"
        )
    line, name, text = min(unknown, key=lambda item: item[0])  # the first in the file
    (warn or _warn)(
        f"warning: {examples.source}: {len(unknown)} of {total} texts are nothing but unknown tokens "
        f"({tokenizer.unk_token!s}) to this model's tokenizer (first: line {line}, column {name!r}: "
        f"{text[:40]!r}); they are kept, but the model sees them all as much the same text"
    )


def _detect_layout(header: list[str], source: str) -> list[str]:
    for required, with_negatives in _LAYOUTS:
        if all(column in header for column in required):
            negatives = [c for c in header if c.startswith("negative")] if with_negatives else []
            return [*required, *negatives]
    known = " | ".join(",".join(cols) + (",negative..." if neg else "") for cols, neg in _LAYOUTS)
    raise DataError(
        f"{source}:1: no known column layout in the header ({', '.join(header)}); "
        f"known: {known}{_layout_hint(header)}; name them with --text-columns (text_columns in a config file)"
    )


def _layout_hint(header: list[str]) -> str:
    """A did-you-mean for a header that is a known layout but for the case of its names
    (Sentence1, Sentence2) or for its delimiter (tabs in a .csv: one column holding all names)."""
    for required, _ in _LAYOUTS:
        lowered = {c.lower(): c for c in header}
        if all(r in lowered for r in required):
            says = ", ".join(lowered[r] for r in required)
            return f"; did you mean {', '.join(required)}? (the header says {says})"
    if len(header) == 1:
        for delimiter, name, suffix in (
            ("\t", "tabs", ".tsv"),
            (";", "semicolons", None),
            ("|", "bars", None),
        ):
            if delimiter in header[0]:
                fix = f"rename it to {suffix}" if suffix else "re-save it with commas"
                return f"; its one column holds {name}: a file delimited by {name}? ({fix})"
    return ""


def _require_column(name: str, header: list[str], source: str, flag: str) -> None:
    """A DataError naming the missing column, the file's columns, a close match and the flag that
    names the column (e.g. a score column called 'label': ``--score-column label``)."""
    if name in header:
        return
    close = [c for c in header if c.lower() == name.lower()] or difflib.get_close_matches(name, header, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise DataError(f"{source}:1: no column {name!r}; the file has {', '.join(header)}{hint} (set {flag})")


def _where_hint(rows: list[Row], wanted: dict[str, str]) -> str:
    """ "; did you mean --where label=1.0?" when a wanted value equals a held one as a number
    (the file writes 1.0, the flag says 1), else ""."""

    def number(text: str) -> float | None:
        try:
            return float(text)
        except ValueError:
            return None

    fixed = {}
    for column, value in wanted.items():
        held = sorted({row.get(column, "").strip() for _, row in rows})
        same = [v for v in held if number(value) is not None and number(v) == number(value)]
        fixed[column] = same[0] if same else None
    if not any(fixed.values()):
        return ""
    spec = ",".join(f"{c}={fixed[c] or v}" for c, v in wanted.items())
    return f"; did you mean --where {spec}?"


def _filter(rows: list[Row], where: dict[str, str], source: str) -> list[Row]:
    wanted = {column: str(value).strip().lower() for column, value in where.items()}
    kept = [
        (line, row)
        for line, row in rows
        if all(row.get(column, "").strip().lower() == value for column, value in wanted.items())
    ]
    if not kept:
        # Show what the column does hold: usually a typo or a different label scheme (0/1/2).
        seen = []
        for column in wanted:
            values = sorted({row.get(column, "").strip() for _, row in rows})
            more = ", ..." if len(values) > 8 else ""
            seen.append(f"{column!r} has {', '.join(values[:8])}{more}")
        spec = ",".join(f"{c}={v}" for c, v in where.items())
        hint = _where_hint(rows, wanted)
        raise DataError(
            f"{source}: --where {spec} keeps none of the {len(rows)} rows ({'; '.join(seen)}){hint}"
        )
    return kept


def _parse_score(value: str, source: str, line: int, column: str) -> float:
    try:
        score = float(value)
    except ValueError:
        raise DataError(f"{source}:{line}: column {column!r}: {value!r} is not a number") from None
    if not math.isfinite(score):
        raise DataError(f"{source}:{line}: column {column!r}: {value!r} is not a finite number")
    return score


# ----------------------------------------------------------------------------- batching


class TokenizingCollator:
    """Turn a list of ``ex[i]`` items into one tokenised batch.

    ``tokenize(list[str]) -> dict[str, Tensor]`` is called once per batch, on the texts in
    column-major order (all of column 0, then all of column 1, ...), so one encoder pass gives
    (C*B, D) that views as the (C, B, D) columns tensor the losses take.
    """

    def __init__(self, tokenize: Callable[[list[str]], dict[str, torch.Tensor]]):
        self.tokenize = tokenize

    def __call__(self, items: list[tuple[tuple[str, ...], float | None]]) -> dict:
        if not items:
            raise ValueError("empty batch")
        n_columns = len(items[0][0])
        if any(len(texts) != n_columns for texts, _ in items):
            raise ValueError(f"items in a batch differ in their number of columns (first has {n_columns})")
        flat = [texts[c] for c in range(n_columns) for texts, _ in items]  # (C*B,) column-major
        scores = [score for _, score in items]
        if all(score is None for score in scores):
            labels = None
        elif any(score is None for score in scores):
            raise ValueError("some items in the batch have a score and some do not")
        else:
            labels = torch.tensor(scores, dtype=torch.float32)  # (B,)
        return {
            "features": self.tokenize(flat),
            "n_columns": n_columns,
            "labels": labels,
            "texts": [texts[0] for texts, _ in items],
            "column_texts": flat,  # (C*B,) in the order of the encoder's rows (a teacher's lookup)
        }


class BatchSizeError(ValueError):
    """A batch size the data cannot fill. ``str()`` speaks of the Python arguments (batch_size,
    drop_last, avoid_duplicates); `for_flag` says the same in the command line's terms."""

    def __init__(self, message: str, batch_size: int, n: int, source: str, duplicates: bool):
        super().__init__(message)
        self.batch_size, self.n, self.source, self.duplicates = batch_size, n, source, duplicates

    def for_flag(self, flag: str, value: int) -> str:
        """One line naming ``flag`` (as the user gave it: ``value``; the sampler's batch may
        differ, e.g. ``value`` x the number of processes) and the real cause."""
        per = "" if value == self.batch_size else f" (a batch of {self.batch_size})"
        if self.duplicates:
            return (
                f"{flag} {value}{per}: {self.source} has too few distinct texts for one batch without a "
                "repeated text (with in-batch negatives a repeated text is a false negative); "
                f"lower {flag} or remove the repeated rows"
            )
        return (
            f"{flag} {value}{per}: larger than the {self.n} rows of {self.source} (a batch is never "
            f"partial); lower {flag}"
        )


class BatchSampler:
    """Shuffled batches of indices, deterministic in (seed, epoch); usable as a DataLoader batch_sampler.

    avoid_duplicates: no two examples in a batch share a text in any column. With in-batch
    negatives a repeated text is a false negative (AllNLI repeats each premise several times).
    Batches are filled greedily in shuffled order; an example that clashes with the batch being
    built is deferred to a later one, so nothing is lost but the tail that cannot fill a batch
    without a clash (dropped with drop_last, else emitted as smaller batches).

    lengths: one length per example (e.g. its longest column in tokens) to group batches by
    length: the shuffled order is cut into "mega-batches" of ``group_size`` batches, each sorted
    by length and cut into batches, and the order of all batches is shuffled again. Batches then
    hold texts of similar length (less padding: on STS-B train, padded tokens fall from 2.4x to
    1.13x the real ones) while which examples meet, and when, stays random.
    """

    def __init__(
        self,
        examples,
        batch_size: int,
        seed: int = 0,
        drop_last: bool = True,
        avoid_duplicates: bool = False,
        lengths: Sequence[int] | None = None,
        group_size: int = 50,
        source: str | None = None,
    ):
        self.n = len(examples)
        self.source = source or getattr(examples, "source", "the data")  # for messages
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self.n == 0:
            raise ValueError(f"{self.source}: no examples to batch")
        if drop_last and batch_size > self.n:
            raise BatchSizeError(
                f"batch_size {batch_size} is larger than the {self.n} examples of {self.source}: "
                "drop_last would leave no batches (lower batch_size or set drop_last=False)",
                batch_size, self.n, self.source, duplicates=False,
            )  # fmt: skip
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.avoid_duplicates = avoid_duplicates
        if lengths is not None and len(lengths) != self.n:
            raise ValueError(f"{len(lengths)} lengths for {self.n} examples")
        self.lengths = lengths
        self.group_size = group_size
        self.epoch = 0
        # The texts of each example, only needed for the clash test.
        self._texts = [frozenset(examples[i][0]) for i in range(self.n)] if avoid_duplicates else None

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch that ``iter()`` and ``len()`` use (call before each epoch)."""
        self.epoch = epoch

    def batches(self, epoch: int) -> list[list[int]]:
        # One 32-bit seed per (seed, epoch): the CPU generator keeps only the low 32 bits, and
        # seed + epoch would make seed 1 / epoch 0 replay seed 0 / epoch 1. An odd multiplier is a
        # bijection mod 2**32, so seeds 0..999 stay apart for the first 1.9M epochs.
        generator = torch.Generator().manual_seed((self.seed * 0x9E3779B1 + epoch) % 2**32)
        order = torch.randperm(self.n, generator=generator).tolist()
        if self.lengths is not None:
            span = self.batch_size * self.group_size
            order = [
                i
                for start in range(0, self.n, span)
                for i in sorted(order[start : start + span], key=self.lengths.__getitem__, reverse=True)
            ]
        if not self.avoid_duplicates:
            batches = [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
            if self.drop_last and len(batches[-1]) < self.batch_size:
                batches.pop()
            return self._shuffle_if_grouped(batches, generator)

        remaining = dict.fromkeys(order)  # an ordered set; deferred examples stay at the front
        batches = []
        while remaining:
            batch, seen = [], set()
            for i in remaining:
                if seen.isdisjoint(self._texts[i]):
                    batch.append(i)
                    seen.update(self._texts[i])
                    if len(batch) == self.batch_size:
                        break
            for i in batch:
                del remaining[i]
            if len(batch) < self.batch_size and self.drop_last:
                break  # a greedy pass over everything left could not fill a batch
            batches.append(batch)
        if not batches:
            raise BatchSizeError(
                f"{self.source}: no batch of {self.batch_size} examples without a repeated text; "
                "lower batch_size or set avoid_duplicates=False",
                self.batch_size, self.n, self.source, duplicates=True,
            )  # fmt: skip
        return self._shuffle_if_grouped(batches, generator)

    def _shuffle_if_grouped(self, batches: list[list[int]], generator: torch.Generator) -> list[list[int]]:
        """Length-sorted batches come out long-to-short per mega-batch: shuffle their order."""
        if self.lengths is None:
            return batches
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def __iter__(self):
        return iter(self.batches(self.epoch))

    def __len__(self) -> int:
        """The number of batches of the current epoch, exactly."""
        return self.num_batches(self.epoch)

    def num_batches(self, epoch: int) -> int:
        """How many batches ``epoch`` has. Without avoid_duplicates it is the same every epoch;
        with it, clashes decide how many fill up, so the epoch is built (once) and counted."""
        if self.avoid_duplicates:
            return len(self.batches(epoch))
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)


# ----------------------------------------------------------------------------- one spec for both


def load_source(
    spec: str,
    split: str = "train",
    subset: str | None = None,
    text_columns: Sequence[str] | None = None,
    score_column: str | None = None,
    where: dict[str, str] | None = None,
    score_range: tuple[float, float] | None = None,
    *,
    read_scores: bool = True,
) -> Examples:
    """A local file or a hub dataset, as named on the command line.

    spec: a path with a known suffix (.csv/.tsv/.jsonl/.json) or an existing file is read from
    disk; anything else is a hub dataset id, optionally ``ID@split`` (overrides ``split``),
    e.g. ``sentence-transformers/stsb@validation``.
    """
    if is_local(spec):
        return load_examples(spec, text_columns, score_column, where, score_range, read_scores=read_scores)
    name, _, split_override = spec.partition("@")
    try:
        return load_hub_examples(
            name,
            subset,
            split_override or split,
            text_columns,
            score_column,
            where,
            score_range,
            read_scores=read_scores,
        )
    except ImportError as error:
        # Say both readings: the user may have meant a file that is not there.
        raise DataError(f"{spec}: no such local file; as a hub dataset id, {error}") from None


# Suffixes of files that are certainly not hub dataset ids (they are refused by read_rows with
# the list of the types it reads, instead of sending a mistyped path to the hub).
_FILE_SUFFIXES = {".txt", ".parquet", ".arrow", ".gz", ".bz2", ".xz", ".zip", ".tar", ".xlsx", ".xls", ".npy"}


def is_local(spec: str) -> bool:
    """True when ``spec`` names a local path, not a hub dataset id: it exists (file or folder),
    has a data-file suffix, or is path-like (absolute, ./ or ../ or ~, more than one "/", or its
    parent folder exists here). A folder or a missing path is thus never sent to the hub."""
    path = Path(spec)
    if path.suffix.lower() in _FORMATS or path.suffix.lower() in _FILE_SUFFIXES or path.exists():
        return True
    name = spec.partition("@")[0]
    parent = Path(name).parent
    return (
        name.startswith(("/", ".", "~"))
        or name.endswith("/")
        or name.count("/") > 1
        or (parent != Path(".") and parent.is_dir())
    )


def source_name(spec: str) -> str:
    """A short name for logs and TensorBoard tags: the file stem, or ``dataset-split`` for hub ids."""
    if is_local(spec):
        return Path(spec).stem
    name, _, split = spec.partition("@")
    return name.rsplit("/", 1)[-1] + (f"-{split}" if split else "")


# ----------------------------------------------------------------------------- distillation text


def evaluation_file_reason(path: str | Path) -> str | None:
    """Why ``path`` holds text we evaluate on (so must never be distilled on), or None.

    STS-B dev and test (``stsb/*dev*``, ``stsb/*test*``), anything under a ``sick`` folder (it is how
    we judge generalisation), and BEIR queries (``queries.jsonl``, e.g. SciFact's).
    """
    path = Path(path).resolve()
    parts = [part.lower() for part in path.parts]
    name = path.name.lower()
    if "stsb" in parts[:-1] and ("dev" in name or "test" in name):
        return "STS-B dev/test is evaluation data"
    if "sick" in parts[:-1]:
        return "SICK is held out to judge generalisation"
    if name.startswith("queries") and name.endswith((".jsonl", ".json")):
        return "BEIR queries are evaluation data"
    return None


def file_texts(spec: str | Path) -> list[str]:
    """Every non-empty text of a file, in file order: the columns of its known layout (e.g.
    premise, hypothesis; anchor, positive, negative...), else ``title`` and ``text`` (a BEIR
    corpus or queries file)."""
    header, rows = read_rows(spec)
    try:
        names = _detect_layout(header, str(spec))
    except DataError:
        names = [c for c in ("title", "text") if c in header]
        if "text" not in names:
            raise DataError(
                f"{spec}:1: no text columns found in the header ({', '.join(header)}); expected a "
                "known pair/triplet layout or a 'text' column"
            ) from None
    # Texts of only invisible characters are empty too (see is_blank): dropped like empty ones.
    return [text for _, row in rows for name in names if not is_blank(text := (row.get(name) or "").strip())]


def load_distill_texts(
    specs: Sequence[str], exclude: Sequence[str] = (), exclude_texts: Iterable[str] = ()
) -> tuple[list[str], int]:
    """The distinct texts of the files ``specs`` (see `file_texts`), in file order, for
    distillation-only batches, and how many distinct texts were dropped by ``exclude``.

    A file of evaluation text (`evaluation_file_reason`) is refused. Any text found in the files
    ``exclude`` (STS-B dev/test, SICK, BEIR queries: whatever the run will be judged on) or in
    ``exclude_texts`` (the run's dev sets) is dropped: NLI and MSRP share hundreds of sentences
    with STS-B and SICK, so refusing files is not enough.
    """
    excluded = {text for spec in exclude for text in file_texts(spec)} | {t.strip() for t in exclude_texts}
    texts: dict[str, None] = {}
    for spec in specs:
        reason = evaluation_file_reason(spec)
        if reason:
            raise DataError(f"{spec}: refusing to distil on it ({reason})")
        texts.update(dict.fromkeys(file_texts(spec)))
    kept = [text for text in texts if text not in excluded]
    if not kept:
        raise DataError(f"--distill-data {' '.join(map(str, specs))}: no texts left to distil on")
    return kept, len(texts) - len(kept)

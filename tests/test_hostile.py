"""Hostile input (issue 28): what cannot be what it claims is refused in one line, results are
never lost, degenerate data is never trained on in silence. Table-driven, as tests/test_faults.py:
each case states its input, the exit code, the one line, and that nothing was created or changed.

 1. a model folder that cannot read text (no tokenizer files, a truncated tokenizer.json, a
    vocabulary of special tokens only), and data its tokenizer reads as nothing but [UNK]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # train.py and eval.py live in the repo root
import eval as eval_script  # noqa: E402
import train  # noqa: E402
from tests.fixture_text import write_csv  # noqa: E402
from tests.test_faults import HEADER, pair_rows, refused, run_args  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    return {
        "train": write_csv(folder / "train.csv", HEADER, pair_rows(32, seed=1)),
        "test": write_csv(folder / "test.csv", HEADER, pair_rows(12, seed=3)),
    }


@pytest.fixture(scope="module")
def finished(tiny_model_dir, files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "finished"
    train.main(run_args(tiny_model_dir, files["train"], out))
    return out


# ============================================================================================
# 1. A model folder that cannot be what it claims
# ============================================================================================


def _broken_model(source: Path, dest: Path, case: str) -> Path:
    shutil.copytree(source, dest)
    if case == "no-tokenizer-files":  # config.json + weights only
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (dest / name).unlink(missing_ok=True)
    elif case == "truncated-tokenizer-json":
        text = (dest / "tokenizer.json").read_bytes()
        (dest / "tokenizer.json").write_bytes(text[: len(text) // 2])
    elif case == "special-tokens-only-vocab":
        (dest / "tokenizer.json").unlink()
        (dest / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", encoding="utf-8")
    return dest


MODEL_CASES = [
    # (case, texts the one line must hold besides the folder)
    ("no-tokenizer-files", ["has no tokenizer files", "tokenizer.json", "vocab.txt", "[UNK]"]),
    ("truncated-tokenizer-json", ["cannot read its tokenizer files", "tokenizer.json", "truncated"]),
    ("special-tokens-only-vocab", ["no vocabulary beyond its 5 special tokens"]),
]


@pytest.mark.parametrize("script", ["train", "eval"])
@pytest.mark.parametrize("case, contains", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_a_model_folder_that_cannot_read_text_is_refused(
    tiny_model_dir, files, tmp_path, capsys, case, contains, script
):
    model = _broken_model(tiny_model_dir, tmp_path / "model", case)
    if script == "train":
        call = lambda: train.main(run_args(model, files["train"], tmp_path / "out"))  # noqa: E731
    else:
        call = lambda: eval_script.main(["--model", str(model), "--sts", str(files["test"])])  # noqa: E731
    line = refused(call, capsys, tmp_path, 2, [str(model), *contains])
    assert line.count("\n") == 0


UNKNOWN_TEXTS = [
    # (case, the texts of every row; all of them [UNK] to the tiny vocabulary)
    ("emoji", ["😀 😀", "🎸"]),
    ("chinese", ["猫咪在玩耍", "狗在跑"]),
]


@pytest.mark.parametrize("case, texts", UNKNOWN_TEXTS, ids=[c[0] for c in UNKNOWN_TEXTS])
def test_a_file_its_tokenizer_reads_as_nothing_but_unk_is_refused(
    tiny_model_dir, tmp_path, capsys, case, texts
):
    rows = [[f"{texts[0]} {'😀' * (i % 3)}", texts[1] * (1 + i % 4), f"{i / 16:.3f}"] for i in range(16)]
    path = write_csv(tmp_path / "train.csv", HEADER, rows)
    argv = run_args(tiny_model_dir, path, tmp_path / "out")
    refused(lambda: train.main(argv), capsys, tmp_path, 2, [str(path), "nothing but unknown tokens", "[UNK]"])
    refused(
        lambda: eval_script.main(["--model", str(tiny_model_dir), "--sts", str(path)]),
        capsys, tmp_path, 2, [str(path), "nothing but unknown tokens"],
    )  # fmt: skip


def test_one_unknown_text_among_others_is_still_data(tiny_model_dir, files, tmp_path):
    # The control: an emoji or Chinese text in an English file is content, as before.
    rows = pair_rows(16, seed=4)
    rows[3][0], rows[5][1] = "😀", "猫咪在玩耍"
    path = write_csv(tmp_path / "train.csv", HEADER, rows)
    train.main(run_args(tiny_model_dir, path, tmp_path / "out"))
    assert (tmp_path / "out" / "model" / "config.json").is_file()

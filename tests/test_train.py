"""End-to-end tests of train.py and eval.py on a tiny random BERT and tiny CSV files.

Each run is a handful of optimizer steps on CPU. The run directory is checked against what the
docs promise (config.json, run.json, train.log, metrics.jsonl, tb/, checkpoints/, model/), a
resumed run against an uninterrupted one, and bad input against one-line errors that write nothing.
The test marked ``integration`` trains the real all-MiniLM-L6-v2 on STS-B for 60 steps.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train.py / eval.py live in the repo root
import eval as eval_script  # noqa: E402
import train  # noqa: E402
from mrl.model import Encoder  # noqa: E402
from tests.fixture_text import WORDS, distinct_sentences, sentence, write_csv  # noqa: E402,F401


def scored_pairs(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    texts = distinct_sentences(2 * n, seed)
    rows = [[texts[2 * i], texts[2 * i + 1], round(rng.uniform(0, 1), 3)] for i in range(n)]
    return write_csv(path, ["sentence1", "sentence2", "score"], rows)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model gains nothing from more threads, and a single one keeps these tests fast
    when other processes share the CPU (idle OpenMP threads spin-wait)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    texts = distinct_sentences(80, seed=3)  # no text twice: in-batch negatives stay negatives
    return {
        "train": scored_pairs(folder / "train.csv", 64, seed=1),
        "dev": scored_pairs(folder / "sts-dev.csv", 24, seed=2),
        "pairs": write_csv(
            folder / "pairs.csv", ["anchor", "positive"], [texts[i : i + 2] for i in range(0, 80, 2)]
        ),
    }


def base_args(model: Path, data: dict[str, Path]) -> list[str]:
    return [
        "--model", str(model),
        "--train-data", str(data["train"]),
        "--eval-data", str(data["dev"]),
        "--max-steps", "6",
        "--batch-size", "8",
        "--dims", "32", "16", "8",
        "--eval-every", "3",
        "--log-every", "2",
        "--save-every", "3",
    ]  # fmt: skip


def mnrl_args(model: Path, data: dict[str, Path]) -> list[str]:
    # 40 pairs / batch 8 = 5 batches an epoch: step 6 starts epoch 1 and the step-5 checkpoint
    # sits exactly at the epoch boundary. Two of three dims and one earlier layer are sampled
    # every step, so the resumed run must also restore the dim/layer sampling RNG.
    return [
        "--model", str(model),
        "--train-data", str(data["pairs"]),
        "--eval-data", str(data["dev"]),
        "--loss", "mnrl",
        "--2d", "random",
        "--n-dims-per-step", "2",
        "--max-steps", "6",
        "--batch-size", "8",
        "--dims", "32", "16", "8",
        "--eval-every", "3",
        "--log-every", "2",
        "--save-every", "5",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run_a(tiny_model_dir, data, tmp_path_factory) -> Path:
    """The reference run: 6 uninterrupted steps of Matryoshka CoSENT."""
    out = tmp_path_factory.mktemp("runs") / "A"
    assert train.main([*base_args(tiny_model_dir, data), "--output-dir", str(out)]) == out
    return out


@pytest.fixture(scope="module")
def run_mnrl_a(tiny_model_dir, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "mnrl-A"
    train.main([*mnrl_args(tiny_model_dir, data), "--output-dir", str(out)])
    return out


# ------------------------------------------------------------------------------------ helpers


def read_metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]  # every line is one valid JSON object


def points(metrics: list[dict]) -> list[tuple[int, str]]:
    return [(m["step"], tag) for m in metrics for tag in m if tag not in ("step", "time")]


def value(metrics: list[dict], step: int, tag: str) -> float:
    (found,) = [m[tag] for m in metrics if m["step"] == step and tag in m]
    return found


def tb_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def simulate_crash(run: Path, keep_step: int) -> None:
    """What a run killed right after its step-``keep_step`` checkpoint leaves behind (the
    metrics of later steps stay in metrics.jsonl and tb/, as they would after a real crash)."""
    ckpts = run / "checkpoints"
    for folder in ckpts.glob("step_*"):
        if int(folder.name.removeprefix("step_")) > keep_step:
            shutil.rmtree(folder)
    assert (ckpts / f"step_{keep_step:08d}").is_dir()
    (ckpts / "latest").write_text(f"step_{keep_step:08d}\n")
    shutil.rmtree(run / "model")
    (run / "eval_dev.json").unlink()


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = (
        load_file(str(a / "model" / "model.safetensors")),
        load_file(str(b / "model" / "model.safetensors")),
    )
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"weights differ from the uninterrupted run: {different[:5]}"


def assert_same_history(a: Path, b: Path, resumed_at: int, log_every: int = 2) -> None:
    """B (resumed at ``resumed_at``) logged the same (step, tag) points as A, each once, with the
    same values; perf/* values are timings and are not compared.

    The per-dim terms are averaged over the steps since the previous log line and that window
    is not part of a checkpoint, so for the one log step whose window straddles the resume
    point only the presence of the per-step tags is compared.
    """

    def straddles(step: int, tag: str) -> bool:
        return tag.startswith("train/") and step - log_every < resumed_at < step

    def check(pa: list[tuple[int, str]], pb: list[tuple[int, str]], where: str) -> None:
        assert len(pb) == len(set(pb)), f"duplicated (step, tag) points in {where}"
        assert sorted(p for p in pb if not straddles(*p)) == sorted(p for p in pa if not straddles(*p)), where
        per_step = ("train/loss", "train/lr", "train/grad_norm")
        assert {p for p in pb if p[1] in per_step} == {p for p in pa if p[1] in per_step}, where

    ma, mb = read_metrics(a), read_metrics(b)
    check(points(ma), points(mb), "metrics.jsonl")
    for step, tag in points(ma):
        if not tag.startswith("perf/") and not straddles(step, tag):
            assert value(mb, step, tag) == value(ma, step, tag), (step, tag)

    ta, tb = tb_scalars(a), tb_scalars(b)
    check(
        [(s, tag) for tag, series in ta.items() for s, _ in series],
        [(s, tag) for tag, series in tb.items() for s, _ in series],
        "tb/",
    )
    for tag, series in ta.items():
        if not tag.startswith("perf/"):
            expected = [(s, v) for s, v in series if not straddles(s, tag)]
            assert [(s, v) for s, v in tb[tag] if not straddles(s, tag)] == expected, tag


def mean_pool_by_hand(folder: Path, texts: list[str]) -> torch.Tensor:
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    features = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**features).last_hidden_state  # (N, S, D)
    mask = features["attention_mask"].unsqueeze(-1).float()  # (N, S, 1)
    return (hidden * mask).sum(1) / mask.sum(1)


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


# -------------------------------------------------------------------------------- end to end


def test_run_directory_is_complete(run_a, data):
    files = {p.name for p in run_a.iterdir()}
    assert {"config.json", "run.json", "train.log", "metrics.jsonl", "tb", "checkpoints", "model"} <= files

    config = json.loads((run_a / "config.json").read_text())
    assert config["dims"] == [32, 16, 8] and config["batch_size"] == 8 and config["max_steps"] == 6
    derived = config["derived"]
    assert derived["total_steps"] == 6
    assert derived["effective_batch"] == 8
    assert derived["steps_per_epoch"] == 64 // 8
    assert derived["warmup_steps"] == round(0.1 * 6)
    assert derived["model_dim"] == 32 and derived["num_layers"] == 3

    run = json.loads((run_a / "run.json").read_text())
    assert "git_commit" in run
    assert run["torch"] == torch.__version__

    log = (run_a / "train.log").read_text()
    assert "step 6/6" in log and "done" in log

    assert (run_a / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    assert (run_a / "checkpoints" / "step_00000006" / "model.safetensors").is_file()

    meta = json.loads((run_a / "model" / "mrl_config.json").read_text())
    assert meta["dims"] == [32, 16, 8]
    assert meta["pooling"] == "mean"
    assert meta["trained_steps"] == 6


def test_metrics_jsonl_and_tensorboard(run_a):
    metrics = read_metrics(run_a)
    steps = [m["step"] for m in metrics]
    assert steps == sorted(steps)
    assert len(points(metrics)) == len(set(points(metrics)))
    train_steps = sorted({m["step"] for m in metrics if "train/loss" in m})
    val_steps = sorted({m["step"] for m in metrics if "val/sts-dev/spearman_d32" in m})
    assert train_steps == [2, 4, 6]  # --log-every 2
    assert val_steps == [0, 3, 6]  # --eval-every 3, step 0 (zero-shot) and the end

    scalars = tb_scalars(run_a)
    documented = [
        "train/loss",
        "train/loss_d32",
        "train/loss_d16",
        "train/loss_d8",
        "train/lr",
        "train/grad_norm",
        "val/sts-dev/spearman_d32",  # set name = the file's stem
        "val/sts-dev/spearman_d16",
        "val/sts-dev/spearman_d8",
        "perf/samples_per_s",
        "perf/tokens_per_s",
        "perf/max_mem_gb",
    ]
    missing = [tag for tag in documented if tag not in scalars]
    assert not missing, f"missing tags {missing}; have {sorted(scalars)}"
    assert [s for s, _ in scalars["train/loss"]] == [2, 4, 6]
    assert [s for s, _ in scalars["val/sts-dev/spearman_d32"]] == [0, 3, 6]
    # TensorBoard holds the same numbers as metrics.jsonl (float32 in the event file).
    for tag in documented:
        for step, v in scalars[tag]:
            assert v == pytest.approx(value(metrics, step, tag), rel=1e-6, abs=1e-6), (tag, step)

    # Peak LR 2e-5, warmup round(0.1 * 6) = 1 step, then linear to 0 at step 6.
    lrs = dict(scalars["train/lr"])
    assert lrs[2] == pytest.approx(2e-5 * (1 - (2 - 1) / 5))
    assert lrs[4] == pytest.approx(2e-5 * (1 - (4 - 1) / 5))
    assert lrs[6] == pytest.approx(0.0, abs=1e-12)
    assert all(v > 0 for _, v in scalars["perf/samples_per_s"])


def test_logged_total_loss_is_the_sum_of_the_logged_dim_terms(run_a):
    # Unit dim weights: the total is the sum of the per-dim terms, so the logged curves must add
    # up (both averaged over the same logging window).
    for m in read_metrics(run_a):
        if "train/loss" in m:
            terms = m["train/loss_d32"] + m["train/loss_d16"] + m["train/loss_d8"]
            assert m["train/loss"] == pytest.approx(terms, rel=1e-5), m["step"]


def test_saved_model_loads_with_transformers_and_matches_the_trained_weights(run_a, tiny_model_dir):
    texts = ["the cat sat on the mat", "a man plays guitar in the park", "red house", "dog"]
    by_hand = mean_pool_by_hand(run_a / "model", texts)  # (4, 32)
    ours = Encoder(run_a / "model").encode(texts, normalize=False)  # (4, 32)
    assert ours.shape == (4, 32)
    torch.testing.assert_close(ours, by_hand, rtol=1e-5, atol=1e-6)

    # The in-memory model at the end of training = the final checkpoint's weights.
    trained = Encoder(tiny_model_dir)
    initial = trained.encode(texts, normalize=False)
    trained.model.load_state_dict(
        load_file(str(run_a / "checkpoints" / "step_00000006" / "model.safetensors"))
    )
    torch.testing.assert_close(trained.encode(texts, normalize=False), ours, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(initial, ours)  # six steps did change the model


def test_final_eval_matches_eval_py_on_the_saved_model(run_a, data, tmp_path, capsys):
    out = tmp_path / "eval.json"
    results = eval_script.main(
        ["--model", str(run_a / "model"), "--sts", str(data["dev"]), "--json", str(out)]
    )
    written = json.loads(out.read_text())
    assert written["dims"] == [32, 16, 8]  # the model's stored dims
    assert written["layers"] == [3]
    records = written["sets"]["sts-dev"]["records"]
    assert [(r["layer"], r["dim"]) for r in records] == [(3, 32), (3, 16), (3, 8)]
    assert results["sets"]["sts-dev"]["records"] == records
    assert out.with_suffix(".md").is_file()
    printed = capsys.readouterr().out
    assert "sts-dev" in printed and "d=8" in printed

    # The last periodic evaluation ran on the final weights.
    metrics = read_metrics(run_a)
    for r in records:
        assert r["spearman"] == pytest.approx(
            value(metrics, 6, f"val/sts-dev/spearman_d{r['dim']}"), abs=1e-3
        )
    dev = json.loads((run_a / "eval_dev.json").read_text())
    assert [(r["layer"], r["dim"]) for r in dev["sts-dev"]] == [(3, 32), (3, 16), (3, 8)]


def test_eval_py_spearman_matches_an_independent_computation(run_a, data, tmp_path):
    from scipy.stats import spearmanr

    with open(data["dev"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    e1 = mean_pool_by_hand(run_a / "model", [r["sentence1"] for r in rows])[:, :8]
    e2 = mean_pool_by_hand(run_a / "model", [r["sentence2"] for r in rows])[:, :8]
    cosine = torch.nn.functional.cosine_similarity(e1, e2, dim=-1).numpy()
    expected = spearmanr([float(r["score"]) for r in rows], cosine).statistic * 100
    results = eval_script.main(["--model", str(run_a / "model"), "--sts", str(data["dev"]), "--dims", "8"])
    (record,) = results["sets"]["sts-dev"]["records"]
    assert record["spearman"] == pytest.approx(expected, abs=1e-6)


def test_eval_py_layers_all_and_defaults(run_a, data, tiny_model_dir, tmp_path):
    results = eval_script.main(
        ["--model", str(run_a / "model"), "--sts", str(data["dev"]), "--layers", "all"]
    )
    records = results["sets"]["sts-dev"]["records"]
    assert sorted({r["layer"] for r in records}) == [1, 2, 3]
    assert sorted((r["layer"], r["dim"]) for r in records) == sorted(
        (layer, d) for layer in (1, 2, 3) for d in (32, 16, 8)
    )
    # A plain encoder without our metadata: D, D/2, ... down to 16.
    plain = eval_script.main(["--model", str(tiny_model_dir), "--sts", str(data["dev"])])
    assert plain["dims"] == [32, 16]


def test_eval_py_refuses_to_overwrite_json(run_a, data, tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["--model", str(run_a / "model"), "--sts", str(data["dev"]), "--json", str(out)]
    for existing in (out, out.with_suffix(".md")):
        existing.write_text("keep me")
        with pytest.raises(SystemExit) as info:
            eval_script.main(args)
        assert info.value.code not in (0, None)
        message = error_line(capsys)
        assert str(existing) in message and "--overwrite" in message
        assert existing.read_text() == "keep me"
        existing.unlink()
    out.write_text("keep me")
    eval_script.main([*args, "--overwrite"])
    assert json.loads(out.read_text())["dims"] == [32, 16, 8]


# ------------------------------------------------------------------------------- exact resume


def test_resume_is_exact_for_matryoshka_cosent(run_a, tmp_path):
    # B is a copy of the uninterrupted run A cut back to its step-3 checkpoint: the same files a
    # second run of base_args would leave (runs are bitwise reproducible, see test_reliability's
    # test_same_seed_gives_identical_weights_and_another_seed_does_not), without training it.
    b = tmp_path / "B"
    shutil.copytree(run_a, b)
    simulate_crash(b, keep_step=3)
    train.main(["--output-dir", str(b), "--resume"])
    assert "resuming at step 3" in (b / "train.log").read_text()
    assert_same_weights(run_a, b)
    assert_same_history(run_a, b, resumed_at=3)
    assert json.loads((b / "eval_dev.json").read_text()) == json.loads((run_a / "eval_dev.json").read_text())


def test_resume_is_exact_for_mnrl_2d_random(run_mnrl_a, tmp_path):
    b = tmp_path / "B"  # a copy of the uninterrupted run cut back to step 5, as above
    shutil.copytree(run_mnrl_a, b)
    simulate_crash(b, keep_step=5)
    train.main(["--output-dir", str(b), "--resume"])
    assert "resuming at step 5" in (b / "train.log").read_text()
    assert_same_weights(run_mnrl_a, b)
    assert_same_history(run_mnrl_a, b, resumed_at=5)
    tags = {tag for _, tag in points(read_metrics(run_mnrl_a))}
    assert {"train/loss_kl", "val/sts-dev/spearman_d32", "val/sts-dev/spearman_l1_d32"} <= tags
    assert any(tag.startswith("train/loss_l") for tag in tags)


def test_resume_before_the_first_checkpoint_restarts_cleanly(run_a, tmp_path):
    # Killed before any checkpoint was written: --resume starts over from step 0, and the
    # points logged before the crash must not be doubled.
    b = tmp_path / "B"
    shutil.copytree(run_a, b)
    shutil.rmtree(b / "checkpoints")
    shutil.rmtree(b / "model")
    (b / "eval_dev.json").unlink()
    train.main(["--output-dir", str(b), "--resume"])
    assert_same_weights(run_a, b)
    assert_same_history(run_a, b, resumed_at=0)


def test_resume_of_a_finished_run_changes_nothing(run_a, tmp_path):
    b = tmp_path / "B"
    shutil.copytree(run_a, b)
    train.main(["--output-dir", str(b), "--resume"])
    assert read_metrics(b) == read_metrics(run_a)
    assert_same_weights(run_a, b)
    assert (b / "checkpoints" / "latest").read_text() == (run_a / "checkpoints" / "latest").read_text()


# ------------------------------------------------------------------------- one encoder pass


@pytest.mark.parametrize(
    "extra, all_layers",
    [
        (["--dims", "32", "16", "8"], False),
        (["--dims", "32"], False),
        (["--dims", "32", "16", "8", "--2d", "random", "--n-layers-per-step", "-1"], True),
        (["--2d", "fixed", "--layer-dim-pairs", "1:8", "2:16", "3:32"], True),
    ],
)
def test_encoder_runs_once_per_optimizer_step(tiny_model_dir, data, tmp_path, monkeypatch, extra, all_layers):
    calls = []
    forward = Encoder.forward

    def counting_forward(self, features, all_layers=False):
        calls.append(all_layers)
        return forward(self, features, all_layers=all_layers)

    monkeypatch.setattr(Encoder, "forward", counting_forward)
    train.main(
        [
            "--model", str(tiny_model_dir),
            "--train-data", str(data["train"]),
            "--eval-data",  # no dev sets: every encoder call below is a training call
            "--max-steps", "3",
            "--batch-size", "8",
            "--log-every", "1",
            "--output-dir", str(tmp_path / "run"),
            *extra,
        ]
    )  # fmt: skip
    assert calls == [all_layers] * 3


# ------------------------------------------------------------------------------- 2D fixed


def test_2d_fixed_schedule_logs_pair_terms_and_per_layer_evals(tiny_model_dir, data, tmp_path):
    out = tmp_path / "fixed"
    train.main(
        [
            "--model", str(tiny_model_dir),
            "--train-data", str(data["train"]),
            "--eval-data", str(data["dev"]),
            "--2d", "fixed",
            "--layer-dim-pairs", "1:8", "2:16", "3:32",
            "--max-steps", "2",
            "--batch-size", "8",
            "--log-every", "1",
            "--eval-every", "0",
            "--output-dir", str(out),
        ]
    )  # fmt: skip
    metrics = read_metrics(out)
    tags = {tag for _, tag in points(metrics)}
    # One tag scheme in every mode: the final layer (3) logs train/loss_d32, as plain Matryoshka does.
    assert {"train/loss_l1_d8", "train/loss_l2_d16", "train/loss_d32", "train/loss_kl"} <= tags
    assert not any(tag.startswith("train/loss_l3") for tag in tags)
    assert [m["step"] for m in metrics if "train/loss" in m] == [1, 2]
    assert "val/sts-dev/spearman_l1_d32" in tags and "val/sts-dev/spearman_d32" in tags

    dev = json.loads((out / "eval_dev.json").read_text())
    assert sorted({r["layer"] for r in dev["sts-dev"]}) == [1, 2, 3]
    config = json.loads((out / "config.json").read_text())
    assert config["derived"]["layer_dim_pairs"] == [[1, 8], [2, 16], [3, 32]]
    meta = json.loads((out / "model" / "mrl_config.json").read_text())
    assert meta["layer_dim_pairs"] == [[1, 8], [2, 16], [3, 32]]
    assert meta["layers"] == [1, 2, 3]


# ---------------------------------------------------------------------- refusals, bad input


def test_refuses_to_overwrite_an_existing_run(run_a, tiny_model_dir, data, tmp_path, capsys):
    c = tmp_path / "C"
    shutil.copytree(run_a, c)
    before = snapshot(c)
    with pytest.raises(SystemExit) as info:
        train.main([*base_args(tiny_model_dir, data), "--output-dir", str(c)])
    assert info.value.code not in (0, None)
    assert "--output-dir" in error_line(capsys)
    assert snapshot(c) == before


def test_resume_with_a_changed_flag_names_it(run_a, tmp_path, capsys):
    c = tmp_path / "C"
    shutil.copytree(run_a, c)
    before = snapshot(c)
    with pytest.raises(SystemExit) as info:
        train.main(["--output-dir", str(c), "--resume", "--lr", "1e-3", "--max-steps", "9"])
    assert info.value.code not in (0, None)
    message = error_line(capsys)
    assert "lr" in message and "max_steps" in message and "--resume" in message
    # ... and says what to do instead: a finished run can seed a new one from its weights.
    assert f"start a new run with --model {c / 'model'}" in message
    assert snapshot(c) == before


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--output-dir", str(tmp_path / "nothing"), "--resume", "--eval-data"])
    assert info.value.code not in (0, None)
    assert "--resume" in error_line(capsys)
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"--train-data": ["{tmp}/missing.csv"]}, "missing.csv"),
        ({"--text-columns": ["sentence1", "sentense2"]}, "sentense2"),
        ({"--dims": ["64", "32"]}, "--dims"),
        ({"--eval-data": ["{tmp}/missing-dev.csv"]}, "missing-dev.csv"),
        ({"--model": ["{tmp}/no-such-model"]}, "no-such-model"),
    ],
)
def test_bad_input_exits_with_one_line_and_writes_nothing(
    tiny_model_dir, data, tmp_path, capsys, change, expected
):
    flags = {
        "--model": [str(tiny_model_dir)],
        "--train-data": [str(data["train"])],
        "--eval-data": [str(data["dev"])],
        "--dims": ["32", "16"],
        "--max-steps": ["2"],
        "--batch-size": ["8"],
        "--output-dir": [str(tmp_path / "out")],
    }
    flags.update({flag: [v.format(tmp=tmp_path) for v in values] for flag, values in change.items()})
    with pytest.raises(SystemExit) as info:
        train.main([item for flag, values in flags.items() for item in (flag, *values)])
    assert info.value.code not in (0, None)
    assert expected in error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_max_seq_length_beyond_the_model_does_not_crash_mid_run(tiny_model_dir, data, tmp_path, capsys):
    # The tiny model has 64 positions and the default --max-seq-length is 128. A text longer
    # than 64 tokens must either be truncated to the model's limit, or be refused at startup
    # naming the flag -- not crash the run when the first long batch arrives.
    rows = [[sentence(random.Random(i)), sentence(random.Random(100 + i)), (i % 5) / 4] for i in range(16)]
    rows[0][0] = " ".join("abcdefghijklmnopqrstuvwxyz" * 4)  # ~100 single-character tokens
    train_csv = write_csv(tmp_path / "long.csv", ["sentence1", "sentence2", "score"], rows)
    out = tmp_path / "run"
    argv = [
        "--model", str(tiny_model_dir),
        "--train-data", str(train_csv),
        "--eval-data", str(train_csv),
        "--max-steps", "2",
        "--batch-size", "8",
        "--output-dir", str(out),
    ]  # fmt: skip
    try:
        train.main(argv)
    except SystemExit:
        assert "--max-seq-length" in error_line(capsys)
        assert not out.exists()
    else:
        meta = json.loads((out / "model" / "mrl_config.json").read_text())
        assert meta["max_seq_length"] <= 64


# ------------------------------------------------------------------------------ integration


@pytest.mark.integration
def test_sixty_steps_of_matryoshka_cosent_beat_zero_shot_at_32_dims(minilm_dir, shared_data, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = train.main(
            [
                "--model", str(minilm_dir),
                "--train-data", str(shared_data / "stsb" / "en-train.csv"),
                "--eval-data", str(shared_data / "stsb" / "en-dev.csv"),
                "--dims", "384", "256", "128", "64", "32", "16",
                "--batch-size", "16",
                "--lr", "2e-5",
                "--max-steps", "60",
                "--eval-every", "0",
                "--log-every", "10",
                "--output-dir", str(tmp_path / "stsb"),
            ]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    zero_shot = value(read_metrics(out), 0, "val/en-dev/spearman_d32")
    dev = json.loads((out / "eval_dev.json").read_text())
    (trained,) = [r["spearman"] for r in dev["en-dev"] if r["layer"] == 6 and r["dim"] == 32]
    assert trained > zero_shot, (zero_shot, trained)
    assert zero_shot > 70  # all-MiniLM-L6-v2 at 32 dims is far from random before training

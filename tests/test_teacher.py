"""A frozen teacher (--teacher, issue 25): the term against brute-force loops, the cached teacher
embeddings (computed once, keyed by the teacher), exact resume, the refusals, a run folder as the
teacher, and a student equal to its teacher (a term of exactly 0 at step 0, in closed form).

Tiny random BERTs (conftest.make_tiny_model) train on one CPU thread, so runs are bitwise
reproducible. The references use python floats and loops; they never call mrl.losses helpers.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train.py lives in the repo root
import mrl.model  # noqa: E402
import train  # noqa: E402
from mrl.config import parse_config, validate_for_run  # noqa: E402
from mrl.embcache import model_key  # noqa: E402
from mrl.losses import embedding_mse, teacher_distill_loss  # noqa: E402
from mrl.model import Encoder  # noqa: E402
from mrl.objectives import build_objective  # noqa: E402
from tests.conftest import make_tiny_model  # noqa: E402
from tests.fixture_text import distinct_sentences, write_csv  # noqa: E402
from tests.test_distill import distill_by_hand  # noqa: E402
from tests.test_train import (  # noqa: E402,F401 (one_thread: the module's autouse fixture)
    assert_same_weights,
    error_line,
    one_thread,
    simulate_crash,
)

TOL = {"rel": 1e-9, "abs": 1e-12}


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def mse_by_hand(student: torch.Tensor, teacher: torch.Tensor, d: int) -> float:
    """The mean over the N x d values of (s - t)^2 of the raw d-prefixes, as python floats."""
    rows = [(s[:d], t[:d]) for s, t in zip(student.tolist(), teacher.tolist())]
    return sum((a - b) ** 2 for s, t in rows for a, b in zip(s, t)) / (len(rows) * d)


# --------------------------------------------------------------------------------------------
# The term
# --------------------------------------------------------------------------------------------


def test_mse_term_at_each_dim_matches_brute_force():
    student, teacher = randn(2, 3, 16, seed=1), randn(6, 24, seed=2)  # (C, B, D), (C*B, D')
    dims, weights = [16, 8, 4], [1.0, 0.5, 2.0]
    total, terms = teacher_distill_loss(student, teacher, dims, embedding_mse, weights)
    flat = student.reshape(6, 16)  # column-major rows: the teacher's order
    assert set(terms) == {"teacher_d16", "teacher_d8", "teacher_d4"}
    for d in dims:
        assert terms[f"teacher_d{d}"].item() == pytest.approx(mse_by_hand(flat, teacher, d), **TOL)
    assert total.item() == pytest.approx(
        sum(w * mse_by_hand(flat, teacher, d) for d, w in zip(dims, weights)), **TOL
    )


def test_mse_gradient_is_exact_and_the_teacher_gets_none():
    student, teacher = randn(5, 8, seed=3).requires_grad_(), randn(5, 8, seed=4).requires_grad_()
    total, _ = teacher_distill_loss(student, teacher, [8, 2], embedding_mse)
    total.backward()
    assert teacher.grad is None
    # d/ds of mean_{N x d} (s - t)^2 is 2 (s - t) / (N d) on the prefix's columns, summed over dims.
    diff = (student - teacher).detach()
    expected = 2 * diff / (5 * 8)
    expected[:, :2] += 2 * diff[:, :2] / (5 * 2)
    torch.testing.assert_close(student.grad, expected)


@pytest.mark.parametrize("loss", ["mse", "kl"])
def test_the_objective_weighs_each_dim_then_the_whole_term(loss):
    config = parse_config(
        [
            "--teacher",
            "t",
            "--teacher-loss",
            loss,
            "--teacher-weight",
            "0.5",
            "--dims",
            "8",
            "4",
            "--dim-weights",
            "1",
            "3",
            "--eval-data",
        ]  # fmt: skip
    )
    objective = build_objective(config, 8, 3, torch.Generator())
    student, teacher = randn(2, 4, 8, seed=5), randn(8, 12, seed=6)
    total, terms = objective.teacher(student, teacher)
    flat = student.reshape(8, 8)

    def by_hand(d: int) -> float:
        if loss == "mse":
            return mse_by_hand(flat, teacher, d)
        return distill_by_hand(flat[:, :d], teacher[:, :d], "kl", temperature=0.05)

    for d in (8, 4):
        assert terms[f"teacher_d{d}"].item() == pytest.approx(by_hand(d), rel=1e-6)
    assert total.item() == pytest.approx(0.5 * (by_hand(8) + 3 * by_hand(4)), rel=1e-6)
    assert build_objective(parse_config(["--eval-data"]), 8, 3, torch.Generator()).teacher is None


def test_teacher_flags_are_checked():
    with pytest.raises(ValueError, match="--teacher-weight only apply with --teacher MODEL"):
        parse_config(["--teacher-weight", "2"])
    with pytest.raises(ValueError, match="--teacher-temperature needs --teacher-loss kl$"):
        parse_config(["--teacher", "t", "--teacher-temperature", "0.1"])
    with pytest.raises(ValueError, match="--n-dims-per-step does not combine with --teacher"):
        parse_config(["--teacher", "t", "--dims", "8", "4", "--n-dims-per-step", "1"])
    with pytest.raises(ValueError, match="--teacher: not used by --adaptor"):
        parse_config(["--teacher", "t", "--adaptor", "linear"])
    with pytest.raises(ValueError, match="--teacher-weight -1: must be >= 0"):
        parse_config(["--teacher", "t", "--teacher-weight", "-1"])
    with pytest.raises(ValueError, match="--teacher runs in one process"):
        validate_for_run(parse_config(["--teacher", "t"]), world_size=2)
    # --distill-data's only loss may be the teacher's
    assert parse_config(["--teacher", "t", "--distill-data", "x.csv"]).distill_data == ["x.csv"]


# --------------------------------------------------------------------------------------------
# Training with a teacher, end to end on tiny models
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Scored training pairs, a dev set, plain sentences, and tiny student / teacher models."""
    root = tmp_path_factory.mktemp("teacher")
    texts = distinct_sentences(120, seed=31)
    return {
        "train": write_csv(
            root / "train.csv",
            ["sentence1", "sentence2", "score"],
            [[texts[2 * i], texts[2 * i + 1], (i % 7) / 6] for i in range(24)],
        ),  # fmt: skip
        "dev": write_csv(
            root / "dev.csv",
            ["sentence1", "sentence2", "score"],
            [[texts[60 + 2 * i], texts[61 + 2 * i], i / 7] for i in range(8)],
        ),  # fmt: skip
        "plain": write_csv(
            root / "plain.csv",
            ["premise", "hypothesis"],
            [[texts[80 + 2 * i], texts[81 + 2 * i]] for i in range(20)],
        ),  # fmt: skip
        "student": make_tiny_model(root / "student", num_layers=2, seed=1),
        "teacher": make_tiny_model(root / "teacher", num_layers=3, seed=2),
        "other_teacher": make_tiny_model(root / "other_teacher", num_layers=3, seed=3),
        "narrow_teacher": make_tiny_model(root / "narrow_teacher", num_layers=3, hidden_size=16, seed=4),
    }


def args(files, out: Path, cache: Path, *extra: str, teacher: str | None = None) -> list[str]:
    return [
        "--model", str(files["student"]), "--train-data", str(files["train"]), "--eval-data",
        "--teacher", teacher or str(files["teacher"]), "--embedding-cache", str(cache),
        "--distill-data", str(files["plain"]), "--dims", "32", "16", "8", "--batch-size", "4",
        "--max-steps", "3", "--log-every", "1", "--seed", "5", "--output-dir", str(out), *extra,
    ]  # fmt: skip


@pytest.fixture
def encodes(monkeypatch) -> list[str]:
    """The model folders `Encoder.encode` ran on, in order (the student's only for dev sets)."""
    calls: list[str] = []
    real = mrl.model.encode

    def counting(encoder, *a, **k):
        calls.append(encoder.name_or_path)
        return real(encoder, *a, **k)

    monkeypatch.setattr(mrl.model, "encode", counting)
    return calls


def logged(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [m for m in map(json.loads, lines) if "train/loss" in m]


def test_teacher_embeddings_are_computed_once_and_keyed_by_the_teacher(files, tmp_path, encodes):
    cache = tmp_path / "cache"
    first = train.main(args(files, tmp_path / "a", cache))
    assert encodes == [str(files["teacher"])]
    (cached,) = cache.glob("*.safetensors")
    derived = json.loads((first / "config.json").read_text())["derived"]
    # 48 training texts and 40 plain ones, all distinct; the key is the teacher's weights and more
    assert derived["teacher_texts"] == 88 and derived["teacher_dim"] == 32
    assert derived["teacher_from_cache"] is False
    assert derived["teacher_model_key"] == model_key(Encoder(str(files["teacher"]), max_seq_length=128))
    written = cached.stat().st_mtime_ns

    second = train.main(args(files, tmp_path / "b", cache, "--seed", "6"))  # another run, same teacher
    assert encodes == [str(files["teacher"])]  # read from the cache: the teacher encoded nothing
    assert cached.stat().st_mtime_ns == written
    assert json.loads((second / "config.json").read_text())["derived"]["teacher_from_cache"] is True
    m = logged(second)[0]
    assert {f"train/loss_teacher_d{d}" for d in (32, 16, 8)} <= set(m)
    assert {f"train/loss_unlabelled_teacher_d{d}" for d in (32, 16, 8)} <= set(m)
    # The logged total is the sum of the CoSENT terms and the teacher's (all weights 1).
    assert m["train/loss"] == pytest.approx(
        sum(v for k, v in m.items() if k.startswith("train/loss_")), rel=1e-5
    )

    train.main(args(files, tmp_path / "c", cache, teacher=str(files["other_teacher"])))
    assert encodes[-1] == str(files["other_teacher"]) and len(list(cache.glob("*.safetensors"))) == 2
    card = (first / "model" / "README.md").read_text()
    assert f"| teacher | `{files['teacher']}` (frozen, 32 dims" in card and "`mse`" in card


def test_resume_is_exact_reuses_the_cache_and_refuses_a_changed_teacher(files, tmp_path, encodes, capsys):
    teacher = tmp_path / "teacher"  # a copy whose weights the test changes afterwards
    shutil.copytree(files["teacher"], teacher)
    cache = tmp_path / "cache"
    common = ["--eval-data", str(files["dev"]), "--eval-every", "0", "--save-every", "2", "--max-steps", "5"]
    a = train.main([*args(files, tmp_path / "A", cache, teacher=str(teacher)), *common])  # later flags win
    b = tmp_path / "B"  # the uninterrupted run's copy, cut back to its step-4 checkpoint
    shutil.copytree(a, b)
    simulate_crash(b, keep_step=4)
    assert encodes.count(str(teacher)) == 1
    train.main(["--output-dir", str(b), "--resume"])
    assert "resuming at step 4" in (b / "train.log").read_text()
    assert encodes.count(str(teacher)) == 1  # the teacher's vectors came from the cache
    assert_same_weights(a, b)

    c = tmp_path / "C"  # another --teacher on resume: refused like any changed flag
    shutil.copytree(a, c)
    simulate_crash(c, keep_step=4)
    with pytest.raises(SystemExit):
        train.main(["--output-dir", str(c), "--resume", "--teacher", str(files["other_teacher"])])
    assert "teacher" in error_line(capsys)
    # The same folder with other weights: refused by the teacher's recorded model key.
    shutil.rmtree(teacher)
    shutil.copytree(files["other_teacher"], teacher)
    with pytest.raises(SystemExit):
        train.main(["--output-dir", str(c), "--resume"])
    message = error_line(capsys)
    assert "--resume: the teacher" in message and "changed since the run started" in message


def test_a_teacher_too_narrow_for_the_dims_is_one_line_and_creates_nothing(files, tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    with pytest.raises(SystemExit):
        train.main(args(files, out, cache, teacher=str(files["narrow_teacher"])))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: --teacher ")
    assert "16-dim" in err[0] and "--dims 32" in err[0]
    assert not out.exists() and not cache.exists()
    # Without --dims the student's full width (32) is what the teacher cannot serve.
    no_dims = args(files, out, cache, teacher=str(files["narrow_teacher"]))
    no_dims = no_dims[: no_dims.index("--dims")] + no_dims[no_dims.index("--batch-size") :]
    with pytest.raises(SystemExit):
        train.main(no_dims)
    assert "--dims (not given: the model's full 32) 32" in error_line(capsys)
    assert not out.exists()


def test_a_run_folder_is_a_teacher(files, tmp_path):
    cache = tmp_path / "cache"
    run = train.main(
        [
            "--model",
            str(files["teacher"]),
            "--train-data",
            str(files["train"]),
            "--eval-data",
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--output-dir",
            str(tmp_path / "teacher-run"),
        ]  # fmt: skip
    )
    student = train.main(args(files, tmp_path / "student", cache, teacher=str(run)))
    derived = json.loads((student / "config.json").read_text())["derived"]
    # Its final model, not the model it started from
    assert derived["teacher_model_key"] == model_key(Encoder(str(run / "model"), max_seq_length=128))
    assert derived["teacher_model_key"] != model_key(Encoder(str(files["teacher"]), max_seq_length=128))


@pytest.mark.parametrize("loss", ["mse", "kl"])
def test_a_student_equal_to_its_teacher_starts_with_a_zero_term(files, tmp_path, loss):
    # Without dropout the student at step 0 is its teacher, so each term of the first step
    # (logged before the update) is 0 up to float rounding, and the total is CoSENT's alone.
    same = make_tiny_model(tmp_path / "same", num_layers=2, seed=1, dropout=0.0)
    run = train.main(
        [
            *args(files, tmp_path / "run", tmp_path / "cache", teacher=str(same)),
            "--model",
            str(same),
            "--max-steps",
            "1",
            "--teacher-loss",
            loss,
            "--teacher-weight",
            "5",
        ]  # fmt: skip
    )
    m = logged(run)[0]
    # Float rounding only: the teacher's vectors come from padded batches, the student's from
    # packed rows (~1e-7 apart); the KL's logits divide cosines by T = 0.05.
    tol = 1e-9 if loss == "mse" else 1e-6
    for d in (32, 16, 8):
        assert abs(m[f"train/loss_teacher_d{d}"]) < tol
        assert abs(m[f"train/loss_unlabelled_teacher_d{d}"]) < tol
    cosent = m["train/loss_d32"] + m["train/loss_d16"] + m["train/loss_d8"]
    assert m["train/loss"] == pytest.approx(cosent, abs=1e-6)


def test_gradcache_and_grad_accum_train_with_a_teacher(files, tmp_path):
    # GradCache (--mini-batch-size) gives the same gradients as the whole batch: with a teacher
    # term too (no dropout, so both passes see the same network). Grad accumulation runs.
    model = make_tiny_model(tmp_path / "nodrop", num_layers=2, seed=1, dropout=0.0)
    base = ["--distill-data", "--model", str(model), "--lr", "1e-3"]  # a large lr: the weights move
    plain = train.main([*args(files, tmp_path / "plain", tmp_path / "cache"), *base])
    cached = train.main([*args(files, tmp_path / "gc", tmp_path / "cache"), *base, "--mini-batch-size", "3"])
    for a, b in zip(logged(plain), logged(cached)):  # the same losses at every step, teacher's included
        for tag in ("train/loss", "train/loss_teacher_d8", "train/loss_d8"):
            assert a[tag] == pytest.approx(b[tag], rel=1e-4)
    start = load_file(str(model / "model.safetensors"))
    wa, wb = (load_file(str(run / "model" / "model.safetensors")) for run in (plain, cached))
    assert max((wa[k] - start[k]).abs().max().item() for k in wa if k in start) > 1e-3
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5)
    accum = train.main([*args(files, tmp_path / "accum", tmp_path / "cache"), "--grad-accum", "2"])
    assert len(logged(accum)) == 3

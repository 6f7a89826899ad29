"""train.py --adaptor end to end on a tiny random BERT and a tiny BEIR-layout corpus.

Checks the run directory and tags, that the saved adapted model reproduces f(e) of the adaptor's
own checkpoint, that the corpus is encoded once (cache), exact resume (adaptor weights, both data
positions, the logged history), the precomputed-embeddings path (no encoder at all), a frozen
head during ordinary training, and one-line errors for bad adaptor input.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train.py lives in the repo root
import mrl.train.adaptor  # noqa: E402
import train  # noqa: E402
from mrl.adaptor import Adaptor  # noqa: E402
from mrl.card import EXAMPLE_SENTENCES, write_card  # noqa: E402
from mrl.config import parse_config, validate_for_model  # noqa: E402
from mrl.heads import head_modules, transform_embeddings  # noqa: E402
from mrl.model import Encoder  # noqa: E402
from tests.fixture_text import distinct_sentences, write_csv  # noqa: E402
from tests.test_card import python_block  # noqa: E402
from tests.test_train import assert_same_history, error_line, one_thread, read_metrics  # noqa: E402,F401

DIMS = ["32", "16", "8"]


@pytest.fixture(scope="module")
def beir(tmp_path_factory) -> dict[str, Path]:
    """A corpus of 40 docs (BEIR corpus.jsonl), a train split of 20 (query, doc) pairs, a dev set."""
    folder = tmp_path_factory.mktemp("beir")
    texts = distinct_sentences(100, seed=11)
    docs, queries = texts[:40], texts[40:60]
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(docs):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": text}) + "\n")
    (folder / "train").mkdir()
    with open(folder / "train" / "queries.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(queries):
            f.write(json.dumps({"_id": f"q{i}", "text": text}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{(3 * i) % 40}\t1" for i in range(20)]
    (folder / "train" / "qrels.tsv").write_text("\n".join(lines) + "\n")
    rows = [[texts[60 + i], texts[80 + i], (i % 5) / 4] for i in range(20)]
    dev = write_csv(folder / "sts-dev.csv", ["sentence1", "sentence2", "score"], rows)
    return {"corpus": folder / "corpus.jsonl", "pairs": folder / "train", "dev": dev, "docs": docs}


def adaptor_args(model: Path, beir: dict, cache: Path) -> list[str]:
    # 40 docs / batch 8 = 5 steps an epoch; 20 pairs / 6 = 3 pair batches an epoch, so 7 steps
    # cross epochs of both streams and the step-3 checkpoint sits inside both.
    return [
        "--adaptor", "linear",
        "--model", str(model),
        "--train-data", str(beir["corpus"]),
        "--adaptor-pairs", str(beir["pairs"]),
        "--eval-data", str(beir["dev"]),
        "--embedding-cache", str(cache),
        "--adaptor-weights", "sim=1", "nbr=1", "list=0.3", "rec=0.1", "rank=0.5",
        "--adaptor-k", "3",
        "--adaptor-neighbours", "0",
        "--adaptor-pair-batch-size", "6",
        "--dims", *DIMS,
        "--max-steps", "7",
        "--batch-size", "8",
        "--lr", "1e-2",
        "--eval-every", "3",
        "--log-every", "2",
        "--save-every", "3",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture(scope="module")
def run_a(tiny_model_dir, beir, cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "A"
    assert train.main([*adaptor_args(tiny_model_dir, beir, cache), "--output-dir", str(out)]) == out
    return out


def final_adaptor(run: Path, kind: str = "linear", hidden: int | None = None) -> Adaptor:
    """The adaptor as its last checkpoint stored it (independent of the saved model)."""
    latest = (run / "checkpoints" / "latest").read_text().strip()
    adaptor = Adaptor(32, kind, hidden)
    adaptor.load_state_dict(load_file(str(run / "checkpoints" / latest / "model.safetensors")))
    return adaptor.eval()


def resume_from_step(run: Path, step: int, copy: Path) -> Path:
    """A copy of the finished precomputed-embeddings ``run`` as if killed right after its ``step``
    checkpoint (later checkpoints, the saved adaptor and the lock gone), resumed to the end."""
    shutil.copytree(run, copy)
    keep = f"step_{step:08d}"
    for folder in (copy / "checkpoints").glob("step_*"):
        if folder.name != keep:
            shutil.rmtree(folder)
    (copy / "checkpoints" / "latest").write_text(keep + "\n")
    shutil.rmtree(copy / "adaptor")
    (copy / ".lock").unlink(missing_ok=True)
    train.main(["--output-dir", str(copy), "--resume"])
    return copy


def test_run_directory_tags_and_recipe(run_a):
    for name in ("config.json", "run.json", "train.log", "metrics.jsonl", "tb", "checkpoints", "model"):
        assert (run_a / name).exists(), name
    config = json.loads((run_a / "config.json").read_text())
    assert config["adaptor"] == "linear" and config["derived"]["data"]["n_pairs"] == 20
    assert config["derived"]["steps_per_epoch"] == 5 and config["derived"]["total_steps"] == 7
    tags = {tag for m in read_metrics(run_a) for tag in m}
    for dim in DIMS:
        for tag in ("train/adaptor_loss_d", "train/adaptor_loss_sim_d", "train/adaptor_loss_list_d"):
            assert f"{tag}{dim}" in tags
        assert f"train/adaptor_loss_rank_d{dim}" in tags
        assert f"val/sts-dev/spearman_d{dim}" in tags
    assert {"train/adaptor_loss", "train/adaptor_loss_rec", "train/lr", "perf/train_seconds"} <= tags
    assert not any(tag == "train/loss" for tag in tags)  # the adaptor's tags are its own
    modules = json.loads((run_a / "model" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize", "Dense"]
    recipe = json.loads((run_a / "model" / "mrl_config.json").read_text())["adaptor"]
    assert recipe["kind"] == "linear" and recipe["trained_steps"] == 7
    assert recipe["loss_weights"] == {"sim": 1.0, "nbr": 1.0, "list": 0.3, "rec": 0.1, "rank": 0.5}
    assert recipe["data"]["corpus_texts"] == 40


def test_an_adapted_model_gets_a_card_that_names_the_adaptor(run_a):
    card = (run_a / "model" / "README.md").read_text()
    assert "Matryoshka-Adaptor" in card and "`linear`, started from `identity`" in card
    assert "sim=1 nbr=1 list=0.3 rec=0.1 rank=0.5" in card  # the loss weights it trained with
    assert "| steps | 7 of 7 |" in card
    assert "### sts-dev (dev, after step 7)" in card  # its last dev scores, as eval_dev.json holds them
    dev = json.loads((run_a / "eval_dev.json").read_text())["sts-dev"]
    assert [r["dim"] for r in dev] == sorted(map(int, DIMS), reverse=True)
    assert "cosent" not in card.lower()  # not the encoder recipe's loss
    # The transformers snippet, run as written, gives the adapted model's vectors.
    namespace: dict = {}
    exec(compile(python_block(card, "### transformers"), "<card>", "exec"), namespace)  # noqa: S102
    raw = Encoder(run_a / "model").encode(EXAMPLE_SENTENCES, normalize=False)
    torch.testing.assert_close(namespace["embeddings"], raw, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["mlp", "rotation"])
def test_the_card_snippet_applies_every_adaptor_kind(tiny_model_dir, kind, tmp_path):
    # An adaptor of each other kind, saved as train.py saves it, with random weights.
    torch.manual_seed(0)
    adaptor = Adaptor(32, kind, 16 if kind == "mlp" else None)
    if kind == "mlp":
        for parameter in adaptor.parameters():
            torch.nn.init.normal_(parameter, std=0.3)
    else:
        adaptor.start_from(torch.linalg.qr(torch.randn(32, 32))[0])
    encoder = Encoder(tiny_model_dir)
    encoder.attach_head(head_modules(adaptor))
    recipe = {**adaptor.config(), "init": "identity", "trained_steps": 1}
    encoder.save(tmp_path / "model", {"dims": [32, 16, 8], "adaptor": recipe})
    write_card(tmp_path / "model")
    card = (tmp_path / "model" / "README.md").read_text()
    namespace: dict = {}
    exec(compile(python_block(card, "### transformers"), "<card>", "exec"), namespace)  # noqa: S102
    raw = Encoder(tmp_path / "model").encode(EXAMPLE_SENTENCES, normalize=False)
    torch.testing.assert_close(namespace["embeddings"], raw, atol=1e-5, rtol=1e-5)


def test_logged_total_is_the_weighted_sum_of_the_dim_terms(run_a):
    for m in read_metrics(run_a):
        if "train/adaptor_loss" in m:
            per_dim = sum(m[f"train/adaptor_loss_d{d}"] for d in DIMS)
            assert m["train/adaptor_loss"] == pytest.approx(
                per_dim + 0.1 * m["train/adaptor_loss_rec"], rel=1e-5
            )


def test_saved_model_reproduces_the_trained_adaptor(run_a, tiny_model_dir, beir):
    raw = Encoder(tiny_model_dir).encode(beir["docs"], normalize=False)  # the frozen encoder
    expected = final_adaptor(run_a)(raw).detach()
    adapted = Encoder(run_a / "model")
    assert adapted.metadata["dims"] == [32, 16, 8]
    torch.testing.assert_close(adapted.encode(beir["docs"], normalize=False), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(transform_embeddings(run_a / "model", raw), expected, rtol=1e-5, atol=1e-5)
    # The adaptor moved: the saved model is not the raw encoder.
    assert not torch.allclose(expected, torch.nn.functional.normalize(raw, dim=-1), atol=1e-3)


def test_resume_is_exact_and_reads_the_cache(run_a, tiny_model_dir, beir, cache, tmp_path, monkeypatch):
    b = tmp_path / "B"
    calls = []
    original = Encoder.encode
    monkeypatch.setattr(Encoder, "encode", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    train.main([*adaptor_args(tiny_model_dir, beir, cache), "--output-dir", str(b)])
    assert calls == []  # corpus, queries and dev texts all came from run A's cache
    # Killed after the step-3 checkpoint: later checkpoints and the model are gone.
    for folder in (b / "checkpoints").glob("step_*"):
        if folder.name != "step_00000003":
            shutil.rmtree(folder)
    (b / "checkpoints" / "latest").write_text("step_00000003\n")
    shutil.rmtree(b / "model")
    train.main(["--output-dir", str(b), "--resume"])
    wa = load_file(str(run_a / "model" / "3_Dense" / "model.safetensors"))
    wb = load_file(str(b / "model" / "3_Dense" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert_same_history(run_a, b, resumed_at=3)


def test_precomputed_embeddings_need_no_encoder(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(30, 32)).astype(np.float32)
    np.save(tmp_path / "corpus.npy", corpus)
    pairs = {"query": torch.randn(12, 32), "document": torch.from_numpy(corpus[:12])}
    save_file(pairs, str(tmp_path / "pairs.safetensors"))

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder must not be loaded")

    monkeypatch.setattr(mrl.train.adaptor, "build_encoder", no_encoder)
    out = tmp_path / "run"
    train.main(
        [
            "--adaptor", "mlp",
            "--adaptor-hidden", "16",
            "--adaptor-embeddings", str(tmp_path / "corpus.npy"),
            "--adaptor-pairs", str(tmp_path / "pairs.safetensors"),
            "--dims", *DIMS,
            "--max-steps", "4",
            "--batch-size", "10",
            "--adaptor-weights", "list=1",
            "--adaptor-neighbours", "4",
            "--adaptor-pair-batch-size", "4",
            "--output-dir", str(out),
        ]
    )  # fmt: skip
    assert not (out / "model").exists()
    recipe = json.loads((out / "adaptor" / "adaptor.json").read_text())
    assert recipe["kind"] == "mlp" and recipe["hidden"] == 16 and recipe["base_model"] is None
    assert recipe["neighbours"] == 4
    config = json.loads((out / "config.json").read_text())
    assert config["derived"]["steps_per_epoch"] == 15  # 2 anchors (+ 4 neighbours each) of 30 rows
    emb = torch.from_numpy(corpus)
    expected = final_adaptor(out, "mlp", 16)(emb).detach()
    torch.testing.assert_close(transform_embeddings(out / "adaptor", emb), expected)


def test_ordinary_training_keeps_a_loaded_head_frozen(run_a, beir, tmp_path):
    out = tmp_path / "finetune"
    pairs = write_csv(
        tmp_path / "pairs.csv", ["anchor", "positive"], [beir["docs"][i : i + 2] for i in range(0, 40, 2)]
    )
    args = ["--model", str(run_a / "model"), "--train-data", str(pairs), "--loss", "mnrl", "--eval-data"]
    train.main([*args, "--max-steps", "2", "--batch-size", "4", "--lr", "1e-3", "--output-dir", str(out)])
    before = load_file(str(run_a / "model" / "3_Dense" / "model.safetensors"))
    after = load_file(str(out / "model" / "3_Dense" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    trained = load_file(str(out / "model" / "model.safetensors"))
    original = load_file(str(run_a / "model" / "model.safetensors"))
    assert any(not torch.equal(trained[k], original[k]) for k in original)  # the encoder did train


def adaptor_flags(model: str, corpus: str, cache: str, out: str, change: dict, tmp: Path) -> list[str]:
    flags = {
        "--adaptor": ["linear"],
        "--model": [model],
        "--train-data": [corpus],
        "--embedding-cache": [cache],
        "--max-steps": ["2"],
        "--batch-size": ["8"],
        "--output-dir": [out],
    }
    flags.update({flag: [v.format(tmp=tmp) for v in values] for flag, values in change.items()})
    return [item for flag, values in flags.items() for item in (flag, *values)]


# Refused by the parser (or, for dims, by the model's width: the tiny model has 32 dims, 3 layers),
# which train.main prints as its one error line before writing anything (tests/test_faults.py).
SETTING_CASES = [
    ({"--adaptor-hidden": ["8"]}, "--adaptor-hidden"),
    ({"--adaptor-weights": ["sim=1", "nbrs=1"]}, "--adaptor-weights"),
    ({"--adaptor-weights": ["sim=0"]}, "--adaptor-weights"),
    ({"--adaptor": ["off"], "--adaptor-k": ["5"]}, "--adaptor-k"),
    ({"--dims": ["64", "8"]}, "--dims"),
    ({"--2d": ["random"]}, "--2d"),
    ({"--adaptor-neighbours": ["8"]}, "--adaptor-neighbours"),
    ({"--adaptor": ["mlp"], "--adaptor-init": ["pca"]}, "--adaptor-init"),
    ({"--adaptor": ["rotation"], "--adaptor-hidden": ["8"]}, "--adaptor-hidden"),
]


@pytest.mark.parametrize("change, expected", SETTING_CASES)
def test_bad_adaptor_settings_are_one_line(tmp_path, change, expected):
    argv = adaptor_flags("tiny", "corpus.jsonl", "cache", "out", change, tmp_path)
    with pytest.raises(ValueError) as info:
        validate_for_model(parse_config(argv), model_dim=32, num_layers=3)
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"--adaptor-embeddings": ["{tmp}/missing.npy"]}, "missing.npy"),
        ({"--train-data": ["{tmp}/missing.jsonl"]}, "missing.jsonl"),
        ({"--adaptor-pairs": ["{tmp}"]}, "qrels.tsv"),
        ({"--dims": ["64", "8"]}, "--dims"),  # train.main checks the dims against the loaded encoder
    ],
)
def test_bad_adaptor_input_is_one_line_and_writes_nothing(
    tiny_model_dir, beir, cache, tmp_path, capsys, change, expected
):
    out = tmp_path / "out"
    argv = adaptor_flags(str(tiny_model_dir), str(beir["corpus"]), str(cache), str(out), change, tmp_path)
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    assert info.value.code not in (0, None)
    assert expected in error_line(capsys)
    assert not out.exists()


def test_adaptor_mode_changes_only_the_defaults_not_given():
    from mrl.config import ADAPTOR_DEFAULTS, parse_config

    plain = parse_config(["--eval-data"])
    adapted = parse_config(["--adaptor", "linear"])
    assert plain.lr == 2e-5 and plain.adaptor_neighbours == 0
    for key, value in ADAPTOR_DEFAULTS.items():
        assert getattr(adapted, key) == value
    assert parse_config(["--adaptor", "mlp", "--lr", "1e-4", "--batch-size", "64"]).lr == 1e-4
    assert parse_config(["--adaptor", "mlp", "--batch-size", "64"]).batch_size == 64


@pytest.mark.parametrize("kind", ["linear", "rotation"])
def test_pca_start_through_train(tmp_path, kind):
    """--adaptor-init pca: step 0 is the corpus' uncentred PCA rotation (numpy SVD reference), the
    recipe records it, and training moves on from there."""
    rng = np.random.default_rng(3)
    corpus = (rng.normal(size=(40, 16)) * np.linspace(3, 0.1, 16)).astype(np.float32)
    np.save(tmp_path / "corpus.npy", corpus)
    common = ["--adaptor", kind, "--adaptor-embeddings", str(tmp_path / "corpus.npy"),
              "--adaptor-init", "pca", "--dims", "16", "8", "4", "--batch-size", "10",
              "--adaptor-weights", "list=1"]  # fmt: skip
    start = train.main([*common, "--max-steps", "1", "--lr", "1e-12", "--output-dir", str(tmp_path / "a")])
    unit = corpus / np.linalg.norm(corpus, axis=-1, keepdims=True)
    _, _, vt = np.linalg.svd(unit.astype(np.float64), full_matrices=False)
    out = transform_embeddings(start / "adaptor", torch.from_numpy(corpus)).double().numpy()
    np.testing.assert_allclose(np.abs(out), np.abs(unit @ vt.T), atol=1e-4)
    assert json.loads((start / "adaptor" / "adaptor.json").read_text())["init"] == "pca"
    trained = train.main(
        [
            *common,
            "--max-steps",
            "5",
            "--lr",
            "1e-2",
            "--save-every",
            "2",
            "--output-dir",
            str(tmp_path / "b"),
        ]
    )
    moved = transform_embeddings(trained / "adaptor", torch.from_numpy(corpus)).double().numpy()
    assert np.abs(moved - out).max() > 1e-3
    # Resumed from the step-4 checkpoint, the run continues from the trained weights, not from a
    # fresh PCA start: the final adaptor is bitwise the uninterrupted one.
    resumed = resume_from_step(trained, 4, tmp_path / "c")
    assert "resuming at step 4" in (resumed / "train.log").read_text()
    a = load_file(str(trained / "adaptor" / "1_Dense" / "model.safetensors"))
    b = load_file(str(resumed / "adaptor" / "1_Dense" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rotation_through_train(tmp_path):
    """--adaptor rotation: the saved Dense layer is orthogonal with a zero bias, so every full-width
    cosine of the corpus is the raw one (numpy, float64) while the prefixes moved; resumed from a
    checkpoint, the final rotation is bitwise the uninterrupted one. (The PCA start itself is
    checked in test_pca_start_through_train.)"""
    rng = np.random.default_rng(4)
    corpus = (rng.normal(size=(40, 16)) * np.linspace(3, 0.1, 16)).astype(np.float32)
    np.save(tmp_path / "corpus.npy", corpus)
    common = ["--adaptor", "rotation", "--adaptor-embeddings", str(tmp_path / "corpus.npy"),
              "--adaptor-init", "pca", "--dims", "16", "8", "4", "--batch-size", "10",
              "--adaptor-weights", "list=1", "--max-steps", "6", "--lr", "3e-2",
              "--save-every", "2"]  # fmt: skip
    trained = train.main([*common, "--output-dir", str(tmp_path / "a")])
    dense = load_file(str(trained / "adaptor" / "1_Dense" / "model.safetensors"))
    q = dense["linear.weight"].double().numpy()
    np.testing.assert_allclose(q @ q.T, np.eye(16), atol=1e-5)
    assert not dense["linear.bias"].any()
    assert json.loads((trained / "adaptor" / "adaptor.json").read_text())["kind"] == "rotation"
    unit = corpus.astype(np.float64) / np.linalg.norm(corpus, axis=-1, keepdims=True)
    out = transform_embeddings(trained / "adaptor", torch.from_numpy(corpus)).double().numpy()
    np.testing.assert_allclose(out @ out.T, unit @ unit.T, atol=1e-5)
    _, _, vt = np.linalg.svd(unit, full_matrices=False)
    assert np.abs(np.abs(out[:, :4]) - np.abs(unit @ vt[:4].T)).max() > 1e-3  # moved from PCA's prefix

    resumed = resume_from_step(trained, 4, tmp_path / "c")
    assert "resuming at step 4" in (resumed / "train.log").read_text()
    again = load_file(str(resumed / "adaptor" / "1_Dense" / "model.safetensors"))
    assert all(torch.equal(dense[k], again[k]) for k in dense)

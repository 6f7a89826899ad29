"""ONNX export of a (layers, dim) cut (mrl/onnx_export.py), run by ONNX Runtime.

References: the PyTorch `Encoder.encode` at the same cell (what the export promises to equal), and
for the headed model an embedding computed here by hand from `transformers` outputs (block k's
hidden states, mean-pooled, through ``(I + W) x + b`` and the Dense head, sliced, normalised).
Spearman is computed here with scipy. Tiny random BERTs for the plumbing; the integration tests
export the real all-MiniLM-L6-v2 and compare on the STS-B test sentences.

Skipped as a whole where the extra (``pip install 'mrl[onnx]'``) is absent; CI installs it.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'mrl[onnx]')")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed (pip install 'mrl[onnx]')")
import onnx  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from mrl import onnx_export  # noqa: E402
from mrl.heads import dense_head  # noqa: E402
from mrl.model import Encoder  # noqa: E402
from mrl.onnx_export import OnnxEncoder, export_cut, main  # noqa: E402
from tests.conftest import make_tiny_model  # noqa: E402

# Different lengths (the longest beyond the export example's), so every batch has padding.
TEXTS = [
    "the cat sat on the mat",
    "a dog",
    "the man is playing the guitar in the park, and a woman plays with a dog on the mat",
    "hi",
    "a woman runs",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A plain tiny BERT (3 blocks, 32 dims) and a headed one: random exit heads at depths 1, 2
    and 3 (the last written as the first Dense, as `Encoder.save` does) and a Dense head 32 -> 24."""
    root = tmp_path_factory.mktemp("onnx_models")
    plain = make_tiny_model(root / "plain")
    encoder = Encoder(plain)
    encoder.add_exit_heads([1, 2, 3])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for head in encoder.exit_heads.values():
            head.linear.weight.copy_(0.2 * torch.randn(32, 32, generator=generator))
            head.linear.bias.copy_(0.5 * torch.randn(32, generator=generator))
    weight, bias = torch.randn(24, 32, generator=generator), torch.randn(24, generator=generator)
    encoder.attach_head(dense_head(weight, bias, normalize_input=False))
    encoder.save(root / "headed")
    return {"plain": plain, "headed": root / "headed", "root": root}


# (model, layers, dim): the plain model whole (and int8); the headed one at every depth, so each
# depth's exit head is in play (depth 3's is stored as the first Dense); a plain shallow cell is
# test_no_normalize_gives_the_raw_prefix's.
CELLS = [("plain", 3, 32), ("headed", 1, 24), ("headed", 2, 16), ("headed", 3, 24)]


@pytest.fixture(scope="module")
def exported(models):
    """Cells exported once: (model, layers, dim) -> folder."""
    cells = {}
    for name, layers, dim in CELLS:
        folder = models["root"] / f"onnx-{name}-{layers}x{dim}"
        export_cut(Encoder(models[name]), folder, layers, dim, int8=(name, layers) == ("plain", 3), threads=1)
        cells[(name, layers, dim)] = folder
    return cells


@pytest.mark.parametrize("cell", CELLS)
def test_onnx_runtime_equals_the_pytorch_encoder_at_each_cell(models, exported, cell):
    name, layers, dim = cell
    onnx_model = OnnxEncoder(exported[cell], threads=1)
    reference = Encoder(models[name]).encode(TEXTS, layers=layers, dim=dim).numpy()  # (5, dim)
    # Dynamic axes: one batch of 5 lengths, batches of 1 (each its own length), a batch of 2.
    for batch_size in (5, 1, 2):
        emb = onnx_model.encode(TEXTS, batch_size=batch_size)
        assert emb.shape == (len(TEXTS), dim)
        assert cosines(emb, reference).min() >= 0.99999
        np.testing.assert_allclose(emb, reference, atol=1e-5)
    assert onnx_model.input_names == ["input_ids", "attention_mask", "token_type_ids"]


def test_the_headed_graph_applies_depth_ks_exit_head_then_the_head(models, exported):
    """By hand from transformers: block 2's mean-pooled states, (I + W2) x + b2, the Dense head."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    folder = models["headed"]
    model, tokenizer = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    features = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**features, output_hidden_states=True).hidden_states[2]  # (5, S, 32)
    mask = features["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)  # (5, 32)
    heads = load_file(str(folder / "exit_heads.safetensors"))
    x = pooled + pooled @ heads["2.linear.weight"].T + heads["2.linear.bias"]  # depth 2's exit head
    dense = load_file(str(next(folder.glob("3_Dense")) / "model.safetensors"))  # after 2_Dense (depth 3)
    x = x @ dense["linear.weight"].T + dense["linear.bias"]  # (5, 24)
    x = torch.nn.functional.normalize(x[:, :16], dim=-1).numpy()
    emb = OnnxEncoder(exported[("headed", 2, 16)], threads=1).encode(TEXTS)
    np.testing.assert_allclose(emb, x, atol=1e-5)


def test_the_graph_holds_only_the_first_k_blocks(exported):
    """Each BERT block has one GELU (its feed-forward activation), and nothing else does: a graph
    of all 3 blocks sliced afterwards would have 3. (Weight names say nothing: the exporter folds
    the transposed matrices into new constants.)"""
    for (_, layers, _), folder in exported.items():
        ops = [node.op_type for node in onnx.load(folder / "model.onnx").graph.node]
        assert ops.count("Gelu") == layers, folder.name


def test_the_folder_has_tokenizer_cut_and_card_and_the_cards_snippet_runs(models, exported):
    folder = exported[("plain", 3, 32)]
    cut = json.loads((folder / "onnx_cut.json").read_text())
    assert (cut["layers"], cut["dim"], cut["pooling"], cut["normalize"]) == (3, 32, "mean", True)
    assert cut["max_seq_length"] == Encoder(models["plain"]).max_seq_length
    assert cut["parity"]["onnx"]["cosine_min"] >= 0.99999 and "onnx_int8" in cut["parity"]
    assert (folder / "model_int8.onnx").is_file() and (folder / "tokenizer_config.json").is_file()
    card = (folder / "README.md").read_text()
    assert "Parity at export" in card and "unit vectors" in card
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "<card snippet>", "exec"), namespace)  # noqa: S102 (the card's own code)
    reference = Encoder(models["plain"]).encode(namespace["texts"]).numpy()
    np.testing.assert_allclose(namespace["emb"], reference, atol=1e-5)


def test_the_int8_variant_runs_close_to_full_precision(models, exported):
    folder = exported[("plain", 3, 32)]
    fp32 = OnnxEncoder(folder, threads=1).encode(TEXTS)
    int8 = OnnxEncoder(folder, int8=True, threads=1).encode(TEXTS)
    assert int8.shape == fp32.shape and np.isfinite(int8).all()
    assert cosines(int8, fp32).min() > 0.9  # quantised weights: close, not equal
    assert (folder / "model_int8.onnx").stat().st_size < (folder / "model.onnx").stat().st_size


def test_no_normalize_gives_the_raw_prefix(models, tmp_path):
    export_cut(Encoder(models["plain"]), tmp_path / "raw", 2, 16, normalize=False, threads=1)
    emb = OnnxEncoder(tmp_path / "raw", threads=1).encode(TEXTS)
    reference = Encoder(models["plain"]).encode(TEXTS, layers=2, dim=16, normalize=False).numpy()
    np.testing.assert_allclose(emb, reference, atol=1e-5, rtol=1e-5)
    assert not np.allclose(np.linalg.norm(emb, axis=-1), 1)


# ------------------------------------------------------------------------- the command line


def run_cli(argv, capsys) -> tuple[int, str]:
    """(exit code, stderr) of ``python -m mrl.onnx_export ARGV`` run in-process."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


def staging_left(parent) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".") and "partial" in p.name]


def test_cli_writes_and_reports_and_scores_an_sts_file(models, tmp_path, capsys):
    rows = [(a, b, float(s)) for a, b, s in zip(TEXTS, TEXTS[1:] + TEXTS[:1], (0.1, 0.9, 0.4, 0.7, 0.2))]
    sts = tmp_path / "sts.csv"
    with open(sts, "w", newline="") as f:
        csv.writer(f).writerows([("sentence1", "sentence2", "score"), *rows])
    code, err = run_cli([models["plain"], tmp_path / "out", "--layers", "2", "--dim", "8", "--int8",
                         "--sts", sts], capsys)  # fmt: skip
    assert code == 0, err
    cut = json.loads((tmp_path / "out" / "onnx_cut.json").read_text())
    assert cut["parity"]["texts"] == 10
    # Spearman of the PyTorch encoder's pairs, computed here.
    emb = Encoder(models["plain"]).encode([r[0] for r in rows] + [r[1] for r in rows], layers=2, dim=8)
    expected = 100 * spearmanr([r[2] for r in rows], (emb[:5] * emb[5:]).sum(-1).numpy()).statistic
    assert cut["parity"]["spearman"]["pytorch"] == pytest.approx(expected, abs=1e-6)
    assert cut["parity"]["spearman"]["onnx"] == pytest.approx(expected, abs=1e-3)
    assert "onnx_int8" in cut["parity"]["spearman"]
    assert "| Spearman |" in (tmp_path / "out" / "README.md").read_text()


def test_an_existing_out_is_kept_unless_overwrite_and_a_run_folder_is_its_model(models, tmp_path, capsys):
    run = tmp_path / "run"  # a training run folder: MODEL stands for RUN/model, as in eval.py
    shutil.copytree(models["plain"], run / "model")
    (run / "run.json").write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("earlier results")
    code, err = run_cli([run, out, "--dim", "8"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--overwrite" in err
    assert (out / "mine.txt").read_text() == "earlier results"
    code, err = run_cli([run, out, "--dim", "8", "--overwrite"], capsys)
    assert code == 0, err
    assert (out / "model.onnx").is_file() and not (out / "mine.txt").exists()
    assert json.loads((out / "onnx_cut.json").read_text())["source"] == str(run / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]  # no staging or replaced folder


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--layers", "4"], "--layers 4: the model has blocks 1..3"),
        (["--layers", "0"], "--layers 0: must be at least 1"),
        (["--dim", "33"], "--dim 33: the model's embedding has 1..32 dims"),
        (["--sts", "missing.csv"], "--sts missing.csv"),
        (["--opset", "-1"], "--opset -1: must be at least 1"),
    ],
)
def test_bad_flags_are_one_line_and_create_nothing(models, tmp_path, capsys, monkeypatch, extra, says):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli([models["plain"], tmp_path / "out", *extra], capsys)
    assert code == 2 and says in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() and not staging_left(tmp_path)


def test_a_missing_model_is_one_line(tmp_path, capsys):
    code, err = run_cli([tmp_path / "nothing", tmp_path / "out"], capsys)
    assert code == 2 and "--model" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_parity_failure_refuses_and_leaves_what_was_there(models, tmp_path, capsys, monkeypatch):
    """Refused after the whole export ran: the earlier OUT (even with --overwrite) is as it was,
    and the staging folder is gone."""
    monkeypatch.setattr(onnx_export, "PARITY_MIN_COSINE", 1.5)  # no embedding can pass
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("earlier results")
    code, err = run_cli([models["plain"], kept, "--dim", "8", "--overwrite"], capsys)
    assert code == 2 and "not written" in err and err.count("\n") == 1, err
    assert [p.name for p in kept.iterdir()] == ["mine.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]


def test_without_the_extra_the_cli_names_it(models, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    code, err = run_cli([models["plain"], tmp_path / "out"], capsys)
    assert code == 2 and "pip install 'mrl[onnx]'" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- the real model


def stsb_test(shared_data) -> tuple[list[str], list[str], list[float]]:
    with open(shared_data / "stsb" / "en-test.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], [float(r["score"]) for r in rows]


@pytest.mark.integration
def test_real_model_every_stsb_test_sentence_at_6x384_and_int8_spearman(minilm_dir, shared_data, tmp_path):
    """all-MiniLM-L6-v2 at (6, 384): every STS-B test sentence (2 x 1,379) within cosine 0.99999
    of PyTorch; the int8 variant's Spearman within 2 points of full precision."""
    first, second, gold = stsb_test(shared_data)
    texts = first + second
    encoder = Encoder(minilm_dir)
    export_cut(encoder, tmp_path / "cut", 6, 384, int8=True, threads=1)
    reference = encoder.encode(texts, batch_size=32).numpy()  # (2758, 384)
    fp32 = OnnxEncoder(tmp_path / "cut", threads=1).encode(texts)
    int8 = OnnxEncoder(tmp_path / "cut", int8=True, threads=1).encode(texts)
    assert cosines(fp32, reference).min() >= 0.99999

    def spearman(emb):
        return 100 * spearmanr(gold, cosines(emb[: len(gold)], emb[len(gold) :])).statistic

    print(f"Spearman x100 at (6, 384): PyTorch {spearman(reference):.2f}, ONNX {spearman(fp32):.2f}, "
          f"int8 {spearman(int8):.2f}")  # fmt: skip
    assert abs(spearman(fp32) - spearman(reference)) < 0.01
    assert spearman(int8) >= spearman(fp32) - 2


@pytest.mark.integration
def test_real_model_at_2x64_on_a_subset_of_stsb_test(minilm_dir, shared_data, tmp_path):
    """(2, 64): the first 400 STS-B test pairs (800 sentences; the full set runs at (6, 384))."""
    first, second, _ = stsb_test(shared_data)
    texts = first[:400] + second[:400]
    encoder = Encoder(minilm_dir)
    export_cut(encoder, tmp_path / "cut", 2, 64, threads=1)
    reference = encoder.encode(texts, batch_size=32, layers=2, dim=64).numpy()
    emb = OnnxEncoder(tmp_path / "cut", threads=1).encode(texts)
    assert emb.shape == (800, 64)
    assert cosines(emb, reference).min() >= 0.99999

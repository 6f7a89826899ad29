"""eval.py --mteb (mrl/evals/mteb.py): mteb's own evaluators against eval.py's.

The references are eval.py's own sections of the same run: ``--beir`` (nDCG@10 of
`mrl.retrieval`) and ``--sts`` (Spearman of `mrl.evaluation`) on the same files, at every
(layer, dim) cell. With the real all-MiniLM-L6-v2 on the shared SciFact folder, mteb's nDCG@10
(its search and pytrec_eval) equals eval.py's to within 0.01 (1 point x100) at every dim, and the
difference is printed. Named MTEB tasks need the hub: offline they are refused in one line.

Everything but the missing-extra test is skipped where mteb is not installed (pip install
'mrl[mteb]'); CI installs it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval.py lives in the repo root
import eval as eval_script  # noqa: E402
from mrl.evals.mteb import CellEncoder, task_prompt, with_prompt  # noqa: E402
from mrl.model import Encoder  # noqa: E402
from tests.fixture_text import distinct_sentences, write_csv  # noqa: E402
from tests.test_retrieval import write_beir  # noqa: E402
from tests.test_train import one_thread  # noqa: E402,F401 (autouse: one torch thread)


@pytest.fixture(scope="module")
def mteb():
    return pytest.importorskip("mteb", reason="the mteb extra is not installed (pip install 'mrl[mteb]')")


class EncodeOnce(Encoder):
    """An Encoder that encodes each text once per process: a later call for the same text gets the
    vectors the first call computed. eval.py then runs --beir and --mteb (or --sts and --mteb) on
    the same folder with one forward pass, and both score the vectors either would have computed."""

    memo: dict = {}

    def encode(self, texts, batch_size=64, all_layers=False, show_progress=False, **kwargs):
        assert kwargs == {"normalize": False}, kwargs  # what eval.py's encode_layers asks for
        key = (self.name_or_path, self.max_seq_length, all_layers)
        new = [t for t in dict.fromkeys(texts) if (*key, t) not in self.memo]
        if new:
            out = super().encode(new, batch_size, all_layers, show_progress, **kwargs)  # (..., n, D)
            self.memo.update({(*key, t): out[..., i, :] for i, t in enumerate(new)})
        return torch.stack([self.memo[(*key, t)] for t in texts], dim=-2)


def pairs_of(records: list[dict], metric: str, scale: float = 1.0) -> dict[tuple, float]:
    return {
        (r["layer"], r["dim"]): scale * r[metric]
        for r in records
        if r.get("precision", "float32") == "float32"
    }


# --------------------------------------------------------------------------------------------
# Prompts: the task's own, per prompt type
# --------------------------------------------------------------------------------------------


def test_task_prompts_by_type(mteb):
    from mteb.types import PromptType

    def meta(prompt):
        return mteb.TaskMetadata(
            name="t", dataset={"path": "p", "revision": "r"}, description="d", type="Retrieval",
            eval_langs=[], main_score="ndcg_at_10", prompt=prompt,
        )  # fmt: skip

    split = meta({"query": "query: ", "document": "passage: "})
    assert task_prompt(split, PromptType.query) == "query: "
    assert task_prompt(split, PromptType.document) == "passage: "
    assert task_prompt(split, None) == ""  # a dict names query/document texts only
    assert task_prompt(meta({"query": "Find it"}), PromptType.document) == ""
    instruction = meta("Retrieve similar text.")  # a string: queries and symmetric texts, not documents
    assert [task_prompt(instruction, t) for t in (PromptType.query, None, PromptType.document)] == [
        "Retrieve similar text.",
        "Retrieve similar text.",
        "",
    ]
    assert task_prompt(meta(None), PromptType.query) == ""
    assert with_prompt("query: ", "x") == "query: x" and with_prompt("Find it", "x") == "Find it x"
    assert with_prompt("", "x") == "x"


def test_a_named_task_s_prompt_reaches_the_encoder(mteb):
    """SciFact's own metadata (no data needed): its query prompt goes before every query, the
    documents get none, and the vectors come back sliced to the cell's dim and unit length."""
    from mteb.types import PromptType

    metadata = mteb.get_task("SciFact").metadata
    assert isinstance(metadata.prompt, dict) and metadata.prompt.get("query")
    seen = []

    def vectors(texts):
        seen.extend(texts)
        return torch.arange(1.0, 1.0 + 8 * len(texts)).reshape(len(texts), 8)

    cell = CellEncoder(vectors, dim=4)
    batches = [{"text": ["a claim", "another"]}, {"text": ["third"]}]
    out = cell.encode(batches, task_metadata=metadata, hf_split="test", hf_subset="default",
                      prompt_type=PromptType.query)  # fmt: skip
    assert seen == [with_prompt(metadata.prompt["query"], t) for t in ("a claim", "another", "third")]
    assert out.shape == (3, 4)
    expected = torch.nn.functional.normalize(vectors(["x", "y", "z"])[:, :4], dim=-1).numpy()
    assert abs(out - expected).max() < 1e-6
    seen.clear()
    cell.encode(batches, task_metadata=metadata, hf_split="test", hf_subset="default",
                prompt_type=PromptType.document)  # fmt: skip
    assert seen == ["a claim", "another", "third"]


# --------------------------------------------------------------------------------------------
# eval.py end to end on a tiny model: JSON, console, card, equal to --beir and --sts
# --------------------------------------------------------------------------------------------


@pytest.fixture
def local_sets(tmp_path):
    texts = distinct_sentences(90, seed=5)
    docs = [(f"d{i}", "", " ".join(texts[i : i + 2])) for i in range(60)]
    queries = [(f"q{i}", texts[60 + i]) for i in range(15)]
    qrels = [f"q{i}\td{(7 * i) % 60}\t{1 + i % 2}" for i in range(15)] + [
        f"q{i}\td{i + 40}\t1" for i in range(8)
    ]
    folder = write_beir(tmp_path / "toybeir", docs, queries, qrels)
    rows = [[texts[i], texts[i + 30], round((i * 37 % 11) / 10, 2)] for i in range(30)]
    sts = write_csv(tmp_path / "toysts.csv", ["sentence1", "sentence2", "score"], rows)
    return folder, sts


def test_eval_py_mteb_equals_beir_and_sts_in_json_console_and_card(
    mteb, tiny_model_dir, local_sets, tmp_path, capsys
):
    folder, sts = local_sets
    model = tmp_path / "model"
    Encoder(tiny_model_dir).save(model, {"dims": [32, 8]})  # a model folder saved by mrl
    out = tmp_path / "eval.json"
    eval_script.main(
        ["--model", str(model), "--beir", str(folder), "--sts", str(sts), "--mteb", str(folder), str(sts),
         "--layers", "1", "3", "--query-prefix", "query: ", "--doc-prefix", "passage: ",
         "--json", str(out), "--add-to-card"]
    )  # fmt: skip
    result = json.loads(out.read_text())
    beir, mteb_beir = result["retrieval"]["toybeir"], result["mteb"]["toybeir"]
    assert mteb_beir["task"] == "toybeir" and mteb_beir["type"] == "Retrieval"
    assert mteb_beir["split"] == "test" and mteb_beir["main_score"] == "ndcg_at_10"
    assert mteb_beir["prompts"] == {"query": "query: ", "document": "passage: "}  # eval.py's prefixes
    assert mteb_beir["texts"] == 60 + 15
    cells = [(r["layer"], r["dim"]) for r in mteb_beir["records"]]
    assert cells == [(1, 32), (1, 8), (3, 32), (3, 8)]  # the model's dims, the given layers
    ours, theirs = pairs_of(beir["records"], "ndcg@10", 100), pairs_of(mteb_beir["records"], "main_score")
    assert ours.keys() == theirs.keys()
    for cell in ours:
        assert theirs[cell] == pytest.approx(ours[cell], abs=1e-3), cell
    sts_ours = pairs_of(result["sets"]["toysts"]["records"], "spearman")
    mteb_sts = result["mteb"]["toysts"]
    assert mteb_sts["type"] == "STS" and mteb_sts["main_score"] == "cosine_spearman"
    for cell, value in pairs_of(mteb_sts["records"], "main_score").items():
        assert value == pytest.approx(sts_ours[cell], abs=1e-3), cell
    retention = {(r["layer"], r["dim"]): r["retention"] for r in mteb_sts["records"]}
    assert retention[(3, 8)] == pytest.approx(theirs_sts(mteb_sts, 3, 8) / theirs_sts(mteb_sts, 3, 32))

    heading = "toybeir (MTEB Retrieval task toybeir, split test, main score ndcg_at_10, mteb "
    r = next(r for r in mteb_beir["records"] if (r["layer"], r["dim"]) == (3, 8))
    row = f"| 3 | {next(x for x in mteb_beir['records'] if x['layer'] == 3)['main_score']:.2f} (100.0%) | "
    row += f"{r['main_score']:.2f} ({100 * r['retention']:.1f}%) |"
    assert heading in capsys.readouterr().out
    assert row in out.with_suffix(".md").read_text()
    card = (model / "README.md").read_text(encoding="utf-8")
    section = card[
        card.index("<!-- mrl:eval mteb toybeir -->") : card.index("<!-- /mrl:eval mteb toybeir -->")
    ]
    assert heading in section and row in section
    assert "<!-- mrl:eval mteb toysts -->" in card and "main score cosine_spearman" in card


def theirs_sts(entry: dict, layer: int, dim: int) -> float:
    return next(r["main_score"] for r in entry["records"] if (r["layer"], r["dim"]) == (layer, dim))


# --------------------------------------------------------------------------------------------
# One line for bad input
# --------------------------------------------------------------------------------------------


def one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit):
        eval_script.main(argv)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_unknown_task_name_is_one_line(mteb, tiny_model_dir, capsys):
    err = one_line_error(capsys, ["--model", str(tiny_model_dir), "--mteb", "NoSuchTask"])
    assert "--mteb NoSuchTask: not a BEIR folder, an STS file or an MTEB task name" in err


def test_named_task_without_the_hub_is_refused_in_one_line(mteb, tiny_model_dir, capsys, monkeypatch):
    """A real failure to reach the hub (its address made a closed local port, as mrl/hub.py's
    probe reads it), whether or not this machine is online: nothing is retried or encoded."""
    from mrl.hub import offline_reason

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY",
                 "http_proxy", "ALL_PROXY", "all_proxy"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    offline_reason.cache_clear()
    try:
        err = one_line_error(capsys, ["--model", str(tiny_model_dir), "--mteb", "SciFact"])
    finally:
        offline_reason.cache_clear()
    assert "--mteb SciFact: mteb reads this task's data (mteb/scifact) from the Hugging Face hub" in err
    assert "cannot be reached (127.0.0.1:9 is unreachable" in err and "give a BEIR folder" in err


def test_bad_local_sets_are_one_line(mteb, tiny_model_dir, local_sets, tmp_path, capsys):
    folder, _ = local_sets
    model = str(tiny_model_dir)
    err = one_line_error(capsys, ["--model", model, "--mteb", str(folder), "--split", "dev"])
    assert err.startswith("error: --mteb: ") and "dev.tsv" in err
    missing = tmp_path / "missing.csv"
    assert str(missing) in one_line_error(capsys, ["--model", model, "--mteb", str(missing)])
    flat = write_csv(tmp_path / "flat.csv", ["sentence1", "sentence2", "score"], [["a", "b", 1]] * 4)
    assert "--mteb" in one_line_error(capsys, ["--model", model, "--mteb", str(flat)])


def test_without_the_extra_it_says_how_to_install(tiny_model_dir, local_sets, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mteb", None)  # import mteb raises ImportError
    folder, _ = local_sets
    err = one_line_error(capsys, ["--model", str(tiny_model_dir), "--mteb", str(folder)])
    assert f"--mteb {folder}: needs the mteb extra (pip install 'mrl[mteb]')" in err


# --------------------------------------------------------------------------------------------
# Integration: all-MiniLM-L6-v2, mteb's evaluators vs eval.py's on the shared data
# --------------------------------------------------------------------------------------------

# Both sections score the same vectors, so the length only sets the cost: SciFact's 5,183 abstracts
# average 240 tokens. At 128 tokens this test took 904 s on the 2-core machine shared with other
# jobs (load ~9; about 400 CPU-seconds), at 64 it took 335 s (load ~5) and 181 s (load ~3.5); the
# differences were at most 0.0005 points x100 at either length.
SCIFACT_MAX_LENGTH = 64


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    torch.set_num_threads(threads)


@pytest.mark.integration
def test_scifact_mteb_ndcg_at_10_equals_eval_py_at_every_dim(
    mteb, minilm_dir, shared_data, tmp_path, monkeypatch, two_threads
):
    monkeypatch.setattr(eval_script, "Encoder", EncodeOnce)  # one forward pass for both sections
    folder = shared_data / "scifact"
    out = tmp_path / "scifact.json"
    dims = [384, 256, 128, 64, 32]
    eval_script.main(
        ["--model", str(minilm_dir), "--beir", str(folder), "--mteb", str(folder), "--layers", "3", "6",
         "--dims", *map(str, dims), "--max-seq-length", str(SCIFACT_MAX_LENGTH), "--json", str(out)]
    )  # fmt: skip
    result = json.loads(out.read_text())
    ours = pairs_of(result["retrieval"]["scifact"]["records"], "ndcg@10", 100)
    theirs = pairs_of(result["mteb"]["scifact"]["records"], "main_score")
    assert ours.keys() == theirs.keys() == {(layer, d) for layer in (3, 6) for d in dims}
    diffs = {cell: theirs[cell] - ours[cell] for cell in ours}
    print("mteb - eval.py nDCG@10 (x100) per (layer, dim):", {c: round(d, 4) for c, d in diffs.items()})
    assert all(abs(d) <= 1.0 for d in diffs.values()), diffs  # 0.01 of nDCG@10
    assert ours[(6, 384)] > 40  # all-MiniLM-L6-v2: 64.5 at 256 tokens, 62.4 at 128; random: ~0.5
    assert result["mteb"]["scifact"]["texts"] == 5183 + 300


@pytest.mark.integration
def test_stsb_subset_mteb_spearman_equals_eval_py(mteb, minilm_dir, shared_data, tmp_path, monkeypatch):
    lines = (shared_data / "stsb" / "en-test.csv").read_text(encoding="utf-8").splitlines()
    subset = tmp_path / "stsb-300.csv"
    subset.write_text("\n".join(lines[:301]) + "\n", encoding="utf-8")
    monkeypatch.setattr(eval_script, "Encoder", EncodeOnce)
    out = tmp_path / "stsb.json"
    eval_script.main(
        ["--model", str(minilm_dir), "--sts", str(subset), "--mteb", str(subset),
         "--dims", "384", "128", "32", "--json", str(out)]
    )  # fmt: skip
    result = json.loads(out.read_text())
    ours = pairs_of(result["sets"]["stsb-300"]["records"], "spearman")
    theirs = pairs_of(result["mteb"]["stsb-300"]["records"], "main_score")
    assert ours.keys() == theirs.keys() == {(6, d) for d in (384, 128, 32)}
    for cell in ours:
        assert theirs[cell] == pytest.approx(ours[cell], abs=1e-3), cell
    assert ours[(6, 384)] > 75

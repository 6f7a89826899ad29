"""The model card (RUN/model/README.md): front matter, dev table, recipe, runnable usage snippets.

The numbers in the card are checked against eval_dev.json and eval.py's JSON; the transformers
snippet is executed as written and must give the Encoder's embeddings (it is a second, independent
implementation of our pooling and slicing).
"""

from __future__ import annotations

import ast
import json
import random
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train.py / eval.py live in the repo root
import eval as eval_script  # noqa: E402
import train  # noqa: E402
from mrl import card as card_module  # noqa: E402
from mrl import objectives  # noqa: E402
from mrl.card import EXAMPLE_SENTENCES, build_card, guess_language, write_card  # noqa: E402
from mrl.config import TrainConfig  # noqa: E402
from mrl.model import Encoder  # noqa: E402
from tests.fixture_text import distinct_sentences, write_csv  # noqa: E402
from tests.test_train import one_thread  # noqa: E402,F401 (autouse: one torch thread)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("card-data")
    rng = random.Random(1)
    texts = distinct_sentences(120, seed=7)
    rows = [[texts[2 * i], texts[2 * i + 1], round(rng.random(), 3)] for i in range(60)]
    return {
        "train": write_csv(folder / "train.csv", ["sentence1", "sentence2", "score"], rows[:40]),
        "dev": write_csv(folder / "sts-dev.csv", ["sentence1", "sentence2", "score"], rows[40:]),
        "test": write_csv(folder / "sts-test.csv", ["sentence1", "sentence2", "score"], rows[:20]),
    }


@pytest.fixture(scope="module")
def base_with_card(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with a card of its own that states a license and a language."""
    folder = tmp_path_factory.mktemp("base") / "tiny"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "README.md").write_text(
        "---\nlanguage: fr\nlicense: apache-2.0\ntags:\n- sentence-transformers\n---\n# tiny\n",
        encoding="utf-8",
    )
    return folder


def train_run(model: Path, files: dict[str, Path], out: Path, *extra: str) -> Path:
    return train.main(
        [
            "--model", str(model), "--train-data", str(files["train"]), "--eval-data", str(files["dev"]),
            "--max-steps", "3", "--batch-size", "8", "--dims", "32", "16", "8", "--log-every", "1",
            "--output-dir", str(out), *extra,
        ]
    )  # fmt: skip


@pytest.fixture(scope="module")
def run_2d(base_with_card, files, tmp_path_factory) -> Path:
    return train_run(base_with_card, files, tmp_path_factory.mktemp("runs") / "card-2d", "--2d", "random")


def front_matter(card: str) -> list[str]:
    """The lines between the opening and the closing ``---``."""
    lines = card.splitlines()
    assert lines[0] == "---"
    return lines[1 : lines.index("---", 1)]


def parse_key_values(lines: list[str]) -> dict:
    """The documented format, read independently: ``key: <JSON value>`` per line."""
    meta = {}
    for line in lines:
        match = re.fullmatch(r"([a-z_]+): (.+)", line)
        assert match, f"not a key: value line: {line!r}"
        meta[match.group(1)] = json.loads(match.group(2))
    return meta


def python_block(card: str, heading: str) -> str:
    """The first ```python block after ``heading``."""
    start = card.index(heading)
    match = re.search(r"```python\n(.*?)```", card[start:], re.S)
    return match.group(1)


def test_front_matter_is_key_value_lines_and_valid_yaml(run_2d, base_with_card):
    card = (run_2d / "model" / "README.md").read_text(encoding="utf-8")
    lines = front_matter(card)
    meta = parse_key_values(lines)
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load("\n".join(lines)) == meta  # any YAML reader agrees
    assert meta["library_name"] == "sentence-transformers"
    assert meta["pipeline_tag"] == "sentence-similarity"
    assert {"matryoshka", "2d-matryoshka", "cosent"} <= set(meta["tags"])
    assert meta["license"] == "apache-2.0"  # inherited from the base model's card
    assert meta["language"] == ["en"]  # told from the training texts, which beat the base card's "fr"
    assert "base_model" not in meta  # a local folder is not a hub id ...
    assert f"the local folder `{base_with_card}`" in card  # ... and the card says so


def test_dev_table_numbers_equal_eval_dev_json(run_2d):
    card = (run_2d / "model" / "README.md").read_text(encoding="utf-8")
    dev = json.loads((run_2d / "eval_dev.json").read_text())["sts-dev"]
    section = card[card.index("### sts-dev (dev") : card.index("## Training")]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    heads = [re.fullmatch(r"d=(\d+) \((\d+) B\)", cell.strip()) for cell in rows[0].strip("|").split("|")[1:]]
    dims = [int(head[1]) for head in heads]
    assert [int(head[2]) for head in heads] == [4 * d for d in dims]  # float32 dev vectors: 4 bytes a dim
    cells = {}
    for row in rows[1:]:
        layer, *values = (cell.strip() for cell in row.strip("|").split("|"))
        for dim, value in zip(dims, values):
            spearman, retention = re.fullmatch(r"([-\d.]+) \(([-\d.]+)%\)", value).groups()
            cells[int(layer), dim] = (float(spearman), float(retention))
    assert set(cells) == {(r["layer"], r["dim"]) for r in dev}  # 3 layers x 3 dims, nothing else
    for r in dev:
        assert cells[r["layer"], r["dim"]] == (round(r["spearman"], 2), round(100 * r["retention"], 1))


def test_recipe_states_what_produced_the_model(run_2d):
    card = (run_2d / "model" / "README.md").read_text(encoding="utf-8")
    run = json.loads((run_2d / "run.json").read_text())
    recipe = card[card.index("## Training") : card.index("## Usage")]
    for expected in (
        "| loss | cosent (scale 20.0) |",
        "| Matryoshka dims | 32, 16, 8 |",
        "| steps | 3 of 3 |",
        "| batch | 8 per device |",
        "| precision | fp32 |",
        "| seed | 12 |",
        f"mrl commit `{run['git_commit'][:12]}`",
        "`--2d random`, evaluated layers [1, 2, 3]",
        "| learning rate | 2e-05, linear after 10% warmup",
        "(40 rows)",
    ):
        assert expected in recipe, expected
    assert re.search(r"\| wall time \| \d+ (min \d+ )?s \(start to saved model on cpu", recipe)
    assert "python train.py --model " in recipe and "--2d random" in recipe


def recipe_rows(config: dict, meta: dict) -> dict[str, str]:
    table = card_module._recipe_table(config, {}, meta, {}, None, None, "some/model")
    return dict(re.findall(r"^\| (.+?) \| (.+) \|$", table, re.M))


@pytest.mark.parametrize(
    "two_d, layers, expected",
    [
        ("off", None, None),
        (
            "random",
            [1, 2, 3],
            "`--2d random`, evaluated layers [1, 2, 3], KL weight 1.0 (T 0.3), 1 layer(s)/step, "
            "depth weighting proportional",
        ),
        (
            "fixed",
            [1, 3],
            "`--2d fixed`, evaluated layers [1, 3], (layer, dim) pairs 1:16 3:32, KL weight 1.0 (T 0.3)",
        ),
    ],
)
def test_recipe_text_comes_from_the_objectives_table(two_d, layers, expected):
    """The loss and 2D rows are each entry's own card text (mrl/objectives.py), word for word what
    the card said when it named the modes itself; no distillation, no distillation row."""
    config = {**TrainConfig(two_d=two_d).to_dict(), "derived": {}}
    meta = {"two_d": two_d, "layers": layers, "num_layers": 3, "dims": [32, 16], "loss": "cosent"}
    if two_d == "fixed":
        meta["layer_dim_pairs"] = [[1, 16], [3, 32]]
    rows = recipe_rows(config, meta)
    assert rows["loss"] == "cosent (scale 20.0)"
    assert rows.get("layers (2D)") == expected
    assert ("layers" in rows) == (two_d == "off") and "self-distillation" not in rows
    if two_d == "off":
        assert rows["layers"] == "all 3 (no 2D training)"


def test_gte_recipe_names_its_directions_as_typed():
    config = TrainConfig(loss="gte", directions=["query-doc", "doc-doc"], partition_mode="per-direction")
    rows = recipe_rows(config.to_dict(), {"dims": [32, 16], "num_layers": 3})
    assert rows["loss"] == "gte (scale 20.0, directions query-doc doc-doc, per-direction softmax)"


def test_recipe_states_self_distillation_and_a_forks_entries(monkeypatch):
    config = TrainConfig(two_d="random", layer_distill="kl", prefix_distill="mse", distill_data=["a.csv"])
    meta = {"two_d": "random", "layers": [1, 2, 3], "num_layers": 3, "dims": [32, 16]}
    rows = recipe_rows(config.to_dict(), meta)
    assert rows["self-distillation"] == (
        "shallow layers: `kl` (T 0.05); prefixes: `mse`, weight 1.0, plus 1 file(s) of plain "
        "sentences (`--distill-data`)"
    )
    # A fork's entries: their own card text, or the name alone; an unknown 2D wrapper is told by
    # the layers it evaluated.
    monkeypatch.setitem(objectives.BASE_LOSSES, "mine", objectives.BaseLossEntry(bind=None, card="m {lr}"))
    rows = recipe_rows(
        {**config.to_dict(), "loss": "mine", "layer_distill": "off", "prefix_distill": "off"}, meta
    )
    assert rows["loss"] == "mine (m 2e-05)" and "self-distillation" not in rows
    rows = recipe_rows({**config.to_dict(), "loss": "gone"}, {**meta, "two_d": "diagonal"})
    assert rows["loss"] == "gone" and rows["layers (2D)"] == "`--2d diagonal`, evaluated layers [1, 2, 3]"


def run_snippet(code: str) -> dict:
    namespace: dict = {}
    exec(compile(code, "<card snippet>", "exec"), namespace)  # noqa: S102 (the card's own code)
    return namespace


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "lasttoken"])
def test_transformers_snippet_gives_the_encoders_embeddings(tiny_model_dir, tmp_path, pooling):
    folder = tmp_path / "model"
    Encoder(tiny_model_dir, pooling=pooling).save(
        folder, {"dims": [32, 16, 8], "layers": [1, 2, 3], "two_d": "random"}
    )
    write_card(folder)
    card = (folder / "README.md").read_text(encoding="utf-8")
    ns = run_snippet(python_block(card, "### transformers"))

    encoder = Encoder(folder)
    raw = encoder.encode(EXAMPLE_SENTENCES, normalize=False)  # (2, 32)
    torch.testing.assert_close(ns["embeddings"], raw, atol=1e-5, rtol=1e-5)
    dim = ns["dim"]
    assert dim in (32, 16, 8)
    torch.testing.assert_close(ns["small"], encoder.encode(EXAMPLE_SENTENCES, dim=dim), atol=1e-5, rtol=1e-5)
    k = int(re.search(r"hidden_states\[(\d+)\]", card).group(1))
    expected = encoder.encode(EXAMPLE_SENTENCES, layers=k, dim=dim)
    torch.testing.assert_close(ns["shallow"], expected, atol=1e-5, rtol=1e-5)

    # The mrl snippet runs as written; the sentence-transformers one is at least valid Python
    # that truncates (that library is never installed here).
    mrl_ns = run_snippet(python_block(card, "### mrl"))
    assert mrl_ns["small"].shape == (2, dim) and mrl_ns["shallow"].shape == (2, dim)
    st_code = python_block(card, "### sentence-transformers")
    ast.parse(st_code)
    assert f"truncate_dim={dim}" in st_code


def test_lower_casing_models_lower_case_in_the_snippet(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    Encoder(tiny_model_dir, do_lower_case=True).save(folder, {"dims": [32, 8]})
    code = python_block(build_card(folder), "### transformers")
    assert "sentences = [s.lower() for s in sentences]" in code
    ns = run_snippet(code)
    torch.testing.assert_close(
        ns["embeddings"], Encoder(folder).encode(EXAMPLE_SENTENCES, normalize=False), atol=1e-5, rtol=1e-5
    )
    assert "shallow" not in ns  # not a 2D model: no layer snippet


def test_hub_ids_fill_base_model_and_datasets(run_2d, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_2d, run, ignore=shutil.ignore_patterns("checkpoints", "tb"))
    config = json.loads((run / "config.json").read_text())
    config.update(model="sentence-transformers/all-MiniLM-L6-v2", train_data="sentence-transformers/stsb")
    (run / "config.json").write_text(json.dumps(config))
    lines = front_matter(build_card(run / "model"))
    meta = parse_key_values(lines)
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["datasets"] == ["sentence-transformers/stsb"]


def test_eval_results_are_added_to_the_card_and_replaced_on_rerun(run_2d, files, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(run_2d / "model", model)
    args = ["--model", str(model), "--sts", str(files["test"]), "--dims", "32", "8", "--add-to-card"]
    first = eval_script.main([*args, "--json", str(tmp_path / "a.json")])
    card = (model / "README.md").read_text(encoding="utf-8")
    assert card.count("## Evaluation (eval.py)") == 1
    section = card[card.index("### sts-test") : card.index("## Usage")]
    for r in first["sets"]["sts-test"]["records"]:
        assert f"{r['spearman']:.2f} ({100 * r['retention']:.1f}%)" in section
    assert card.index("## Dev results") < card.index("## Evaluation (eval.py)") < card.index("## Usage")

    eval_script.main([*args[:-3], "16", "--add-to-card"])  # the same set again, other dims
    card = (model / "README.md").read_text(encoding="utf-8")
    assert card.count("### sts-test") == 1 and "d=16" in card[card.index("### sts-test") :]
    write_card(model)  # rewriting the card keeps the eval sections
    again = (model / "README.md").read_text(encoding="utf-8")
    assert again.count("### sts-test") == 1 and again.count("## Evaluation (eval.py)") == 1
    # python -m mrl.card MODEL --add FILE: the saved first result (d=32, d=8) is back in place.
    card_module.main([str(model), "--add", str(tmp_path / "a.json")])
    section = (model / "README.md").read_text(encoding="utf-8")
    section = section[section.index("### sts-test") : section.index("## Usage")]
    assert "d=16" not in section and section.count("### sts-test") == 1
    for r in first["sets"]["sts-test"]["records"]:
        assert f"{r['spearman']:.2f} ({100 * r['retention']:.1f}%)" in section


def test_card_lists_bytes_per_vector_beside_each_score_and_the_budgets(run_2d, files, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(run_2d / "model", model)
    results = eval_script.main(
        ["--model", str(model), "--sts", str(files["test"]), "--dims", "32", "8", "--layers", "3",
         "--precisions", "float32", "binary", "--bytes", "1", "4", "--add-to-card"]
    )  # fmt: skip
    card = (model / "README.md").read_text(encoding="utf-8")
    section = card[card.index("### sts-test") : card.index("## Usage")]
    records = results["sets"]["sts-test"]["records"]
    sizes = {(32, "float32"): 128, (8, "float32"): 32, (32, "binary"): 4, (8, "binary"): 1}  # 4 d, d / 8
    for r in records:
        assert r["bytes"] == sizes[(r["dim"], r["precision"])]
        assert f"{r['spearman']:.2f} ({100 * r['retention']:.1f}%, {r['bytes']} B)" in section
    # Within 4 bytes only the binary cells fit (1 and 4 bytes): the better of the two is listed.
    best = max((r for r in records if r["precision"] == "binary"), key=lambda r: (r["spearman"], -r["bytes"]))
    row = f"| 4 B | layer 3, d={best['dim']}, binary | {best['bytes']} | {best['spearman']:.2f} | 2 |"
    assert "Best cell within each byte budget" in section and row in section
    (one_byte,) = [r for r in records if r["bytes"] == 1]  # 8 sign bits: the only cell within 1 B
    assert f"| 1 B | layer 3, d=8, binary | 1 | {one_byte['spearman']:.2f} | 1 |" in section


def test_add_to_card_refuses_a_folder_not_saved_by_mrl(tiny_model_dir, files, capsys):
    with pytest.raises(SystemExit):
        eval_script.main(["--model", str(tiny_model_dir), "--sts", str(files["test"]), "--add-to-card"])
    assert "--add-to-card" in capsys.readouterr().err
    assert not (tiny_model_dir / "README.md").exists()


def test_guess_language():
    assert guess_language(["一个男人在弹吉他。", "一个女人在切洋葱。"]) == "zh"
    assert guess_language(["A man is playing the guitar.", "The cat sat on a mat."]) == "en"
    assert guess_language(["Der Hund läuft im Park.", "Die Katze schläft."]) is None
    assert guess_language(["猫がマットの上に座っている。"]) == "ja"

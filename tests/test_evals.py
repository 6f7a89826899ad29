"""The evaluator interface (mrl/evals) against independent references, and a new kind of
evaluation -- one class (what would be its file under mrl/evals/) and one registration line --
followed into every consumer: training-time tags, the chart layout, the HParams metrics, the
retention plot, eval.py's JSON and Markdown, and the model card.

References are computed here by hand (numpy cosines and scipy correlations, brute-force
rankings) or come from the functions tests/test_evaluation.py and tests/test_retrieval.py check.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train.py / eval.py live in the repo root
import eval as eval_script  # noqa: E402
import mrl.train.encoder  # noqa: E402
import train  # noqa: E402
from mrl.evals import (  # noqa: E402
    EVALUATORS,
    BeirEvaluator,
    Evaluator,
    StsEvaluator,
    evaluate_all,
    evaluator_for,
    score_all,
)
from mrl.evals.budgets import fit_budgets, format_budgets  # noqa: E402
from mrl.evaluation import encode_layers, evaluate_sts  # noqa: E402
from mrl.losses import prefix  # noqa: E402
from mrl.model import Encoder  # noqa: E402
from mrl.quantize import bytes_per_vector  # noqa: E402
from mrl.retrieval import embed_beir, evaluate_cells, load_beir, ranking_metrics  # noqa: E402
from mrl.tracking import Tracker, scalar_layout  # noqa: E402
from tests.fixture_text import distinct_sentences, write_csv  # noqa: E402
from tests.test_evaluation import LAYERS, FakeEncoder, cosine_by_hand, sts_set  # noqa: E402,F401
from tests.test_retrieval import TOY_DOCS, TOY_QRELS, TOY_QUERIES, write_beir  # noqa: E402
from tests.test_tracking import accumulator, matched, read_layout  # noqa: E402
from tests.test_train import one_thread  # noqa: E402,F401 (autouse: one torch thread)

# --------------------------------------------------------------------------------------------
# A new kind of evaluation: this class is what a file mrl/evals/toy.py would hold.
# --------------------------------------------------------------------------------------------


@dataclass
class ToyEvaluator:
    """Mean cosine x100 of text pairs that belong together, per (layer, dim)."""

    name: str
    pairs: list[tuple[str, str]]

    metric: ClassVar[str] = "mean_cos"
    metrics: ClassVar[tuple[str, ...]] = ("mean_cos",)
    label: ClassVar[str] = "mean cosine"
    title: ClassVar[str] = "mean cosine x100"
    retention: ClassVar[str] = "retention vs the largest dim"
    section: ClassVar[str] = "toy"
    help: ClassVar[str] = "toy sets: CSV files of text pairs (header line first)"

    @staticmethod
    def set_name(spec: str) -> str:
        return Path(spec).stem

    @classmethod
    def load(cls, spec: str, args, encoder) -> ToyEvaluator:
        with open(spec, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))[1:]
        if not rows:
            raise ValueError(f"--toy {spec}: no pairs")
        return cls(Path(spec).stem, [(a, b) for a, b, *_ in rows])

    def encode(self, encoder, layers, batch_size=64, show_progress=False):
        texts = [a for a, _ in self.pairs] + [b for _, b in self.pairs]
        emb = encode_layers(encoder, texts, layers, batch_size, show_progress)  # (Lsel, 2N, D): one pass
        return emb[:, : len(self.pairs)], emb[:, len(self.pairs) :]

    def score(self, embeddings, dims, layers):
        records = []
        for layer, a, b in zip(layers, *embeddings):
            cosines = {d: (prefix(a, d) * prefix(b, d)).sum(-1) for d in dims}  # each (N,)
            cells = [{"layer": layer, "dim": d, "mean_cos": 100 * float(cosines[d].mean())} for d in dims]
            full = cells[list(dims).index(max(dims))]["mean_cos"]
            for cell in cells:
                cell["retention"] = cell["mean_cos"] / full
            records.extend(cells)
        return records

    def result(self, embeddings, records, encode_seconds, seconds):
        return {"pairs": len(self.pairs), "seconds": seconds, "records": records}

    @staticmethod
    def table(records):
        lines = ["| layer | dim | mean cos x100 |", "|---|---|---|"]
        return "\n".join(lines + [f"| {r['layer']} | {r['dim']} | {r['mean_cos']:.2f} |" for r in records])

    @classmethod
    def report(cls, name, entry):
        text = f"### {name} ({entry['pairs']} pairs): {cls.title}\n\n{cls.table(entry['records'])}\n"
        return text, "\n" + text

    @classmethod
    def card_section(cls, name, entry):
        return cls.report(name, entry)[0]


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(EVALUATORS, "toy", ToyEvaluator)  # the one registration line


PAIR_TEXTS = distinct_sentences(24, seed=21)
PAIRS = list(zip(PAIR_TEXTS[:12], PAIR_TEXTS[12:]))


def mean_cosine_by_hand(encoder, pairs, layer: int, dim: int) -> float:
    """100 x the mean cosine of the pairs' first ``dim`` values at ``layer``, in float64."""
    every = encoder.encode([t for pair in pairs for t in pair], all_layers=True, normalize=False)
    emb = every[layer - 1].double().numpy()  # (2N, D), pairs interleaved
    return 100 * float(np.mean(cosine_by_hand(emb[0::2], emb[1::2], dim)))


# --------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("evaluator", [StsEvaluator, BeirEvaluator, ToyEvaluator])
def test_every_evaluator_has_the_whole_interface(evaluator):
    members = {n for n in vars(Evaluator) if not n.startswith("_")} | set(Evaluator.__annotations__)
    missing = {n for n in members - {"name"} if not hasattr(evaluator, n)}
    assert not missing
    assert evaluator.metric in evaluator.metrics


def test_sts_evaluator_scores_equal_scipy_on_hand_built_embeddings():
    torch.manual_seed(3)
    n, width = 30, 16
    emb1 = torch.randn(2, n, width) + 2.0  # (layers, N, D); an offset makes prefixes differ
    emb2 = emb1 + torch.randn(2, n, width) * torch.linspace(0.1, 3.0, n)[:, None]
    gold = list(np.linspace(5, 0, n) + np.random.default_rng(3).normal(0, 0.5, n))
    dims = [8, 16, 4]  # the largest is not first
    records = StsEvaluator("s", gold).score((emb1, emb2), dims, [2, 5])
    assert [(r["layer"], r["dim"]) for r in records] == [(la, d) for la in (2, 5) for d in dims]
    for row, layer in enumerate((2, 5)):
        cos = {d: cosine_by_hand(emb1[row].numpy(), emb2[row].numpy(), d) for d in dims}
        for r in (r for r in records if r["layer"] == layer):
            assert r["spearman"] == pytest.approx(100 * spearmanr(gold, cos[r["dim"]]).statistic, abs=1e-4)
            assert r["pearson"] == pytest.approx(100 * pearsonr(gold, cos[r["dim"]]).statistic, abs=1e-4)
            full = 100 * spearmanr(gold, cos[16]).statistic
            assert r["retention"] == pytest.approx(r["spearman"] / full, rel=1e-5)


def test_evaluate_all_tags_a_2d_grid_from_one_pass_per_set(sts_set):  # noqa: F811 (the fixture)
    table, sentences1, sentences2, gold = sts_set
    fake = FakeEncoder(table, LAYERS)
    evaluators = {
        "dev-a": StsEvaluator("dev-a", gold, sentences1, sentences2),
        "dev-b": StsEvaluator("dev-b", gold[::-1], sentences2, sentences1),
    }
    scalars, records = evaluate_all(evaluators, fake, [16, 4], [1, 2, 3], batch_size=8)
    assert len(fake.calls) == 2 and all(all_layers for _, all_layers in fake.calls)  # one pass per set
    # The README's tag scheme, written out: no layer at the final layer (3), l<k>_ before it.
    for name in ("dev-a", "dev-b"):
        tags = [t for t in scalars if t.startswith(f"val/{name}/")]
        assert tags == [
            f"val/{name}/spearman_l1_d16", f"val/{name}/spearman_l1_d4",
            f"val/{name}/spearman_l2_d16", f"val/{name}/spearman_l2_d4",
            f"val/{name}/spearman_d16", f"val/{name}/spearman_d4",
        ]  # fmt: skip
    reference = evaluate_sts(FakeEncoder(table, LAYERS), sentences1, sentences2, gold, [16, 4], [1, 2, 3])
    assert records["dev-a"] == reference  # the records are evaluate_sts's (checked against scipy)
    assert scalars["val/dev-a/spearman_l2_d4"] == next(
        r["spearman"] for r in reference if (r["layer"], r["dim"]) == (2, 4)
    )

    final_only, records = evaluate_all({"dev-a": evaluators["dev-a"]}, fake, [16, 4], None)
    assert list(final_only) == ["val/dev-a/spearman_d16", "val/dev-a/spearman_d4"]
    assert {r["layer"] for r in records["dev-a"]} == {LAYERS}
    assert fake.calls[-1][1] is False  # the final layer alone: no all-layers pass


def test_score_all_scores_vectors_without_an_encoder():
    """The adaptor's dev evaluation: cached (adapted) vectors, tags without a layer."""
    torch.manual_seed(4)
    first, second = torch.randn(20, 8), torch.randn(20, 8)
    gold = list(np.arange(20.0))
    scalars, records = score_all(
        {"dev": StsEvaluator("dev", gold)}, {"dev": (first[None], second[None])}, [8, 2]
    )
    assert list(scalars) == ["val/dev/spearman_d8", "val/dev/spearman_d2"]
    for d in (8, 2):
        expected = 100 * spearmanr(gold, cosine_by_hand(first.numpy(), second.numpy(), d)).statistic
        assert scalars[f"val/dev/spearman_d{d}"] == pytest.approx(expected, abs=1e-4)
    assert {r["layer"] for r in records["dev"]} == {None}


def test_beir_evaluator_tags_ndcg_and_keeps_one_record_a_cell(tiny_model_dir, tmp_path):
    data = load_beir(write_beir(tmp_path / "toy", TOY_DOCS, TOY_QUERIES, TOY_QRELS))
    encoder = Encoder(tiny_model_dir)
    scalars, records = evaluate_all({"toy": BeirEvaluator("toy", data)}, encoder, [32, 8], None)
    assert list(scalars) == ["val/toy/ndcg@10_d32", "val/toy/ndcg@10_d8"]
    query_emb, doc_emb = embed_beir(encoder, data)
    for r in records["toy"]:  # a brute-force ranking by cosine of the prefixes
        rankings = {
            qid: [doc_id for _, doc_id in sorted(
                ((float(prefix(q, r["dim"]) @ prefix(doc, r["dim"])), doc_id)
                 for doc_id, doc in zip(data.doc_ids, doc_emb[0])), reverse=True)]
            for qid, q in zip(data.query_ids, query_emb[0])
        }  # fmt: skip
        expected = ranking_metrics(rankings, data.qrels)["ndcg@10"]
        assert scalars[f"val/toy/ndcg@10_d{r['dim']}"] == pytest.approx(expected)
    # Several precisions give several records a cell: training refuses rather than keep one.
    with pytest.raises(ValueError, match="two records have the tag val/toy/ndcg@10_d32"):
        evaluate_all({"toy": BeirEvaluator("toy", data, precisions=["float32", "int8"])}, encoder, [32], None)
    cells = evaluate_cells(query_emb, doc_emb, data, [32, 8], layers=[3])
    strip = lambda recs: [{k: v for k, v in r.items() if k != "seconds"} for r in recs]  # noqa: E731
    assert strip(records["toy"]) == strip(cells)


def test_the_toy_is_registered_only_where_a_test_asks():
    assert list(EVALUATORS) == ["sts", "beir", "mteb"]


def test_evaluator_for_reads_the_kind_from_records(toy_registered):
    sts = {"layer": 3, "dim": 8, "spearman": 1.0, "pearson": 2.0, "retention": 1.0}
    assert evaluator_for([sts]) is StsEvaluator
    beir = {"layer": 3, "dim": 8, "precision": "float32", "ndcg@10": 0.5, "mrr@10": 0.5}
    assert evaluator_for([{**beir, "recall@100": 1.0, "map@100": 0.4}]) is BeirEvaluator
    assert evaluator_for([{"layer": 3, "dim": 8, "mean_cos": 50.0, "retention": 1}]) is ToyEvaluator
    with pytest.raises(ValueError, match="no evaluator"):
        evaluator_for([{"layer": 3, "dim": 8, "accuracy": 0.5}])


def test_layout_has_a_dev_category_per_primary_metric():
    default = scalar_layout([64, 32], [3, 6], 6)
    assert default == scalar_layout([64, 32], [3, 6], 6, {"stsb": StsEvaluator, "sick": StsEvaluator})
    both = scalar_layout([64, 32], [3, 6], 6, {"stsb": StsEvaluator, "scifact": BeirEvaluator})
    assert [c for c in both if "dev" in c] == ["Matryoshka: dev Spearman", "Matryoshka: dev nDCG@10"]
    tags = ["val/scifact/ndcg@10_d64", "val/scifact/ndcg@10_l3_d64", "val/stsb/spearman_d64"]
    charts = both["Matryoshka: dev nDCG@10"]
    assert matched(charts["every set and dim (final layer)"][1], tags) == {"val/scifact/ndcg@10_d64"}
    assert matched(charts["2D: d=64, every layer"][1], tags) == set(tags[:2])
    assert matched(charts["2D: layer 3, every dim"][1], tags) == {"val/scifact/ndcg@10_l3_d64"}


# --------------------------------------------------------------------------------------------
# The new kind in every consumer
# --------------------------------------------------------------------------------------------


def test_toy_training_tags_layout_hparams_and_plot(toy_registered, tiny_model_dir, tmp_path):
    encoder = Encoder(tiny_model_dir)
    evaluators = {"pairs": ToyEvaluator("pairs", PAIRS)}
    scalars, records = evaluate_all(evaluators, encoder, [32, 8], [1, 3], batch_size=8)
    expected = {
        "val/pairs/mean_cos_d32": mean_cosine_by_hand(encoder, PAIRS, 3, 32),
        "val/pairs/mean_cos_d8": mean_cosine_by_hand(encoder, PAIRS, 3, 8),
        "val/pairs/mean_cos_l1_d32": mean_cosine_by_hand(encoder, PAIRS, 1, 32),
        "val/pairs/mean_cos_l1_d8": mean_cosine_by_hand(encoder, PAIRS, 1, 8),
    }
    assert set(scalars) == set(expected)
    for tag, value in expected.items():
        assert scalars[tag] == pytest.approx(value, abs=1e-4)

    tracker = Tracker(tmp_path)
    tracker.start_hparams({"lr": 1e-3}, [1, 3], 3, [32, 8], evaluators)
    tracker.scalars(5, {"train/loss": 1.5, **scalars})
    png = tracker.finish(5, records, evaluators)
    tracker.close()
    layout = read_layout(tmp_path / "tb")
    assert matched(layout["every set and dim (final layer)"], list(scalars)) == {
        "val/pairs/mean_cos_d32",
        "val/pairs/mean_cos_d8",
    }
    assert matched(layout["2D: layer 1, every dim"], list(scalars)) == {
        "val/pairs/mean_cos_l1_d32",
        "val/pairs/mean_cos_l1_d8",
    }
    hparams = accumulator(tmp_path / "tb" / "hparams")
    logged = {tag: hparams.Scalars(tag) for tag in hparams.Tags()["scalars"]}
    assert set(logged) == {"train/loss", *expected}  # the HParams row's metric columns
    for tag in expected:
        assert logged[tag][0].step == 5 and logged[tag][0].value == pytest.approx(scalars[tag], abs=1e-4)
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_toy_in_eval_py_json_markdown_and_card(toy_registered, tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "model"
    Encoder(tiny_model_dir).save(model, {"dims": [32, 8]})  # a model folder saved by mrl
    spec = write_csv(tmp_path / "pairs.csv", ["text1", "text2"], [list(p) for p in PAIRS])
    out = tmp_path / "eval.json"
    eval_script.main(["--model", str(model), "--toy", str(spec), "--json", str(out), "--add-to-card"])
    entry = json.loads(out.read_text())["toy"]["pairs"]
    assert entry["pairs"] == len(PAIRS)
    assert [(r["layer"], r["dim"]) for r in entry["records"]] == [(3, 32), (3, 8)]  # the model's dims
    encoder = Encoder(model)
    for r in entry["records"]:
        assert r["mean_cos"] == pytest.approx(mean_cosine_by_hand(encoder, PAIRS, 3, r["dim"]), abs=1e-4)
    cell = f"| 3 | 8 | {entry['records'][1]['mean_cos']:.2f} |"
    assert "### pairs (12 pairs): mean cosine x100" in out.with_suffix(".md").read_text()
    assert cell in capsys.readouterr().out
    card = (model / "README.md").read_text(encoding="utf-8")
    section = card[card.index("<!-- mrl:eval toy pairs -->") : card.index("<!-- /mrl:eval toy pairs -->")]
    assert "### pairs (12 pairs): mean cosine x100" in section and cell in section
    assert "--toy" in eval_script.build_parser().format_help()
    with pytest.raises(SystemExit):
        eval_script.main(["--model", str(model)])
    assert "give --sts and/or --beir and/or --mteb and/or --toy" in capsys.readouterr().err
    empty = write_csv(tmp_path / "empty.csv", ["text1", "text2"], [])
    with pytest.raises(SystemExit):
        eval_script.main(["--model", str(model), "--toy", str(empty)])
    assert f"--toy {empty}: no pairs" in capsys.readouterr().err


def test_toy_as_the_dev_evaluator_of_a_training_run(toy_registered, tiny_model_dir, tmp_path, monkeypatch):
    """train.main with the dev sets scored by the toy: its tags in metrics.jsonl and the log, the
    HParams metrics, eval_dev.json, the retention plot and the card's dev table."""
    monkeypatch.setattr(
        mrl.train.encoder,  # where the training finds its evaluators (the dev files are scored pairs)
        "dev_evaluators",
        lambda sets: {name: ToyEvaluator(name, list(zip(*ex.columns))) for name, ex in sets.items()},
    )
    texts = distinct_sentences(60, seed=23)
    rows = [[texts[2 * i], texts[2 * i + 1], (i % 5) / 4] for i in range(30)]
    train_csv = write_csv(tmp_path / "train.csv", ["sentence1", "sentence2", "score"], rows[:20])
    dev = write_csv(tmp_path / "pairs-dev.csv", ["sentence1", "sentence2", "score"], rows[20:])
    run = train.main(
        ["--model", str(tiny_model_dir), "--train-data", str(train_csv), "--eval-data", str(dev),
         "--max-steps", "2", "--batch-size", "8", "--dims", "32", "8", "--output-dir", str(tmp_path / "run")]
    )  # fmt: skip
    tags = {"val/pairs-dev/mean_cos_d32", "val/pairs-dev/mean_cos_d8"}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if tags <= set(m)] == [0, 2]
    assert not any(k.startswith("val/") and k not in tags for m in metrics for k in m)
    dev_records = json.loads((run / "eval_dev.json").read_text())["pairs-dev"]
    assert [(r["layer"], r["dim"]) for r in dev_records] == [(3, 32), (3, 8)]
    log = (run / "train.log").read_text()
    assert "step 2 eval: pairs-dev/mean_cos_d32=" in log
    assert "pairs-dev (dev), mean cosine x100 (retention):" in log
    hparams = accumulator(run / "tb" / "hparams")
    assert set(hparams.Tags()["scalars"]) == {"train/loss", *tags}
    assert (run / "retention.png").is_file()
    card = (run / "model" / "README.md").read_text(encoding="utf-8")
    heading = "### pairs-dev (dev, after step 2): mean cosine x100 (retention vs the largest dim)"
    assert heading in card and f"| 3 | 8 | {dev_records[1]['mean_cos']:.2f} |" in card


# --------------------------------------------------------------------------------------------
# Byte budgets (issue 26): the picker against a brute-force choice over hand-made records
# --------------------------------------------------------------------------------------------

# nDCG@10 x100 of the zero-shot SciFact record (experiments/results/2026-11-27_scifact_minilm_zeroshot.md),
# as (dim, precision, bytes, score); binary rows were rescored with the float query (100).
SCIFACT = [
    (384, "float32", 1536, 64.51), (384, "int8", 384, 64.60), (384, "binary", 48, 62.19),
    (256, "float32", 1024, 63.51), (256, "int8", 256, 63.51), (256, "binary", 32, 58.81),
    (128, "float32", 512, 60.16), (128, "int8", 128, 60.03), (128, "binary", 16, 48.29),
    (64, "float32", 256, 48.41), (64, "int8", 64, 48.38), (64, "binary", 8, 34.86),
    (32, "float32", 128, 33.71), (32, "int8", 32, 33.67), (32, "binary", 4, 17.33),
    (16, "float32", 64, 15.80), (16, "int8", 16, 15.77), (16, "binary", 2, 6.47),
]  # fmt: skip
SCIFACT_RECORDS = [
    {"layer": 6, "dim": d, "precision": p, "bytes": b, "rescore": 100 if p == "binary" else None}
    | {"ndcg@10": s / 100}
    for d, p, b, s in SCIFACT
]


def best_by_brute_force(records, budget, metric):
    """The record with the highest score among those of at most ``budget`` bytes (ties: fewer
    bytes, then the earlier record); NaN scores never win."""
    best = None
    for r in records:
        if r["bytes"] > budget or r[metric] != r[metric]:
            continue
        if best is None or (r[metric], -r["bytes"]) > (best[metric], -best["bytes"]):
            best = r
    return best


def test_budgets_pick_the_cells_the_scifact_table_shows():
    # Read off the table by hand: below 48 bytes binary wins, from 256 on int8 (float32 never does).
    expected = {
        2: (16, "binary"), 4: (32, "binary"), 8: (64, "binary"), 16: (128, "binary"), 32: (256, "binary"),
        48: (384, "binary"), 64: (384, "binary"), 256: (256, "int8"), 384: (384, "int8"), 1536: (384, "int8"),
    }  # fmt: skip
    rows = fit_budgets(SCIFACT_RECORDS, [1536, *list(expected)[:-1], 1], "ndcg@10")
    assert [row["budget"] for row in rows] == [1, *expected]  # ascending
    assert rows[0] == {"budget": 1, "best": None, "fits": []}
    for row in rows[1:]:
        best = row["best"]
        assert (best["dim"], best["precision"]) == expected[row["budget"]]
        assert best["layer"] == 6 and best["bytes"] == bytes_per_vector(best["dim"], best["precision"])
        assert best["rescore"] == (100 if best["precision"] == "binary" else None)
    table = format_budgets(rows, "ndcg@10", "nDCG@10", scale=100)
    # within 16 bytes: binary at 128, 64, 32, 16 dims and int8 at 16 dims
    assert "| 16 B | layer 6, d=128, binary +rescore 100 | 16 | 48.29 | 5 |" in table
    assert "| 1 B | nothing fits | | | 0 |" in table


@pytest.mark.parametrize("seed", range(5))
def test_budgets_equal_a_brute_force_choice(seed):
    rng = np.random.default_rng(seed)
    records = []
    for layer in (3, 6):
        for d in (24, 20, 9, 8):
            for precision in ("float32", "int8", "binary"):
                score = float(rng.integers(0, 6))  # few values: many ties across byte sizes
                score = float("nan") if rng.random() < 0.1 else score
                size = bytes_per_vector(d, precision)
                records.append(
                    {"layer": layer, "dim": d, "precision": precision, "bytes": size, "spearman": score}
                )
    budgets = [int(b) for b in rng.choice(np.arange(1, 100), 12, replace=False)]
    for row in fit_budgets(records, budgets, "spearman"):
        fits = [r for r in records if r["bytes"] <= row["budget"]]
        assert sorted((c["layer"], c["dim"], c["precision"]) for c in row["fits"]) == sorted(
            (r["layer"], r["dim"], r["precision"]) for r in fits
        )
        scored = [c["spearman"] == c["spearman"] for c in row["fits"]]  # False for NaN
        assert scored == sorted(scored, reverse=True)  # NaN last
        scores = [c["spearman"] for c in row["fits"] if c["spearman"] == c["spearman"]]
        assert scores == sorted(scores, reverse=True)  # best first
        expected = best_by_brute_force(records, row["budget"], "spearman")
        if expected is None:
            assert row["best"] is None
        else:
            keys = ("layer", "dim", "precision", "bytes", "spearman")
            assert {k: row["best"][k] for k in keys} == {k: expected[k] for k in keys}

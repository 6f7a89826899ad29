"""F, after the fact: the standard model's embeddings rotated onto the principal axes of its own
training texts, evaluated as run.sh evaluates every F model.

    python experiments/2026-11-30_nli_distill/pca_rotation.py 13 14 12   # after run.sh's `standard` seeds

For each seed: the trained `standard-sSEED` model (plain MNRL at 384, no Matryoshka loss) embeds
the distinct texts of the training file (AllNLI triplets: anchor, positive and negative columns;
no evaluation text), `mrl.adaptor.pca_rotation` gives their uncentred principal axes as an
orthogonal (384, 384) matrix, and the model is saved with the head [Normalize, Dense(W, 0)]
(the same files as an adaptor's). A rotation keeps every full-width cosine, so d=384 is the
standard model's score up to float rounding, while the first d values become the projection on
the d axes of largest second moment. Then eval.py scores STS-B test and SciFact at every dim,
and ``results/standard-pca-sSEED.json`` is written in run.sh's layout with ``derived_from``.
Runs go to $RUNS (default /tmp/mrl-exp-f); data from $MRL_DATA_DIR (default ../shared/data).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from mrl.adaptor import pca_rotation  # noqa: E402
from mrl.heads import dense_head  # noqa: E402
from mrl.model import Encoder  # noqa: E402

DIMS = ["384", "256", "128", "64", "32", "16"]


def main(seeds: list[str]) -> None:
    data = Path(os.environ.get("MRL_DATA_DIR") or REPO.parent / "shared" / "data")
    runs = Path(os.environ.get("RUNS", "/tmp/mrl-exp-f"))
    train_file = data / "nli" / "allnli-triplets.csv"
    with open(train_file, newline="", encoding="utf-8") as f:
        texts = list(dict.fromkeys(text for row in csv.DictReader(f) for text in row.values()))
    for seed in seeds:
        name, source = f"standard-pca-s{seed}", runs / f"standard-s{seed}"
        out = HERE / "results" / f"{name}.json"
        if out.exists():
            print(f"skip {name} (have {out})")
            continue
        trained_json = HERE / "results" / f"standard-s{seed}.json"
        if not (source / "model" / "model.safetensors").exists() or not trained_json.exists():
            raise SystemExit(
                f"{source}/model or {trained_json}: not found; run run.sh with VARIANTS=standard {seed} first"
            )
        start = time.time()
        encoder = Encoder(str(source / "model"))
        if encoder.head is not None:
            raise SystemExit(f"{source}/model already has a head after pooling")
        emb = encoder.encode(texts, batch_size=64, normalize=False)  # (N, 384) raw pooled vectors
        rotation = pca_rotation(emb)  # (384, 384), orthogonal
        error = (rotation @ rotation.T - torch.eye(rotation.shape[0])).abs().max().item()
        encoder.attach_head(dense_head(rotation, torch.zeros(rotation.shape[0])))
        model = runs / name / "model"
        encoder.save(model, metadata=encoder.metadata)
        fit_seconds = round(time.time() - start)
        with open(runs / f"{name}.log", "w") as log:
            for args, json_name in (
                (["--sts", str(data / "stsb" / "en-test.csv")], "sts.json"),
                (["--beir", str(data / "scifact"), "--max-seq-length", "256"], "scifact.json"),
            ):
                subprocess.run(
                    [sys.executable, str(REPO / "eval.py"), "--model", str(model), *args, "--dims", *DIMS,
                     "--json", str(runs / name / json_name), "--overwrite"],
                    stdout=log, stderr=subprocess.STDOUT, check=True,
                )  # fmt: skip
        result = json.loads((runs / name / "sts.json").read_text())
        result["retrieval"] = json.loads((runs / name / "scifact.json").read_text())["retrieval"]
        trained = json.loads(trained_json.read_text())
        result["train_wall_s"] = trained["train_wall_s"]
        result["config"], result["run"] = trained["config"], trained["run"]
        result["derived_from"] = (
            f"standard-s{seed} with its embeddings rotated onto the uncentred principal axes of the "
            f"{len(texts)} distinct texts of {train_file.name} (mrl.adaptor.pca_rotation; max |W W^T - I| "
            f"= {error:.1e}); fit and save took {fit_seconds} s"
        )
        out.write_text(json.dumps(result, indent=1))
        print(f"{name} done: fit {fit_seconds} s, total {round(time.time() - start)} s")


if __name__ == "__main__":
    main(sys.argv[1:] or ["12"])

#!/usr/bin/env bash
# F, after the fact: Matryoshka for the trained standard model without retraining its encoder.
# A head on the frozen `standard-sSEED` model (train.py --adaptor) learns on the same AllNLI
# triplets file it was trained on: its distinct texts are the corpus, its (anchor, positive)
# columns the pairs. Losses at every prefix: in-batch negatives on the pairs (rank=3) and the
# listwise KL to the frozen full width (list=1), G's supervised recipe unchanged (batch 512 of 128
# anchors and 3 neighbours each, 64 pairs a step, lr 3e-3, 1500 steps; no tuning here).
# Variants:
#   standard-rotation  --adaptor rotation: f(e) = Q e with Q orthogonal, from the identity, so
#                      every full-width cosine is the standard model's exactly; only the prefixes move
#   standard-adaptor   --adaptor linear: f(e) = e + W e + b from the identity (the Matryoshka-Adaptor)
# Each adapted model is evaluated as run.sh evaluates every F model (STS-B test, SciFact test at
# max length 256, every dim, last layer) and written to results/VARIANT-sSEED.json with
# derived_from; train_wall_s is the standard model's training plus the adaptor's run.
# Usage: VARIANTS="standard-rotation" bash experiments/2026-11-30_nli_distill/posthoc_adaptor.sh [SEED...]
# (after run.sh's `standard` for those seeds). Runs go to $RUNS (default /tmp/mrl-exp-f).
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
data="${MRL_DATA_DIR:-$repo/../shared/data}"
runs="${RUNS:-/tmp/mrl-exp-f}"
seeds=("${@:-12}")
dims=(384 256 128 64 32 16)
declare -A kinds=([standard-rotation]=rotation [standard-adaptor]=linear)
variants=(${VARIANTS:-standard-rotation})
for seed in "${seeds[@]}"; do
  for variant in "${variants[@]}"; do
    name="$variant-s$seed"
    out="$here/results/$name.json"
    [ -f "$out" ] && { echo "skip $name (have $out)"; continue; }
    source_run="$runs/standard-s$seed"
    [ -f "$source_run/model/model.safetensors" ] && [ -f "$here/results/standard-s$seed.json" ] || {
      echo "error: $source_run/model or results/standard-s$seed.json not found: run run.sh with VARIANTS=standard $seed first" >&2
      exit 2
    }
    rm -rf "${runs:?}/$name"
    start=$(date +%s)
    python "$repo/train.py" --adaptor "${kinds[$variant]}" --model "$source_run/model" \
      --train-data "$data/nli/allnli-triplets.csv" --adaptor-pairs "$data/nli/allnli-triplets.csv" \
      --adaptor-weights list=1 rank=3 --adaptor-neighbours 3 --dims "${dims[@]}" --max-steps 1500 \
      --batch-size 512 --lr 3e-3 --eval-data "$data/stsb/en-dev.csv" --eval-every 500 --log-every 100 \
      --embedding-cache "$runs/cache-standard-s$seed" --seed "$seed" --output-dir "$runs/$name" \
      > "$runs/$name.log" 2>&1
    end=$(date +%s)
    python "$repo/eval.py" --model "$runs/$name/model" --sts "$data/stsb/en-test.csv" \
      --dims "${dims[@]}" --json "$runs/$name/sts.json" --overwrite >> "$runs/$name.log" 2>&1
    python "$repo/eval.py" --model "$runs/$name/model" --beir "$data/scifact" --max-seq-length 256 \
      --dims "${dims[@]}" --json "$runs/$name/scifact.json" --overwrite >> "$runs/$name.log" 2>&1
    python - "$out" "$runs/$name" "$here/results/standard-s$seed.json" "$((end - start))" "$seed" <<'PY'
import json, sys
out, run, trained_json, seconds, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
trained = json.load(open(trained_json))
result = json.load(open(f"{run}/sts.json"))
result["retrieval"] = json.load(open(f"{run}/scifact.json"))["retrieval"]
result["train_wall_s"] = trained["train_wall_s"] + seconds
result["config"], result["run"] = trained["config"], trained["run"]
result["adaptor_config"] = json.load(open(f"{run}/config.json"))
recipe = json.load(open(f"{run}/model/mrl_config.json"))["adaptor"]
result["derived_from"] = (
    f"standard-s{seed} frozen, with a {recipe['kind']} adaptor after pooling trained on its own training "
    f"file ({recipe['data']['corpus_texts']} texts, {recipe['data']['n_pairs']} pairs, "
    f"{recipe['trained_steps']} steps, losses {recipe['loss_weights']}) in {seconds} s"
)
json.dump(result, open(out, "w"), indent=1)
PY
    echo "$name done: adaptor $((end - start)) s, eval $(( $(date +%s) - end )) s"
  done
done

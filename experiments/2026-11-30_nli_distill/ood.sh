#!/usr/bin/env bash
# Out-of-domain check of F's full-depth models on pair sets never trained on in these recipes:
# SICK relatedness (train.csv and dev.csv, Spearman with the score) and MSRP test (Spearman of the
# cosine with the 0/1 paraphrase label: for a binary label this is a monotone function of the
# ROC AUC, so it ranks models as the AUC does). Last layer, at 384 / 128 / 64 / 32 / 16 dims.
# Models are read from run folders under $RUNS (default /tmp/mrl-exp-f); results go to
# results/ood/NAME.json (SICK and MSRP in one file).
# Usage: bash experiments/2026-11-30_nli_distill/ood.sh NAME...   (e.g. standard-s12 standard-rotation-s12)
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
data="${MRL_DATA_DIR:-$repo/../shared/data}"
runs="${RUNS:-/tmp/mrl-exp-f}"
dims=(384 128 64 32 16)
mkdir -p "$here/results/ood"
for name in "$@"; do
  out="$here/results/ood/$name.json"
  [ -f "$out" ] && { echo "skip $name (have $out)"; continue; }
  model="$runs/$name/model"
  [ -f "$model/modules.json" ] || { echo "error: $model: no saved model (run run.sh or posthoc_adaptor.sh first)" >&2; exit 2; }
  # the full depth only (a 2D model would otherwise be scored at every trained layer)
  last=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["num_hidden_layers"])' "$model/config.json")
  python "$repo/eval.py" --model "$model" --sts "$data/sick/train.csv" "$data/sick/dev.csv" --layers "$last" \
    --dims "${dims[@]}" --json "$runs/ood-$name-sick.json" --overwrite > "$runs/ood-$name.log" 2>&1
  python "$repo/eval.py" --model "$model" --sts "$data/msrp/test.csv" --score-column label --layers "$last" \
    --dims "${dims[@]}" --json "$runs/ood-$name-msrp.json" --overwrite >> "$runs/ood-$name.log" 2>&1
  python - "$out" "$runs/ood-$name-sick.json" "$runs/ood-$name-msrp.json" <<'PY'
import json, sys
out, sick, msrp = sys.argv[1:]
result = {"sick": json.load(open(sick)), "msrp": json.load(open(msrp))}
json.dump(result, open(out, "w"), indent=1)
PY
  echo "$name done"
done

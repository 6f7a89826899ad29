#!/usr/bin/env bash
# Out-of-domain check of J: SICK relatedness (train.csv and dev.csv, never trained on in these
# recipes) at every layer and at 384 / 64 / 16 dims, for J's models and E's models of the same
# seeds. Models are read from the run folders of run.sh here ($RUNS, default /tmp/mrl-exp-j) and
# of E ($RUNS_E, default /tmp/mrl-exp-e); results go to results/sick/.
# Usage: bash experiments/2026-12-01_stsb_exit_heads/sick.sh NAME... (run names, e.g. layers2-alone-head-s12;
# a name that starts with "E:" is one of E's runs, e.g. E:layers2-alone-s12)
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
data="${MRL_DATA_DIR:-$repo/../shared/data}"
runs="${RUNS:-/tmp/mrl-exp-j}"
runs_e="${RUNS_E:-/tmp/mrl-exp-e}"
mkdir -p "$here/results/sick"
for name in "$@"; do
  if [[ "$name" == E:* ]]; then folder="$runs_e/${name#E:}"; out="$here/results/sick/E-${name#E:}.json"
  else folder="$runs/$name"; out="$here/results/sick/$name.json"; fi
  [ -f "$out" ] && { echo "skip $name (have $out)"; continue; }
  python "$repo/eval.py" --model "$folder/model" --sts "$data/sick/train.csv" "$data/sick/dev.csv" \
    --dims 384 64 16 --layers all --json "$out" > "$runs/sick-${name/:/-}.log" 2>&1
  echo "$name done"
done

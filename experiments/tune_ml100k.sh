#!/usr/bin/env bash
# Tuned baselines on MovieLens-100K (docs/results/tuned-baselines.md): BM3 and LGMRec tuned with
# 'llmrec tune' (their shipped search spaces, MiniLM text features: MovieLens has no images), their best
# configuration re-trained on 5 seeds, against their defaults and MF on the same 5 seeds, every run under
# one epoch budget (at most EPOCHS epochs, validated every 5, patience 3).
#   bash experiments/tune_ml100k.sh            # everything, in order
#   bash experiments/tune_ml100k.sh tune_bm3   # one part: tune_bm3, tune_lgmrec, best, defaults, table
# DATA (default data/ml-100k: 'llmrec prepare ml-100k --out data/ml-100k' then 'llmrec features --data
# data/ml-100k'), OUT (default runs/tuned-ml100k), THREADS (default 1), LLMREC (default 'llmrec'), JOBS
# (default 1: the seeds one after another, as 'llmrec train --seeds' does; JOBS=5 trains the 5 seeds of a
# configuration as 5 processes at once, each exactly what --seeds runs for its seed).
set -euo pipefail
DATA=${DATA:-data/ml-100k}
OUT=${OUT:-runs/tuned-ml100k}
THREADS=${THREADS:-1}
LLMREC=${LLMREC:-llmrec}
JOBS=${JOBS:-1}
TRIALS_BM3=${TRIALS_BM3:-3}
TRIALS_LGMREC=${TRIALS_LGMREC:-2}
EPOCHS=${EPOCHS:-20}
SEEDS="0 1 2 3 4"
BUDGET="-o epochs=$EPOCHS -o eval_every=5 -o patience=3"

seeds() {  # seeds MODEL OUT ARGS...: train one configuration on every seed into OUT/seed-<s>
  local model=$1 out=$2
  shift 2
  if [ "$JOBS" -le 1 ]; then
    $LLMREC train "$model" --data "$DATA" --out "$out" --threads "$THREADS" "$@" --seeds $SEEDS
    return
  fi
  for s in $SEEDS; do
    $LLMREC train "$model" --data "$DATA" --out "$out/seed-$s" --threads "$THREADS" "$@" --seed "$s" &
  done
  wait
}

part_tune_bm3() {
  $LLMREC tune bm3 --data "$DATA" --out "$OUT/tune-bm3" --trials "$TRIALS_BM3" --startup-trials 3 \
    --warmup-epochs 5 -o "features=[text]" -o epochs="$EPOCHS" --threads "$THREADS"
}

part_tune_lgmrec() {
  $LLMREC tune lgmrec --data "$DATA" --out "$OUT/tune-lgmrec" --trials "$TRIALS_LGMREC" --startup-trials 2 \
    --warmup-epochs 5 -o "features=[text]" -o epochs="$EPOCHS" --threads "$THREADS"
}

part_best() {  # the best trial of each study on the 5 seeds (best.yaml: its model, data and options)
  seeds bm3 "$OUT/tune-bm3/best-seeds" --config "$OUT/tune-bm3/best.yaml"
  seeds lgmrec "$OUT/tune-lgmrec/best-seeds" --config "$OUT/tune-lgmrec/best.yaml"
}

part_defaults() {  # MF, BM3 and LGMRec at their defaults, under the same epoch budget
  seeds mf "$OUT/default-mf" $BUDGET
  seeds bm3 "$OUT/default-bm3" -o "features=[text]" $BUDGET
  seeds lgmrec "$OUT/default-lgmrec" -o "features=[text]" $BUDGET
}

part_table() {
  $LLMREC table "$OUT/default-mf" "$OUT/default-bm3" "$OUT/tune-bm3/best-seeds" "$OUT/default-lgmrec" \
    "$OUT/tune-lgmrec/best-seeds" --metrics hit@10 ndcg@10 --compare ndcg@10
}

if [ $# -eq 0 ]; then set -- tune_bm3 tune_lgmrec best defaults table; fi
for part in "$@"; do "part_$part"; done

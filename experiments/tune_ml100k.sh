#!/usr/bin/env bash
# Tuned baselines on MovieLens-100K (docs/results/tuned-baselines.md): BM3 and LGMRec tuned with
# 'llmrec tune' (their shipped search spaces, MiniLM text features: MovieLens has no images), their best
# configuration re-trained on 5 seeds, against their defaults and MF on the same 5 seeds, every run under
# the same epoch budget (a cap of EPOCHS_BM3 / EPOCHS_LGMREC epochs, validated every 5, patience 3).
#   bash experiments/tune_ml100k.sh            # everything, in order
#   bash experiments/tune_ml100k.sh bm3        # one part: bm3, lgmrec, defaults (MF, BM3, LGMRec), table
# DATA (default data/ml-100k: 'llmrec prepare ml-100k --out data/ml-100k' then 'llmrec features --data
# data/ml-100k'), OUT (default runs/tuned-ml100k), THREADS (default 1) and LLMREC (default 'llmrec').
set -euo pipefail
DATA=${DATA:-data/ml-100k}
OUT=${OUT:-runs/tuned-ml100k}
THREADS=${THREADS:-1}
LLMREC=${LLMREC:-llmrec}
TRIALS_BM3=${TRIALS_BM3:-6}
TRIALS_LGMREC=${TRIALS_LGMREC:-4}
EPOCHS_BM3=${EPOCHS_BM3:-20}
EPOCHS_LGMREC=${EPOCHS_LGMREC:-20}
SEEDS="0 1 2 3 4"
budget() { echo "-o epochs=$1 -o eval_every=5 -o patience=3"; }

part_bm3() {
  $LLMREC tune bm3 --data "$DATA" --out "$OUT/tune-bm3" --trials "$TRIALS_BM3" --startup-trials 3 --warmup-epochs 5 \
    -o "features=[text]" -o epochs="$EPOCHS_BM3" --threads "$THREADS" --seeds $SEEDS
}

part_lgmrec() {
  $LLMREC tune lgmrec --data "$DATA" --out "$OUT/tune-lgmrec" --trials "$TRIALS_LGMREC" --startup-trials 2 --warmup-epochs 5 \
    -o "features=[text]" -o epochs="$EPOCHS_LGMREC" --threads "$THREADS" --seeds $SEEDS
}

part_defaults() {  # MF, BM3 and LGMRec at their defaults, under the same epoch budgets
  $LLMREC train mf --data "$DATA" --out "$OUT/default-mf" $(budget "$EPOCHS_BM3") --threads "$THREADS" --seeds $SEEDS
  $LLMREC train bm3 --data "$DATA" --out "$OUT/default-bm3" -o "features=[text]" $(budget "$EPOCHS_BM3") \
    --threads "$THREADS" --seeds $SEEDS
  $LLMREC train lgmrec --data "$DATA" --out "$OUT/default-lgmrec" -o "features=[text]" $(budget "$EPOCHS_LGMREC") \
    --threads "$THREADS" --seeds $SEEDS
}

part_table() {
  $LLMREC table "$OUT/default-mf" "$OUT/default-bm3" "$OUT/tune-bm3/best-seeds" "$OUT/default-lgmrec" \
    "$OUT/tune-lgmrec/best-seeds" --metrics hit@10 ndcg@10 --compare ndcg@10
}

if [ $# -eq 0 ]; then set -- bm3 lgmrec defaults table; fi
for part in "$@"; do "part_$part"; done

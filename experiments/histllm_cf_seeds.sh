#!/usr/bin/env bash
# HistLLM Table 2's traditional (multimodal) recommenders under its CTR protocol, 5 seeds each, mean +/- std,
# each paired against MF on the seeds both have (llmrec table --compare auc):
#
#   bash experiments/histllm_cf_seeds.sh ml100k      # MovieLens-100K: rating >= 4 is a like; text features
#   bash experiments/histllm_cf_seeds.sh synthetic   # the synthetic image catalog, one sampled negative per
#                                                    # positive; image features (shape/colour live in them)
#
# Scored on the same 600 seeded test rows as experiments/histllm_ml100k.sh / histllm_synthetic.sh (the row
# subset depends only on the split, not on the run's seed). The CF models train with their own objectives
# (MF on the CTR labels, as CoLLM's CIA; VBPR/LGMRec BPR; BM3 its negative-free loss) and score the rows.
# A model whose ranking-protocol runs exist already (runs/seeds-<name>-ml100k from the README's "Several
# seeds") is copied and re-evaluated on the 600 rows instead of trained again: same weights, other rows.
# ONLY="mf-ctr vbpr" runs just those rows; the table lists the rows that exist.
set -euo pipefail
WHICH=${1:-ml100k}
THREADS=${THREADS:-1}
SEEDS=(0 1 2 3 4)
case "$WHICH" in
    ml100k) DATA=data/ml-100k; OUT=${OUT:-runs/ctr-cf-ml100k}; FEAT=text
            [ -d "$DATA" ] || llmrec prepare ml-100k --out "$DATA"
            [ -f "$DATA/features/text.json" ] || llmrec features --data "$DATA" ;;
    synthetic) DATA=data/synth300-ctr; OUT=${OUT:-runs/ctr-cf-synth}; FEAT=image
            [ -d "$DATA" ] || llmrec prepare synthetic-images --max-users 300 --out "$DATA" --ctr-sampled-negatives 1
            [ -f "$DATA/features/image.json" ] || llmrec features --data "$DATA" --image --no-text ;;
    *) echo "usage: $0 [ml100k|synthetic]" >&2; exit 2 ;;
esac
EVAL=(--splits test --ctr-examples 600)
LONG=(-o epochs=400 -o patience=10)
run() {  # name model options...: 5 seeds into $OUT/name (a finished seed is reused, an interrupted one resumes)
    local name=$1 model=$2; shift 2
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return 0; fi
    local prior="runs/seeds-$name-ml100k"
    if [ "$WHICH" = ml100k ] && [ -d "$prior" ] && [ ! -d "$OUT/$name" ]; then
        mkdir -p "$OUT/$name"
        for s in "${SEEDS[@]}"; do
            cp -r "$prior/seed-$s" "$OUT/$name/seed-$s" && rm -f "$OUT/$name/seed-$s/metrics.json"
            llmrec evaluate "$OUT/$name/seed-$s" "${EVAL[@]}"
        done
        return 0
    fi
    llmrec train "$model" --data "$DATA" --out "$OUT/$name" --seeds "${SEEDS[@]}" --threads "$THREADS" \
        "${EVAL[@]}" "${LONG[@]}" "$@"
}
run mf-ctr mf -o objective=ctr -o dim=256
run vbpr vbpr -o feature="$FEAT"
run bm3 bm3 -o "features=[$FEAT]"
run vbpr-mg vbpr -o feature="$FEAT" -o mirror_gradient=true
run bm3-mg bm3 -o "features=[$FEAT]" -o mirror_gradient=true
run lgmrec lgmrec -o "features=[$FEAT]"
run lgmrec-mg lgmrec -o "features=[$FEAT]" -o mirror_gradient=true
rows=("$OUT/mf-ctr")  # MF first: every other row is paired against it
for d in "$OUT"/*/; do [ "${d%/}" = "$OUT/mf-ctr" ] || rows+=("${d%/}"); done
llmrec table "${rows[@]}" --metrics auc uauc --compare auc --out "$OUT/results"
for m in vbpr bm3 lgmrec; do  # Mirror Gradient against the same model without it
    if [ -d "$OUT/$m-mg" ]; then llmrec table "$OUT/$m" "$OUT/$m-mg" --metrics auc uauc --compare auc; fi
done

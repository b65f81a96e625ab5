#!/usr/bin/env bash
# HistLLM's image parts on the synthetic image catalog (MovieLens has no pictures): CTR rows with one sampled
# negative per positive; shape and colour are visible only in the pictures. HistLLM with vs without VMA, and
# TALLRec vs TALLRec_image, same budget. No MF tokens and no KE (the catalog's descriptions name shape and
# colour; its titles are opaque codes), so that only the pictures differ.
set -euo pipefail
THREADS=${THREADS:-1}
OUT=${OUT:-runs/synth-ctr}
DATA=data/synth300-ctr
[ -d "$DATA" ] || llmrec prepare synthetic-images --max-users 300 --out "$DATA" --ctr-sampled-negatives 1
[ -f "$DATA/features/image.json" ] || llmrec features --data "$DATA" --image --no-text
COMMON=(--data "$DATA" --splits test --ctr-examples 600 --threads "$THREADS" -o noun=item
        -o train_examples=512 -o eval_examples=200 -o step1_epochs=1 -o epochs=1)
run() { local name=$1 model=$2; shift 2; [ -f "$OUT/$name/metrics.json" ] || \
        llmrec train "$model" --out "$OUT/$name" "${COMMON[@]}" "$@"; }
run tallrec tallrec
run tallrec-image tallrec_image -o step1_from="$OUT/tallrec"
run histllm histllm -o ke=false -o cf=none -o image=true -o step1_from="$OUT/tallrec"
run histllm-wo-vma histllm -o ke=false -o cf=none -o image=false -o step1_from="$OUT/tallrec"
llmrec table "$OUT"/*/ --metrics auc uauc ctr_examples --out "$OUT/results"

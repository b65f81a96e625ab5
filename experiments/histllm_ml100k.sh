#!/usr/bin/env bash
# HistLLM, its ablations and its LLM baselines on MovieLens-100K (CTR: rating >= 4 is a like, 5 history items),
# SmolLM2-135M-Instruct, under one CPU budget: 512 training examples per step, valid AUC on 200 fixed rows,
# test AUC/UAUC on 600 fixed (seeded) rows. Every two-step model reuses TALLRec's step-1 LoRA, as the paper's
# step 1 is TALLRec training. No images exist for MovieLens, so every model here runs without VMA.
#
#   bash experiments/histllm_ml100k.sh [chat|paper]
#
# chat (default): llmrec's framing, every prompt in the backbone's chat template -> runs/ml100k-ctr;
# paper: -o recipe=paper, the raw '#Question: ... \n#Answer:' text as the paper feeds it -> runs/ml100k-ctr-paper;
# BinLLM's LoRA then starts from this framing's TALLRec run (lora_start=tallrec, its authors' configuration).
# The budget below is the script's own under both framings (recipe=paper would take every training row and the
# dataset's history length, 10 on ML-100K): 512 rows per step, 5 history items.
# ONLY="tallrec collm" runs just those rows (the names below); the table then lists the rows that exist.
set -euo pipefail
FRAMING=${1:-chat}
THREADS=${THREADS:-1}
DATA=${DATA:-data/ml-100k}
COMMON=(--data "$DATA" --splits test --ctr-examples 600 --threads "$THREADS"
        -o train_examples=512 -o eval_examples=200 -o step1_epochs=1 -o epochs=1 -o history_len=5)
case "$FRAMING" in
    chat) OUT=${OUT:-runs/ml100k-ctr} ;;
    paper) OUT=${OUT:-runs/ml100k-ctr-paper}; COMMON+=(-o recipe=paper) ;;
    *) echo "usage: $0 [chat|paper]" >&2; exit 2 ;;
esac
[ -d "$DATA" ] || llmrec prepare ml-100k --out "$DATA"
[ -f "$DATA/texts/from_title.parquet" ] || llmrec describe --data "$DATA" --mode from_title
if [ ! -f "$DATA/features/mf_user.json" ]; then  # CIA: 256-d MF trained on the CTR labels (CoLLM)
    [ -f runs/mf-ctr-ml100k/metrics.json ] || llmrec train mf --data "$DATA" --out runs/mf-ctr-ml100k \
        -o objective=ctr -o dim=256 -o epochs=400 -o patience=10
    llmrec features --data "$DATA" --cf runs/mf-ctr-ml100k
fi
run() { local name=$1 model=$2; shift 2
        if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return 0; fi
        [ -f "$OUT/$name/metrics.json" ] || llmrec train "$model" --out "$OUT/$name" "${COMMON[@]}" "$@"; }
STEP1=(-o step1_from="$OUT/tallrec")
run tallrec tallrec
run histllm-gru histllm "${STEP1[@]}"
run collm collm "${STEP1[@]}"
run histllm-transformer histllm -o encoder=transformer "${STEP1[@]}"
run histllm-wo-uhem histllm -o history=inline "${STEP1[@]}"
run histllm-wo-ke histllm -o ke=false "${STEP1[@]}"
run tallrec-desc tallrec_desc
case "$FRAMING" in  # paper: BinLLM's LoRA starts from TALLRec's (recipe=paper's lora_start=tallrec)
    paper) run binllm binllm "${STEP1[@]}" ;;
    *) run binllm binllm ;;
esac
for cf in mf-ctr sasrec; do  # the CF models on the very same 600 test rows (same seed -> same rows)
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $cf "* ]]; then continue; fi
    if [ ! -f "$OUT/$cf/metrics.json" ] && [ -d "runs/$cf-ml100k" ]; then
        rm -rf "$OUT/$cf" && cp -r "runs/$cf-ml100k" "$OUT/$cf" && rm -f "$OUT/$cf/metrics.json"
        llmrec evaluate "$OUT/$cf" --splits test --ctr-examples 600 --no-ranking
    fi
done
llmrec table "$OUT"/*/ --metrics auc uauc ctr_examples --out "$OUT/results"

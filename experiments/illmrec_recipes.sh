#!/usr/bin/env bash
# I-LLMRec's three recipes (issue 13) on the synthetic image catalog, the same budget: 888 end-to-end training
# examples through the LLM each (image token, ILA on, features [image]), then evaluation on the test split.
#   llmrec    the run synth-illmrec-image-ila-onepass-head of experiments/illmrec_synthetic.sh (image-ila-onepass):
#             3 epochs x 296 users, batch 8, lr 2e-3, early stopping, then 30 epochs of the projectors alone
#   llmrec-e2e  the llmrec recipe's defaults, 3 epochs x 296 users, end to end only
#   official  8 fixed epochs x 111 users, batch 8 (111 steps), AdamW lr 5e-5 linear decay, clipping 1.0, the
#             embedding matrix trained, official prompts/windows/negatives/ILA values, no validation
#   paper     8 fixed epochs x 111 users, batch 32 (32 steps), lr 1e-3, frozen LLM, ReLU adaptor, IRE summed over
#             the feature types (Eq. 7; one type here: the same as the mean), else official
# Under both official recipes the prompts are tokenised as tokenizer(text); bf16 modules and fp16 scoring apply
# only where the LM is in half precision (a GPU): on the CPU these runs are fp32 throughout.
# Dataset-specific settings shared by all three, as in illmrec_synthetic.sh: windows of 2..4 items and a 4-item
# test history (the catalog's rule needs only the last items).
set -euo pipefail
THREADS=${THREADS:-1}
COMMON=(--data data/synth300 --splits test --threads "$THREADS" --no-ctr
        -o representation=image -o "features=[image]" -o ila=true
        -o window_short=2 -o window_long=4 -o test_history=4)
[ -d data/synth300 ] || llmrec prepare synthetic-images --max-users 300 --out data/synth300
[ -f data/synth300/features/image.json ] || llmrec features --data data/synth300 --image --no-text
VARIANTS=("${@:-official paper}")
run() {  # a run without test metrics (never started, or interrupted) is (re)started: it resumes
    local out=runs/synth-illmrec-recipe-$1; shift
    grep -qs '"test"' "$out/metrics.json" || llmrec train illmrec --out "$out" "${COMMON[@]}" "$@"
}
for v in ${VARIANTS[*]}; do
    case $v in
        official) run official -o recipe=official -o train_users=111 ;;
        paper) run paper -o recipe=paper -o train_users=111 ;;
        llmrec) THREADS=$THREADS bash experiments/illmrec_synthetic.sh image-ila-onepass ;;
        # llmrec's recipe as it is (lr 1e-3, early stopping on 200 validation users), the same 888 examples
        # (3 epochs x 296 users), without the projectors-alone stage: end to end only, like the other two
        llmrec-e2e) run llmrec-e2e -o recipe=llmrec -o epochs=3 -o train_users=296 ;;
        prompts)  # the prompts each recipe builds for the first user, with token counts
            for r in llmrec paper official; do
                llmrec prompts illmrec --data data/synth300 -o recipe=$r -o representation=image \
                    -o "features=[image]" -o window_short=2 -o window_long=4 -o test_history=4 --json \
                    > "runs/synth-illmrec-prompts-$r.json"
            done ;;
        *) echo "unknown variant $v (official, paper, llmrec, llmrec-e2e, prompts)" >&2; exit 2 ;;
    esac
done

#!/usr/bin/env bash
# I-LLMRec's item-representation comparison on MovieLens-100K (issue 4 quality bar; paper Fig. 1 / Table 3
# protocol): the same frozen SmolLM2, the same IRE retrieval with CF (SASRec item embeddings) + text (MiniLM)
# features, the same training budget; only how history items appear in the prompt changes. MovieLens has no
# images, so the image token itself is not in this comparison (see experiments/illmrec_synthetic.sh).
# Budget for a 2-core CPU: 2 epochs of 240 random users (60 steps of 8 prompts), validation on 50 users,
# test ranking on 200 seeded users (the same users for every model, SASRec included). Variants to run can be
# named (`bash experiments/illmrec_ml100k.sh attribute-head`); by default all, then the table.
set -euo pipefail
THREADS=${THREADS:-1}
OUT=${OUT:-runs/ml100k-repr}
DATA=data/ml-100k
USERS=${USERS:-200}
COMMON=(--data "$DATA" --splits test --no-ctr --ranking-users "$USERS" --threads "$THREADS"
        -o "features=[cf,text]" -o epochs=2 -o train_users=240 -o eval_users=50)
[ -d "$DATA" ] || llmrec prepare ml-100k --out "$DATA"
[ -f "$DATA/features/text.json" ] || llmrec features --data "$DATA"
if [ ! -f "$DATA/features/sasrec_item.json" ]; then  # the CF features: SASRec item embeddings
    [ -f runs/sasrec-ml100k/metrics.json ] || llmrec train sasrec --data "$DATA" --out runs/sasrec-ml100k
    llmrec features --data "$DATA" --cf runs/sasrec-ml100k
fi
# generated texts (cached and resumable: a finished set returns at once, an interrupted one goes on)
llmrec describe --data "$DATA" --mode from_title --threads "$THREADS"
llmrec describe --data "$DATA" --mode summary --description-texts from_title --threads "$THREADS"  # TRSR-style
ONLY=" $* "
run() {  # a variant without test metrics (never started, or interrupted: it resumes) is (re)started
    local name=$1; shift
    [ -z "${ONLY// /}" ] || [[ $ONLY == *" $name "* ]] || return 0
    grep -qs '"test"' "$OUT/$name/metrics.json" || llmrec train illmrec --out "$OUT/$name" "${COMMON[@]}" "$@"
}
run attribute -o representation=attribute
run cf -o representation=cf
run description -o representation=description -o description_texts=from_title
run summary -o representation=summary
# the same models, then their projectors alone for up to 20 epochs on the cached [REC] states of 8 windows per
# user (-o head_epochs; stage1_from starts from the end-to-end weights above instead of training them again)
HEAD=(-o head_epochs=20 -o head_windows=8 -o patience=4)
run attribute-head -o representation=attribute -o stage1_from="$OUT/attribute/model" "${HEAD[@]}"
run cf-head -o representation=cf -o stage1_from="$OUT/cf/model" "${HEAD[@]}"
run description-head -o representation=description -o description_texts=from_title \
    -o stage1_from="$OUT/description/model" "${HEAD[@]}"
run summary-head -o representation=summary -o stage1_from="$OUT/summary/model" "${HEAD[@]}"
[ -z "${ONLY// /}" ] || exit 0
for base in sasrec popularity random; do  # the baselines on the very same test users (same seed, same users)
    if [ ! -f "$OUT/$base/metrics.json" ]; then
        [ -f "runs/$base-ml100k/metrics.json" ] || llmrec train "$base" --data "$DATA" --out "runs/$base-ml100k"
        rm -rf "$OUT/$base" && cp -r "runs/$base-ml100k" "$OUT/$base" && rm -f "$OUT/$base/metrics.json"
        llmrec evaluate "$OUT/$base" --splits test --no-ctr --ranking-users "$USERS"
    fi
done
llmrec table "$OUT"/*/ --metrics hit@5 ndcg@5 hit@10 ndcg@10 full_hit@10 ranking_users --out "$OUT/results"

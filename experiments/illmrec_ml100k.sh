#!/usr/bin/env bash
# I-LLMRec's item-representation comparison on MovieLens-100K (issue 4 quality bar; paper Fig. 1 / Table 3
# protocol): the same frozen SmolLM2, the same IRE retrieval with CF (SASRec item embeddings) + text (MiniLM)
# features, the same training budget; only how history items appear in the prompt changes. MovieLens has no
# images, so the image token itself is not in this comparison (see experiments/illmrec_synthetic.sh).
# Budget for a 2-core CPU: 2 epochs of 240 random users (60 steps of 8 prompts), validation on 50 users,
# test ranking on 200 seeded users (the same users for every model, SASRec included).
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
run() { local name=$1; shift; [ -f "$OUT/$name/metrics.json" ] || \
        llmrec train illmrec --out "$OUT/$name" "${COMMON[@]}" "$@"; }
run attribute -o representation=attribute
run cf -o representation=cf
run description -o representation=description -o description_texts=from_title
run summary -o representation=summary
for base in sasrec popularity random; do  # the baselines on the very same test users (same seed, same users)
    if [ ! -f "$OUT/$base/metrics.json" ]; then
        [ -f "runs/$base-ml100k/metrics.json" ] || llmrec train "$base" --data "$DATA" --out "runs/$base-ml100k"
        rm -rf "$OUT/$base" && cp -r "runs/$base-ml100k" "$OUT/$base" && rm -f "$OUT/$base/metrics.json"
        llmrec evaluate "$OUT/$base" --splits test --no-ctr --ranking-users "$USERS"
    fi
done
llmrec table "$OUT"/*/ --metrics hit@5 ndcg@5 hit@10 ndcg@10 full_hit@10 ranking_users --out "$OUT/results"

import numpy as np
import pytest

from llmrec.eval.metrics import (
    auc,
    full_ranks,
    hit_at_k,
    ndcg_at_k,
    popularity_breakdown,
    popularity_groups,
    ranking_metrics,
    target_ranks,
    uauc,
)


def test_target_ranks_are_pessimistic_on_ties():
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # target best -> rank 0
            [0.5, 0.5, 0.1, 0.1],  # one tie -> rank 1 (pessimistic)
            [1.0, 1.0, 1.0, 1.0],  # constant scores -> worst rank 3
            [0.2, 0.3, 0.4, 0.1],  # two above -> rank 2
        ]
    )
    np.testing.assert_array_equal(target_ranks(scores), [0, 1, 3, 2])


def test_nan_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        target_ranks(np.array([[np.nan, 0.1]]))


def test_hit_and_ndcg_hand_computed():
    ranks = np.array([0, 1, 3, 2, 10])
    assert hit_at_k(ranks, 1) == pytest.approx(1 / 5)
    assert hit_at_k(ranks, 3) == pytest.approx(3 / 5)
    assert hit_at_k(ranks, 5) == pytest.approx(4 / 5)
    # NDCG@3: ranks 0,1,2 count: 1 + 1/log2(3) + 1/log2(4) = 1 + 0.63093 + 0.5
    assert ndcg_at_k(ranks, 3) == pytest.approx((1 + 0.6309297535714575 + 0.5) / 5)
    # NDCG@5 adds rank 3: 1/log2(5) = 0.43068
    assert ndcg_at_k(ranks, 5) == pytest.approx((1 + 0.6309297535714575 + 0.5 + 0.43067655807339306) / 5)
    m = ranking_metrics(ranks, ks=(5,))
    assert set(m) == {"hit@5", "ndcg@5", "mrr"}
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 3 + 1 / 11) / 5)


def test_full_ranks_exclude_history_but_never_target():
    scores = np.array([[0.1, 0.9, 0.8, 0.5, 0.4]])
    # target item 3 (score .5); items 1 and 2 score higher; excluding history item 1 leaves one above.
    assert full_ranks(scores, np.array([3]))[0] == 2
    assert full_ranks(scores, np.array([3]), exclude=[np.array([1])])[0] == 1
    # a target that is also in the history is still ranked (not excluded)
    assert full_ranks(scores, np.array([1]), exclude=[np.array([1, 2])])[0] == 0


def test_auc_and_uauc_hand_computed():
    users = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    labels = np.array([1, 0, 0, 1, 1, 0, 1, 1])  # user 2 has one class only: excluded from UAUC
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.5, 0.3, 0.4])
    # user 0: positive .9 beats .8 and .1 -> 1.0; user 1: positives .2, .7 vs negative .5 -> (0 + 1)/2 = .5
    assert uauc(users, labels, scores) == pytest.approx(0.75)
    # global AUC: 5 positives x 3 negatives = 15 pairs.
    pos, neg = scores[labels == 1], scores[labels == 0]
    expected = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auc(labels, scores) == pytest.approx(expected)
    with pytest.raises(ValueError):
        auc(np.ones(3), np.zeros(3))


def test_popularity_groups_equal_size_and_breakdown():
    pop = np.array([5, 1, 9, 3, 7, 2, 8, 4, 6, 0])
    groups = popularity_groups(pop, 5)
    # ascending popularity (count): items 9(0),1(1) | 5(2),3(3) | 7(4),0(5) | 8(6),4(7) | 6(8),2(9)
    np.testing.assert_array_equal(groups, [2, 0, 4, 1, 3, 1, 4, 2, 3, 0])
    ranks = np.array([0, 20, 4])
    targets = np.array([2, 9, 5])  # groups 4, 0, 1
    rows = popularity_breakdown(ranks, targets, pop, ks=(5,))
    assert [r["users"] for r in rows] == [1, 1, 0, 0, 1]
    assert rows[4]["hit@5"] == 1.0 and rows[0]["hit@5"] == 0.0 and rows[1]["hit@5"] == 1.0
    assert (rows[0]["min_count"], rows[0]["max_count"]) == (0, 1)

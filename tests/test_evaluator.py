"""The evaluation protocol with models whose right answer is known."""

import numpy as np
import pytest

from llmrec.data.dataset import Dataset
from llmrec.eval.evaluator import evaluate_ctr, evaluate_ranking, rank_targets, seeded_rows
from llmrec.models.base import Recommender, build_model, load_model


class Oracle(Recommender):
    """In the synthetic data every user walks the catalog in id order: the next item is last + 1."""

    name = "oracle"

    def fit(self, dataset, run=None):
        self.ids = dataset.items["item_id"].tolist()

    def score_all(self, users, histories):
        scores = np.zeros((len(users), self.n_items))
        for b, h in enumerate(histories):
            nxt = (int(self.ids[h[-1]][1:]) + 1) % self.n_items
            scores[b, self.ids.index(f"i{nxt:03d}")] = 1.0
        return scores


def test_oracle_is_perfect_and_anti_oracle_is_worst(synthetic_dataset):
    ds = Dataset(synthetic_dataset)
    oracle = Oracle(None, ds.n_users, ds.n_items)
    oracle.fit(ds)
    metrics, breakdown = evaluate_ranking(oracle, ds, "test", ks=(1, 5))
    assert metrics["hit@1"] == 1.0 and metrics["ndcg@5"] == 1.0 and metrics["full_hit@1"] == 1.0
    assert sum(r["users"] for r in breakdown) == ds.n_users

    class Anti(Oracle):
        def score_all(self, users, histories):
            return -super().score_all(users, histories)

    anti = Anti(None, ds.n_users, ds.n_items)
    anti.fit(ds)
    metrics, _ = evaluate_ranking(anti, ds, "test", ks=(1, 5))
    assert metrics["hit@5"] == 0.0 and metrics["mrr"] == pytest.approx(
        1 / 11
    )  # last of target + 10 negatives


def test_random_model_near_chance_and_deterministic(synthetic_dataset, tmp_path):
    ds = Dataset(synthetic_dataset)
    model = build_model("random", {"seed": 1}, ds.n_users, ds.n_items)
    model.fit(ds)
    m1, _ = evaluate_ranking(model, ds, "test", ks=(5,), full=False)
    model.save(tmp_path / "m")
    m2, _ = evaluate_ranking(load_model(tmp_path / "m"), ds, "test", ks=(5,), full=False)
    assert m1 == m2
    assert 0.1 <= m1["hit@5"] <= 0.9  # chance is 5/11


def test_popularity_scores_are_training_counts(synthetic_dataset):
    ds = Dataset(synthetic_dataset)
    model = build_model("popularity", {}, ds.n_users, ds.n_items)
    model.fit(ds)
    np.testing.assert_array_equal(model.score_all(np.array([0]), [np.array([0])])[0], ds.item_popularity)
    ctr, _ = evaluate_ctr(model, ds, "test")
    assert 0.0 <= ctr["auc"] <= 1.0 and 0.0 <= ctr["uauc"] <= 1.0


def test_user_subset_ranks_are_the_full_runs_rows(synthetic_dataset):
    ds = Dataset(synthetic_dataset)
    model = build_model("popularity", {}, ds.n_users, ds.n_items)
    model.fit(ds)
    rows = seeded_rows(ds.n_users, 7)
    assert len(rows) == 7 and np.array_equal(rows, seeded_rows(ds.n_users, 7))  # same seed, same users
    assert np.array_equal(seeded_rows(5, 9), np.arange(5))
    every = rank_targets(model, ds, "test", full=True, batch_size=4)
    subset = rank_targets(model, ds, "test", full=True, batch_size=4, rows=rows)
    for key in ("sampled", "full", "targets"):
        assert np.array_equal(subset[key], every[key][rows])

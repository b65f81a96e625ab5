"""Cold-start evaluation (``prepare --cold-items``): held-out items never reach training, cold cases rank among
held-out items with fair ties, ID models get the chance level exactly, feature models score unseen items."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import synthetic_tables
from llmrec.data.dataset import Dataset
from llmrec.data.processing import ProcessConfig, finalize, write_dataset
from llmrec.data.schema import make_interactions, make_items
from llmrec.eval.evaluator import evaluate_cold_ranking, evaluate_ranking
from llmrec.eval.metrics import expected_ranking_metrics, tie_counts
from llmrec.features.store import ids_checksum, save_feature
from llmrec.models.base import BUILTIN_MODELS, build_model, get_model_class
from llmrec.training import fit

SHAPES, WARM, COLD = 4, 36, 12  # items 0..35 appear from the start, 36..47 only as the last two items


def prepare(root, cold=0.25, **kw):
    items, inter = synthetic_tables()
    cfg = ProcessConfig(kcore=0, num_negatives=10, seed=3, cold_items=cold, **kw)
    write_dataset(finalize(items, inter, cfg, {"name": "s"}, {}, []), root)
    return Dataset(root)


def test_held_out_items_never_reach_a_training_table(tmp_path):
    ds = prepare(tmp_path / "a")
    cold = ds.cold_items
    assert cold.sum() == 10 and ds.meta["cold_items"]["items"] == 10  # round(0.25 * 40)
    first = {}  # the held-out items are those whose first interaction is the latest
    for seq, ts in zip(ds.sequences, ds._parquet("sequences.parquet")["timestamps"]):
        for i, t in zip(seq, ts):
            first[int(i)] = min(first.get(int(i), t), t)
    assert min(first[i] for i in np.flatnonzero(cold)) >= max(first[i] for i in np.flatnonzero(~cold))
    assert not any(cold[s].any() for s in ds.train_sequences)
    assert (ds.item_popularity[cold] == 0).all()
    train = ds.ctr("train")
    assert not cold[train["target"].to_numpy()].any()
    assert not any(cold[np.asarray(h, dtype=np.int64)].any() for h in train["history"])
    for split, cut in (("valid", -2), ("test", -1)):
        targets = np.array([s[cut] for s in ds.sequences])
        assert not cold[ds.negatives(split)].any()  # warm candidates are warm
        neg = ds.cold_negatives(split)
        cases = cold[targets]
        assert cases.sum() == ds.meta["cold_items"][split]["cold_cases"] > 0
        assert (neg[~cases] == -1).all() and cold[neg[cases]].all()
        for u in np.flatnonzero(cases):
            assert not set(neg[u]) & set(ds.sequences[u].tolist()) and len(set(neg[u])) == neg.shape[1]
    # frozen and seeded: the same settings write the same bytes; recorded and checksummed in meta.json
    again = prepare(tmp_path / "b")
    for rel in ("eval/cold_items.npy", "eval/test_cold_negatives.npy", "eval/valid_negatives.npy"):
        assert (ds.root / rel).read_bytes() == (again.root / rel).read_bytes()
    assert "eval/test_cold_negatives.npy" in ds.meta["checksums"] and ds.meta["config"]["cold_items"] == 0.25
    # another fraction is another dataset: a run trained on one refuses to resume on the other
    assert prepare(tmp_path / "c", cold=0.1).identity != ds.identity
    plain = prepare(tmp_path / "d", cold=0.0)
    assert not plain.cold_items.any() and "cold_items" not in plain.meta


def test_fair_ties_by_hand():
    greater, tied = tie_counts(np.array([[1.0, 1.0, 1.0, 1.0], [2.0, 3.0, 1.0, 2.0]]))
    assert greater.tolist() == [0, 1] and tied.tolist() == [3, 1]
    m = expected_ranking_metrics(np.array([0]), np.array([3]), ks=(1, 2))
    assert m["hit@1"] == pytest.approx(0.25) and m["hit@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / np.log2(3)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # no ties: the usual metrics
    m = expected_ranking_metrics(np.array([2]), np.array([0]), ks=(3,))
    assert m["hit@3"] == 1.0 and m["ndcg@3"] == pytest.approx(0.5)


def test_every_model_says_whether_it_scores_unseen_items():
    id_models = {"popularity", "random", "sasrec", "gru4rec", "bert4rec", "mf"}
    for name in BUILTIN_MODELS:
        assert get_model_class(name).scores_unseen_items is (name not in id_models), name


def test_an_id_model_ranks_cold_cases_at_chance_exactly(tmp_path):
    from llmrec.pipeline import EvalConfig, TrainConfig, train

    prepare(tmp_path / "ds")
    run = train(
        TrainConfig(
            model="popularity",
            data=str(tmp_path / "ds"),
            out=str(tmp_path / "run"),
            eval=EvalConfig(ks=[1, 3]),
        )
    )
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("valid", "test"):
        cold = metrics[f"{split}_cold"]
        assert cold["scores_unseen_items"] == 0 and cold["cases"] > 0
        for k in (1, 3):
            assert cold[f"hit@{k}"] == pytest.approx(cold[f"chance@{k}"], abs=1e-12)
            assert cold[f"full_hit@{k}"] == pytest.approx(cold[f"full_chance@{k}"], abs=1e-12)
        assert metrics[split]["ranking_users"] > 0 and "hit@3" in metrics[split]  # the warm cases


@pytest.fixture(scope="module")
def shape_cold_dataset(tmp_path_factory):
    """A rule only the pictures reveal (the next item's shape is the previous one's + 1, mod 4; identical
    titles; "image" = shape one-hot + noise) with 12 items introduced last: they appear only as the two
    last items of a user, so they are held out (cold_items 0.25) and the cold cases' answer is known."""
    rng = np.random.default_rng(2)
    items = [{"item_id": f"i{i:03d}", "title": "Item"} for i in range(WARM + COLD)]
    rows = []
    for u in range(60):
        shape = int(rng.integers(SHAPES))
        for t in range(10):
            pool = WARM if t < 8 or rng.random() < 0.3 else COLD
            base = 0 if pool == WARM else WARM
            item = base + SHAPES * int(rng.integers(pool // SHAPES)) + shape
            rows.append({"user_id": f"u{u:02d}", "item_id": f"i{item:03d}", "timestamp": 10 * t + u % 3})
            shape = (shape + 1) % SHAPES
    items, inter = make_items(items, source="t"), make_interactions(rows, source="t")
    root = tmp_path_factory.mktemp("shapes") / "ds"
    cfg = ProcessConfig(kcore=0, num_negatives=10, cold_items=0.25)
    write_dataset(finalize(items, inter, cfg, {}, {}, []), root)
    ds = Dataset(root)
    shapes = ds.items["item_id"].str[1:].astype(int).to_numpy() % SHAPES
    assert set(np.flatnonzero(ds.cold_items)) == set(
        np.flatnonzero(ds.items["item_id"].str[1:].astype(int) >= WARM)
    )
    image = np.eye(SHAPES, dtype=np.float32)[shapes] + 0.05 * rng.normal(size=(ds.n_items, SHAPES))
    spec = {"kind": "item", "encoder": "test", "ids_sha256": ids_checksum(ds.items["item_id"].tolist())}
    save_feature(ds.features_dir, "image", image.astype(np.float32), spec)
    return ds


@pytest.mark.slow
@pytest.mark.parametrize("ire_loss", ["bce", "softmax"])
def test_illmrec_ranks_held_out_items_from_their_pictures(shape_cold_dataset, tiny_llm, ire_loss):
    ds = shape_cold_dataset
    torch.manual_seed(0)
    options = {
        "ire_loss": ire_loss,
        "adaptor_hidden": 16,
        "d_shared": 8,
        "batch_size": 8,
        "features": ["image"],
        "representation": "image",
        "ila": False,
        **{"window_short": 2, "window_long": 2, "test_history": 2},  # the rule needs the last item only
        **{"epochs": 8, "patience": 8, "lr": 3e-3, "eval_users": None},
        "backbone": {"llm": tiny_llm},
    }
    model = build_model("illmrec", options, ds.n_users, ds.n_items)
    fit(model, ds)
    cold = evaluate_cold_ranking(model, ds, "test", ks=(1, 3), full=False)
    assert cold["scores_unseen_items"] == 1 and cold["cases"] > 20
    assert cold["hit@3"] > cold["chance@3"] + 0.3, cold  # right shape: 3 of the ~10 candidates
    warm, _ = evaluate_ranking(model, ds, "test", ks=(3,), full=False)
    assert warm["hit@3"] > 0.3, warm


def test_the_softmax_ire_loss_never_sees_held_out_items():
    """ire_loss=softmax: cross-entropy over the trainable items only; a held-out item's vector cannot change
    the loss (it is neither a positive nor a negative), and the loss is the plain cross-entropy over the rest."""
    import torch.nn.functional as F

    from llmrec.models.llm.ire_loss import softmax_term

    gen = torch.Generator().manual_seed(0)
    o_u, items = torch.randn(5, 4, generator=gen), torch.randn(9, 4, generator=gen)
    held_out = torch.tensor([False, False, True, False, True, False, False, False, True])
    target = torch.tensor([0, 3, 5, 6, 7])
    loss = softmax_term(o_u, items, target, held_out, 0.5)
    moved = items.clone()
    moved[held_out] += 100.0
    assert torch.equal(softmax_term(o_u, moved, target, held_out, 0.5), loss)
    kept = torch.nonzero(~held_out).flatten()
    remap = {int(i): j for j, i in enumerate(kept)}
    plain = F.cross_entropy((o_u @ items[kept].T) * 0.5, torch.tensor([remap[int(t)] for t in target]))
    assert torch.allclose(loss, plain)


@pytest.mark.parametrize("name", ["vbpr", "bm3", "lgmrec"])
def test_feature_models_score_unseen_items_without_their_id_part(shape_cold_dataset, name):
    """The ID embedding of an item never trained on does not reach its score (it is zero, not the random
    initial vector); its feature does: a held-out item's score changes with its feature, not its ID row."""
    ds = shape_cold_dataset
    torch.manual_seed(0)
    options = {"epochs": 1, "validate": False, "dim": 8}
    options.update({"feature": "image"} if name == "vbpr" else {"features": ["image"]})
    model = build_model(name, options, ds.n_users, ds.n_items)
    fit(model, ds)
    model.eval()
    users, hist = np.arange(4), [np.zeros(0, np.int64)] * 4
    cold = np.flatnonzero(ds.cold_items)
    before = model.score_all(users, hist)[:, cold]
    with torch.no_grad():
        model.item_emb.weight[torch.from_numpy(cold)] += 5.0
    assert np.allclose(model.score_all(users, hist)[:, cold], before, atol=1e-5)
    assert np.ptp(before, axis=1).min() > 0  # the held-out items are told apart (by their features)


def test_the_experiment_tables_mean_std_and_the_paired_test():
    from llmrec.experiments.cold_start import format_cold_start, paired_tests, summary_row

    def run(hit, chance, unseen):
        return {
            "warm_hit@10": 0.5, "warm_ndcg@10": 0.3, "cold_hit@10": hit, "cold_ndcg@10": hit / 2,
            "chance": chance, "cases": 10.0, "scores_unseen": unseen,
        }  # fmt: skip

    runs = {"illmrec-image": [run(h, 0.1, 1.0) for h in (0.4, 0.5, 0.6)], "sasrec": [run(0.1, 0.1, 0.0)] * 3}
    rows = [summary_row("d", v, r) for v, r in runs.items()]
    assert rows[0]["cold_hit@10"] == pytest.approx(0.5) and rows[0]["cold_hit@10_std"] == pytest.approx(0.1)
    [test] = paired_tests("d", runs)  # the ID model is the fallback, not tested against itself
    assert test["variant"] == "illmrec-image" and test["mean_difference"] == pytest.approx(0.4)
    assert test["p_value"] < 0.05
    text = format_cold_start({"rows": rows, "tests": [test]})
    assert "0.5000 ± 0.1000" in text and "sasrec (fallback)" in text and "Paired t-test" in text

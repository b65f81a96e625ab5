"""MF (BPR and CTR objectives) and VBPR on a block-structured catalog whose right answer is known.

Users and items fall into two groups; a user consumes (and likes) only items of their own group. A
factorisation must rank unseen in-group items above out-of-group ones, a feature that encodes the group
must help VBPR, and CTR labels (liked = same group) must give a valid AUC far above 0.5.
"""

import json

import numpy as np
import pytest
import torch

from llmrec.data.dataset import Dataset
from llmrec.errors import ConfigError, LlmrecError
from llmrec.eval.evaluator import evaluate_ranking
from llmrec.features.store import ids_checksum, save_feature
from llmrec.models.base import build_model, load_model
from llmrec.models.mf import MF, sample_unseen, training_pairs
from llmrec.runs import Run
from llmrec.training import fit

N_USERS, N_ITEMS = 40, 40
MISSING = [1, 22, 37]  # items without the VBPR feature


def _group(idx: str) -> int:
    """Group of a user ('u7') or item ('i007') id: the first half of each is group 0."""
    return int(int(idx[1:]) >= (N_USERS if idx[0] == "u" else N_ITEMS) // 2)


def _block_dataset(root, per_user=10, dislikes=0, num_negatives=20, seed=0):
    """Each user consumes ``per_user`` random items of their own group (rating 5) and ``dislikes`` of the
    other group (rating 1); timestamps interleave users so the CTR time split covers everyone."""
    from llmrec.data.processing import ProcessConfig, finalize, write_dataset
    from llmrec.data.schema import make_interactions, make_items

    rng = np.random.default_rng(seed)
    half = N_ITEMS // 2
    items = make_items(
        [{"item_id": f"i{i:03d}", "title": f"Item {i}"} for i in range(N_ITEMS)], source="blocks"
    )
    rows = []
    for u in range(N_USERS):
        own = _group(f"u{u}")
        liked = own * half + rng.permutation(half)[:per_user]
        if u < 2:  # every item appears somewhere
            liked = own * half + np.arange(half)[u * 10 : u * 10 + per_user]
        other = (1 - own) * half + rng.permutation(half)[:dislikes]
        chosen = [(i, 5.0) for i in liked] + [(i, 1.0) for i in other]
        order = rng.permutation(len(chosen))
        for t, k in enumerate(order):
            item, rating = chosen[k]
            rows.append(
                {"user_id": f"u{u}", "item_id": f"i{item:03d}", "timestamp": 1000 * t + u, "rating": rating}
            )
    inter = make_interactions(rows, source="blocks")
    cfg = ProcessConfig(kcore=0, num_negatives=num_negatives, seed=3)
    tables = finalize(items, inter, cfg, {"name": "blocks"}, {}, [])
    write_dataset(tables, root)
    return Dataset(root)


@pytest.fixture(scope="module")
def blocks(tmp_path_factory):
    """Block dataset with an 'image' feature = one-hot item group + noise, 3 items missing."""
    ds = _block_dataset(tmp_path_factory.mktemp("blocks") / "ds")
    save_group_feature(ds, noise_seed=0)
    return ds


def save_group_feature(ds, noise_seed):
    rng = np.random.default_rng(noise_seed)
    groups = np.array([_group(i) for i in ds.items["item_id"]])
    values = np.eye(2, dtype=np.float32)[groups] + 0.1 * rng.normal(size=(ds.n_items, 2)).astype(np.float32)
    values = np.concatenate(
        [values, rng.normal(size=(ds.n_items, 2)).astype(np.float32)], axis=1
    )  # + pure noise
    missing = np.zeros(ds.n_items, dtype=bool)
    missing[MISSING] = True
    values[missing] = 0.0
    spec = {"kind": "item", "encoder": "test", "ids_sha256": ids_checksum(ds.items["item_id"].tolist())}
    save_feature(ds.features_dir, "image", values, spec, missing)


def _groups(ds):
    return np.array([_group(u) for u in ds.users["user_id"]]), np.array(
        [_group(i) for i in ds.items["item_id"]]
    )


def _in_group_auc(model, ds):
    """Per user, the fraction of (unseen in-group, out-of-group) item pairs scored in the right order."""
    ug, ig = _groups(ds)
    scores = model.score_all(np.arange(ds.n_users), [np.zeros(0, np.int64)] * ds.n_users)
    fracs = []
    for u in range(ds.n_users):
        unseen = np.setdiff1d(np.arange(ds.n_items), ds.train_sequences[u])
        pos, neg = scores[u, unseen[ig[unseen] == ug[u]]], scores[u, ig != ug[u]]
        fracs.append((pos[:, None] > neg[None, :]).mean())
    return float(np.mean(fracs))


def _fit(name, ds, **options):
    torch.manual_seed(0)
    tiny = {"dim": 8, "epochs": 40, "batch_size": 64, "lr": 0.02, "eval_every": 5, "patience": 3}
    model = build_model(name, {**tiny, **options}, ds.n_users, ds.n_items)
    fit(model, ds)
    return model


def _random_hit10(ds):
    rand = build_model("random", {"seed": 0}, ds.n_users, ds.n_items)
    return evaluate_ranking(rand, ds, "test", ks=(10,), full=False)[0]["hit@10"]


def test_defaults_and_validation():
    m = build_model("mf", {}, 5, 7)
    assert (m.cfg.dim, m.cfg.lr, m.cfg.batch_size, m.cfg.objective, m.cfg.item_bias) == (
        64,
        1e-3,
        1024,
        "bpr",
        True,
    )
    v = build_model("vbpr", {}, 5, 7)
    assert (v.cfg.feature, v.cfg.visual_dim, v.cfg.dim) == ("image", 32, 64)
    for bad in ({"dim": 0}, {"reg": -1.0}, {"objective": "mse"}):
        with pytest.raises(ConfigError):
            build_model("mf", bad, 5, 7)
    with pytest.raises(ConfigError):
        build_model("vbpr", {"visual_dim": 0}, 5, 7)


@pytest.mark.timeout(30)
def test_one_sampler_keeps_the_rejection_stream_and_never_loops(monkeypatch, caplog):
    from llmrec.models import neural

    def reference(rng, seqs, n_items):  # plain rejection sampling, one user after the other
        out = []
        for seq in seqs:
            while (c := int(rng.integers(n_items))) in set(seq.tolist()):
                pass
            out.append(c)
        return out

    seqs = [np.array([0, 1, 2, 3]), np.array([5, 6]), np.arange(1, 9)]
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    got = [int(neural.negatives_for_user(rng_a, u, s, 10, 1)[0]) for u, s in enumerate(seqs)]
    assert got == reference(rng_b, seqs, 10) and rng_a.random() == rng_b.random()
    # a user who has seen every item: uniform over all items, one warning naming the user, no endless loop
    monkeypatch.setattr(neural, "_warned_all_seen", False)
    everything = np.arange(10)[::-1]
    with caplog.at_level("WARNING", logger="llmrec.models.neural"):
        for _ in range(3):
            neg = neural.negatives_for_user(np.random.default_rng(0), 4, everything, 10, 50)
            assert neg.shape == (50,) and ((neg >= 0) & (neg < 10)).all()
    warned = [r.getMessage() for r in caplog.records if "interacted with all 10 items" in r.getMessage()]
    assert len(warned) == 1 and "user index 4" in warned[0]
    users = np.array([0, 1, 0, 1])
    seen = neural.seen_keys(np.array([0] * 10 + [1]), np.concatenate([everything, [3]]), 10)
    neg = sample_unseen(np.random.default_rng(1), users, 10, seen)
    assert (neg[users == 1] != 3).all()  # the other user still gets unseen items


def test_bpr_negatives_are_unseen(blocks):
    users, items = training_pairs(blocks.train_sequences, blocks.n_items)
    assert len(users) == sum(len(s) for s in blocks.train_sequences)
    seen = np.unique(users * blocks.n_items + items)
    neg = sample_unseen(np.random.default_rng(0), users, blocks.n_items, seen)
    assert not np.isin(users * blocks.n_items + neg, seen).any()
    batch = next(
        build_model("mf", {"batch_size": 16}, blocks.n_users, blocks.n_items).train_batches(
            blocks, np.random.default_rng(0)
        )
    )
    assert set(batch) == {"users", "pos", "neg"} and batch["users"].shape == (16,)


def test_mf_learns_the_blocks(blocks):
    model = _fit("mf", blocks)
    hit10 = evaluate_ranking(model, blocks, "test", ks=(10,), full=False)[0]["hit@10"]
    assert hit10 >= 0.9 and hit10 >= _random_hit10(blocks) + 0.3
    assert _in_group_auc(model, blocks) >= 0.9


def test_export_embeddings_align_with_scores(blocks):
    for name, options in [("mf", {}), ("mf", {"item_bias": False}), ("vbpr", {"visual_dim": 3})]:
        model = _fit(name, blocks, epochs=2, **options)
        emb = model.export_embeddings()
        users, items = emb["user"][1], emb["item"][1]
        dim = model.cfg.dim + (model.cfg.visual_dim if name == "vbpr" else 0)
        assert emb["user"][0] == "user" and emb["item"][0] == "item"
        assert users.shape == (blocks.n_users, dim) and items.shape == (blocks.n_items, dim)
        with torch.no_grad():
            bias = model.item_terms(torch.arange(blocks.n_items))[1].numpy()  # (N,)
        assert (np.abs(bias).max() > 0) == options.get("item_bias", True)
        full = model.score_all(np.arange(blocks.n_users), [np.zeros(0, np.int64)] * blocks.n_users)
        np.testing.assert_allclose(users @ items.T + bias, full, rtol=1e-5, atol=1e-5)
        u, i = 7, 31  # row u of the export is user index u, row i item index i
        np.testing.assert_allclose(users[u] @ items[i] + bias[i], full[u, i], rtol=1e-5, atol=1e-5)


def test_vbpr_learns_saves_and_reloads(blocks, tmp_path):
    model = _fit("vbpr", blocks, dim=4, visual_dim=4)
    hit10 = evaluate_ranking(model, blocks, "test", ks=(10,), full=False)[0]["hit@10"]
    assert hit10 >= 0.9 and hit10 >= _random_hit10(blocks) + 0.3
    assert _in_group_auc(model, blocks) >= 0.9
    # the visual term alone, <theta_u, E f_i> + <beta', f_i>, already separates the groups
    ug, ig = _groups(blocks)
    present = np.setdiff1d(np.arange(blocks.n_items), MISSING)
    with torch.no_grad():
        vectors, bias = model.item_terms(torch.from_numpy(present))  # (P, d + d'), (P,)
        visual = model.user_visual.weight @ vectors[:, model.cfg.dim :].T + (bias - model.item_bias[present])
    same = ug[:, None] == ig[None, present]  # (U, P)
    assert np.mean([(v[s][:, None] > v[~s][None, :]).mean() for v, s in zip(visual.numpy(), same)]) >= 0.9
    # missing items use the learned vector m and no beta' term
    with torch.no_grad():
        vectors, _ = model.item_terms(torch.tensor(MISSING))
    np.testing.assert_array_equal(
        vectors[:, model.cfg.dim :].numpy(), np.tile(model.missing_visual.detach().numpy(), (3, 1))
    )
    assert model.missing_visual.abs().sum() > 0  # it was trained
    model.save(tmp_path / "m")
    ref = json.loads((tmp_path / "m" / "feature.json").read_text())
    where = json.loads((tmp_path / "m" / "model.json").read_text())["dataset"]
    assert ref["feature"] == "image" and where["absolute"] == str(blocks.root.resolve())
    users = np.arange(blocks.n_users)
    hist = [np.zeros(0, np.int64)] * blocks.n_users
    np.testing.assert_array_equal(
        load_model(tmp_path / "m").score_all(users, hist), model.score_all(users, hist)
    )


def test_vbpr_refuses_a_changed_feature(tmp_path):
    ds = _block_dataset(tmp_path / "ds", per_user=6)
    save_group_feature(ds, noise_seed=0)
    _fit("vbpr", ds, epochs=1).save(tmp_path / "m")
    save_group_feature(ds, noise_seed=1)  # recomputed: a new, valid feature with other values
    with pytest.raises(LlmrecError, match="feature 'image' changed since the model was trained"):
        load_model(tmp_path / "m")
    save_group_feature(ds, noise_seed=0)
    load_model(tmp_path / "m")  # the same values again: loads
    with open(ds.features_dir / "image.npy", "r+b") as f:  # bytes edited behind the manifest's back
        f.seek(-4, 2)
        f.write(b"\x00\x00\x80\x7f")
    with pytest.raises(LlmrecError, match="checksum mismatch"):
        load_model(tmp_path / "m")


def test_vbpr_needs_its_feature(tmp_path):
    ds = _block_dataset(tmp_path / "ds", per_user=6)
    with pytest.raises(LlmrecError, match="vbpr needs the item feature 'image'") as e:
        _fit("vbpr", ds, epochs=1)
    assert "-o feature=" in str(e.value)


def test_mf_ctr_objective_early_stops_on_valid_auc(tmp_path):
    ds = _block_dataset(tmp_path / "ds", per_user=8, dislikes=4)
    labels_ok = all(
        (_group(ds.users["user_id"][u]) == _group(ds.items["item_id"][t])) == bool(y)
        for u, t, y in ds.ctr("train")[["user_idx", "target", "label"]].itertuples(index=False)
    )
    assert labels_ok
    torch.manual_seed(0)
    options = {
        "objective": "ctr",
        "dim": 8,
        "epochs": 60,
        "batch_size": 64,
        "lr": 0.02,
        "eval_every": 2,
        "patience": 3,
    }
    model = build_model("mf", options, ds.n_users, ds.n_items)
    batch = next(model.train_batches(ds, np.random.default_rng(0)))
    assert set(batch) == {"users", "pos", "labels"}
    with Run(tmp_path / "run", model.cfg) as run:
        fit(model, ds, run)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]
    aucs = [h["valid_auc"] for h in history if "valid_auc" in h]
    assert aucs and not any("valid_ndcg@10" in h for h in history)
    assert metrics["best_valid_auc"] == max(aucs) >= 0.85
    assert model.validation_metric(ds) == ("valid_auc", pytest.approx(max(aucs)))  # the best weights are kept


def test_validation_metric_hook_drives_early_stopping(blocks):
    from llmrec.training import fit

    class Worsening(MF):
        """Every validation is worse than the one before: training stops after 1 + patience of them."""

        calls = 0

        def validation_metric(self, ds):
            self.calls += 1
            return "valid_fake", -float(self.calls)

    cfg = build_model("mf", {"epochs": 50, "patience": 2, "dim": 4}, 1, 1).cfg
    history = fit(Worsening(cfg, blocks.n_users, blocks.n_items), blocks)
    assert [h["valid_fake"] for h in history] == [-1.0, -2.0, -3.0]

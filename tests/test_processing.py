import hashlib

import numpy as np
import pandas as pd
import pytest

from llmrec.data.dataset import Dataset
from llmrec.data.processing import PrepareConfig, ProcessConfig, finalize, kcore, prepare, write_dataset
from llmrec.data.schema import make_interactions, strip_html
from llmrec.errors import LlmrecError


def _inter(pairs):
    return make_interactions(
        [{"user_id": u, "item_id": i, "timestamp": t} for t, (u, i) in enumerate(pairs)], "test"
    )


def test_strip_html():
    assert strip_html("<b>Great</b> &amp; cheap<br/>now") == "Great & cheap now"
    assert strip_html(["<p>a</p>", "b"]) == "a b"
    assert strip_html(None) == "" and strip_html(float("nan")) == ""


def test_kcore_is_iterative():
    # 2-core: item C has one interaction -> removed; then user u3 has only one left -> removed;
    # then item D drops to one interaction -> removed, and so on until stable.
    pairs = [
        ("u1", "A"),
        ("u1", "B"),
        ("u2", "A"),
        ("u2", "B"),
        ("u3", "C"),
        ("u3", "D"),
        ("u4", "D"),
        ("u4", "A"),
    ]
    out = kcore(_inter(pairs), 2)
    assert sorted(zip(out["user_id"], out["item_id"])) == [("u1", "A"), ("u1", "B"), ("u2", "A"), ("u2", "B")]
    # every survivor satisfies the core condition
    assert out["user_id"].value_counts().min() >= 2 and out["item_id"].value_counts().min() >= 2


def _prepared(tmp_path, synthetic, **kw):
    items, inter = synthetic
    cfg = ProcessConfig(**{"kcore": 0, "num_negatives": 10, **kw})
    tables = finalize(items, inter, cfg, {"name": "synthetic"}, {}, [])
    write_dataset(tables, tmp_path)
    return Dataset(tmp_path)


@pytest.fixture
def synthetic():
    from conftest import synthetic_tables

    items, inter = synthetic_tables()
    return items, inter.sample(frac=1.0, random_state=0)  # shuffled rows: order must come from timestamps


def test_leave_one_out_is_chronological(tmp_path, synthetic):
    ds = _prepared(tmp_path / "d", synthetic)
    items, inter = synthetic
    assert ds.n_users == 30 and ds.n_items == 40
    u0 = inter[inter["user_id"] == "u0"].sort_values("timestamp")["item_id"].tolist()
    idx = {iid: i for i, iid in enumerate(ds.items["item_id"])}
    seq = ds.sequences[ds.users["user_id"].tolist().index("u0")]
    assert seq.tolist() == [idx[i] for i in u0]
    test, valid = ds.split("test"), ds.split("valid")
    assert test.targets[0] == ds.sequences[0][-1] and valid.targets[0] == ds.sequences[0][-2]
    assert test.histories[0].tolist() == ds.sequences[0][:-1].tolist()
    assert ds.train_sequences[0].tolist() == ds.sequences[0][:-2].tolist()
    # HTML was stripped at import
    assert ds.items.loc[0, "title"] == "Item 0"


def test_negatives_never_seen_unique_and_seeded(tmp_path, synthetic):
    ds = _prepared(tmp_path / "a", synthetic, seed=7)
    for split in ("valid", "test"):
        neg = ds.negatives(split)
        assert neg.shape == (30, 10) and neg.dtype == np.int32
        for u, row in enumerate(neg):
            assert len(set(row.tolist())) == 10
            assert not set(row.tolist()) & set(ds.sequences[u].tolist())
    assert not np.array_equal(ds.negatives("valid"), ds.negatives("test"))
    same = _prepared(tmp_path / "b", synthetic, seed=7)
    other = _prepared(tmp_path / "c", synthetic, seed=8)
    read = lambda d, s: (d.root / "eval" / f"{s}_negatives.npy").read_bytes()  # noqa: E731
    assert read(ds, "test") == read(same, "test")
    assert read(ds, "test") != read(other, "test")


def test_too_few_items_for_negatives_is_a_clear_error(tmp_path, synthetic):
    with pytest.raises(LlmrecError, match="negatives"):
        _prepared(tmp_path / "d", synthetic, num_negatives=35)


def test_ctr_examples(tmp_path, synthetic):
    ds = _prepared(tmp_path / "d", synthetic, ctr_history_len=3, like_threshold=4.0)
    parts = {s: ds.ctr(s) for s in ("train", "valid", "test")}
    total = sum(len(p) for p in parts.values())
    # every interaction but the first of each user has a non-empty liked history (the first is rated 5)
    assert total == 30 * 11
    assert len(parts["train"]) == round(0.8 * total)
    assert parts["train"]["timestamp"].max() <= parts["valid"]["timestamp"].min()
    assert parts["valid"]["timestamp"].max() <= parts["test"]["timestamp"].min()
    all_ex = pd.concat(parts.values())
    # ratings alternate 5, 2, 5, ... so labels alternate 1, 0 and the history holds only liked items
    for _, row in all_ex.iterrows():
        seq = ds.sequences[row["user_idx"]].tolist()
        pos = seq.index(row["target"])
        liked = [seq[j] for j in range(pos) if j % 2 == 0]
        assert row["label"] == (1 if pos % 2 == 0 else 0)
        assert row["history"].tolist() == liked[-3:]


def test_ctr_sampled_negatives_for_all_positive_sources(tmp_path, synthetic):
    items, inter = synthetic
    implicit = inter.assign(rating=np.nan)  # no ratings, no labels: every interaction is a positive
    ds = _prepared(tmp_path / "d", (items, implicit), ctr_sampled_negatives=2)
    rows = pd.concat([ds.ctr(s) for s in ("train", "valid", "test")])
    assert (rows["label"] == 0).sum() == 2 * (rows["label"] == 1).sum()
    for _, row in rows[rows["label"] == 0].iterrows():  # sampled items the user never interacted with
        assert row["target"] not in set(ds.sequences[row["user_idx"]].tolist())
    again = _prepared(tmp_path / "e", (items, implicit), ctr_sampled_negatives=2)
    pd.testing.assert_frame_equal(again.ctr("test"), ds.ctr("test"))  # seeded


def test_failed_write_keeps_previous_dataset(tmp_path, synthetic, monkeypatch):
    ds = _prepared(tmp_path / "d", synthetic)
    before = (ds.root / "eval" / "test_negatives.npy").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(OSError):
        _prepared(tmp_path / "d", synthetic, seed=99)
    monkeypatch.undo()
    assert (ds.root / "eval" / "test_negatives.npy").read_bytes() == before
    assert Dataset(ds.root).meta["config"]["seed"] == 42
    assert not list(tmp_path.glob(".*partial*"))


def test_modified_candidates_are_detected(tmp_path, synthetic):
    ds = _prepared(tmp_path / "d", synthetic)
    path = ds.root / "eval" / "test_negatives.npy"
    arr = np.load(path)
    arr[0, 0] = (arr[0, 0] + 1) % 40
    np.save(path, arr)
    with pytest.raises(LlmrecError, match="checksum"):
        ds.negatives("test")


@pytest.mark.slow
def test_prepare_ml100k_counts_and_byte_identical_candidates(tmp_path):
    meta = prepare(PrepareConfig(dataset="ml-100k", out=str(tmp_path / "a")))
    assert meta["counts_raw"]["users"] == 943
    assert meta["counts_raw"]["items"] == 1682
    assert meta["counts_raw"]["interactions"] == 100_000
    assert meta["counts"]["users"] == 943  # every ml-100k user has >= 20 ratings
    prepare(PrepareConfig(dataset="ml-100k", out=str(tmp_path / "b")))
    for split in ("valid", "test"):
        a = hashlib.sha256((tmp_path / "a" / "eval" / f"{split}_negatives.npy").read_bytes()).hexdigest()
        b = hashlib.sha256((tmp_path / "b" / "eval" / f"{split}_negatives.npy").read_bytes()).hexdigest()
        assert a == b
    ds = Dataset(tmp_path / "a")
    assert ds.negatives("test").shape == (943, 100)
    small = prepare(PrepareConfig(dataset="ml-100k", out=str(tmp_path / "c"), max_users=100))
    assert small["counts"]["users"] <= 100

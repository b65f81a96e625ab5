"""The synthetic image catalog: deterministic, opaque titles, and a signal that really lives in the pixels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from llmrec.data.dataset import Dataset
from llmrec.data.importers import ImportSpec, get_importer
from llmrec.data.processing import PrepareConfig, prepare
from llmrec.data.synthetic import COLOURS, SHAPES, SyntheticConfig, generate_catalog, rule_rates
from llmrec.errors import ConfigError, LlmrecError
from llmrec.utils.io import sha256_file

SMALL = {"n_shapes": 4, "n_colours": 3, "variants": 2, "n_users": 60, "size": 64}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_catalog(SyntheticConfig(out=str(tmp_path_factory.mktemp("syn") / "cat"), **SMALL))


def _tables(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    truth = json.loads((folder / "truth.json").read_text())
    return pd.read_parquet(folder / "items.parquet"), pd.read_parquet(folder / "interactions.parquet"), truth


def test_config_is_validated():
    with pytest.raises(ConfigError, match="n_shapes"):
        SyntheticConfig(out="x", n_shapes=len(SHAPES) + 1)
    with pytest.raises(ConfigError, match="seq_len_min"):
        SyntheticConfig(out="x", seq_len_min=9, seq_len_max=8)
    with pytest.raises(ConfigError, match="noise"):
        SyntheticConfig(out="x", noise=1.5)


def test_same_seed_byte_identical_other_seed_differs(tmp_path, catalog):
    again = generate_catalog(SyntheticConfig(out=str(tmp_path / "again"), **SMALL))
    other = generate_catalog(SyntheticConfig(out=str(tmp_path / "other"), **{**SMALL, "seed": 1}))
    ids = pd.read_parquet(catalog / "items.parquet")["item_id"].tolist()
    # image paths are absolute, so the item tables differ in exactly that column; everything else is equal
    a, b = pd.read_parquet(catalog / "items.parquet"), pd.read_parquet(again / "items.parquet")
    pd.testing.assert_frame_equal(a.drop(columns="image"), b.drop(columns="image"))
    assert [Path(p).name for p in a["image"]] == [Path(p).name for p in b["image"]]
    files = ["interactions.parquet"] + [f"images/{i}.png" for i in ids[:: max(1, len(ids) // 5)]]
    for f in files:
        assert sha256_file(catalog / f) == sha256_file(again / f), f
    assert sha256_file(catalog / "interactions.parquet") != sha256_file(other / "interactions.parquet")
    # same folder name, same config -> the items table itself is byte-identical too
    first = generate_catalog(SyntheticConfig(out=str(tmp_path / "x" / "cat"), **SMALL))
    digest = sha256_file(first / "items.parquet")
    (tmp_path / "x").rename(tmp_path / "y")
    regen = generate_catalog(SyntheticConfig(out=str(tmp_path / "x" / "cat"), **SMALL))
    assert sha256_file(regen / "items.parquet") == digest


def test_tables_are_canonical_and_titles_opaque(catalog):
    items, inter, truth = _tables(catalog)
    assert len(items) == 4 * 3 * 2 == truth["counts"]["items"] and items["item_id"].is_unique
    assert items["title"].is_unique
    words = [*SHAPES, *COLOURS]
    for title in items["title"]:
        assert re.fullmatch(r"Item [A-Z0-9]{3}-\d\d[A-Z]", title), title
        assert not any(w in title.lower() for w in words), title
    assert set(items["category"]) == set(SHAPES[:4]) and set(items["brand"]) == set(list(COLOURS)[:3])
    row = items.iloc[0]
    assert row["description"] == f"A {row['brand']} {row['category']} on a light background."
    assert (inter["rating"] == 5.0).all() and len(inter) == truth["counts"]["interactions"]
    assert inter["user_id"].nunique() == 60
    for _, g in inter.groupby("user_id"):
        assert g["timestamp"].is_monotonic_increasing and g["timestamp"].is_unique
        assert 8 <= len(g) <= 20
        assert (g["item_id"].to_numpy()[1:] != g["item_id"].to_numpy()[:-1]).all()  # no consecutive repeat


def test_images_open_rgb_at_size(catalog):
    items, _, _ = _tables(catalog)
    for path in items["image"]:
        assert Path(path).is_absolute() and Path(path).parent == catalog / "images"
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.size == (64, 64)


def test_generating_rule_holds(catalog):
    items, inter, truth = _tables(catalog)
    noise, n_colours = truth["config"]["noise"], 3
    rates = rule_rates(inter, items, truth["favourite_colour"], n_shapes=4)
    assert rates == truth["measured"]
    # a noise step lands on the successor shape by chance 1/4 of the time
    assert rates["successor_share"] >= 1 - noise - 0.05
    assert abs(rates["successor_share"] - (1 - noise + noise / 4)) < 0.05
    expected_fav = 0.8 * (1 - noise) + noise / n_colours
    assert abs(rates["favourite_colour_share"] - expected_fav) < 0.06


def _foreground(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, 3) and mask (H, W) of what is not the background (estimated from the four corners)."""
    px = np.asarray(img, dtype=np.float32)  # (H, W, 3)
    bg = np.median(np.stack([px[0, 0], px[0, -1], px[-1, 0], px[-1, -1]]), axis=0)
    mask = np.abs(px - bg).max(-1) > 60
    return px[mask], mask


def _shape_features(mask: np.ndarray) -> np.ndarray:
    """The foreground mask cropped to its bounding box and resampled to 16x16: position/scale invariant."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.uint8) * 255
    return (
        np.asarray(Image.fromarray(crop).resize((16, 16), Image.Resampling.BILINEAR), np.float32).ravel()
        / 255
    )


def test_pictures_carry_shape_and_colour(tmp_path):
    """A trivial pixel classifier trained on half the items recovers colour and shape on the other half."""
    from sklearn.linear_model import LogisticRegression

    # the default 6 shapes x 6 colours (chance 1/6), two variants: train on variant 0, test on variant 1
    cat = generate_catalog(SyntheticConfig(out=str(tmp_path / "c"), variants=2, n_users=5, size=64))
    items = pd.read_parquet(cat / "items.parquet")
    variant = np.array([json.loads(e)["variant"] for e in items["extra"]])
    colour_x, shape_x = [], []
    for path in items["image"]:
        with Image.open(path) as im:
            fg, mask = _foreground(im)
        colour_x.append(fg.mean(0))
        shape_x.append(_shape_features(mask))
    colour_x, shape_x = np.array(colour_x), np.array(shape_x)
    train, test = variant == 0, variant == 1
    assert train.sum() == test.sum() == 36

    # colour: nearest centroid of the training items' mean foreground RGB
    brands = items["brand"].to_numpy()
    names = sorted(set(brands[train]))
    centroids = np.array([colour_x[train & (brands == n)].mean(0) for n in names])
    dist = ((colour_x[test, None, :] - centroids[None]) ** 2).sum(-1)
    colour_acc = (np.array(names)[dist.argmin(1)] == brands[test]).mean()
    # shape: logistic regression on the normalised 16x16 mask
    shapes = items["category"].to_numpy()
    clf = LogisticRegression(max_iter=2000).fit(shape_x[train], shapes[train])
    shape_acc = (clf.predict(shape_x[test]) == shapes[test]).mean()
    assert colour_acc >= 0.95, colour_acc
    assert shape_acc >= 0.8, shape_acc  # chance is 1/6


def test_prepare_keeps_absolute_images_and_the_rule(tmp_path):
    # 72 items: enough never-seen items left for 20 negatives after a 20-step sequence
    catalog = generate_catalog(SyntheticConfig(out=str(tmp_path / "cat"), **{**SMALL, "variants": 6}))
    meta = prepare(
        PrepareConfig(
            dataset="synthetic-images", path=str(catalog), out=str(tmp_path / "ds"), kcore=2, num_negatives=20
        )
    )
    assert meta["source"]["name"] == "synthetic-images" and "mod n_shapes" in meta["source"]["rule"]
    ds = Dataset(tmp_path / "ds")
    assert ds.n_users == 60 and ds.n_items == 72
    for path in ds.items["image"]:
        assert Path(path).is_absolute() and Path(path).is_file()
    # de-duplication and k-core keep the visual successor rule intact in the prepared sequences
    truth = json.loads((catalog / "truth.json").read_text())
    rates = rule_rates(ds.interactions, ds.items, truth["favourite_colour"], n_shapes=4)
    assert rates["successor_share"] >= 1 - truth["config"]["noise"] - 0.05


def test_importer_generates_missing_catalog_and_is_idempotent(tmp_path):
    folder = tmp_path / "gen"
    raw = get_importer("synthetic-images")(ImportSpec(path=str(folder)))
    assert (folder / "truth.json").exists() and len(raw.items) == 6 * 6 * 10  # default config
    assert raw.source["generator"]["n_users"] == 600
    stamps = {p: p.stat().st_mtime_ns for p in [folder / "items.parquet", folder / "truth.json"]}
    png = sorted((folder / "images").iterdir())[0]
    stamps[png] = png.stat().st_mtime_ns
    again = get_importer("synthetic-images")(ImportSpec(path=str(folder)))
    assert generate_catalog(SyntheticConfig(out=str(folder))) == folder.resolve()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten
    pd.testing.assert_frame_equal(raw.items, again.items)
    # an existing catalog keeps its own (non-default) config
    small = generate_catalog(SyntheticConfig(out=str(tmp_path / "small"), **SMALL))
    assert len(get_importer("synthetic-images")(ImportSpec(path=str(small))).items) == 24


def test_interrupted_run_leaves_no_half_catalog_and_foreign_folders_are_safe(tmp_path, monkeypatch):
    import llmrec.data.synthetic as syn

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(syn, "write_json_atomic", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        generate_catalog(SyntheticConfig(out=str(tmp_path / "cat"), **SMALL))
    assert list(tmp_path.iterdir()) == []  # neither the catalog nor its temp folder
    monkeypatch.undo()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(LlmrecError, match="not a synthetic catalog"):
        generate_catalog(SyntheticConfig(out=str(foreign), **SMALL))
    assert (foreign / "notes.txt").read_text() == "keep me"

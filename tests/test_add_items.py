"""Adding items to a trained run (``llmrec add-items``, ``Model.add_items``): a new item is encoded as the
run's items were, recommended at once, kept across a reload, and a kill at any point leaves the old catalog.

The runs read an "image" feature computed by ``llmrec features`` with a tiny random ViT (a real encoder
folder, so that new pictures are encoded by the same one); every item's picture has its own colour.
Known answer: a new item whose picture is a copy of item X's has X's image feature, so I-LLMRec (whose
score is the projected features alone) scores it exactly as X.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import llmrec
from conftest import add_item_images, one_error_line, synthetic_tables
from llmrec.cli import main
from llmrec.errors import LlmrecError

NO_EVAL = {"eval": {"ctr": False, "full_ranking": False, "splits": ["test"]}}
ILLMREC = {"adaptor_hidden": 16, "d_shared": 8, "batch_size": 8, "epochs": 1, "eval_users": 4}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_llm):
    """A dataset with pictures and a ViT image feature; an I-LLMRec, a VBPR and a popularity run on it."""
    from llmrec.data.processing import ProcessConfig, finalize, write_dataset
    from llmrec.features.build import FeaturesConfig, build_features
    from test_features_build import _tiny_vit

    root = tmp_path_factory.mktemp("add-items")
    items, inter = synthetic_tables()
    write_dataset(
        finalize(items, inter, ProcessConfig(kcore=0, num_negatives=10, seed=3), {}, {}, []), root / "ds"
    )
    add_item_images(root / "ds", missing=())
    vit = _tiny_vit(root / "vit", pooler=True)
    build_features(FeaturesConfig(data=str(root / "ds"), text=False, image=True, image_encoder=vit))
    opts = {
        **ILLMREC,
        "backbone": {"llm": tiny_llm},
        "features": ["image"],
        "representation": "image",
        "ila": False,
        "validate": False,
    }
    runs = {"root": root, "pictures": root / "ds-pictures", "vit": vit}
    for name, options in (
        ("illmrec", opts),
        ("vbpr", {"dim": 8, "visual_dim": 8, "epochs": 2, "feature": "image", "validate": False}),
        ("popularity", {}),
    ):
        runs[name] = llmrec.train(name, data=root / "ds", out=root / name, options=options, **NO_EVAL).dir
    return runs


def _copy(world, name: str) -> Path:
    """A fresh copy of a trained run beside the original (each test adds to its own)."""
    out = world["root"] / f"{name}-{os.urandom(4).hex()}"
    shutil.copytree(world[name], out)
    return out


def _twin(world, item_id: str, new_id: str) -> pd.DataFrame:
    """One new item whose picture is a copy of ``item_id``'s (relative to the pictures folder)."""
    shutil.copy(world["pictures"] / f"{item_id}.png", world["pictures"] / f"{new_id}.png")
    return pd.DataFrame([{"item_id": new_id, "title": f"New {new_id}", "image": f"{new_id}.png"}])


def test_illmrec_recommends_a_new_item_that_looks_like_its_favourite_and_keeps_it(world, capsys):
    run = _copy(world, "illmrec")
    model = llmrec.load(run, device="cpu")
    n = len(model.item_ids)
    top = model.recommend(user_ids=["u0"], k=1).iloc[0]
    assert model.add_items(_twin(world, top["item_id"], "new-a"), image_dir=world["pictures"]) == ["new-a"]
    assert len(model.item_ids) == n + 1 and model.item("new-a")["title"] == "New new-a"
    recs = model.recommend(user_ids=["u0"], k=2).set_index("item_id")["score"]
    assert set(recs.index) == {top["item_id"], "new-a"}  # the twin ties with the favourite: same picture
    assert recs["new-a"] == pytest.approx(recs[top["item_id"]], abs=1e-5)
    # a reloaded run (API and CLI) has it too
    again = llmrec.load(run, device="cpu")
    assert again.item_ids == model.item_ids
    assert "new-a" in set(again.recommend(user_ids=["u0"], k=2)["item_id"])
    assert main(["recommend", str(run), "--user", "u0", "--k", "2", "--json"]) == 0
    assert "new-a" in capsys.readouterr().out
    # an ad-hoc history may hold the new item; it is not recommended back then
    assert "new-a" not in set(again.recommend(histories=[["new-a"]], k=3)["item_id"])


def test_vbpr_scores_a_new_item_by_its_visual_terms_alone(world):
    run = _copy(world, "vbpr")
    model = llmrec.load(run, device="cpu")
    x = model.item_index["i007"]
    model.add_items(_twin(world, "i007", "new-v"), image_dir=world["pictures"])
    new = model.item_index["new-v"]
    m = model.model
    scores = m.score_all(np.arange(3), [np.zeros(0, np.int64)] * 3)  # (3, N + 1)
    import torch

    with torch.no_grad():
        id_part = m.user_emb.weight[:3] @ m.item_emb.weight[x] + m.item_bias[x]  # what the twin lacks
    np.testing.assert_allclose(scores[:, new], scores[:, x] - id_part.numpy(), atol=1e-5)


def test_a_batch_interrupted_before_an_add_is_not_resumed_after_it(world, tmp_path):
    # regression: a batch's settings did not record the catalog, so chunks from before and after an add
    # could be mixed in one file
    from llmrec.recommend import RecommendConfig, batch_settings

    model = llmrec.load(_copy(world, "vbpr"), device="cpu")
    cfg = RecommendConfig(run=str(model.run), all_users=True, out=str(tmp_path / "recs.parquet"))
    before = batch_settings(model, model.user_ids, cfg)
    model.add_items(_twin(world, "i007", "new-b"), image_dir=world["pictures"])
    after = batch_settings(model, model.user_ids, cfg)
    assert after["catalog_items"] == before["catalog_items"] + 1 and after != before


def test_cli_adds_from_a_csv_and_refuses_duplicates_missing_columns_and_id_models(world, capsys, tmp_path):
    run = _copy(world, "vbpr")
    csv = tmp_path / "new.csv"
    shutil.copy(world["pictures"] / "i003.png", tmp_path / "n1.png")
    csv.write_text("item_id,title,image\nn1,First,n1.png\nn2,Second,\n")
    assert main(["add-items", str(run), "--items", str(csv), "--image-dir", str(tmp_path)]) == 0
    assert "added 2 items" in capsys.readouterr().out
    assert llmrec.load(run).item("n2")["title"] == "Second"  # no image: the model's fallback
    for text, expected in (
        ("item_id,title,image\nn3,A,\nn3,B,\n", r"new.csv, row 2: item id 'n3' again \(first in row 1\)"),
        (
            "item_id,title,image\nn1,A,\n",
            r"new.csv, row 1, field 'item_id': item id 'n1' is in the run's catalog",
        ),
        ("item_id,title,image\ni001,A,\n", r"row 1, field 'item_id': item id 'i001' is in the run's catalog"),
        ("item_id,image\nn4,\n", r"new.csv, field 'title': no 'title' column, which the run needs"),
        ("item_id,title\nn4,A\n", r"new.csv, field 'image': no 'image' column"),
        ("item_id,title,image\nn4,A,nowhere.png\n", r"new.csv, row 1, field 'image': image 'nowhere.png'"),
    ):
        csv.write_text(text)
        assert main(["add-items", str(run), "--items", str(csv), "--image-dir", str(tmp_path)]) == 2
        assert pytest.importorskip("re").search(expected, one_error_line(capsys, "add-items")), text
    assert len(llmrec.load(run).item_ids) == 42  # nothing of the refused files was added
    pop = _copy(world, "popularity")
    csv.write_text("item_id,title\nn9,A\n")
    assert main(["add-items", str(pop), "--items", str(csv)]) == 2
    line = one_error_line(capsys, "add-items")
    assert "model 'popularity' scores an item by the ID it learned in training" in line
    assert not (pop / "catalog").exists()


def test_an_encoder_not_available_here_is_one_line_naming_it(world, capsys, tmp_path):
    from llmrec.utils.io import read_json, write_json_atomic

    run = _copy(world, "vbpr")
    manifest_path = world["root"] / "ds" / "features" / "image.json"
    manifest = read_json(manifest_path)
    try:
        write_json_atomic(manifest_path, {**manifest, "encoder": str(tmp_path / "gone-vit")})
        (tmp_path / "new.csv").write_text("item_id,title,image\nn1,A,\n")
        assert main(["add-items", str(run), "--items", str(tmp_path / "new.csv")]) == 2
        line = one_error_line(capsys, "add-items")
        assert f"the image encoder '{tmp_path / 'gone-vit'}'" in line and "does not load here" in line
    finally:
        write_json_atomic(manifest_path, manifest)


def test_concurrent_queries_see_the_old_or_the_new_catalog(world):
    model = llmrec.load(_copy(world, "vbpr"))
    errors: list[BaseException] = []
    stop = threading.Event()

    def query() -> None:
        while not stop.is_set():
            try:
                recs = model.recommend(user_ids=["u1", "u2"], k=50)
                assert recs["item_id"].isin(model.item_index).all()
            except BaseException as e:  # noqa: BLE001 (reported below)
                errors.append(e)
                return

    threads = [threading.Thread(target=query) for _ in range(2)]
    for t in threads:
        t.start()
    for k in range(3):
        rows = [{"item_id": f"c{k}-{j}", "title": "C", "image": ""} for j in range(4)]
        model.add_items(pd.DataFrame(rows))
    stop.set()
    for t in threads:
        t.join()
    assert not errors and len(model.item_ids) == 52


def _killed_at(point: tuple[str, str, str, int], argv: list[str]) -> int:
    """Run ``llmrec ARGV`` in a forked child that SIGKILLs itself at the Nth call of a function whose first
    argument contains a given text (a real kill -9 at an exact point); the child's wait status."""
    owner_name, name, text, n = point
    owner = {"os": os, "np": np, "shutil": shutil}[owner_name]
    pid = os.fork()
    if pid == 0:  # the child: patch, run, never return into pytest
        real, calls = getattr(owner, name), [0]

        def killer(first, *args, **kwargs):
            if text in str(first):
                calls[0] += 1
                if calls[0] == n:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(first, *args, **kwargs)

        setattr(owner, name, killer)
        try:
            os._exit(main(argv))
        finally:
            os._exit(70)
    return os.waitpid(pid, 0)[1]


@pytest.mark.parametrize(
    ("point", "kept"),
    [
        (("np", "save", "features", 1), "old"),  # writing the new generation
        (("os", "rename", ".partial", 1), "old"),  # the finished generation not yet renamed in
        (
            ("os", "replace", "manifest.json", 1),
            "old",
        ),  # renamed in, just before the manifest's rename (the commit)
        (("shutil", "rmtree", "gen-000001", 1), "new"),  # committed, the old generation not yet removed
    ],
    ids=["writing", "before-rename", "committing", "cleaning"],
)
def test_kill_during_add_items_leaves_a_loadable_run(world, tmp_path, point, kept):
    run = _copy(world, "vbpr")
    (tmp_path / "first.csv").write_text("item_id,title,image\nk1,First,\n")
    (tmp_path / "second.csv").write_text("item_id,title,image\nk2,Second,\n")
    assert main(["add-items", str(run), "--items", str(tmp_path / "first.csv")]) == 0
    argv = ["add-items", str(run), "--items", str(tmp_path / "second.csv")]
    status = _killed_at(point, argv)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    ids = llmrec.load(run).item_ids
    assert ids[40:] == (["k1"] if kept == "old" else ["k1", "k2"])
    if kept == "old":  # the same command again adds it, and leaves nothing behind
        assert main(argv) == 0
    assert llmrec.load(run).item_ids[40:] == ["k1", "k2"]
    leftovers = sorted(p.name for p in (run / "catalog").iterdir())
    if kept == "old":
        assert leftovers == ["gen-000002", "manifest.json"], leftovers


def test_a_catalog_folder_llmrec_did_not_write_is_refused(world):
    run = _copy(world, "vbpr")
    (run / "catalog").mkdir()
    (run / "catalog" / "notes.txt").write_text("mine\n")
    with pytest.raises(LlmrecError, match="holds notes.txt but no catalog manifest"):
        llmrec.load(run)
    assert (run / "catalog" / "notes.txt").read_text() == "mine\n"

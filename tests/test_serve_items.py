"""The service's business rules and ``POST /items``: JSON filters on /recommend, every bad body a 4xx naming
the field, and items added under concurrent /recommend load on 127.0.0.1 (real uvicorn) with zero 5xx,
each added item recommendable as soon as its add answers.

One VBPR run (a model that scores an unseen item from its picture) on the synthetic dataset with a
picture per item and an image feature from a tiny random ViT, so that a new item's picture is encoded as
the dataset's were; a popularity run on the same data stands for the ID models that cannot add items."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import llmrec
from conftest import pictured_dataset
from llmrec.serve import ServeSettings, create_app
from test_serve import running

NO_EVAL = {"eval": {"ctr": False, "full_ranking": False, "splits": ["test"]}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-items")
    ds, pictures, _ = pictured_dataset(root)
    out = {"root": root, "pictures": pictures}
    vbpr = {"dim": 8, "visual_dim": 8, "epochs": 1, "feature": "image"}
    for name, options in (("vbpr", vbpr), ("popularity", {})):
        out[name] = llmrec.train(name, data=ds, out=root / name, options=options, **NO_EVAL).dir
    return out


def _fresh(world, name: str, tag: str) -> Path:
    """A copy of a trained run (an add writes into its run folder: each test adds to its own)."""
    out = world["root"] / f"{name}-{tag}"
    shutil.copytree(world[name], out)
    return out


def _picture(world, name: str, like: str = "i001") -> str:
    shutil.copy(world["pictures"] / f"{like}.png", world["pictures"] / name)
    return name


def test_recommend_json_filters(world):
    model = llmrec.load(world["popularity"], device="cpu")
    with TestClient(create_app(model), raise_server_exceptions=False) as client:
        body = {"user_id": "u0", "k": 5, "include": {"category": ["cat1", "cat2"]}, "exclude_items": ["i001"]}
        r = client.post("/recommend", json=body)
        assert r.status_code == 200, r.text
        ids = [it["item_id"] for it in r.json()["items"]]
        assert len(ids) == 5 and "i001" not in ids
        assert all(model.item(i)["category"] in ("cat1", "cat2") for i in ids)
        assert (
            ids
            == model.recommend(user_ids=["u0"], k=5, **{k: body[k] for k in ("include", "exclude_items")})[
                "item_id"
            ].tolist()
        )
        r = client.post("/recommend", json={"user_id": "u0", "exclude": {"brand": ["brand0", "brand1"]}})
        assert r.status_code == 200 and all(
            model.item(i["item_id"])["brand"] == "brand2" for i in r.json()["items"]
        )
        for bad, field, status in [
            ({"include": {"genre": ["x"]}}, "include.genre", 422),  # an unknown column, named
            ({"include": {"category": "cat1"}}, "include.category", 422),  # not a list
            ({"include": {"category": []}}, "include.category", 422),
            ({"include": {"category": [None]}}, "include.category[0]", 422),
            ({"exclude_items": ["nope"]}, "exclude_items", 404),
            ({"exclude": {"category": ["nothing-has-it"]}, "k": 1}, None, 200),
        ]:
            r = client.post("/recommend", json={"user_id": "u0", **bad})
            assert r.status_code == status, (bad, r.text)
            if status != 200:
                assert r.json()["field"] is not None and r.json()["field"].startswith(field), (bad, r.json())
        assert (
            "columns: item_id, title, brand, category"
            in client.post("/recommend", json={"user_id": "u0", "include": {"genre": ["x"]}}).json()["detail"]
        )


def test_post_items_bad_bodies_are_4xx(world):
    run = _fresh(world, "vbpr", "bad")
    model = llmrec.load(run, device="cpu")
    n = len(model.item_ids)
    with TestClient(create_app(model), raise_server_exceptions=False) as client:
        r = client.post("/items", json={"items": [{"item_id": "new"}]})
        assert r.status_code == 403 and "--add-items" in r.json()["detail"]  # off by default
    settings = ServeSettings(add_items=True, image_dir=str(world["pictures"]))
    with TestClient(create_app(model, settings), raise_server_exceptions=False) as client:
        for items, status, field in [
            ([{"item_id": "i001"}], 409, "items[0].item_id"),  # in the catalog already
            ([{"item_id": "a"}, {"item_id": "a"}], 422, "items[1].item_id"),
            ([{"item_id": "a", "image": "http://example.com/a.png"}], 422, "items[0].image"),
            ([{"item_id": "a", "image": "/etc/passwd"}], 422, "items[0].image"),
            ([{"item_id": "a", "image": "../vit/config.json"}], 422, "items[0].image"),
            ([{"item_id": "a", "image": "no-such.png"}], 422, "items[0].image"),
            ([{"item_id": ""}], 422, "items[0].item_id"),
            ([{"item_id": "a", "colour": "red"}], 422, "items[0].colour"),
            ([], 422, "items"),
        ]:
            r = client.post("/items", json={"items": items})
            assert r.status_code == status, (items, r.text)
            assert r.json()["field"] == field, (items, r.json())
        assert len(model.item_ids) == n  # nothing of a refused body was added
        assert client.get("/health").json()["add_items"] is True
    id_model = llmrec.load(_fresh(world, "popularity", "bad"), device="cpu")
    with TestClient(create_app(id_model, settings), raise_server_exceptions=False) as client:
        r = client.post("/items", json={"items": [{"item_id": "new"}]})
        assert r.status_code == 409 and "popularity" in r.json()["detail"], r.text


def test_post_items_under_concurrent_recommend_load(world):
    """Clients keep asking /recommend while items are added: zero 5xx (and no error at all), and each added
    item comes back in /recommend from the moment its POST answered 201, filters included."""
    run = _fresh(world, "vbpr", "load")
    model = llmrec.load(run, device="cpu")
    n = len(model.item_ids)
    settings = ServeSettings(add_items=True, image_dir=str(world["pictures"]), max_wait_ms=1.0)
    statuses: list[int] = []
    stop = threading.Event()

    def load(url: str, user: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                statuses.append(http.post("/recommend", json={"user_id": user, "k": 5}).status_code)

    with running(create_app(model, settings)) as (_, url):
        threads = [threading.Thread(target=load, args=(url, f"u{u}")) for u in range(4)]
        for t in threads:
            t.start()
        try:
            with httpx.Client(base_url=url, timeout=60) as http:
                for j in range(3):
                    new = f"new{j}"
                    item = {
                        "item_id": new,
                        "title": f"New {j}",
                        "category": "fresh",
                        "image": _picture(world, f"{new}.png"),
                    }
                    r = http.post("/items", json={"items": [item]})
                    assert r.status_code == 201, r.text
                    assert r.json()["added"] == [new] and r.json()["items"] == n + j + 1
                    every = http.post("/recommend", json={"user_id": "u3", "k": n + j + 1}).json()["items"]
                    assert new in [it["item_id"] for it in every]  # recommendable at once
                    only = http.post(
                        "/recommend", json={"user_id": "u3", "k": 5, "include": {"category": ["fresh"]}}
                    )
                    assert {it["item_id"] for it in only.json()["items"]} == {f"new{i}" for i in range(j + 1)}
                    assert http.get(f"/items/{new}").json()["title"] == f"New {j}"
        finally:
            stop.set()
            for t in threads:
                t.join(30)
    assert len(statuses) > 10 and set(statuses) == {200}, sorted(set(statuses))
    reloaded = llmrec.load(run, device="cpu")  # the adds were committed to the run
    assert {"new0", "new1", "new2"} <= set(reloaded.item_ids)


def test_post_items_keeps_extra_attributes_for_filters(world):
    run = _fresh(world, "vbpr", "extra")
    model = llmrec.load(run, device="cpu")
    settings = ServeSettings(add_items=True, image_dir=str(world["pictures"]))
    Image.new("RGB", (36, 40), (10, 20, 30)).save(world["pictures"] / "dark.png")
    with TestClient(create_app(model, settings), raise_server_exceptions=False) as client:
        item = {
            "item_id": "dark",
            "title": "Dark",
            "image": "dark.png",
            "extra": {"year": 2031, "tags": ["noir"]},
        }
        assert client.post("/items", json={"items": [item]}).status_code == 201
        r = client.post("/recommend", json={"user_id": "u0", "k": 3, "include": {"year": [2031]}})
        assert [it["item_id"] for it in r.json()["items"]] == ["dark"]
        r = client.post("/recommend", json={"user_id": "u0", "k": 3, "include": {"tags": ["NOIR"]}})
        assert [it["item_id"] for it in r.json()["items"]] == ["dark"]

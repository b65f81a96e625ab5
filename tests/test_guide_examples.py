"""The code examples of the contributor's guides run as written: the importer of
docs/contributing/adding-a-dataset.md prepares a dataset, and the endpoint of
docs/contributing/adding-an-endpoint.md answers on the service's app. (The method of
docs/contributing/adding-a-model.md is tests/last_title.py, run by tests/test_third_method.py.)

Each example is the fenced block after an ``<!-- example: NAME -->`` line, executed as a module of that
name. What an example registers is removed again afterwards: other tests list the registered importers."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import llmrec
from llmrec.data.importers import ImportSpec
from llmrec.errors import LlmrecError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "contributing"


def example(doc: str, name: str) -> types.ModuleType:
    """The block marked ``<!-- example: name -->`` in ``docs/contributing/<doc>``, executed as a module."""
    found = re.findall(rf"<!-- example: {name} -->\n```python\n(.*?)```\n", (DOCS / doc).read_text(), re.S)
    assert len(found) == 1, f"docs/contributing/{doc}: one example '{name}' expected, found {len(found)}"
    module = types.ModuleType(name)
    exec(compile(found[0], f"docs/contributing/{doc}:{name}", "exec"), module.__dict__)
    return module


@pytest.fixture
def books_importer():
    from llmrec.data.importers import registry

    module = example("adding-a-dataset.md", "books_importer")
    yield module
    registry._IMPORTERS.pop("books", None)
    registry._DEFAULTS.pop("books", None)


def write_books(folder: Path, bad_line: str | None = None) -> Path:
    """20 readers who each rate 8 of 10 books, an hour apart; optionally one more (malformed) rating line."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["user,book,stars,time"]
    for u in range(20):
        for t in range(8):
            rows.append(f"r{u},b{(u + t) % 10},{1 + (u * t) % 5},{1_700_000_000 + 3600 * t + u}")
    if bad_line:
        rows.insert(6, bad_line)  # line 7 of the file
    (folder / "ratings.csv").write_text("\n".join(rows) + "\n")
    books = [f"b{i},Book <i>{i}</i>,Author {i % 3},genre{i % 2},{100 + i}" for i in range(10)]
    (folder / "books.csv").write_text("\n".join(["book,title,author,genre,pages", *books]) + "\n")
    return folder


def test_the_books_importer_prepares_a_dataset(books_importer, tmp_path):
    from llmrec.data.importers import available_importers, importer_defaults

    assert "books" in available_importers() and importer_defaults("books") == {"ctr_history_len": 5}
    folder = write_books(tmp_path / "raw")
    ds = llmrec.prepare("books", out=tmp_path / "books", path=str(folder), num_negatives=2)  # 2 unread each
    assert (ds.n_users, ds.n_items) == (20, 10)
    first = ds.items.set_index("item_id").loc["b1"]
    assert (first["title"], first["brand"], first["category"]) == ("Book 1", "Author 1", "genre1")
    assert '"pages": "101"' in first["extra"]
    assert ds.meta["source"]["name"] == "books" and ds.meta["config"]["ctr_history_len"] == 5


def test_the_books_importer_names_a_bad_line(books_importer, tmp_path):
    folder = write_books(tmp_path / "raw", bad_line="r0,b3,five,1700000000")
    with pytest.raises(LlmrecError) as bad:
        books_importer.import_books(ImportSpec(path=str(folder)))
    text = str(bad.value)
    assert text == f"{folder / 'ratings.csv'}, row 7, field 'stars': 'five' is not a number", text


def test_the_history_endpoint_answers_on_the_service_app(tmp_path):
    from llmrec.serve import create_app
    from test_serve import make_run

    model = llmrec.load(make_run(tmp_path, "popularity"), device="cpu")
    app = create_app(model)
    example("adding-an-endpoint.md", "history_endpoint").add_history_endpoint(app, model)
    with TestClient(app) as client:
        r = client.get("/users/u3/history", params={"k": 3})
        assert r.status_code == 200, r.text
        u = model.user_index["u3"]
        expected = [model.item_ids[i] for i in model.sequences[u][::-1][:3]]
        assert [item["item_id"] for item in r.json()["items"]] == expected
        assert r.json()["items"][0] == model.item(expected[0])
        missing = client.get("/users/nobody/history")
        assert missing.status_code == 404 and missing.json()["field"] == "user_id"
        zero = client.get("/users/u3/history", params={"k": 0})
        assert zero.status_code == 422 and zero.json()["field"] == "k"

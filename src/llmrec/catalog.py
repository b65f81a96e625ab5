"""A trained run's own item store, ``RUN/catalog/``: items added after training (``llmrec add-items``,
``Model.add_items``, the service's ``POST /items``), recommendable at once without retraining.

Layout::

    RUN/catalog/manifest.json          which generation is current, its item count, checksums
    RUN/catalog/gen-000003/items.parquet              every added item so far (the dataset's item columns)
    RUN/catalog/gen-000003/features/<name>.npy        their features, raw as the encoder gave them
    RUN/catalog/gen-000003/features/<name>.missing.npy  (M,) bool: rows without a source (no image...)

The dataset folder is never modified (other runs share it): a loaded run is the dataset's items followed
by the catalog's, in the order they were added. A new item's features are computed with the encoders the
dataset's features were built with (each feature's manifest records its encoder, template and pooling),
for exactly the features the model reads (:meth:`~llmrec.models.base.Recommender.feature_needs`).

Adding writes a whole new generation into a temporary folder (the previous items and the new ones),
renames it to ``gen-NNNNNN``, then replaces ``manifest.json`` by an atomic rename: that rename is the
commit. A kill at any point leaves the manifest naming a complete generation (the old one until the
rename, the new one after it); the next add removes the temporary folders of dead writers and the
generations no manifest names. A ``catalog/`` folder llmrec did not write is refused, never written over.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmrec.config import ConfigError, option
from llmrec.errors import LlmrecError
from llmrec.placement import DtypeName, device_option, dtype_option
from llmrec.utils.io import (
    partial_dir,
    read_json,
    remove_stale_partials,
    sha256_file,
    write_json_atomic,
)

if TYPE_CHECKING:
    import pandas as pd

    from llmrec.api import Model

log = logging.getLogger(__name__)

CATALOG = "catalog"
MANIFEST = "manifest.json"
FORMAT = 1  # the manifest's "llmrec_catalog" value: what proves the folder is llmrec's
_GENERATION = re.compile(r"^gen-(\d{6})$")
_ADDING = threading.Lock()  # one add at a time in this process (other processes: the folder lock)


@dataclass
class Added:
    """Items added to a run: their rows and, per feature-store name, their feature values and mask."""

    items: pd.DataFrame  # (M rows) the dataset's item columns
    values: dict[str, np.ndarray]  # name -> (M, d) float32; rows of missing sources are 0
    missing: dict[str, np.ndarray]  # name -> (M,) bool

    def __len__(self) -> int:
        return len(self.items)

    def role_features(self, needs: dict[str, str]) -> dict[str, np.ndarray]:
        """The features by the role names the model reads (``needs``: role -> name), missing rows NaN."""
        out = {}
        for role, name in needs.items():
            values = np.array(self.values[name], dtype=np.float32)  # (M, d)
            values[self.missing[name]] = np.nan
            out[role] = values
        return out


# ----------------------------------------------------------------------------- reading


def catalog_dir(run: str | Path) -> Path:
    """Where a run keeps the items added to it."""
    return Path(run) / CATALOG


def read_catalog(run: str | Path) -> Added | None:
    """The items added to ``run`` (None when there are none), checksums verified: a damaged catalog is
    one line naming the file."""
    import pandas as pd

    from llmrec.data.dataset import read_parquet

    folder = catalog_dir(run)
    manifest = _manifest(folder)
    if manifest is None:
        return None
    gen = folder / manifest["folder"]
    hint = "the catalog is damaged: restore the run folder from a copy, or move catalog/ away to drop the added items"
    files = {"items.parquet": manifest["items_sha256"]}
    for name, record in manifest["features"].items():
        files[f"features/{name}.npy"] = record["sha256"]
        files[f"features/{name}.missing.npy"] = record["missing_sha256"]
    for rel, expected in files.items():
        path = gen / rel
        if not path.is_file() or sha256_file(path) != expected:
            what = "file missing" if not path.is_file() else "checksum mismatch: changed after it was written"
            raise LlmrecError(what, file=path, hint=hint)
    items = read_parquet(gen / "items.parquet")
    values, missing = {}, {}
    for name in manifest["features"]:
        values[name] = np.load(gen / "features" / f"{name}.npy", allow_pickle=False)
        missing[name] = np.load(gen / "features" / f"{name}.missing.npy", allow_pickle=False)
        if len(values[name]) != len(items) or missing[name].shape != (len(items),):
            raise LlmrecError(f"{len(values[name])} feature rows for {len(items)} items", file=gen, hint=hint)
    if len(items) != manifest["items"]:
        raise LlmrecError(f"{len(items)} items, the manifest says {manifest['items']}", file=gen, hint=hint)
    return Added(pd.DataFrame(items), values, missing)


def _manifest(folder: Path) -> dict[str, Any] | None:
    """The catalog's manifest (None when the run has no catalog); a folder llmrec cannot prove it wrote
    is refused with one line."""
    path = folder / MANIFEST
    if not path.exists():
        mine = [p.name for p in folder.iterdir() if not _ours(p.name)] if folder.is_dir() else []
        if folder.exists() and (not folder.is_dir() or mine):
            raise LlmrecError(
                f"holds {', '.join(sorted(mine)[:5]) or 'a file'} but no catalog manifest: not an item store "
                "llmrec wrote, so it is neither read nor written over",
                file=folder,
                hint="move it away; 'llmrec add-items' keeps the run's added items there",
            )
        return None
    manifest = read_json(path)
    if (
        not isinstance(manifest, dict)
        or manifest.get("llmrec_catalog") != FORMAT
        or not _GENERATION.match(str(manifest.get("folder")))
        or not isinstance(manifest.get("features"), dict)
    ):
        raise LlmrecError(
            "not a catalog manifest llmrec wrote",
            file=path,
            hint="move catalog/ away to drop the added items",
        )
    return manifest


def _ours(name: str) -> bool:
    """Whether a catalog folder entry is one llmrec writes: a generation, the manifest, their temp files."""
    return bool(_GENERATION.match(name)) or name == MANIFEST or name.endswith(".partial")


# ----------------------------------------------------------------------------- writing


def _write(run: Path, added: Added, identity: str) -> dict[str, Any]:
    """Write ``added`` (every added item) as the next generation and commit it: see the module docstring."""
    folder = catalog_dir(run)
    old = _manifest(folder)
    folder.mkdir(exist_ok=True)
    remove_stale_partials(folder)
    number = int(old["generation"]) + 1 if old else 1
    tmp = partial_dir(folder, "gen")
    try:
        added.items.to_parquet(tmp / "items.parquet", index=False)
        (tmp / "features").mkdir()
        features = {}
        for name, values in added.values.items():
            np.save(
                tmp / "features" / f"{name}.npy", np.asarray(values, dtype=np.float32), allow_pickle=False
            )
            np.save(tmp / "features" / f"{name}.missing.npy", added.missing[name], allow_pickle=False)
            features[name] = {
                "dim": int(values.shape[1]),
                "sha256": sha256_file(tmp / "features" / f"{name}.npy"),
                "missing_sha256": sha256_file(tmp / "features" / f"{name}.missing.npy"),
            }
        _sync(tmp)
        final = folder / f"gen-{number:06d}"
        if final.exists():  # a generation renamed in before a kill, never committed
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = {
        "llmrec_catalog": FORMAT,
        "generation": number,
        "folder": final.name,
        "items": len(added),
        "dataset_identity": identity,
        "items_sha256": sha256_file(final / "items.parquet"),
        "features": features,
    }
    write_json_atomic(folder / MANIFEST, manifest)  # the commit
    for path in folder.iterdir():  # the generations no manifest names any more
        if _GENERATION.match(path.name) and path.name != final.name and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    return manifest


def _sync(folder: Path) -> None:
    """Flush every file of ``folder`` to disk before the rename that publishes it."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


# ----------------------------------------------------------------------------- the new items


def read_items_file(path: str | Path) -> pd.DataFrame:
    """The new items of a CSV (or Parquet) file, every value as text (empty cells stay empty)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise LlmrecError("no such file", file=path, hint="give a CSV of the new items: item_id, title, ...")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # a damaged table: say which file and what the reader said
        raise LlmrecError(f"unreadable ({type(e).__name__}: {e})".splitlines()[0], file=path) from None


def _feature_sources(model: Model) -> dict[str, dict[str, Any]]:
    """The manifest of every dataset feature the model reads, by feature name (what encodes new items)."""
    root = model.dataset.features_dir
    out = {}
    for role, name in model.model.feature_needs().items():
        manifest = read_json(root / f"{name}.json")
        modality, encoder = manifest.get("modality"), manifest.get("encoder")
        if modality not in ("text", "image"):
            what = "CF embeddings exported from a run" if modality == "cf" else f"of encoder {encoder!r}"
            raise LlmrecError(
                f"the model reads the feature '{name}' ({role}), {what}, which llmrec cannot compute for a "
                "new item",
                file=root / f"{name}.json",
                hint="train the run on text or image features (llmrec features) to add items to it",
            )
        out[name] = manifest
    return out


def _required_columns(model: Model, sources: dict[str, dict[str, Any]]) -> list[str]:
    """The columns a file of new items must have: id and title, ``image`` when an image feature is read,
    and every field a text feature's template reads that the dataset's items have."""
    from llmrec.features.encoders import _SEGMENT, dataset_item_fields

    need = ["item_id", "title"]
    templates = [m.get("template", "") for m in sources.values() if m["modality"] == "text"]
    if templates:
        rows = dataset_item_fields(model.dataset.items)
        present = {k for r in rows for k, v in r.items() if v.strip()}
        for template in templates:
            need += [m.group("field") for m in _SEGMENT.finditer(template) if m.group("field") in present]
    if any(m["modality"] == "image" for m in sources.values()):
        need.append("image")
    return list(dict.fromkeys(need))


def new_item_rows(model: Model, table: pd.DataFrame, file: str | Path, already: set[str]) -> pd.DataFrame:
    """``table``'s items in the dataset's item columns, checked: the columns the run needs, no id twice
    nor one the run has (``already``: the ids on disk and loaded)."""
    import pandas as pd

    from llmrec.data.schema import make_items

    sources = _feature_sources(model)
    for column in _required_columns(model, sources):
        if column not in table.columns:
            raise LlmrecError(
                f"no '{column}' column, which the run needs",
                file=file,
                field=column,
                hint="add the column (empty cells are allowed: an item without it)",
            )
    if not len(table):
        raise LlmrecError("holds no item", file=file, hint="one row per new item")
    ids = table["item_id"].astype(str).str.strip().tolist()
    seen: dict[str, int] = {}
    for row, iid in enumerate(ids, start=1):
        if not iid:
            raise LlmrecError("empty item id", file=file, row=row, field="item_id")
        if iid in seen:
            raise LlmrecError(f"item id {iid!r} again (first in row {seen[iid]})", file=file, row=row)
        if iid in already:
            raise LlmrecError(
                f"item id {iid!r} is in the run's catalog already", file=file, row=row, field="item_id"
            )
        seen[iid] = row
    records = table.assign(item_id=ids).to_dict("records")
    rows = make_items(records, source=str(file))
    columns = list(model.dataset.items.columns)
    for column in columns:  # a column of the dataset's items beyond the canonical ones: empty here
        if column not in rows.columns:
            rows[column] = pd.NA
    return rows[columns + [c for c in rows.columns if c not in columns]].reset_index(drop=True)


def encode_items(
    model: Model, rows: pd.DataFrame, file: str | Path, image_dir: str | Path | None, device: str
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The features the model reads, for ``rows``, computed with the encoders the dataset's were: (values,
    missing) by feature name. An encoder that does not load here is one line naming it."""
    from llmrec.features.encoders import (
        item_fields,
        load_image_encoder,
        load_text_encoder,
        render_template,
    )

    values, missing = {}, {}
    for name, manifest in _feature_sources(model).items():
        encoder_name = str(manifest["encoder"])
        try:
            if manifest["modality"] == "text":
                encoder: Any = load_text_encoder(encoder_name, device)
            else:
                encoder = load_image_encoder(encoder_name, device)
        except LlmrecError as e:
            raise LlmrecError(
                f"the run's feature '{name}' was computed with the {manifest['modality']} encoder "
                f"{encoder_name!r}, which does not load here ({e})",
                hint="install or copy that encoder here: new items must be encoded as the run's items were",
            ) from None
        if manifest["modality"] == "text":
            texts = [render_template(manifest["template"], item_fields(r)) for r in rows.to_dict("records")]
            gone = np.array([not t for t in texts])
            vals = encoder.encode([t or " " for t in texts])
        else:
            pooling = manifest.get("pooling")
            if pooling and getattr(encoder, "pooling", pooling) != pooling:
                raise LlmrecError(
                    f"image encoder {encoder_name!r} reads {encoder.pooling} here, the run's feature "
                    f"'{name}' was read by {pooling}",
                    file=model.dataset.features_dir / f"{name}.json",
                    hint="use the encoder checkpoint the run's features were computed with",
                )
            vals, gone = _encode_images(encoder, rows, file, image_dir)
        vals = np.asarray(vals, dtype=np.float32)
        if vals.shape != (len(rows), int(manifest["dim"])):
            raise LlmrecError(
                f"encoder {encoder_name!r} gave {vals.shape[1]}-d features, the run's '{name}' are "
                f"{manifest['dim']}-d",
                hint="use the encoder the run's features were computed with",
            )
        vals[gone] = 0.0
        values[name], missing[name] = vals, gone
    return values, missing


def _encode_images(
    encoder: Any, rows: pd.DataFrame, file: str | Path, image_dir: str | Path | None
) -> tuple[np.ndarray, np.ndarray]:
    """(M, d) features of each row's ``image`` (a local path, relative to ``image_dir``, or a URL, fetched
    and checked as ``llmrec images`` does) and the (M,) rows without one; an unusable image is one line."""
    from PIL import Image

    from llmrec.data.images import ImagesConfig, _Job, _run_job

    root = Path(image_dir) if image_dir is not None else Path.cwd()
    cfg = ImagesConfig(data=str(root))
    images: list[Any] = []
    gone = np.zeros(len(rows), dtype=bool)
    with tempfile.TemporaryDirectory(prefix="llmrec-add-items-") as downloads:
        for row, (iid, ref) in enumerate(zip(rows["item_id"], rows["image"].fillna("")), start=1):
            ref = str(ref).strip()
            if not ref:
                gone[row - 1] = True
                images.append(Image.new("RGB", (32, 32)))
                continue
            url = "://" in ref[:16] and not ref.lower().startswith("file://")
            target = ref if url else str((root / ref).expanduser())
            [result] = _run_job(_Job("url" if url else "file", target, [iid]), root, Path(downloads), cfg)
            if result["status"] != "ok":
                raise LlmrecError(
                    f"image {ref!r}: {result['error'] or result['status']}",
                    file=file,
                    row=row,
                    field="image",
                    hint="fix the reference, or leave the cell empty for an item without an image",
                )
            path = Path(result["path"]) if Path(result["path"]).is_absolute() else root / result["path"]
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        return encoder.encode(images), gone


# ----------------------------------------------------------------------------- adding, loading


def add_items(
    model: Model,
    items: pd.DataFrame,
    image_dir: str | Path | None = None,
    file: str | Path = "items",
    device: str = "cpu",
) -> list[str]:
    """Add ``items`` to ``model``'s run: checked, encoded, committed to ``RUN/catalog/``, then swapped into
    the loaded model (see :meth:`llmrec.api.Model.add_items`). Returns the added ids, in file order."""
    from llmrec.utils.lock import folder_lock

    refuse_id_model(model)
    with _ADDING, folder_lock(catalog_dir(model.run), "run catalog", create=True):
        on_disk = read_catalog(model.run)
        known = set(model.item_index) | (set(on_disk.items["item_id"].astype(str)) if on_disk else set())
        rows = new_item_rows(model, items, file, known)
        values, missing = encode_items(model, rows, file, image_dir, device)
        new = Added(rows, values, missing)
        model.model.check_item_rows(new.role_features(model.model.feature_needs()), rows)
        every = new if on_disk is None else _concat(on_disk, new)
        _write(model.run, every, model.dataset.identity)
        grow(model, every)
    log.info("added %d items to %s", len(rows), model.run)
    return rows["item_id"].astype(str).tolist()


def refuse_id_model(model: Model) -> None:
    """One line for a model that scores items by learned IDs only: an added item would have no score."""
    cls = type(model.model)
    if not getattr(cls, "scores_unseen_items", True) or not cls.adds_items():
        raise LlmrecError(
            f"model '{model.name}' scores an item by the ID it learned in training, so an item added "
            "afterwards has no score",
            file=model.run,
            hint="retrain on a dataset with the new items, or add them to a run of a model that reads item "
            "features (illmrec, vbpr)",
        )


def _concat(a: Added, b: Added) -> Added:
    import pandas as pd

    return Added(
        pd.concat([a.items, b.items], ignore_index=True),
        {n: np.concatenate([a.values[n], b.values[n]]) for n in b.values},
        {n: np.concatenate([a.missing[n], b.missing[n]]) for n in b.missing},
    )


def grow(model: Model, added: Added) -> None:
    """Swap into ``model`` the items of ``added`` it does not have yet: the new tables are built first,
    then the model's item rows and the tables are assigned under its lock, so a concurrent query sees the
    old catalog or the new one, never half of each."""
    import pandas as pd

    fresh = ~added.items["item_id"].astype(str).isin(set(model.item_index)).to_numpy()
    if not fresh.any():
        return
    rows = added.items.loc[fresh].reset_index(drop=True)
    part = Added(
        rows, {n: v[fresh] for n, v in added.values.items()}, {n: m[fresh] for n, m in added.missing.items()}
    )
    features = part.role_features(model.model.feature_needs())
    ids = rows["item_id"].astype(str).tolist()
    catalog = pd.concat([model._catalog, rows], ignore_index=True)
    item_ids, titles = model.item_ids + ids, model.titles + rows["title"].astype(str).tolist()
    index = {**model.item_index, **{iid: len(model.item_ids) + j for j, iid in enumerate(ids)}}
    with model._lock:
        model.model.add_item_rows(features, rows)
        model._catalog, model.item_ids, model.titles = catalog, item_ids, titles
        model.item_index = index  # last: a query resolves an added id only once the model can score it


def attach_catalog(model: Model) -> None:
    """On loading a run: the items added to it, appended to the dataset's (a run without any: nothing)."""
    added = read_catalog(model.run)
    if added is None:
        return
    manifest = read_json(catalog_dir(model.run) / MANIFEST)
    if manifest.get("dataset_identity") not in (None, model.dataset.identity):
        raise LlmrecError(
            "the items were added to this run on another dataset than the one it loads now",
            file=catalog_dir(model.run) / MANIFEST,
            hint="load the run with the dataset it was trained on",
        )
    grow(model, added)


# ----------------------------------------------------------------------------- the command


@dataclass
class AddItemsConfig:
    """``llmrec add-items``: which run, which new items, where their pictures are."""

    run: str = option("", "run directory of a trained model")
    items: str = option("", "CSV (or Parquet) of the new items: item_id, title, text columns, image")
    image_dir: str | None = option(None, "folder that relative paths of the image column are in")
    data: str | None = option(None, "the run's dataset moved: its new folder (checksum verified)")
    device: str = device_option()
    dtype: DtypeName = dtype_option()

    def __post_init__(self) -> None:
        if not self.run:
            raise ConfigError("run: the run directory of a trained model is required")
        if not self.items:
            raise ConfigError("items: give --items FILE.csv with the new items")


def run_add_items(cfg: AddItemsConfig) -> dict[str, Any]:
    """Load the run, add the file's items, say what was added and how big the catalog is now."""
    from llmrec.api import load

    model = load(cfg.run, device=cfg.device, dtype=cfg.dtype, data=cfg.data)
    refuse_id_model(model)  # before reading the file: an ID model takes no item at all
    added = add_items(model, read_items_file(cfg.items), cfg.image_dir, cfg.items, _device(model))
    return {"run": str(model.run), "added": added, "items": len(model.item_ids)}


def _device(model: Model) -> str:
    return model.device if model.model.on_device else "cpu"


def format_add_items(result: dict[str, Any]) -> str:
    shown = ", ".join(result["added"][:5]) + (" ..." if len(result["added"]) > 5 else "")
    return (
        f"added {len(result['added']):,} items to {result['run']} ({shown}); the catalog has "
        f"{result['items']:,} items"
    )

"""Read side of a prepared dataset directory (written by :mod:`llmrec.data.processing`).

Layout::

    items.parquet          canonical item columns; row i is item index i (features use the same order)
    users.parquet          user_id (+ side information); row u is user index u
    interactions.parquet   filtered interactions with user_idx / item_idx, chronological per user
    sequences.parquet      per user: chronological item indices and timestamps
    eval/{valid,test}_negatives.npy   frozen (U, num_negatives) evaluation negatives
    eval/cold_items.npy, eval/{valid,test}_cold_negatives.npy   with --cold-items: the held-out items and the
                           frozen negatives of the cases whose target is one (:mod:`llmrec.data.cold`)
    ctr/{train,valid,test}.parquet    labelled CTR examples (when the source has ratings or labels)
    images/manifest.parquet           written by `llmrec images`
    features/<name>.npy + .json       written by `llmrec features`
    meta.json              source, filters applied, counts, processing config, checksums, identity
    .llmrec-incomplete     only while (or if killed while) 'llmrec prepare' moves a new dataset in

Any other file in the folder (notes, runs, the user's raw files) is not llmrec's and is never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from llmrec.errors import LlmrecError
from llmrec.utils.io import read_json, sha256_file

Split = Literal["train", "valid", "test"]
# Present while 'llmrec prepare' moves a new dataset into a folder (see processing.write_dataset).
INCOMPLETE = ".llmrec-incomplete"


def is_dataset_dir(root: str | Path) -> bool:
    """Whether ``root`` holds an llmrec dataset (a meta.json written by prepare), complete or interrupted."""
    root = Path(root)
    if (root / INCOMPLETE).exists():
        return True
    try:
        meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "counts" in meta and "config" in meta


@dataclass
class SplitData:
    """Leave-one-out evaluation examples: one (history, target) per user."""

    users: np.ndarray  # (U,) user indices
    histories: list[np.ndarray]  # chronological item indices before the target
    targets: np.ndarray  # (U,) item indices


class Dataset:
    """A prepared dataset; tables load lazily and are cached."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if (self.root / INCOMPLETE).exists():
            raise LlmrecError(
                "incomplete dataset: the 'llmrec prepare' that wrote it was interrupted",
                file=self.root,
                hint=f"re-run the same 'llmrec prepare ... --out {self.root}'",
            )
        if not (self.root / "meta.json").exists():
            hint = f"run 'llmrec prepare <dataset> --out {self.root}' first"
            raise LlmrecError("not a prepared dataset (meta.json missing)", file=self.root, hint=hint)
        self.meta = read_json(self.root / "meta.json")

    def __repr__(self) -> str:
        return f"Dataset({str(self.root)!r}, users={self.n_users}, items={self.n_items})"

    @property
    def name(self) -> str:
        return str(self.meta.get("source", {}).get("name", self.root.name))

    def _parquet(self, name: str) -> pd.DataFrame:
        path = self.root / name
        if not path.exists():
            raise LlmrecError("file missing from the dataset", file=path, hint="re-run 'llmrec prepare'")
        return read_parquet(path)

    @cached_property
    def items(self) -> pd.DataFrame:
        return self._parquet("items.parquet")

    @cached_property
    def users(self) -> pd.DataFrame:
        return self._parquet("users.parquet")

    @cached_property
    def interactions(self) -> pd.DataFrame:
        return self._parquet("interactions.parquet")

    @cached_property
    def identity(self) -> str:
        """sha256 of the dataset's content (recorded in meta.json by ``prepare``; computed for older ones)."""
        return str(self.meta.get("identity") or content_identity(self.root))

    @property
    def n_items(self) -> int:
        return int(self.meta["counts"]["items"])

    @property
    def n_users(self) -> int:
        return int(self.meta["counts"]["users"])

    @cached_property
    def sequences(self) -> list[np.ndarray]:
        """Chronological item indices per user (index = user index)."""
        return [np.asarray(s, dtype=np.int64) for s in self._parquet("sequences.parquet")["items"]]

    @cached_property
    def train_sequences(self) -> list[np.ndarray]:
        """Training part of every sequence: all but the last two items (leave-one-out), without the held-out
        items (:attr:`cold_items`)."""
        cold = self.cold_items
        if not cold.any():
            return [s[:-2] for s in self.sequences]
        return [s[:-2][~cold[s[:-2]]] for s in self.sequences]

    @cached_property
    def cold_items(self) -> np.ndarray:
        """(N,) bool: the items held out of every training table (``prepare --cold-items``); all False when
        none are."""
        mask = np.zeros(self.n_items, dtype=bool)
        path = self.root / "eval" / "cold_items.npy"
        if path.exists():
            mask[self._frozen("eval/cold_items.npy")] = True
        return mask

    def split(self, name: Split) -> SplitData:
        """Leave-one-out examples: valid predicts item -2 from the items before it; test predicts the last item."""
        if name not in ("valid", "test"):
            raise LlmrecError(f"unknown evaluation split '{name}'", hint="use 'valid' or 'test'")
        cut = -2 if name == "valid" else -1
        seqs = self.sequences
        return SplitData(
            users=np.arange(len(seqs)),
            histories=[s[:cut] for s in seqs],
            targets=np.array([s[cut] for s in seqs], dtype=np.int64),
        )

    def negatives(self, name: Split) -> np.ndarray:
        """The frozen (U, num_negatives) evaluation negatives of a split, verified against meta.json (with
        held-out items: drawn among the warm items, for the warm cases)."""
        return self._frozen(f"eval/{name}_negatives.npy")

    def cold_negatives(self, name: Split) -> np.ndarray:
        """The frozen (U, M) negatives of a split's cold cases (held-out targets), drawn among the held-out
        items the user never touched; -1 in the rows of warm cases (see :mod:`llmrec.data.cold`)."""
        return self._frozen(f"eval/{name}_cold_negatives.npy")

    def _frozen(self, rel: str) -> np.ndarray:
        """A frozen array of the dataset, verified against its checksum in meta.json where recorded."""
        path = self.root / rel
        if not path.exists():
            raise LlmrecError("frozen negatives missing", file=path, hint="re-run 'llmrec prepare'")
        expected = self.meta.get("checksums", {}).get(rel)
        if expected and sha256_file(path) != expected:
            raise LlmrecError(
                "checksum mismatch: the candidates were modified", file=path, hint="re-run 'llmrec prepare'"
            )
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise LlmrecError(f"cannot read ({e})", file=path, hint="re-run 'llmrec prepare'") from None

    @cached_property
    def item_popularity(self) -> np.ndarray:
        """(N,) training interaction count per item (leave-one-out training part only)."""
        counts = np.zeros(self.n_items, dtype=np.int64)
        for s in self.train_sequences:
            np.add.at(counts, s, 1)
        return counts

    def ctr(self, name: Split) -> pd.DataFrame:
        """CTR examples of a split: user_idx, target, label, timestamp, history (liked items before target)."""
        path = self.root / "ctr" / f"{name}.parquet"
        if not path.exists():
            raise LlmrecError(
                "no CTR examples in this dataset",
                file=path,
                hint="the source needs ratings or labels; re-run 'llmrec prepare'",
            )
        return read_parquet(path)

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"


def read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A table of a prepared dataset; a damaged or unreadable file is a one-line error naming it."""
    try:
        return pd.read_parquet(path, columns=columns)
    except Exception as e:  # pyarrow raises several types (ArrowInvalid, OSError, ...) for a damaged file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LlmrecError(
            f"cannot read this table ({reason})",
            file=path,
            hint="the dataset is damaged: re-run 'llmrec prepare'",
        ) from None


# what makes a prepared dataset what it is: its tables and frozen candidates (not images/, features/, texts/)
_CONTENT = ("items.parquet", "users.parquet", "interactions.parquet", "sequences.parquet", "eval", "ctr")


def content_identity(root: str | Path) -> str:
    """sha256 over the names and sha256s of a prepared dataset's tables and frozen candidates: equal for a
    copy anywhere, different as soon as one byte of them differs."""
    root = Path(root)
    h = hashlib.sha256()
    for name in _CONTENT:
        path = root / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if f.exists():
                h.update(f"{f.relative_to(root).as_posix()}:{sha256_file(f)}\n".encode())
    return h.hexdigest()


def dataset_ref(ds: Dataset, relative_to: str | Path) -> dict[str, Any]:
    """How a run or a saved model refers to its dataset: a path relative to ``relative_to`` (so the two can
    move together), the absolute path it had, and its identity (so a moved copy can be verified)."""
    root = ds.root.resolve()
    return {
        "path": os.path.relpath(root, Path(relative_to).resolve()),
        "absolute": str(root),
        "identity": ds.identity,
        "users": ds.n_users,
        "items": ds.n_items,
    }


def locate_dataset(
    ref: dict[str, Any] | str | None, relative_to: str | Path, data: str | Path | Dataset | None = None
) -> Dataset:
    """The dataset ``ref`` (from :func:`dataset_ref`; an older absolute path string is accepted) refers to.

    ``data`` names it explicitly (a moved copy, or one already opened): its identity must match. Otherwise
    the relative path is tried first, then the absolute one.
    """
    ref = {"absolute": ref} if isinstance(ref, str) else dict(ref or {})
    expected = ref.get("identity")
    if data is not None:
        ds = data if isinstance(data, Dataset) else Dataset(data)
        if expected and ds.identity != expected:
            raise LlmrecError(
                f"not the dataset the model was trained on (content sha256 {ds.identity[:12]}, expected "
                f"{expected[:12]})",
                file=ds.root,
                hint="point --data at a copy of the training dataset",
            )
        return ds
    tried = []
    for key in ("path", "absolute"):
        if not ref.get(key):
            continue
        root = Path(relative_to) / ref[key] if key == "path" else Path(ref[key])
        tried.append(str(root))
        if (root / "meta.json").exists():
            ds = Dataset(root)
            if not expected or ds.identity == expected:
                return ds
    raise LlmrecError(
        "the dataset the model was trained on is not where the run recorded it"
        + (f" ({' nor '.join(dict.fromkeys(tried))})" if tried else ""),
        file=relative_to,
        hint="pass --data DIR with a copy of it (its content checksum is verified)",
    )

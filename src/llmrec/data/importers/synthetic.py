"""The 'synthetic-images' importer: a generated catalog whose signal lives only in the item pictures.

See :mod:`llmrec.data.synthetic` for what the catalog is and why. ``--path`` is the catalog folder
(default ``data/raw/synthetic-images``). A folder without ``truth.json`` is generated with the default
:class:`~llmrec.data.synthetic.SyntheticConfig`; an existing catalog is read as it is (its own config is
kept, and it is regenerated in place only if incomplete or moved, since its image paths are absolute).

The default catalog has 108 items and sequences of up to 20, so prepare it with ``--num-negatives 20``
(the default 100 is more than the items a long sequence leaves unseen)::

    llmrec prepare synthetic-images --num-negatives 20
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from llmrec.config import from_dict
from llmrec.data.importers.registry import ImportSpec, register_importer
from llmrec.data.schema import RawData, make_interactions, make_items
from llmrec.data.synthetic import SyntheticConfig, generate_catalog
from llmrec.utils.io import read_json

DEFAULT_PATH = "data/raw/synthetic-images"


@register_importer("synthetic-images")
def import_synthetic_images(spec: ImportSpec) -> RawData:
    """Read (generating it first if needed) the synthetic shape/colour catalog at ``spec.path``."""
    folder = Path(spec.path or DEFAULT_PATH).expanduser()
    truth_path = folder / "truth.json"
    if truth_path.exists():
        stored = dict(read_json(truth_path)["config"])
        cfg = from_dict(SyntheticConfig, {**stored, "out": str(folder)}, where=str(truth_path))
    else:
        cfg = SyntheticConfig(out=str(folder))
    folder = generate_catalog(cfg)  # a no-op for a complete catalog
    truth = read_json(folder / "truth.json")
    files = [folder / "items.parquet", folder / "interactions.parquet", folder / "truth.json"]
    items = make_items(pd.read_parquet(files[0]), source=str(files[0]))
    interactions = make_interactions(pd.read_parquet(files[1]), source=str(files[1]))
    return RawData(
        items=items,
        interactions=interactions,
        source={
            "name": "synthetic-images",
            "files": [str(f) for f in files],
            "rule": truth["rule"],
            "generator": truth["config"],
        },
    )

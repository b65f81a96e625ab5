"""``llmrec add-items RUN --items new.csv [--image-dir DIR]``: new items into a trained run's catalog
(:mod:`llmrec.catalog` keeps them; :meth:`llmrec.api.Model.add_items` adds them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmrec.api import load
from llmrec.catalog import add_items, encoder_device, read_items_file, refuse_id_model
from llmrec.config import ConfigError, option
from llmrec.placement import DtypeName, device_option, dtype_option


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
    model = load(cfg.run, device=cfg.device, dtype=cfg.dtype, data=cfg.data)
    refuse_id_model(model)  # before reading the file: an ID model takes no item at all
    added = add_items(model, read_items_file(cfg.items), cfg.image_dir, cfg.items, encoder_device(model))
    return {"run": str(model.run), "added": added, "items": len(model.item_ids)}


def format_add_items(result: dict[str, Any]) -> str:
    """The line ``llmrec add-items`` prints: how many items were added, the first ids, the catalog's size."""
    shown = ", ".join(result["added"][:5]) + (" ..." if len(result["added"]) > 5 else "")
    return (
        f"added {len(result['added']):,} items to {result['run']} ({shown}); the catalog has "
        f"{result['items']:,} items"
    )

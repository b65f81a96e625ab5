"""Run directories: every command that trains or evaluates writes its resolved config, metrics and log.

runs/<name>/config.json     resolved configuration (defaults + file + flags)
runs/<name>/metrics.json    {split: {metric: float}}
runs/<name>/log.txt         everything logged during the run
runs/<name>/model/          the trained model (when there is one)
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import sys
from pathlib import Path
from typing import Any

from llmrec import __version__
from llmrec.config import to_dict
from llmrec.utils.io import read_json, write_json_atomic


class Run:
    """A run directory with a log file attached to the root logger while the run is open."""

    def __init__(self, root: str | Path, config: Any, dataset: dict[str, Any] | None = None) -> None:
        """``dataset``: how the run refers to its dataset (:func:`llmrec.data.dataset.dataset_ref`)."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = config
        write_json_atomic(
            self.root / "config.json",
            {
                **to_dict(config),
                "_llmrec": {
                    "version": __version__,
                    "python": sys.version.split()[0],
                    "platform": platform.platform(),
                    "command": " ".join(sys.argv),
                    "started": dt.datetime.now().isoformat(timespec="seconds"),
                    **({"dataset": dataset} if dataset else {}),
                },
            },
        )
        self._handler = logging.FileHandler(self.root / "log.txt", encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(self._handler)
        logging.getLogger().setLevel(min(logging.getLogger().level or logging.INFO, logging.INFO))

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    def log_metrics(self, split: str, metrics: dict[str, float]) -> None:
        """Merge ``metrics`` into metrics.json under ``split`` (atomic rewrite)."""
        path = self.root / "metrics.json"
        current = read_json(path) if path.exists() else {}
        current.setdefault(split, {}).update({k: float(v) for k, v in metrics.items()})
        write_json_atomic(path, current)

    def write_json(self, name: str, obj: Any) -> None:
        write_json_atomic(self.root / name, obj)

    def close(self) -> None:
        logging.getLogger().removeHandler(self._handler)
        self._handler.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# what llmrec writes into a run directory (``clear_run`` removes these and nothing else)
RUN_FILES = (
    "config.json",
    "metrics.json",
    "log.txt",
    "model",
    "tracking",
    "checkpoint*.pt",
    "stage-*.safetensors",
    "step1.safetensors",
    "stage1.safetensors",
    "history*.json",
    "training_curve*.png",
    "breakdown.json",
    "popularity_breakdown.png",
    "ctr_rows.json",
    "ranking_users.json",
)


def clear_run(root: str | Path) -> None:
    """Delete what earlier llmrec runs wrote into ``root`` (``--restart``); other files stay untouched."""
    import shutil

    for pattern in RUN_FILES:
        for path in Path(root).glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def default_run_name(model: str, data: str | Path) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{model}-{Path(data).name}-{stamp}"

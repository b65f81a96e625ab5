"""Run directories: every command that trains or evaluates writes its resolved config, metrics and log.

runs/<name>/config.json     resolved configuration (defaults + file + flags)
runs/<name>/training.json   the training record: best epochs and criteria, fit time (training writes it)
runs/<name>/metrics.json    {"train": training record, split: {metric: float}}: rewritten whole by every
                            evaluation (the training record and that evaluation's metrics, nothing older)
runs/<name>/log.txt         everything logged during the run
runs/<name>/model/          the trained model (when there is one; its model.json marks a finished training)

A run directory belongs to one model and one configuration (see :func:`llmrec.pipeline.check_resume`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import platform
import sys
from pathlib import Path
from typing import Any

from llmrec import __version__
from llmrec.config import to_dict
from llmrec.utils.io import read_json, write_error, write_json_atomic


class _RunLog(logging.FileHandler):
    """The run's log.txt. A record it cannot write (a full disk) ends the command with the one line naming
    the file, where logging would print a traceback on stderr for every record and go on."""

    def handleError(self, record: logging.LogRecord) -> None:
        e = sys.exc_info()[1]
        named = write_error(e, self.baseFilename) if e is not None else None
        if named is None:
            super().handleError(record)
            return
        logging.getLogger().removeHandler(self)
        stream, self.stream = self.stream, None  # what it holds unwritten would fail again at close
        with contextlib.suppress(OSError):
            stream.close()
        raise named from e


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
        self._handler = _RunLog(self.root / "log.txt", encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(self._handler)
        logging.getLogger().setLevel(min(logging.getLogger().level or logging.INFO, logging.INFO))

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    def training_record(self) -> dict[str, float]:
        """What training recorded (training.json; a run of an older version: its metrics.json's "train")."""
        if (self.root / TRAINING_FILE).exists():
            return dict(read_json(self.root / TRAINING_FILE))
        old = read_json(self.root / "metrics.json") if (self.root / "metrics.json").exists() else {}
        return dict(old.get("train") or {}) if isinstance(old, dict) else {}

    def record_training(self, values: dict[str, float]) -> None:
        """Add ``values`` to the training record (each stage adds its own keys) and make metrics.json that
        record alone: while a model trains, no evaluation of an earlier one stays beside it."""
        record = {**self.training_record(), **{k: float(v) for k, v in values.items()}}
        write_json_atomic(self.root / TRAINING_FILE, record)
        write_json_atomic(self.root / "metrics.json", {"train": record})

    def write_metrics(self, results: dict[str, dict[str, float]]) -> None:
        """Rewrite metrics.json whole (atomically): the training record and ``results`` ({split: metrics}
        of one evaluation), never merged with the metrics of an earlier evaluation."""
        record = self.training_record()
        splits = {s: {k: float(v) for k, v in m.items()} for s, m in results.items()}
        write_json_atomic(self.root / "metrics.json", {**({"train": record} if record else {}), **splits})

    def write_json(self, name: str, obj: Any) -> None:
        write_json_atomic(self.root / name, obj)

    def close(self) -> None:
        logging.getLogger().removeHandler(self._handler)
        self._handler.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


TRAINING_FILE = "training.json"

# what llmrec writes into a run directory (``clear_run`` removes these and nothing else)
RUN_FILES = (
    "config.json",
    TRAINING_FILE,
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
# what an atomic write of one of them leaves when the process is killed mid-write (utils.io.atomic_path;
# a writer that insists on an extension gets it after ".partial": .training_curve.png.<pid>.<rand>.partial.png)
PARTIAL_FILES = tuple(f".{p}.*.partial*" for p in RUN_FILES if p not in ("model", "tracking"))


def clear_run(root: str | Path) -> None:
    """Delete what earlier llmrec runs wrote into ``root`` (``--restart``); other files stay untouched."""
    import shutil

    for pattern in RUN_FILES + PARTIAL_FILES:
        for path in Path(root).glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def clear_partial_files(root: str | Path) -> None:
    """Delete the temporary files of atomic writes a killed run left in ``root`` (a resumed run rewrites
    them; nothing else is touched)."""
    for pattern in PARTIAL_FILES:
        for path in Path(root).glob(pattern):
            if path.is_file():
                path.unlink()


def default_run_name(model: str, data: str | Path) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{model}-{Path(data).name}-{stamp}"

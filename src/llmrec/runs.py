"""Run directories: every command that trains or evaluates writes its resolved config, metrics and log.

runs/<name>/config.json     resolved configuration (defaults + file + flags), and under ``_llmrec`` the
                            provenance of the command that wrote it last (training, or a re-evaluation):
                            llmrec's version, the command line, the platform and the resolved versions of
                            the key packages (:func:`package_versions`), which the run's numbers depend on
runs/<name>/training.json   the training record: best epochs and criteria, fit time (training writes it)
runs/<name>/metrics.json    {"train": training record, split: {metric: float}}: rewritten whole by every
                            evaluation (the training record and that evaluation's metrics, nothing older)
runs/<name>/log.txt         everything logged during the run
runs/<name>/model/          the trained model (when there is one; its model.json marks a finished training)
runs/<name>/.llmrec-run     written first, when llmrec creates or adopts the folder: "this is an llmrec run"

A run directory belongs to one model and one configuration (see :func:`llmrec.pipeline.check_resume`).
llmrec writes runs only into a new or empty folder or one it can prove is its own run (the marker, or a
config.json with llmrec's ``_llmrec`` provenance block: runs of versions before the marker), and
``--restart`` deletes only files of its own names there (:data:`RUN_FILES`; inside ``model/`` only
:data:`MODEL_FILES`): a folder of someone else's is refused whatever the flags.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fnmatch
import importlib.metadata
import json
import logging
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from llmrec._version import __version__
from llmrec.config import to_dict
from llmrec.errors import LlmrecError
from llmrec.utils.io import PARTIAL_NAME, pid_alive, read_json, write_error, write_json_atomic
from llmrec.utils.lock import INSIDE_LOCK

log = logging.getLogger(__name__)


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


# the packages a run's numbers depend on (a new transformers or pandas release can move the fourth digit)
KEY_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "sentence-transformers",
    "pandas",
    "numpy",
    "pyarrow",
    "duckdb",
    "scikit-learn",
)


def package_versions() -> dict[str, str]:
    """{python, llmrec, each of :data:`KEY_PACKAGES`: its installed version ("absent" when it is not
    installed)}, read from the packages' metadata: nothing is imported."""
    versions = {"python": sys.version.split()[0], "llmrec": __version__}
    for name in KEY_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


class Run:
    """A run directory with a log file attached to the root logger while the run is open."""

    def __init__(self, root: str | Path, config: Any, dataset: dict[str, Any] | None = None) -> None:
        """``dataset``: how the run refers to its dataset (:func:`llmrec.data.dataset.dataset_ref`)."""
        self.root = Path(root)
        claim_run(self.root)  # never writes into a folder of someone else's
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
                    "versions": package_versions(),
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
RUN_MARKER = ".llmrec-run"  # "an llmrec run": written before anything else into a folder llmrec runs in

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
# what a saved model holds (Recommender.save: model.json, and each model's save_state); ``--restart``
# deletes these from model/ and nothing else there
MODEL_FILES = (
    "model.json",
    "model.safetensors",
    "counts.npy",
    "sources.json",
    "feature.json",
    "illmrec.safetensors",
    "histllm.safetensors",
)
# what an atomic write of one of them leaves when the process is killed mid-write (utils.io.atomic_path;
# a writer that insists on an extension gets it after ".partial": .training_curve.png.<pid>.<rand>.partial.png)
PARTIAL_FILES = tuple(f".{p}.*.partial*" for p in RUN_FILES if p not in ("model", "tracking"))
_FOLDERS = ("model", "tracking")


def _has_provenance(path: Path) -> bool:
    """Whether ``path`` is a run config.json llmrec wrote: a JSON object with its ``_llmrec`` block."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and isinstance(saved.get("_llmrec"), dict)


def is_llmrec_run(root: str | Path) -> bool:
    """Whether llmrec can prove ``root`` is its run: its marker, or (a run of a version before the marker)
    a config.json with llmrec's provenance block."""
    root = Path(root)
    return (root / RUN_MARKER).is_file() or _has_provenance(root / "config.json")


def _not_ours(name: str) -> bool:
    """Whether a folder entry counts against a folder being new: anything but the marker (and the temp
    file of a marker write cut short), a lock llmrec took inside it (``utils.lock.INSIDE_LOCK``) and the
    temp file of a run file's atomic write."""
    if name in (RUN_MARKER, INSIDE_LOCK) or name.startswith(f".{RUN_MARKER}."):
        return False
    # the temp file of a run file's write that a kill cut short (before the marker existed, or of a config)
    return not any(fnmatch.fnmatchcase(name, pattern) for pattern in PARTIAL_FILES)


def check_owned(root: str | Path) -> bool:
    """Whether ``root`` holds an llmrec run (True) or is new: absent or empty (False). Anything else, a
    file or a folder with files llmrec cannot prove it wrote, is refused with one line: llmrec never
    writes into it, nor deletes from it (``--restart`` included)."""
    root = Path(root)
    if not root.exists() and not root.is_symlink():
        return False
    if not root.is_dir():
        raise LlmrecError("not a directory", file=root, hint="give --out a folder for the run")
    if is_llmrec_run(root):
        return True
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if _not_ours(p.name))
    if not found:
        return False
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    raise LlmrecError(
        f"holds {shown} but is not an llmrec run (no {RUN_MARKER}, no config.json written by llmrec); "
        "llmrec writes runs only into new or empty folders and never deletes files it did not write "
        "(--restart included)",
        file=root,
        hint="use another --out",
    )


def claim_run(root: str | Path) -> None:
    """Create ``root`` (or adopt an older llmrec run there) and write its marker; a folder of someone
    else's is refused (:func:`check_owned`)."""
    root = Path(root)
    check_owned(root)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / RUN_MARKER).is_file():
        write_json_atomic(
            root / RUN_MARKER,
            {
                "llmrec": __version__,
                "created": dt.datetime.now().isoformat(timespec="seconds"),
                "about": "an llmrec run directory; 'llmrec train --restart' deletes only llmrec's files here",
            },
        )


def clear_run(root: str | Path) -> None:
    """Delete what earlier llmrec runs wrote into ``root`` (``--restart``); other files stay untouched.

    Only a folder llmrec can prove is its run is cleared (another is refused, see :func:`check_owned`);
    the marker stays. Inside ``model/`` only the files a saved model consists of (:data:`MODEL_FILES`) go:
    a file of the user's there keeps the folder, with a warning naming it."""
    root = Path(root)
    if not check_owned(root):
        return
    claim_run(root)  # a run of a version before the marker: its config.json, the proof, is about to go
    for pattern in RUN_FILES + PARTIAL_FILES:
        for path in root.glob(pattern):
            folder = path.is_dir() and not path.is_symlink()
            if path.name == "model" and folder:
                _clear_model(path)
            elif path.name in _FOLDERS:  # the trackers' logs, written under it on llmrec's behalf
                if folder:
                    shutil.rmtree(path)
                elif path.is_symlink():
                    path.unlink()  # the link, never what it points to
            elif path.is_symlink() or path.is_file():
                path.unlink()


def _clear_model(folder: Path) -> None:
    for name in MODEL_FILES:
        for path in (folder / name, *folder.glob(f".{name}.*.partial")):
            if path.is_file() or path.is_symlink():
                path.unlink()
    kept = sorted(p.name for p in folder.iterdir())
    if kept:
        log.warning("--restart: kept %s in %s (not files llmrec writes there)", ", ".join(kept[:5]), folder)
    else:
        folder.rmdir()


def clear_partial_files(root: str | Path) -> None:
    """Delete the temporary files of atomic writes a killed run left in ``root`` (a resumed run rewrites
    them; nothing else is touched, nor the temp file of a process still writing)."""
    for pattern in PARTIAL_FILES:
        for path in Path(root).glob(pattern):
            match = PARTIAL_NAME.match(path.name)
            if path.is_file() and not (match and pid_alive(int(match.group(1)))):
                path.unlink()


def default_run_name(model: str, data: str | Path) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{model}-{Path(data).name}-{stamp}"

"""What every model around a frozen LLM shares: save only what training changes, and reload it against
the dataset (and the exact features) it was trained on."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

import torch

from llmrec.data.dataset import Dataset
from llmrec.errors import LlmrecError
from llmrec.models.neural import TorchRecommender
from llmrec.utils.io import atomic_path, read_json, write_json_atomic


class FeatureBackedLLM(TorchRecommender):
    """A subclass provides ``attach(ds)`` (which fills ``self.source["features"]`` with each feature's name and
    sha256) and ``checkpoint_state``; its weights file is ``<weights_name>.safetensors`` beside sources.json."""

    weights_name: ClassVar[str] = ""
    source: dict[str, Any]

    @abc.abstractmethod
    def attach(self, ds: Dataset) -> None:
        """Load the backbone and the dataset's features; build the modules; record ``self.source``."""

    def prepare(self, dataset: Dataset) -> None:
        """Before training: attach the backbone and features of ``dataset``."""
        self.attach(dataset)

    def sources_record(self) -> dict[str, Any]:
        """What sources.json holds (subclasses may add keys that ``before_attach`` reads back)."""
        return self.source

    def before_attach(self, source: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore from sources.json what ``attach`` needs to rebuild the same modules."""

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        unknown = set(state) - set(self.state_dict())
        if unknown:
            raise LlmrecError(
                f"checkpoint has unknown weights {sorted(unknown)[:3]}",
                hint="it belongs to another configuration",
            )
        self.load_state_dict(state, strict=False)

    @staticmethod
    def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
        """Write ``state`` as safetensors through a temp file, so an interrupted write leaves no half file."""
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file({k: v.cpu().contiguous() for k, v in state.items()}, str(tmp))

    def save_state(self, directory: Path) -> None:
        self.save_weights(directory / f"{self.weights_name}.safetensors", self.checkpoint_state())
        write_json_atomic(directory / "sources.json", self.sources_record())

    def load_state(self, directory: Path) -> None:
        from safetensors.torch import load_file

        source = read_json(directory / "sources.json")
        root = Path(source["dataset"])
        if not (root / "meta.json").exists():
            raise LlmrecError(
                "the dataset this model reads its features from is gone",
                file=root,
                hint=f"restore it or edit {directory / 'sources.json'}",
            )
        self.before_attach(source)
        self.attach(Dataset(root))
        for role, ref in source["features"].items():
            if self.source["features"].get(role, {}).get("sha256") != ref["sha256"]:
                raise LlmrecError(
                    f"feature '{ref['name']}' changed since the model was trained",
                    file=root / "features",
                    hint="restore it or retrain",
                )
        self.load_checkpoint_state(load_file(directory / f"{self.weights_name}.safetensors"))
        self.eval()

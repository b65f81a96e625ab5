"""What every model around a frozen LLM shares: save only what training changes, and reload it against
the dataset (and the exact features) it was trained on."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

import torch

from llmrec.data.dataset import Dataset
from llmrec.errors import LlmrecError
from llmrec.llm.backbone import Backbone
from llmrec.models.neural import TorchRecommender, check_weights, read_weights
from llmrec.utils.io import atomic_path, read_json, write_json_atomic


class FeatureBackedLLM(TorchRecommender):
    """A subclass provides ``attach(ds)`` (which loads its LM with :meth:`load_backbone`, builds its modules and
    fills ``self.source["features"]`` with each feature's name and sha256) and ``checkpoint_state``; its
    weights file is ``<weights_name>.safetensors`` beside sources.json. The dataset itself is recorded in
    model.json (see :meth:`Recommender.save`). Where the model runs is its :attr:`placement`: the trainer and
    :meth:`load_state` move the whole model there after ``attach``, so a subclass names no device."""

    weights_name: ClassVar[str] = "model"
    #: entries older versions saved with the weights that are no longer weights (dropped on loading)
    legacy_weights: ClassVar[tuple[str, ...]] = ()
    needs_dataset = True
    has_backbone = True  # its LM's weights in the placement's dtype
    source: dict[str, Any]
    _dataset: Dataset | None = None

    @abc.abstractmethod
    def attach(self, ds: Dataset) -> None:
        """Load the backbone and the dataset's features; build the modules; record ``self.source``."""

    @property
    def trained_on(self) -> Dataset | None:
        """The dataset ``attach`` attached (None before): the model reads its texts and features."""
        return self._dataset

    def load_backbone(self) -> Backbone:
        """The LM of the config's ``backbone`` option, loaded where the model runs (its placement: device
        and weights dtype): what ``attach`` builds its modules around."""
        return Backbone(self.cfg.backbone, self.placement)  # type: ignore[attr-defined]

    def prepare(self, dataset: Dataset) -> None:
        """Before training: attach the backbone and features of ``dataset``."""
        self.attach(dataset)

    def sources_record(self) -> dict[str, Any]:
        """What sources.json holds (subclasses may add keys that ``before_attach`` reads back)."""
        return {k: v for k, v in self.source.items() if k != "dataset"}

    def before_attach(self, source: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore from sources.json what ``attach`` needs to rebuild the same modules."""

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        state = {k: v for k, v in state.items() if k not in self.legacy_weights}
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

    def load_state(self, directory: Path, dataset: Dataset | None) -> None:
        """Attach to ``dataset`` (located by :func:`load_model`), check the features are the ones trained
        on, then load exactly the weights training changes (a missing or unexpected one is an error)."""
        assert dataset is not None  # needs_dataset: load_model located it
        source = read_json(directory / "sources.json")
        self.before_attach(source)
        self.attach(dataset)
        for role, ref in source["features"].items():
            if self.source["features"].get(role, {}).get("sha256") != ref["sha256"]:
                raise LlmrecError(
                    f"feature '{ref['name']}' changed since the model was trained",
                    file=dataset.features_dir,
                    hint="restore it or retrain",
                )
        path = directory / f"{self.weights_name}.safetensors"
        state = {k: v for k, v in read_weights(path).items() if k not in self.legacy_weights}
        check_weights(path, state, self.checkpoint_state())
        self.load_checkpoint_state(state)
        self.to(self.placement.device)  # the modules attach built, with the LM (as the trainer does)
        self.eval()

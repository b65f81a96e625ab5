"""Rec-GPT4V (Liu et al., 2024): a zero-shot vision-language model as a recommender (HistLLM, Table 2).

Visual-Summary Thought, as HistLLM compares against it: no training. For a user's history (the last
``history_len`` items, each its title and its image):

1. the VLM sees every history item's title and picture and writes, greedily, a description of what the
   pictures show and a summary of the user's preferences (``max_new_tokens``);
2. it is then asked whether the user will like the target item, shown by its title and picture, with the
   history titles and that summary as context, and the score is its next-token preference for "Yes" over
   "No": logit(Yes) - logit(No) = the logit of P(Yes) under a softmax over the two answer tokens (the
   answer ids come from the tokenizer).

The summary depends only on the history's items, so it is generated once per distinct history and cached:
every CTR row of a user with the same history, and every ranking candidate of a user, reuse it. The same
score ranks candidates (one forward per candidate). Items without an image are shown by their title alone,
marked "(no image)"; a dataset without any item image is refused. The VLM is any transformers
image-text-to-text model (``-o backbone.llm=<folder or hub id>``; the HistLLM paper used DeepSeek-VL2,
the Rec-GPT4V paper GPT-4V and LLaVA). The prompts are ours: neither paper prints them. Rec-GPT4V's VST
summarises each item's image on its own before combining the summaries with the titles; here one
generation covers the user's history images at once (one summary per user, as the brief of this baseline
in HistLLM's CTR protocol asks), so the cost is one generation per history, not per item.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmrec.config import check_ranges, option
from llmrec.data.dataset import Dataset
from llmrec.data.importers import item_noun
from llmrec.errors import LlmrecError
from llmrec.models.base import ModelConfig, Placement, Recommender, register_model
from llmrec.utils.io import read_json, write_json_atomic

log = logging.getLogger(__name__)

SUMMARY_REQUEST = (
    "First describe what the pictures of these {nouns} show, then summarise this user's preferences "
    "in a few sentences."
)
QUESTION = 'Will the user enjoy the {noun} titled "{title}"? Answer with "Yes" or "No".'
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    """Which vision-language model (always frozen; its weights' dtype is the command's placement)."""

    llm: str | None = option(
        None,
        "the VLM: local folder or hub id of any transformers image-text-to-text model (required; the HistLLM "
        "paper used DeepSeek-VL2)",
    )

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclasses.dataclass(frozen=True)
class RecGPT4VConfig(ModelConfig):
    backbone: VLMConfig = option(factory=VLMConfig, help="the frozen vision-language model")
    history_len: int = option(5, "history items shown (the most recent; HistLLM's movie setting)", ge=1)
    max_new_tokens: int = option(128, "tokens of the generated preference summary (greedy)", ge=1)
    max_title_chars: int = option(200, "cut titles longer than this", ge=1)
    noun: str | None = option(
        None,
        "what the prompts call an item; None = the dataset's, stored by its importer (movie; news article "
        "for mind), or 'movie' for a dataset whose importer stored none",
    )


def _title(text: Any, limit: int) -> str:
    text = " ".join(str(text or "").split())
    return text[:limit].rstrip() or "Unknown"


@register_model("recgpt4v")
class RecGPT4V(Recommender):
    """Zero-shot: ``fit`` attaches the VLM and the dataset's titles and images and trains nothing."""

    config_cls = RecGPT4VConfig
    scores_unseen_items = True  # zero-shot from the item texts and pictures
    needs_dataset = True
    pair_batch_size = 16  # CTR rows per evaluation call (one VLM forward each)
    on_device = has_backbone = True  # the VLM, on the placement's device in its dtype
    cfg: RecGPT4VConfig

    def __init__(
        self, cfg: RecGPT4VConfig, n_users: int, n_items: int, placement: Placement | None = None
    ) -> None:
        super().__init__(cfg, n_users, n_items, placement)
        self.vlm: Any = None  # a VisionLanguageModel, built by attach()
        self._dataset: Dataset | None = None
        self.summaries: dict[tuple[int, ...], str] = {}  # history items -> generated summary
        self.source: dict[str, Any] = {}

    @property
    def trained_on(self) -> Dataset | None:
        return self._dataset

    # ------------------------------------------------------------------ building against a dataset
    def attach(self, ds: Dataset) -> None:
        """Load the VLM; read the dataset's titles and image files (a dataset without images is refused)."""
        from llmrec.features.sources import ids_checksum, source_keys
        from llmrec.llm.vlm import ItemPictures, VisionLanguageModel

        paths = ItemPictures(ds, self.name).paths  # a dataset without any picture is refused
        if self.cfg.noun is None:  # the dataset's, as the HistLLM family's; model.json then records it
            self.cfg = dataclasses.replace(self.cfg, noun=item_noun(ds.meta))
        self.vlm = VisionLanguageModel(
            self.cfg.backbone.llm, self.placement.device, _DTYPES[self.placement.dtype or "float32"]
        )
        self._dataset, self._paths = ds, paths
        self.titles = [self.vlm.escape(_title(t, self.cfg.max_title_chars)) for t in ds.items["title"]]
        self.source = {"images_sha256": ids_checksum(source_keys(list(paths)))}
        self.answer_ids = [self.vlm.answer_token_id("Yes"), self.vlm.answer_token_id("No")]
        log.info(
            "%s: %d of %d items have an image; %s",
            self.name,
            sum(p is not None for p in paths),
            len(paths),
            self.cfg.backbone.llm,
        )

    def fit(self, dataset: Dataset, run: Any | None = None) -> None:
        """Nothing to learn (zero-shot): attach the VLM and the dataset."""
        self.attach(dataset)

    def image(self, item: int) -> Any:
        """The item's picture, or None (no image file, or one that does not decode)."""
        from llmrec.llm.vlm import open_image

        return open_image(self._paths[item])

    # ------------------------------------------------------------------ prompts
    @property
    def noun(self) -> str:
        """What the prompts call an item: the option, or (None) the dataset's, filled in by ``attach``."""
        if self.cfg.noun is None:
            raise LlmrecError("the item noun is the dataset's: attach the model to a dataset first")
        return self.cfg.noun

    def item_parts(self, item: int, number: int | None = None) -> list[Any]:
        """One item as prompt parts: its title, then its picture (or "(no image)")."""
        head = f"{number}. " if number is not None else ""
        image = self.image(item)
        if image is None:
            return [f'{head}"{self.titles[item]}" (no image)\n']
        return [f'{head}"{self.titles[item]}": ', image, "\n"]

    def summary_parts(self, history: np.ndarray) -> list[Any]:
        """Step 1, Visual-Summary Thought: the history items' titles and pictures, then the request."""
        nouns = self.noun + "s"
        parts: list[Any] = [f"A user has given high ratings to the following {nouns}:\n"]
        for k, item in enumerate(history, 1):
            parts += self.item_parts(int(item), k)
        return parts + [SUMMARY_REQUEST.format(nouns=nouns)]

    def question_parts(self, history: np.ndarray, summary: str, target: int) -> list[Any]:
        """Step 2: history titles and the summary as context, the target's title and picture, the question."""
        nouns = self.noun + "s"
        titles = ", ".join(f'"{self.titles[int(i)]}"' for i in history) or "none yet"
        parts: list[Any] = [f"A user has given high ratings to the following {nouns}: {titles}.\n"]
        if summary:
            parts.append(
                f"A summary of the user's preferences, from the pictures of those {nouns}: {summary}\n"
            )
        parts.append(f"The candidate {self.noun}:\n")
        parts += self.item_parts(int(target))
        return parts + [QUESTION.format(noun=self.noun, title=self.titles[int(target)])]

    def summary(self, history: np.ndarray) -> str:
        """The generated summary of ``history`` (its last ``history_len`` items), cached by those items."""
        key = tuple(int(i) for i in np.asarray(history)[-self.cfg.history_len :])
        if key not in self.summaries:
            text = (
                self.vlm.generate(self.summary_parts(np.asarray(key)), self.cfg.max_new_tokens) if key else ""
            )
            self.summaries[key] = self.vlm.escape(" ".join(text.split()))
        return self.summaries[key]

    def show_prompts(self, dataset: Dataset, user: int, seed: int = 0) -> list[dict[str, Any]]:
        """What the VLM reads for user index ``user``'s test example (``llmrec prompts``): the summary
        request and the question, as chat-framed text with one image marker per picture, and their token
        counts with the processor's image tokens expanded (nothing is trained, so no answer is scored)."""
        self._check_attached()
        split = dataset.split("test")
        history = np.asarray(split.histories[user])[-self.cfg.history_len :]
        target = int(split.targets[user])
        shown = []
        for name, parts in (
            ("step 1: summary request (generated greedily)", self.summary_parts(history)),
            (
                "step 2: question (scored from the Yes/No logits)",
                self.question_parts(history, self.summary(history), target),
            ),
        ):
            shown.append(
                {
                    "name": name,
                    "text": self.vlm.chat(parts),
                    "tokens": int(self.vlm.encode(parts)["input_ids"].shape[1]),
                    "images": sum(not isinstance(p, str) for p in parts),
                    "history_items": len(history),
                    "constant_prefix_tokens": 0,
                    "answer": "",
                    "answer_tokens": 0,
                }
            )
        return shown

    # ------------------------------------------------------------------ scoring
    def _check_attached(self) -> None:
        if self.vlm is None:
            raise LlmrecError(
                f"{self.name} is not attached to a dataset", hint="fit it or load a saved model"
            )

    def pair_logit(self, history: np.ndarray, target: int) -> float:
        """logit(Yes) - logit(No) of one (history, target) question."""
        history = np.asarray(history, dtype=np.int64)[-self.cfg.history_len :]
        parts = self.question_parts(history, self.summary(history), target)
        yes, no = self.vlm.next_token_logits(parts, self.answer_ids).tolist()
        return yes - no

    def score_pairs(self, users: np.ndarray, histories: list[np.ndarray], targets: np.ndarray) -> np.ndarray:
        self._check_attached()
        return np.array([self.pair_logit(h, int(t)) for h, t in zip(histories, targets)], dtype=np.float64)

    def score(self, users: np.ndarray, histories: list[np.ndarray], candidates: np.ndarray) -> np.ndarray:
        """(B, C): every candidate of a user asked about with the user's one summary."""
        self._check_attached()
        candidates = np.asarray(candidates, dtype=np.int64)
        return np.array(
            [[self.pair_logit(h, int(c)) for c in row] for h, row in zip(histories, candidates)],
            dtype=np.float64,
        ).reshape(candidates.shape)

    def score_all(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        every = np.tile(np.arange(self.n_items), (len(users), 1))
        return self.score(users, histories, every)

    # ------------------------------------------------------------------ persistence
    def save_state(self, directory: Path) -> None:
        """No weights (the VLM is not ours to copy): the image checksums, to check on loading."""
        write_json_atomic(directory / "sources.json", self.source)

    def load_state(self, directory: Path, dataset: Dataset | None) -> None:
        assert dataset is not None  # needs_dataset: load_model located it
        path = directory / "sources.json"
        if not path.exists():
            raise LlmrecError(
                "sources.json missing", file=path, hint="the saved model is damaged; train it again"
            )
        saved = read_json(path)
        self.attach(dataset)
        if saved.get("images_sha256") != self.source["images_sha256"]:
            raise LlmrecError(
                "the dataset's item images changed since the model was evaluated",
                file=dataset.images_dir,
                hint="restore them, or run it again (llmrec train ... --restart)",
            )

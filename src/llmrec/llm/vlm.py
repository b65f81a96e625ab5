"""A vision-language model (any transformers image-text-to-text model) for the VLM baselines.

Rec-GPT4V (zero-shot: generate a summary, then read P(Yes) vs P(No)) and UniMP (items through the VLM's
own vision tower and image tokens, inside I-LLMRec's protocol) both take the VLM as a local folder or hub
id loaded with ``AutoModelForImageTextToText`` + ``AutoProcessor``; nothing here names a model family.
A prompt is a list of parts, each a string or a PIL image; the processor's chat template places the
image markers and the processor expands each into that model's image tokens. The VLM is frozen.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from llmrec.assets import LLM_ALIASES, local_model_path, unloadable
from llmrec.errors import ConfigError, LlmrecError

if TYPE_CHECKING:
    from llmrec.data.dataset import Dataset

log = logging.getLogger(__name__)

Part = Any  # a str or a PIL image
_HINT = "give -o backbone.llm=<folder or hub id of an image-text-to-text model (a VLM: LLaVA, Qwen2-VL, Idefics3...)>"


def load_vlm(name: str | None, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, processor) of the image-text-to-text model ``name``, frozen and in eval mode.

    A model of another kind (a text-only causal LM, an image encoder) is a one-line ConfigError naming its
    config class, before any weights load; so is a processor without an image token."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if not name:
        raise ConfigError("no vision-language model given", hint=_HINT)
    if name in LLM_ALIASES:
        raise ConfigError(
            f"the offline backbone '{name}' is a text-only LM, not a vision-language model", hint=_HINT
        )
    local_model_path(name, "vision-language model")
    t0 = time.perf_counter()
    try:
        config = AutoConfig.from_pretrained(name)
    except Exception as e:  # transformers raises OSError, ValueError... for a missing or foreign folder
        raise unloadable(name, "vision-language model", e) from None
    if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ConfigError(
            f"'{name}' is not an image-text-to-text model (its config is {type(config).__name__}, "
            f"model_type {config.model_type!r})",
            hint=_HINT,
        )
    try:
        processor = AutoProcessor.from_pretrained(name)
        model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype)
    except Exception as e:
        raise unloadable(name, "vision-language model", e) from None
    if not isinstance(getattr(processor, "image_token", None), str) or not hasattr(processor, "tokenizer"):
        raise ConfigError(
            f"the processor of '{name}' ({type(processor).__name__}) names no image token", hint=_HINT
        )
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    log.info("loaded the VLM %s (%s) in %.1fs", name, type(model).__name__, time.perf_counter() - t0)
    return model, processor


def text_config(config: Any) -> Any:
    """The language model's part of a VLM config (hidden size, context length)."""
    if hasattr(config, "get_text_config"):  # transformers' own answer, for composite and plain configs
        return config.get_text_config()
    return getattr(config, "text_config", None) or config


def escape_image_token(text: str, token: str) -> str:
    """Data text with the VLM's image marker (e.g. "<image>") written as "(image)": only templates place it."""
    return text.replace(token, "(" + token.strip("<>[]|") + ")") if token else text


class VisionLanguageModel:
    """A frozen VLM and its processor on one device: chat-framed prompts of text and images, greedy
    generation, next-token logits, and one image's own image-token embeddings."""

    def __init__(self, name: str | None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        model, processor = load_vlm(name, dtype)
        self.name = name
        self.model = model.to(device)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token: str = processor.image_token
        self.image_token_id = int(self.tokenizer.convert_tokens_to_ids(self.image_token))
        self.has_template = bool(getattr(processor, "chat_template", None))
        if not self.has_template:
            log.warning("the VLM's processor has no chat template: prompts are its raw text")

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def escape(self, text: str) -> str:
        return escape_image_token(text, self.image_token)

    def chat(self, parts: list[Part]) -> str:
        """The prompt text of ``parts`` (strings and images, in order) as one user turn of the processor's
        chat template with the assistant prompt after it; one image marker per image."""
        content = [
            {"type": "text", "text": p} if isinstance(p, str) else {"type": "image"} for p in parts if p != ""
        ]
        if self.has_template:
            return self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
        return "".join(c.get("text", self.image_token) for c in content)

    def encode(self, parts: list[Part]) -> dict[str, torch.Tensor]:
        """Model inputs of one prompt: ids (image markers expanded), mask, pixel values."""
        images = [p for p in parts if not isinstance(p, str)]
        enc = self.processor(
            text=[self.chat(parts)], images=images or None, return_tensors="pt", add_special_tokens=False
        )
        return {k: v.to(self.device) for k, v in enc.items()}

    @torch.no_grad()
    def generate(self, parts: list[Part], max_new_tokens: int) -> str:
        """Greedy answer to the prompt ``parts`` (special tokens dropped)."""
        enc = self.encode(parts)
        pad = self.tokenizer.pad_token_id
        out = self.model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad if pad is not None else self.tokenizer.eos_token_id,
        )
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()

    @torch.no_grad()
    def next_token_logits(self, parts: list[Part], token_ids: list[int]) -> torch.Tensor:
        """(k,) logits of ``token_ids`` as the next token after the prompt ``parts``."""
        out = self.model(**self.encode(parts), logits_to_keep=1)
        return out.logits[0, -1, token_ids].float()  # (k,)

    def answer_token_id(self, word: str) -> int:
        """Id of the first token the VLM emits when it answers ``word`` after a chat-framed prompt: the
        prompt is tokenised with and without the answer and the first new token is taken (never hard-coded)."""
        prompt = self.chat(["Answer with Yes or No."])
        sep = "" if self.has_template else " "
        base = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full = self.tokenizer(prompt + sep + word, add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) == len(base):
            raise ConfigError(
                f"cannot resolve the answer token of {word!r} with the tokenizer of {self.name}"
            )
        return int(full[len(base)])

    def image_token_count(self, image: Any) -> int:
        """How many image tokens the processor expands one marker of ``image`` into."""
        return image_token_count(self.processor, image)

    def image_embeddings(self, image: Any) -> torch.Tensor:
        """(n, d_llm) the VLM's own embeddings at the n image tokens of ``image``."""
        return image_embeddings(self.model, self.processor, image)


def image_token_count(processor: Any, image: Any) -> int:
    """How many image tokens ``processor`` expands one marker of ``image`` into."""
    enc = processor(text=[processor.image_token], images=[image], return_tensors="pt")
    token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return int((enc["input_ids"] == token_id).sum())


@torch.no_grad()
def image_embeddings(model: Any, processor: Any, image: Any) -> torch.Tensor:
    """(n, d_llm) the embeddings a VLM itself puts at the n image tokens of ``image``: its vision tower
    and projector (``get_image_features``), as its own forward would."""
    enc = processor(text=[processor.image_token], images=[image], return_tensors="pt")
    n = int((enc["input_ids"] == processor.tokenizer.convert_tokens_to_ids(processor.image_token)).sum())
    device = model.get_input_embeddings().weight.device
    inputs = {k: v.to(device) for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.get_input_embeddings().weight.dtype)
    out = model.get_image_features(**inputs)
    feats = getattr(out, "pooler_output", out)  # transformers 5: a model output; older: the tensor
    if isinstance(feats, list | tuple):
        feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])
    feats = feats.reshape(-1, feats.shape[-1])  # (n, d)
    if feats.shape[0] != n:
        raise LlmrecError(
            f"the VLM gave {feats.shape[0]} image embeddings for {n} image tokens",
            hint="this model family's image features are not one row per image token; use another VLM",
        )
    return feats


def open_image(path: Path | None) -> Any:
    """The RGB image at ``path``; None when there is none or it does not decode (the item counts as
    image-less, and a warning names the file)."""
    from PIL import Image

    if path is None:
        return None
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:  # unreadable, truncated, a decompression bomb
        log.warning("image %s unreadable (%s): the item is shown without it", path, e)
        return None


class ItemPictures:
    """Items as a VLM backbone sees them (UniMP): each item's image file, how many image tokens its
    processor expands it into, and the VLM's own embeddings at those tokens (kept in a least-recently-used
    cache of at most ``cache_values`` numbers: the VLM is frozen, they never change)."""

    def __init__(self, dataset: Dataset, who: str, cache_values: int = 2**28) -> None:
        from llmrec.data.images import image_paths

        self.paths = image_paths(dataset)
        self.has = np.array([p is not None for p in self.paths])  # (N,)
        if not self.has.any():
            raise LlmrecError(
                f"{who} shows item images to a VLM, and no item of this dataset has one",
                file=dataset.root,
                hint=f"run 'llmrec images --data {dataset.root}' first (or use a dataset with images)",
            )
        self.cache_values = cache_values
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.model: Any = None
        self.processor: Any = None

    def bind(self, model: Any, processor: Any) -> None:
        """The VLM whose vision tower and processor read the pictures."""
        self.model, self.processor = model, processor
        self._cache.clear()

    def picture(self, item: int) -> Any:
        picture = open_image(self.paths[item])
        if picture is None:
            raise LlmrecError(
                f"item row {item + 1}: its image does not decode", hint="re-run 'llmrec images'"
            )
        return picture

    def markers(self, texts: list[str]) -> list[str]:
        """Rendered items with each [VISUAL] replaced by the VLM's image token, as many times as the
        processor expands that item's picture into (fixed for LLaVA, by image size for Qwen2-VL); the
        image token written in data text is escaped first."""
        token = self.processor.image_token
        out = []
        for i, text in enumerate(texts):
            text = escape_image_token(text, token)
            if "[VISUAL]" in text:
                text = text.replace("[VISUAL]", token * image_token_count(self.processor, self.picture(i)))
            out.append(text)
        return out

    def embeddings(self, item: int) -> torch.Tensor:
        """(n, d_llm) the VLM's own embeddings of the item's picture."""
        if item in self._cache:
            self._cache.move_to_end(item)
            return self._cache[item]
        self._cache[item] = image_embeddings(self.model, self.processor, self.picture(item))
        while sum(v.numel() for v in self._cache.values()) > self.cache_values and len(self._cache) > 1:
            self._cache.popitem(last=False)
        return self._cache[item]

"""HistLLM's options, one typed config (:class:`HistLLMConfig`), and its recipes (the model is in
:mod:`llmrec.models.llm.histllm`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from llmrec.config import option
from llmrec.errors import ConfigError
from llmrec.llm.backbone import BackboneConfig
from llmrec.models.neural import NeuralConfig

#: ``recipe``: named defaults. paper = the prompt framing the paper and CoLLM's code (``prompt_template:
#: '{}'``) use (the raw appendix text, no chat template), the dataset's history length (the paper's: 5 movies,
#: 10 Netflix and MIND, as the importers store it) and every training row in every epoch; BinLLM's presets add
#: their authors' LoRA start (:mod:`llmrec.models.llm.ctr_presets`). What the paper leaves open stays ours
#: (docs/explanations/histllm.md: "What the paper does not fix")
RECIPES: dict[str, dict[str, Any]] = {
    "llmrec": {},
    "paper": {"prompt_format": "raw", "history_len": None, "train_examples": None},
}


def _lora_backbone() -> BackboneConfig:
    return BackboneConfig(lora=True)


@dataclasses.dataclass(frozen=True)
class HistLLMConfig(NeuralConfig):
    recipe: Literal["llmrec", "paper"] = option(
        "llmrec",
        "defaults for the options below: llmrec, or paper (raw prompts as the paper and CoLLM's code feed "
        "them, the dataset's history length, every training row each epoch; BinLLM: LoRA from TALLRec's); an "
        "option given beside it overrides its value (docs: explanations/histllm.md, framing)",
    )
    prompt_format: Literal["chat", "raw"] = option(
        "chat",
        "chat: the question as the user turn of the backbone's chat template, the answer read after the "
        "assistant header; raw: the bare '#Question: ... \\n#Answer:' text (after the tokenizer's own BOS, "
        "if it adds one), the answer read as the next token after '#Answer:' (recipe=paper)",
    )
    backbone: BackboneConfig = option(factory=_lora_backbone, help="the LLM; LoRA on (step 1 trains it)")
    history: Literal["uhem", "inline"] = option(
        "uhem", "uhem: the history as ONE encoded token; inline: every item written into the prompt"
    )
    ke: bool = option(True, "knowledge enhancement: items as generated descriptions instead of titles")
    image: bool | None = option(None, "visual tokens (VMA); None = when the dataset has the image feature")
    cf: Literal["none", "tokens", "binary"] = option(
        "tokens", "collaborative info: none, MF tokens (CoLLM/CIA) or 0/1 text codes (BinLLM)"
    )
    encoder: Literal["gru", "transformer"] = option("gru", "UHEM history encoder")
    encoder_dim: int = option(512, "width of the history encoder", ge=1)
    encoder_layers: int | None = option(None, "encoder layers (None: GRU 1, Transformer 2)", ge=1)
    encoder_heads: int = option(4, "Transformer encoder heads (must divide encoder_dim)", ge=1)
    encoder_dropout: float = option(0.1, "history encoder dropout", ge=0, lt=1)
    mapper_hidden: int = option(512, "hidden width of the visual and CF mapping MLPs", ge=1)
    history_len: int | None = option(
        5,
        "most recent liked items per example; None = the dataset's (its prepare's --ctr-history-len: 5 for "
        "movies, 10 for netflix and mind, the paper's; recipe=paper)",
        ge=1,
    )
    max_text_tokens: int | None = option(
        48, "tokens of each item's title/description kept (UHEM and inline; None: whole texts)", ge=1
    )
    description_texts: str | None = option(
        "from_title", "KE texts (llmrec describe --mode from_title); None = the items' own descriptions"
    )
    noun: str | None = option(
        None,
        "what the prompts call an item; None = the dataset's, stored by its importer (movie; news article "
        "for mind; product for amazon), or 'movie' for a dataset whose importer stored none (table, "
        "synthetic, or prepared before llmrec stored it)",
    )
    image_feature: str = option("image", "feature-store name of the image feature (VMA)")
    missing_image: Literal["learned", "zero"] = option(
        "learned",
        "VMA token of an item flagged image-less in the image feature: one learned 'no image' vector "
        "(trained in step 2), or the mapper of the stored zero feature (llmrec before this option)",
    )
    user_cf_feature: str = option("mf_user", "MF user embeddings (llmrec features --cf RUN)")
    item_cf_feature: str = option("mf_item", "MF item embeddings (llmrec features --cf RUN)")
    binary_bits: int = option(32, "BinLLM code length", ge=1)
    scoring: Literal["softmax", "yes_logit"] = option(
        "softmax", "P(Yes): softmax over Yes/No logits (TALLRec) or sigmoid of the Yes logit (CoLLM)"
    )
    step1_epochs: int = option(
        1, "LoRA epochs of step 1 (0 = none: LoRA stays as initialised or loaded)", ge=0
    )
    step1_lr: float = option(1e-3, "learning rate of step 1", gt=0)
    step1_from: str | None = option(
        None,
        "reuse the step-1 LoRA of a trained run with the same step-1 prompt; with lora_start=tallrec, the "
        "TALLRec run whose LoRA step 1 starts from",
    )
    lora_start: Literal["scratch", "tallrec"] = option(
        "scratch",
        "where step 1's LoRA starts when its prompt is not TALLRec's (BinLLM's codes): scratch (a fresh LoRA, "
        "one step), or tallrec (first trained on TALLRec's titles prompt, or taken from the TALLRec run "
        "step1_from names, then trained on this model's prompt: BinLLM's authors' configuration, "
        "recipe=paper's for binllm)",
    )
    train_examples: int | None = option(
        2048, "CTR training examples per epoch (a fresh random subset each epoch; None = all)", ge=1
    )
    eval_examples: int | None = option(
        1000, "validation CTR examples (a fixed random subset; None = all)", ge=1
    )
    score_batch_size: int = option(16, "prompts per LLM forward when scoring", ge=1)
    shared_prefix: bool = option(
        True,
        "compute shared prompt starts once: the constant instruction before the history (its cached KV, "
        "wherever it carries no gradient: step 2 with LoRA frozen, and scoring) and, ranking, each user's "
        "prompt up to the target (its KV reused for every candidate)",
    )
    rank_batch_size: int = option(64, "ranking with the shared prefix: candidates per LLM forward", ge=1)
    epochs: int = option(2, "epochs of step 2 (the mappers and history encoder)", ge=1)
    batch_size: int = option(8, "training examples per step", ge=1)
    lr: float = option(1e-3, "learning rate of step 2", gt=0)
    weight_decay: float = option(1e-3, "AdamW weight decay (paper: 1e-3)", ge=0)
    patience: int = option(2, "validations without a better valid AUC before stopping", ge=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder == "transformer" and self.encoder_dim % self.encoder_heads:
            raise ConfigError(
                f"encoder_heads ({self.encoder_heads}) must divide encoder_dim ({self.encoder_dim})"
            )

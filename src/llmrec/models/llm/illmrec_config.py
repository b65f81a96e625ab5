"""I-LLMRec's options, one typed config (:class:`ILLMRecConfig`), and its recipes.

Every ablation is a config switch: ``representation`` (image / title / attribute / description / summary /
cf / image_description: the paper's representation comparison under one protocol and backbone),
``ila`` on/off, ``features`` any subset of image/cf/text, ``training`` end2end or two_stage
(Appendix H: ILA alone, then the projectors alone), ``head_epochs`` (end-to-end training followed by the
projectors alone), ``backbone.lora`` (Appendix E), ``missing_image_fraction`` (Sec. 4.5: image-less items
fall back to their description in the prompt and to a text feature, through its own projector, in
retrieval).

Where the paper's text, the official code and llmrec's CPU-friendly defaults differ, ``recipe`` (paper /
official / llmrec, :data:`RECIPES`) sets every such option at once: prompt framing (``prompt_format``: the
chat template, or the official raw IRE text and Vicuna-v1 ILA conversation, tokenised as ``tokenizer(text)``
with the tokenizer's own special tokens), precision (``trainable_dtype``, ``eval_dtype``), the IRE loss over
feature types (``ire_reduction``: the paper's Eq. 7 sums, the official code averages), the trained input-embedding
matrix (``backbone.train_embeddings``), the optimiser and schedule, fixed epochs without validation, window
and negative samplers, ILA values from feature bullets, and the small constants; an option given beside it
still wins.

UniMP (:mod:`llmrec.models.llm.unimp`) takes the same options, with ``representation=vlm`` and no ILA.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from llmrec.config import merge, option
from llmrec.errors import ConfigError
from llmrec.llm.backbone import BackboneConfig
from llmrec.llm.prompts import ILA_QUESTIONS, REPRESENTATIONS, PromptFormat, Representation
from llmrec.models.neural import NeuralConfig

FEATURE_TYPES = ("image", "cf", "text")


@dataclasses.dataclass(frozen=True)
class ILLMRecConfig(NeuralConfig):
    recipe: Literal["llmrec", "paper", "official"] = option(
        "llmrec",
        "defaults for every option below: llmrec (CPU-friendly), paper (the paper's text) or official (the "
        "official code); an option given beside it overrides its value (docs: explanations/recipes.md)",
    )
    backbone: BackboneConfig = option(factory=BackboneConfig, help="the LLM (frozen unless backbone.lora)")
    representation: Representation = option(
        "image",
        "how history items appear in the prompt (vlm: UniMP, attributes and a VLM backbone's own image tokens)",
    )
    features: list[str] = option(
        factory=lambda: ["image", "cf", "text"], help="IRE feature types (subset of image, cf, text)"
    )
    image_feature: str = option("image", "feature-store name of the image feature")
    cf_feature: str = option(
        "sasrec_item", "feature-store name of the CF item embeddings (llmrec features --cf)"
    )
    text_feature: str = option(
        "text", "feature-store name of the text feature (also the missing-image fallback)"
    )
    ila: bool = option(True, "train with the Image-LLM Alignment task")
    ila_fields: list[str] = option(
        factory=lambda: ["brand", "category", "title", "description"], help="ILA properties"
    )
    ila_values: Literal["full", "official"] = option(
        "full",
        "ILA answers: full: the whole description and category path; official: ONE random feature bullet "
        "(where the dataset has any) and the top-level category, as the official code",
    )
    prompt_format: PromptFormat = option(
        "chat",
        "chat: both prompts in the backbone's chat template (when it has one); official: the IRE prompt as raw "
        "text, ILA as a Vicuna-v1 conversation (question, answer and EOS tokenised in one call, never cut), each "
        "tokenised as tokenizer(text) with the tokenizer's own special tokens (its BOS, if it adds one), as the "
        "official code",
    )
    training: Literal["end2end", "two_stage"] = option(
        "end2end",
        "end2end (ILA + IRE, `epochs`), or two_stage: ILA alone (`stage1_epochs`), then the projectors "
        "alone on cached [REC] states with the adaptor and [REC] frozen (`epochs`)",
    )
    stage1_epochs: int = option(1, "two_stage: epochs of ILA-only training", ge=0)
    head_epochs: int = option(
        0, "end2end: then this many epochs of the projectors alone on cached [REC] states (as stage 2)", ge=0
    )
    head_windows: int = option(
        4, "projectors alone: random history windows per training user, drawn once", ge=1
    )
    head_batch_size: int = option(64, "projectors alone: examples per step", ge=1)
    head_lr: float = option(1e-3, "projectors alone: learning rate", gt=0)
    head_standardize: bool = option(
        True,
        "projectors alone: standardise each [REC] dimension by the mean and std of the cached training states "
        "(fixed statistics, saved with the model): SmolLM2's states share a large common component",
    )
    stage1_from: str | None = option(
        None,
        "skip the first stage: start from a saved I-LLMRec model of the same configuration (its model/ "
        "folder) and train the projectors alone",
    )
    trainable_dtype: Literal["float32", "backbone"] = option(
        "float32",
        "dtype of what trains (adaptors, projectors, [REC]): float32, or backbone: the LM's weights dtype "
        "(bf16 on a GPU; float32 on the CPU unless --dtype says otherwise), pure, as the official code trains them",
    )
    eval_dtype: Literal["train", "float16", "bfloat16", "float32"] = option(
        "train",
        "dtype of the LM and every module when a trained model is scored (evaluate, recommend, serve, the test "
        "metrics after training; validation during training runs as trained): train: as trained; official "
        "code: float16. A half dtype is not applied on the CPU (half-precision products are many times slower "
        "there): scoring stays as trained",
    )
    ire_reduction: Literal["mean", "sum"] = option(
        "mean",
        "IRE losses over the feature types: mean (the official code) or sum (the paper's Eq. 7, which weighs "
        "IRE against ILA by the number of feature types)",
    )
    ire_loss: Literal["bce", "softmax"] = option(
        "bce",
        "IRE loss per feature type: bce: the paper's, the target against ONE sampled negative; softmax: "
        "cross-entropy of the target over every trainable item (held-out items excluded), which learns from "
        "the whole catalog each step",
    )
    adaptor_hidden: int = option(512, "hidden size of the 2-layer MLP adaptor", ge=1)
    adaptor_ln_eps: float = option(1e-5, "epsilon of the adaptor's LayerNorm (official code: 1e-8)", gt=0)
    adaptor_activation: Literal["gelu", "relu"] = option(
        "gelu", "activation of the adaptor (official code: GELU; the paper's text: ReLU)"
    )
    rec_init: Literal["xavier_normal", "xavier_uniform"] = option(
        "xavier_normal", "initialisation of the [REC] vector (official code: xavier_uniform)"
    )
    d_shared: int = option(512, "size of the shared recommendation space of the projectors", ge=1)
    scaled_scores: bool = option(
        True, "divide affinities by sqrt(d_shared) (false = the paper's plain dot product; same ranking)"
    )
    window_short: int = option(4, "training history windows: 2..window_short items ...", ge=2)
    window_long: int = option(9, "... or 2..window_long items, each with probability 0.5", ge=2)
    negative_sampling: Literal["llmrec", "official"] = option(
        "llmrec",
        "IRE negatives: llmrec: one per example, shared by the feature types, never an item of the user's "
        "training sequence; official: one per example and feature type, drawn independently, anything but the "
        "target (as the official code)",
    )
    window_sampler: Literal["llmrec", "official"] = option(
        "llmrec",
        "llmrec: the target position uniform, up to L items before it (1-item histories happen); official: "
        "exactly L contiguous items from a uniform start, the next one the target (a sequence of L items or "
        "fewer gives all but its last), as the official code",
    )
    test_history: int = option(10, "items of history in evaluation prompts (the most recent)", ge=1)
    max_prompt_tokens: int | None = option(
        1024,
        "context budget: drop the oldest items until the prompt fits (never more than the LM's context; "
        "None: the LM's context alone)",
        ge=1,
    )
    max_history_tokens: int | None = option(
        None, "also cap the item list at this many tokens (official code: 3,850; None: no own cap)", ge=1
    )
    max_description_chars: int | None = option(
        1200, "cut descriptions longer than this in prompts and ILA answers (None: no cut)", ge=1
    )
    description_texts: str | None = option(None, "use generated texts (llmrec describe NAME) as descriptions")
    summary_texts: str = option(
        "summary", "generated summaries (llmrec describe --mode summary) for 'summary'"
    )
    missing_image_fraction: float = option(
        0.0, "drop this fraction of item images (seeded) to simulate Sec. 4.5", ge=0, le=1
    )
    missing_seed: int = option(0, "seed of the simulated missing images", ge=0)
    score_batch_size: int = option(16, "prompts per LLM forward when scoring", ge=1)
    shared_prefix: bool = option(
        True,
        "compute the constant prompt start (chat template + instruction) once and reuse its KV cache, "
        "wherever it carries no gradient: always with the LM frozen, in scoring only with LoRA training",
    )
    one_pass: bool = option(
        True,
        "training with ILA: the history the IRE and ILA prompts share runs once, the two prompt ends as "
        "branches of one packed row (tree attention mask); false: one LLM pass per prompt",
    )
    train_users: int | None = option(
        None, "training examples per epoch from this many random users (None = all)", ge=1
    )
    batch_size: int = option(8, "training examples per step", ge=1)
    epochs: int = option(5, "maximum training epochs", ge=1)
    patience: int = option(3, "validations without improvement before stopping", ge=1)
    eval_users: int | None = option(200, "validation users (a fixed random subset; None = all)", ge=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.representation not in REPRESENTATIONS:
            raise ConfigError(f"representation must be one of {REPRESENTATIONS}, got {self.representation!r}")
        bad = [f for f in self.features if f not in FEATURE_TYPES]
        if bad or not self.features:
            raise ConfigError(f"features must be a non-empty subset of {FEATURE_TYPES}, got {self.features}")
        bad = [f for f in self.ila_fields if f not in ILA_QUESTIONS]
        if bad or (self.ila and not self.ila_fields):
            raise ConfigError(
                f"ila_fields must be a non-empty subset of {sorted(ILA_QUESTIONS)}, got {self.ila_fields}"
            )
        if self.window_short > self.window_long:
            raise ConfigError(
                f"need window_short <= window_long, got {self.window_short} > {self.window_long}"
            )
        if self.training == "two_stage" and not self.ila:
            raise ConfigError("two_stage training needs ila on (stage 1 is ILA)")
        if self.stage1_from and self.training == "end2end" and not self.head_epochs:
            raise ConfigError("stage1_from skips the first stage: give head_epochs (or training=two_stage)")


#: the official I-LLMRec code's choices (github.com/rlqja1107/torch-I-LLMRec, linked from the paper): HF
#: Trainer defaults (AdamW, lr 5e-5, linear decay, clipping 1.0), 8 fixed epochs without validation, batch 8
#: per device, the input-embedding matrix trained
OFFICIAL: dict[str, Any] = {
    "backbone": {"train_embeddings": True},
    "prompt_format": "official",
    "ila_values": "official",
    "window_sampler": "official",
    "negative_sampling": "official",
    "adaptor_ln_eps": 1e-8,
    "rec_init": "xavier_uniform",
    "scaled_scores": False,
    "max_prompt_tokens": None,
    "max_history_tokens": 3850,
    "trainable_dtype": "backbone",
    "eval_dtype": "float16",
    "ire_reduction": "mean",
    "optimizer": "adamw",
    "adam_betas": [0.9, 0.999],
    "lr": 5e-5,
    "lr_schedule": "linear",
    "max_grad_norm": 1.0,
    "validate": False,
    "epochs": 8,
    "batch_size": 8,
}
#: ``recipe``: named defaults. paper = what the paper's text states (frozen LLM, lr 1e-3, batch 32, a ReLU
#: adaptor, plain dot products, the IRE losses summed over the feature types as Eq. 7 writes them) and the
#: official code wherever the text says nothing (its prompts and tokenisation, bf16 training, fp16 evaluation)
RECIPES: dict[str, dict[str, Any]] = {
    "llmrec": {},
    "official": OFFICIAL,
    "paper": merge(
        OFFICIAL,
        {
            "backbone": {"train_embeddings": False},
            "lr": 1e-3,
            "batch_size": 32,
            "adaptor_activation": "relu",
            "ire_reduction": "sum",
        },
    ),
}

"""The LLM backbone every LLM method shares: any HuggingFace causal LM, frozen unless LoRA is on.

Non-text inputs (an item's image, a CF embedding, the learnable [REC] vector, a compressed history...)
enter the LM as *placeholder tokens*: the prompt text contains e.g. ``[VISUAL]``; the tokenizer knows it as
one added special token; before the transformer runs, the word-embedding lookup sees a harmless id (0) at
those positions and :meth:`Backbone.embed` writes the caller's vectors there with ``masked_scatter`` after
checking that the counts match (transformers' LLaVA does the same). The LM's weights and embedding matrix
are never resized; the LM trains only through LoRA (peft) or, with ``train_embeddings`` (the official
I-LLMRec code's ``train_token_emb``), through its whole input-embedding matrix. Data text that happens to hold
a placeholder string is escaped before it reaches a prompt (:func:`llmrec.llm.prompts.escape_placeholders`).

Read top to bottom: loading (LoRA, the trained embedding matrix), prompt text (chat template, tokens),
injection, hidden states and the LM loss, answer tokens. :class:`Backbone` is the one object callers use;
it also computes shared prompt starts once (:mod:`llmrec.llm.kv_cache`) and counts tokens against the
LM's context (:mod:`llmrec.llm.budget`).
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmrec.assets import DEFAULT_LLM, load_causal_lm
from llmrec.config import check_ranges, option
from llmrec.errors import ConfigError
from llmrec.llm.budget import TokenBudget, context_length
from llmrec.llm.kv_cache import PrefixSharing, SharedPrefix, positions
from llmrec.llm.prompts import PLACEHOLDERS
from llmrec.placement import Placement

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class BackboneConfig:
    """Which causal LM, frozen or with LoRA (its device and weights dtype are the command's placement)."""

    llm: str = option(DEFAULT_LLM, "causal LM: offline alias, local folder, hub id or .gguf file")
    lora: bool = option(False, "train LoRA adapters (peft); otherwise the LM is frozen")
    lora_r: int = option(8, "LoRA rank", ge=1)
    lora_alpha: int = option(16, "LoRA alpha", ge=1)
    lora_dropout: float = option(0.05, "LoRA dropout", ge=0, lt=1)
    lora_targets: list[str] = option(factory=lambda: ["q_proj", "v_proj"], help="LoRA target modules")
    train_embeddings: bool = option(
        False,
        "train the LM's whole input-embedding matrix (official I-LLMRec code), saved with the model; a tied "
        "output head is untied first and stays frozen",
    )
    gradient_checkpointing: bool = option(False, "trade compute for memory in the LM")
    chat_template: bool = option(True, "wrap prompts in the tokenizer's chat template when it has one")

    def __post_init__(self) -> None:
        check_ranges(self)


class Backbone(PrefixSharing, TokenBudget, nn.Module):
    """A causal LM plus its tokenizer, with placeholder-token embedding injection, on the model's placement
    (its device, the weights in its dtype). Its shared-prefix
    methods (``constant_prefix``, ``hidden_many``, ...) are :class:`~llmrec.llm.kv_cache.PrefixSharing`'s,
    its token counting and context check :class:`~llmrec.llm.budget.TokenBudget`'s."""

    def __init__(self, cfg: BackboneConfig, placement: Placement | None = None, vision: bool = False) -> None:
        from llmrec.llm.vlm import text_config

        super().__init__()
        self.cfg = cfg
        placement = placement or Placement(dtype="float32")
        model = self._load(
            _DTYPES[placement.dtype or "float32"], vision
        )  # sets the tokenizer (and a VLM's processor and image token)
        self._prefixes: dict[str, SharedPrefix] = {}  # constant prompt starts, by text (kv_cache)
        self._told_fallback = False
        self._chat_heads: dict[str, str] = {}  # chat_prefix's answers
        self.token_ids = {p: self.tokenizer.convert_tokens_to_ids(p) for p in PLACEHOLDERS}
        if self.image_token is not None:
            self.token_ids[self.image_token] = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.context_length = context_length(text_config(model.config), self.tokenizer)
        hidden_size = int(text_config(model.config).hidden_size)
        self.model = self._make_trainable(model).to(placement.device)
        self.hidden_size = hidden_size
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        log.info(
            "backbone %s: %s parameters, %s trainable (LoRA %s)",
            cfg.llm,
            f"{total:,}",
            f"{trainable:,}",
            "on" if cfg.lora else "off",
        )

    def _load(self, dtype: torch.dtype, vision: bool) -> Any:
        """The LM in ``dtype`` and its tokenizer (``self.tokenizer``), which
        learns the placeholders as special tokens and pads on the right.

        vision: an image-text-to-text model (UniMP); its own image token is one more placeholder, filled
        with its vision tower's embeddings by the caller; its processor frames the chat."""
        from llmrec.llm.vlm import load_vlm

        self.processor: Any = None
        self.image_token: str | None = None
        if vision:
            model, self.processor = load_vlm(self.cfg.llm, dtype)
            tokenizer, self.image_token = self.processor.tokenizer, self.processor.image_token
        else:
            model, tokenizer = load_causal_lm(self.cfg.llm, dtype=dtype)
        tokenizer.add_special_tokens({"additional_special_tokens": list(PLACEHOLDERS)})
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = (
            "right"  # + explicit last-token indices: no NaN from left padding (CoLLM issue)
        )
        self.tokenizer = tokenizer
        return model

    def _make_trainable(self, model: Any) -> Any:
        """``model`` frozen, then what ``cfg`` trains: LoRA adapters (the peft-wrapped model is returned),
        the input-embedding matrix; with gradient checkpointing when asked."""
        cfg = self.cfg
        for p in model.parameters():
            p.requires_grad_(False)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        if cfg.lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(
                model,
                LoraConfig(
                    r=cfg.lora_r,
                    lora_alpha=cfg.lora_alpha,
                    lora_dropout=cfg.lora_dropout,
                    target_modules=list(cfg.lora_targets),
                    task_type="CAUSAL_LM",
                ),
            )
        if cfg.train_embeddings:
            self._train_input_embeddings(model)
        return model

    @staticmethod
    def _train_input_embeddings(model: Any) -> None:
        """Make the input-embedding matrix trainable and nothing else: an output head tied to it (SmolLM2,
        Gemma) gets its own frozen copy first, so the head stays the pretrained one, as in an untied LM."""
        embedding = model.get_input_embeddings()
        head = model.get_output_embeddings()
        if head is not None and head.weight is embedding.weight:
            head.weight = nn.Parameter(embedding.weight.detach().clone(), requires_grad=False)
            for config in {
                id(c): c for c in (model.config, getattr(model, "base_model", model).config)
            }.values():
                config.tie_word_embeddings = False  # a later tie_weights() must not re-tie them
        embedding.weight.requires_grad_(True)

    quantized: str | None = None  # "int8" once :meth:`quantize_int8` ran

    def quantize_int8(self) -> None:
        """For inference on the CPU: the decoder's linear layers in int8 (torch dynamic quantisation:
        int8 weights per output channel, each call's activations quantised on the fly), LoRA folded into
        the weights it adapts first. The embeddings and the LM head stay float32 (:meth:`token_logits`
        reads rows of the head). From then on the backbone refuses to train."""
        if self.quantized:
            return
        if self.device.type != "cpu" or self.dtype != torch.float32:
            raise ConfigError(
                f"int8 quantisation is for a float32 backbone on the CPU, not {self.dtype} on {self.device}"
            )
        if hasattr(self.model, "merge_and_unload"):  # peft: LoRA merged, then quantised with its layer
            self.model = self.model.merge_and_unload()
        decoder = self.model.get_decoder()
        linear = sum(isinstance(m, nn.Linear) for m in decoder.modules())
        with warnings.catch_warnings():  # torch.ao's deprecation notices: the API works and is pinned
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
            torch.ao.quantization.quantize_dynamic(
                decoder, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=True
            )
        self.quantized = "int8"
        self.model.eval()
        log.info("backbone %s: %d linear layers of the decoder quantised to int8", self.cfg.llm, linear)

    def train(self, mode: bool = True) -> Backbone:
        """nn.Module's train(); a quantised backbone refuses training mode (its int8 layers have no gradients)."""
        if mode and self.quantized:
            raise ConfigError(
                f"the backbone was quantised to {self.quantized} for inference and cannot train; train in "
                "float32 and quantise to evaluate, recommend or serve (--quantize int8)"
            )
        return super().train(mode)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def chat(self, text: str) -> str:
        """``text`` as the user turn of the chat template (with the assistant prompt), when there is one."""
        if self.cfg.chat_template and getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "text", "text": text}]}],
                tokenize=False,
                add_generation_prompt=True,
            )
        if self.cfg.chat_template and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return text

    def chat_prefix(self, head: str) -> str:
        """What every chat-wrapped prompt whose text starts with ``head`` starts with: the template's start
        and ``head`` (memoised: it is asked for on every batch)."""
        if head not in self._chat_heads:
            sentinel = "\x00CONTINUES\x00"
            text = self.chat(head + sentinel)
            self._chat_heads[head] = text[: text.index(sentinel)]
        return self._chat_heads[head]

    def tokenize(
        self, texts: list[str], max_length: int | None = None, special_tokens: bool = False
    ) -> dict[str, torch.Tensor]:
        """Right-padded ids and mask; placeholders are single tokens. No BOS/EOS is added beyond the template's,
        unless ``special_tokens``: then each row is what ``tokenizer(text)`` gives, with the tokenizer's own
        special tokens (LLaMA's BOS), as code that calls the tokenizer plainly builds its prompts."""
        return self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            add_special_tokens=special_tokens,
            truncation=max_length is not None,
            max_length=max_length,
        )

    def encode(self, text: str, special_tokens: bool = False) -> list[int]:
        """The ids of one text (with the tokenizer's own special tokens when ``special_tokens``)."""
        return list(self.tokenizer(text, add_special_tokens=special_tokens)["input_ids"])

    def embed(self, input_ids: torch.Tensor, inject: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, d) input embeddings with placeholder positions replaced.

        ``inject`` maps a placeholder (e.g. "[VISUAL]") to a (n, d) tensor: one row per occurrence of that
        placeholder in the batch, in row-major order. Every placeholder present must be filled exactly.
        """
        inject = inject or {}
        # Placeholder ids may lie past the embedding matrix (or inside its padding rows): never look them up.
        special = torch.isin(input_ids, torch.tensor(list(self.token_ids.values()), device=input_ids.device))
        embeds = self.model.get_input_embeddings()(input_ids.masked_fill(special, 0))  # (B, T, d)
        for name, values in inject.items():
            mask = input_ids == self.token_ids[name]  # (B, T)
            n = int(mask.sum())
            if n != values.shape[0]:
                raise ValueError(
                    f"{n} {name} placeholder(s) in the batch but {values.shape[0]} embedding(s) to insert"
                )
            if values.shape[-1] != embeds.shape[-1]:
                raise ValueError(
                    f"{name} embeddings have dim {values.shape[-1]}, the LM expects {embeds.shape[-1]}"
                )
            embeds = embeds.masked_scatter(mask.unsqueeze(-1), values.to(embeds.dtype))
        unfilled = [p for p, i in self.token_ids.items() if p not in inject and bool((input_ids == i).any())]
        if unfilled:
            raise ValueError(f"placeholder(s) {unfilled} in the prompt but no embeddings given for them")
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        inject: dict[str, torch.Tensor] | None = None,
        labels: torch.Tensor | None = None,
    ) -> Any:
        """Run the LM on ids with injected embeddings; returns the HF output (``.loss`` when labels are given,
        ``.hidden_states[-1]`` = the final hidden states (B, T, d))."""
        embeds = self.embed(input_ids, inject)
        return self.model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=positions(attention_mask),
            labels=labels,
            output_hidden_states=True,
            use_cache=False,
        )

    def hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        inject: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B, T, d) final hidden states (after the last norm) from the decoder alone: no vocabulary
        projection of every position, which costs ~20% of a small LM's forward."""
        return self._decode(self.embed(input_ids, inject), attention_mask, positions(attention_mask))

    def _decode(
        self, embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, past: Any = None
    ) -> torch.Tensor:
        """The decoder's final hidden states; ``past`` (a KV cache the call may append to) comes first."""
        extra = {} if past is None else self._cache_argument(past)
        out = self.model.get_decoder()(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=past is not None,
            **extra,
        )
        return out.last_hidden_state

    def lm_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of ``labels`` (-100 = not scored) from (B, T, d) final hidden states,
        as the LM's own loss, with the vocabulary head run only where a label is scored."""
        target = labels[:, 1:]  # (B, T - 1): position t predicts token t + 1
        scored = target != -100
        logits = self.model.get_output_embeddings()(hidden[:, :-1][scored]).float()  # (n, V)
        config = self.model.get_decoder().config
        if getattr(config, "logit_scale", None):  # Cohere
            logits = logits * config.logit_scale
        if getattr(config, "logits_scaling", None):  # Granite
            logits = logits / config.logits_scaling
        if getattr(config, "final_logit_softcapping", None):  # Gemma 2/3
            cap = config.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        return F.cross_entropy(logits, target[scored])

    def _cache_argument(self, cache: Any) -> dict[str, Any]:
        """The decoder's keyword for a KV cache: ``cache`` in recent transformers, ``past_key_values`` before."""
        import inspect

        params = inspect.signature(self.model.get_decoder().forward).parameters
        return {"cache" if "cache" in params else "past_key_values": cache}

    def token_logits(self, hidden: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
        """(B, k) LM-head logits of ``token_ids`` for (B, d) hidden states (just k rows of the head)."""
        head = self.model.get_output_embeddings()
        logits = hidden @ head.weight[token_ids].T  # (B, k)
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[token_ids]
        return logits

    def answer_token_id(self, word: str, prompt: str | None = None) -> int:
        """Id of the first token the LM emits when it answers ``word`` right after ``prompt`` (default: a
        chat-wrapped question).

        Resolved through the tokenizer, never hard-coded: the prompt is tokenised with and without the
        answer and the first new token is taken (" Yes" after a plain prompt such as "...#Answer:", "Yes"
        after a chat header, which ends in a line break).
        """
        if prompt is None:
            prompt = self.chat("Answer with Yes or No.")
        sep = "" if prompt[-1:].isspace() else " "
        base = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full = self.tokenizer(prompt + sep + word, add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) == len(base):
            raise ConfigError(f"cannot resolve the answer token of {word!r} with this tokenizer")
        return int(full[len(base)])

    @staticmethod
    def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
        """(B,) index of the last real token of each row, for left or right padding alike."""
        width = attention_mask.shape[1]
        return width - 1 - attention_mask.flip(1).float().argmax(1).long()

    def last_hidden_at(self, hidden: torch.Tensor, input_ids: torch.Tensor, placeholder: str) -> torch.Tensor:
        """(B, d) final hidden state at the (single) position of ``placeholder`` in each row."""
        mask = input_ids == self.token_ids[placeholder]  # (B, T)
        counts = mask.sum(1)
        if not bool((counts == 1).all()):
            raise ValueError(f"each prompt must hold exactly one {placeholder}; counts {counts.tolist()}")
        return hidden[mask]  # (B, d)

    def show(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        head: str = "",
        special_tokens: bool = False,
    ) -> dict[str, Any]:
        """One tokenised prompt row (T,) as a person should see it (``llmrec prompts``): the exact text of its
        ids (special tokens and placeholders kept), the scored answer apart (``labels`` != -100), token
        counts, and how many leading tokens the constant start ``head`` covers (computed once; tokenised
        with the tokenizer's own special tokens when ``special_tokens``, as the prompts were)."""
        ids = ids[mask.bool()]
        scored = labels[: len(ids)] != -100 if labels is not None else torch.zeros(len(ids), dtype=torch.bool)
        shared = self.common_prefix(
            self.encode(head, special_tokens) if head else [], ids[None], mask[None, : len(ids)]
        )
        decode = functools.partial(self.tokenizer.decode, skip_special_tokens=False)
        return {
            "text": decode(ids[~scored]),
            "answer": decode(ids[scored]),
            "tokens": int((~scored).sum()),
            "answer_tokens": int(scored.sum()),
            "constant_prefix_tokens": shared,
        }

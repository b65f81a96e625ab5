"""The LLM backbone every LLM method shares: any HuggingFace causal LM, frozen unless LoRA is on.

Non-text inputs (an item's image, a CF embedding, the learnable [REC] vector, a compressed history...)
enter the LM as *placeholder tokens*: the prompt text contains e.g. ``[VISUAL]``; the tokenizer knows it as
one added special token; before the transformer runs, the word-embedding lookup sees a harmless id (0) at
those positions and :meth:`Backbone.embed` writes the caller's vectors there with ``masked_scatter`` after
checking that the counts match (transformers' LLaVA does the same). The LM's weights and embedding matrix
are never resized or modified; LoRA (peft) is the only way to train the LM. Data text that happens to hold
a placeholder string is escaped before it reaches a prompt (:func:`llmrec.llm.prompts.escape_placeholders`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from llmrec.assets import DEFAULT_LLM, load_causal_lm
from llmrec.config import check_ranges, option
from llmrec.errors import ConfigError
from llmrec.llm.prompts import PLACEHOLDERS

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BackboneConfig:
    """Which causal LM, in which precision, frozen or with LoRA."""

    llm: str = option(DEFAULT_LLM, "causal LM: offline alias, local folder, hub id or .gguf file")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto", "LM weights dtype (also --dtype); auto: bfloat16 on CUDA, float32 elsewhere (fastest on CPU)"
    )
    lora: bool = option(False, "train LoRA adapters (peft); otherwise the LM is frozen")
    lora_r: int = option(8, "LoRA rank", ge=1)
    lora_alpha: int = option(16, "LoRA alpha", ge=1)
    lora_dropout: float = option(0.05, "LoRA dropout", ge=0, lt=1)
    lora_targets: list[str] = option(factory=lambda: ["q_proj", "v_proj"], help="LoRA target modules")
    gradient_checkpointing: bool = option(False, "trade compute for memory in the LM")
    chat_template: bool = option(True, "wrap prompts in the tokenizer's chat template when it has one")

    def __post_init__(self) -> None:
        check_ranges(self)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) position ids that count real tokens only, so left and right padding give the same outputs."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def context_length(config: Any, tokenizer: Any) -> int | None:
    """The longest prompt the LM takes: the smaller of its position table (``max_position_embeddings``)
    and the tokenizer's ``model_max_length``, each where it is set (a tokenizer without a limit reports a
    huge sentinel); None when neither says."""
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**9]
    return min(limits) if limits else None


class Backbone(nn.Module):
    """A causal LM plus its tokenizer, with placeholder-token embedding injection, on ``device`` (the
    model's one device option) in ``cfg.dtype`` (``auto`` resolved for that device)."""

    def __init__(self, cfg: BackboneConfig, device: str = "cpu") -> None:
        from llmrec.devices import resolve_dtype

        super().__init__()
        self.cfg = cfg
        model, tokenizer = load_causal_lm(cfg.llm, dtype=_DTYPES[resolve_dtype(cfg.dtype, device)])
        tokenizer.add_special_tokens({"additional_special_tokens": list(PLACEHOLDERS)})
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = (
            "right"  # + explicit last-token indices: no NaN from left padding (CoLLM issue)
        )
        self.tokenizer = tokenizer
        self.token_ids = {p: tokenizer.convert_tokens_to_ids(p) for p in PLACEHOLDERS}
        self.context_length = context_length(model.config, tokenizer)
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
        self.model = model.to(device)
        self.hidden_size = int(
            model.config.hidden_size if not cfg.lora else model.base_model.model.config.hidden_size
        )
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        log.info(
            "backbone %s: %s parameters, %s trainable (LoRA %s)",
            cfg.llm,
            f"{total:,}",
            f"{trainable:,}",
            "on" if cfg.lora else "off",
        )

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def chat(self, text: str) -> str:
        """``text`` as the user turn of the chat template (with the assistant prompt), when there is one."""
        if self.cfg.chat_template and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return text

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Right-padded ids and mask; placeholders are single tokens. No BOS/EOS is added beyond the template's."""
        return self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
            truncation=max_length is not None,
            max_length=max_length,
        )

    def check_context(self, attention_mask: torch.Tensor, hint: str) -> None:
        """Raise a one-line ConfigError when a prompt of the batch is longer than the LM's context;
        ``hint`` says which options shorten the prompts."""
        longest = int(attention_mask.sum(1).max()) if attention_mask.numel() else 0
        if self.context_length is not None and longest > self.context_length:
            raise ConfigError(
                f"a prompt of {longest} tokens exceeds the context of {self.cfg.llm} "
                f"({self.context_length} tokens)",
                hint=hint,
            )

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
        out = self.model.get_decoder()(
            inputs_embeds=self.embed(input_ids, inject),
            attention_mask=attention_mask,
            position_ids=positions(attention_mask),
            use_cache=False,
        )
        return out.last_hidden_state

    # ------------------------------------------------------------------ shared prefixes (KV cache reuse)
    def prefix_cache(self, input_ids: torch.Tensor, inject: dict[str, torch.Tensor] | None = None) -> Any:
        """The KV cache of ONE prompt prefix (1, P) ids, for :meth:`hidden_after` to reuse across many
        continuations. The prefix has no padding; its placeholders are filled from ``inject``."""
        if input_ids.shape[0] != 1:
            raise ValueError(f"a shared prefix is one row, got {input_ids.shape[0]}")
        from transformers import DynamicCache

        mask = torch.ones_like(input_ids)  # (1, P)
        cache = DynamicCache()  # filled in place by the forward
        self.model.get_decoder()(
            inputs_embeds=self.embed(input_ids, inject),
            attention_mask=mask,
            position_ids=positions(mask),
            use_cache=True,
            **self._cache_argument(cache),
        )
        return cache

    def hidden_after(
        self,
        cache: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        inject: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B, S, d) final hidden states of B right-padded continuations (B, S) of the cached prefix, as if
        each row were the prefix followed by that row in one prompt (positions continue after the prefix).

        The cache is left untouched: every call expands it into a fresh one of batch B (the forward appends
        the continuation's keys and values to the cache it is given)."""
        from transformers import DynamicCache

        b, p = input_ids.shape[0], cache.get_seq_length()
        past = DynamicCache()  # filled layer by layer: the one way every transformers version takes
        for i, kv in enumerate(cache):  # (1, heads, P, d_head) per layer -> (B, heads, P, d_head)
            past.update(kv[0].expand(b, -1, -1, -1), kv[1].expand(b, -1, -1, -1), i)
        full = torch.cat([attention_mask.new_ones(b, p), attention_mask], 1)  # (B, P + S)
        out = self.model.get_decoder()(
            inputs_embeds=self.embed(input_ids, inject),
            attention_mask=full,
            position_ids=positions(full)[:, p:],  # (B, S): P, P + 1, ...
            use_cache=True,
            **self._cache_argument(past),
        )
        return out.last_hidden_state

    def _cache_argument(self, cache: Any) -> dict[str, Any]:
        """The decoder's keyword for a KV cache: ``cache`` in recent transformers, ``past_key_values`` before."""
        import inspect

        params = inspect.signature(self.model.get_decoder().forward).parameters
        return {"cache" if "cache" in params else "past_key_values": cache}

    @staticmethod
    def common_prefix(prefix_ids: list[int], input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
        """How many leading tokens of ``prefix_ids`` every row of (B, T) ``input_ids`` starts with, leaving at
        least one real token after them in every row (a token boundary can differ where the prefix text
        meets the rest, e.g. a merged "[{": those tokens then belong to each row's own part)."""
        n = min(len(prefix_ids), input_ids.shape[1])
        if n == 0 or input_ids.shape[0] == 0:
            return 0
        want = torch.tensor(prefix_ids[:n], device=input_ids.device)
        same = (input_ids[:, :n] == want) & attention_mask[:, :n].bool()  # (B, n)
        shared = int(same.long().cumprod(1).sum(1).min())
        return max(0, min(shared, int(attention_mask.sum(1).min()) - 1))

    def token_logits(self, hidden: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
        """(B, k) LM-head logits of ``token_ids`` for (B, d) hidden states (just k rows of the head)."""
        head = self.model.get_output_embeddings()
        logits = hidden @ head.weight[token_ids].T  # (B, k)
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[token_ids]
        return logits

    def answer_token_id(self, word: str) -> int:
        """Id of the first token the LM emits when it answers ``word`` right after a (chat-wrapped) prompt.

        Resolved through the tokenizer, never hard-coded: the prompt is tokenised with and without the
        answer and the first new token is taken (" Yes" after a plain prompt, "Yes" after a chat header).
        """
        prompt = self.chat("Answer with Yes or No.")
        sep = "" if prompt != "Answer with Yes or No." else " "
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

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

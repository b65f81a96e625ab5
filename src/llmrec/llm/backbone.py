"""The LLM backbone every LLM method shares: any HuggingFace causal LM, frozen unless LoRA is on.

Non-text inputs (an item's image, a CF embedding, the learnable [REC] vector, a compressed history...)
enter the LM as *placeholder tokens*: the prompt text contains e.g. ``[VISUAL]``; the tokenizer knows it as
one added special token; before the transformer runs, the word-embedding lookup sees a harmless id (0) at
those positions and :meth:`Backbone.embed` writes the caller's vectors there with ``masked_scatter`` after
checking that the counts match (transformers' LLaVA does the same). The LM's weights and embedding matrix
are never resized; the LM trains only through LoRA (peft) or, with ``train_embeddings`` (the official
I-LLMRec code's ``train_token_emb``), through its whole input-embedding matrix. Data text that happens to hold
a placeholder string is escaped before it reaches a prompt (:func:`llmrec.llm.prompts.escape_placeholders`).
"""

from __future__ import annotations

import functools
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
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
    train_embeddings: bool = option(
        False,
        "train the LM's whole input-embedding matrix (official I-LLMRec code), saved with the model; a tied "
        "output head is untied first and stays frozen",
    )
    gradient_checkpointing: bool = option(False, "trade compute for memory in the LM")
    chat_template: bool = option(True, "wrap prompts in the tokenizer's chat template when it has one")

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class SharedPrefix:
    """The KV cache of a prompt start many prompts share: its token ids and the key it was computed under."""

    key: tuple[Any, ...]  # (text, device, dtype, LoRA weight versions)
    ids: list[int]
    cache: Any = field(repr=False)  # a transformers DynamicCache of one row

    def __len__(self) -> int:
        return len(self.ids)


def _rows(rows: list[list[int]], width: int, fill: int, device: Any) -> torch.Tensor:
    """(len(rows), width) long tensor of ragged integer rows, right-filled with ``fill``."""
    return torch.tensor([x + [fill] * (width - len(x)) for x in rows], device=device)


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

    def __init__(self, cfg: BackboneConfig, device: str = "cpu", vision: bool = False) -> None:
        from llmrec.devices import resolve_dtype
        from llmrec.llm.vlm import load_vlm, text_config

        super().__init__()
        self.cfg = cfg
        dtype = _DTYPES[resolve_dtype(cfg.dtype, device)]
        # vision: an image-text-to-text model (UniMP); its own image token is one more placeholder, filled
        # with its vision tower's embeddings by the caller; its processor frames the chat
        self.processor: Any = None
        self.image_token: str | None = None
        if vision:
            model, self.processor = load_vlm(cfg.llm, dtype)
            tokenizer, self.image_token = self.processor.tokenizer, self.processor.image_token
        else:
            model, tokenizer = load_causal_lm(cfg.llm, dtype=dtype)
        tokenizer.add_special_tokens({"additional_special_tokens": list(PLACEHOLDERS)})
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = (
            "right"  # + explicit last-token indices: no NaN from left padding (CoLLM issue)
        )
        self.tokenizer = tokenizer
        self._prefixes: dict[str, SharedPrefix] = {}  # constant prompt starts, by text
        self._told_fallback = False
        self._chat_heads: dict[str, str] = {}  # chat_prefix's answers
        self._lead: str | None = None  # raw's answer: the special tokens the tokenizer puts before a text
        self.token_ids = {p: tokenizer.convert_tokens_to_ids(p) for p in PLACEHOLDERS}
        if self.image_token is not None:
            self.token_ids[self.image_token] = tokenizer.convert_tokens_to_ids(self.image_token)
        self.context_length = context_length(text_config(model.config), tokenizer)
        hidden_size = int(text_config(model.config).hidden_size)
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
        self.model = model.to(device)
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

    def raw(self, text: str) -> str:
        """``text`` with no chat template, after whatever special tokens the tokenizer itself puts before a
        text (LLaMA's BOS ``<s>``; nothing for SmolLM2 or GPT-2, whose tokenizers add none): the string
        that, tokenised without special tokens as :meth:`tokenize` does, gives the ids the tokenizer would."""
        if self._lead is None:
            tok = self.tokenizer
            probe = "#Question"
            full = tok(probe, add_special_tokens=True)["input_ids"]
            bare = tok(probe, add_special_tokens=False)["input_ids"]
            k = next((i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare), 0)
            self._lead = tok.decode(full[:k], skip_special_tokens=False) if k else ""
        return self._lead + text

    def chat_prefix(self, head: str) -> str:
        """What every chat-wrapped prompt whose text starts with ``head`` starts with: the template's start
        and ``head`` (memoised: it is asked for on every batch)."""
        if head not in self._chat_heads:
            sentinel = "\x00CONTINUES\x00"
            text = self.chat(head + sentinel)
            self._chat_heads[head] = text[: text.index(sentinel)]
        return self._chat_heads[head]

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

    # ------------------------------------------------------------------ shared prefixes (KV cache reuse)
    @torch.no_grad()
    def prefix_cache(self, input_ids: torch.Tensor, inject: dict[str, torch.Tensor] | None = None) -> Any:
        """The KV cache of ONE prompt prefix (1, P) ids, for :meth:`hidden_after` to reuse across many
        continuations. The prefix has no padding; its placeholders are filled from ``inject``. It is computed
        without gradient and in eval mode (no LoRA dropout): a constant, whatever mode the model is in."""
        if input_ids.shape[0] != 1:
            raise ValueError(f"a shared prefix is one row, got {input_ids.shape[0]}")
        from transformers import DynamicCache

        mask = torch.ones_like(input_ids)  # (1, P)
        cache = DynamicCache()  # filled in place by the forward
        was_training = self.model.training
        self.model.eval()
        try:
            self._decode(self.embed(input_ids, inject), mask, positions(mask), cache)
        finally:
            self.model.train(was_training)
        return cache

    @staticmethod
    def _expand(cache: Any, b: int) -> Any:
        """A fresh cache of batch ``b`` over a one-row one (the forward appends to the cache it is given)."""
        from transformers import DynamicCache

        past = DynamicCache()  # filled layer by layer: the one way every transformers version takes
        for i, kv in enumerate(cache):  # (1, heads, P, d_head) per layer -> (B, heads, P, d_head)
            past.update(kv[0].expand(b, -1, -1, -1), kv[1].expand(b, -1, -1, -1), i)
        return past

    def hidden_after(
        self,
        cache: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        inject: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B, S, d) final hidden states of B right-padded continuations (B, S) of the cached prefix, as if
        each row were the prefix followed by that row in one prompt (positions continue after the prefix).
        Gradients reach the continuation's embeddings; the cache itself is left untouched."""
        return self._continue(self.embed(input_ids, inject), attention_mask, cache)

    def _continue(self, embeds: torch.Tensor, attention_mask: torch.Tensor, cache: Any) -> torch.Tensor:
        """:meth:`hidden_after` from (B, S, d) input embeddings."""
        b, p = embeds.shape[0], cache.get_seq_length()
        full = torch.cat([attention_mask.new_ones(b, p), attention_mask], 1)  # (B, P + S)
        return self._decode(
            embeds, full, positions(full)[:, p:], self._expand(cache, b)
        )  # positions P, P + 1..

    @property
    def prefixes(self) -> list[SharedPrefix]:
        """The constant prompt starts cached so far (one per text)."""
        return list(self._prefixes.values())

    def constant_prefix(
        self, text: str, batches: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> SharedPrefix | None:
        """The cached KV of the prompt start ``text`` (placeholder-free: a system prompt, an instruction) when
        every row of every (ids, mask) in ``batches`` starts with its tokens, else None (run whole prompts).

        Computed once per text, device, dtype and trained LM weights (LoRA, a trained embedding matrix: any
        optimiser step changes them) and only where it cannot carry gradient: None while gradients are on
        and the LM has trainable weights (LoRA or embedding training), and while training with gradient
        checkpointing (which drops every KV cache). The last token of ``text`` may merge with what follows
        it (e.g. "[{"): the shared part is then shorter."""
        if torch.is_grad_enabled() and (
            any(p.requires_grad for p in self.model.parameters())
            or (self.cfg.gradient_checkpointing and self.model.training)
        ):
            return None
        if any(p in text for p in PLACEHOLDERS):
            raise ValueError(f"a constant prefix holds no placeholder: {text!r}")
        trained = self.model.get_input_embeddings().weight if self.cfg.train_embeddings else None
        versions = tuple(  # bumped by every optimiser step
            p._version for n, p in self.model.named_parameters() if "lora_" in n or p is trained
        )
        key = (text, self.device, self.dtype, versions)
        prefix = self._prefixes.get(text)
        if prefix is None or prefix.key != key:
            text_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids, mask = batches[0]
            n = Backbone.common_prefix(text_ids, ids, mask)
            if n == 0:
                return None
            prefix = SharedPrefix(key, text_ids[:n], self.prefix_cache(ids[:1, :n]))
            self._prefixes[text] = prefix
        if any(Backbone.common_prefix(prefix.ids, ids, mask) < len(prefix) for ids, mask in batches):
            return None  # a token boundary differs in this batch: the unshared path is exact
        return prefix

    def hidden_many(
        self,
        prompts: list[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]],
        prefix: SharedPrefix | None = None,
        one_pass: bool = True,
    ) -> list[torch.Tensor]:
        """Final hidden states of K prompt batches over the same B rows, (B, T_k - P, d) each: the positions
        after the constant ``prefix`` (P tokens, 0 without one), equal to :meth:`hidden` of each alone.

        With ``one_pass`` (and K > 1), the tokens a row's K prompts share from its start (equal input
        embeddings: the same text and the same injected vectors) run once: the shared trunk, then each
        prompt's rest as a branch that sees the trunk and itself only (a 4D "tree" attention mask over one
        packed row; positions continue from the trunk in every branch). The hidden state of a token depends
        only on the tokens before it, so this is exact, and gradients reach the trunk's embeddings from every
        branch. An LM that takes no custom 4D mask gets one pass per batch (logged once)."""
        p = len(prefix) if prefix is not None else 0
        embeds = [self.embed(ids, inject)[:, p:] for ids, _, inject in prompts]  # (B, T_k - P, d)
        masks = [mask[:, p:] for _, mask, _ in prompts]
        why = (
            self.tree_unsupported(p + max(e.shape[1] for e in embeds)) if one_pass and len(embeds) > 1 else ""
        )
        if len(prompts) == 1 or not one_pass or why:
            if why and not self._told_fallback:
                log.info("one pass per prompt batch: %s", why)
                self._told_fallback = True
            if prefix is None:
                return [self._decode(e, m, positions(m)) for e, m in zip(embeds, masks)]
            return [self._continue(e, m, prefix.cache) for e, m in zip(embeds, masks)]
        return self._tree_pass(embeds, masks, prefix)

    def tree_unsupported(self, span: int) -> str:
        """Why this LM cannot run a packed row with a custom 4D mask over prompts of ``span`` tokens ('' if it
        can): attention kernels without arbitrary masks (flash attention), or a sliding window shorter than
        the prompts (the one custom mask replaces the window, which is exact only while nothing lies
        outside it)."""
        config = self.model.get_decoder().config
        impl = getattr(config, "_attn_implementation", None)
        if impl not in ("sdpa", "eager"):
            return f"the {impl} attention implementation takes no custom 4D mask"
        window = getattr(config, "sliding_window", None)
        if window and getattr(config, "use_sliding_window", True) and span > window:
            return f"sliding-window attention ({window} tokens) over prompts of up to {span} tokens"
        return ""

    def _tree_pass(
        self, embeds: list[torch.Tensor], masks: list[torch.Tensor], prefix: SharedPrefix | None
    ) -> list[torch.Tensor]:
        """:meth:`hidden_many` in one forward: per row, [trunk | rest of prompt 1 | rest of prompt 2 | ...]."""
        b, d, k = embeds[0].shape[0], embeds[0].shape[2], len(embeds)
        lengths = torch.stack([m.sum(1) for m in masks]).tolist()  # K lists of B real lengths
        n = min(e.shape[1] for e in embeds)
        same = masks[0][:, :n].bool()  # (B, n): where every prompt has the first one's token and vector
        for e, m in zip(embeds[1:], masks[1:]):
            same &= (e[:, :n] == embeds[0][:, :n]).all(-1) & m[:, :n].bool()
        trunk = same.long().cumprod(1).sum(1).tolist()
        starts = [0] + list(itertools.accumulate(e.shape[1] for e in embeds))  # of each prompt in `flat`
        # per row and packed position: the column of `flat` it takes, its branch (0 = trunk), its position id
        gather: list[list[int]] = []
        segment: list[list[int]] = []
        pos: list[list[int]] = []
        back: list[list[list[int]]] = [[] for _ in embeds]  # per prompt and row: token -> packed position
        for r in range(b):
            s = max(0, min([trunk[r]] + [lengths[j][r] - 1 for j in range(k)]))  # >= 1 own token per branch
            g, seg, ps = list(range(s)), [0] * s, list(range(s))
            for j in range(k):
                own = lengths[j][r] - s
                back[j].append(list(range(s)) + list(range(len(g), len(g) + own)))
                g += range(starts[j] + s, starts[j] + lengths[j][r])
                seg += [j + 1] * own
                ps += range(s, lengths[j][r])
            gather.append(g)
            segment.append(seg)
            pos.append(ps)
        width = max(map(len, gather))
        dev = embeds[0].device
        gather_t, segment_t, pos_t = (
            _rows(x, width, fill, dev) for x, fill in ((gather, 0), (segment, -1), (pos, 0))
        )
        flat = torch.cat(embeds, 1)  # (B, sum T_k, d)
        packed = flat.gather(1, gather_t.unsqueeze(-1).expand(-1, -1, d))  # (B, L, d)
        order = torch.arange(width, device=dev)
        query, key = segment_t[:, :, None], segment_t[:, None, :]  # (B, L, 1), (B, 1, L)
        allowed = (order[None, None, :] <= order[None, :, None]) & ((key == 0) | (key == query)) & (key >= 0)
        allowed |= torch.eye(width, dtype=torch.bool, device=dev)  # padding sees itself: no empty softmax row
        p, past = 0, None
        if prefix is not None:
            p, past = len(prefix), self._expand(prefix.cache, b)
            allowed = torch.cat([allowed.new_ones(b, width, p), allowed], 2)  # every token sees the prefix
        mask4d = torch.zeros(allowed.shape, dtype=packed.dtype, device=dev)
        mask4d = mask4d.masked_fill(~allowed, torch.finfo(packed.dtype).min)[:, None]  # (B, 1, L, P + L)
        hidden = self._decode(packed, mask4d, pos_t + p, past)  # (B, L, d)
        out = []
        for j, m in enumerate(masks):
            idx = _rows(back[j], m.shape[1], 0, dev)  # (B, T_j): packed position of each token
            h = hidden.gather(1, idx.unsqueeze(-1).expand(-1, -1, d))  # (B, T_j, d)
            out.append(h * m.unsqueeze(-1).to(h.dtype))
        return out

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
        self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None = None, head: str = ""
    ) -> dict[str, Any]:
        """One tokenised prompt row (T,) as a person should see it (``llmrec prompts``): the exact text of its
        ids (special tokens and placeholders kept), the scored answer apart (``labels`` != -100), token
        counts, and how many leading tokens the constant start ``head`` covers (computed once)."""
        ids = ids[mask.bool()]
        scored = labels[: len(ids)] != -100 if labels is not None else torch.zeros(len(ids), dtype=torch.bool)
        shared = Backbone.common_prefix(
            self.tokenizer(head, add_special_tokens=False)["input_ids"] if head else [],
            ids[None],
            mask[None, : len(ids)],
        )
        decode = functools.partial(self.tokenizer.decode, skip_special_tokens=False)
        return {
            "text": decode(ids[~scored]),
            "answer": decode(ids[scored]),
            "tokens": int((~scored).sum()),
            "answer_tokens": int(scored.sum()),
            "constant_prefix_tokens": shared,
        }

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

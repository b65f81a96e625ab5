"""Computing once what many prompts share: a constant prompt start's KV cache, and one pass over prompts
that share their beginning.

Two kinds of sharing, both exact (the hidden state of a token depends only on the tokens before it):

- a *constant prefix*: the start every prompt of a batch has (chat template, system line, instruction), run
  once and kept as a KV cache (:class:`SharedPrefix`) that every later batch continues from
  (:meth:`PrefixSharing.constant_prefix`, :meth:`PrefixSharing.hidden_after`);
- a *tree pass*: K prompts over the same rows (I-LLMRec's IRE and ILA prompts of one history) whose
  tokens agree from the start run that trunk once, each prompt's rest as a branch of one packed row under
  a 4D attention mask (:meth:`PrefixSharing.hidden_many`).

Position ids count real tokens only (:func:`positions`), so a continuation's positions follow its prefix's
whatever the padding. :class:`PrefixSharing` is part of :class:`llmrec.llm.backbone.Backbone` (whose LM,
tokenizer, ``embed`` and ``_decode`` it uses); callers use the backbone's methods.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from llmrec.llm.prompts import PLACEHOLDERS

# logged as the backbone's: these are the Backbone object's methods, wherever their code lives
log = logging.getLogger("llmrec.llm.backbone")


@dataclass
class SharedPrefix:
    """The KV cache of a prompt start many prompts share: its token ids and the key it was computed under."""

    key: tuple[Any, ...]  # (text, special tokens, device, dtype, LoRA weight versions)
    ids: list[int]
    cache: Any = field(repr=False)  # a transformers DynamicCache of one row

    def __len__(self) -> int:
        return len(self.ids)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) position ids that count real tokens only, so left and right padding give the same outputs."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _rows(rows: list[list[int]], width: int, fill: int, device: Any) -> torch.Tensor:
    """(len(rows), width) long tensor of ragged integer rows, right-filled with ``fill``."""
    return torch.tensor([x + [fill] * (width - len(x)) for x in rows], device=device)


class PrefixSharing:
    """The backbone's methods that reuse shared computation (mixed into ``Backbone``)."""

    model: Any  # the (peft-wrapped) causal LM
    tokenizer: Any
    cfg: Any  # the BackboneConfig
    _prefixes: dict[str, SharedPrefix]  # constant prompt starts, by text (and special tokens)
    _told_fallback: bool  # whether the one-pass fallback was logged

    if TYPE_CHECKING:  # what Backbone provides

        @property
        def device(self) -> torch.device: ...

        @property
        def dtype(self) -> torch.dtype: ...

        def embed(
            self, input_ids: torch.Tensor, inject: dict[str, torch.Tensor] | None = None
        ) -> torch.Tensor: ...

        def _decode(
            self,
            embeds: torch.Tensor,
            attention_mask: torch.Tensor,
            position_ids: torch.Tensor,
            past: Any = None,
        ) -> torch.Tensor: ...

    # ------------------------------------------------------------------ the constant prompt start
    @property
    def prefixes(self) -> list[SharedPrefix]:
        """The constant prompt starts cached so far (one per text)."""
        return list(self._prefixes.values())

    def constant_prefix(
        self, text: str, batches: list[tuple[torch.Tensor, torch.Tensor]], special_tokens: bool = False
    ) -> SharedPrefix | None:
        """The cached KV of the prompt start ``text`` (placeholder-free: a system prompt, an instruction) when
        every row of every (ids, mask) in ``batches`` starts with its tokens, else None (run whole prompts).
        ``special_tokens``: the prompts were tokenised with the tokenizer's own special tokens, so ``text``
        is too (its BOS, if the tokenizer adds one, is then part of the prefix, once).

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
        key = (text, special_tokens, self.device, self.dtype, versions)
        name = ("\x00special\x00" if special_tokens else "") + text
        prefix = self._prefixes.get(name)
        if prefix is None or prefix.key != key:
            text_ids = list(self.tokenizer(text, add_special_tokens=special_tokens)["input_ids"])
            ids, mask = batches[0]
            n = self.common_prefix(text_ids, ids, mask)
            if n == 0:
                return None
            prefix = SharedPrefix(key, text_ids[:n], self.prefix_cache(ids[:1, :n]))
            self._prefixes[name] = prefix
        if any(self.common_prefix(prefix.ids, ids, mask) < len(prefix) for ids, mask in batches):
            return None  # a token boundary differs in this batch: the unshared path is exact
        return prefix

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

    @staticmethod
    def _expand(cache: Any, b: int) -> Any:
        """A fresh cache of batch ``b`` over a one-row one (the forward appends to the cache it is given)."""
        from transformers import DynamicCache

        past = DynamicCache()  # filled layer by layer: the one way every transformers version takes
        for i, kv in enumerate(cache):  # (1, heads, P, d_head) per layer -> (B, heads, P, d_head)
            past.update(kv[0].expand(b, -1, -1, -1), kv[1].expand(b, -1, -1, -1), i)
        return past

    # ------------------------------------------------------------------ K prompts in one pass
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
        b, d = embeds[0].shape[0], embeds[0].shape[2]
        lengths = torch.stack([m.sum(1) for m in masks]).tolist()  # K lists of B real lengths
        n = min(e.shape[1] for e in embeds)
        same = masks[0][:, :n].bool()  # (B, n): where every prompt has the first one's token and vector
        for e, m in zip(embeds[1:], masks[1:]):
            same &= (e[:, :n] == embeds[0][:, :n]).all(-1) & m[:, :n].bool()
        trunk = same.long().cumprod(1).sum(1).tolist()
        gather, segment, pos, back = _tree_layout(trunk, lengths, [e.shape[1] for e in embeds])
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


def _tree_layout(
    trunk: list[int], lengths: list[list[int]], widths: list[int]
) -> tuple[list[list[int]], list[list[int]], list[list[int]], list[list[list[int]]]]:
    """The packed rows of a tree pass over K prompts (``widths`` wide, ``lengths[k][r]`` real tokens) whose
    rows share their first ``trunk[r]`` tokens: per row and packed position, the column of the prompts laid
    side by side that it takes, its branch (0 = the trunk, k + 1 = prompt k's rest) and its position id;
    and per prompt and row, the packed position of each of its tokens."""
    k = len(widths)
    starts = [0] + list(itertools.accumulate(widths))  # of each prompt in the prompts laid side by side
    gather: list[list[int]] = []
    segment: list[list[int]] = []
    pos: list[list[int]] = []
    back: list[list[list[int]]] = [[] for _ in widths]  # per prompt and row: token -> packed position
    for r in range(len(trunk)):
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
    return gather, segment, pos, back

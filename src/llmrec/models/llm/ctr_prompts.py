"""How a CTR example becomes HistLLM's Yes/No prompt: its text and its tokens (the words are the appendix's,
:mod:`llmrec.llm.prompts`).

This is HistLLM's processor, as a model's prompt formatting sits beside its modelling code in transformers:
:class:`CtrPrompts` (a base class of :class:`~llmrec.models.llm.histllm.HistLLM`) turns (user, history,
target) into the framed question and the token ids the LM reads, with the users and items behind each
placeholder; the model turns those into embeddings and a Yes/No logit. What a prompt shows is declared in
:class:`PromptParts`: step 1 (LoRA) trains on the text-only parts of a model's prompt, step 2 and scoring
read all of them.

Every item is written as it is once per dataset (:func:`cut_texts`): placeholder strings escaped, cut to
``max_text_tokens`` tokens, so inline histories and targets show exactly what UHEM encodes. KE descriptions
come from ``llmrec describe`` (:func:`item_descriptions`); BinLLM's codes from the MF vectors
(:func:`binary_codes`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from llmrec.data.dataset import Dataset
from llmrec.errors import LlmrecError
from llmrec.llm.prompts import CTR_HISTORY, ctr_item, ctr_prompt, ctr_target, escape_placeholders

if TYPE_CHECKING:
    from llmrec.llm.backbone import Backbone
    from llmrec.models.llm.histllm_config import HistLLMConfig


@dataclasses.dataclass(frozen=True)
class PromptParts:
    """What a Yes/No prompt shows besides the items' titles. Step 1 (LoRA) trains on the text-only parts of
    a model's prompt, step 2 and scoring read all of them (:meth:`CtrPrompts.prompt_parts`)."""

    descriptions: bool  # items as their KE descriptions instead of their titles
    image: bool  # a [VISUAL] token after every item and the target (VMA)
    uhem: bool  # the history as ONE [HIST] token instead of every item written inline
    cf_tokens: bool  # [USERID] / [ITEMID] MF tokens (CIA)
    codes: bool  # BinLLM's 0/1 text codes of the user and the target (text: in both steps)


def cut_texts(tok: Any, texts: list[str], n: int | None) -> tuple[list[str], list[list[int]]]:
    """Each item's text as every prompt shows it, computed once per item: placeholder strings escaped,
    cut to its first ``n`` tokens of the tokenizer ``tok`` (decoded back; None: whole); and those tokens,
    UHEM's input. The inline history and target (w/o UHEM, the TALLRec-style presets) thus hold what UHEM
    encodes."""
    texts = [escape_placeholders(t) for t in texts]
    cutting = {} if n is None else {"truncation": True, "max_length": n + 1}
    ids = tok(texts, add_special_tokens=False, **cutting)["input_ids"]
    cut = [
        t
        if n is None or len(i) <= n
        else tok.decode(i[:n], clean_up_tokenization_spaces=False).rstrip("\ufffd")
        for t, i in zip(texts, ids)
    ]  # a cut inside a multi-byte character decodes to U+FFFD: dropped
    return cut, [i[:n] for i in ids]


def item_descriptions(ds: Dataset, name: str | None, titles: list[str]) -> list[str]:
    """KE: each item's description, from the texts file ``name`` (``llmrec describe``) or, None, the items'
    own; an item without one shows its title (a dataset with none at all is an error)."""
    if name:
        from llmrec.llm.describe import load_texts

        texts = load_texts(ds.root, name)
    else:
        texts = [str(t) for t in ds.items["description"]]
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if len(empty) == len(texts):
        raise LlmrecError(
            "knowledge enhancement needs item descriptions and none has one",
            file=Path(ds.root) / "items.parquet",
            hint="generate them: llmrec describe --mode from_title (then -o description_texts=from_title), "
            "or use -o ke=false",
        )
    return [t if t.strip() else titles[i] for i, t in enumerate(texts)]  # a title beats nothing


def binary_codes(users: np.ndarray, items: np.ndarray, bits: int) -> tuple[list[str], list[str]]:
    """BinLLM-style 0/1 text codes: signs of the first ``bits`` principal components of the MF vectors
    (one PCA over users and items together, so codes of both sides live in one space)."""
    from sklearn.decomposition import PCA

    both = np.concatenate([users, items]).astype(np.float64)
    k = min(bits, both.shape[1], both.shape[0])
    proj = PCA(n_components=k, random_state=0).fit_transform(both)  # (U + I, k), centred
    codes = ["".join("1" if x > 0 else "0" for x in row) for row in proj]
    return codes[: len(users)], codes[len(users) :]


class CtrPrompts:
    """The prompts of a HistLLM-family model: it sets, in ``attach``, the attributes declared here."""

    cfg: HistLLMConfig
    backbone: Backbone | None
    use_image: bool  # VMA on (the dataset's image feature, or the option)
    titles: list[str]  # every item's title as the prompts show it (cut_texts)
    descriptions: list[str] | None  # every item's KE description as the prompts show it (ke), else None
    user_codes: list[str]  # BinLLM's code of every user (cf=binary)
    item_codes: list[str]  # BinLLM's code of every item (cf=binary)

    # ------------------------------------------------------------------ what the dataset decides
    @property
    def history_len(self) -> int:
        """History items a prompt shows: the option, or (None) the dataset's, filled in by ``attach``."""
        if self.cfg.history_len is None:
            raise LlmrecError("history_len is the dataset's: attach the model to a dataset first")
        return self.cfg.history_len

    @property
    def noun(self) -> str:
        """What the prompts call an item: the option, or (None) the dataset's, filled in by ``attach``."""
        if self.cfg.noun is None:
            raise LlmrecError("the item noun is the dataset's: attach the model to a dataset first")
        return self.cfg.noun

    # ------------------------------------------------------------------ what each step shows
    @property
    def has_step2(self) -> bool:
        """Whether the full prompt holds non-text placeholders (and so trainable mappers/encoder)."""
        return self.use_image or self.cfg.cf == "tokens" or self.cfg.history == "uhem"

    def prompt_parts(self, step: int = 2) -> PromptParts:
        """What the prompt of ``step`` shows: 2 (step 2 and scoring) the full prompt; 1 (LoRA training) its
        text-only part (titles; BinLLM keeps its codes), or the full prompt when there is no step 2; 0
        TALLRec's titles prompt (where ``lora_start=tallrec`` starts LoRA)."""
        cfg = self.cfg
        if step == 0:
            return PromptParts(descriptions=False, image=False, uhem=False, cf_tokens=False, codes=False)
        full = step == 2 or not self.has_step2
        return PromptParts(
            descriptions=full and cfg.ke,
            image=full and self.use_image,
            uhem=full and cfg.history == "uhem",
            cf_tokens=full and cfg.cf == "tokens",
            codes=cfg.cf == "binary",
        )

    @property
    def starts_from_tallrec(self) -> bool:
        """Whether step 1's LoRA first learns TALLRec's titles prompt (``lora_start=tallrec``, where step 1's
        own prompt is not that one: BinLLM's codes)."""
        return self.cfg.lora_start == "tallrec" and self.prompt_parts(1) != self.prompt_parts(0)

    def step1_signature(self, step: int = 1) -> dict[str, Any]:
        """What a step-1 LoRA was trained on: runs with equal signatures can share it (step1_from). ``step``
        0: the signature of a TALLRec run's LoRA with these settings (where ``lora_start=tallrec`` starts)."""
        cfg, step1 = self.cfg, self.prompt_parts(step)
        ke = step1.descriptions  # a two-step model's step 1 reads titles
        desc = "<DESCRIPTION>" if ke else None
        codes = ("<USER_CODE>", "<ITEM_CODE>") if step1.codes else (None, None)
        return {
            "llm": cfg.backbone.llm,
            "lora": [cfg.backbone.lora_r, cfg.backbone.lora_alpha, sorted(cfg.backbone.lora_targets)],
            "chat_template": cfg.backbone.chat_template,
            # only a raw-framed LoRA says so: signatures of chat-framed runs saved before the option still match
            **({"prompt_format": "raw"} if cfg.prompt_format == "raw" else {}),
            "ke": ke,
            "cf": "binary" if step1.codes else "none",
            "binary_bits": cfg.binary_bits if step1.codes else None,
            "noun": self.noun,
            "history_len": self.history_len,
            # the step-1 prompt's wording, data stood in for: a LoRA trained on other words is not reused
            "prompt": ctr_prompt([ctr_item("<TITLE>", desc)], ctr_target("<TITLE>", desc), self.noun, *codes),
            # only a LoRA that began as TALLRec's says so: signatures of runs saved before the option still match
            **({"lora_start": "tallrec"} if step == 1 and self.starts_from_tallrec else {}),
        }

    # ------------------------------------------------------------------ the prompt of a CTR example
    def prompts(
        self, users: np.ndarray, histories: list[np.ndarray], targets: np.ndarray, step: int = 2
    ) -> dict[str, torch.Tensor]:
        """Tokenised Yes/No prompts of ``step`` (:meth:`prompt_parts`) and the items/users behind their
        placeholders."""
        assert self.backbone is not None
        cfg, parts = self.cfg, self.prompt_parts(step)
        texts, visual, hist_items = [], [], []
        for b, (h, t) in enumerate(zip(histories, targets)):
            h = np.asarray(h, dtype=np.int64)[-self.history_len :]
            t = int(t)
            if parts.uhem:
                hist_items.append(torch.from_numpy(h))
            elif parts.image:
                visual += h.tolist()
            visual += [t] if parts.image else []
            texts.append(self._prompt_text(int(users[b]), h, t, parts))
        enc = self.backbone.tokenize(texts, special_tokens=self.special_tokens)
        self.backbone.check_context(
            enc["attention_mask"],
            hint=f"lower history_len ({self.history_len}) or max_text_tokens ({cfg.max_text_tokens})",
        )
        out = {
            "ids": enc["input_ids"],
            "mask": enc["attention_mask"],
            "users": torch.as_tensor(np.asarray(users, dtype=np.int64)),
            "targets": torch.as_tensor(np.asarray(targets, dtype=np.int64)),
            "visual": torch.tensor(visual, dtype=torch.long),
        }
        if hist_items:  # (n_hist_rows, history_len) right-padded items, -1 = none
            out["hist"] = pad_sequence(hist_items, batch_first=True, padding_value=-1)
        return out

    def prompt_text(self, user: int, history: np.ndarray, target: int, step: int = 2) -> str:
        """The exact text one CTR example (user index, item indices of the history, target item index)
        becomes in the prompt of ``step``, framed (``prompt_format``), with its placeholder strings: what
        :meth:`prompts` tokenises."""
        return self._prompt_text(int(user), history, int(target), self.prompt_parts(step))

    def _prompt_text(self, user: int, history: np.ndarray, target: int, parts: PromptParts) -> str:
        h = np.asarray(history, dtype=np.int64)[-self.history_len :]
        clause = ctr_target(self.titles[target], self._description(target, parts), parts.image)
        code = self.item_codes[target] if parts.codes else ""
        return self._framed(user, h, clause, code, parts)

    def _description(self, item: int, parts: PromptParts) -> str | None:
        return self.descriptions[item] if parts.descriptions and self.descriptions else None

    def _framed(self, user: int, history: np.ndarray, target: str, item_code: str, parts: PromptParts) -> str:
        """One framed Yes/No prompt around an already rendered ``target`` clause (``item_code``: the
        target's BinLLM code)."""
        if parts.uhem:
            items = ["[HIST]"]
        else:
            items = [
                ctr_item(self.titles[i], self._description(i, parts), parts.image) for i in history.tolist()
            ]
        user_feature = item_feature = None
        if parts.cf_tokens:
            user_feature, item_feature = "[USERID]", "[ITEMID]"
        elif parts.codes:
            user_feature, item_feature = self.user_codes[user], item_code
        return self.frame(ctr_prompt(items, target, self.noun, user_feature, item_feature))

    def prefix_text(self, user: int, history: np.ndarray) -> str:
        """The text every candidate's prompt for this user starts with: everything before the target clause."""
        sentinel = "\x00TARGET\x00"
        h = np.asarray(history, dtype=np.int64)[-self.history_len :]
        text = self._framed(int(user), h, sentinel, "", self.prompt_parts())
        return text[: text.index(sentinel)]

    # ------------------------------------------------------------------ framing (prompt_format)
    @property
    def raw(self) -> bool:
        return self.cfg.prompt_format == "raw"

    @property
    def special_tokens(self) -> bool:
        """Whether prompts are tokenised with the tokenizer's own special tokens: under the raw framing,
        ``tokenizer(text)`` as CoLLM's code builds its ids (LLaMA's BOS, added by the tokenizer; a BOS
        written into the text instead changes the first word of a SentencePiece/Metaspace tokenizer); the chat
        framing's template writes its special tokens itself."""
        return self.raw

    def frame(self, question: str) -> str:
        """What the LM reads around one '#Question: ... \\n#Answer:' text: the backbone's chat template
        (chat; bare when ``backbone.chat_template`` is off), or the raw text, which the tokenizer then
        frames with its own special tokens (:attr:`special_tokens`)."""
        assert self.backbone is not None
        return question if self.raw else self.backbone.chat(question)

    def framed_prefix(self, head: str) -> str:
        """What every framed prompt whose question starts with ``head`` starts with (the constant start;
        tokenised with :attr:`special_tokens`, as the prompts are)."""
        assert self.backbone is not None
        return head if self.raw else self.backbone.chat_prefix(head)

    @property
    def instruction_head(self) -> str:
        """The constant question start before the history (every prompt's, computed once where it can be)."""
        return CTR_HISTORY[: CTR_HISTORY.index("{history}")].format(nouns=self.noun + "s")

    def show_prompts(self, dataset: Dataset, user: int, seed: int = 0) -> list[dict[str, Any]]:
        """What the LM reads for user index ``user`` (``llmrec prompts``): the user's last test CTR example
        (else its last training one: the longest history) as the step-1 (LoRA) prompt, when the model has a
        second step, and as the full prompt of step 2 and scoring; exact text of the token ids, token
        counts, the label. (``seed``: no draw here; I-LLMRec's window draws use it.)"""
        assert self.backbone is not None
        for split in ("test", "train"):
            rows = dataset.ctr(split)
            rows = rows[rows["user_idx"] == user]
            if len(rows):
                break
        else:
            raise LlmrecError(f"user index {user} has no CTR example", hint="pick another user (--user)")
        example = rows.iloc[-1]
        history, target = np.asarray(example["history"], dtype=np.int64), int(example["target"])
        shared = self.framed_prefix(self.instruction_head) if self.opts.shared_prefix else ""
        steps = [(1, "step 1 (LoRA training): text-only prompt", "")] if self.has_step2 else []
        steps.append(
            (2, f"{'step 2 and ' if self.has_step2 else 'training and '}scoring: full prompt", shared)
        )
        shown = []
        for step, name, prefix in steps:
            enc = self.prompts(np.array([user]), [history], np.array([target]), step)
            row = self.backbone.show(
                enc["ids"][0], enc["mask"][0], head=prefix, special_tokens=self.special_tokens
            )
            row.update(
                history_items=min(len(history), self.history_len),
                label="Yes" if example["label"] else "No",
            )
            shown.append({"name": f"{name} ({split} example)", **row})
        return shown

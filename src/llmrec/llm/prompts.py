"""How items and histories appear in LLM prompts (I-LLMRec's and its baselines' representations).

Every representation renders one item as a brace-wrapped record, joined into the official I-LLMRec
history prompt, so the paper's representation comparison (Fig. 1, Table 1) is one switch:

image              {Title: <title>, Visual representation: [VISUAL]}             (I-LLMRec, Eq. 2)
title              {Title: <title>}                                              (TALLRec, titles only)
attribute          {Title: <title>, Brand: <brand>, Category: <category>}        (TALLRec-style "A")
description        {Title: <title>, Description: <full description>}            (full description)
summary            {Title: <title>, Description: <generated summary>}           (TRSR-style)
cf                 {Title: <title>, Item embedding: [CF]}                        (A-LLMRec-style "CF")
image_description  {Title: <title>, Visual representation: [VISUAL], Description: <description>}  (I-LLMRec+D)
vlm                {Title: <title>, Brand: <brand>, Category: <category>, Image: [VISUAL]}  (UniMP: the model
                   puts a vision-language backbone's own image tokens where [VISUAL] stands)

An item without an image, under an image representation, falls back to its description (Sec. 4.5).

Every piece of item or user data (title, brand, category, description, generated text, answer) goes
through :func:`escape_placeholders` on its way into a prompt, so only the prompt templates place
placeholder tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

#: the placeholder tokens the backbone registers (one special token each); only templates may write them
PLACEHOLDERS = ("[VISUAL]", "[CF]", "[REC]", "[HIST]", "[USERID]", "[ITEMID]")

REPRESENTATIONS = ("image", "title", "attribute", "description", "summary", "cf", "image_description", "vlm")
Representation = Literal[
    "image", "title", "attribute", "description", "summary", "cf", "image_description", "vlm"
]

HISTORY_PREFIX = (
    "Your job is to recommend a suitable next item based on a user's interacted items. "
    "This user has chronologically interacted with following items: ["
)
HISTORY_SUFFIX = "], where each interacted item's information is contained in curly brackets (i.e.,{}). "
IRE_INSTRUCTION = (
    "Please conduct an analysis of user preferences based on the interacted items, and then generate a "
    "recommendation token for the next item to be consumed: [REC]"
)
ILA_INSTRUCTION = "Please conduct an analysis of user preference, taking into account the interacted items. Based on your analysis, "

#: the official I-LLMRec code's framing (``prompt_format=official``): the IRE prompt is the raw text after the
#: tokenizer's BOS; ILA is a Vicuna-v1 conversation whatever the backbone (FastChat's ``vicuna_v1``: the system
#: line, then ``USER: <question> ASSISTANT: <answer></s>``)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
PromptFormat = Literal["chat", "official"]

# I-LLMRec Appendix I (Figure 11): 5 questions for each of 4 properties, and the answer templates.
ILA_QUESTIONS: dict[str, tuple[str, ...]] = {
    "brand": (
        "What brand will this user go for with the next item?",
        "Which brand will the user choose for their next item?",
        "What brand is the user likely to pick for their next purchase?",
        "What brand will the user decide on for their next item?",
        "Which brand could this user go with for their next product?",
    ),
    "category": (
        "Which product category will the user shop from next?",
        "Which category will the user choose for the next purchase?",
        "From which category will the user's next item be selected?",
        "What will be the next category of purchase for this user?",
        "In which category will the user's next purchase fall?",
    ),
    "title": (
        "What's the title of the next item this user plan to buy?",
        "Which item is this user likely to buy next?",
        "What's the name of the next item this user is considering buying?",
        "What is the title of the next product this user plans to buy?",
        "What's the title of the next purchase this user is planning?",
    ),
    "description": (
        "Please describe the details of the next item that this user would consume.",
        "Please give a detailed description of the next item this user intends to consume.",
        "Could you describe the characteristics of the next item this user would consume?",
        "Describe the features of the next item this user is likely to consume.",
        "Can you share the specifics of the next item this user is going to consume?",
    ),
}
ILA_ANSWERS = {
    "brand": "The brand of the next item to be consumed is '{}'",
    "category": "The category of the next item to be consumed is '{}'",
    "title": "The title of the next item to be consumed is '{}'",
    "description": "The details of the next item to be consumed is as follows: '{}'",
}

_BRACES = re.compile(r"[{}]")
_PLACEHOLDER = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))


def escape_placeholders(text: str) -> str:
    """``text`` with every placeholder string in it written with round brackets: "[REC]" -> "(REC)".

    The tokenizer turns an exact placeholder string into its special token wherever it appears, so a title
    such as "Press [REC] to record" would add a [REC] position the model has no embedding for (and a
    count check failing mid-epoch). Round brackets keep the text readable and its meaning obvious, cost
    no invisible characters (a zero-width space would look identical in a printed prompt but tokenise into
    odd bytes), and touch nothing else: other bracketed text ("[Blu-ray]") stays as it is. Idempotent.
    """
    return _PLACEHOLDER.sub(lambda m: f"({m.group()[1:-1]})", text)


@dataclass
class ItemText:
    """The text fields a renderer may use for one item (already cleaned)."""

    title: str
    brand: str = ""
    category: str = ""
    description: str = ""  # full description (or a generated one for datasets without)
    summary: str = ""  # TRSR-style summary (llmrec describe --mode summary)
    has_image: bool = True
    features: tuple[str, ...] = ()  # feature bullets (Amazon's ``feature`` list, kept in ``extra``)


def item_bullets(extra: str) -> tuple[str, ...]:
    """The feature bullets in an item's ``extra`` JSON (Amazon importers keep the ``feature`` list there)."""
    bullets = json.loads(extra or "{}").get("feature") if extra else None
    if not isinstance(bullets, list):
        return ()
    return tuple(b.strip() for b in bullets if isinstance(b, str) and b.strip())


def item_texts(
    items: Any, descriptions: Sequence[str], summaries: Sequence[str], has_image: Sequence[bool]
) -> list[ItemText]:
    """One :class:`ItemText` per row of a dataset's item table (title, brand, category, extra), with the
    given descriptions, summaries and whether the prompts show the item's image."""
    return [
        ItemText(title=t, brand=b, category=c, description=d, summary=s, has_image=bool(h), features=f)
        for t, b, c, d, s, h, f in zip(
            items["title"],
            items["brand"],
            items["category"],
            descriptions,
            summaries,
            has_image,
            map(item_bullets, items["extra"]),
        )
    ]


def _clean(text: str, max_chars: int | None = None) -> str:
    """Data text as a prompt may hold it: placeholders escaped, braces (they delimit items) removed, cut."""
    text = _BRACES.sub("", escape_placeholders(text)).strip()
    return text[:max_chars].rstrip() if max_chars and len(text) > max_chars else text


def render_item(
    item: ItemText, representation: Representation, max_description_chars: int | None = None
) -> str:
    """One item as it appears in the history prompt (see the module docstring for each representation)."""
    parts = [f"Title: {_clean(item.title) or 'Unknown'}"]
    desc = _clean(item.description, max_description_chars)
    if representation in ("image", "image_description") and not item.has_image:
        representation = "description"  # missing image: fall back to the description (Sec. 4.5)
    if representation == "image":
        parts.append("Visual representation: [VISUAL]")
    elif representation == "image_description":
        parts.append("Visual representation: [VISUAL]")
        if desc:
            parts.append(f"Description: {desc}")
    elif representation in ("attribute", "vlm"):
        if item.brand:
            parts.append(f"Brand: {_clean(item.brand)}")
        if item.category:
            parts.append(f"Category: {_clean(item.category)}")
        if representation == "vlm" and item.has_image:  # an item without a picture: its attributes alone
            parts.append("Image: [VISUAL]")
    elif representation == "description":
        if desc:
            parts.append(f"Description: {desc}")
    elif representation == "summary":
        summary = _clean(item.summary, max_description_chars)
        if summary:
            parts.append(f"Description: {summary}")
    elif representation == "cf":
        parts.append("Item embedding: [CF]")
    elif representation != "title":
        raise ValueError(f"unknown representation {representation!r}; choose one of {REPRESENTATIONS}")
    return "{" + ", ".join(parts) + "}"


def history_prompt(rendered_items: Sequence[str]) -> str:
    """The official I-LLMRec user-interaction prompt around already rendered items."""
    return HISTORY_PREFIX + ", ".join(rendered_items) + HISTORY_SUFFIX


def ire_prompt(rendered_items: Sequence[str]) -> str:
    """History prompt + the IRE instruction ending in the [REC] placeholder."""
    return history_prompt(rendered_items) + IRE_INSTRUCTION


def ila_question(rendered_items: Sequence[str], field: str, template: int) -> str:
    return history_prompt(rendered_items) + ILA_INSTRUCTION + ILA_QUESTIONS[field][template]


def vicuna_question(question: str) -> str:
    """``question`` as the user turn of a Vicuna-v1 conversation, up to the assistant's cue; the answer follows
    after one space (and ends with the tokenizer's EOS, Vicuna's ``</s>``)."""
    return f"{VICUNA_SYSTEM} USER: {question} ASSISTANT:"


def top_category(category: str) -> str:
    """The first entry of a category path: "Clothing, Shoes & Jewelry > Women > Shoes" -> "Clothing, Shoes &
    Jewelry" (the official I-LLMRec ILA answer); of several paths ("A > B; C"), the first one's."""
    return category.split("; ")[0].split(" > ")[0].strip()


def ila_answer(field: str, value: str, max_chars: int | None = None) -> str:
    """The target output; an empty property is answered 'Unknown' (official code)."""
    return ILA_ANSWERS[field].format(_clean(value, max_chars) or "Unknown")


# --------------------------------------------------------------------------- CTR (Yes/No) prompts
# HistLLM Appendix A.1 (TALLRec, TALLRec_desc, TALLRec_image) and A.3 (CoLLM, BinLLM and their -image
# variants) character for character, written for a configurable item noun ("movie" in the papers):
# - "\n#Answer:" is a backslash and an "n", not a line break: the appendix prints "\n", and CoLLM's
#   public prompt files (prompts/collm_movie.txt, tallrec_movie.txt), whose wording the appendix
#   reproduces, hold those two characters on one line, which CoLLM's code feeds to the LLM as they are;
# - an item's image token follows its title or description with no space ("<Item_1Title><Item_1Image>",
#   Fig. 7 and 12);
# - what the appendix leaves to the data: titles in double quotes, items joined by ", " (CoLLM's code);
#   descriptions unquoted, joined the same way (ours).
# HistLLM's own Figure 3 prompt is not printed verbatim in the paper: we use the CoLLM form with the
# history replaced by its one [HIST] token and the target given by its description and image (the five
# placeholders of Sec. 3.2).
CTR_HISTORY = "#Question: A user has given high ratings to the following {nouns}: {history}. "
CTR_PLAIN = (
    "Leverage the information to predict whether the user would enjoy the {noun} {target} "
    'Answer with "Yes" or "No". \\n#Answer:'
)
CTR_WITH_FEATURES = (
    "Additionally, we have information about the user's preferences encoded in the feature {user}. "
    "Using all available information, make a prediction about whether the user would enjoy the {noun} "
    '{target} with the feature {item}? Answer with "Yes" or "No". \\n#Answer:'
)


def ctr_item(title: str, description: str | None = None, image: bool = False) -> str:
    """An item in a CTR history: its quoted title, or its description (KE), then [VISUAL] when shown
    (right after the text, no space: "<Item_1Title><Item_1Image>")."""
    text = _clean(description) if description is not None else f'"{_clean(title)}"'
    return f"{text}[VISUAL]" if image else text


def ctr_target(title: str, description: str | None = None, image: bool = False) -> str:
    """The target clause: 'titled "<title>"' (TALLRec) or 'with the description as follows: <desc>'."""
    text = (
        f"with the description as follows: {_clean(description)}"
        if description is not None
        else f'titled "{_clean(title)}"'
    )
    return f"{text}[VISUAL]" if image else text


def ctr_prompt(
    history: Sequence[str],
    target: str,
    noun: str = "movie",
    user_feature: str | None = None,
    item_feature: str | None = None,
) -> str:
    """The Yes/No question: TALLRec form, or the CoLLM/BinLLM form when user/item features are given
    (``"[USERID]"``/``"[ITEMID]"`` tokens, or BinLLM's 0/1 text codes)."""
    head = CTR_HISTORY.format(nouns=noun + "s", history=", ".join(history))
    if user_feature is None or item_feature is None:
        return head + CTR_PLAIN.format(noun=noun, target=target)
    return head + CTR_WITH_FEATURES.format(noun=noun, target=target, user=user_feature, item=item_feature)

"""What I-LLMRec's LM reads for one user, as ``llmrec prompts`` prints it (:meth:`ILLMRec.show_prompts`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from llmrec.data.dataset import Dataset
    from llmrec.models.llm.illmrec import ILLMRec


def shown_prompts(model: ILLMRec, dataset: Dataset, user: int, seed: int = 0) -> list[dict[str, Any]]:
    """A training window's IRE prompt and ILA question and answer (drawn with ``seed``) and the user's test
    prompt, each as the exact text of the token ids ``model`` builds, with its token counts."""
    assert model.backbone is not None
    rng = np.random.default_rng(seed)
    history, target = model.sample_window(dataset.train_sequences[user], rng)
    test = np.asarray(dataset.split("test").histories[user])[-model.opts.test_history :]
    # the constant start is computed once where it carries no gradient (training: the LM frozen); in
    # training with ILA it is what the IRE and ILA prompts share
    lm_trains = model.cfg.backbone.lora or model.cfg.backbone.train_embeddings
    training = (
        [] if lm_trains or not model.opts.shared_prefix else ["ire", "ila"] if model.cfg.ila else ["ire"]
    )
    shown = []
    for name, kinds, enc in (
        ("training: IRE prompt", training, model.build_ire([history])),
        (
            "training: ILA question and answer",
            training,
            model.build_ila([history], np.array([target]), rng),
        ),
        (
            "evaluation: IRE prompt (test)",
            ["ire"] if model.opts.shared_prefix else [],
            model.build_ire([test]),
        ),
    ):
        head = model.prompt_head(kinds) if kinds else ""
        row = model.backbone.show(
            enc["ids"][0],
            enc["mask"][0],
            enc["labels"][0] if "labels" in enc else None,
            head,
            model.special_tokens,
        )
        row["history_items"] = row["text"].count("{Title: ")  # data text holds no braces
        shown.append({"name": name, **row})
    return shown

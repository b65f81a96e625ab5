"""GPU memory and time of one training run, from a formula (docs: explanations/estimates.md).

Memory (bytes), for a backbone of N parameters, hidden size d, L layers, vocabulary V, at batch B and prompt
length T, weights in b bytes (2 for bf16/fp16):

    weights      N * b
    trainable    P * 16        (fp32 weight, its gradient, AdamW's two moments: 4 + 4 + 8 bytes)
    activations  34 * B * T * d * L * b / 2    (Korthikanti et al. 2022, attention scores not stored: SDPA)
                 2 * B * T * d * L * b / 2 + 34 * B * T * d * b / 2 with gradient checkpointing
    logits       B * T_head * V * 4  (the LM head's output in fp32, only where a label is scored: T_head)

T is what one training example runs through the LLM before its one backward: I-LLMRec's IRE and ILA prompts
share their history, so with ``one_pass`` they run as one packed row (the history once, each prompt's own
end as a branch), without it as two passes whose activations are both held until the backward (their sum).
Evaluation reads the IRE prompt alone.

Time: 6 * N * T for training (forward + backward), 2 * N * T_eval for inference, at a stated effective
throughput (FLOP/s). Both are estimates from shapes only: no model is loaded and nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the shapes of the papers' backbones (their config.json), so that a dry run needs no download
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "princeton-nlp/Sheared-LLaMA-2.7B": dict(hidden=2560, layers=32, heads=20, kv_heads=20, ffn=6912, vocab=32000, tied=False),
    "lmsys/vicuna-7b-v1.5": dict(hidden=4096, layers=32, heads=32, kv_heads=32, ffn=11008, vocab=32000, tied=False),
    "Qwen/Qwen2-1.5B": dict(hidden=1536, layers=28, heads=12, kv_heads=2, ffn=8960, vocab=151936, tied=True),
    "Qwen/Qwen2.5-3B": dict(hidden=2048, layers=36, heads=16, kv_heads=2, ffn=11008, vocab=151936, tied=True),
    "Qwen/Qwen2.5-7B": dict(hidden=3584, layers=28, heads=28, kv_heads=4, ffn=18944, vocab=152064, tied=False),
    "smollm2-135m-instruct": dict(hidden=576, layers=30, heads=9, kv_heads=3, ffn=1536, vocab=49152, tied=True),
}  # fmt: skip

DEFAULT_TFLOPS = 200.0  # effective 16-bit TFLOP/s assumed: about 20% of an H100 SXM's dense bf16 peak
GIB = 1024**3


@dataclass
class Shape:
    """A decoder-only transformer's sizes (a LLaMA-style gated MLP)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    tied: bool

    @property
    def params(self) -> int:
        """Parameters: embeddings (+ an untied head), attention (q, o full; k, v by KV heads), gated MLP."""
        d, kv = self.hidden, self.hidden * self.kv_heads // self.heads
        per_layer = 2 * d * d + 2 * d * kv + 3 * d * self.ffn
        return self.vocab * d * (1 if self.tied else 2) + self.layers * per_layer


def backbone_shape(name: str | None) -> Shape | None:
    """The shape of a known backbone id, or of a local folder's config.json; None when neither."""
    if not name:
        return None
    if name in KNOWN_SHAPES:
        return Shape(**KNOWN_SHAPES[name])
    config = Path(name) / "config.json"
    if not config.is_file():
        return None
    c = json.loads(config.read_text())
    c = c.get("text_config", c)
    try:
        return Shape(
            hidden=c["hidden_size"],
            layers=c["num_hidden_layers"],
            heads=c["num_attention_heads"],
            kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
            ffn=c.get("intermediate_size") or 4 * c["hidden_size"],
            vocab=c["vocab_size"],
            tied=bool(c.get("tie_word_embeddings", False)),
        )
    except KeyError:
        return None


def estimate(
    shape: Shape,
    *,
    batch: int,
    tokens: int,
    train_examples: int,
    epochs: int,
    eval_examples: int,
    trainable: int,
    bytes_per_weight: int = 2,
    checkpointing: bool = False,
    tflops: float = DEFAULT_TFLOPS,
    eval_tokens: int | None = None,
    head_tokens: int | None = None,
) -> dict[str, float]:
    """GPU memory (GiB) of training and of inference, and hours of training and evaluation, by the formula
    of the module docstring. ``tokens``: what one training example runs through the LLM before its backward;
    ``eval_tokens``: the prompt length at evaluation (default ``tokens``); ``head_tokens``: positions per
    example where the LM head runs in training (default ``tokens``); ``trainable``: trained parameters."""
    n, d, L, b = shape.params, shape.hidden, shape.layers, bytes_per_weight
    t_eval = tokens if eval_tokens is None else eval_tokens
    t_head = tokens if head_tokens is None else head_tokens
    weights = n * b
    optimizer = trainable * 16
    per_layer = 34 * batch * tokens * d * b / 2
    acts = (2 * batch * tokens * d * b / 2) * L + per_layer if checkpointing else per_layer * L
    logits = batch * t_head * shape.vocab * 4
    eval_layer = 34 * batch * t_eval * d * b / 2
    eval_logits = batch * shape.vocab * 4  # at most one position per prompt: the next token's
    kv = 2 * L * batch * t_eval * (d * shape.kv_heads // shape.heads) * b
    train_flops = 6 * n * tokens * train_examples * epochs
    eval_flops = 2 * n * t_eval * eval_examples
    return {
        "params": n,
        "trainable": trainable,
        "train_memory_gib": (weights + optimizer + acts + logits) / GIB,
        "eval_memory_gib": (weights + kv + eval_logits + eval_layer) / GIB,
        "train_hours": train_flops / (tflops * 1e12) / 3600,
        "eval_hours": eval_flops / (tflops * 1e12) / 3600,
    }


def lora_params(shape: Shape, r: int, targets: int = 2) -> int:
    """LoRA's A and B matrices on ``targets`` square-ish projections per layer (q_proj, v_proj)."""
    return shape.layers * targets * r * 2 * shape.hidden


_ITEM_TOKENS = {
    "image": 25,
    "cf": 25,
    "title": 20,
    "attribute": 45,
    "summary": 120,
    "description": 300,
    "image_description": 320,
    "vlm": 600,
}


# I-LLMRec's prompts around their item list (tokens, LLaMA-like tokenizers): the history prompt's start and end
# that IRE and ILA share, the IRE instruction ending in [REC], ILA's instruction and question, and its answer
# (llmrec's framing cuts answers at 96 tokens + EOS; the official framing, which the paper settings use, cuts
# none, but its answers are one feature bullet or a short field: 97 is an upper estimate there)
_HISTORY_FRAME, _IRE_END, _ILA_QUESTION, _ILA_ANSWER = 50, 30, 40, 97


def illmrec_tokens(items: int, ila: bool, one_pass: bool) -> tuple[int, dict[str, int]]:
    """What one I-LLMRec training example runs through the LLM before its backward, for an item list of
    ``items`` tokens, and its prompts' lengths: the IRE prompt alone; with ILA, one packed row holding the
    shared history once and each prompt's own end (``one_pass``), or two passes whose activations are both
    held until the one backward (their sum)."""
    ire = _HISTORY_FRAME + items + _IRE_END
    if not ila:
        return ire, {"ire": ire}
    ila_prompt = _HISTORY_FRAME + items + _ILA_QUESTION + _ILA_ANSWER
    packed = _HISTORY_FRAME + items + _IRE_END + _ILA_QUESTION + _ILA_ANSWER
    return (packed if one_pass else ire + ila_prompt), {"ire": ire, "ila": ila_prompt, "answer": _ILA_ANSWER}


def row_estimate(
    model: str, options: dict[str, Any], ds: dict[str, Any], tflops: float = DEFAULT_TFLOPS
) -> dict[str, Any] | None:
    """The formula's estimate for one paper row (None for a model without a known LLM backbone): prompt
    tokens from the representation and the dataset's history length, examples from the paper's counts."""
    from llmrec.config import to_dict
    from llmrec.models.base import model_config

    resolved = to_dict(model_config(model, options))
    backbone = resolved.get("backbone") or {}
    shape = backbone_shape(backbone.get("llm"))
    if shape is None:
        return None
    stats = ds.get("stats") or {}
    hist = (ds.get("estimate") or {}).get("history_items", 10)
    trainable = lora_params(shape, backbone.get("lora_r", 8)) if backbone.get("lora") else 0
    if "representation" in resolved:  # I-LLMRec's frame: one IRE (+ one ILA) prompt per user and epoch
        per_item = _ITEM_TOKENS.get(resolved["representation"], 25)
        items = min(
            hist * per_item, resolved.get("max_history_tokens") or hist * per_item
        )  # the item list's cap
        tokens, prompts = illmrec_tokens(items, bool(resolved.get("ila")), bool(resolved.get("one_pass")))
        eval_tokens, head = prompts["ire"], prompts.get("answer", 0)  # the LM head: ILA's answer only
        examples, evals, epochs = stats.get("users", 0), stats.get("users", 0), resolved.get("epochs", 1)
        trainable += 3 * 1024 * 1024 + 512 * shape.hidden  # adaptor and the six projectors (about 3M)
        if backbone.get("train_embeddings"):
            trainable += shape.vocab * shape.hidden
    else:  # the CTR family: one Yes/No prompt per example
        history = hist if resolved.get("history") != "uhem" else 1
        tokens = 90 + history * (60 if resolved.get("ke") else 20)
        eval_tokens, prompts, head = tokens, {}, 0  # the LM head: a Yes/No pair of rows, not counted
        examples, evals = stats.get("train", 0), stats.get("test", 0)
        epochs = resolved.get("epochs", 1) + resolved.get("step1_epochs", 0)
        trainable += 2 * 512 * shape.hidden
    out = estimate(
        shape,
        batch=resolved.get("batch_size", 8),
        tokens=tokens,
        train_examples=examples,
        epochs=epochs,
        eval_examples=evals,
        trainable=trainable,
        checkpointing=bool(backbone.get("gradient_checkpointing")),
        tflops=tflops,
        eval_tokens=eval_tokens,
        head_tokens=head,
    )
    return {
        **out,
        "tokens": tokens,
        "layout": _layout(tokens, prompts),
        "batch": resolved.get("batch_size", 8),
        "epochs": epochs,
        "examples": examples,
    }


def _layout(tokens: int, prompts: dict[str, int]) -> str:
    """How the training tokens arise, for the dry run: "IRE 330 + ILA 437 tokens, one packed row of 467"."""
    if "ila" not in prompts:
        return f"{tokens} tokens"
    both = f"IRE {prompts['ire']} + ILA {prompts['ila']} tokens"
    if tokens < prompts["ire"] + prompts["ila"]:
        return f"{both}, one packed row of {tokens}"
    return f"{both} in two passes ({tokens})"


__all__ = [
    "KNOWN_SHAPES",
    "DEFAULT_TFLOPS",
    "Shape",
    "backbone_shape",
    "estimate",
    "illmrec_tokens",
    "lora_params",
    "row_estimate",
]

"""The CTR baselines of HistLLM's Table 2 that fine-tune an LLM, as registered presets of :class:`HistLLM`.

One class serves every one of them through four switches (``llmrec train collm`` is ``llmrec train histllm``
with the preset's values as defaults; any option given still overrides them):

=================  ========  =====  ======  =======  ====================================================
preset             history   ke     image   cf       prompt
=================  ========  =====  ======  =======  ====================================================
tallrec            inline    no     no      none     A.1 Fig. 6: titles
tallrec_desc       inline    yes    no      none     A.1 Fig. 8: KE descriptions
tallrec_image      inline    no     yes     none     A.1 Fig. 7: titles + [VISUAL] per item and target
collm              inline    no     no      tokens   A.3 Fig. 11: + [USERID] / [ITEMID] MF tokens
collm_image        inline    no     yes     tokens   A.3 Fig. 12
binllm             inline    no     no      binary   A.3 Fig. 11 with the MF vectors as 0/1 text codes
binllm_image       inline    no     yes     binary   A.3 Fig. 12, same
histllm            uhem      yes    auto    tokens   Fig. 3: [HIST] + target description + [VISUAL] + CF
=================  ========  =====  ======  =======  ====================================================

(``histllm`` itself is the class's own defaults, registered in :mod:`llmrec.models.llm.histllm`.) A preset
without non-text placeholders (tallrec, tallrec_desc, binllm) trains in one LoRA step on its own prompt;
the others share step 1 (TALLRec's titles prompt, or BinLLM's with its codes), so ``-o step1_from=RUN``
reuses a trained TALLRec (or BinLLM) run's LoRA. Under ``recipe=paper`` BinLLM's LoRA starts from TALLRec's
(``lora_start=tallrec``: trained first on the titles prompt, or taken from the TALLRec run ``step1_from``
names), as its authors' configuration does; ``-o lora_start=scratch`` is the one-step variant, llmrec's
default.
"""

from __future__ import annotations

from typing import Any

from llmrec.models.base import register_model
from llmrec.models.llm.histllm import HistLLM
from llmrec.models.llm.histllm_config import RECIPES

PRESETS: dict[str, dict[str, Any]] = {
    "tallrec": {"history": "inline", "ke": False, "image": False, "cf": "none"},
    "tallrec_desc": {"history": "inline", "ke": True, "image": False, "cf": "none"},
    "tallrec_image": {"history": "inline", "ke": False, "image": True, "cf": "none"},
    "collm": {"history": "inline", "ke": False, "image": False, "cf": "tokens"},
    "collm_image": {"history": "inline", "ke": False, "image": True, "cf": "tokens"},
    "binllm": {"history": "inline", "ke": False, "image": False, "cf": "binary"},
    "binllm_image": {"history": "inline", "ke": False, "image": True, "cf": "binary"},
}
#: BinLLM's recipes: under paper its LoRA starts from TALLRec's, as its authors' configuration does
#: (``hash_CF_ml.yaml``: ``ckpt: ... # tallrec``); llmrec's default trains it from scratch in one step
BINLLM_RECIPES: dict[str, dict[str, Any]] = {
    **RECIPES,
    "paper": {**RECIPES["paper"], "lora_start": "tallrec"},
}

for _name, _preset in PRESETS.items():
    _attrs = {"preset": _preset, "__doc__": f"HistLLM preset: {_preset}", "__module__": __name__}
    if _preset["cf"] == "binary":
        _attrs["recipes"] = BINLLM_RECIPES
    register_model(_name)(type(_name, (HistLLM,), _attrs))

"""HistLLM's raw framing (``prompt_format=raw``, ``recipe=paper``) tokenises as ``tokenizer(text)``: the
tokenizer's own BOS, never one written into the text, under LLaMA-style SentencePiece/Metaspace tokenizers
built offline (``legacy`` True and False, a LLaMA-2-style tokenizer.json); the constant start computed once
and the shared-prefix ranking still equal whole prompts. The expected ids are the tokenizer's own answer for
the pinned text of test_histllm_preset_prompts, never the code under test's."""

import numpy as np
import pytest
import torch

import test_histllm_preset_prompts as pins
from test_illmrec_tokenisation import llama_folder
from test_shared_prefix import perturb_lora

example_dataset = pins.example_dataset  # fixture
CORPUS = [pins.TALLREC, pins.TALLREC_DESC, pins.COLLM, pins.BINLLM, pins.HISTLLM]


@pytest.fixture(scope="module", params=["legacy", "non-legacy", "llama2"])
def llama_llm(request, tmp_path_factory):
    """The pinned CTR prompts' words under each LLaMA-style tokenizer."""
    return llama_folder(tmp_path_factory.mktemp(f"ctr-llama-{request.param}"), request.param, CORPUS)


def _ids(batch, i=0) -> list[int]:
    return batch["ids"][i][batch["mask"][i].bool()].tolist()


@pytest.mark.parametrize("name", ["tallrec", "histllm"])
def test_raw_framing_ids_are_the_tokenizers_own(name, example_dataset, llama_llm):
    """Regression: the BOS was written into the text and the text tokenised without special tokens, so a
    legacy=False tokenizer lost the first word's '▁' ('#' after '<s>' instead of '▁#...')."""
    model = pins.attached(name, example_dataset, llama_llm, recipe="paper")
    tok = model.backbone.tokenizer
    full, step1 = pins.EXPECTED[name]
    for step, text in ((2, full), (1, step1)):
        batch = model.prompts(np.array([pins.USER]), [np.array(pins.HISTORY)], np.array([pins.TARGET]), step)
        ids = _ids(batch)
        assert ids == tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert tok.convert_ids_to_tokens(ids[1]).startswith("▁")
    assert model.prompt_text(pins.USER, np.array(pins.HISTORY), pins.TARGET) == full  # no BOS in the text


def test_raw_framing_shared_prefix_holds_the_bos_once_and_stays_exact(example_dataset, llama_llm):
    """The constant start (BOS + instruction) computed once and the shared-prefix ranking give the scores
    of whole prompts."""
    model = pins.attached("histllm", example_dataset, llama_llm, recipe="paper", rank_batch_size=3)
    perturb_lora(model)
    model.eval()
    tok = model.backbone.tokenizer
    users, histories, targets = np.array([3, 3]), [np.array([5, 6, 7]), np.array([5])], np.array([9, 4])
    with torch.no_grad():
        batch = model.prompts(users, histories, targets)
        shared = model.answer_logits(batch)
        with model.switched(shared_prefix=False):
            whole = model.answer_logits(batch)
    torch.testing.assert_close(shared, whole, rtol=1e-4, atol=1e-5)
    ids = model.backbone.prefixes[-1].ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1 and len(ids) > 5
    cands = np.array([[9, 4, 8, 2, 1, 0, 6]])
    np.testing.assert_allclose(
        model.score(users[:1], histories[:1], cands),
        model.score(users[:1], histories[:1], cands, shared_prefix=False),
        atol=1e-4,
        rtol=0,
    )

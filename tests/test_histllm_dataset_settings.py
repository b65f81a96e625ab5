"""What a HistLLM-family model takes from its dataset (the history length under recipe=paper, the item noun
always) and BinLLM's LoRA start (from TALLRec's, as its authors configure it, or from scratch)."""

import numpy as np
import pytest
import torch

from llmrec.data.dataset import Dataset
from llmrec.errors import LlmrecError
from llmrec.models.base import build_model, model_config
from llmrec.models.llm.ctr_presets import PRESETS
from llmrec.training import fit
from test_histllm_preset_prompts import example_dataset  # noqa: F401 (a fixture)

TINY = {
    "mapper_hidden": 16,
    "encoder_dim": 16,
    "description_texts": None,
    "train_examples": 24,
    "eval_examples": 16,
    "epochs": 1,
    "step1_epochs": 1,
    "binary_bits": 8,
}
FAMILY = sorted({*PRESETS, "histllm"})


@pytest.fixture
def news_dataset(example_dataset):  # noqa: F811 (the imported fixture)
    """The example dataset (image and MF features) as if its importer called an item a news article and it
    was prepared with 7 history items (only the length read back matters here, not the stored histories)."""
    example_dataset.meta["source"]["item_noun"] = "news article"
    example_dataset.meta["config"]["ctr_history_len"] = 7
    return example_dataset


def make(name, ds, tiny_llm, **options):
    torch.manual_seed(0)
    return build_model(
        name, {**TINY, **options, "backbone": {"llm": tiny_llm, "lora": True}}, ds.n_users, ds.n_items
    )


def attached(name, ds, tiny_llm, **options):
    model = make(name, ds, tiny_llm, **options)
    model.attach(ds)
    return model


def test_the_paper_recipe_takes_the_history_length_and_every_row_from_the_dataset(news_dataset, tiny_llm):
    """recipe=paper: history_len is the dataset's (the importers store 5 for movies, 10 for Netflix and MIND),
    every training row is seen each epoch; llmrec's recipe keeps 5 and its CPU budget; an option given wins."""
    paper = attached("histllm", news_dataset, tiny_llm, recipe="paper", train_examples=None)
    assert paper.cfg.history_len == paper.history_len == 7
    assert paper.step1_signature()["history_len"] == 7
    n = len(news_dataset.ctr("train"))
    assert paper.num_train_batches(news_dataset) == -(-n // paper.cfg.batch_size)
    assert model_config("histllm", {"recipe": "paper"}).train_examples is None
    assert model_config("tallrec", {"recipe": "paper"}).history_len is None  # "the dataset's"
    assert model_config("histllm", {}).train_examples == 2048 and model_config("histllm", {}).history_len == 5
    assert attached("histllm", news_dataset, tiny_llm).history_len == 5
    assert attached("collm", news_dataset, tiny_llm, recipe="paper", history_len=3).history_len == 3
    many = np.arange(9)
    prompt = paper.prompts(np.array([0]), [many], np.array([1]))
    assert int((prompt["hist"][0] >= 0).sum()) == 7  # UHEM reads the last 7 items


@pytest.mark.parametrize("name", FAMILY)
def test_every_prompt_calls_an_item_what_the_dataset_calls_it(news_dataset, tiny_llm, name):
    """The item noun of every family member's prompts (both steps, the constant start) is the dataset's."""
    model = attached(name, news_dataset, tiny_llm, recipe="paper")
    texts = [model.prompt_text(0, np.array([2, 3]), 4, step) for step in (1, 2)]
    texts.append(model.instruction_head)
    for text in texts:
        assert "news articles" in text and "movie" not in text, text
    assert "the news article " in texts[1]
    assert model.step1_signature()["noun"] == "news article"


def test_a_dataset_without_a_noun_keeps_movie_and_an_option_wins(synthetic_dataset, news_dataset, tiny_llm):
    """A dataset whose importer stored no noun (or prepared before llmrec stored one) reads 'movie', as before."""
    plain = Dataset(synthetic_dataset)
    plain.meta["source"].pop("item_noun", None)
    assert attached("tallrec", plain, tiny_llm).noun == "movie"
    assert attached("tallrec", news_dataset, tiny_llm, noun="story").noun == "story"
    with pytest.raises(LlmrecError, match="attach"):
        _ = make("tallrec", news_dataset, tiny_llm).noun


def test_binllm_starts_from_tallrec_under_the_paper_recipe():
    """BinLLM's authors start its LoRA from a trained TALLRec; llmrec's recipe trains it from scratch; the
    other presets have no such start."""
    assert model_config("binllm", {"recipe": "paper"}).lora_start == "tallrec"
    assert model_config("binllm_image", {"recipe": "paper"}).lora_start == "tallrec"
    assert model_config("binllm", {}).lora_start == "scratch"
    assert model_config("binllm", {"recipe": "paper", "lora_start": "scratch"}).lora_start == "scratch"
    assert model_config("collm", {"recipe": "paper"}).lora_start == "scratch"


def test_binllm_lora_trains_on_tallrecs_prompt_then_its_own(news_dataset, tiny_llm):
    model = make("binllm", news_dataset, tiny_llm, lora_start="tallrec")
    model.attach(news_dataset)
    assert model.starts_from_tallrec
    assert [s.name for s in model.stages(news_dataset)] == ["tallrec", "step1"]
    tallrec_text = model.prompt_text(0, np.array([2, 3]), 4, step=0)
    assert "feature" not in tallrec_text and model.item_codes[4] not in tallrec_text  # titles only
    assert model.step1_signature()["lora_start"] == "tallrec"
    scratch = attached("binllm", news_dataset, tiny_llm)
    assert [s.name for s in scratch.stages(news_dataset)] == ["step1"]
    assert "lora_start" not in scratch.step1_signature()  # as saved before the option: old runs still match


def test_binllm_lora_starts_from_a_tallrec_run(news_dataset, tiny_llm, tmp_path):
    """step1_from names a TALLRec run: BinLLM loads its LoRA, then trains it on its own prompt; a BinLLM run
    with the same start is reused as it is; a TALLRec LoRA under other settings is refused."""
    tallrec = make("tallrec", news_dataset, tiny_llm, recipe="paper")
    fit(tallrec, news_dataset)
    tallrec.save(tmp_path / "tallrec")
    lora = {k: v for k, v in tallrec.checkpoint_state().items() if "lora_" in k}

    binllm = make("binllm", news_dataset, tiny_llm, recipe="paper", step1_from=str(tmp_path / "tallrec"))
    binllm.attach(news_dataset)
    stages = binllm.stages(news_dataset)
    assert [s.name for s in stages] == ["tallrec", "step1"] and stages[0].load is not None
    stages[0].load()
    assert all(torch.equal(binllm.checkpoint_state()[k], v) for k, v in lora.items())
    fit(binllm, news_dataset)
    assert any(not torch.equal(binllm.checkpoint_state()[k], v) for k, v in lora.items())  # trained on
    binllm.save(tmp_path / "binllm")

    again = make("binllm_image", news_dataset, tiny_llm, recipe="paper", step1_from=str(tmp_path / "binllm"))
    again.attach(news_dataset)
    assert [s.name for s in again.stages(news_dataset)] == ["step1", "step2"]  # BinLLM's step 1 reused

    other = make("binllm", news_dataset, tiny_llm, lora_start="tallrec", step1_from=str(tmp_path / "tallrec"))
    other.attach(news_dataset)  # chat framing, history 5: not the TALLRec run's settings
    with pytest.raises(LlmrecError, match="TALLRec run's"):
        other.stages(news_dataset)[0].load()

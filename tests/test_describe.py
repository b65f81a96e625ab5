"""`llmrec describe`: paper prompts, left-padded batched generation, the prompt-keyed cache and resume."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from llmrec.config import from_dict
from llmrec.data.schema import make_items
from llmrec.errors import ConfigError, LlmrecError
from llmrec.llm import describe
from llmrec.llm.describe import (
    FROM_TITLE_PROMPT,
    OLD_FROM_TITLE_PROMPTS,
    SUMMARY_PROMPT,
    DescribeConfig,
    clean_text,
    generate_texts,
    load_texts,
    prepare_tokenizer,
    prompt_fields,
    render_prompt,
    run_describe,
    wrap_chat,
)

_VOCAB_TEXT = (
    "the a movie film story toy item desc brand cat title with around words , . ! ? : # question answer "
    "generate concise description for highlighting main theme and unique elements genres given metadata "
    "including attributes craft summary category of in is on love war space heroes family comedy drama"
)
WORDS = _VOCAB_TEXT.split()


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    """A random 2-layer Llama (hidden 32) with a WordLevel tokenizer that has an eos but no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
    for w in WORDS + [str(i) for i in range(50)]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.2,  # peaked logits: no near-ties for greedy decoding to flip on
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("llm") / "tiny-llama"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return str(folder)


def items_dataset(root, records):
    """A dataset directory with just what `describe` reads: meta.json and items.parquet."""
    root.mkdir(parents=True)
    (root / "meta.json").write_text(json.dumps({"source": {"name": "t"}, "counts": {"items": len(records)}}))
    make_items(records, source="test").to_parquet(root / "items.parquet", index=False)
    return root


MOVIES = [
    {"item_id": "1", "title": "Toy Story", "category": "Animation, Children's, Comedy", "year": 1995},
    {"item_id": "2", "title": "GoldenEye", "category": "Action, Adventure, Thriller", "year": 1995},
    {"item_id": "3", "title": "Manito", "year": 2003},
    {"item_id": "4", "title": "Fantastic 4: Rise of the Silver Surfer (2007)", "year": 2007},
]


@pytest.fixture
def counting(monkeypatch):
    """Count `model.generate` calls (and prompts) made by run_describe; optionally fail on call N."""
    state = {"calls": [], "fail_on": None, "dtypes": []}
    real_load = describe.load_causal_lm

    def load(name, dtype=None, device=None):
        model, tok = real_load(name, dtype=dtype, device=device)
        state["dtypes"].append(model.dtype)
        real_generate = model.generate

        def generate(**kw):
            state["calls"].append(int(kw["input_ids"].shape[0]))
            if state["fail_on"] == len(state["calls"]):
                raise KeyboardInterrupt("simulated interruption")
            return real_generate(**kw)

        model.generate = generate
        return model, tok

    monkeypatch.setattr(describe, "load_causal_lm", load)
    return state


# ----------------------------------------------------------------------------- prompts


def test_paper_prompts_render_exactly():
    fields = prompt_fields(make_items(MOVIES, source="t").iloc[3])
    assert render_prompt(FROM_TITLE_PROMPT, fields) == (
        "#Question: Generate a concise movie description for the title "
        "Fantastic 4: Rise of the Silver Surfer (2007) with around 20 words, "
        "highlighting the main theme and unique elements. \\n#Answer:"
    )  # HistLLM Fig. 10's own example, character for character ("\\n": a backslash and an "n", as printed)
    toy = prompt_fields(make_items(MOVIES, source="t").iloc[0])
    fig9 = (  # the default prompt is Fig. 9 exactly: an item's genres are not in it
        "#Question: Generate a concise movie description for the title Toy Story (1995) with around 20 words, "
        "highlighting the main theme and unique elements. \\n#Answer:"
    )
    assert render_prompt(DescribeConfig().template, toy) == fig9
    assert render_prompt(DescribeConfig(with_genres=True).template, toy) == fig9.replace(
        "elements.", "elements. Genres: Animation, Children's, Comedy"
    )  # ours, as an option only; it vanishes for an item without genres
    assert render_prompt(DescribeConfig(with_genres=True).template, fields) == render_prompt(
        FROM_TITLE_PROMPT, fields
    )
    with pytest.raises(ConfigError, match="with_genres"):
        DescribeConfig(mode="summary", with_genres=True)
    item = make_items(
        [
            {
                "item_id": "9",
                "title": "Yoga Mat",
                "brand": "WOLT",
                "category": "Sports",
                "description": "Thick mat.",
            }
        ],
        source="t",
    ).iloc[0]
    assert render_prompt(SUMMARY_PROMPT, prompt_fields(item)) == (
        "Given the item's metadata, including the title, attributes, and description,\n"
        "craft a concise summary:\nTitle: Yoga Mat\nBrand: WOLT\nCategory: Sports\n"
        "Description: Thick mat.\nAnswer:"
    )
    no_brand = {**prompt_fields(item), "brand": ""}
    assert "Brand" not in render_prompt(SUMMARY_PROMPT, no_brand)  # an empty attribute line is left out


def test_chat_template_wraps_the_prompt(tiny_llm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    assert wrap_chat(tok, "hello", chat=True) == "hello"  # no chat template: the prompt as is
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    assert wrap_chat(tok, "hello", chat=True) == "<user>hello<assistant>"
    assert wrap_chat(tok, "hello", chat=False) == "hello"


def test_clean_text():
    assert clean_text("  A toy  story.\nAbout toys. And then the", "T") == "A toy story. About toys."
    assert clean_text("no full stop here", "T") == "no full stop here"  # nothing finished to fall back to
    assert clean_text("Costs 3.5 dollars. Really", "T") == "Costs 3.5 dollars."
    assert clean_text("Fine (2007).", "T") == "Fine (2007)."
    assert clean_text("A film.\n#Question: Generate", "T") == "A film."
    assert clean_text(" \n ", "Toy Story") == "Toy Story"


def test_config_is_validated():
    assert DescribeConfig().name == "from_title"
    assert DescribeConfig(mode="summary").name == "summary"
    for bad in (
        {"batch_size": 0},
        {"max_new_tokens": 0},
        {"limit": 0},
        {"name": "../x"},
        {"prompt": "no field"},
        {"dtype": "fp8"},
    ):
        with pytest.raises(ConfigError):
            DescribeConfig(**bad)
    with pytest.raises(ConfigError):
        from_dict(DescribeConfig, {"mode": "summarise"})
    with pytest.raises(ConfigError):
        from_dict(DescribeConfig, {"max_tokens": 3})


def test_dtype_auto_is_bfloat16_on_a_gpu_that_supports_it_float32_on_the_cpu():
    from llmrec.experiments.reproduce import available_settings, load_setting
    from llmrec.llm.describe import describe_dtype

    assert DescribeConfig().dtype == "auto"
    assert describe_dtype("auto", "cpu") == "float32"
    assert describe_dtype("auto", "cuda", bf16_supported=True) == "bfloat16"
    assert describe_dtype("auto", "cuda:1", bf16_supported=False) == "float16"  # e.g. a V100 or T4
    assert describe_dtype("float16", "cpu") == "float16" and describe_dtype("float32", "cuda") == "float32"
    for name in available_settings():  # the paper settings' describe steps leave it to auto
        for ds in load_setting(name).datasets.values():
            for step in ds.get("describe") or []:
                assert from_dict(DescribeConfig, step).dtype == "auto", (name, step)


# ----------------------------------------------------------------------------- generation


def test_left_padded_batch_equals_one_by_one(tiny_llm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llm).eval()
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(tiny_llm))
    assert tok.padding_side == "left" and tok.pad_token == "</s>"
    prompts = [
        "movie",
        "the toy story of family and love in space with heroes",
        "a film : comedy drama",
        "generate a concise description for the movie with around 20 words , highlighting the main theme",
    ]
    assert tok(prompts, padding=True, return_tensors="pt")["attention_mask"].eq(0).any()  # really padded
    batched = generate_texts(model, tok, prompts, max_new_tokens=8, chat=False)
    single = [generate_texts(model, tok, [p], max_new_tokens=8, chat=False)[0] for p in prompts]
    assert batched == single
    assert sum(len(t.split()) for t in single) >= 8  # the random model does say something
    tok.padding_side = "right"  # the control: right padding continues after the pads and changes the text
    assert generate_texts(model, tok, prompts, max_new_tokens=8, chat=False) != single


def test_progress_lines_count_items_without_a_terminal(tmp_path, tiny_llm, monkeypatch, caplog):
    """Regression: the log's progress line read a disabled progress bar's count and said '0/4 items'."""
    from llmrec.llm import describe

    monkeypatch.setattr(describe, "NOTE_EVERY_S", -1.0)  # a line after every batch
    data = items_dataset(tmp_path / "movies", MOVIES)
    with caplog.at_level("INFO", logger="llmrec.llm.describe"):
        run_describe(DescribeConfig(data=str(data), llm=tiny_llm, max_new_tokens=4, batch_size=3))
    lines = [r.getMessage() for r in caplog.records if "items/s" in r.getMessage()]
    assert [line.split(": ")[1].split(" items")[0] for line in lines] == ["3/4", "4/4"], lines


def test_run_batched_equals_unbatched_and_cache(tmp_path, tiny_llm, counting):
    data = items_dataset(tmp_path / "movies", MOVIES)
    batched = run_describe(DescribeConfig(data=str(data), llm=tiny_llm, max_new_tokens=8, batch_size=3))
    assert batched["generated"] == 4 and counting["calls"] == [3, 1]
    single = run_describe(
        DescribeConfig(data=str(data), llm=tiny_llm, max_new_tokens=8, batch_size=1, name="single")
    )
    assert single["generated"] == 4
    texts = load_texts(data, "from_title")
    assert texts == load_texts(data, "single")
    assert all(t.strip() for t in texts)

    counting["calls"].clear()
    again = run_describe(DescribeConfig(data=str(data), llm=tiny_llm, max_new_tokens=8, batch_size=3))
    assert again["generated"] == 0 and again["cached"] == 4 and counting["calls"] == []

    manifest = json.loads((data / "texts" / "from_title.json").read_text())
    assert manifest["mode"] == "from_title" and manifest["llm"] == tiny_llm
    assert manifest["prompt_template"] == FROM_TITLE_PROMPT
    assert isinstance(manifest["chat_template"], bool)  # whether the prompt went through a chat template
    assert manifest["generation"] == {
        "do_sample": False,
        "max_new_tokens": 8,
        "decoding": "greedy",
        "num_beams": 1,
    }
    assert manifest["count"] == 4 and manifest["complete"] and manifest["created"]
    assert manifest["dtype"] == "float32" and set(counting["dtypes"]) == {torch.float32}  # auto on the CPU
    table = pd.read_parquet(data / "texts" / "from_title.parquet")
    assert list(table.columns) == ["item_id", "text", "prompt_sha256", "source_sha256"]
    assert table["prompt_sha256"].str.len().eq(64).all()

    low = DescribeConfig(data=str(data), llm=tiny_llm, max_new_tokens=8, batch_size=3, dtype="bfloat16")
    assert run_describe(low)["generated"] == 4  # reduced precision changes the text: every key changed
    assert counting["dtypes"][-1] == torch.bfloat16
    assert json.loads((data / "texts" / "from_title.json").read_text())["dtype"] == "bfloat16"

    changed = run_describe(DescribeConfig(data=str(data), llm=tiny_llm, max_new_tokens=5, batch_size=3))
    assert changed["generated"] == 4  # new generation parameters: every key changed
    custom = "#Question: Describe {title_year} in one sentence.\n#Answer:"
    assert (
        run_describe(DescribeConfig(data=str(data), llm=tiny_llm, max_new_tokens=5, prompt=custom))[
            "generated"
        ]
        == 4
    )


def test_texts_of_the_earlier_ke_prompt_are_stale(tmp_path, tiny_llm, counting):
    """KE texts generated with llmrec's earlier prompt (Fig. 9 plus a "Genres:" line) are refused by the
    models and regenerated by 'llmrec describe', never silently reused."""
    data = items_dataset(tmp_path / "movies", MOVIES)
    old = OLD_FROM_TITLE_PROMPTS[0]
    run_describe(
        DescribeConfig(data=str(data), llm=tiny_llm, max_new_tokens=4, prompt=old, name="from_title")
    )
    manifest = data / "texts" / "from_title.json"
    record = json.loads(manifest.read_text())
    record["config"]["prompt"] = None  # as the earlier version wrote it: its built-in template
    manifest.write_text(json.dumps(record))
    with pytest.raises(LlmrecError, match="earlier KE prompt"):
        load_texts(data, "from_title")
    counting["calls"].clear()
    again = run_describe(DescribeConfig(data=str(data), llm=tiny_llm, max_new_tokens=4))
    assert again["generated"] == 4 and again["cached"] == 0  # every key changed with the prompt
    assert json.loads(manifest.read_text())["prompt_template"] == FROM_TITLE_PROMPT
    assert len(load_texts(data, "from_title")) == 4


def test_ke_prompt_says_the_datasets_item_noun(tmp_path, tiny_llm):
    """Regression: Fig. 9's prompt said "movie" on every dataset; it says the importer's stored noun (MIND:
    "news article"), and "movie" where a dataset records none."""
    data = items_dataset(tmp_path / "news", MOVIES[:1])
    meta = json.loads((data / "meta.json").read_text())
    meta["source"]["item_noun"] = "news article"
    (data / "meta.json").write_text(json.dumps(meta))
    run_describe(DescribeConfig(data=str(data), llm=tiny_llm, max_new_tokens=4))
    table = pd.read_parquet(data / "texts" / "from_title.parquet")
    news = (
        "#Question: Generate a concise news article description for the title Toy Story (1995) with around 20 "
        "words, highlighting the main theme and unique elements. \\n#Answer:"
    )
    assert table["source_sha256"].tolist() == [describe.source_key(news)]
    assert load_texts(data, "from_title") == table["text"].tolist()  # the sources check renders it alike
    movies = items_dataset(tmp_path / "movies", MOVIES[:1])
    run_describe(DescribeConfig(data=str(movies), llm=tiny_llm, max_new_tokens=4))
    table = pd.read_parquet(movies / "texts" / "from_title.parquet")
    assert table["source_sha256"].tolist() == [describe.source_key(news.replace("news article", "movie"))]


def test_interrupted_run_resumes(synthetic_dataset, tiny_llm, counting):
    cfg = DescribeConfig(data=str(synthetic_dataset), llm=tiny_llm, max_new_tokens=6, batch_size=16)
    counting["fail_on"] = 2
    with pytest.raises(KeyboardInterrupt):
        run_describe(cfg)
    table = pd.read_parquet(synthetic_dataset / "texts" / "from_title.parquet")  # a valid checkpoint
    assert len(table) == 16 and table["text"].str.len().gt(0).all()
    assert not list((synthetic_dataset / "texts").glob("*.partial*"))
    with pytest.raises(LlmrecError, match="24 of 40 items have no text"):
        load_texts(synthetic_dataset, "from_title")

    counting["fail_on"], counting["calls"] = None, []
    out = run_describe(cfg)
    assert out["generated"] == 24 and out["cached"] == 16 and counting["calls"] == [16, 8]
    resumed = load_texts(synthetic_dataset, "from_title")

    fresh = run_describe(DescribeConfig(**{**vars(cfg), "name": "fresh"}))
    assert fresh["generated"] == 40
    assert resumed == load_texts(synthetic_dataset, "fresh")  # resuming changes nothing


def test_limit_and_load_texts_errors(synthetic_dataset, tiny_llm):
    with pytest.raises(LlmrecError, match="llmrec describe"):
        load_texts(synthetic_dataset, "from_title")
    out = run_describe(DescribeConfig(data=str(synthetic_dataset), llm=tiny_llm, max_new_tokens=4, limit=5))
    assert out["generated"] == 5 and not out["complete"]
    ids = pd.read_parquet(synthetic_dataset / "items.parquet")["item_id"].tolist()
    with pytest.raises(LlmrecError, match=f"first missing item_id: '{ids[5]}'"):
        load_texts(synthetic_dataset, "from_title")
    out = run_describe(DescribeConfig(data=str(synthetic_dataset), llm=tiny_llm, max_new_tokens=4))
    assert out["generated"] == 35 and out["cached"] == 5
    texts = load_texts(synthetic_dataset, "from_title")
    table = pd.read_parquet(synthetic_dataset / "texts" / "from_title.parquet")
    assert table["item_id"].tolist() == ids  # the file is in dataset item order
    assert texts == table["text"].tolist()
    with pytest.raises(LlmrecError, match="unknown field"):
        run_describe(DescribeConfig(data=str(synthetic_dataset), llm=tiny_llm, prompt="About {plot}:"))


def test_summaries_of_generated_descriptions(tmp_path, tiny_llm, monkeypatch):
    """MovieLens has no descriptions: summary mode can summarise the from_title texts instead."""
    data = items_dataset(tmp_path / "movies", MOVIES)
    run_describe(DescribeConfig(data=str(data), llm=tiny_llm, max_new_tokens=6))
    seen: list[str] = []
    real = describe.generate_texts

    def spy(model, tokenizer, prompts, *args):
        seen.extend(prompts)
        return real(model, tokenizer, prompts, *args)

    monkeypatch.setattr(describe, "generate_texts", spy)
    cfg = DescribeConfig(
        data=str(data), llm=tiny_llm, mode="summary", description_texts="from_title", max_new_tokens=6
    )
    assert run_describe(cfg)["generated"] == 4
    for text in load_texts(data, "from_title"):
        assert sum(f"Description: {text}" in p for p in seen) >= 1
    with pytest.raises(ConfigError, match="would read the texts this run is writing"):
        run_describe(DescribeConfig(**{**vars(cfg), "description_texts": "summary"}))


# ----------------------------------------------------------------------------- the real backbone


@pytest.mark.slow
def test_default_backbone_describes_movies(tmp_path):
    data = items_dataset(tmp_path / "ml", MOVIES[:3])
    out = run_describe(DescribeConfig(data=str(data)))
    assert out["generated"] == 3
    texts = load_texts(data, "from_title")
    for t in texts:
        assert 5 <= len(t.split()) <= 80, t
    assert any("toy" in t.lower() for t in texts[:1]), texts

"""The VLM baselines (Rec-GPT4V, UniMP) on a tiny random LLaVA loaded by path through the real code path.

No real VLM weights are reachable here: these tests show the code path runs, counts and caches as it
should; they say nothing about the baselines' quality.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import add_item_images
from llmrec.cli import main
from llmrec.data.dataset import Dataset
from llmrec.errors import ConfigError, LlmrecError
from llmrec.models.base import build_model, load_model
from llmrec.training import fit

RECGPT4V = ["-o", "max_new_tokens=3", "-o", "history_len=3"]


@pytest.fixture
def image_dataset(synthetic_dataset):
    """The synthetic CTR dataset with a picture per item except rows 3, 17 and 29."""
    add_item_images(synthetic_dataset)
    return synthetic_dataset


def _recgpt4v(data, tiny_vlm, **options):
    ds = Dataset(data)
    model = build_model(
        "recgpt4v", {"backbone": {"llm": tiny_vlm}, "max_new_tokens": 3, **options}, ds.n_users, ds.n_items
    )
    fit(model, ds)
    return model, ds


def _count_generations(model) -> list[int]:
    calls: list[int] = []
    generate = model.vlm.generate

    def counted(parts, max_new_tokens):
        calls.append(1)
        return generate(parts, max_new_tokens)

    model.vlm.generate = counted
    return calls


# ----------------------------------------------------------------------------- Rec-GPT4V


def test_recgpt4v_run_gives_auc_and_moves_with_its_dataset(image_dataset, tiny_vlm, tmp_path):
    """`llmrec train recgpt4v` (zero-shot: nothing trained) records its config, log and CTR metrics, and the
    moved run and dataset evaluate to the same numbers."""
    old = tmp_path / "old"
    shutil.copytree(image_dataset, old / "data")
    shutil.copytree(image_dataset.parent / "synthetic-pictures", old / "synthetic-pictures")
    args = ["train", "recgpt4v", "--data", str(old / "data"), "--out", str(old / "run")]
    args += ["-o", f"backbone.llm={tiny_vlm}", *RECGPT4V, "--splits", "test", "--ctr-examples", "12"]
    assert main([*args, "--no-full-ranking", "--ks", "5", "--ranking-users", "3"]) == 0
    run = old / "run"
    assert {"config.json", "metrics.json"} <= {p.name for p in run.iterdir()}
    assert json.loads((run / "config.json").read_text())["options"]["backbone"]["llm"] == tiny_vlm
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert np.isfinite([test["auc"], test["uauc"], test["ndcg@5"]]).all() and test["ctr_examples"] == 12
    new = tmp_path / "elsewhere"
    shutil.copytree(old, new)
    shutil.rmtree(old)
    assert main(["evaluate", str(new / "run")]) == 0
    assert json.loads((new / "run" / "metrics.json").read_text())["test"]["auc"] == test["auc"]


def test_recgpt4v_summary_is_generated_once_per_history(image_dataset, tiny_vlm):
    model, ds = _recgpt4v(image_dataset, tiny_vlm, history_len=3)
    calls = _count_generations(model)
    ctr = ds.ctr("test")
    user = ctr["user_idx"].iloc[0]
    rows = ctr[ctr["user_idx"] == user].head(3)
    history = np.asarray(rows["history"].iloc[0], dtype=np.int64)
    scores = model.score_pairs(np.full(3, user), [history] * 3, rows["target"].to_numpy())
    assert np.isfinite(scores).all() and len(calls) == 1  # three rows of one history: one generation
    split = ds.split("test")  # ranking: each user's candidates share the user's one summary
    ranked = model.score(split.users[:2], split.histories[:2], ds.negatives("test")[:2, :4])
    assert ranked.shape == (2, 4) and np.isfinite(ranked).all()
    assert len(calls) == len(model.summaries) <= 3  # one generation per distinct history, no more
    model.score_pairs(np.full(3, user), [history] * 3, rows["target"].to_numpy())
    assert len(calls) == len(model.summaries)  # all cached: none more


def test_recgpt4v_prompts_hold_the_titles_and_one_image_per_picture(image_dataset, tiny_vlm):
    model, ds = _recgpt4v(image_dataset, tiny_vlm, history_len=4)
    history = np.array([2, 3, 4, 5])  # row 3 has no picture
    parts = model.summary_parts(history)
    text = model.vlm.chat(parts)
    for i in history:
        assert model.titles[i] in text
    assert text.count("<image>") == 3 and f'"{model.titles[3]}" (no image)' in text
    enc = model.vlm.encode(parts)
    assert int((enc["input_ids"] == model.vlm.image_token_id).sum()) == 3 * 16  # 16 tokens per picture
    question = model.vlm.chat(model.question_parts(history, "likes colours", 17))  # image-less target
    assert question.count("<image>") == 0 and "likes colours" in question
    assert model.vlm.chat(model.question_parts(history, "", 6)).count("<image>") == 1
    assert np.isfinite(model.score_pairs(np.zeros(2), [history, history], np.array([17, 6]))).all()


def test_recgpt4v_prompts_say_the_datasets_item_noun(image_dataset, tiny_vlm, tmp_path):
    """Regression: the prompts said "movie" on every dataset; the noun is the dataset's (MIND: "news
    article"), recorded in model.json, "movie" where a dataset records none, and an option still wins."""
    model, _ = _recgpt4v(image_dataset, tiny_vlm)
    assert model.cfg.noun == "movie"  # the synthetic dataset records no noun
    meta_path = image_dataset / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["source"]["item_noun"] = "news article"
    meta_path.write_text(json.dumps(meta))
    model, ds = _recgpt4v(image_dataset, tiny_vlm)
    history = np.array([2, 4])
    assert model.vlm.chat(model.summary_parts(history)).count("news articles") == 2
    question = model.vlm.chat(model.question_parts(history, "", 6))
    assert (
        "The candidate news article:" in question
        and "Will the user enjoy the news article titled" in question
    )
    assert "movie" not in question
    model.save(tmp_path / "model", ds)
    assert json.loads((tmp_path / "model" / "model.json").read_text())["config"]["noun"] == "news article"
    assert _recgpt4v(image_dataset, tiny_vlm, noun="story")[0].cfg.noun == "story"


def test_llmrec_prompts_shows_both_recgpt4v_steps(image_dataset, tiny_vlm, capsys):
    args = ["prompts", "recgpt4v", "--data", str(image_dataset), "-o", f"backbone.llm={tiny_vlm}", *RECGPT4V]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "=== step 1: summary request" in out and "=== step 2: question" in out
    assert out.count("<image>") >= 2 and "3 history items" in out


def test_recgpt4v_escapes_the_image_marker_in_data_text(image_dataset, tiny_vlm):
    model, _ = _recgpt4v(image_dataset, tiny_vlm)
    model.titles[2] = model.vlm.escape("A film about <image> tokens")
    assert model.vlm.chat(model.summary_parts(np.array([2]))).count("<image>") == 1  # its picture only


def test_recgpt4v_refuses_a_text_model_a_missing_vlm_and_a_dataset_without_images(
    image_dataset, synthetic_dataset, tiny_llm, tiny_vlm, tmp_path
):
    with pytest.raises(ConfigError, match="is not an image-text-to-text model .*LlamaConfig"):
        _recgpt4v(image_dataset, tiny_llm)
    with pytest.raises(ConfigError, match="no vision-language model given"):
        _recgpt4v(image_dataset, None)
    with pytest.raises(LlmrecError, match="not found"):
        _recgpt4v(image_dataset, str(tmp_path / "nowhere"))
    bare = tmp_path / "bare"
    shutil.copytree(synthetic_dataset, bare, ignore=shutil.ignore_patterns("images"))
    with pytest.raises(LlmrecError, match="no item of this dataset has one.*llmrec images"):
        _recgpt4v(bare, tiny_vlm)


def test_recgpt4v_saved_model_checks_its_images(image_dataset, tiny_vlm, tmp_path):
    model, ds = _recgpt4v(image_dataset, tiny_vlm)
    model.save(tmp_path / "m", ds)
    split = ds.split("test")
    before = model.score_pairs(split.users[:2], split.histories[:2], split.targets[:2])
    np.testing.assert_allclose(
        load_model(tmp_path / "m").score_pairs(split.users[:2], split.histories[:2], split.targets[:2]),
        before,
        rtol=1e-5,
    )
    from PIL import Image

    Image.new("RGB", (36, 40), (1, 2, 3)).save(model._paths[0])  # another picture for item 0
    with pytest.raises(LlmrecError, match="item images changed"):
        load_model(tmp_path / "m")


# ----------------------------------------------------------------------------- UniMP

UNIMP = {"features": ["image"], "adaptor_hidden": 8, "d_shared": 8, "epochs": 1, "batch_size": 8}
UNIMP |= {"validate": False, "head_epochs": 0}


@pytest.fixture
def unimp_dataset(image_dataset):
    """The pictured dataset plus an IRE image feature (random, 3 rows flagged missing) and a text one."""
    from llmrec.features.store import ids_checksum, save_feature

    ds = Dataset(image_dataset)
    rng = np.random.default_rng(0)
    spec = {"kind": "item", "encoder": "test", "ids_sha256": ids_checksum(ds.items["item_id"].tolist())}
    missing = np.zeros(ds.n_items, dtype=bool)
    missing[[3, 17, 29]] = True
    save_feature(ds.features_dir, "image", rng.normal(size=(ds.n_items, 6)).astype(np.float32), spec, missing)
    save_feature(ds.features_dir, "text", rng.normal(size=(ds.n_items, 5)).astype(np.float32), spec)
    return ds


def test_unimp_prompts_hold_the_vlms_image_tokens_per_pictured_item(unimp_dataset, tiny_vlm):
    ds = unimp_dataset
    model = build_model("unimp", {"backbone": {"llm": tiny_vlm}, **UNIMP}, ds.n_users, ds.n_items)
    assert model.cfg.representation == "vlm" and not model.cfg.ila
    model.attach(ds)
    assert not hasattr(model, "adaptor")  # the VLM's own projector, none of ours
    history = np.array([2, 3, 4])  # row 3 has no picture
    enc = model.build_ire([history])
    image_id = model.backbone.token_ids["<image>"]
    assert int((enc["ids"] == image_id).sum()) == 2 * 16 and enc["visual"].tolist() == [2, 4]
    text = model.backbone.tokenizer.decode(enc["ids"][0][enc["mask"][0].bool()])
    rendered, _ = model.rendered()
    assert all(rendered[i] in text for i in history)
    assert rendered[2] == "{Title: Item 2, Brand: brand2, Category: cat2, Image: " + "<image>" * 16 + "}"
    assert text.count("Brand: ") == 3 and text.count("Category: ") == 3 and text.count("Image: ") == 2
    assert text.count("[REC]") == 1
    # the embeddings at the image tokens are the VLM's own (its vision tower and projector)
    inject = model.inject([enc["visual"]], [enc["cf"]], [1])[0]
    assert inject["<image>"].shape == (32, model.backbone.hidden_size)


def test_unimp_trains_its_ire_head_only_ranks_and_moves(unimp_dataset, tiny_vlm, tmp_path):
    import torch

    from llmrec.eval.evaluator import evaluate_ranking

    ds = unimp_dataset
    torch.manual_seed(0)
    model = build_model("unimp", {"backbone": {"llm": tiny_vlm}, **UNIMP}, ds.n_users, ds.n_items)
    model.attach(ds)
    vlm_before = {k: v.clone() for k, v in model.backbone.model.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.checkpoint_state().items()}
    assert {k.split(".")[0] for k in head_before} == {
        "rec",
        "user_proj",
        "item_proj",
        "state_mean",
        "state_std",
    }
    fit(model, ds)
    after = model.checkpoint_state()
    assert any(not torch.equal(head_before[k], after[k]) for k in head_before)  # the IRE head learned
    for k, v in model.backbone.model.state_dict().items():
        assert torch.equal(v, vlm_before[k]), k  # the VLM is frozen
    metrics, _ = evaluate_ranking(model, ds, "test", ks=(5,), full=False)
    assert 0 <= metrics["ndcg@5"] <= 1
    split = ds.split("test")
    scores = model.score_all(split.users[:3], split.histories[:3])
    model.save(tmp_path / "a" / "model", ds)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    moved = load_model(tmp_path / "b" / "model", data=ds.root)
    np.testing.assert_allclose(
        moved.score_all(split.users[:3], split.histories[:3]), scores, rtol=1e-5, atol=1e-5
    )


def test_unimp_refuses_a_text_model_and_a_dataset_without_pictures(
    unimp_dataset, tiny_llm, tiny_vlm, tmp_path
):
    ds = unimp_dataset
    model = build_model("unimp", {"backbone": {"llm": tiny_llm}, **UNIMP}, ds.n_users, ds.n_items)
    with pytest.raises(ConfigError, match="is not an image-text-to-text model .*LlamaConfig"):
        model.attach(ds)
    model = build_model("unimp", UNIMP, ds.n_users, ds.n_items)  # the default backbone: SmolLM2
    with pytest.raises(ConfigError, match="text-only LM, not a vision-language model; give -o backbone.llm="):
        model.attach(ds)
    bare = tmp_path / "bare"
    shutil.copytree(ds.root, bare, ignore=shutil.ignore_patterns("images"))
    model = build_model("unimp", {"backbone": {"llm": tiny_vlm}, **UNIMP}, ds.n_users, ds.n_items)
    with pytest.raises(LlmrecError, match="representation=vlm .* no item of this dataset has one"):
        model.attach(Dataset(bare))


def test_the_vlm_representation_is_unimp_and_unimp_shows_no_other():
    """I-LLMRec and UniMP share one config: representation=vlm (a VLM's own image tokens) is UniMP's alone,
    and UniMP shows items no other way; each says which model to train instead."""
    with pytest.raises(ConfigError, match=r"illmrec: representation must be one of .*got 'vlm'.*train unimp"):
        build_model("illmrec", {"representation": "vlm"}, 10, 20)
    with pytest.raises(ConfigError, match=r"unimp: representation must be one of \('vlm',\).*train illmrec"):
        build_model("unimp", {"representation": "image"}, 10, 20)

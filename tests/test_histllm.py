"""HistLLM and its CTR baselines: one history token, two-step training, Yes/No scoring, padding, persistence."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import visual_rule_dataset
from llmrec.data.dataset import Dataset
from llmrec.errors import ConfigError, LlmrecError
from llmrec.eval.evaluator import evaluate_ctr
from llmrec.features.store import ids_checksum, save_feature
from llmrec.llm.prompts import ctr_item, ctr_prompt, ctr_target
from llmrec.models.base import build_model, load_model
from llmrec.models.llm.ctr_prompts import binary_codes
from llmrec.training import fit
from llmrec.utils.io import read_json

TINY = {
    "mapper_hidden": 16,
    "encoder_dim": 16,
    "description_texts": None,
    "train_examples": 48,
    "eval_examples": 40,
    "epochs": 1,
    "step1_epochs": 1,
    "binary_bits": 8,
}


@pytest.fixture
def ctr_dataset(synthetic_dataset):
    """The synthetic dataset (ratings alternate 5/2, so CTR rows have both labels) + image and MF features."""
    ds = Dataset(synthetic_dataset)
    rng = np.random.default_rng(0)
    order = ds.items["item_id"].str[1:].astype(int).to_numpy()
    angle = 2 * np.pi * order[:, None] * np.arange(1, 4)[None, :] / ds.n_items  # the item's place on the walk
    image = np.concatenate([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)
    items = {"kind": "item", "encoder": "test", "ids_sha256": ids_checksum(ds.items["item_id"].tolist())}
    users = {"kind": "user", "encoder": "test", "ids_sha256": ids_checksum(ds.users["user_id"].tolist())}
    save_feature(ds.features_dir, "image", image, items)
    save_feature(ds.features_dir, "mf_item", rng.normal(size=(ds.n_items, 8)).astype(np.float32), items)
    save_feature(ds.features_dir, "mf_user", rng.normal(size=(ds.n_users, 8)).astype(np.float32), users)
    return ds


def make(name, ds, tiny_llm, **options):
    opts = {**TINY, **options, "backbone": {"llm": tiny_llm, "lora": True}}
    torch.manual_seed(0)
    return build_model(name, opts, ds.n_users, ds.n_items)


def test_prompts_follow_the_appendix():
    """The prompt functions (every preset's whole prompt is pinned in test_histllm_preset_prompts.py)."""
    tallrec = ctr_prompt([ctr_item("Heat"), ctr_item("Fargo")], ctr_target("Alien"))
    assert tallrec == (
        '#Question: A user has given high ratings to the following movies: "Heat", "Fargo". Leverage the '
        'information to predict whether the user would enjoy the movie titled "Alien" Answer with "Yes" or '
        '"No". \\n#Answer:'
    )  # "\\n" in the source: a backslash and an "n" in the prompt, as the appendix prints it
    collm = ctr_prompt(
        [ctr_item("Heat", image=True)], ctr_target("Alien", image=True), "movie", "[USERID]", "[ITEMID]"
    )
    assert '"Heat"[VISUAL]' in collm and "encoded in the feature [USERID]" in collm
    assert 'titled "Alien"[VISUAL] with the feature [ITEMID]?' in collm
    desc = ctr_prompt([ctr_item("Heat", "A heist.")], ctr_target("Alien", "Space horror."))
    assert "movies: A heist.." in desc and "with the description as follows: Space horror." in desc


def test_history_becomes_exactly_one_token(ctr_dataset, tiny_llm):
    model = make("histllm", ctr_dataset, tiny_llm)
    model.attach(ctr_dataset)
    histories = [np.arange(1), np.arange(3), np.arange(5), np.array([], dtype=np.int64)]
    batch = model.prompts(np.zeros(4, dtype=np.int64), histories, np.array([7, 7, 7, 7]))
    hist_id = model.backbone.token_ids["[HIST]"]
    assert ((batch["ids"] == hist_id).sum(1) == 1).all()
    assert batch["mask"].sum(1).unique().numel() == 1  # prompt length does not grow with the history
    encoded = model.encode_histories(batch["hist"])
    assert encoded.shape == (4, model.backbone.hidden_size)
    # the token depends on the history (it is not a constant)
    assert not torch.allclose(encoded[0], encoded[2])
    inline = make("histllm", ctr_dataset, tiny_llm, history="inline")
    inline.attach(ctr_dataset)
    long = inline.prompts(np.zeros(2, dtype=np.int64), [np.arange(1), np.arange(5)], np.array([7, 8]))
    assert long["mask"].sum(1)[1] > long["mask"].sum(1)[0]  # w/o UHEM: the prompt grows per item


@pytest.mark.parametrize("history", ["uhem", "inline"])
def test_placeholder_strings_in_item_text_train_and_score(ctr_dataset, tiny_llm, history):
    """Titles and descriptions holding placeholder strings are text: UHEM's item tokens and every prompt hold
    exactly the template's placeholders."""
    items = ctr_dataset.items
    items["title"] = [f"Press [REC] {i} [HIST]" for i in range(len(items))]
    items["description"] = "[VISUAL] [CF] [REC] [HIST] [USERID] [ITEMID] inside"
    model = make("histllm", ctr_dataset, tiny_llm, description_texts=None, history=history)
    model.attach(ctr_dataset)
    tok = model.backbone.token_ids
    if history == "uhem":
        assert not torch.isin(model.item_tokens, torch.tensor(list(tok.values()))).any()
    rows = ctr_dataset.ctr("train").head(4)
    users, targets = rows["user_idx"].to_numpy(), rows["target"].to_numpy()
    histories = [np.asarray(h) for h in rows["history"]]
    for step in (1, 2):
        batch = model.prompts(users, histories, targets, step=step)
        counts = {name: (batch["ids"] == i).sum(1) for name, i in tok.items()}
        n_items = torch.tensor([min(len(h), model.cfg.history_len) for h in histories])
        if step == 1:  # the text-only prompt: no placeholder at all
            assert all(int(c.sum()) == 0 for c in counts.values())
            continue
        assert (counts["[HIST]"] == int(history == "uhem")).all() and (counts["[REC]"] == 0).all()
        assert (
            (counts["[USERID]"] == 1).all()
            and (counts["[ITEMID]"] == 1).all()
            and (counts["[CF]"] == 0).all()
        )
        assert torch.equal(counts["[VISUAL]"], 1 + (n_items if history == "inline" else 0 * n_items))
        batch["labels"] = torch.from_numpy(rows["label"].to_numpy(np.float32))
        model.loss(batch).backward()
    assert np.isfinite(model.score_pairs(users, histories, targets)).all()


def test_inline_items_are_cut_like_uhem_items_and_prompts_fit_the_context(ctr_dataset, tiny_llm, monkeypatch):
    """w/o UHEM writes each item's text cut to the max_text_tokens tokens UHEM encodes (cut once per item),
    and a prompt longer than the LM's context (2048 here) is a clear error."""
    items = ctr_dataset.items
    items["description"] = [
        f"item {i}: " + "a long plot summary of this movie " * 80 for i in range(len(items))
    ]
    uhem = make("histllm", ctr_dataset, tiny_llm, max_text_tokens=8)
    uhem.attach(ctr_dataset)
    inline = make("histllm", ctr_dataset, tiny_llm, max_text_tokens=8, history="inline")
    inline.attach(ctr_dataset)
    tok = inline.backbone.tokenizer
    for i in (0, 7):
        assert inline.descriptions[i] == tok.decode(uhem.item_tokens[i, : int(uhem.item_ntok[i])])
        assert inline.descriptions[i].startswith(f"item {i}: ")
        assert (
            len(tok(inline.descriptions[i], add_special_tokens=False)["input_ids"]) <= 8 + 1
        )  # re-tokenised
    user, history, target = np.zeros(1, dtype=np.int64), [np.arange(5)], np.array([7])
    monkeypatch.setattr(tok, "decode", None)  # prompts reuse the cut texts: nothing is cut per prompt
    cut = int(inline.prompts(user, history, target)["mask"].sum())
    one_token = int(uhem.prompts(user, history, target)["mask"].sum())
    assert cut <= one_token + 5 * (9 + 2)  # [HIST] -> 5 items of <= 9 tokens + separators (whole: ~2,000)
    monkeypatch.undo()
    whole = make("histllm", ctr_dataset, tiny_llm, max_text_tokens=10**4, history="inline")
    whole.attach(ctr_dataset)
    pattern = r"a prompt of \d+ tokens exceeds the context of .* \(2048 tokens\); lower history_len \(5\) or max_text_tokens"
    with pytest.raises(ConfigError, match=pattern):
        whole.prompts(np.zeros(1, dtype=np.int64), [np.arange(5)], np.array([7]))


def test_step2_keeps_lora_bit_identical_and_trains_modules(ctr_dataset, tiny_llm, monkeypatch):
    import llmrec.training.loop

    model = make("histllm", ctr_dataset, tiny_llm)
    snapshots, trained = {}, {}
    loop = llmrec.training.loop.train_stage

    def spy(model, ds, run, stage, *args, **kwargs):
        trained[stage.name] = {n for n, p in model.named_parameters() if p.requires_grad}
        if stage.name == "step2":  # step 1 is over: LoRA as it must stay; modules as they start
            snapshots.update({k: v.clone() for k, v in model.checkpoint_state().items()})
        return loop(model, ds, run, stage, *args, **kwargs)

    monkeypatch.setattr(llmrec.training.loop, "train_stage", spy)
    fit(model, ctr_dataset)
    after = model.checkpoint_state()
    lora = [k for k in after if "lora_" in k]
    modules = [k for k in after if k.startswith(("history_encoder.", "image_mapper.", "cf_mapper."))]
    assert lora and modules
    assert trained == {"step1": set(lora), "step2": set(modules)}  # each step trains exactly its parts
    assert all(torch.equal(after[k], snapshots[k]) for k in lora)
    changed = [k for k in modules if not torch.equal(after[k], snapshots[k])]
    assert {k.split(".")[0] for k in changed} == {"history_encoder", "image_mapper", "cf_mapper"}
    # and step 1 did move LoRA (B starts at zero in peft)
    assert any(after[k].abs().sum() > 0 for k in lora if "lora_B" in k)


class Killed(Exception):
    pass


@pytest.mark.parametrize("killed_in", ["step2 epoch 1", "step2 epoch 2"])
def test_interrupted_run_resumes_at_step2_without_retraining_step1(
    ctr_dataset, tiny_llm, tmp_path, monkeypatch, killed_in
):
    """Killed before step 2 finished an epoch (after step 1's marker) or during its second epoch (after its
    checkpoint): the restarted run loads step 1's LoRA, never trains step 1 again, and ends exactly as a run
    that was never interrupted."""
    from llmrec.models.llm.histllm import HistLLM
    from llmrec.runs import Run

    options = {"epochs": 2, "patience": 5}
    reference = make("histllm", ctr_dataset, tiny_llm, **options)
    fit(reference, ctr_dataset)
    original = HistLLM.train_batches
    epochs = {1: 0, 2: 0}  # epochs started, per step
    kill = [killed_in]

    def batches(self, dataset, rng, step=2):
        epochs[step] += 1
        if f"step{step} epoch {epochs[step]}" in kill:
            raise Killed
        return original(self, dataset, rng, step)

    monkeypatch.setattr(HistLLM, "train_batches", batches)
    model = make("histllm", ctr_dataset, tiny_llm, **options)
    with Run(tmp_path / "run", model.cfg) as run, pytest.raises(Killed):
        fit(model, ctr_dataset, run)
    marker = tmp_path / "run" / "stage-step1.safetensors"
    assert marker.exists() and epochs[1] == 1
    assert (tmp_path / "run" / "checkpoint-step2.pt").exists() == (killed_in == "step2 epoch 2")
    step1_lora = {k: v for k, v in load_file(marker).items() if "lora_" in k}
    assert step1_lora and any(v.abs().sum() > 0 for k, v in step1_lora.items() if "lora_B" in k)

    epochs.update({1: 0, 2: 0})
    kill.clear()
    again = make("histllm", ctr_dataset, tiny_llm, **options)
    with Run(tmp_path / "run", again.cfg) as run:
        fit(again, ctr_dataset, run)
    assert epochs[1] == 0  # step 1 was not run again
    assert epochs[2] == (2 if killed_in == "step2 epoch 1" else 1)  # step 2 went on from its checkpoint
    final, expected = again.checkpoint_state(), reference.checkpoint_state()
    assert all(torch.equal(final[k], v) for k, v in step1_lora.items())  # step 1's LoRA, bit-identical
    assert all(torch.equal(final[k], v) for k, v in expected.items())  # as if never interrupted
    assert [h["epoch"] for h in read_json(tmp_path / "run" / "history-step2.json")] == [1, 2]


def test_frozen_llm_weights_never_change(ctr_dataset, tiny_llm):
    model = make("collm", ctr_dataset, tiny_llm)
    model.attach(ctr_dataset)
    base = {k: v.clone() for k, v in model.backbone.state_dict().items() if "lora_" not in k}
    fit(model, ctr_dataset)
    now = model.backbone.state_dict()
    assert all(torch.equal(now[k], v) for k, v in base.items())


def test_yes_no_ids_come_from_the_tokenizer(ctr_dataset, tiny_llm):
    model = make("tallrec", ctr_dataset, tiny_llm)
    model.attach(ctr_dataset)
    tok = model.backbone.tokenizer
    yes, no = model.answer_ids
    assert yes != no
    assert tok.decode([yes]).strip().startswith("Y") and tok.decode([no]).strip().startswith("N")
    # the chat template ends in a new line: the answer starts without a space
    prompt = model.backbone.chat("q")
    assert (
        tok(prompt + "Yes", add_special_tokens=False)["input_ids"][
            len(tok(prompt, add_special_tokens=False)["input_ids"])
        ]
        == yes
    )


def test_padding_side_cannot_change_a_prediction(ctr_dataset, tiny_llm):
    model = make("collm", ctr_dataset, tiny_llm, image=True)
    model.attach(ctr_dataset)
    model.eval()
    histories = [np.arange(1), np.arange(6), np.arange(3)]
    right = model.prompts(np.array([0, 1, 2]), histories, np.array([5, 9, 12]))
    ids, mask = right["ids"], right["mask"]
    pad = model.backbone.tokenizer.pad_token_id
    left_ids, left_mask = torch.full_like(ids, pad), torch.zeros_like(mask)
    for b in range(len(ids)):
        n = int(mask[b].sum())
        left_ids[b, ids.shape[1] - n :] = ids[b, :n]
        left_mask[b, ids.shape[1] - n :] = 1
    left = {**right, "ids": left_ids, "mask": left_mask}
    with torch.no_grad():
        a, b = model.answer_logits(right), model.answer_logits(left)
    assert torch.allclose(torch.sigmoid(a), torch.sigmoid(b), atol=1e-5)


@pytest.mark.parametrize("encoder", ["gru", "transformer"])
def test_save_load_same_predictions(ctr_dataset, tiny_llm, tmp_path, encoder):
    model = make("histllm", ctr_dataset, tiny_llm, encoder=encoder)
    fit(model, ctr_dataset)
    df = ctr_dataset.ctr("test").head(12)
    args = (df["user_idx"].to_numpy(), list(df["history"]), df["target"].to_numpy())
    before = model.score_pairs(*args)
    model.save(tmp_path / "m")
    np.testing.assert_allclose(load_model(tmp_path / "m").score_pairs(*args), before, atol=1e-6)


def test_step1_is_shared_through_step1_from(ctr_dataset, tiny_llm, tmp_path):
    tallrec = make("tallrec", ctr_dataset, tiny_llm)
    fit(tallrec, ctr_dataset)
    tallrec.save(tmp_path / "tallrec")
    collm = make("collm", ctr_dataset, tiny_llm, step1_from=str(tmp_path / "tallrec"))
    fit(collm, ctr_dataset)
    lora = {k: v for k, v in tallrec.checkpoint_state().items() if "lora_" in k}
    assert all(torch.equal(collm.checkpoint_state()[k], v) for k, v in lora.items())
    binllm = make("binllm", ctr_dataset, tiny_llm, step1_from=str(tmp_path / "tallrec"))
    with pytest.raises(Exception, match="step-1 prompt"):
        fit(binllm, ctr_dataset)


def test_binary_codes_share_one_space():
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(20, 16)), rng.normal(size=(30, 16))
    items[0] = users[0]
    u, i = binary_codes(users, items, 8)
    assert len(u) == 20 and len(i) == 30 and all(len(c) == 8 and set(c) <= {"0", "1"} for c in u + i)
    assert u[0] == i[0]


def test_missing_inputs_are_clear_errors(synthetic_dataset, tiny_llm):
    ds = Dataset(synthetic_dataset)
    model = make("collm", ds, tiny_llm)
    with pytest.raises(Exception, match="mf_user"):
        model.attach(ds)
    model = make("tallrec_image", ds, tiny_llm)
    with pytest.raises(Exception, match="image"):
        model.attach(ds)


@pytest.mark.parametrize("step", [1, 2])
def test_weights_that_diverged_are_a_clear_error_at_either_steps_validation(ctr_dataset, tiny_llm, step):
    """NaN weights make a step's early-stopping validation a one-line error naming the model, the same at
    step 1 (its text-only prompt) as at step 2 (the full one)."""
    from llmrec.training.loop import validate

    model = make("histllm", ctr_dataset, tiny_llm, eval_examples=8)
    model.attach(ctr_dataset)
    stage = model.stages(ctr_dataset)[step - 1]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in stage.trainable:
                p.fill_(float("nan"))
    with pytest.raises(LlmrecError, match="model 'histllm' scored NaN on the valid split"):
        validate(model, ctr_dataset, stage)  # as the trainer validates a stage


@pytest.fixture
def imageless_dataset(ctr_dataset):
    """``ctr_dataset`` with every third item image-less, as 'llmrec images --missing keep' leaves a catalog
    with fewer posters than items: a zero row in the image feature, flagged in its missing mask."""
    ds = ctr_dataset
    image = np.load(ds.features_dir / "image.npy")
    missing = np.arange(ds.n_items) % 3 == 0
    image[missing] = 0.0
    spec = {"kind": "item", "encoder": "test", "ids_sha256": ids_checksum(ds.items["item_id"].tolist())}
    save_feature(ds.features_dir, "image", image, spec, missing=missing)
    return ds, missing


@pytest.mark.parametrize("name", ["histllm", "tallrec_image"])
def test_an_imageless_item_gets_the_learned_no_image_token(imageless_dataset, tiny_llm, name):
    """VMA gives an image-less item the learned 'no image' vector, wherever its image token goes (UHEM's
    sequence or an inline [VISUAL]; the target's [VISUAL]), and the loss's gradient reaches it."""
    ds, missing = imageless_dataset
    model = make(name, ds, tiny_llm)
    model.attach(ds)
    tokens = model.visual_tokens(torch.arange(ds.n_items))  # (N, d)
    assert torch.equal(tokens[missing], model.no_image.expand(int(missing.sum()), -1))
    assert torch.allclose(tokens[~missing], model.image_mapper(model.feat_image[~missing]))
    assert "no_image" in model.step_parameters(2) and "no_image" not in model.step_parameters(1)
    no, yes = np.flatnonzero(missing), np.flatnonzero(~missing)
    for history, target in (([no[1], yes[0]], yes[1]), ([yes[0], yes[2]], no[2])):  # history, then target
        model.zero_grad()
        batch = model.prompts(np.array([0]), [np.array(history)], np.array([target]))
        model.loss({**batch, "labels": torch.ones(1)}).backward()
        assert model.no_image.grad is not None and model.no_image.grad.abs().sum() > 0, (history, target)
    model.zero_grad()
    batch = model.prompts(np.array([0]), [yes[:2]], yes[2:3])  # every image present: the vector is not read
    model.loss({**batch, "labels": torch.ones(1)}).backward()
    assert model.no_image.grad is None or not model.no_image.grad.any()


def test_a_dataset_with_imageless_items_trains_scores_and_reloads(imageless_dataset, tiny_llm, tmp_path):
    ds, missing = imageless_dataset
    model = make("histllm", ds, tiny_llm)
    model.attach(ds)
    start = model.no_image.detach().clone()
    fit(model, ds)
    assert not torch.equal(model.no_image.detach(), start)  # step 2 trained it
    metrics, _ = evaluate_ctr(model, ds, "test")
    assert np.isfinite(metrics["auc"])
    df = ds.ctr("test").head(12)
    args = (df["user_idx"].to_numpy(), list(df["history"]), df["target"].to_numpy())
    assert missing[args[2]].any()  # image-less targets among the scored rows
    before = model.score_pairs(*args)
    assert np.isfinite(before).all()
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert torch.equal(loaded.no_image, model.no_image)
    np.testing.assert_allclose(loaded.score_pairs(*args), before, atol=1e-6)


def test_a_model_saved_before_the_no_image_token_loads_as_it_was_trained(
    imageless_dataset, tiny_llm, tmp_path
):
    """Models saved before ``missing_image`` mapped the zero feature of an image-less item (no weight for a
    'no image' token): they load with ``missing_image=zero`` and score as before."""
    from llmrec.utils.io import write_json_atomic

    ds, _ = imageless_dataset
    model = make("histllm", ds, tiny_llm, missing_image="zero")
    fit(model, ds)
    assert model.no_image is None
    df = ds.ctr("test").head(8)
    args = (df["user_idx"].to_numpy(), list(df["history"]), df["target"].to_numpy())
    before = model.score_pairs(*args)
    model.save(tmp_path / "m")
    for name in ("sources.json", "model.json"):  # as an older llmrec wrote them
        path = tmp_path / "m" / name
        record = read_json(path)
        record.pop("missing_image", None)
        record.get("config", {}).pop("missing_image", None)
        write_json_atomic(path, record)
    loaded = load_model(tmp_path / "m")
    assert loaded.cfg.missing_image == "zero" and loaded.no_image is None
    np.testing.assert_allclose(loaded.score_pairs(*args), before, atol=1e-6)


@pytest.fixture
def parity_dataset(tmp_path):
    """Users like exactly the even items (rating 5) and dislike the odd ones (rating 2): the label is visible
    only in the target's picture (its parity): every item has the same title and description."""
    rng = np.random.default_rng(1)
    items = [  # text tells items apart not
        {"item_id": f"i{i:03d}", "title": "Item", "description": "A product"} for i in range(40)
    ]
    rows = [
        {
            "user_id": f"u{u}",
            "item_id": f"i{i:03d}",
            "timestamp": 1000 + 10 * t + u,
            "rating": 5.0 if i % 2 == 0 else 2.0,
        }
        for u in range(30)
        for t, i in enumerate(rng.choice(40, size=12, replace=False))
    ]
    ds, _ = visual_rule_dataset(tmp_path / "parity", items, rows, 2, rng)
    return ds


def test_histllm_learns_through_its_visual_tokens(parity_dataset, tiny_llm):
    ds = parity_dataset
    model = make(
        "histllm", ds, tiny_llm, cf="none", train_examples=None, epochs=6, lr=3e-3, patience=6, step1_epochs=0
    )
    fit(model, ds)
    metrics, _ = evaluate_ctr(model, ds, "test")
    blind = make(
        "histllm",
        ds,
        tiny_llm,
        cf="none",
        train_examples=None,
        epochs=6,
        lr=3e-3,
        patience=6,
        step1_epochs=0,
        image=False,
    )
    fit(blind, ds)
    control, _ = evaluate_ctr(blind, ds, "test")
    assert metrics["auc"] > 0.9 and control["auc"] < 0.75, (metrics, control)


def test_ctr_efficiency_command_times_both_variants(ctr_dataset, tiny_llm, tmp_path, monkeypatch):
    from llmrec.experiments.ctr import CtrEfficiencyConfig, run_ctr_efficiency
    from llmrec.utils import timing

    synced = []  # every timed span waits for the device on both ends
    monkeypatch.setattr(timing, "synchronize", lambda device: synced.append(str(device)))

    cfg = CtrEfficiencyConfig(
        data=[str(ctr_dataset.root)],
        llm=tiny_llm,
        lengths=[2, 4],
        measure="throughput",
        examples=8,
        train_steps=1,
        batch_size=4,
        options={"mapper_hidden": 16, "encoder_dim": 16, "description_texts": None},
        ranking=False,  # timed in test_shared_prefix
        out=str(tmp_path / "eff"),
    )
    r = run_ctr_efficiency(cfg)
    by = {(p["history_items"], p["uhem"]): p for p in r["points"]}
    assert set(by) == {(2, True), (2, False), (4, True), (4, False)}
    assert by[(4, True)]["prompt_tokens"] == by[(2, True)]["prompt_tokens"]  # one token whatever the length
    assert by[(4, False)]["prompt_tokens"] > by[(2, False)]["prompt_tokens"] > by[(2, True)]["prompt_tokens"]
    assert all(p["inference_s_per_100"] > 0 and p["train_s_per_100"] > 0 for p in r["points"])
    # per point: inference (start, end), the warm-up step (start only), the timed step (start, end)
    assert synced == ["cpu"] * 4 * (2 + 1 + 2)
    assert {"ctr_efficiency.json", "ctr_efficiency.md", "ctr_throughput.png"} <= {
        f.name for f in (tmp_path / "eff").iterdir()
    }


def test_history_sweep_trains_each_point_once(ctr_dataset, tiny_llm, tmp_path):
    from llmrec.experiments.ctr import HistorySweepConfig, run_history_sweep

    cfg = HistorySweepConfig(
        data=str(ctr_dataset.root),
        models=["tallrec", "histllm"],
        lengths=[1, 3],
        options={
            **TINY,
            "backbone": {"llm": tiny_llm, "lora": True},
            "train_examples": 16,
            "eval_examples": 16,
        },
        ctr_examples=20,
        out=str(tmp_path / "sweep"),
    )
    r = run_history_sweep(cfg)
    assert [(p["model"], p["history_items"]) for p in r["points"]] == [
        ("tallrec", 1),
        ("tallrec", 3),
        ("histllm", 1),
        ("histllm", 3),
    ]
    saved = read_json(tmp_path / "sweep" / "histllm-n3" / "config.json")
    assert saved["options"]["history_len"] == 3
    assert saved["options"]["step1_from"].endswith("tallrec-n3")  # step 1 = TALLRec at the same length
    stamp = (tmp_path / "sweep" / "tallrec-n1" / "metrics.json").stat().st_mtime
    run_history_sweep(cfg)  # finished points are not retrained
    assert (tmp_path / "sweep" / "tallrec-n1" / "metrics.json").stat().st_mtime == stamp
    assert (tmp_path / "sweep" / "history_sweep.png").exists()
    # a point interrupted after training holds only the training record: the sweep evaluates it, no KeyError
    (tmp_path / "sweep" / "histllm-n1" / "metrics.json").write_text('{"train": {"epochs": 1}}')
    again = run_history_sweep(cfg)
    assert again["points"] == r["points"]


def test_history_sweep_seeds_run_each_point_per_seed(ctr_dataset, tiny_llm, tmp_path):
    from llmrec.experiments.ctr import HistorySweepConfig, format_history_sweep, run_history_sweep

    cfg = HistorySweepConfig(
        data=str(ctr_dataset.root),
        models=["tallrec", "histllm"],
        lengths=[2],
        options={
            **TINY,
            "backbone": {"llm": tiny_llm, "lora": True},
            "train_examples": 8,
            "eval_examples": 8,
        },
        ctr_examples=20,
        seeds=[3, 5],
        out=str(tmp_path / "sweep"),
    )
    r = run_history_sweep(cfg)
    for seed in (3, 5):
        saved = read_json(tmp_path / "sweep" / "histllm-n2" / f"seed-{seed}" / "config.json")
        assert saved["seed"] == seed
        assert saved["options"]["step1_from"].endswith(f"tallrec-n2/seed-{seed}")  # step 1 of the same seed
    per_seed = [
        read_json(tmp_path / "sweep" / "tallrec-n2" / f"seed-{s}" / "metrics.json")["test"] for s in (3, 5)
    ]
    point = r["points"][0]
    assert point["seeds"] == 2
    assert point["auc"] == pytest.approx(np.mean([m["auc"] for m in per_seed]))
    assert point["auc_std"] == pytest.approx(np.std([m["auc"] for m in per_seed], ddof=1))
    assert f"{point['auc']:.4f} ± {point['auc_std']:.4f}" in format_history_sweep(r)
    with pytest.raises(ConfigError, match="distinct"):
        HistorySweepConfig(seeds=[1, 1])


@pytest.mark.slow
def test_default_backbone_on_movielens(tmp_path):
    """SmolLM2 + MovieLens-100K CTR rows: Yes/No resolve to the words, the TALLRec prompt reads as in A.1."""
    from llmrec.data.processing import PrepareConfig, prepare

    prepare(PrepareConfig(dataset="ml-100k", out=str(tmp_path / "ml")))
    ds = Dataset(tmp_path / "ml")
    model = build_model("tallrec", {}, ds.n_users, ds.n_items)
    model.attach(ds)
    tok = model.backbone.tokenizer
    assert [tok.decode([i]) for i in model.answer_ids] == ["Yes", "No"]
    df = ds.ctr("test").head(16)
    batch = model.prompts(df["user_idx"].to_numpy(), list(df["history"]), df["target"].to_numpy())
    text = tok.decode(batch["ids"][0][batch["mask"][0].bool()])
    assert "#Question: A user has given high ratings to the following movies: " in text
    assert text.rstrip().endswith("<|im_start|>assistant")
    scores = model.score_pairs(df["user_idx"].to_numpy(), list(df["history"]), df["target"].to_numpy())
    assert scores.shape == (16,) and np.isfinite(scores).all() and scores.std() > 0

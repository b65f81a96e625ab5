"""I-LLMRec's quality bar with a tiny random backbone (hidden 32, 2 layers)."""

import numpy as np
import pytest
import torch

from conftest import visual_rule_dataset
from llmrec.data.dataset import Dataset
from llmrec.errors import ConfigError, LlmrecError
from llmrec.features.store import ids_checksum, save_feature
from llmrec.llm.backbone import Backbone, BackboneConfig
from llmrec.llm.prompts import ItemText, escape_placeholders, ila_answer, ire_prompt, render_item
from llmrec.models.base import build_model, load_model
from llmrec.training import fit

SMALL = {"adaptor_hidden": 16, "d_shared": 8, "batch_size": 4, "epochs": 1, "eval_users": 8}


@pytest.fixture
def ill_dataset(synthetic_dataset):
    ds = Dataset(synthetic_dataset)
    ids = ids_checksum(ds.items["item_id"].tolist())
    rng = np.random.default_rng(0)
    for name, d in (("image", 8), ("text", 16), ("sasrec_item", 6)):
        save_feature(
            ds.features_dir,
            name,
            rng.normal(size=(ds.n_items, d)).astype(np.float32),
            {"kind": "item", "ids_sha256": ids},
        )
    return ds


def _model(ds, tiny_llm, **kw):
    torch.manual_seed(0)
    opts = {**SMALL, "backbone": {"llm": tiny_llm, **kw.pop("backbone", {})}, **kw}
    m = build_model("illmrec", opts, ds.n_users, ds.n_items)
    m.attach(ds)
    return m


def test_official_item_and_prompt_text():
    item = ItemText(title="Red {Shoe}", brand="Acme", category="Shoes", description="Light.", has_image=True)
    assert render_item(item, "image") == "{Title: Red Shoe, Visual representation: [VISUAL]}"
    assert render_item(item, "attribute") == "{Title: Red Shoe, Brand: Acme, Category: Shoes}"
    assert (
        render_item(item, "image_description")
        == "{Title: Red Shoe, Visual representation: [VISUAL], Description: Light.}"
    )
    assert (
        render_item(ItemText(title="X", description="D", has_image=False), "image")
        == "{Title: X, Description: D}"
    )
    assert render_item(item, "cf") == "{Title: Red Shoe, Item embedding: [CF]}"
    prompt = ire_prompt(["{Title: A}", "{Title: B}"])
    assert prompt.startswith(
        "Your job is to recommend a suitable next item based on a user's interacted items. This user has chronologically interacted with following items: [{Title: A}, {Title: B}], where each"
    )
    assert prompt.endswith("generate a recommendation token for the next item to be consumed: [REC]")
    assert ila_answer("brand", "") == "The brand of the next item to be consumed is 'Unknown'"


def test_placeholder_strings_in_data_are_escaped():
    assert escape_placeholders("Press [REC] then [VISUAL]; [Blu-ray] [rec]") == (
        "Press (REC) then (VISUAL); [Blu-ray] [rec]"
    )
    assert escape_placeholders(escape_placeholders("[HIST]")) == "(HIST)"
    item = ItemText(title="[REC] {Deck}", brand="[CF]", category="[HIST]", description="[USERID] [ITEMID]")
    assert render_item(item, "attribute") == "{Title: (REC) Deck, Brand: (CF), Category: (HIST)}"
    assert render_item(item, "image_description") == (
        "{Title: (REC) Deck, Visual representation: [VISUAL], Description: (USERID) (ITEMID)}"
    )
    assert ila_answer("title", "[VISUAL] x") == "The title of the next item to be consumed is '(VISUAL) x'"


def test_placeholder_strings_in_item_text_train_and_score(ill_dataset, tiny_llm):
    """Item data holding placeholder strings is text: each prompt holds exactly the template's placeholders."""
    items = ill_dataset.items
    items["title"] = [f"Press [REC] {i} [VISUAL]" for i in range(len(items))]
    items["description"] = "[VISUAL] [CF] [REC] [HIST] [USERID] [ITEMID] inside"
    items["brand"], items["category"] = "[REC]", "[CF]"
    m = _model(ill_dataset, tiny_llm, representation="image_description")
    batch = next(m.train_batches(ill_dataset, np.random.default_rng(0)))
    tok = m.backbone.token_ids
    assert ((batch["ire_ids"] == tok["[REC]"]).sum(1) == 1).all()
    assert int((batch["ire_ids"] == tok["[VISUAL]"]).sum()) == len(batch["ire_visual"])
    assert int((batch["ila_ids"] == tok["[VISUAL]"]).sum()) == len(batch["ila_visual"])
    for name in ("[CF]", "[HIST]", "[USERID]", "[ITEMID]"):
        assert not (batch["ire_ids"] == tok[name]).any() and not (batch["ila_ids"] == tok[name]).any()
    assert not (batch["ila_ids"] == tok["[REC]"]).any()
    m.loss(batch).backward()
    scores = m.score_all(np.arange(2), ill_dataset.split("test").histories[:2])
    assert np.isfinite(scores).all()


def test_placeholder_count_mismatch_raises_and_injection_lands(tiny_llm):
    bb = Backbone(BackboneConfig(llm=tiny_llm))
    enc = bb.tokenize(["a [VISUAL] b [VISUAL]", "[VISUAL] c"])
    ids = enc["input_ids"]
    d = bb.hidden_size
    with pytest.raises(ValueError, match="3 \\[VISUAL\\] placeholder\\(s\\) in the batch but 2"):
        bb.embed(ids, {"[VISUAL]": torch.zeros(2, d)})
    with pytest.raises(ValueError, match="no embeddings given"):
        bb.embed(ids)
    values = torch.randn(3, d)
    out = bb.embed(ids, {"[VISUAL]": values})
    expected = bb.model.get_input_embeddings()(
        ids.clamp(max=bb.model.get_input_embeddings().num_embeddings - 1)
    ).clone()
    positions = (ids == bb.token_ids["[VISUAL]"]).nonzero().tolist()
    for k, (b, t) in enumerate(positions):  # row-major order
        expected[b, t] = values[k]
    torch.testing.assert_close(out, expected)


def test_trains_adaptor_and_rec_and_keeps_backbone_bit_identical(ill_dataset, tiny_llm):
    m = _model(ill_dataset, tiny_llm)
    before = {k: v.clone() for k, v in m.backbone.model.state_dict().items()}
    rec_before = m.rec.detach().clone()
    batch = next(m.train_batches(ill_dataset, np.random.default_rng(0)))
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = m.loss(batch)
        opt.zero_grad()
        loss.backward()
        assert m.rec.grad is not None and m.rec.grad.abs().sum() > 0
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.adaptor.parameters())
        opt.step()
    assert not torch.equal(m.rec.detach(), rec_before)
    for k, v in m.backbone.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_lora_trains_only_adapters(ill_dataset, tiny_llm):
    m = _model(ill_dataset, tiny_llm, backbone={"lora": True, "lora_targets": ["q_proj", "v_proj"]})
    base = {k: v.clone() for k, v in m.backbone.model.state_dict().items() if "lora_" not in k}
    lora = {k: v.clone() for k, v in m.backbone.model.state_dict().items() if "lora_" in k}
    assert lora
    batch = next(m.train_batches(ill_dataset, np.random.default_rng(0)))
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        m.loss(batch).backward()
        opt.step()
    state = m.backbone.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base.items())
    assert any(not torch.equal(state[k], v) for k, v in lora.items())


def test_ila_labels_cover_only_the_answer(ill_dataset, tiny_llm):
    m = _model(ill_dataset, tiny_llm, ila_fields=["brand"])
    hist, target = [np.array([0, 1, 2])], np.array([3])
    ila = m.build_ila(hist, target, np.random.default_rng(0))
    tok = m.backbone.tokenizer
    labelled = ila["labels"][0][ila["labels"][0] != -100]
    expected = tok(ila_answer("brand", m._texts[3].brand) + tok.eos_token, add_special_tokens=False)[
        "input_ids"
    ]
    assert labelled.tolist() == expected
    # the labelled span is the end of the sequence, right before padding
    n = int(ila["mask"][0].sum())
    assert ila["ids"][0][n - len(expected) : n].tolist() == expected
    assert int(ila["visual"].numel()) == 3


@pytest.mark.timeout(30)
def test_training_batch_for_a_user_who_has_seen_every_item_finishes(ill_dataset, tiny_llm):
    """No unseen item is left for user 0: the batch is built (its negative is any item), it does not hang."""
    from types import SimpleNamespace

    m = _model(ill_dataset, tiny_llm, batch_size=2, ila=False)
    seqs = [np.random.default_rng(0).permutation(ill_dataset.n_items), np.arange(5)]
    batch = next(m.train_batches(SimpleNamespace(train_sequences=seqs), np.random.default_rng(0)))
    assert batch["negative"].shape == (2,) and int(batch["negative"].min()) >= 0
    assert int(batch["negative"].max()) < ill_dataset.n_items
    assert torch.isfinite(m.loss(batch))


def test_prompts_never_exceed_the_llm_context(ill_dataset, tiny_llm):
    """max_prompt_tokens above the LM's context (2048 here): histories are still cut to fit the context."""
    items = ill_dataset.items
    items["description"] = [
        f"item {i} " + "a long plot summary of this thing " * 60 for i in range(len(items))
    ]
    m = _model(
        ill_dataset,
        tiny_llm,
        representation="description",
        max_prompt_tokens=10**6,
        max_description_chars=10**6,
        ila_fields=["title"],
    )
    context = m.backbone.model.config.max_position_embeddings  # 2048; the tokenizer sets no limit
    _, lengths = m.rendered()
    hist = [np.arange(12)]
    assert lengths[hist[0]].sum() > context  # the whole history would not fit
    ire = m.build_ire(hist)
    ila = m.build_ila(hist, np.array([20]), np.random.default_rng(0))
    assert context - lengths.max() < int(ire["mask"].sum()) <= context  # as many items as fit
    assert int(ila["mask"].sum()) <= context
    m.backbone.context_length = 20  # not even the instruction fits: a clear error, not a cut prompt
    with pytest.raises(ConfigError, match=r"a prompt of \d+ tokens exceeds the context of .* \(20 tokens\)"):
        m.build_ire(hist)


@pytest.mark.parametrize("representation", ["image", "attribute", "description"])
def test_prompts_keep_to_max_prompt_tokens_exactly(ill_dataset, tiny_llm, representation):
    """Regression: the cut summed per-item token counts, and BPE merges across items let a prompt overshoot
    max_prompt_tokens by about a token per item. Now every prompt fits, holding as many recent items as do."""
    m = _model(ill_dataset, tiny_llm, representation=representation)
    hist = np.arange(12)
    full = int(m.build_ire([hist])["mask"].sum())
    empty = int(m.build_ire([hist[:0]])["mask"].sum())
    for budget in range(empty, full + 2, 3):
        with m.switched(max_prompt_tokens=budget):
            ids, mask = (m.build_ire([hist])[k][0] for k in ("ids", "mask"))
        assert int(mask.sum()) <= budget
        kept = m.backbone.tokenizer.decode(ids[mask.bool()]).count("{Title: ")
        longer = m.frame(ire_prompt(m._prompt_parts(hist[12 - kept - 1 :])[0]), "ire")
        assert kept == 12 or m.backbone.count_tokens(longer) > budget  # one more item would not fit


def test_context_budget_drops_oldest(ill_dataset, tiny_llm):
    m = _model(ill_dataset, tiny_llm, representation="description")
    _, lengths = m.rendered()
    hist = np.arange(10)
    kept = m.fit_history(hist, int(lengths[7:10].sum()))
    assert kept.tolist() == [7, 8, 9]
    assert m.fit_history(hist, 10**6).tolist() == list(range(10))


def test_recommendations_are_catalog_items_and_save_load(ill_dataset, tiny_llm, tmp_path):
    from llmrec.api import Model

    torch.manual_seed(0)
    m = build_model(
        "illmrec", {**SMALL, "backbone": {"llm": tiny_llm}}, ill_dataset.n_users, ill_dataset.n_items
    )
    fit(m, ill_dataset)
    hist = ill_dataset.split("test").histories[:3]
    scores = m.score_all(np.arange(3), hist)
    assert scores.shape == (3, ill_dataset.n_items) and np.isfinite(scores).all()
    m.save(tmp_path / "model")
    again = load_model(tmp_path / "model")
    np.testing.assert_allclose(again.score_all(np.arange(3), hist), scores, rtol=1e-5, atol=1e-6)
    recs = Model(again, ill_dataset, tmp_path).recommend(
        histories=[ill_dataset.items["item_id"].iloc[[0, 1, 2]].tolist()], k=5
    )
    assert len(recs) == 5 and set(recs["item_id"]) <= set(ill_dataset.items["item_id"])
    assert not set(recs["item_id"]) & set(ill_dataset.items["item_id"].iloc[[0, 1, 2]])


def test_removed_rec_norm_loads_only_as_false(ill_dataset, tiny_llm, tmp_path):
    """rec_norm (a BatchNorm of the [REC] state) is gone; a model saved with rec_norm: false (every I-LLMRec
    model.json written before the removal) still loads, one saved with rec_norm: true is a clear error."""
    import json

    m = _model(ill_dataset, tiny_llm)
    assert not any("rec_norm" in k for k in m.state_dict()) and not hasattr(m, "rec_norm")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['rec_norm'\]"):
        build_model("illmrec", {"rec_norm": False}, ill_dataset.n_users, ill_dataset.n_items)
    m.save(tmp_path / "model")
    path = tmp_path / "model" / "model.json"
    info = json.loads(path.read_text())
    path.write_text(json.dumps({**info, "config": {**info["config"], "rec_norm": False}}))
    again = load_model(tmp_path / "model")
    hist = ill_dataset.split("test").histories[:2]
    np.testing.assert_allclose(
        again.score_all(np.arange(2), hist), m.score_all(np.arange(2), hist), rtol=1e-5
    )
    path.write_text(json.dumps({**info, "config": {**info["config"], "rec_norm": True}}))
    with pytest.raises(LlmrecError, match="rec_norm=True, which this version no longer has"):
        load_model(tmp_path / "model")


def test_missing_images_fall_back_to_text(ill_dataset, tiny_llm):
    m = _model(ill_dataset, tiny_llm, missing_image_fraction=0.5, representation="image")
    assert int((~m.has_image).sum()) == 20
    texts, _ = m.rendered()
    no_image = int(np.flatnonzero(~m.has_image.numpy())[0])
    assert "[VISUAL]" not in texts[no_image] and "Description:" in texts[no_image]
    assert "image_fallback" in m.item_proj
    vec = m.item_vectors("image", torch.tensor([no_image]))
    torch.testing.assert_close(vec, m.item_proj["image_fallback"](m.feat_text[[no_image]]))


def test_ablation_switches_build(ill_dataset, tiny_llm):
    for kw in (
        {"features": ["cf"], "representation": "cf"},
        {"features": ["text"], "ila": False, "representation": "attribute"},
    ):
        m = _model(ill_dataset, tiny_llm, **kw)
        batch = next(m.train_batches(ill_dataset, np.random.default_rng(0)))
        assert torch.isfinite(m.loss(batch))


@pytest.mark.parametrize("training", ["end2end", "two_stage"])
def test_projectors_alone_train_on_cached_states(ill_dataset, tiny_llm, tmp_path, monkeypatch, training):
    """The projectors-alone stage (two_stage's stage 2; end2end + head_epochs): only the projectors change,
    and the LLM sees each cached training window and each validation prompt once over all its epochs."""
    import llmrec.training.loop
    from llmrec.runs import Run

    opts = {"training": training, "epochs": 1, "stage1_epochs": 1, "head_epochs": 3, "head_windows": 2}
    m = _model(ill_dataset, tiny_llm, **opts, score_batch_size=4)
    first: dict = {}
    calls: list[int] = []
    trained: dict = {}
    loop = llmrec.training.loop.train_stage

    def spy(model, ds, run, stage, *args, **kwargs):
        trained[stage.name] = {n for n, p in model.named_parameters() if p.requires_grad}
        if stage.name == "head":  # the first stage is over: keep its weights, count LLM prompts from now on
            first.update(model.checkpoint_state())
            many = model.backbone.hidden_many  # every LLM pass of I-LLMRec, prefix cached or not
            monkeypatch.setattr(
                model.backbone,
                "hidden_many",
                lambda prompts, *a, **kw: calls.append(len(prompts[0][0])) or many(prompts, *a, **kw),
            )
        return loop(model, ds, run, stage, *args, **kwargs)

    monkeypatch.setattr(llmrec.training.loop, "train_stage", spy)
    with Run(tmp_path / "run", m.cfg) as run:
        fit(m, ill_dataset, run)
    name = "ila" if training == "two_stage" else "end2end"
    assert (run.root / f"stage-{name}.safetensors").exists() and (run.root / "history-head.json").exists()
    assert sum(calls) == m.num_train_users(ill_dataset) * 2 + m.cfg.eval_users
    final = m.checkpoint_state()
    assert set(final) == set(first) and "rec" in final and any(k.startswith("adaptor.") for k in final)
    projectors = [k for k in final if k.startswith(("user_proj.", "item_proj."))]
    assert trained["head"] == set(projectors)  # the projectors alone, exactly
    assert trained[name] == m._trainable - ({"rec", *projectors} if name == "ila" else set())
    assert any(not torch.equal(final[k], first[k]) for k in projectors)
    statistics = ["state_mean", "state_std"]  # set from the cached states: a fixed standardisation
    assert all(torch.equal(final[k], first[k]) for k in set(final) - set(projectors) - set(statistics))
    assert not torch.equal(final["state_std"], torch.ones_like(final["state_std"]))
    assert all(p.requires_grad for n, p in m.named_parameters() if n in m._trainable)
    hist = ill_dataset.split("test").histories[:3]
    enc = m.build_ire([np.asarray(h)[-m.cfg.test_history :] for h in hist])
    with torch.no_grad():
        raw = m.raw_states(enc["ids"], enc["mask"], enc["visual"], enc["cf"])
    states = torch.from_numpy(m.user_representations(hist))  # what the projectors read
    torch.testing.assert_close(states, (raw - final["state_mean"]) / final["state_std"])
    m.save(tmp_path / "model")
    again = load_model(tmp_path / "model")
    np.testing.assert_allclose(
        again.score_all(np.arange(3), hist), m.score_all(np.arange(3), hist), rtol=1e-5
    )


@pytest.mark.parametrize("training", ["end2end", "two_stage"])
def test_interrupted_projectors_stage_resumes_after_the_first_stage(
    ill_dataset, tiny_llm, tmp_path, monkeypatch, training
):
    """stage-<first>.safetensors marks the first stage done: a restarted run goes straight to the
    projectors, and ends exactly as a run that was never interrupted."""
    import llmrec.training.loop
    from llmrec.runs import Run

    opts = {"training": training, "epochs": 1, "stage1_epochs": 1, "head_epochs": 1, "head_windows": 1}
    reference = _model(ill_dataset, tiny_llm, **opts)
    fit(reference, ill_dataset)
    m = _model(ill_dataset, tiny_llm, **opts)
    stages: list = []
    loop = llmrec.training.loop.train_stage

    def interrupted(model, ds, run, stage, *args, **kwargs):
        stages.append(stage.name)
        if stage.name == "head":
            raise KeyboardInterrupt
        return loop(model, ds, run, stage, *args, **kwargs)

    monkeypatch.setattr(llmrec.training.loop, "train_stage", interrupted)
    with Run(tmp_path / "run", m.cfg) as run, pytest.raises(KeyboardInterrupt):
        fit(m, ill_dataset, run)
    monkeypatch.setattr(
        llmrec.training.loop,
        "train_stage",
        lambda m, d, r, stage, *a, **kw: stages.append(stage.name) or loop(m, d, r, stage, *a, **kw),
    )
    again = _model(ill_dataset, tiny_llm, **opts)
    with Run(tmp_path / "run", again.cfg) as run:
        fit(again, ill_dataset, run)
    first = "ila" if training == "two_stage" else "end2end"
    assert stages == [first, "head", "head"]
    assert torch.equal(again.adaptor[0].weight, m.adaptor[0].weight)  # the first stage's adaptor, reloaded
    final, expected = again.checkpoint_state(), reference.checkpoint_state()
    assert all(torch.equal(final[k], v) for k, v in expected.items())


def test_stage1_from_trains_the_projectors_of_a_saved_model(ill_dataset, tiny_llm, tmp_path):
    trained = _model(ill_dataset, tiny_llm)
    fit(trained, ill_dataset)
    trained.save(tmp_path / "model")
    m = _model(ill_dataset, tiny_llm, stage1_from=str(tmp_path / "model"), head_epochs=1, head_windows=1)
    fit(m, ill_dataset)
    assert torch.equal(m.adaptor[0].weight, trained.adaptor[0].weight) and torch.equal(m.rec, trained.rec)
    assert not torch.equal(m.user_proj["image"][0].weight, trained.user_proj["image"][0].weight)
    other = _model(ill_dataset, tiny_llm, stage1_from=str(tmp_path / "model"), head_epochs=1, features=["cf"])
    with pytest.raises(LlmrecError, match="another configuration"):
        fit(other, ill_dataset)
    with pytest.raises(ConfigError, match="give head_epochs"):
        _model(ill_dataset, tiny_llm, stage1_from=str(tmp_path / "model"))


@pytest.fixture
def shape_dataset(tmp_path):
    """A visual rule only the pictures reveal: 24 items of 4 "shapes" (one-hot image + noise) with identical
    titles; every user's next item has the previous item's shape + 1 (mod 4), any item of that shape."""
    rng = np.random.default_rng(2)
    items = [{"item_id": f"i{i:03d}", "title": "Item", "category": f"shape{i % 4}"} for i in range(24)]
    rows = []
    for u in range(40):
        shape = int(rng.integers(4))
        for t in range(10):
            rows.append(
                {"user_id": f"u{u}", "item_id": f"i{4 * int(rng.integers(6)) + shape:03d}", "timestamp": t}
            )
            shape = (shape + 1) % 4
    return visual_rule_dataset(tmp_path / "shapes", items, rows, 4, rng)


def _right_shape_share(model, ds, shapes):
    """Share of each test user's top-6 items that have the shape the rule predicts (chance: 1/4)."""
    split = ds.split("test")
    scores = model.score_all(split.users, split.histories)  # (U, N)
    top = np.argsort(-scores, axis=1)[:, :6]
    expected = (shapes[[h[-1] for h in split.histories]] + 1) % 4
    return float((shapes[top] == expected[:, None]).mean())


def test_image_token_carries_the_picture_through_the_llm(shape_dataset, tiny_llm):
    """End to end: with the image token in the prompt the [REC] state learns the visual rule; the same model
    whose prompts show only the (identical) titles cannot, although it retrieves with the same image features."""
    ds, shapes = shape_dataset
    opts = {
        "features": ["image"],
        "ila": False,
        **{"window_short": 2, "window_long": 2, "test_history": 2},  # the rule needs the last item only
        **{"epochs": 40, "patience": 40, "lr": 3e-3, "eval_users": None},
    }
    seeing = _model(ds, tiny_llm, representation="image", **opts)
    fit(seeing, ds)
    blind = _model(ds, tiny_llm, representation="title", **opts)
    fit(blind, ds)
    seen, control = _right_shape_share(seeing, ds, shapes), _right_shape_share(blind, ds, shapes)
    assert seen > 0.6 and control < 0.4, (seen, control)  # chance: 0.25


@pytest.mark.parametrize("representation", ["image", "title"])
def test_probe_reads_the_picture_from_the_user_state(shape_dataset, tiny_llm, tmp_path, representation):
    """``llmrec probe``: the last item's shape is decodable from [REC] only when its picture is in the prompt."""
    from llmrec.experiments.probe import ProbeConfig, run_probe
    from llmrec.pipeline import EvalConfig, TrainConfig, train

    ds, _ = shape_dataset
    opts = {**SMALL, "backbone": {"llm": tiny_llm}, "features": ["image"], "ila": False, "test_history": 2}
    run = train(
        TrainConfig(
            model="illmrec",
            data=str(ds.root),
            out=str(tmp_path / representation),
            options={**opts, "representation": representation},
            eval=EvalConfig(splits=["test"], ctr=False),
        )
    )
    result = run_probe(ProbeConfig(run=str(run), fields=["category"], untrained=True))
    shape = result["fields"]["category"]
    assert result["users"] == ds.n_users and (run / "probe-untrained.md").exists()
    if representation == "image":
        assert shape["last"] > 0.9 and shape["next"] > 0.9, shape  # the rule: next shape = last + 1
    else:
        assert shape["last"] < 0.5 and shape["next"] < 0.5, shape  # identical titles: chance is 0.25
    trained = run_probe(ProbeConfig(run=str(run), fields=["category"]))
    assert set(trained["fields"]["category"]) == {"next", "next_majority", "last", "last_majority"}


@pytest.mark.parametrize("sampler", ["official", "llmrec"])
def test_training_window_samplers(ill_dataset, tiny_llm, sampler):
    """The official sampler: exactly L contiguous items before the target, never a 1-item history, targets
    skewed late; ours: the target position uniform (so 1-item histories, 1/11 of a 12-item sequence)."""
    m = _model(ill_dataset, tiny_llm, window_sampler=sampler)
    seq = np.arange(100, 112)  # 12 items
    rng = np.random.default_rng(0)
    draws = [m.sample_window(seq, rng) for _ in range(40_000)]
    sizes = np.array([len(h) for h, _ in draws])
    targets = np.array([t for _, t in draws]) - 100  # target positions
    for h, t in draws[:2000]:  # contiguous, right before the target
        assert list(h) == list(range(t - len(h), t))
    p_size = {n: 0.5 * (n <= 4) / 3 + 0.5 * (n <= 9) / 8 for n in range(2, 10)}  # L: 2..4 or 2..9, p 0.5
    if sampler == "official":
        assert sizes.min() >= 2 and set(sizes) == set(range(2, 10))
        for n in (2, 5, 9):  # exactly L items
            assert abs((sizes == n).mean() - p_size[n]) < 0.01
        # a target at position t comes from every L <= t, each with probability P(L) / (12 - L) (its start)
        for t in (2, 6, 11):
            want = sum(p / (12 - n) for n, p in p_size.items() if n <= t)
            assert abs((targets == t).mean() - want) < 0.006, (t, want)
        for _ in range(
            20
        ):  # 3 items: room for L = 2 only, or all but the last when L > 2; the same either way
            history, target = m.sample_window(np.arange(3), rng)
            assert list(history) == [0, 1] and target == 2
    else:
        assert abs((sizes == 1).mean() - 1 / 11) < 0.01  # target position 1: one item before it
        assert abs((targets == 2).mean() - 1 / 11) < 0.01


def test_official_adaptor_eps_and_rec_init(ill_dataset, tiny_llm):
    default = _model(ill_dataset, tiny_llm)
    assert default.adaptor[1].eps == 1e-5
    official = _model(ill_dataset, tiny_llm, adaptor_ln_eps=1e-8, rec_init="xavier_uniform")
    assert official.adaptor[1].eps == 1e-8
    bound = (
        6 / (1 + official.rec.shape[1])
    ) ** 0.5  # xavier_uniform: U(-b, b), b = sqrt(6 / (fan_in + fan_out))
    assert float(official.rec.abs().max()) <= bound
    assert float(default.rec.abs().max()) > bound  # xavier_normal's tails reach past it (std b / sqrt(3))


def test_negative_sampling_llmrec_and_official(ill_dataset, tiny_llm):
    """Ours: one negative per example, shared by the feature types, outside the user's training sequence.
    Official: one per example and feature type, independent, anything but the target (history items too)."""
    seqs = ill_dataset.train_sequences
    users = np.arange(ill_dataset.n_users)
    targets = np.array([seqs[u][-1] for u in users])
    ours = _model(ill_dataset, tiny_llm)
    neg = ours.sample_negatives(np.random.default_rng(0), users, targets, seqs)
    assert neg.shape == (len(users),) and not any(n in seqs[u] for u, n in zip(users, neg))
    official = _model(ill_dataset, tiny_llm, negative_sampling="official")
    draws = np.stack(
        [official.sample_negatives(np.random.default_rng(s), users, targets, seqs) for s in range(50)]
    )
    assert draws.shape == (50, len(users), 3)  # image, cf, text
    assert not (draws == targets[None, :, None]).any()
    assert (draws[..., 0] != draws[..., 1]).mean() > 0.8  # independent per feature type
    seen = set(seqs[0][:-1].tolist())  # user 0's other training items: allowed as negatives
    assert any(int(n) in seen for n in draws[:, 0, :].ravel())
    batch = next(official.train_batches(ill_dataset, np.random.default_rng(0)))
    assert batch["negative"].shape == (official.cfg.batch_size, 3)
    loss = official.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)

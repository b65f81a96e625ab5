"""GRU4Rec and BERT4Rec on the synthetic walk, whose next item is always the last + 1 (a known answer)."""

import numpy as np
import pytest
import torch

from llmrec.data.dataset import Dataset
from llmrec.eval.evaluator import evaluate_ranking
from llmrec.models.base import build_model, load_model
from llmrec.models.bert4rec import cloze_mask
from llmrec.pipeline import EvalConfig, TrainConfig, train
from llmrec.utils.io import read_json

SMALL = {
    "gru4rec": {"hidden": 32, "embedding": 32, "epochs": 30, "batch_size": 16, "max_len": 12, "lr": 3e-3},
    "bert4rec": {"hidden": 32, "epochs": 80, "batch_size": 16, "max_len": 12, "lr": 1e-2, "dropout": 0.1},
}


@pytest.mark.parametrize("name", ["gru4rec", "bert4rec"])
def test_learns_the_walk_and_round_trips(name, synthetic_dataset, tmp_path):
    cfg = TrainConfig(  # train() seeds torch and numpy from cfg.seed
        model=name,
        seed=0,
        data=str(synthetic_dataset),
        out=str(tmp_path / "run"),
        options={**SMALL[name], "patience": 100},
        eval=EvalConfig(ks=[1, 5], ctr=False),
    )
    run_dir = train(cfg)
    test = read_json(run_dir / "metrics.json")["test"]
    assert test["hit@5"] >= 0.75 and test["hit@1"] >= 0.4, test  # chance: 5/11 and 1/11

    ds = Dataset(synthetic_dataset)
    model = load_model(run_dir / "model")
    reloaded, _ = evaluate_ranking(model, ds, "test", ks=(1, 5), full=True)
    for key in ("hit@1", "ndcg@5", "full_ndcg@5"):
        assert reloaded[key] == pytest.approx(test[key])  # the saved model is the evaluated one
    data = ds.split("test")
    model.save(tmp_path / "again")
    np.testing.assert_array_equal(
        load_model(tmp_path / "again").score_all(data.users, data.histories),
        model.score_all(data.users, data.histories),
    )
    kind, emb = model.export_embeddings()["item"]
    assert kind == "item" and emb.shape == (40, 32)


@pytest.mark.parametrize("layers", [1, 2])
def test_gru4rec_scores_do_not_depend_on_padding_length(layers):
    torch.manual_seed(0)
    short = build_model("gru4rec", {"hidden": 16, "embedding": 8, "layers": layers, "max_len": 20}, 3, 40)
    long = build_model("gru4rec", {"hidden": 16, "embedding": 8, "layers": layers, "max_len": 50}, 3, 40)
    long.load_state_dict(short.state_dict())
    histories = [np.array([3, 4, 5]), np.array([7]), np.arange(10, 25)]
    users = np.arange(3)
    np.testing.assert_allclose(
        short.score_all(users, histories), long.score_all(users, histories), rtol=1e-5, atol=1e-6
    )


def test_gru4rec_bpr_loss_trains_a_step(synthetic_dataset):
    torch.manual_seed(0)
    ds = Dataset(synthetic_dataset)
    model = build_model("gru4rec", {"loss": "bpr", "hidden": 16, "embedding": 16, "max_len": 12}, 30, 40)
    batch = next(model.train_batches(ds, np.random.default_rng(0)))
    real = batch["pos"] != 0
    assert (batch["neg"][real] > 0).all() and (batch["neg"][~real] == 0).all()
    loss = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.item_emb.weight.grad is not None


@pytest.mark.parametrize("mask_prob", [0.01, 0.2, 1.0])
def test_bert4rec_masks_only_real_items_and_at_least_one(mask_prob):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 13, size=200)
    rows = torch.zeros(200, 12, dtype=torch.long)
    for b, n in enumerate(lengths):
        rows[b, 12 - n :] = torch.from_numpy(rng.integers(1, 41, size=n))
    inputs, labels = cloze_mask(rows, mask_prob, 41, rng)
    masked = labels != 0
    assert (rows[masked] != 0).all()  # never padding
    assert (masked.sum(1) >= 1).all()  # at least one per sequence
    assert (inputs[masked] == 41).all() and (inputs[~masked] == rows[~masked]).all()
    assert (labels[masked] == rows[masked]).all()
    if mask_prob == 1.0:
        assert (masked == (rows != 0)).all()


def test_bert4rec_last_item_sequences_mask_only_the_last_item():
    rows = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    inputs, labels = cloze_mask(rows, 0.5, 41, np.random.default_rng(0), last_item_prob=1.0)
    assert labels.tolist() == [[0, 0, 0, 0, 7], [0, 0, 0, 0, 5]]
    assert inputs.tolist() == [[0, 0, 5, 6, 41], [1, 2, 3, 4, 41]]


def test_bert4rec_train_batches_follow_the_dataset(synthetic_dataset):
    ds = Dataset(synthetic_dataset)
    model = build_model("bert4rec", {"hidden": 16, "heads": 2, "max_len": 12}, 30, 40)
    batches = list(model.train_batches(ds, np.random.default_rng(0)))
    assert len(batches) == model.num_train_batches(ds)
    for batch in batches:
        masked = batch["labels"] != 0
        assert (batch["inputs"][masked] == 41).all() and (masked.sum(1) >= 1).all()
        assert (batch["inputs"][:, :2] == 0).all()  # 10 training items left-padded to 12


def test_configs_are_validated():
    from llmrec.errors import ConfigError

    with pytest.raises(ConfigError, match="heads"):
        build_model("bert4rec", {"hidden": 30, "heads": 4}, 3, 40)
    with pytest.raises(ConfigError, match="mask_prob"):
        build_model("bert4rec", {"mask_prob": 0.0}, 3, 40)
    with pytest.raises(ConfigError, match="loss"):
        build_model("gru4rec", {"loss": "bce"}, 3, 40)
    with pytest.raises(ConfigError, match="dropout"):
        build_model("gru4rec", {"dropout": 1.0}, 3, 40)

"""SASRec specifics: reference architecture details, id alignment of exported embeddings, CTR scoring."""

import numpy as np
import pytest
import torch

from llmrec.cli import main
from llmrec.data.dataset import Dataset
from llmrec.features.store import load_feature
from llmrec.models.base import build_model
from llmrec.models.sasrec import SASRec


def _model(n_items=40, **kw):
    torch.manual_seed(0)
    return build_model("sasrec", {"hidden": 16, "max_len": 10, **kw}, 5, n_items)


def test_reference_defaults():
    m = build_model("sasrec", {}, 5, 40)
    assert (
        m.cfg.hidden,
        m.cfg.blocks,
        m.cfg.heads,
        m.cfg.dropout,
        m.cfg.max_len,
        m.cfg.lr,
        m.cfg.batch_size,
    ) == (50, 2, 1, 0.2, 50, 1e-3, 128)


def test_causal_and_padding_masked():
    m = _model().eval()
    seq = torch.tensor([[0, 0, 0, 0, 0, 3, 7, 9, 2, 5]])
    with torch.no_grad():
        h = m.encode(seq)
        changed = seq.clone()
        changed[0, -1] = 11  # a later item must not change earlier states (causal)
        np.testing.assert_allclose(m.encode(changed)[0, :-1], h[0, :-1], atol=1e-6)
    # padding rows never leak into real positions: changing what sits under padding changes nothing
    with torch.no_grad():
        padded = m.item_emb.weight[0].clone()
        m.item_emb.weight[0].normal_()
        np.testing.assert_allclose(m.encode(seq)[0, 5:], h[0, 5:], atol=1e-5)
        m.item_emb.weight[0].copy_(padded)


def test_training_batches_mask_padding_and_avoid_seen_negatives(synthetic_dataset):
    ds = Dataset(synthetic_dataset)
    m = build_model("sasrec", {"hidden": 16, "max_len": 12, "batch_size": 8}, ds.n_users, ds.n_items)
    batch = next(m.train_batches(ds, np.random.default_rng(0)))
    assert batch["inputs"].shape == (8, 12)
    assert ((batch["pos"] == 0) == (batch["neg"] == 0)).all()  # negatives only where there is a target
    assert (batch["inputs"][:, 1:][batch["inputs"][:, 1:] != 0] >= 1).all()


def test_cf_export_alignment(synthetic_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "sasrec",
                "--data",
                str(synthetic_dataset),
                "--out",
                str(run),
                "-o",
                "hidden=16",
                "-o",
                "max_len=12",
                "-o",
                "epochs=2",
                "--no-ctr",
            ]
        )
        == 0
    )
    assert main(["features", "--data", str(synthetic_dataset), "--cf", str(run)]) == 0
    assert "sasrec_item: 40 x 16" in capsys.readouterr().out
    ds = Dataset(synthetic_dataset)
    feat = load_feature(ds.features_dir, "sasrec_item", expect_ids=ds.items["item_id"].tolist())
    assert feat.manifest["source_run"] == str(run.resolve()) and feat.manifest["kind"] == "item"
    from llmrec.models.base import load_model

    model = load_model(run / "model")
    assert isinstance(model, SASRec)
    # feature row i is dataset item i: the user state dotted with row i is the model's score of item i
    hist = [ds.sequences[0][:-1]]
    with torch.no_grad():
        state = model.user_states(hist)[0].numpy()
    np.testing.assert_allclose(
        np.asarray(feat.values) @ state, model.score_all(np.array([0]), hist)[0], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(feat.values[0], model.item_emb.weight[1].detach().numpy())


def test_cf_export_refuses_a_foreign_dataset(synthetic_dataset, tmp_path, capsys):
    from conftest import synthetic_tables
    from llmrec.data.processing import ProcessConfig, finalize, write_dataset

    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "sasrec",
                "--data",
                str(synthetic_dataset),
                "--out",
                str(run),
                "-o",
                "hidden=8",
                "-o",
                "max_len=6",
                "-o",
                "epochs=1",
                "--no-ctr",
                "--no-full-ranking",
            ]
        )
        == 0
    )
    items, inter = synthetic_tables(n_items=45)
    write_dataset(
        finalize(items, inter, ProcessConfig(kcore=0, num_negatives=5), {}, {}, []), tmp_path / "other"
    )
    assert main(["features", "--data", str(tmp_path / "other"), "--cf", str(run)]) == 2
    assert "not the dataset the model was trained on" in capsys.readouterr().err


@pytest.mark.parametrize("threads", [1])
def test_table_command(synthetic_dataset, tmp_path, capsys, threads):
    a, b = tmp_path / "pop", tmp_path / "rand"
    main(["train", "popularity", "--data", str(synthetic_dataset), "--out", str(a)])
    main(["train", "random", "--data", str(synthetic_dataset), "--out", str(b)])
    capsys.readouterr()
    assert (
        main(["table", str(a), str(b), "--metrics", "hit@10", "auc", "nope", "--out", str(tmp_path / "t")])
        == 0
    )
    md = capsys.readouterr().out.strip().splitlines()
    assert md[0] == "| run | model | hit@10 | auc | nope |"
    assert md[2].startswith("| pop | popularity |") and md[2].endswith("| - |")
    import pandas as pd

    df = pd.read_csv(tmp_path / "t.csv")
    assert list(df["model"]) == ["popularity", "random"]

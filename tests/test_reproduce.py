"""``llmrec reproduce`` and ``llmrec table --vs-paper``: every shipped paper setting resolves, the dry run
prints the whole plan offline, and a setting runs end to end at tiny scale (tiny local models swapped in,
small raw files in the published layout), resumes by skipping what is done and refuses a changed setting."""

from __future__ import annotations

import gzip
import json
import socket
from pathlib import Path

import numpy as np
import pytest

from llmrec.cli import main
from llmrec.errors import LlmrecError
from llmrec.experiments.reproduce import (
    ReproduceConfig,
    available_settings,
    execute,
    load_setting,
    plan,
)

PAPER_MODELS = {
    "princeton-nlp/Sheared-LLaMA-2.7B",
    "lmsys/vicuna-7b-v1.5",
    "google/siglip-so400m-patch14-384",
    "sentence-transformers/all-mpnet-base-v2",
    "facebook/dino-vits16",
}


def test_every_table_and_figure_of_both_papers_is_shipped():
    names = set(available_settings())
    for cat in ("sports", "grocery", "art", "phone"):
        assert f"illmrec-table1-{cat}" in names
    for ds in ("movie", "netflix", "news"):
        assert f"histllm-table2-{ds}" in names
    expected = {"illmrec-table2", "illmrec-table3", "illmrec-table4", "illmrec-appendix-g", "illmrec-table7"}
    expected |= {"illmrec-fig4", "illmrec-fig5", "illmrec-fig6", "histllm-table3", "histllm-table4"}
    expected |= {"histllm-fig4", "histllm-fig5"}
    assert expected <= names


@pytest.mark.parametrize("name", available_settings())
def test_setting_resolves_and_every_run_validates(name, tmp_path):
    setting = load_setting(name)
    steps = plan(setting, ReproduceConfig(name=name, data_root=str(tmp_path), out=str(tmp_path / "o")))
    trains = [s for s in steps if " train " in s.label]
    assert len(trains) == len(setting.runs) * len(setting.datasets)  # each validated by plan()
    from llmrec.models.base import model_config

    for row in setting.runs.values():  # LLM rows let the recipe set the paper's values
        if hasattr(model_config(row.model, {}), "recipe"):
            assert row.options.get("recipe") == "paper"
    for dataset, rows in setting.reported.items():  # the paper's numbers belong to rows that exist
        assert dataset in setting.datasets
        assert set(rows) <= set(setting.runs)
        assert all(set(m) == set(setting.metrics) for m in rows.values())
    used = json.dumps([s.config for s in steps])
    assert any(m in used for m in PAPER_MODELS)


def test_reported_numbers_are_the_papers():
    t1 = load_setting("illmrec-table1-sports").reported["amazon-sports"]
    assert t1["illmrec"] == {"hit@5": 0.4570, "ndcg@5": 0.3711, "hit@10": 0.5689, "ndcg@10": 0.4071}
    assert load_setting("illmrec-table1-grocery").reported["amazon-grocery"]["vbpr"]["ndcg@10"] == 0.263
    t2 = load_setting("histllm-table2-news").reported["news"]
    assert t2["histllm-transformer"] == {"auc": 0.6641, "uauc": 0.6868}
    assert load_setting("histllm-table3").reported["netflix"]["no-vma"] == {"auc": 0.6695, "uauc": 0.6564}


def test_dry_run_prints_the_whole_plan_without_network(tmp_path, capsys, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the dry run opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = [
        "reproduce",
        "illmrec-table1-sports",
        "--dry-run",
        "--data-root",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for step in (
        "prepare",
        "images",
        "features siglip",
        "features mpnet",
        "describe summary",
        "CF run sasrec",
    ):
        assert f"amazon-sports: {step}: to run" in out
    assert "train illmrec (illmrec)" in out and "evaluate illmrec" in out
    assert "llmrec prepare amazon2018" in out and "Sports_and_Outdoors_5.json.gz: MISSING" in out
    assert "backbone princeton-nlp/Sheared-LLaMA-2.7B: MISSING" in out
    assert "estimate: 2.70B parameters" in out and "GiB training" in out
    assert not (tmp_path / "o").exists()  # nothing written


def test_estimate_formula_by_hand():
    from llmrec.experiments.estimate import GIB, Shape, estimate

    s = Shape(hidden=4, layers=2, heads=2, kv_heads=1, ffn=8, vocab=10, tied=False)
    assert s.params == 10 * 4 * 2 + 2 * (2 * 16 + 2 * 4 * 2 + 3 * 4 * 8)  # 80 + 2 * 144 = 368
    e = estimate(
        s, batch=2, tokens=3, train_examples=5, epochs=2, eval_examples=7, trainable=10, tflops=1e-12
    )
    assert e["train_memory_gib"] * GIB == pytest.approx(
        368 * 2 + 10 * 16 + 34 * 2 * 3 * 4 * 2 + 2 * 3 * 10 * 4
    )
    assert e["train_hours"] * 3600 == pytest.approx(6 * 368 * 3 * 5 * 2)
    assert e["eval_hours"] * 3600 == pytest.approx(2 * 368 * 3 * 7)


# ----------------------------------------------------------------------------- end to end, tiny


def _amazon2018_files(folder: Path, users: int = 24, items: int = 16) -> None:
    """Reviews and metadata in the Amazon 2018 layout (gzipped JSON lines), pictures as file:// URLs."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with gzip.open(folder / "Sports_and_Outdoors_5.json.gz", "wt") as f:
        for u in range(users):
            for t, i in enumerate(rng.choice(items, size=7, replace=False)):
                rec = {
                    "overall": 5.0,
                    "reviewerID": f"U{u}",
                    "asin": f"A{i}",
                    "unixReviewTime": 1_500_000_000 + t,
                }
                f.write(json.dumps(rec) + "\n")
    with gzip.open(folder / "meta_Sports_and_Outdoors.json.gz", "wt") as f:
        for i in range(items):
            picture = folder / "pictures" / f"A{i}.png"
            picture.parent.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(picture)
            rec = {
                "asin": f"A{i}",
                "title": f"Item {i}",
                "brand": f"Brand {i % 3}",
                "category": ["Sports", f"Kind {i % 4}"],
                "description": [f"A thing number {i}."],
                "feature": [f"Bullet {i}"],
                "imageURLHighRes": [picture.as_uri()],
            }
            f.write(json.dumps(rec) + "\n")


@pytest.mark.slow
def test_illmrec_setting_end_to_end_tiny_then_resumes_and_refuses_a_change(tmp_path, tiny_llm, capsys):
    _amazon2018_files(tmp_path / "raw" / "amazon-sports")
    swap = {
        "princeton-nlp/Sheared-LLaMA-2.7B": tiny_llm,
        "google/siglip-so400m-patch14-384": "efficientnet-lite0",
        "sentence-transformers/all-mpnet-base-v2": "all-minilm-l6-v2",
    }
    cfg = ReproduceConfig(
        name="illmrec-table1-sports",
        data_root=str(tmp_path / "raw"),
        out=str(tmp_path / "o"),
        only=["illmrec"],
        device="cpu",
    )

    def tiny(setting):  # the paper's epochs and generation lengths, cut to seconds
        ds = setting.datasets["amazon-sports"]
        ds["describe"][0]["max_new_tokens"] = 4
        ds["prepare"]["num_negatives"] = 5  # of 16 items
        ds["cf"]["options"].update(epochs=1)
        setting.runs["illmrec"].options.update(epochs=1, batch_size=8, max_history_tokens=200)
        return setting

    steps = plan(tiny(load_setting(cfg.name, swap)), cfg)
    assert execute(steps) == (len(steps) - 1, 1)  # the evaluation ran with the training
    run = tmp_path / "o" / "runs" / "illmrec-table1-sports" / "amazon-sports" / "illmrec"
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert {"hit@5", "ndcg@5", "hit@10", "ndcg@10"} <= set(metrics)
    assert json.loads((run / "reproduce.json").read_text())["reported"]["hit@5"] == 0.4570

    capsys.readouterr()
    assert execute(plan(tiny(load_setting(cfg.name, swap)), cfg)) == (0, len(steps))  # all current: skipped
    assert "skipped (trained with this configuration)" in capsys.readouterr().out

    changed = tiny(load_setting(cfg.name, swap))
    changed.runs["illmrec"].options["lr"] = 0.5
    with pytest.raises(LlmrecError, match="another configuration"):
        execute(plan(changed, cfg))

    assert main(["table", str(run), "--vs-paper"]) == 0
    table = capsys.readouterr().out
    assert "| illmrec-table1-sports amazon-sports | illmrec | hit@5 |" in table
    assert f"{metrics['hit@5'] - 0.4570:+.4f}" in table


def test_table_vs_paper_from_the_setting_name(tmp_path, capsys):
    run = tmp_path / "histllm-table3" / "netflix" / "no-vma"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"test": {"auc": 0.7, "uauc": 0.6}}))
    assert main(["table", str(run), "--vs-paper", "--paper", "histllm-table3"]) == 0
    out = capsys.readouterr().out
    assert "| histllm-table3 netflix | no-vma | auc | 0.7000 | 0.6695 | +0.0305 |" in out
    assert "| histllm-table3 netflix | no-vma | uauc | 0.6000 | 0.6564 | -0.0564 |" in out
    assert main(["table", str(run), "--vs-paper"]) != 0  # the run does not say which setting: one line
    assert "--paper NAME" in capsys.readouterr().err
    assert main(["table", str(run), "--vs-paper", "--paper", "nope"]) != 0
    assert "no shipped setting 'nope'" in capsys.readouterr().err


def test_row_estimate_runs_the_ire_and_ila_history_once_with_one_pass():
    from llmrec.experiments.estimate import GIB, KNOWN_SHAPES, Shape, row_estimate

    ds = {"stats": {"users": 1000}, "estimate": {"history_items": 10}}
    base = {"recipe": "paper", "backbone": {"llm": "princeton-nlp/Sheared-LLaMA-2.7B"}, "batch_size": 4}
    e = row_estimate("illmrec", base, ds)  # image items: 10 x 25 = 250 tokens between a 50-token frame
    ire, ila = 50 + 250 + 30, 50 + 250 + 40 + 97  # 330: + instruction, [REC]; 437: + question, answer
    assert e["tokens"] == 50 + 250 + 30 + 40 + 97 == 467  # one packed row: the history once (not 2 x 330)
    assert e["layout"] == "IRE 330 + ILA 437 tokens, one packed row of 467"
    s = Shape(**KNOWN_SHAPES["princeton-nlp/Sheared-LLaMA-2.7B"])
    n, d, L, V, P = s.params, 2560, 32, 32000, e["trainable"]
    acts, head = 34 * 4 * 467 * d * L, 4 * 97 * V * 4  # bf16: b / 2 = 1; the LM head on ILA's answer only
    assert e["train_memory_gib"] * GIB == pytest.approx(2 * n + 16 * P + acts + head)
    kv, layer, last = 2 * L * 4 * ire * d * 2, 34 * 4 * ire * d, 4 * V * 4  # evaluation: the IRE prompt
    assert e["eval_memory_gib"] * GIB == pytest.approx(2 * n + kv + layer + last)
    assert e["train_hours"] * 3600 * 200e12 == pytest.approx(6 * n * 467 * 1000 * 8)
    assert e["eval_hours"] * 3600 * 200e12 == pytest.approx(2 * n * ire * 1000)

    two = row_estimate("illmrec", {**base, "one_pass": False}, ds)  # both passes held until one backward
    assert (
        two["tokens"] == ire + ila == 767 and two["layout"] == "IRE 330 + ILA 437 tokens in two passes (767)"
    )
    alone = row_estimate("illmrec", {**base, "ila": False}, ds)
    assert alone["tokens"] == ire and alone["layout"] == "330 tokens"  # IRE alone: no LM head either
    assert alone["train_memory_gib"] * GIB == pytest.approx(2 * n + 16 * P + 34 * 4 * ire * d * L)


def _mind_files(folder: Path, users: int = 12) -> None:
    """MIND in its published layout (MINDsmall_train/ and MINDsmall_dev/ with news.tsv and behaviors.tsv),
    three impressions a user, one picture per news article in images/."""
    from PIL import Image

    from test_importers_histllm import NEWS, write_tsv

    rng = np.random.default_rng(0)
    extra = [
        [f"N{i}", "news", "newsus", f"Story {i}", f"About {i}.", f"https://x/{i}.html", "[]", "[]"]
        for i in range(9, 25)
    ]
    news = [row[0] for row in NEWS + extra]
    behaviors: dict[str, list[list[str]]] = {"MINDsmall_train": [], "MINDsmall_dev": []}
    for u in range(users):
        for k, (split, day) in enumerate(
            (("MINDsmall_train", 11), ("MINDsmall_train", 12), ("MINDsmall_dev", 15))
        ):
            shown = rng.choice(news, size=4, replace=False)
            clicks = [f"{n}-{int(j == 0 or rng.random() < 0.3)}" for j, n in enumerate(shown)]
            history = " ".join(rng.choice(news, size=2, replace=False))
            when = f"11/{day}/2019 {1 + u % 11}:0{k}:00 AM"
            behaviors[split].append(
                [str(len(behaviors[split]) + 1), f"U{u}", when, history, " ".join(clicks)]
            )
    for split, rows in behaviors.items():
        write_tsv(folder / split / "news.tsv", NEWS + extra)
        write_tsv(folder / split / "behaviors.tsv", rows)
    (folder / "images").mkdir()
    for n in news:
        picture = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(picture).save(folder / "images" / f"{n}.png")


@pytest.mark.slow
def test_histllm_setting_end_to_end_tiny_then_resumes(tmp_path, tiny_llm, capsys):
    _mind_files(tmp_path / "raw" / "mind")
    swap = {"lmsys/vicuna-7b-v1.5": tiny_llm, "facebook/dino-vits16": "efficientnet-lite0"}
    cfg = ReproduceConfig(
        name="histllm-table2-news",
        data_root=str(tmp_path / "raw"),
        out=str(tmp_path / "o"),
        only=["tallrec", "histllm-gru"],
        device="cpu",
    )

    def tiny(setting):  # the paper's sizes and epochs, cut to seconds
        ds = setting.datasets["news"]
        ds["describe"][0]["max_new_tokens"] = 4
        ds["prepare"].update(kcore=0, num_negatives=1)
        ds["cf"]["options"].update(epochs=1, dim=8)
        small = dict(epochs=1, step1_epochs=1, train_examples=32, encoder_dim=16, mapper_hidden=16)
        for row in ("tallrec", "histllm-gru"):
            setting.runs[row].options.update(small)
        return setting

    steps = plan(tiny(load_setting(cfg.name, swap)), cfg)
    labels = [s.label for s in steps]
    assert "news: describe from_title" in labels and "news: CF run mf" in labels
    assert "news: train tallrec (tallrec)" in labels and "news: train histllm-gru (histllm)" in labels
    assert not any("binllm" in label for label in labels)
    run, skipped = execute(steps)
    assert run + skipped == len(steps) and run >= len(steps) - 2  # evaluations may come with the training
    runs = tmp_path / "o" / "runs" / "histllm-table2-news" / "news"
    for row, reported in (("tallrec", 0.5849), ("histllm-gru", 0.6614)):
        assert {"auc", "uauc"} <= set(json.loads((runs / row / "metrics.json").read_text())["test"])
        assert json.loads((runs / row / "reproduce.json").read_text())["reported"]["auc"] == reported
    config = json.loads((runs / "histllm-gru" / "config.json").read_text())
    assert str(runs / "tallrec") in json.dumps(config)  # step 1 from the tallrec row's LoRA

    capsys.readouterr()
    assert execute(plan(tiny(load_setting(cfg.name, swap)), cfg)) == (0, len(steps))  # all current: skipped
    assert "skipped (trained with this configuration)" in capsys.readouterr().out


@pytest.mark.parametrize("installed", [True, False])
def test_model_checks_know_llmrecs_offline_assets(installed, tmp_path, monkeypatch):
    import huggingface_hub

    from llmrec import assets
    from llmrec.experiments.reproduce import format_plan

    pins = {dist: pin for a in assets.ASSETS for dist, pin in a.packages}
    monkeypatch.setattr(assets, "installed_version", lambda dist: pins[dist] if installed else None)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)  # an empty cache
    setting = load_setting("illmrec-table1-sports")
    cfg = ReproduceConfig(name=setting.name, data_root=str(tmp_path), out=str(tmp_path / "o"), dry_run=True)
    out = format_plan(setting, plan(setting, cfg), cfg)
    mpnet = "encoder sentence-transformers/all-mpnet-base-v2: "  # the hub id that the mpnet asset holds
    if installed:
        assert mpnet + "installed (llmrec asset mpnet)" in out
    else:
        hint = "MISSING ('llmrec assets install mpnet' installs it offline; otherwise downloaded from the Hugging Face hub"
        assert mpnet + hint in out
    from llmrec.experiments.reproduce import _need_model

    (line,) = _need_model("all-mpnet-base-v2", "encoder")  # the short name: the asset is the only way
    assert line.endswith(
        "installed (llmrec asset mpnet)" if installed else "MISSING (run 'llmrec assets install mpnet')"
    )
    assert "MISSING (downloaded from the Hugging Face hub" in _need_model("org/unknown-model", "backbone")[0]


def test_a_dataset_prepared_before_a_key_existed_is_stale_where_the_setting_asks_for_it(tmp_path):
    """Regression: keys missing from an old meta.json were skipped, so a MIND dataset prepared before
    ``ctr_history_before`` existed (its histories leak the impression's own clicks) passed as current. A
    missing key the importer or the setting sets is a change; one neither asks for is not."""
    from llmrec.config import from_dict, to_dict
    from llmrec.data.importers import importer_defaults
    from llmrec.data.processing import PrepareConfig

    cfg = ReproduceConfig(
        name="histllm-table2-news", data_root=str(tmp_path / "raw"), out=str(tmp_path / "o")
    )
    (prepare,) = [s for s in plan(load_setting(cfg.name), cfg) if s.label.endswith(": prepare")]
    prep = prepare.config
    assert prep["dataset"] == "mind" and "ctr_history_before" in importer_defaults("mind")
    out = Path(prep["out"])
    out.mkdir(parents=True)
    config = to_dict(from_dict(PrepareConfig, {**importer_defaults("mind"), **prep}))

    def prepared_with(config):
        (out / "meta.json").write_text(json.dumps({"counts": {}, "config": config}))
        return prepare.current()

    assert prepared_with(config) == "prepared with this configuration"
    with pytest.raises(LlmrecError, match=r"another configuration \(ctr_history_before\)"):
        prepared_with({k: v for k, v in config.items() if k != "ctr_history_before"})
    unasked = next(k for k in config if k not in prep and k not in importer_defaults("mind") and k != "out")
    assert (
        prepared_with({k: v for k, v in config.items() if k != unasked}) == "prepared with this configuration"
    )

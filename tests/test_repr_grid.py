"""``llmrec repr-grid`` (I-LLMRec Fig. 6, Appendix G): one run per dataset x backbone x image encoder x
representation, each encoder's image feature under its own name, runs that read no image feature trained once,
the table / CSV / PNG, --seeds, and what is refused before anything trains."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from llmrec.cli import main
from llmrec.data.dataset import Dataset
from llmrec.errors import ConfigError, LlmrecError
from llmrec.experiments.illmrec import ReprGridConfig, backbone_name, image_feature_name, run_repr_grid
from test_context_sweep import TINY, save_item_feature


def options_flags(options: dict) -> list[str]:
    return [a for k, v in options.items() for a in ("-o", f"{k}={json.dumps(v)}")]


@pytest.fixture
def grid_dataset(synthetic_dataset) -> Dataset:
    ds = Dataset(synthetic_dataset)
    save_item_feature(ds, "image", 8)  # the default encoder's feature, as 'llmrec features --image' names it
    save_item_feature(ds, "image-tiny-vit", 6, encoder="tiny-vit")  # a second encoder beside it
    save_item_feature(ds, "text", 16, encoder="all-minilm-l6-v2")
    return ds


def test_names():
    assert backbone_name("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert backbone_name("/x/gemma-3-270m-q4_k_m.gguf") == "gemma-3-270m-q4_k_m"
    assert backbone_name("org/Some Model/") == "Some-Model"
    assert image_feature_name("efficientnet-lite0") == "image"
    assert image_feature_name("google/siglip-base-patch16-224") == "image-siglip-base-patch16-224"
    with pytest.raises(ConfigError, match="same folder name"):
        ReprGridConfig(backbones=["/a/m.gguf", "/b/m.gguf"])
    with pytest.raises(ConfigError, match="give the LMs with --backbones"):
        ReprGridConfig(options={"backbone": {"llm": "x"}})


def test_grid_runs_every_cell_once_and_tabulates(grid_dataset, tiny_llm, tmp_path, capsys, monkeypatch):
    other = tmp_path / "tiny-b"
    shutil.copytree(tiny_llm, other)
    out = tmp_path / "grid"
    argv = [
        "experiments",
        "repr-grid",
        "--data",
        str(grid_dataset.root),
        "--backbones",
        tiny_llm,
        str(other),
        "--image-encoders",
        "efficientnet-lite0",
        "tiny-vit",
        "--representations",
        "image",
        "attribute",
        *options_flags({**TINY, "features": ["text"]}),
        "--ranking-users",
        "10",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    a, b, ds = backbone_name(tiny_llm), "tiny-b", grid_dataset.root.name
    # the image representation once per encoder, the attribute one (no image feature read) once per backbone
    expected = {
        (bb, enc, rep)
        for bb in (a, b)
        for enc, rep in (("efficientnet-lite0", "image"), ("tiny-vit", "image"), ("none", "attribute"))
    }
    runs = {p.parent.relative_to(out / ds).parts for p in (out / ds).glob("*/*/*/metrics.json")}
    assert runs == expected
    for bb, llm in ((a, tiny_llm), (b, str(other))):
        for enc, feature in (("efficientnet-lite0", "image"), ("tiny-vit", "image-tiny-vit")):
            saved = json.loads((out / ds / bb / enc / "image" / "config.json").read_text())
            assert saved["options"]["image_feature"] == feature
            assert saved["options"]["backbone"]["llm"] == llm
    csv = pd.read_csv(out / "repr_grid.csv")
    assert len(csv) == 6 and list(csv.columns[:4]) == ["dataset", "backbone", "encoder", "representation"]
    assert csv["prompt_tokens_mean"].gt(0).all() and csv["ndcg@10"].between(0, 1).all()
    md = (out / "repr_grid.md").read_text()
    assert md.splitlines()[0].startswith("| dataset | backbone | encoder | representation | seeds | hit@10 |")
    assert f"| {ds} | tiny-b | tiny-vit | image | 1 | " in md and md in printed
    assert (out / "repr_grid.png").stat().st_size > 1000

    # again: every cell reused, nothing trained
    import llmrec.pipeline

    monkeypatch.setattr(
        llmrec.pipeline, "train", lambda *a, **k: pytest.fail("a finished run was trained again")
    )
    assert main(argv) == 0


def test_seeds_and_refusals(grid_dataset, tiny_llm, tmp_path):
    out = tmp_path / "grid"
    cfg = ReprGridConfig(
        data=[str(grid_dataset.root)],
        backbones=[tiny_llm],
        representations=["image"],
        options={**TINY},
        seeds=[0, 1],
        ranking_users=10,
        threads=1,
        out=str(out),
    )
    [point] = run_repr_grid(cfg)["points"]
    root = out / grid_dataset.root.name / backbone_name(tiny_llm) / "efficientnet-lite0" / "image"
    assert sorted(p.name for p in root.iterdir()) == ["seed-0", "seed-1"]
    assert point["seeds"] == 2 and " ± " in (out / "repr_grid.md").read_text()

    # an image feature of the expected name from another encoder is refused, not overwritten
    cfg.image_encoders = ["tiny-vit"]
    save_item_feature(grid_dataset, "image-tiny-vit", 6, encoder="another-vit")
    with pytest.raises(LlmrecError, match="computed with 'another-vit', not 'tiny-vit'"):
        run_repr_grid(cfg)
    # a dataset without images: the image representation is refused before any cell trains
    bare = tmp_path / "bare"
    shutil.copytree(grid_dataset.root, bare, ignore=shutil.ignore_patterns("image*"))
    cfg = ReprGridConfig(
        data=[str(bare)],
        backbones=[tiny_llm],
        representations=["attribute", "image"],
        options={**TINY, "features": ["text"]},
        out=str(tmp_path / "bare-grid"),
    )
    with pytest.raises(LlmrecError, match="has no item images"):
        run_repr_grid(cfg)
    assert not (tmp_path / "bare-grid").exists()

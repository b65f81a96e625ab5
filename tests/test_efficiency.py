"""The efficiency experiment runs end to end and counts what it should (tiny backbone)."""

import json

from llmrec.cli import main


def test_efficiency_tokens_and_times(synthetic_dataset, tiny_llm, tmp_path, capsys, monkeypatch):
    from llmrec.features.build import FeaturesConfig, build_features
    from llmrec.utils import timing

    synced = []  # every timed span waits for the device on both ends
    monkeypatch.setattr(timing, "synchronize", synced.append)

    build_features(FeaturesConfig(data=str(synthetic_dataset)))
    out = tmp_path / "eff"
    args = [
        "experiments",
        "efficiency",
        "--data",
        str(synthetic_dataset),
        "--llm",
        tiny_llm,
        "--lengths",
        "2",
        "5",
        "--users",
        "6",
        "--prefix-lengths",
        "2",
        "5",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    r = json.loads((out / "efficiency.json").read_text())
    assert (out / "efficiency.png").exists() and (out / "efficiency.md").exists()
    assert r["zero_image_stand_in"] is True
    tok = r["tokens"]
    # one [VISUAL] token replaces the description: image items are shorter than description items
    assert (
        tok["image"]["per_item_mean"]
        < tok["description"]["per_item_mean"]
        < tok["image_description"]["per_item_mean"]
    )
    p = r["prompt_tokens"]
    assert (
        p["image"]["5"] > p["image"]["2"]
        and p["description"]["5"] - p["description"]["2"] > p["image"]["5"] - p["image"]["2"]
    )
    assert all(v > 0 for rep in r["time_per_100_users"].values() for v in rep.values())
    assert "description/image@5" in r["ratios"]
    # 4 representations x 2 lengths, + 2 lengths x 2 runs x (shared, unshared) for the shared prefix
    assert [str(d) for d in synced] == ["cpu"] * 2 * (4 * 2 + 2 * 2 * 2)
    printed = capsys.readouterr().out
    assert "Time ratios vs image" in printed and "Shared constant prefix" in printed
    sp = r["shared_prefix"]
    assert sp["representation"] == "image" and set(sp["points"]) == {"2", "5"}
    for point in sp["points"].values():
        assert point["prefix_tokens"] > 5 and 0 < point["token_share"] < 1 and point["speedup"] > 0
    assert sp["points"]["2"]["token_share"] > sp["points"]["5"]["token_share"]  # longer histories share less

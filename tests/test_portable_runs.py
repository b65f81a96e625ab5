"""Runs that are right wherever they run: overrides merge, one placement per command, relocatable runs, refused
resumes of a changed configuration, strict weight loading."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import synthetic_tables
from llmrec.cli import main
from llmrec.config import from_dict, merge
from llmrec.data.processing import ProcessConfig, finalize, write_dataset
from llmrec.devices import resolve_device, resolve_dtype
from llmrec.errors import ConfigError, LlmrecError
from llmrec.models.base import build_model, load_model, model_config, placement_for
from llmrec.models.llm.histllm import HistLLMConfig
from llmrec.placement import Placement

TALLREC = [
    "-o", "train_examples=16", "-o", "eval_examples=16", "-o", "step1_epochs=1", "-o", "epochs=1",
]  # fmt: skip


def _err(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def _train_tallrec(data, out, tiny_llm, *extra):
    args = ["train", "tallrec", "--data", str(data), "--out", str(out), "-o", f"backbone.llm={tiny_llm}"]
    return main([*args, *TALLREC, "--splits", "test", "--ctr-examples", "24", *extra])


# ----------------------------------------------------------------------------- overrides merge


@pytest.mark.parametrize("name", ["histllm", "tallrec", "collm", "binllm"])
def test_a_backbone_override_keeps_lora_on(name):
    """Regression: `-o "backbone={lora_r: 4}"` replaced the backbone config and turned LoRA off."""
    cfg = model_config(name, {"backbone": {"lora_r": 4}})
    assert cfg.backbone.lora is True and cfg.backbone.lora_r == 4
    assert from_dict(HistLLMConfig, {"backbone": {"lora_r": 4}}).backbone.lora is True
    dotted = model_config(name, {"backbone.lora_alpha": 8, "backbone.lora_r": 4})
    assert dotted.backbone.lora is True and dotted.backbone.lora_r == 4


def test_merge_at_every_depth_and_dotted_keys():
    assert merge({"a": {"b": 1, "c": {"d": 2}}}, {"a.c.e": 3, "a": {"b": 4}}) == {
        "a": {"b": 4, "c": {"d": 2, "e": 3}}
    }
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lora_rr'\]; valid keys are .*'lora_r'"):
        model_config("histllm", {"backbone.lora_rr": 4})


def test_file_and_flags_merge_into_the_printed_config(tmp_path, capsys, synthetic_dataset):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("options:\n  backbone:\n    lora_r: 4\n  history_len: 3\neval:\n  ks: [1, 5]\n")
    args = ["train", "histllm", "--data", str(synthetic_dataset), "--config", str(cfg)]
    assert main([*args, "--dtype", "bfloat16", "-o", "backbone={lora_alpha: 8}", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    backbone = printed["options"]["backbone"]
    assert (backbone["lora"], backbone["lora_r"], backbone["lora_alpha"]) == (True, 4, 8)
    assert printed["options"]["history_len"] == 3 and printed["device"] == resolve_device("auto")
    assert printed["dtype"] == "bfloat16" and "dtype" not in backbone and "device" not in printed["options"]
    assert printed["eval"]["ks"] == [1, 5] and printed["eval"]["splits"] == ["valid", "test"]
    assert not (tmp_path / "runs").exists()  # printing trains nothing


def test_an_unknown_nested_key_is_a_one_line_error(capsys, synthetic_dataset):
    assert main(["train", "histllm", "--data", str(synthetic_dataset), "-o", "backbone.lora_rank=4"]) == 2
    [line] = _err(capsys)
    assert "backbone: unknown key(s) ['lora_rank']" in line and "'lora_r'" in line


def test_evaluate_merges_into_the_saved_evaluation_settings(tmp_path, capsys, synthetic_dataset):
    """Regression: `evaluate RUN --ks 1` replaced the run's evaluation config (ranking_users dropped)."""
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "popularity",
                "--data",
                str(synthetic_dataset),
                "--out",
                str(run),
                "--ranking-users",
                "7",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", str(run), "--ks", "1", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["eval"]["ks"] == [1] and printed["eval"]["ranking_users"] == 7
    assert main(["evaluate", str(run), "--ks", "1"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["ranking_users"] == 7 and "hit@1" in metrics["test"]
    assert json.loads((run / "config.json").read_text())["eval"]["ranking_users"] == 7


# ----------------------------------------------------------------------------- one device option


def test_device_and_dtype_resolution():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", "cuda:1") == "bfloat16" and resolve_dtype("auto", "cpu") == "float32"
    with pytest.raises(ConfigError, match="not one of"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU here"):
            resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="has none"):
        placement_for("sasrec", dtype="bfloat16")
    with pytest.raises(ConfigError, match="no device option"):
        placement_for("popularity", device="cuda")


def test_the_command_placement_reaches_every_model():
    """Regression: `-o device=...` did nothing for the LLM models (the backbone's own device won). Now the
    command's placement is the one place a device is said: the model keeps it, its config never holds it."""
    for name in ("sasrec", "illmrec", "histllm", "collm"):
        model = build_model(name, {}, 3, 4, placement_for(name, "cpu"))
        assert model.placement.device == "cpu" and "device" not in model_config(name, {}).__dataclass_fields__
        with pytest.raises(ConfigError, match="give --device instead of -o device"):
            model_config(name, {"device": "cpu"})
    with pytest.raises(ConfigError, match="give --dtype instead of -o backbone.dtype"):
        model_config("illmrec", {"backbone.dtype": "bfloat16"})
    assert placement_for("illmrec").dtype == resolve_dtype("auto", resolve_device("auto"))
    assert placement_for("mf") == Placement(resolve_device("auto"), None)


def test_gpu_recipe_on_cpu_keeps_lora_and_trains(tmp_path, tiny_llm, synthetic_dataset):
    """The GPU recipe of docs/how-to/devices.md with --device cpu --dtype bfloat16: LoRA on, trained, saved in bf16 terms."""
    run = tmp_path / "run"
    assert _train_tallrec(synthetic_dataset, run, tiny_llm, "--device", "cpu", "--dtype", "bfloat16") == 0
    record = json.loads((run / "model" / "model.json").read_text())
    saved = record["config"]
    assert "device" not in saved and "dtype" not in saved["backbone"] and saved["backbone"]["lora"]
    lora = {k: v for k, v in load_file(run / "model" / "histllm.safetensors").items() if "lora_B" in k}
    assert lora and all(v.abs().sum() > 0 for v in lora.values())  # lora_B starts at zero: it was trained
    # a model.json of an older version, which held the device and dtype in the config, still loads
    saved.update(device="cuda:3")
    saved["backbone"].update(dtype="bfloat16", device=None)
    (run / "model" / "model.json").write_text(json.dumps(record))
    loaded = load_model(run, device="cpu")
    assert loaded.placement == Placement("cpu", "float32") and loaded.backbone.dtype == torch.float32


def test_a_run_loads_in_another_precision_with_close_scores(tmp_path, tiny_llm, synthetic_dataset):
    run = tmp_path / "run"
    assert _train_tallrec(synthetic_dataset, run, tiny_llm) == 0
    fp32 = load_model(run, device="cpu")
    bf16 = load_model(run, device="cpu", dtype="bfloat16")
    assert fp32.backbone.dtype == torch.float32 and bf16.backbone.dtype == torch.bfloat16
    users, targets = np.arange(12), np.arange(12) % fp32.n_items
    hist = [np.arange(u % 5) for u in users]
    a, b = fp32.score_pairs(users, hist, targets), bf16.score_pairs(users, hist, targets)
    # bf16 keeps 8 significant bits: every rounding of a weight or an activation errs by up to 2^-9 (0.2%)
    # relatively, and the ~20 roundings on the way through two layers, the final norm and the LM head
    # compound to a few percent of the logit scale (|logit| up to ~5 here). How much depends on the prompt's
    # exact words: five wordings of the answer cue gave a largest error of 0.08 to 0.22, so 0.3 (6% of that
    # range). What must hold exactly is the use of the scores: their order (correlation > 0.99).
    np.testing.assert_allclose(b, a, atol=0.3)
    assert np.corrcoef(a, b)[0, 1] > 0.99


# ----------------------------------------------------------------------------- relocatable runs


def test_a_moved_run_and_dataset_evaluate_to_the_same_metrics(tmp_path, tiny_llm, synthetic_dataset, capsys):
    """Regression: LLM runs stored the absolute dataset path, so a moved run could not be loaded."""
    old = tmp_path / "old"
    shutil.copytree(synthetic_dataset, old / "data")
    assert _train_tallrec(old / "data", old / "runs" / "r", tiny_llm) == 0
    before = json.loads((old / "runs" / "r" / "metrics.json").read_text())["test"]
    new = tmp_path / "elsewhere" / "new"
    shutil.copytree(old, new)
    shutil.rmtree(old)
    assert main(["evaluate", str(new / "runs" / "r")]) == 0  # found through the relative path
    after = json.loads((new / "runs" / "r" / "metrics.json").read_text())["test"]
    assert after["auc"] == before["auc"] and after["uauc"] == before["uauc"]
    # moved apart: --data points at it, and its content checksum is verified
    shutil.move(new / "data", tmp_path / "moved-data")
    assert main(["evaluate", str(new / "runs" / "r")]) == 2
    assert "pass --data DIR" in _err(capsys)[-1]
    assert main(["evaluate", str(new / "runs" / "r"), "--data", str(tmp_path / "moved-data")]) == 0
    assert json.loads((new / "runs" / "r" / "metrics.json").read_text())["test"]["auc"] == before["auc"]
    other = tmp_path / "other"  # the same sizes, other frozen candidates: not the same dataset
    write_dataset(
        finalize(*synthetic_tables(), ProcessConfig(kcore=0, num_negatives=10, seed=4), {}, {}, []), other
    )
    with pytest.raises(LlmrecError, match="not the dataset the model was trained on"):
        load_model(new / "runs" / "r", data=other)


# ----------------------------------------------------------------------------- resume and weights

SASREC = ["-o", "hidden=8", "-o", "max_len=6", "-o", "epochs=1", "--no-ctr", "--no-full-ranking"]


def test_a_changed_configuration_is_not_resumed(tmp_path, capsys, synthetic_dataset):
    run = tmp_path / "run"
    base = ["train", "sasrec", "--data", str(synthetic_dataset), "--out", str(run)]
    assert main([*base, *SASREC]) == 0
    (run / "notes.txt").write_text("mine")
    assert main([*base, *SASREC, "-o", "hidden=16"]) == 2
    [line] = _err(capsys)
    assert "another configuration (changed: options.hidden)" in line and "--restart" in line
    assert main(["train", "gru4rec", "--data", str(synthetic_dataset), "--out", str(run)]) == 2
    assert "changed: model" in _err(capsys)[0]
    assert json.loads((run / "config.json").read_text())["options"]["hidden"] == 8  # nothing overwritten
    assert main([*base, *SASREC, "--device", "cpu", "--ks", "3"]) == 0  # device and evaluation may change
    assert main([*base, *SASREC, "-o", "hidden=16", "--restart"]) == 0
    assert json.loads((run / "config.json").read_text())["options"]["hidden"] == 16
    assert (run / "notes.txt").read_text() == "mine"  # --restart deletes only what llmrec wrote


def test_missing_or_unexpected_weights_are_an_error(tmp_path, synthetic_dataset, tiny_llm):
    run = tmp_path / "run"
    assert main(["train", "sasrec", "--data", str(synthetic_dataset), "--out", str(run), *SASREC]) == 0
    path = run / "model" / "model.safetensors"
    state = load_file(path)
    first = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != first}, path)
    with pytest.raises(LlmrecError, match=rf"missing \['{first}'\]"):
        load_model(run)
    save_file({**state, "extra.weight": torch.zeros(1)}, path)
    with pytest.raises(LlmrecError, match=r"unexpected \['extra.weight'\]"):
        load_model(run)
    path.write_bytes(b"truncated")
    with pytest.raises(LlmrecError, match="unreadable weights"):
        load_model(run)
    llm = tmp_path / "llm"
    assert _train_tallrec(synthetic_dataset, llm, tiny_llm) == 0
    path = llm / "model" / "histllm.safetensors"
    state = load_file(path)
    lora = next(k for k in state if "lora_A" in k)
    save_file({k: v for k, v in state.items() if k != lora}, path)  # was silently left at random init
    with pytest.raises(LlmrecError, match="missing"):
        load_model(llm)


def test_a_model_built_from_its_config_class_runs_on_auto(synthetic_dataset):
    """A model built directly in Python from its config class runs where the placement's default says
    (the CPU), and trains there."""
    from llmrec.data.dataset import Dataset
    from llmrec.models.sasrec import SASRec, SASRecConfig
    from llmrec.training import fit

    ds = Dataset(synthetic_dataset)
    model = SASRec(SASRecConfig(hidden=8, max_len=6, epochs=1), ds.n_users, ds.n_items)
    assert model.placement == Placement("cpu")
    fit(model, ds)

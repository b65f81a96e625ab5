"""Placement is the command's and configs are frozen: a model config says what was asked, never where it
ran, and does not change after the model is built."""

import dataclasses
import json

import pytest

from llmrec.cli import main
from llmrec.config import ConfigError, to_dict
from llmrec.devices import resolve_device
from llmrec.models.base import available_models, build_model, get_model_class, model_config, placement_for
from llmrec.placement import Placement


def test_a_command_resolves_auto_for_this_machine():
    here = resolve_device("auto")
    assert Placement.resolve() == Placement(here, "bfloat16" if here.startswith("cuda") else "float32")
    assert Placement.resolve(None, None, backbone=False) == Placement(here, None)
    with pytest.raises(ConfigError, match="dtype 'fp8' is not one of"):
        Placement.resolve("cpu", "fp8")


def test_under_accelerate_launch_the_placement_is_each_process_s_own_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setattr("llmrec.placement.resolve_device", lambda spec: {"auto": "cuda"}.get(spec, spec))
    assert Placement.resolve("cuda") == Placement("cuda:2", "bfloat16")  # not the configured cuda(:0)
    assert Placement.resolve("auto", backbone=False) == Placement("cuda:2", None)
    assert Placement.resolve("cpu") == Placement("cpu", "float32")  # gloo processes on the CPU
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert Placement.resolve("cuda:1").device == "cuda:1"  # alone: what the command asked for


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("name", available_models())
def test_no_model_config_holds_a_placement_and_every_one_is_frozen(name):
    cls = get_model_class(name)
    cfg = model_config(name, {})
    assert "device" not in _fields(cls.config_cls)
    backbone = getattr(cfg, "backbone", None)
    assert backbone is None or "dtype" not in _fields(type(backbone))
    assert cfg.__dataclass_params__.frozen, f"{cls.config_cls.__name__} is not frozen"
    field = next((f.name for f in dataclasses.fields(cfg)), "anything")
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, field, getattr(cfg, field, None))
    assert cls.on_device or not cls.has_backbone  # a backbone always runs on a torch device


def test_a_switch_is_checked_scoped_and_leaves_the_config_alone(tmp_path, tiny_llm):
    model = build_model("illmrec", {"backbone": {"llm": tiny_llm}}, 3, 4, placement_for("illmrec", "cpu"))
    asked = to_dict(model.cfg)
    with model.switched(shared_prefix=False, max_prompt_tokens=64):
        assert (model.opts.shared_prefix, model.opts.max_prompt_tokens) == (False, 64)
        with model.switched(max_prompt_tokens=None):  # nested: the inner block's value, the outer's others
            assert (model.opts.shared_prefix, model.opts.max_prompt_tokens) == (False, None)
        assert model.opts.max_prompt_tokens == 64
    assert model.opts is model.cfg and to_dict(model.cfg) == asked
    refused = r"cannot switch \['lr'\] while built; switchable: \['shared_prefix'"
    with pytest.raises(ConfigError, match=refused), model.switched(lr=0.1):
        pass
    out_of_range = pytest.raises(ConfigError, match="max_prompt_tokens must be >= 1")
    with out_of_range, model.switched(max_prompt_tokens=0):
        pass
    with pytest.raises(ConfigError, match="cannot switch"), build_model("mf", {}, 3, 4).switched(lr=0.1):
        pass


def test_a_run_records_the_options_asked_and_the_placement_apart(tmp_path, synthetic_dataset, capsys):
    """model.json holds the config as asked (no device written into it while training), config.json the
    command's flags; --print-config shows the placement resolved."""
    run = tmp_path / "run"
    options = ["-o", "epochs=1", "-o", "hidden=8", "-o", "max_len=5"]
    argv = [
        "train",
        "sasrec",
        "--data",
        str(synthetic_dataset),
        "--out",
        str(run),
        *options,
        "--device",
        "cpu",
    ]
    assert main([*argv, "--splits", "test"]) == 0
    saved = json.loads((run / "model" / "model.json").read_text())["config"]
    assert saved == to_dict(model_config("sasrec", {"epochs": 1, "hidden": 8, "max_len": 5}))
    config = json.loads((run / "config.json").read_text())
    assert (config["device"], config["dtype"]) == ("cpu", "auto") and "device" not in config["options"]
    capsys.readouterr()
    assert main([*argv, "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["device"], printed["dtype"]) == ("cpu", None)  # sasrec has no backbone: no dtype

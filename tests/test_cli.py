"""The command line end to end: outputs, run directories, one-line errors, earlier outputs left intact."""

import json

import pytest

from llmrec.cli import main


def _err_lines(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return [line for line in err if "error" in line]


@pytest.mark.slow
def test_prepare_ml100k_reports_counts(tmp_path, capsys):
    assert main(["prepare", "ml-100k", "--out", str(tmp_path / "ml")]) == 0
    out = capsys.readouterr().out
    assert "before filtering 943 users, 1,682 items, 100,000 interactions" in out
    assert (tmp_path / "ml" / "eval" / "test_negatives.npy").exists()
    assert main(["features", "--data", str(tmp_path / "ml")]) == 0
    assert "text: 1,349 x 384 float32 from all-minilm-l6-v2 (0 missing)" in capsys.readouterr().out


def test_images_command_records_items_without_images(synthetic_dataset, capsys):
    assert main(["images", "--data", str(synthetic_dataset), "--workers", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"] == {"no_reference": 40}
    from llmrec.data.images import load_manifest

    assert (load_manifest(synthetic_dataset)["status"] == "no_reference").all()


def test_unknown_dataset_is_one_line_error(tmp_path, capsys):
    assert main(["prepare", "ml-42k", "--out", str(tmp_path / "x")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unknown dataset 'ml-42k'" in lines[0] and "ml-100k" in lines[0]


def test_unknown_config_key_is_an_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kcore: 5\nk_core: 3\n")
    assert main(["prepare", "ml-100k", "--config", str(cfg), "--out", str(tmp_path / "x")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unknown key(s) ['k_core']" in lines[0]
    cfg.write_text("kcore: five\n")
    assert main(["prepare", "ml-100k", "--config", str(cfg)]) == 2
    assert "kcore: expected an integer" in capsys.readouterr().err


def test_bad_column_names_file_and_field_and_keeps_old_output(tmp_path, capsys):
    good = tmp_path / "inter.csv"
    rows = ["uid,iid,ts"] + [f"u{u},i{(u + t) % 9},{t}" for u in range(12) for t in range(6)]
    good.write_text("\n".join(rows) + "\n")
    out = tmp_path / "ds"
    args = [
        "prepare",
        "table",
        "--path",
        str(good),
        "--columns",
        "user_id=uid",
        "item_id=iid",
        "timestamp=ts",
        "--kcore",
        "0",
        "--num-negatives",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    before = (out / "meta.json").read_bytes()
    bad = tmp_path / "bad.csv"
    bad.write_text("uid,iid,ts\nu1,i1,5\nu1,i2,yesterday\n")
    args[args.index(str(good))] = str(bad)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.csv" in err[0] and "timestamp" in err[0]
    assert (out / "meta.json").read_bytes() == before


def test_train_evaluate_roundtrip_and_run_directory(synthetic_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(["train", "popularity", "--data", str(synthetic_dataset), "--out", str(run), "--ks", "1", "5"])
        == 0
    )
    for name in (
        "config.json",
        "metrics.json",
        "log.txt",
        "breakdown.json",
        "popularity_breakdown.png",
        "model/model.json",
    ):
        assert (run / name).exists(), name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == "popularity" and cfg["eval"]["ks"] == [1, 5]
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"hit@1", "ndcg@5", "full_hit@5", "auc", "uauc"} <= set(metrics["test"])
    assert main(["evaluate", str(run), "--ks", "1", "5"]) == 0
    again = json.loads((run / "metrics.json").read_text())
    for k in ("hit@1", "ndcg@5", "full_ndcg@5", "auc"):
        assert again["test"][k] == metrics["test"][k]


def test_unknown_model_option_is_an_error(synthetic_dataset, tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "random",
                "--data",
                str(synthetic_dataset),
                "--out",
                str(tmp_path / "r"),
                "-o",
                "seed=1",
                "-o",
                "sed=2",
            ]
        )
        == 2
    )
    assert "unknown key(s) ['sed']" in capsys.readouterr().err


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["features", "--data", str(tmp_path / "nope")]) == 2
    assert "run 'llmrec prepare" in capsys.readouterr().err


def test_recommend_command(synthetic_dataset, tmp_path, capsys):
    run = tmp_path / "pop"
    assert main(["train", "popularity", "--data", str(synthetic_dataset), "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["recommend", str(run), "--items", "i000", "i001", "--k", "3", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in recs] == [1, 2, 3]
    assert not {"i000", "i001"} & {r["item_id"] for r in recs}
    assert main(["recommend", str(run), "--items", "nope"]) == 2
    assert "field 'history': unknown item id 'nope' (position 1)" in capsys.readouterr().err
    assert main(["recommend", str(run), "--user", "u3", "--k", "2"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_the_parser_of_everyday_commands_imports_no_torch():
    """The whole parser (every command's flags) builds without importing torch."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from llmrec.cli import build_parser, main\n"
        "for only in (None, '', 'table', 'train', 'evaluate', 'recommend', 'bench', 'efficiency'):\n"
        "    build_parser(only)\n"
        "try:\n"
        "    main(['train', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_builtin_model_names_match_the_registry():
    import importlib

    from llmrec.models import base

    for module in set(base.BUILTIN_MODELS.values()):
        importlib.import_module(f"llmrec.models.{module}")
    registered = {
        name: cls.__module__.removeprefix("llmrec.models.")
        for name, cls in base._MODELS.items()
        if cls.__module__.startswith("llmrec.models.")  # tests register models of their own
    }
    assert registered == base.BUILTIN_MODELS


def test_unknown_model_names_every_model_in_a_fresh_process(tmp_path):
    """Regression: before any model module was imported, an unknown model name listed the (empty) loaded
    registry ('choose one of []'); it lists every built-in model, from the CLI and the API alike, and a near
    miss names the model meant."""
    import subprocess
    import sys

    code = (
        "from llmrec.cli import main\n"
        "from llmrec.errors import LlmrecError\n"
        "from llmrec.models import base\n"
        "assert not base._MODELS\n"
        "try:\n"
        "    base.get_model_class('nosuch')\n"
        "except LlmrecError as e:\n"
        "    print(e)\n"
        "assert not base._MODELS\n"
        "print(main(['train', 'nosuch', '--data', 'nowhere']))\n"
        "print(main(['train', 'sasrc', '--data', 'nowhere']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    api, *codes = done.stdout.strip().splitlines()
    assert codes == ["2", "2"]
    nosuch, sasrc = done.stderr.strip().splitlines()
    for line in (api, nosuch):  # the model is named before the (missing) dataset
        assert "unknown model 'nosuch'" in line and "[]" not in line and "did you mean" not in line
        assert all(name in line for name in ("sasrec", "illmrec", "popularity", "collm", "vbpr"))
    assert nosuch.startswith("llmrec train: error: ")
    assert "unknown model 'sasrc'; did you mean 'sasrec'? choose one of: " in sasrc


def test_a_builtin_model_missing_from_the_list_is_refused():
    """The built-in names have one list: a module of llmrec.models registering a name it lacks is refused."""
    from llmrec.models.base import Recommender, register_model

    cls = type("Stray", (Recommender,), {"__module__": "llmrec.models.stray"})
    with pytest.raises(ValueError, match="'stray' .* is missing from BUILTIN_MODELS"):
        register_model("stray")(cls)


# ----------------------------------------------------------------------------- the shape of the command line


def _leaf(parser, path: str):
    """The parser of ``llmrec <path>`` (``train``, ``experiments bench``)."""
    import argparse

    for word in path.split():
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


def test_help_lists_the_pipeline_and_the_experiments_apart(capsys):
    from llmrec.cli import COMMANDS, EXPERIMENTS

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    pipeline, experiments = out.split("experiments (the papers' figures and benchmarks):")
    for spec in COMMANDS:
        where = experiments if spec.group == EXPERIMENTS else pipeline
        assert f"    {spec.name} " in where, spec.name
    assert "llmrec experiments COMMAND" in experiments
    assert main(["experiments", "--help"]) == 0
    listed = capsys.readouterr().out
    assert all(f"    {s.name} " in listed for s in COMMANDS if s.group == EXPERIMENTS)
    assert "    train " not in listed


def test_an_experiment_under_its_old_name_runs_and_says_its_new_one(tmp_path, capsys):
    """The old flat names (``llmrec bench``) still work for one release, with one line on stderr."""
    assert main(["probe", "--help"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("usage: llmrec experiments probe")
    (line,) = captured.err.strip().splitlines()
    assert "llmrec probe: now spelled 'llmrec experiments probe'" in line
    assert main(["bench", "--data", str(tmp_path / "nope")]) == 2
    note, error = capsys.readouterr().err.strip().splitlines()
    assert "'llmrec experiments bench'" in note and error.startswith("llmrec experiments bench: error: ")


def test_no_help_says_a_default_twice(monkeypatch, capsys):
    """Every command's --help states each default once, even where the help text names it in words."""
    from llmrec.cli import COMMANDS

    monkeypatch.setenv("COLUMNS", "1000")  # one option per line
    for spec in COMMANDS:
        assert main([*spec.path.split(), "--help"]) == 0
        out = capsys.readouterr().out
        twice = [line for line in out.splitlines() if line.count("(default:") > 1]
        assert not twice, (spec.path, twice)
        assert "--threads N" not in out or "torch CPU threads (default: " in out
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "run directory (default: runs/<model>-<dataset>-<timestamp>)\n" in out
    assert "--threads N           torch CPU threads (default: torch's choice; >= 1)" in out


def test_add_arguments_says_a_default_given_in_words_once():
    import argparse
    from dataclasses import dataclass

    from llmrec.config import add_arguments, option

    @dataclass
    class C:
        out: str | None = option(None, "where (default: beside the data)")
        threads: int | None = option(None, "workers (default: all cores)", ge=1)
        k: int = option(10, "how many", ge=1)

    p = argparse.ArgumentParser()
    add_arguments(p, C)
    helps = {a.dest: a.help for a in p._actions}
    assert helps["out"] == "where (default: beside the data)"
    assert helps["threads"] == "workers (default: all cores; >= 1)"
    assert helps["k"] == "how many (default: 10; >= 1)"


@pytest.mark.parametrize(
    "model, lines",
    [
        (
            "sasrec",
            ["hidden=50", "(int, >= 1)  embedding / hidden size", "dropout=0.2", "(float, in [0, 1))"],
        ),
        (
            "illmrec",
            ["backbone.lora_r=8", "(int, >= 1)  LoRA rank", "recipe=llmrec", "({llmrec,paper,official})"],
        ),
    ],
)
def test_train_model_help_lists_the_model_options(model, lines, monkeypatch, capsys):
    """``llmrec train MODEL --help`` lists every -o option of the model, from its config dataclass."""
    import dataclasses

    from llmrec.models.base import model_config

    monkeypatch.setenv("COLUMNS", "1000")
    assert main(["train", model, "--help"]) == 0
    out = capsys.readouterr().out
    listed = out.split(f"model options of {model} (-o KEY=VALUE")[1].splitlines()[1:]
    for text in lines:
        assert any(text in line for line in listed), text

    def leaves(cfg) -> int:  # options, a nested config's counted one by one
        values = [getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init]
        return sum(leaves(v) if dataclasses.is_dataclass(v) else 1 for v in values)

    assert len(listed) == leaves(model_config(model, {}))


def test_train_help_without_a_model_names_the_models(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("sasrec", "illmrec", "popularity", "collm"))
    assert "'llmrec train MODEL --help' lists a model's" in out
    assert main(["train", "nosuch", "--help"]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command, how",
    [
        (["tune"], "llmrec tune MODEL --help"),  # regression: said 'llmrec tune --model NAME --help'
        (["train"], "llmrec train MODEL --help"),
        (["experiments", "bench"], "llmrec experiments bench --model NAME --help"),
    ],
)
def test_help_hint_names_the_model_as_the_command_takes_it(command, how, monkeypatch, capsys):
    """The hint to a model's options says MODEL where the model is positional, --model NAME where a flag."""
    monkeypatch.setenv("COLUMNS", "1000")
    assert main([*command, "--help"]) == 0
    assert f"'{how}' lists a model's" in capsys.readouterr().out


def test_renamed_flags_keep_their_old_spelling_for_one_release(capsys):
    """``--num-candidates`` (a count; ``candidates`` in the API and over HTTP are item ids) and probe's
    positional run: the old spellings still parse, each with one line saying the new one."""
    from llmrec.cli import build_parser

    parser = build_parser("recommend")
    args = parser.parse_args(["recommend", "r", "--user", "u1", "--num-candidates", "7"])
    assert args.candidates == 7 and capsys.readouterr().err == ""
    args = parser.parse_args(["recommend", "r", "--user", "u1", "--candidates", "5"])
    assert args.candidates == 5
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--candidates is now --num-candidates" in line
    parser = build_parser("probe")
    assert parser.parse_args(["experiments", "probe", "runs/x"]).run == "runs/x"
    assert capsys.readouterr().err == ""
    assert parser.parse_args(["experiments", "probe", "--run", "runs/y"]).run == "runs/y"
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--run is now a positional argument (llmrec experiments probe RUN)" in line


def test_threads_is_one_flag_applied_one_way(synthetic_dataset, tmp_path, monkeypatch, capsys):
    """Every command that runs torch has the same --threads, and the CLI sets torch's threads from it."""
    import torch

    from llmrec.cli import COMMANDS, build_parser

    for spec in COMMANDS:
        parser = _leaf(build_parser(spec.name), spec.path)
        threads = [a for a in parser._actions if "--threads" in a.option_strings]
        if spec.torch:
            assert len(threads) == 1 and threads[0].help.startswith("torch CPU threads (default: "), spec
    run = tmp_path / "pop"
    assert main(["train", "popularity", "--data", str(synthetic_dataset), "--out", str(run)]) == 0
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert main(["recommend", str(run), "--user", "u1", "--threads", "3"]) == 0
    assert main(["evaluate", str(run), "--threads", "2"]) == 0
    assert calls == [3, 2]
    capsys.readouterr()
    assert main(["recommend", str(run), "--user", "u1", "--threads", "0"]) == 2
    assert "argument --threads: threads must be >= 1, got 0" in capsys.readouterr().err

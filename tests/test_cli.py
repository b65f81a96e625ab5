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

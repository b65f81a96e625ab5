"""One error path for the whole CLI: bad input is one line and exit 2, a crash is one line naming a log (exit 70)."""

import pytest

from llmrec.cli import main


def _lines(capsys):
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "popularity", "--bogus"], "llmrec train: error: unrecognized arguments: --bogus"),
        (["prepare", "table", "--kcore", "x"], "argument --kcore: invalid int value"),
        (["nope"], "invalid choice"),
        ([], "the following arguments are required"),
    ],
)
def test_argument_errors_are_one_line_and_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    lines = _lines(capsys)
    assert len(lines) == 1 and needle in lines[0] and "--help" in lines[0], lines


def test_an_unexpected_error_names_a_crash_log_and_exits_70(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMREC_CRASH_DIR", str(tmp_path / "crashes"))

    def broken(cfg):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("llmrec.report.make_table", broken)
    assert main(["table", str(tmp_path)]) == 70
    lines = _lines(capsys)
    assert len(lines) == 1 and "internal error (ZeroDivisionError: boom)" in lines[0], lines
    (log,) = (tmp_path / "crashes").glob("crash-*.log")
    assert str(log) in lines[0]
    text = log.read_text()
    assert "Traceback" in text and "ZeroDivisionError: boom" in text and "table" in text.splitlines()[0]


def test_debug_prints_the_traceback_inline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMREC_CRASH_DIR", str(tmp_path / "crashes"))
    monkeypatch.setattr("llmrec.report.make_table", lambda cfg: 1 / 0)
    assert main(["table", str(tmp_path), "--debug"]) == 70
    assert "Traceback" in capsys.readouterr().err
    assert not (tmp_path / "crashes").exists()


def test_a_system_error_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    def denied(cfg):
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked"))

    monkeypatch.setattr("llmrec.report.make_table", denied)
    assert main(["table", str(tmp_path)]) == 2
    lines = _lines(capsys)
    assert len(lines) == 1 and "locked: Permission denied; check the permissions" in lines[0], lines


def test_a_config_file_that_is_not_text_is_one_line(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    assert main(["table", str(tmp_path), "--config", str(bad)]) == 2
    lines = _lines(capsys)
    assert len(lines) == 1 and "c.yaml: not a text file" in lines[0], lines
    assert main(["table", str(tmp_path), "--config", str(tmp_path)]) == 2
    assert "not a file" in _lines(capsys)[0]


def test_recommend_reads_its_config_file(synthetic_dataset, tmp_path, capsys):
    """Regression: recommend ignored --config (exit 0 on a missing one)."""
    import json

    run = tmp_path / "run"
    assert main(["train", "popularity", "--data", str(synthetic_dataset), "--out", str(run)]) == 0
    cfg = tmp_path / "rec.yaml"
    cfg.write_text("user: u3\nk: 2\njson: true\n")
    capsys.readouterr()
    assert main(["recommend", str(run), "--config", str(cfg)]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(["recommend", str(run), "--config", str(cfg), "--k", "3"]) == 0  # flags override the file
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert main(["recommend", str(run), "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in _lines(capsys)[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["experiments", "bench", "--steps", "0"],
        ["demo", "--max-users", "0"],
        ["experiments", "efficiency", "--users", "0"],
    ],
)
def test_experiment_options_out_of_range_are_refused_before_anything_runs(argv, tmp_path, capsys):
    assert main([*argv, "--data", str(tmp_path / "nope")]) == 2
    lines = _lines(capsys)
    assert len(lines) == 1 and ">= 1" in lines[0], lines


def test_a_json_file_of_binary_garbage_is_one_line(tmp_path):
    """Regression: read_json let UnicodeDecodeError through (table/evaluate on a damaged run crashed)."""
    from llmrec.errors import LlmrecError
    from llmrec.utils.io import read_json

    bad = tmp_path / "metrics.json"
    bad.write_bytes(b'{"test": \xbc\xff}')
    with pytest.raises(LlmrecError, match=r"metrics.json: not a UTF-8 text file"):
        read_json(bad)
    with pytest.raises(LlmrecError, match="a folder where a JSON file was expected"):
        read_json(tmp_path)

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

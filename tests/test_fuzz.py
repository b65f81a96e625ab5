"""Fuzz suite (issue 15, "nothing lost, nothing stale, no tracebacks"): every importer fed malformed files,
every command fed wrong options and damaged inputs. Whatever happens, ``llmrec`` either succeeds (and then
wrote a valid dataset) or prints exactly one ``llmrec <cmd>: error:`` line naming the file (and row/field
where there is one) and exits 2: never a traceback, never exit 70, and every file that existed before is
byte-identical afterwards, with no ``.partial`` leftovers.

The default run is quick and deterministic (hypothesis ``derandomize``, few examples per importer); the long
campaign is ``pytest -m fuzz`` (``LLMREC_FUZZ_EXAMPLES`` examples per importer, default 500).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from conftest import synthetic_tables
from fuzz_helpers import (
    assert_one_error_line,
    assert_unchanged,
    assert_valid_dataset,
    copy_tree,
    partials,
    raw_sources,
    run_cli,
    run_killed,
    snapshot,
)
from llmrec.cli import COMMANDS

SOURCES = raw_sources()
DEFAULT_EXAMPLES = int(os.environ.get("LLMREC_FUZZ_DEFAULT_EXAMPLES", "25"))
CAMPAIGN_EXAMPLES = int(os.environ.get("LLMREC_FUZZ_EXAMPLES", "500"))


@pytest.fixture(scope="module", autouse=True)
def crash_dir(tmp_path_factory):
    """Crash logs (exit 70) go to a temp folder, never into ~/.local/state."""
    folder = tmp_path_factory.mktemp("crashes")
    old = os.environ.get("LLMREC_CRASH_DIR")
    os.environ["LLMREC_CRASH_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("LLMREC_CRASH_DIR", None)
    else:
        os.environ["LLMREC_CRASH_DIR"] = old


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """Per importer: the valid raw files prepared once (the dataset a failed re-run must leave intact)."""
    root = tmp_path_factory.mktemp("prepared")
    out = {}
    for key, src in SOURCES.items():
        src.write(root / key / "raw")
        r = run_cli(src.argv(root / key / "raw", root / key / "out"))
        assert r.code == 0, f"the valid {key} source does not prepare: {r}"
        assert_valid_dataset(root / key / "out")
        out[key] = root / key / "out"
    return out


# ----------------------------------------------------------------------------- mutations of raw files

WEIRD_TEXT = [
    "", " ", "abc", "9999999999999999999999", "-9999999999999999999999", "inf", "-inf", "nan", "NaN",
    "-1", "0", "1e308", "1e400", "0x10", "1,5", "\x00", "NULL", '"', "2024-13-45", "é", "<script>x</script>",
]  # fmt: skip
WEIRD_JSON = [
    "", "abc", 9999999999999999999999, -9999999999999999999999, -1, 0, 1.5e308, math.inf, -math.inf,
    math.nan, None, [], {}, True, "1e308", [1, 2], {"a": 1}, "\x00", "<script>x</script>",
]  # fmt: skip


def _kind(name: str) -> str:
    base = name.removesuffix(".gz")
    if base.endswith((".json", ".jsonl")):
        return "jsonl"
    return "dat" if base.endswith(".dat") else "csv"


def _sep(kind: str) -> str:
    return "::" if kind == "dat" else ","


def _mutate_line(data: st.DataObject, kind: str, line: str) -> str:
    """One field of one record: a weird value, removed, renamed or duplicated."""
    op = data.draw(st.sampled_from(["set", "drop", "dup"]), label="field op")
    if kind == "jsonl":
        try:
            rec = json.loads(line)
        except ValueError:
            return line + "}"
        if not isinstance(rec, dict) or not rec:
            return "[" + line + "]"
        key = data.draw(st.sampled_from(sorted(rec)), label="key")
        if op == "set":
            rec[key] = data.draw(st.sampled_from(WEIRD_JSON), label="json value")
        elif op == "drop":
            del rec[key]
        else:
            rec[key + "_x"] = rec.pop(key)
        return json.dumps(rec)
    sep = _sep(kind)
    fields = line.split(sep)
    i = data.draw(st.integers(0, len(fields) - 1), label="field")
    if op == "set":
        fields[i] = data.draw(st.sampled_from(WEIRD_TEXT), label="text value")
    elif op == "drop":
        del fields[i]
    else:
        fields.insert(i, fields[i])
    return sep.join(fields)


def _mutate_text(data: st.DataObject, name: str, text: str) -> bytes:
    """Structural and value mutations of a decoded text file, as bytes again."""
    kind = _kind(name)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    header = kind == "csv"
    first = 1 if header else 0
    op = data.draw(
        st.sampled_from(
            ["field", "field", "field", "delete_line", "dup_line", "bad_utf8", "bom", "crlf", "tabs",
             "dup_header", "empty", "header_only", "truncate", "blank_lines", "nul"]
        ),
        label="text op",
    )  # fmt: skip
    event(f"{name}: {op}")
    suffix = "\n"
    n = len(lines)
    pick = data.draw(st.integers(first, max(first, n - 1)), label="line") if n > first else 0
    if op == "field" and n > first:
        for _ in range(data.draw(st.integers(1, 3), label="fields")):
            j = data.draw(st.integers(first, n - 1), label="line")
            lines[j] = _mutate_line(data, kind, lines[j])
    elif op == "delete_line" and n:
        del lines[pick]
    elif op == "dup_line" and n:
        lines.insert(pick, lines[pick])
    elif op == "bad_utf8" and n:
        raw = [line.encode("utf-8") for line in lines]
        pos = data.draw(st.integers(0, len(raw[pick])), label="byte position")
        raw[pick] = (
            raw[pick][:pos]
            + data.draw(st.sampled_from([b"\xff", b"\xc3", b"\xe9t\xe9", b"\x80\x80"]))
            + raw[pick][pos:]
        )
        return b"\n".join(raw) + b"\n"
    elif op == "bom":
        return b"\xef\xbb\xbf" + ("\n".join(lines) + suffix).encode("utf-8")
    elif op == "crlf":
        suffix = "\r\n"
        return ("\r\n".join(lines) + suffix).encode("utf-8")
    elif op == "tabs":
        lines = [line.replace(_sep(kind), "\t") for line in lines]
    elif op == "dup_header" and header and n:
        cols = lines[0].split(",")
        a, b = data.draw(st.integers(0, len(cols) - 1)), data.draw(st.integers(0, len(cols) - 1))
        cols[a] = cols[b]
        lines[0] = ",".join(cols)
    elif op == "empty":
        return b""
    elif op == "header_only":
        lines = lines[:first]
    elif op == "truncate":
        body = ("\n".join(lines) + suffix).encode("utf-8")
        return body[: data.draw(st.integers(0, len(body)), label="cut")]
    elif op == "blank_lines":
        lines.insert(pick, "")
        lines.insert(pick, "   ")
    elif op == "nul" and n:
        lines[pick] = lines[pick] + "\x00"
    return ("\n".join(lines) + suffix).encode("utf-8")


def _mutate(data: st.DataObject, name: str, content: bytes) -> bytes:
    """A mutated version of one raw file: text-level, then maybe a byte-level mutation (compressed or not)."""
    gz = name.endswith(".gz")
    plain = gzip.decompress(content) if gz else content
    if data.draw(st.booleans(), label="text mutation"):
        plain = _mutate_text(data, name, plain.decode("utf-8"))
    raw = gzip.compress(plain, mtime=0) if gz else plain
    byte_ops = ["none", "flip", "truncate"] + (["not_gzip", "gzip_garbage"] if gz else [])
    op = data.draw(st.sampled_from(byte_ops), label="byte op")
    event(f"{name}: bytes {op}")
    if op == "flip" and raw:
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            i = data.draw(st.integers(0, len(raw) - 1), label="offset")
            raw = raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255), label="xor")]) + raw[i + 1 :]
    elif op == "truncate":
        raw = raw[: data.draw(st.integers(0, max(0, len(raw) - 1)), label="cut")]
    elif op == "not_gzip":
        raw = plain
    elif op == "gzip_garbage":
        raw = gzip.compress(data.draw(st.binary(min_size=1, max_size=200), label="garbage"), mtime=0)
    return raw


def _fuzz_one(key: str, prepared: dict[str, Path], data: st.DataObject) -> None:
    src = SOURCES[key]
    target = data.draw(st.sampled_from(sorted(src.files)), label="file")
    mutated = _mutate(data, target, src.files[target])
    root = prepared[key].parent.parent
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        work = Path(tmp)
        src.write(work / "raw")
        (work / "raw" / target).write_bytes(mutated)
        copy_tree(prepared[key], work / "out")  # an earlier dataset a failure must leave as it was
        before = snapshot(work)
        r = run_cli(src.argv(work / "raw", work / "out"))
        event(f"exit {r.code}")
        if r.code == 0:
            assert "Traceback" not in r.err, str(r)
            assert_unchanged(before, work, ignore=("out",))
            assert_valid_dataset(work / "out")
        else:
            assert_one_error_line(r, "prepare", names=(target,))
            assert_unchanged(before, work)


_FUZZ_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}


@pytest.mark.parametrize("key", sorted(SOURCES))
# no shrinking in the quick pass: a failure is reported as found (shrinking re-runs prepare hundreds of times)
@settings(
    max_examples=DEFAULT_EXAMPLES,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    report_multiple_bugs=False,
    **_FUZZ_SETTINGS,
)
@given(data=st.data())
def test_importer_survives_mutated_files(key, prepared, data):
    """Quick deterministic pass: a few mutated files per importer."""
    _fuzz_one(key, prepared, data)


@pytest.mark.fuzz
@pytest.mark.parametrize("key", sorted(SOURCES))
@settings(max_examples=CAMPAIGN_EXAMPLES, **_FUZZ_SETTINGS)
@given(data=st.data())
def test_importer_fuzz_campaign(key, prepared, data):
    """The long campaign (``pytest -m fuzz``): LLMREC_FUZZ_EXAMPLES random mutated files per importer."""
    _fuzz_one(key, prepared, data)


# ----------------------------------------------------------------------------- hand-made corrupt files


def _lines(data: bytes) -> list[bytes]:
    return data.rstrip(b"\n").split(b"\n")


def _join(lines: list[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n"


def _set_line(data: bytes, lineno: int, new: bytes) -> bytes:
    lines = _lines(data)
    lines[lineno - 1] = new
    return _join(lines)


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _ungz(data: bytes) -> bytes:
    return gzip.decompress(data)


def _json_line(data: bytes, lineno: int, **changes) -> bytes:
    rec = json.loads(_lines(data)[lineno - 1])
    rec.update(changes)
    return _set_line(data, lineno, json.dumps(rec).encode())


@dataclass
class FileCase:
    """One hand-made damaged file for one importer and what ``prepare`` must say about it."""

    id: str
    source: str
    file: str
    make: Callable[[bytes, dict[str, bytes]], bytes]  # (the valid file, all valid files) -> damaged bytes
    ok: bool = False  # a harmless variant: must succeed
    either: bool = False  # success or the one-line error, never a crash
    names: tuple[str, ...] = ()
    row: int | None = None
    field: str | None = None
    absent: tuple[str, ...] = ()
    check: Callable[[Path], None] | None = None  # extra check of a successful dataset


def _no_script_bodies(out: Path) -> None:
    import pandas as pd

    titles = pd.read_parquet(out / "items.parquet")["title"].tolist()
    assert not any("alert" in t or "color" in t for t in titles), titles


RNG = random.Random(15)
GARBAGE = bytes(RNG.randrange(256) for _ in range(300))

FILE_CASES = [
    # table importer: compression
    FileCase("table-gz-truncated", "table-gz", "inter.csv.gz", lambda b, f: b[: len(b) // 2], names=("inter.csv.gz",)),
    FileCase("table-gz-corrupt", "table-gz", "inter.csv.gz", lambda b, f: b[:20] + bytes(x ^ 0x5A for x in b[20:]), names=("inter.csv.gz",)),
    FileCase("table-gz-not-gzip", "table-gz", "inter.csv.gz", lambda b, f: _ungz(b), either=True, names=("inter.csv.gz",)),
    FileCase("table-gz-of-garbage", "table-gz", "inter.csv.gz", lambda b, f: _gz(GARBAGE), names=("inter.csv.gz",)),
    # table importer: shape
    FileCase("table-empty", "table", "inter.csv", lambda b, f: b"", names=("inter.csv",)),
    FileCase("table-header-only", "table", "inter.csv", lambda b, f: _lines(b)[0] + b"\n", names=("inter.csv",)),
    FileCase("table-items-header-only", "table", "items.csv", lambda b, f: _lines(b)[0] + b"\n", names=("items.csv",)),
    FileCase("table-tsv-named-csv", "table", "inter.csv", lambda b, f: b.replace(b",", b"\t"), names=("inter.csv", "separat"), absent=("--columns",)),
    FileCase("table-duplicated-header-column", "table", "inter.csv", lambda b, f: _set_line(b, 1, b"user_id,item_id,timestamp,user_id"), names=("inter.csv", "user_id")),
    FileCase("table-crlf", "table", "inter.csv", lambda b, f: b.replace(b"\n", b"\r\n"), ok=True),
    # table importer: values
    FileCase("table-huge-timestamp", "table", "inter.csv", lambda b, f: _set_line(b, 4, b"u0,i2,9999999999999999999999,3"), names=("inter.csv",), row=4, field="timestamp"),
    FileCase("table-inf-rating", "table", "inter.csv", lambda b, f: _set_line(b, 5, b"u0,i3,1500010800,inf"), names=("inter.csv",), row=5, field="rating"),
    FileCase("table-text-timestamp", "table", "inter.csv", lambda b, f: _set_line(b, 3, b"u0,i1,yesterday,3"), names=("inter.csv",), row=3, field="timestamp"),
    FileCase("table-empty-user", "table", "inter.csv", lambda b, f: _set_line(b, 7, b",i5,1500018000,3"), names=("inter.csv",), row=7, field="user_id"),
    FileCase("table-not-utf8-line-6", "table", "inter.csv", lambda b, f: _set_line(b, 6, b"u0,i4\xff,1500014400,5"), names=("inter.csv",), row=6),
    FileCase("table-script-in-title", "table", "items.csv", lambda b, f: _set_line(b, 2, b'i0,"<script>alert(1)</script><style>p{color:red}</style>Item 0",b'), ok=True, check=_no_script_bodies),
    # Amazon 2018
    FileCase("amazon2018-not-utf8-line-41", "amazon2018", "Toys_5.json", lambda b, f: _set_line(b, 41, _lines(b)[40][:-1] + b', "summary": "\xff"}'), names=("Toys_5.json",), row=41, absent=("download it again",)),
    FileCase("amazon2018-reviews-as-meta", "amazon2018", "meta_Toys.json.gz", lambda b, f: _gz(f["Toys_5.json"]), names=("meta_Toys.json.gz",)),
    FileCase("amazon2018-meta-matches-no-review", "amazon2018", "meta_Toys.json.gz", lambda b, f: _gz(_ungz(b).replace(b'"asin": "i', b'"asin": "zz')), names=("meta_Toys.json.gz",)),
    FileCase("amazon2018-meta-truncated-gz", "amazon2018", "meta_Toys.json.gz", lambda b, f: b[: len(b) - 12], names=("meta_Toys.json.gz",)),
    FileCase("amazon2018-huge-time", "amazon2018", "Toys_5.json", lambda b, f: _json_line(b, 3, unixReviewTime=9999999999999999999999), names=("Toys_5.json",), row=3, field="unixReviewTime"),
    FileCase("amazon2018-inf-rating", "amazon2018", "Toys_5.json", lambda b, f: _json_line(b, 4, overall=math.inf), names=("Toys_5.json",), row=4, field="overall"),
    # Amazon 2023
    FileCase("amazon2023-gz-of-garbage", "amazon2023", "Toys.jsonl.gz", lambda b, f: _gz(GARBAGE), names=("Toys.jsonl.gz",)),
    FileCase("amazon2023-a-list-line", "amazon2023", "Toys.jsonl.gz", lambda b, f: _gz(_set_line(_ungz(b), 2, b"[1, 2]")), names=("Toys.jsonl.gz",), row=2),
    FileCase("amazon2023-text-rating", "amazon2023", "Toys.jsonl.gz", lambda b, f: _gz(_json_line(_ungz(b), 4, rating="five")), names=("Toys.jsonl.gz",), row=4, field="rating"),
    FileCase("amazon2023-meta-empty", "amazon2023", "meta_Toys.jsonl", lambda b, f: b"", names=("meta_Toys.jsonl",)),
    # MovieLens
    FileCase("ml-1m-text-rating", "ml-1m", "ratings.dat", lambda b, f: _set_line(b, 3, b"0::2::x::1500007200"), names=("ratings.dat",), row=3, field="Rating"),
    FileCase("ml-1m-truncated-last-line", "ml-1m", "ratings.dat", lambda b, f: b"\n".join(_lines(b)[:-1] + [_lines(b)[-1][:4]]), names=("ratings.dat",), row=48),
    FileCase("ml-1m-movies-empty", "ml-1m", "movies.dat", lambda b, f: b"", names=("movies.dat",)),
    FileCase("ml-latest-header-only", "ml-latest", "ratings.csv", lambda b, f: _lines(b)[0] + b"\n", names=("ratings.csv",)),
    FileCase("ml-latest-huge-timestamp", "ml-latest", "ratings.csv", lambda b, f: _set_line(b, 2, b"0,0,1.0,9999999999999999999999"), names=("ratings.csv",), row=2, field="timestamp"),
    FileCase("ml-latest-bom", "ml-latest", "ratings.csv", lambda b, f: b"\xef\xbb\xbf" + b, either=True, names=("ratings.csv",)),
]  # fmt: skip


@pytest.mark.parametrize("case", FILE_CASES, ids=[c.id for c in FILE_CASES])
def test_damaged_file_is_one_line_and_leaves_the_old_dataset(case: FileCase, prepared, tmp_path):
    src = SOURCES[case.source]
    src.write(tmp_path / "raw")
    (tmp_path / "raw" / case.file).write_bytes(case.make(src.files[case.file], src.files))
    copy_tree(prepared[case.source], tmp_path / "out")
    before = snapshot(tmp_path)
    r = run_cli(src.argv(tmp_path / "raw", tmp_path / "out"))
    if case.ok or (case.either and r.code == 0):
        assert r.code == 0, str(r)
        assert_unchanged(before, tmp_path, ignore=("out",))
        assert_valid_dataset(tmp_path / "out")
        if case.check:
            case.check(tmp_path / "out")
        return
    assert_one_error_line(r, "prepare", names=case.names, row=case.row, field=case.field, absent=case.absent)
    assert_unchanged(before, tmp_path)


# ----------------------------------------------------------------------------- every command, wrong options


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """Valid inputs for the commands: datasets (one, another of the same size, a smaller one), a trained
    popularity run and a one-epoch SASRec run (it has model.safetensors), a plain file, a garbage YAML."""
    from llmrec.data.processing import ProcessConfig, finalize, write_dataset

    root = tmp_path_factory.mktemp("bases")
    paths = {}
    for name, kw in {"ds": {}, "ds_same": {"seed": 1}, "ds_small": {"n_users": 20, "n_items": 30}}.items():
        items, inter = synthetic_tables(**kw)
        counts = {"users": inter["user_id"].nunique(), "items": len(items), "interactions": len(inter)}
        cfg = ProcessConfig(kcore=0, num_negatives=10, seed=3)
        write_dataset(finalize(items, inter, cfg, {"name": "synthetic"}, counts, []), root / name)
        paths[name] = root / name
    for name, extra in {"pop": ["popularity"], "sas": ["sasrec", "-o", "epochs=1", "-o", "hidden=8"]}.items():
        r = run_cli(["train", *extra, "--data", root / "ds", "--out", root / name])
        assert r.code == 0, str(r)
        paths[name] = root / name
    (root / "notes.txt").write_text("not a dataset\n")
    paths["file"] = root / "notes.txt"
    (root / "garbage.yaml").write_bytes(b"\x00\xff{{: [\n\t- ]]\n")
    paths["garbage_yaml"] = root / "garbage.yaml"
    (root / "list.yaml").write_text("- kcore\n- 5\n")
    paths["list_yaml"] = root / "list.yaml"
    paths["root"] = root
    return paths


def _garbage(path: Path) -> None:
    path.write_bytes(GARBAGE)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _json_list(path: Path) -> None:
    path.write_text("[1, 2, 3]\n")


# Damage applied to a copy before the command runs: (copy of which base, file inside it, how).
Damage = tuple[str, str, Callable[[Path], None]]


@dataclass
class OptionCase:
    """One command line that must be refused with one line: ``{name}`` fills in a base path (a copy of
    it in the case's folder), ``{missing}`` a path that does not exist, ``{tmp}`` the case's folder."""

    id: str
    argv: list[str]
    names: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    damage: list[Damage] = field(default_factory=list)
    cwd: str | None = None

    @property
    def command(self) -> str:
        """The command's words after ``llmrec`` (``train``, ``experiments bench``)."""
        return " ".join(self.argv[:2]) if self.argv[0] == "experiments" else self.argv[0]


def _generic_cases() -> list[OptionCase]:
    """For every command: an unknown option, a missing and a garbage --config file."""
    cases = []
    needs = {  # the required arguments, valid, so the option under test is what is wrong
        "prepare": ["table", "--path", "{ds}/items.parquet", "--out", "{tmp}/new"],
        "train": ["popularity", "--data", "{ds}", "--out", "{tmp}/run"],
        "prompts": ["illmrec", "--data", "{ds}"],
        "evaluate": ["{pop}"],
        "recommend": ["{pop}", "--user", "u1"],
        "table": ["{pop}"],
        "assets": ["list"],
    }
    for spec in COMMANDS:
        name = spec.name
        base = [*spec.path.split(), *needs.get(name, [])]
        cases += [
            OptionCase(
                f"{name}-unknown-option", [*base, "--no-such-option", "1"], names=("--no-such-option",)
            ),
            OptionCase(f"{name}-config-missing", [*base, "--config", "{missing}/c.yaml"], names=("c.yaml",)),
            OptionCase(
                f"{name}-config-garbage", [*base, "--config", "{garbage_yaml}"], names=("garbage.yaml",)
            ),
            OptionCase(
                f"{name}-config-not-a-mapping", [*base, "--config", "{list_yaml}"], names=("list.yaml",)
            ),
        ]
    return cases


OPTION_CASES = _generic_cases() + [
    # prepare
    OptionCase("prepare-no-args", ["prepare"], names=("dataset",)),
    OptionCase("prepare-kcore-negative", ["prepare", "table", "--path", "{tmp}/x.csv", "--kcore", "-1"], names=("kcore",)),
    OptionCase("prepare-kcore-text", ["prepare", "table", "--kcore", "five"], names=("--kcore",)),
    OptionCase("prepare-num-negatives-0", ["prepare", "table", "--path", "{tmp}/x.csv", "--num-negatives", "0"], names=("num_negatives",)),
    OptionCase("prepare-ctr-split-sum", ["prepare", "table", "--path", "{tmp}/x.csv", "--ctr-split", "0.5", "0.5", "0.5"], names=("ctr_split",)),
    OptionCase("prepare-columns-no-equals", ["prepare", "table", "--path", "{tmp}/x.csv", "--columns", "user_id"], names=("user_id",)),
    OptionCase("prepare-columns-unknown", ["prepare", "table", "--path", "{ds}/interactions.parquet", "--columns", "bogus=x", "--out", "{tmp}/o"], names=("bogus",)),
    OptionCase("prepare-path-missing", ["prepare", "table", "--path", "{missing}/inter.csv", "--out", "{tmp}/o"], names=("inter.csv",)),
    OptionCase("prepare-path-is-a-folder", ["prepare", "table", "--path", "{ds}", "--out", "{tmp}/o"], names=("ds",)),
    OptionCase("prepare-path-unknown-extension", ["prepare", "table", "--path", "{file}", "--out", "{tmp}/o"], names=("notes.txt",)),
    OptionCase("prepare-num-negatives-huge", ["prepare", "table", "--path", "{ds}/interactions.parquet", "--kcore", "0", "--num-negatives", "1000000", "--out", "{tmp}/o"], names=("--num-negatives",)),
    OptionCase("prepare-ml1m-folder-missing", ["prepare", "ml-1m", "--path", "{missing}", "--out", "{tmp}/o"], names=("does-not-exist",)),
    OptionCase("prepare-amazon-meta-missing", ["prepare", "amazon2018", "--path", "{file}", "--meta-path", "{missing}/meta.json.gz", "--out", "{tmp}/o"], names=("meta.json.gz",)),
    # --out onto something that is not a dataset: refused, nothing deleted (issue item 1)
    OptionCase("prepare-out-onto-a-non-dataset-folder", ["prepare", "table", "--path", "{ds}/interactions.parquet", "--kcore", "0", "--num-negatives", "2", "--out", "{tmp}/victim"], names=("victim", "--overwrite"), damage=[("victim", "", lambda p: None)]),
    OptionCase("prepare-out-is-a-file", ["prepare", "table", "--path", "{ds}/interactions.parquet", "--kcore", "0", "--num-negatives", "2", "--out", "{file}"], names=("notes.txt",)),
    OptionCase("prepare-out-dot-in-a-non-dataset-folder", ["prepare", "table", "--path", "{ds}/interactions.parquet", "--kcore", "0", "--num-negatives", "2", "--out", "."], cwd="victim", damage=[("victim", "", lambda p: None)]),
    # images
    OptionCase("images-data-missing", ["images", "--data", "{missing}/ds"], names=("ds",)),
    OptionCase("images-data-is-a-file", ["images", "--data", "{file}"], names=("notes.txt",)),
    OptionCase("images-workers-0", ["images", "--data", "{ds}", "--workers", "0"], names=("workers",)),
    OptionCase("images-timeout-negative", ["images", "--data", "{ds}", "--timeout", "-1"], names=("timeout",)),
    OptionCase("images-max-bytes-0", ["images", "--data", "{ds}", "--max-bytes", "0"], names=("max_bytes",)),
    OptionCase("images-missing-bad-choice", ["images", "--data", "{ds}", "--missing", "nope"], names=("--missing",)),
    OptionCase("images-image-dir-missing", ["images", "--data", "{ds}", "--image-dir", "{missing}/imgs"], names=("imgs",)),
    OptionCase("images-corrupt-items", ["images", "--data", "{ds}"], names=("items.parquet",), damage=[("ds", "items.parquet", _garbage)]),
    # features
    OptionCase("features-data-missing", ["features", "--data", "{missing}/ds"], names=("ds",)),
    OptionCase("features-data-is-a-file", ["features", "--data", "{file}"], names=("notes.txt",)),
    OptionCase("features-batch-size-0", ["features", "--data", "{ds}", "--batch-size", "0"], names=("batch_size",)),
    OptionCase("features-corrupt-items", ["features", "--data", "{ds}"], names=("items.parquet",), damage=[("ds", "items.parquet", _garbage)]),
    OptionCase("features-corrupt-meta", ["features", "--data", "{ds}"], names=("meta.json",), damage=[("ds", "meta.json", _garbage)]),
    OptionCase("features-text-encoder-missing", ["features", "--data", "{ds}", "--text-encoder", "{missing}/enc"], names=("enc",)),
    OptionCase("features-unknown-template-field", ["features", "--data", "{ds}", "--template", "Title: {no_such_field}"], names=("no_such_field",)),
    OptionCase("features-cf-missing-run", ["features", "--data", "{ds}", "--no-text", "--cf", "{missing}/run"], names=("run",)),
    OptionCase("features-cf-not-a-run", ["features", "--data", "{ds}", "--no-text", "--cf", "{ds_same}"], names=("ds_same",)),
    OptionCase("features-cf-other-dataset-same-size", ["features", "--data", "{ds_same}", "--no-text", "--cf", "{sas}"], names=("ds_same",)),
    # train
    OptionCase("train-no-model", ["train"], names=("model",)),
    OptionCase("train-unknown-model", ["train", "nosuchmodel", "--data", "{ds}", "--out", "{tmp}/r"], names=("nosuchmodel",)),
    OptionCase("train-data-missing", ["train", "popularity", "--data", "{missing}/ds", "--out", "{tmp}/r"], names=("ds",)),
    OptionCase("train-data-is-a-file", ["train", "popularity", "--data", "{file}", "--out", "{tmp}/r"], names=("notes.txt",)),
    OptionCase("train-data-corrupt-meta", ["train", "popularity", "--data", "{ds}", "--out", "{tmp}/r"], names=("meta.json",), damage=[("ds", "meta.json", _garbage)]),
    OptionCase("train-data-corrupt-sequences", ["train", "popularity", "--data", "{ds}", "--out", "{tmp}/r"], names=("sequences.parquet",), damage=[("ds", "sequences.parquet", _garbage)]),
    OptionCase("train-max-len-0", ["train", "sasrec", "--data", "{ds}", "--out", "{tmp}/r", "-o", "max_len=0"], names=("max_len",)),
    OptionCase("train-dropout-2", ["train", "sasrec", "--data", "{ds}", "--out", "{tmp}/r", "-o", "dropout=2"], names=("dropout",)),
    OptionCase("train-hidden-text", ["train", "sasrec", "--data", "{ds}", "--out", "{tmp}/r", "-o", "hidden=abc"], names=("hidden",)),
    OptionCase("train-unknown-model-option", ["train", "sasrec", "--data", "{ds}", "--out", "{tmp}/r", "-o", "bogus=1"], names=("bogus",)),
    OptionCase("train-option-without-equals", ["train", "sasrec", "--data", "{ds}", "--out", "{tmp}/r", "-o", "epochs"], names=("epochs",)),
    OptionCase("train-ks-0", ["train", "popularity", "--data", "{ds}", "--out", "{tmp}/r", "--ks", "0"], names=("ks",)),
    OptionCase("train-ks-negative", ["train", "popularity", "--data", "{ds}", "--out", "{tmp}/r", "--ks", "-5"], names=("ks",)),
    OptionCase("train-splits-unknown", ["train", "popularity", "--data", "{ds}", "--out", "{tmp}/r", "--splits", "train"], names=("split",)),
    OptionCase("train-seed-text", ["train", "popularity", "--data", "{ds}", "--seed", "x"], names=("--seed",)),
    OptionCase("train-out-is-a-file", ["train", "popularity", "--data", "{ds}", "--out", "{file}"], names=("notes.txt",)),
    OptionCase("train-other-model-into-a-run", ["train", "random", "--data", "{ds}", "--out", "{pop}", "--no-full-ranking", "--no-ctr", "--ks", "5"], names=("pop", "--restart")),
    # evaluate
    OptionCase("evaluate-no-run", ["evaluate"], names=("run",)),
    OptionCase("evaluate-run-missing", ["evaluate", "{missing}/run"], names=("run",)),
    OptionCase("evaluate-run-is-a-file", ["evaluate", "{file}"], names=("notes.txt",)),
    OptionCase("evaluate-run-is-a-dataset", ["evaluate", "{ds}"], names=("ds",)),
    OptionCase("evaluate-ks-0", ["evaluate", "{pop}", "--ks", "0"], names=("ks",)),
    OptionCase("evaluate-ctr-examples-0", ["evaluate", "{pop}", "--ctr-examples", "0"], names=("ctr_examples",)),
    OptionCase("evaluate-other-dataset-same-size", ["evaluate", "{pop}", "--data", "{ds_same}"], names=("ds_same",)),
    OptionCase("evaluate-other-dataset-other-size", ["evaluate", "{pop}", "--data", "{ds_small}"], names=("ds_small",)),
    OptionCase("evaluate-corrupt-config", ["evaluate", "{pop}"], names=("config.json",), damage=[("pop", "config.json", _garbage)]),
    OptionCase("evaluate-model-json-missing", ["evaluate", "{sas}"], names=("model.json",), damage=[("sas", "model/model.json", Path.unlink)]),
    OptionCase("evaluate-weights-truncated", ["evaluate", "{sas}"], names=("model.safetensors",), damage=[("sas", "model/model.safetensors", _truncate)]),
    # recommend
    OptionCase("recommend-no-who", ["recommend", "{pop}"], names=("--user",)),
    OptionCase("recommend-k-0", ["recommend", "{pop}", "--user", "u1", "--k", "0"], names=("k must be >= 1",)),
    OptionCase("recommend-k-negative", ["recommend", "{pop}", "--user", "u1", "--k", "-5"], names=("k must be >= 1",)),
    OptionCase("recommend-k-text", ["recommend", "{pop}", "--user", "u1", "--k", "ten"], names=("--k",)),
    OptionCase("recommend-unknown-user", ["recommend", "{pop}", "--user", "nobody"], names=("nobody",)),
    OptionCase("recommend-unknown-items", ["recommend", "{pop}", "--items", "zzz1", "zzz2"], names=("zzz1",)),
    OptionCase("recommend-run-missing", ["recommend", "{missing}/run", "--user", "u1"], names=("run",)),
    OptionCase("recommend-weights-missing", ["recommend", "{sas}", "--user", "u1"], names=("model.safetensors",), damage=[("sas", "model/model.safetensors", Path.unlink)]),
    OptionCase("recommend-weights-truncated", ["recommend", "{sas}", "--user", "u1"], names=("model.safetensors",), damage=[("sas", "model/model.safetensors", _truncate)]),
    OptionCase("recommend-weights-garbage", ["recommend", "{sas}", "--user", "u1"], names=("model.safetensors",), damage=[("sas", "model/model.safetensors", _garbage)]),
    OptionCase("recommend-model-json-garbage", ["recommend", "{sas}", "--user", "u1"], names=("model.json",), damage=[("sas", "model/model.json", _garbage)]),
    OptionCase("recommend-other-dataset-other-size", ["recommend", "{sas}", "--user", "u1", "--data", "{ds_small}"], names=("ds_small",)),
    OptionCase("recommend-other-dataset-same-size", ["recommend", "{sas}", "--user", "u1", "--data", "{ds_same}"], names=("ds_same",)),
    # bench-prepare: refused before anything is generated
    OptionCase("bench-prepare-reviews-10", ["experiments", "bench-prepare", "--reviews", "10", "--out", "{tmp}/b"], names=("reviews",)),
    OptionCase("bench-prepare-unknown-path", ["experiments", "bench-prepare", "--paths", "nope", "--out", "{tmp}/b"], names=("nope",)),
    # table
    OptionCase("table-no-runs", ["table"], names=("runs",)),
    OptionCase("table-run-missing", ["table", "{missing}/run"], names=("run",)),
    OptionCase("table-not-a-run", ["table", "{ds}"], names=("ds",)),
    OptionCase("table-corrupt-metrics", ["table", "{pop}"], names=("metrics.json",), damage=[("pop", "metrics.json", _garbage)]),
    OptionCase("table-metrics-not-a-mapping", ["table", "{pop}"], names=("metrics.json",), damage=[("pop", "metrics.json", _json_list)]),
    OptionCase("table-corrupt-config", ["table", "{pop}"], names=("config.json",), damage=[("pop", "config.json", _garbage)]),
    OptionCase("table-unknown-split", ["table", "{pop}", "--split", "nosuch"], names=("nosuch", "metrics.json")),
    # probe
    OptionCase("probe-run-missing", ["experiments", "probe", "{missing}/run"], names=("run",)),
    OptionCase("probe-run-without-user-states", ["experiments", "probe", "{pop}"], names=("pop",)),
    OptionCase("probe-folds-1", ["experiments", "probe", "{pop}", "--folds", "1"], names=("folds",)),
    OptionCase("probe-split-unknown", ["experiments", "probe", "{pop}", "--split", "train"], names=("split",)),
    # describe
    OptionCase("describe-llm-gguf-missing", ["describe", "--data", "{ds}", "--llm", "{missing}/model.gguf", "--limit", "1"], names=("model.gguf", "not found"), absent=("huggingface.co", "HTTP", "Repository")),
    OptionCase("describe-data-missing", ["describe", "--data", "{missing}/ds", "--llm", "{missing}/model.gguf"], names=("ds",)),
    OptionCase("describe-max-new-tokens-0", ["describe", "--data", "{ds}", "--max-new-tokens", "0"], names=("max_new_tokens",)),
    OptionCase("describe-limit-0", ["describe", "--data", "{ds}", "--limit", "0"], names=("limit",)),
    OptionCase("describe-mode-bad", ["describe", "--data", "{ds}", "--mode", "poem"], names=("--mode",)),
    OptionCase("describe-corrupt-items", ["describe", "--data", "{ds}", "--llm", "{missing}/model.gguf"], names=("items.parquet",), damage=[("ds", "items.parquet", _garbage)]),
    # experiments
    OptionCase("efficiency-data-missing", ["experiments", "efficiency", "--data", "{missing}/ds", "--llm", "{missing}/model.gguf"], names=("ds",)),
    OptionCase("ctr-efficiency-data-missing", ["experiments", "ctr-efficiency", "--data", "{missing}/ds", "--llm", "{missing}/model.gguf"], names=("ds",)),
    OptionCase("history-sweep-data-missing", ["experiments", "history-sweep", "--data", "{missing}/ds"], names=("ds",)),
    OptionCase("history-sweep-unknown-model", ["experiments", "history-sweep", "--data", "{ds}", "--models", "nosuchmodel", "--out", "{tmp}/hs"], names=("nosuchmodel",)),
    OptionCase("context-sweep-data-missing", ["experiments", "context-sweep", "--data", "{missing}/ds"], names=("ds",)),
    OptionCase("context-sweep-budget-0", ["experiments", "context-sweep", "--data", "{ds}", "--budgets", "0"], names=("--budgets",)),
    OptionCase("context-sweep-unknown-representation", ["experiments", "context-sweep", "--data", "{ds}", "--representations", "poem"], names=("poem",)),
    OptionCase("context-sweep-sets-max-prompt-tokens", ["experiments", "context-sweep", "--data", "{ds}", "-o", "max_prompt_tokens=64"], names=("max_prompt_tokens",)),
    OptionCase("repr-grid-data-missing", ["experiments", "repr-grid", "--data", "{missing}/ds"], names=("ds",)),
    OptionCase("repr-grid-backbone-llm-option", ["experiments", "repr-grid", "--data", "{ds}", "-o", "backbone.llm=x"], names=("backbone.llm", "--backbones")),
    OptionCase("repr-grid-seeds-twice", ["experiments", "repr-grid", "--data", "{ds}", "--seeds", "1", "1"], names=("--seeds",)),
    OptionCase("bench-data-missing", ["experiments", "bench", "--data", "{missing}/ds"], names=("ds",)),
    OptionCase("bench-not-a-torch-model", ["experiments", "bench", "--data", "{ds}", "--model", "popularity"], names=("popularity",)),
    OptionCase("bench-steps-0", ["experiments", "bench", "--data", "{ds}", "--steps", "0", "-o", "hidden=8"], names=("steps",)),
    OptionCase("bench-unknown-model-option", ["experiments", "bench", "--data", "{ds}", "-o", "bogus=1"], names=("bogus",)),
    OptionCase("demo-max-users-text", ["demo", "--max-users", "many"], names=("--max-users",)),
]  # fmt: skip


def _fill(arg: str, paths: dict[str, Path]) -> str:
    for name, path in paths.items():
        arg = arg.replace("{" + name + "}", str(path))
    return arg


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", OPTION_CASES, ids=[c.id for c in OPTION_CASES])
def test_wrong_option_is_one_line_and_touches_nothing(case: OptionCase, bases, tmp_path):
    """Each command refuses a wrong option or damaged input with one line naming it; nothing changes."""
    shared = snapshot(bases["root"])
    paths: dict[str, Path] = {
        "missing": tmp_path / "does-not-exist",
        "tmp": tmp_path,
        "garbage_yaml": bases["garbage_yaml"],
        "list_yaml": bases["list_yaml"],
    }
    paths["file"] = tmp_path / "notes.txt"
    shutil.copy2(bases["file"], paths["file"])
    for name in ("ds", "ds_same", "ds_small", "pop", "sas"):  # copies: a buggy success must not leak
        paths[name] = copy_tree(bases[name], tmp_path / name)
    for name, rel, how in case.damage:
        if name not in paths:  # a folder that is not ours, with a user's files in it
            folder = tmp_path / name
            (folder / "sub").mkdir(parents=True)
            (folder / "notes.txt").write_text("n\n")
            (folder / "sub" / "keep.csv").write_text("a,b\n1,2\n")
            paths[name] = folder
        if rel:
            how(paths[name] / rel)
    before = snapshot(tmp_path)
    cwd = paths[case.cwd] if case.cwd else tmp_path
    r = run_cli([_fill(a, paths) for a in case.argv], cwd=cwd)
    assert_one_error_line(
        r, case.command, names=tuple(_fill(n, paths) for n in case.names), absent=case.absent
    )
    assert_unchanged(before, tmp_path)
    assert_unchanged(shared, bases["root"])


def test_every_command_has_option_cases():
    """The table above covers every command the CLI has."""
    covered = {c.command for c in OPTION_CASES}
    assert covered == {spec.path for spec in COMMANDS}


# ----------------------------------------------------------------------------- what a failure leaves


def test_prepare_removes_partials_left_by_a_killed_run(prepared, tmp_path):
    """Temp folders a killed ``prepare`` left are removed by the next one: those inside --out named with a
    dead process id, and the pid-less ones older versions left beside --out once untouched for an hour.
    A temp folder of a process that is still running stays."""
    src = SOURCES["table"]
    src.write(tmp_path / "raw")
    copy_tree(prepared["table"], tmp_path / "out")
    dead = _dead_pid()
    killed = tmp_path / "out" / f".prepare.{dead}.k9x2ab01.partial"
    copy_tree(prepared["table"], killed)
    running = tmp_path / "out" / f".prepare.{os.getpid()}.k9x2ab02.partial"
    running.mkdir()
    legacy = tmp_path / ".out.k9x2ab03.partial"
    copy_tree(prepared["table"], legacy)
    old = time.time() - 2 * 3600
    for path in [legacy, *legacy.rglob("*")]:
        os.utime(path, (old, old))
    r = run_cli(src.argv(tmp_path / "raw", tmp_path / "out"))
    assert r.code == 0, str(r)
    assert not killed.exists() and not legacy.exists()
    assert running.exists()  # another prepare may be writing it right now


def _dead_pid() -> int:
    """The id of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_prepare_writes_with_the_umask(prepared, tmp_path):
    """Datasets and their JSON files follow the umask (0755/0644 under umask 022), not 0700/0600."""
    src = SOURCES["table"]
    src.write(tmp_path / "raw")
    old = os.umask(0o022)
    try:
        r = run_cli(src.argv(tmp_path / "raw", tmp_path / "out"))
    finally:
        os.umask(old)
    assert r.code == 0, str(r)
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in (tmp_path / "out").rglob("*")}
    modes["out"] = (tmp_path / "out").stat().st_mode & 0o777
    wrong = {k: oct(m) for k, m in modes.items() if m not in (0o755, 0o644)}
    assert not wrong, wrong


def test_failed_prepare_with_a_user_folder_as_out_deletes_nothing(tmp_path):
    """Issue item 1 exactly as reported: the raw files, notes and a subfolder inside --out survive."""
    src = SOURCES["table"]
    victim = tmp_path / "victim"
    src.write(victim)
    (victim / "notes.txt").write_text("n\n")
    (victim / "sub").mkdir()
    before = snapshot(tmp_path)
    r = run_cli(src.argv(victim, victim))
    assert_one_error_line(r, "prepare", names=("victim",))
    assert_unchanged(before, tmp_path)


# ----------------------------------------------------------------------------- kill -9, then resume

PREPARE_KILL_POINTS = [
    ("pandas", "pandas:DataFrame.to_parquet", 1),  # first table of the new dataset
    ("pandas", "pandas:DataFrame.to_parquet", 4),  # sequences written, negatives not yet
    ("pandas", "numpy:save", 2),  # the second frozen-negatives file
    ("duckdb", "pyarrow.parquet:ParquetWriter.write_table", 2),  # a table streamed out of DuckDB
    ("duckdb", "pandas:DataFrame.to_parquet", 1),  # the item table (pandas), before the streamed ones
    ("duckdb", "numpy:save", 2),
    ("duckdb", "llmrec.data.processing:write_json_atomic", 1),  # meta.json
    ("duckdb", "llmrec.data.processing:_move_into_place", 1),  # just before the new entries move in
    ("duckdb", "pathlib:Path.rename", 3),  # in the middle of the moves: some entries new, some old
    ("duckdb", "os:replace", 3),  # every entry moved, meta.json not yet
]
MID_MOVE = {("pathlib:Path.rename", 3), ("os:replace", 3)}


@pytest.mark.parametrize(
    "engine, target, nth", PREPARE_KILL_POINTS, ids=[f"{e}-{t}#{n}" for e, t, n in PREPARE_KILL_POINTS]
)
def test_prepare_killed_leaves_the_old_dataset_and_resumes_identically(
    engine, target, nth, prepared, tmp_path
):
    """kill -9 during ``prepare`` over an earlier dataset: the earlier one is intact; the same command
    then writes the same bytes as an uninterrupted run and leaves no ``.partial`` folder behind."""
    src = SOURCES["table"]
    src.write(tmp_path / "raw")
    (tmp_path / "raw" / "inter.csv").write_bytes(src.files["inter.csv"].replace(b",5\n", b",4\n"))
    copy_tree(prepared["table"], tmp_path / "out")
    before = snapshot(tmp_path)
    argv = [*src.argv(tmp_path / "raw", tmp_path / "out"), "--engine", engine]
    assert run_killed(argv, target, nth) == -9
    after_kill = snapshot(tmp_path / "out")
    left = {k for k in after_kill if ".partial" in k.split("/")[0]}  # the killed run's temp folder
    if (target, nth) in MID_MOVE:  # killed while moving entries in: the folder says "re-run", never loads
        assert ".llmrec-incomplete" in after_kill and "meta.json" not in after_kill
        r = run_cli(["train", "popularity", "--data", str(tmp_path / "out"), "--out", str(tmp_path / "run")])
        assert_one_error_line(r, "train", names=("incomplete dataset",))
    else:  # killed while writing its temp folder: the earlier dataset is untouched
        kept = {k: v for k, v in after_kill.items() if k not in left and k.split("/")[0] not in left}
        kept = {k: v for k, v in kept.items() if not any(k.startswith(d + "/") for d in left)}
        assert kept == {k[len("out/") :]: v for k, v in before.items() if k.startswith("out/")}
    assert run_cli(argv).code == 0
    assert not partials(tmp_path), partials(tmp_path)
    reference = tmp_path / "reference"
    assert run_cli(src.argv(tmp_path / "raw", reference)).code == 0  # the other engine, uninterrupted
    assert _dataset_content(tmp_path / "out") == _dataset_content(reference)


def _dataset_content(out: Path) -> dict:
    """Every file's bytes and mode, meta.json read as JSON without its own --out path (the one difference
    between two runs of the same command into two folders)."""
    content: dict = dict(snapshot(out))
    meta = json.loads((out / "meta.json").read_text())
    for key in ("out", "engine"):  # what may differ between two runs writing the same dataset
        meta["config"].pop(key, None)
    content["meta.json"] = (meta, content["meta.json"][1])
    return content


def test_train_killed_during_evaluation_resumes_at_evaluation(bases, tmp_path, monkeypatch):
    """kill -9 while the freshly trained model is evaluated: the same command evaluates the saved model
    (no training step again) and writes the same model and metrics as an uninterrupted run."""
    import torch

    args = ["sasrec", "-o", "epochs=2", "-o", "hidden=8", "--data", bases["ds"], "--no-ctr"]
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    assert run_killed(["train", *args, "--out", killed], "llmrec.pipeline:evaluate_model", 1) == -9
    weights = (killed / "model" / "model.safetensors").read_bytes()

    def no_training(*a, **k):
        raise AssertionError("the resumed run trained again")

    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "backward", no_training)
        r = run_cli(["train", *args, "--out", killed])
    assert r.code == 0, str(r)
    assert (killed / "model" / "model.safetensors").read_bytes() == weights
    assert run_cli(["train", *args, "--out", reference]).code == 0
    assert weights == (reference / "model" / "model.safetensors").read_bytes()

    def scores(run: Path) -> dict:
        metrics = json.loads((run / "metrics.json").read_text())
        return {s: {k: v for k, v in m.items() if not k.endswith("_seconds")} for s, m in metrics.items()}

    assert scores(killed) == scores(reference)

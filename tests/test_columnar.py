"""``prepare --engine duckdb`` writes the pandas path's datasets byte for byte, reads what the line reader reads,
reports bad input as the line reader does, stays inside its memory limit and leaves nothing behind."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmrec.cli import main
from llmrec.data.processing import PrepareConfig, prepare
from llmrec.errors import LlmrecError
from llmrec.experiments.prepare_bench import generate

ENGINE_FIELDS = {"engine", "out", "memory_limit", "threads"}  # config fields that may differ


def files_of(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "meta.json"
    }


def prepare_both(tmp_path: Path, **options) -> tuple[dict, dict]:
    """Prepare with both engines; assert identical files and meta.json (but for the engine's own options,
    which only the duckdb engine is given: the pandas engine refuses them)."""
    metas = []
    for engine in ("pandas", "duckdb"):
        out = tmp_path / f"out-{engine}"
        own = {k: v for k, v in options.items() if engine == "duckdb" or k not in ENGINE_FIELDS}
        metas.append(prepare(PrepareConfig(out=str(out), engine=engine, **own)))
    old, new = (files_of(tmp_path / f"out-{e}") for e in ("pandas", "duckdb"))
    assert sorted(old) == sorted(new)
    for name in old:
        assert old[name] == new[name], f"{name} differs between the engines"
    written = [json.loads((tmp_path / f"out-{e}" / "meta.json").read_text()) for e in ("pandas", "duckdb")]
    for meta in written:
        meta["config"] = {k: v for k, v in meta["config"].items() if k not in ENGINE_FIELDS}
    assert written[0] == written[1]
    return metas[0], metas[1]


def write_gz_lines(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def amazon_files(tmp_path_factory) -> tuple[Path, Path]:
    """3,000 generated Amazon-2023-shaped reviews (Zipf users/items, 1% repeated pairs) and their metadata."""
    return generate(3000, 7, tmp_path_factory.mktemp("amazon"))


# ----------------------------------------------------------------------------- same datasets


@pytest.mark.slow
def test_ml100k_identical_files(tmp_path: Path):
    """The real MovieLens-100K (explicit ratings -> CTR rows): every file identical."""
    old, new = prepare_both(tmp_path, dataset="ml-100k")
    assert new["counts"] == {"users": 943, "items": 1349, "interactions": 99287}
    assert new["ctr"]["train"]["examples"] == 77881


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"kcore": 2, "num_negatives": 20, "ctr_history_len": 3, "ctr_min_history": 0, "like_threshold": 3.0},
        {"dedupe": False, "kcore": 0, "num_negatives": 10},
        {"max_users": 120, "kcore": 2, "num_negatives": 5, "seed": 3},
        {"require_image": True, "require_description": True, "num_negatives": 20},
        {"kcore": 2, "num_negatives": 20, "ctr_sampled_negatives": 2, "ctr_split": [0.5, 0.25, 0.25]},
    ],
    ids=[
        "defaults",
        "short-history",
        "no-dedupe-no-kcore",
        "max-users",
        "require-image",
        "sampled-negatives",
    ],
)
def test_amazon2023_identical(tmp_path: Path, amazon_files, options):
    reviews, meta = amazon_files
    opts = {"kcore": 5, "num_negatives": 20, **options}
    prepare_both(tmp_path, dataset="amazon2023", path=str(reviews), meta_path=str(meta), **opts)


def test_ml1m_shaped_identical(tmp_path: Path):
    """ml-1m's '::' files with user side information, many ratings sharing a second (ties keep file order)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    n_users, n_items = 60, 40
    rows = [
        f"{u}::{i}::{rng.integers(1, 6)}::{978300000 + rng.integers(0, 50)}"
        for u in range(1, n_users + 1)
        for i in rng.choice(np.arange(1, n_items + 1), size=rng.integers(5, 20), replace=False)
    ]
    (folder / "ratings.dat").write_text("\n".join(rows) + "\n")
    (folder / "movies.dat").write_bytes(
        "".join(f"{i}::Movie {i} (199{i % 10})::Drama|Comedy\n" for i in range(1, n_items + 1)).encode(
            "latin-1"
        )
    )
    (folder / "users.dat").write_text(
        "".join(f"{u}::{'FM'[u % 2]}::25::{u % 20}::1000{u}\n" for u in range(1, n_users + 1))
    )
    old, new = prepare_both(tmp_path, dataset="ml-1m", path=str(folder), num_negatives=10)
    assert new["counts"]["users"] == n_users


def test_amazon2018_python_literal_lines_and_day_ties(tmp_path: Path):
    """2014-style Python-dict lines (DuckDB cannot read them: the line reader does) and day-level times,
    where every tie is broken by the file's order."""
    rng = np.random.default_rng(1)
    lines, seen = [], set()
    for n in range(400):
        user, item = f"U{rng.integers(0, 30)}", f"A{rng.integers(0, 25)}"
        day = 1472688000 + 86400 * int(rng.integers(0, 4))
        stars = float(rng.integers(1, 6))
        if n % 7 == 0:
            lines.append(
                f"{{'reviewerID': '{user}', 'asin': '{item}', 'unixReviewTime': {day}, 'overall': {stars}}}"
            )
        else:
            lines.append(
                json.dumps({"reviewerID": user, "asin": item, "unixReviewTime": day, "overall": stars})
            )
        seen.add(item)
    reviews = write_gz_lines(tmp_path / "Toys.json.gz", lines)
    write_gz_lines(
        tmp_path / "meta_Toys.json.gz",
        [json.dumps({"asin": a, "title": f"<b>{a}</b>"}) for a in sorted(seen)],
    )
    prepare_both(tmp_path, dataset="amazon2018", path=str(reviews), kcore=3, num_negatives=5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_table_with_labels_and_ties_identical(tmp_path: Path, seed: int):
    """A source's own click labels (CTR rows from them), repeated pairs and equal timestamps, random shapes."""
    rng = np.random.default_rng(seed)
    n = 1500
    df = pd.DataFrame(
        {
            "user_id": [f"u{x}" for x in rng.integers(0, 80, n)],
            "item_id": [str(x) for x in rng.integers(0, 120, n)],  # numeric ids: numeric order
            "timestamp": rng.integers(0, 30, n),
            "label": rng.integers(0, 2, n),
        }
    )
    df.to_csv(tmp_path / "clicks.csv", index=False)
    opts = {"kcore": int(rng.integers(0, 4)), "num_negatives": 10, "dedupe": bool(seed % 2)}
    old, new = prepare_both(tmp_path, dataset="table", path=str(tmp_path / "clicks.csv"), **opts)
    assert new["ctr"]["train"]["examples"] > 0


def test_uncompressed_file_read_in_parallel_keeps_file_order(tmp_path: Path):
    """A plain (parallel-read) jsonl where all reviews share one time: only the file's order decides
    sequences, duplicates and CTR history, so any reordering by the reader would change the files."""
    rng = np.random.default_rng(5)
    n = 60_000
    users, items = rng.integers(0, 2000, n), rng.integers(0, 600, n)
    reviews = tmp_path / "Big.jsonl"
    pad = "x" * 300  # ~20 MB: several of DuckDB's read blocks
    reviews.write_text(
        "".join(
            f'{{"user_id": "U{u}", "parent_asin": "B{i}", "timestamp": 1600000000000, "rating": {1 + (u + i) % 5}.0, "text": "{pad}"}}\n'
            for u, i in zip(users.tolist(), items.tolist())
        )
    )
    meta = tmp_path / "meta_Big.jsonl"
    meta.write_text("".join(f'{{"parent_asin": "B{i}", "title": "Item {i}"}}\n' for i in range(600)))
    prepare_both(
        tmp_path, dataset="amazon2023", path=str(reviews), meta_path=str(meta), num_negatives=20, threads=2
    )


# ----------------------------------------------------------------------------- bad input, limits, leftovers


@pytest.mark.parametrize(
    "line, expected",
    [
        (
            '{"user_id": "U1", "parent_asin": "B1", "timestamp": 1600000000000, "rating": 5.0',
            "row 3: neither JSON",
        ),
        ('{"user_id": "U1", "parent_asin": "B1", "rating": 5.0}', "row 3, field 'timestamp': missing"),
        (
            '{"user_id": "U1", "parent_asin": "B1", "timestamp": "soon", "rating": 5}',
            "row 3, field 'timestamp'",
        ),
        (
            '{"user_id": "U1", "parent_asin": "B1", "timestamp": 1600000000000, "rating": "five"}',
            "row 3, field 'rating'",
        ),
        (
            '{"user_id": "", "parent_asin": "B1", "timestamp": 1600000000000}',
            "row 3, field 'user_id': missing",
        ),
    ],
    ids=["truncated-json", "no-time", "bad-time", "bad-rating", "empty-user"],
)
def test_bad_review_line_named_as_the_line_reader_names_it(tmp_path: Path, line: str, expected: str):
    good = '{"user_id": "U1", "parent_asin": "B1", "timestamp": 1600000000000, "rating": 5.0}'
    reviews = write_gz_lines(tmp_path / "Cat.jsonl.gz", [good, good, line, good])
    write_gz_lines(tmp_path / "meta_Cat.jsonl.gz", ['{"parent_asin": "B1", "title": "One"}'])
    errors = []
    for engine in ("pandas", "duckdb"):
        with pytest.raises(LlmrecError) as exc:
            prepare(
                PrepareConfig(
                    dataset="amazon2023", path=str(reviews), out=str(tmp_path / engine), engine=engine
                )
            )
        errors.append(str(exc.value))
    assert errors[0] == errors[1]
    assert str(reviews) in errors[1] and expected in errors[1]
    assert not (tmp_path / "duckdb").exists()  # nothing written, no temp or spill folder left


def test_bad_meta_record_named(tmp_path: Path):
    reviews = write_gz_lines(
        tmp_path / "Cat.jsonl.gz", ['{"user_id": "U1", "parent_asin": "B1", "timestamp": 1600000000000}']
    )
    write_gz_lines(tmp_path / "meta_Cat.jsonl.gz", ['{"parent_asin": "B1"}', '{"title": "no id"}'])
    with pytest.raises(LlmrecError, match=r"meta_Cat.jsonl.gz, row 2, field 'parent_asin': missing"):
        prepare(PrepareConfig(dataset="amazon2023", path=str(reviews), out=str(tmp_path / "o")))
    # a reviews file given as metadata: said so, as by the line reader
    with pytest.raises(
        LlmrecError, match=r"row 1, field 'user_id': does not look like an item metadata file"
    ):
        prepare(
            PrepareConfig(
                dataset="amazon2023", path=str(reviews), meta_path=str(reviews), out=str(tmp_path / "o")
            )
        )


def test_odd_but_valid_values_read_like_the_line_reader(tmp_path: Path):
    """Values outside the columnar reader's strict form (times as strings or floats, ratings as strings or
    booleans) go through the line reader: the dataset is the pandas path's."""
    values = [
        (1600000000000, 5.0),
        ("1600000001000", "4"),
        (1600000002000.0, True),
        (1600000003000, None),
        (1600000004000, ""),
    ]
    lines = [
        json.dumps({"user_id": f"U{u}", "parent_asin": f"B{(u + k) % 8}", "timestamp": ts, "rating": r})
        for u in range(8)
        for k, (ts, r) in enumerate(values)
    ]
    reviews = write_gz_lines(tmp_path / "Cat.jsonl.gz", lines)
    write_gz_lines(tmp_path / "meta_Cat.jsonl.gz", [json.dumps({"parent_asin": f"B{i}"}) for i in range(8)])
    prepare_both(tmp_path, dataset="amazon2023", path=str(reviews), kcore=0, num_negatives=1)


def test_memory_limit_spill_and_progress(tmp_path: Path, amazon_files, caplog, capsys):
    reviews, meta = amazon_files
    out = tmp_path / "data"
    with caplog.at_level(logging.INFO, logger="llmrec"):
        assert main(["prepare", "amazon2023", "--path", str(reviews), "--meta-path", str(meta), "--out", str(out),
                     "--memory-limit", "200MB", "--threads", "1", "--num-negatives", "20"]) == 0  # fmt: skip
    text = caplog.text
    assert "read 3,000 reviews" in text and "k-core round 1:" in text and "(0 removed)" in text
    assert sorted(p.name for p in out.iterdir()) == [
        "ctr",
        "eval",
        "interactions.parquet",
        "items.parquet",
        "meta.json",
        "sequences.parquet",
        "users.parquet",
    ]  # fmt: skip  (no temp, spill or marker left)
    assert json.loads((out / "meta.json").read_text())["config"]["memory_limit"] == "200MB"
    capsys.readouterr()
    assert (
        main(
            [
                "prepare",
                "amazon2023",
                "--path",
                str(reviews),
                "--out",
                str(tmp_path / "x"),
                "--memory-limit",
                "lots",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--memory-limit 'lots' is not a size" in err[0] and "8GB" in err[0]
    assert PrepareConfig(memory_limit="1.5 GiB").memory_limit == "1.5 GiB"
    assert not (tmp_path / "x").exists()
    assert PrepareConfig(memory_limit="1.5 GiB").memory_limit == "1.5 GiB"


def test_whitespace_collapse_matches_the_regex_it_replaced():
    """strip_html collapses whitespace with str.split (faster); it must equal re.sub(r"\\s+", " ", t).strip()
    for every Unicode whitespace character, or the item tables of older datasets would change."""
    import re
    import sys

    from llmrec.data.schema import strip_html

    spaces = [c for c in map(chr, range(sys.maxunicode + 1)) if re.fullmatch(r"\s", c)]
    assert len(spaces) == 29
    for c in spaces:
        text = f"{c}a{c}{c}b c{c}"
        assert strip_html(text) == re.sub(r"\s+", " ", text).strip() == "a b c"


def _negatives_one_call_per_draw(sequences, n_items, num, rng):
    """The sampler as it was first written (one rng call per draw, a Python loop per candidate): the
    reference the faster sampler must reproduce to the last number and generator state."""
    out = np.empty((len(sequences), num), dtype=np.int32)
    for u, seq in enumerate(sequences):
        seen, chosen, taken = set(seq.tolist()), [], set()
        while len(chosen) < num:
            for c in rng.integers(0, n_items, size=2 * num).tolist():
                if c not in seen and c not in taken:
                    taken.add(c)
                    chosen.append(c)
                    if len(chosen) == num:
                        break
        out[u] = chosen
    return out


@pytest.mark.parametrize("case", range(6))
def test_negatives_sampler_reproduces_one_call_per_draw(case: int):
    from llmrec.data.processing import sample_negatives

    g = np.random.default_rng(1000 + case)
    n_items = int(g.integers(5, 3000))
    num = int(g.integers(1, max(2, n_items // 3)))
    n_users = int(g.integers(3000, 6000))  # past the 4,096-user draw blocks
    seqs = [
        g.integers(0, n_items, int(g.integers(1, max(2, min(n_items - num, 400))))).astype(np.int32)
        for _ in range(n_users)
    ]
    seqs = [s for s in seqs if n_items - len(set(s.tolist())) >= num]
    old, new = np.random.default_rng(case), np.random.default_rng(case)
    expected = _negatives_one_call_per_draw(seqs, n_items, num, old)
    assert np.array_equal(sample_negatives(seqs, n_items, num, new), expected)
    assert old.integers(0, 2**62) == new.integers(0, 2**62)  # the next split's draws start at the same place


def test_item_rows_depend_on_their_own_record_only(tmp_path: Path):
    """An item's extra keeps its record's types whatever the other records hold (a DataFrame pass turned the
    integers of a column with a gap into floats): so parsing only the kept items gives the same rows."""
    lines = [
        json.dumps({"user_id": f"U{u}", "parent_asin": f"B{(u + k) % 6}", "timestamp": 1600000000000 + k})
        for u in range(6)
        for k in range(4)
    ]
    reviews = write_gz_lines(tmp_path / "Cat.jsonl.gz", lines)
    meta = [{"parent_asin": f"B{i}", "title": f"Item {i}", "rating_number": 24 + i} for i in range(6)]
    meta[2].pop("rating_number")
    meta.append({"parent_asin": "Z9", "title": "never reviewed", "price": None, "rating_number": None})
    write_gz_lines(tmp_path / "meta_Cat.jsonl.gz", [json.dumps(m) for m in meta])
    prepare_both(tmp_path, dataset="amazon2023", path=str(reviews), kcore=0, num_negatives=1)
    items = pd.read_parquet(tmp_path / "out-duckdb" / "items.parquet")
    extras = {i: json.loads(e) for i, e in zip(items["item_id"], items["extra"])}
    assert extras["B0"] == {"rating_number": 24} and extras["B2"] == {}  # 24, not 24.0

"""``llmrec bench-prepare``: the generated Amazon-2023-shaped files and the timing command end to end."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

from llmrec.cli import main
from llmrec.experiments.prepare_bench import generate
from llmrec.utils.io import read_json


def _reviews(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def test_generated_files_parse_seeded_zipf_with_duplicates(tmp_path: Path):
    reviews, meta = generate(2000, seed=3, folder=tmp_path / "a")
    again = generate(2000, seed=3, folder=tmp_path / "b")
    other = generate(2000, seed=4, folder=tmp_path / "c")
    assert [p.read_bytes() for p in (reviews, meta)] == [p.read_bytes() for p in again]
    assert reviews.read_bytes() != other[0].read_bytes()

    rows = _reviews(reviews)
    assert len(rows) == 2000
    assert set(rows[0]) == {
        "rating", "title", "text", "images", "asin", "parent_asin", "user_id", "timestamp", "helpful_vote",
        "verified_purchase",
    }  # fmt: skip
    assert all(r["timestamp"] > 10**12 for r in rows)  # milliseconds
    per_user = sorted(Counter(r["user_id"] for r in rows).values())
    assert per_user[-1] >= 10 * per_user[len(per_user) // 2]  # Zipf: the most active user dwarfs the median
    pairs = Counter((r["user_id"], r["parent_asin"]) for r in rows)
    assert max(pairs.values()) > 1  # repeated (user, item) reviews

    out = tmp_path / "prepared"
    argv = ["prepare", "amazon2023", "--path", str(reviews), "--meta-path", str(meta), "--out", str(out)]
    assert main([*argv, "--num-negatives", "10"]) == 0
    prepared = read_json(out / "meta.json")
    assert prepared["counts_raw"]["interactions"] == 2000
    assert 0 < prepared["counts"]["interactions"] < 2000


def test_bench_prepare_end_to_end_reuses_files(tmp_path: Path, capsys):
    out = tmp_path / "bench"
    argv = ["experiments", "bench-prepare", "--reviews", "3000", "--out", str(out), "--num-negatives", "10"]
    assert main(argv) == 0
    result = read_json(out / "bench_prepare_n3000_seed0.json")
    old, new = result["paths"]
    for p in (old, new):
        assert p["seconds"] > 0 and p["peak_rss_bytes"] > 0 and p["reviews_per_s"] > 0
        assert p["counts_raw"]["interactions"] == 3000 and 0 < p["kept_share"] < 1
    assert (old["path"], new["path"]) == ("pandas", "duckdb")
    assert old["identity"] == new["identity"]  # both paths wrote byte-identical datasets
    report = (out / "bench_prepare_n3000_seed0.md").read_text()
    assert "| pandas |" in report and "| duckdb |" in report
    assert "duckdb vs pandas:" in report and "the same dataset (equal content identity)" in report
    assert not result["generation"]["reused"]
    assert not (out / "prepared" / "pandas-n3000-seed0").exists()  # no --keep: deleted after timing

    data = out / "data" / "n3000-seed0" / "Bench.jsonl.gz"
    mtime = data.stat().st_mtime_ns
    assert main([*argv, "--keep", "--paths", "duckdb", "--memory-limit", "500MB"]) == 0
    assert data.stat().st_mtime_ns == mtime
    assert read_json(out / "bench_prepare_n3000_seed0.json")["generation"]["reused"]
    kept = read_json(out / "prepared" / "duckdb-n3000-seed0" / "meta.json")
    assert kept["config"]["memory_limit"] == "500MB" and kept["identity"] == new["identity"]
    assert "| duckdb |" in capsys.readouterr().out

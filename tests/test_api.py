"""The Python API (``llmrec.load`` ... ``Model.recommend``) and batch inference (``recommend --all-users``):
answers equal the model's own scores, bad queries are errors naming their field, a batch resumes after
kill -9 to the same file, and the README's notebook walkthrough runs as printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import llmrec
from conftest import file_bytes, one_error_line
from fuzz_helpers import run_killed
from llmrec.api import Model, QueryError
from llmrec.cli import main

ROOT = Path(__file__).resolve().parents[1]
SASREC = {"hidden": 8, "max_len": 6, "epochs": 2}
NO_EVAL = {"eval": {"ctr": False, "full_ranking": False}}


@pytest.fixture(autouse=True)
def _crash_logs_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMREC_CRASH_DIR", str(tmp_path / "crashes"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A synthetic dataset with a trained sasrec, popularity and MF run (module-wide: the tests only read)."""
    from conftest import synthetic_tables
    from llmrec.data.processing import ProcessConfig, finalize, write_dataset

    root = tmp_path_factory.mktemp("api")
    items, inter = synthetic_tables()
    write_dataset(
        finalize(items, inter, ProcessConfig(kcore=0, num_negatives=10, seed=3), {}, {}, []), root / "data"
    )
    out = {"data": root / "data"}
    for name, options in (("sasrec", SASREC), ("popularity", {}), ("mf", {"dim": 8, "epochs": 2})):
        run = llmrec.train(name, data=root / "data", out=root / name, options=options, **NO_EVAL)
        assert run.dir == root / name and "test" in run.metrics
        out[name] = run.dir
    return out


def test_import_llmrec_is_fast_and_loads_no_torch():
    code = (
        "import sys, llmrec; llmrec.load; assert 'torch' not in sys.modules and 'pandas' not in sys.modules"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_dir_llmrec_is_the_public_api_each_name_documented():
    """``dir(llmrec)`` (tab completion) lists ``__all__`` and nothing of the module's own machinery
    (``Any``, ``_API``, ...), without importing the API; each name resolves and has its own docstring."""
    code = "import sys, llmrec; print(dir(llmrec)); assert 'llmrec.api' not in sys.modules"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True)
    expected = ["Model", "QueryError", "TrainedRun", "__version__", "evaluate", "load", "prepare", "train"]
    assert out.stdout.strip() == repr(expected) and sorted(llmrec.__all__) == expected
    assert dir(llmrec) == expected  # here llmrec.api is imported: its submodule attribute stays out too
    for name in expected:
        value = getattr(llmrec, name)
        if name != "__version__":
            assert value.__module__ == "llmrec.api" and value.__doc__, name


def test_recommend_equals_the_models_own_top_k(runs):
    model = llmrec.load(runs["sasrec"], device="cpu")
    users = ["u1", "u7", "u3"]
    table = model.recommend(user_ids=users, k=4)
    assert list(table.columns) == ["query", "user", "rank", "item_id", "title", "score"]
    assert table.groupby("user")["rank"].apply(list).to_dict() == {u: [1, 2, 3, 4] for u in users}
    idx = [model.user_index[u] for u in users]
    scores = model.model.score_all(np.array(idx), [model.dataset.sequences[u] for u in idx])
    for row, u in enumerate(idx):
        s = scores[row].astype(np.float64)
        s[model.dataset.sequences[u]] = -np.inf
        best = [model.item_ids[i] for i in np.argsort(-s, kind="stable")[:4]]
        assert table[table.user == users[row]]["item_id"].tolist() == best
    assert model.calls == 1  # three users, one model call


def test_history_candidates_and_rank(runs):
    model = llmrec.load(runs["popularity"])
    hist = ["i000", "i001"]
    recs = model.recommend(histories=[hist], k=100)
    assert recs["user"].isna().all() and not set(hist) & set(recs["item_id"])
    assert len(recs) == len(model.item_ids) - 2  # k beyond the catalog: every item that can be recommended
    cands = ["i005", "i000", "i009"]
    ranked = model.rank(cands, histories=[hist])  # history items stay in a ranking of given candidates
    assert sorted(ranked["item_id"]) == sorted(cands) and ranked["score"].is_monotonic_decreasing
    kept = model.recommend(histories=[hist], candidates=cands, k=10)
    assert "i000" not in set(kept["item_id"]) and len(kept) == 2
    per_user = model.recommend(user_ids=["u1", "u2"], candidates=[["i005"], ["i006", "i007"]], k=5)
    assert per_user.groupby("user").size().to_dict() == {"u1": 1, "u2": 2}
    assert model.item("i005")["item_id"] == "i005"


@pytest.mark.parametrize(
    ("call", "field", "status"),
    [
        (lambda m: m.recommend(user_ids=["nobody"]), "user_id", 404),
        (lambda m: m.recommend(histories=[["nope"]]), "history", 404),
        (lambda m: m.recommend(histories=[[]]), "history", 422),
        (lambda m: m.recommend(user_ids=["u1"], k=0), "k", 422),
        (lambda m: m.recommend(user_ids=["u1"], k=True), "k", 422),
        (lambda m: m.recommend(user_ids=["u1"], histories=[["i001"]]), "user_ids/histories", 422),
        (lambda m: m.recommend(user_ids="u1"), "user_ids", 422),
        (lambda m: m.recommend(user_ids=["u1"], candidates=[]), "candidates", 422),
        (lambda m: m.recommend(user_ids=["u1"], candidates=["i001", "i001"]), "candidates", 422),
        (lambda m: m.query(), "user_id/history", 422),
        (lambda m: m.item("nope"), "item_id", 404),
        (lambda m: m.rank(None, user_ids=["u1"]), "candidates", 422),
    ],
)
def test_bad_queries_name_their_field(runs, call, field, status):
    model = llmrec.load(runs["popularity"])
    with pytest.raises(QueryError) as e:
        call(model)
    assert e.value.field == field and e.value.status == status and "\n" not in str(e.value)


def test_id_based_model_refuses_an_ad_hoc_history(runs):
    """Regression: an ad-hoc history was scored with user 0's MF embedding, silently."""
    model = llmrec.load(runs["mf"])
    assert model.needs_user_id
    with pytest.raises(QueryError, match="scores a user by its id"):
        model.recommend(histories=[["i001", "i002"]])
    assert len(model.recommend(user_ids=["u1"], k=3)) == 3


def test_retrieve_then_rerank(runs):
    retriever = llmrec.load(runs["sasrec"])
    model = llmrec.load(runs["popularity"], retriever=retriever, retrieve=5)
    top5 = set(retriever.recommend(user_ids=["u2"], k=5)["item_id"])
    reranked = model.recommend(user_ids=["u2"], k=10)
    assert set(reranked["item_id"]) == top5  # only the retrieved items, re-ordered by popularity
    counts = model.model.counts
    assert reranked["score"].tolist() == sorted(
        (float(counts[model.item_index[i]]) for i in top5), reverse=True
    )
    with pytest.raises(QueryError, match="retriever 'mf' scores a user by its id"):
        llmrec.load(runs["popularity"], retriever=runs["mf"]).recommend(histories=[["i001"]])


def test_an_empty_candidate_list_ranks_nothing(runs):
    """Regression: a query whose candidate list was empty (as a retriever's can be) was ranked over the whole
    catalog instead: an empty list was taken for 'no candidates given'."""
    from llmrec.api import Query

    model = llmrec.load(runs["popularity"])
    empty = Query(
        "u1",
        0,
        np.array([], dtype=np.int64),
        k=5,
        exclude_history=False,
        candidates=np.array([], dtype=np.int64),
    )
    whole = Query("u1", 0, np.array([], dtype=np.int64), k=5, exclude_history=False)
    assert model.answer([empty, whole])[0] == [] and len(model.answer([whole])[0]) == 5
    everything = list(model.item_ids)
    reranked = llmrec.load(runs["popularity"], retriever=runs["sasrec"], retrieve=3)
    assert reranked.recommend(histories=[everything], k=5).empty


def test_retriever_of_another_dataset_is_refused(runs, tmp_path):
    from conftest import synthetic_tables
    from llmrec.data.processing import ProcessConfig, finalize, write_dataset

    items, inter = synthetic_tables(n_users=20, n_items=30)
    write_dataset(finalize(items, inter, ProcessConfig(kcore=0, num_negatives=5), {}, {}, []), tmp_path / "d")
    other = llmrec.train("popularity", data=tmp_path / "d", out=tmp_path / "pop", **NO_EVAL)
    with pytest.raises(llmrec.api.LlmrecError, match="trained on another dataset"):
        llmrec.load(runs["popularity"], retriever=other)


# ----------------------------------------------------------------------------- batch inference
def _batch(run: Path, out: Path, *extra: str) -> int:
    return main(["recommend", str(run), "--all-users", "--k", "3", "--out", str(out), *extra])


def test_batch_writes_every_user_and_matches_the_api(runs, tmp_path, capsys):
    out = tmp_path / "recs.parquet"
    assert _batch(runs["sasrec"], out, "--chunk-users", "7") == 0
    assert "written" in capsys.readouterr().out
    table = pd.read_parquet(out)
    model = llmrec.load(runs["sasrec"])
    assert list(table.columns) == ["user", "rank", "item_id", "title", "score"]
    assert table["user"].nunique() == len(model.user_ids) and len(table) == 3 * len(model.user_ids)
    expected = model.recommend(k=3).drop(columns="query")
    pd.testing.assert_frame_equal(table.reset_index(drop=True), expected, check_dtype=False)
    assert [p.name for p in tmp_path.iterdir()] == ["recs.parquet"]  # the work folder is gone
    assert _batch(runs["sasrec"], out) == 2  # an existing file is never replaced silently
    assert "add --overwrite" in one_error_line(capsys, "recommend")
    assert _batch(runs["sasrec"], out, "--overwrite") == 0


def test_batch_killed_resumes_to_the_same_file(runs, tmp_path, capsys):
    whole, out = tmp_path / "whole.parquet", tmp_path / "recs.parquet"
    argv = ["recommend", str(runs["sasrec"]), "--all-users", "--k", "3", "--chunk-users", "4"]
    assert main([*argv, "--out", str(whole)]) == 0
    capsys.readouterr()
    assert run_killed([*argv, "--out", str(out)], "llmrec.recommend:_write_chunk", 3) == -9
    work = tmp_path / ".recs.parquet.llmrec-batch"
    assert not out.exists() and len(list(work.glob("chunk-*.parquet"))) == 2
    assert main([*argv, "--out", str(out), "--k", "5"]) == 2  # other settings never mix into its chunks
    assert "k 3 -> 5" in one_error_line(capsys, "recommend")
    assert main([*argv, "--out", str(out)]) == 0
    assert "resumed after 8 users" in capsys.readouterr().out
    assert out.read_bytes() == whole.read_bytes()  # same rows, same metadata: the same file
    assert not work.exists()


def test_batch_restart_discards_an_interrupted_batch(runs, tmp_path, capsys):
    out = tmp_path / "recs.parquet"
    argv = ["recommend", str(runs["popularity"]), "--all-users", "--chunk-users", "4", "--out", str(out)]
    assert run_killed([*argv, "--k", "3"], "llmrec.recommend:_write_chunk", 2) == -9
    assert main([*argv, "--k", "2", "--restart"]) == 0
    assert pd.read_parquet(out).groupby("user").size().max() == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("u1\nu2\nnobody\n", "row 3, field 'user_id': unknown user id 'nobody'"),
        ("user_id\nu1\n\n", "row 3, field 'user_id': empty user id"),
        ("", "holds no user id"),
    ],
)
def test_users_file_errors_name_the_row(runs, tmp_path, capsys, content, message):
    users = tmp_path / "users.txt"
    users.write_text(content)
    before = file_bytes(tmp_path)
    argv = [
        "recommend",
        str(runs["popularity"]),
        "--users-file",
        str(users),
        "--out",
        str(tmp_path / "r.parquet"),
    ]
    assert main(argv) == 2
    assert message in one_error_line(capsys, "recommend")
    assert file_bytes(tmp_path) == before


def test_users_file_batch(runs, tmp_path):
    users = tmp_path / "users.csv"
    pd.DataFrame({"user_id": ["u3", "u1"]}).to_csv(users, index=False)
    out = tmp_path / "r.parquet"
    assert main(["recommend", str(runs["popularity"]), "--users-file", str(users), "--out", str(out)]) == 0
    assert pd.read_parquet(out)["user"].unique().tolist() == ["u3", "u1"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--all-users"], "give --out FILE.parquet"),
        (["--user", "u1", "--out", "x.parquet"], "--out is for batches"),
        (["--all-users", "--user", "u1"], "give exactly one of"),
        (["--all-users", "--out", "x.csv"], "must name a .parquet file"),
    ],
)
def test_batch_command_line_errors(runs, capsys, extra, message):
    assert main(["recommend", str(runs["popularity"]), *extra]) == 2
    assert message in one_error_line(capsys, "recommend")


def test_candidates_from_on_the_command_line(runs, capsys):
    argv = ["recommend", str(runs["popularity"]), "--user", "u2", "--k", "10", "--json"]
    assert main([*argv, "--candidates-from", str(runs["sasrec"]), "--num-candidates", "4"]) == 0
    import json

    got = json.loads(capsys.readouterr().out)
    top4 = llmrec.load(runs["sasrec"]).recommend(user_ids=["u2"], k=4)["item_id"]
    assert len(got) == 4 and {r["item_id"] for r in got} == set(top4)


# ----------------------------------------------------------------------------- the README's walkthrough
def readme_walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- api-walkthrough -->\s*```python\n(.*?)```", text, re.S)
    assert block, "the README's API walkthrough (marked <!-- api-walkthrough -->) is missing"
    return block.group(1)


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_printed(tmp_path):
    """The notebook walkthrough of the README, verbatim, in a fresh process on MovieLens-100K."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", readme_walkthrough()], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Star Wars" in proc.stdout and "English Patient" in proc.stdout
    assert isinstance(Model, type)
    # The fast part of the demo against its documented numbers: a drift of the environment shows here the
    # day it happens (the walkthrough's comments and the README's results table, to the printed digit).
    printed = [float(line) for line in proc.stdout.splitlines() if re.fullmatch(r"0\.\d+", line.strip())]
    documented = [
        float(n) for n in re.findall(r'metrics\["test"\]\["hit@10"\]\)  # (0\.\d{4})', readme_walkthrough())
    ]
    assert len(printed) == len(documented) == 2
    assert [round(p, 4) for p in printed] == documented, "the walkthrough's hit@10 drifted from the README"
    table = (ROOT / "README.md").read_text().split("<!-- demo-results -->", 1)[1]
    popularity = re.search(r"^\| popularity \|(.*)\|$", table, re.M).group(1).split("|")
    assert f"{printed[1]:.4f}" == popularity[2].strip(), "popularity's hit@10 is the results table's"


def test_the_demo_runs_on_two_threads_whatever_the_machine(monkeypatch, capsys):
    """The thread count moves the last digits of float sums (SASRec's test hit@10 is 0.6394 on 1 thread, 0.6384
    on 2 with the same versions): the demo's default is a fixed 2, not torch's default of one per core."""
    import torch

    from llmrec.experiments.demo import DemoConfig

    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)  # a big machine: the default must not follow it
    assert DemoConfig().threads == 2
    assert main(["demo", "--help"]) == 0
    assert "torch CPU threads (default: 2; >= 1)" in " ".join(capsys.readouterr().out.split())


def test_llm_presets_with_cf_need_a_user_id():
    """CoLLM / BinLLM / HistLLM read the user's MF vector by index: an ad-hoc history is refused for them."""
    from llmrec.models.base import build_model

    needs = {
        name: build_model(name, {}, 5, 5).needs_user_id for name in ("collm", "binllm", "histllm", "tallrec")
    }
    assert needs == {"collm": True, "binllm": True, "histllm": True, "tallrec": False}
    assert not build_model("histllm", {"cf": "none"}, 5, 5).needs_user_id

"""The service under sustained concurrent load (llmrec experiments soak): no 5xx, a full queue answered 503
with Retry-After, every request answered, memory flat after warm-up. A short run in the default suite; the
256-client, 60-second one with ``make soak`` (marker ``soak``)."""

from __future__ import annotations

import json

import pytest

from llmrec.experiments.soak import SoakConfig, format_soak, run_soak
from test_serve import make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("soak"))


def test_a_short_soak_with_a_small_queue_answers_503_with_retry_after_and_no_5xx(run, tmp_path):
    # 48 clients against a queue of 4: most requests find it full and must be told when to come back
    cfg = SoakConfig(
        run=str(run),
        clients=48,
        seconds=4,
        warmup=1,
        queue_size=4,
        max_batch=4,
        threads=1,
        max_growth=1.0,
        out=str(tmp_path),
    )
    result = run_soak(cfg)
    assert result["server_errors"] == 0 and result["no_answer"] == 0, result
    assert result["overloaded_503"] > 0 and result["503_without_retry_after"] == 0, result
    assert result["codes"].get("200", 0) > 0 and set(result["codes"]) <= {"200", "503"}, result
    assert result["server_exit"] == 0 and result["passed"]
    saved = json.loads((tmp_path / "soak.json").read_text())
    assert saved["p99_ms"] >= saved["p50_ms"] > 0
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "PASSED" in format_soak(result)


@pytest.mark.soak
def test_256_clients_for_60_seconds(run, tmp_path):
    result = run_soak(SoakConfig(run=str(run), clients=256, seconds=60, warmup=10, out=str(tmp_path)))
    print("\n" + format_soak(result))
    assert result["server_errors"] == 0 and result["no_answer"] == 0, result
    assert result["503_without_retry_after"] == 0, result
    assert result["memory_growth"] is not None and result["memory_growth"] < 0.05, result

"""Timings wait for the device: an asynchronous GPU is synchronised before the clock is read."""

import torch

from llmrec.utils import timing


def test_clock_synchronises_an_accelerator_and_not_a_cpu(monkeypatch):
    synced = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(str(device)))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "synchronize", lambda: synced.append("mps"))
    assert timing.clock("cpu") > 0 and synced == []
    timing.clock("cuda")
    timing.clock(torch.device("cuda", 1))
    timing.clock("mps")
    assert synced == ["cuda", "cuda:1", "mps"]
    t0 = timing.clock("cpu")
    assert timing.clock("cpu") >= t0


def test_bench_reads_the_clock_through_the_helper(synthetic_dataset, monkeypatch):
    from llmrec.experiments.bench import BenchConfig, run_bench

    synced = []
    monkeypatch.setattr(timing, "synchronize", synced.append)
    r = run_bench(
        BenchConfig(data=str(synthetic_dataset), options={"max_len": 8, "hidden": 8, "blocks": 1}, steps=2)
    )
    assert r["train_examples_per_s"] > 0 and r["eval_users_per_s_full"] > 0
    assert synced == ["cpu"] * 6  # both ends of training, sampled and full-catalog scoring

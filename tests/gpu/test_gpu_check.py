"""The GPU check (``make gpu-check``, docs/how-to/gpu-check.md): train in bf16 and resume, evaluate on the
CPU, one-pass training and shared-prefix ranking against their reference paths, serving, and the timing of a
Sheared-LLaMA-2.7B-shaped random LM. Each part runs on ``cuda`` (marked ``gpu``) and, tiny, on the ``cpu``.

Tolerances (each stated where it is checked):

- resume: the resumed run starts exactly from the checkpoint (weights, Adam's moments, the epoch), on any
  device. On the CPU it then ends with the uninterrupted run's weights bit for bit (the trainer restores
  weights, optimiser, schedule and RNG states). CUDA kernels are not bit-reproducible (atomic additions in
  backward passes), so two runs may part from their first step: there each trained weight must be within
  twice what Adam can move it over the run, ``2 x 3.2 x lr x steps`` (Adam's update is at most about
  (1 - beta1) / sqrt(1 - beta2) = 3.16 lr per step), plus one bf16 rounding; the measured difference is
  reported.
- one pass vs two passes: fp32 as tests/test_one_pass.py on the CPU (losses 1e-5 relative, gradients 1e-4
  relative to each gradient's largest entry); fp32 on CUDA 1e-4 and 1e-3 (other kernels, other summation
  orders); bf16 (8 significant bits, ~20 roundings on the way) 2e-2 and 1e-1.
- shared prefix vs whole prompts: fp32 scores within 1e-4 (tests/test_shared_prefix.py), bf16 within 0.3
  with the same order (correlation > 0.99), as tests/test_portable_runs.py argues for bf16.
- a run trained on the device, scored on the CPU in fp32 vs on the device in bf16: within 0.5, correlation
  > 0.99 (the same argument; on the CPU, bf16 vs fp32, the three models' runs differed by 0.03 to 0.25).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import llmrec
from llmrec.experiments.gpu_check import GpuTimingConfig, run_gpu_timing, write_report
from llmrec.experiments.training_bench import two_pass_loss
from llmrec.models.base import build_model, model_config
from llmrec.placement import Placement
from llmrec.training import loop

pytestmark = pytest.mark.xdist_group("gpu-check")  # one worker builds the catalog and the LM once (loadgroup)
LR = 1e-3
MODELS = {  # tiny options; the last stage runs 2 epochs, so a run can be interrupted after its first
    "tallrec": {"train_examples": 16, "eval_examples": 8, "step1_epochs": 2, "step1_lr": LR},
    "histllm": {
        "mapper_hidden": 16,
        "encoder_dim": 16,
        "description_texts": None,
        "train_examples": 16,
        "eval_examples": 8,
        "step1_epochs": 1,
        "epochs": 2,
        "lr": LR,
    },
    "illmrec": {
        "adaptor_hidden": 16,
        "d_shared": 8,
        "batch_size": 8,
        "epochs": 2,
        "head_epochs": 0,
        "eval_users": 4,
        "lr": LR,
    },
}
# I-LLMRec's adaptor, projectors and [REC] in the backbone's dtype (bf16), as the official code trains them,
# once ILLMRecConfig has the option; until then they train in fp32 beside the bf16 LM
ILLMREC_BF16 = {"trainable_dtype": "backbone"}
EVAL = {"splits": ["test"], "ks": [5], "ranking_users": 6, "ctr_examples": 16, "full_ranking": False}
BF16_SCORES = 0.3  # atol of bf16 scores against the reference path's (see the module docstring)
# atol of a run's bf16 scores against its fp32 scores: on the CPU the three models gave 0.03 to 0.25
CPU_VS_DEVICE = 0.5


def _options(name: str) -> dict:
    options = {**MODELS[name]}
    if name == "illmrec":
        fields = model_config(name, {}).__dataclass_fields__
        options.update({k: v for k, v in ILLMREC_BF16.items() if k in fields})
    return options


class Killed(Exception):
    """The process "dies" at the start of the last epoch."""


def _train(name, catalog, lm, out, device):
    options = {**_options(name), "backbone": {"llm": lm, "lora_dropout": 0.0}}
    evaluation = {**EVAL, "ctr": name != "illmrec"}  # I-LLMRec: its ranking only
    return llmrec.train(
        name, data=catalog, out=out, options=options, device=device, dtype="bfloat16", eval=evaluation
    )


def _weights(run: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted((run / "model").glob("*.safetensors")):
        out.update({f"{path.name}:{k}": v.float() for k, v in load_file(path).items()})
    return out


@pytest.fixture(scope="session")
def reference_runs(tmp_path_factory):
    """Uninterrupted runs, trained once per (model, device)."""
    runs: dict[tuple[str, str], Path] = {}

    def get(name, catalog, lm, device):
        if (name, device) not in runs:
            out = tmp_path_factory.mktemp(f"{name}-{device}") / "run"
            _train(name, catalog, lm, out, device)
            runs[name, device] = out
        return runs[name, device]

    return get


# on the CPU one model (HistLLM: two stages, so a finished stage's weights and a checkpoint) keeps the suite
# short; test_every_model_of_the_check_takes_its_options checks the other models' options there
RESUME_CASES = [pytest.param("cpu", "histllm", id="cpu-histllm")] + [
    pytest.param("cuda", name, id=f"cuda-{name}", marks=pytest.mark.gpu) for name in MODELS
]


def _last_stage_epochs(name: str) -> int:
    """TALLRec has one stage (its LoRA, ``step1_epochs``); HistLLM and I-LLMRec end with ``epochs``."""
    return MODELS[name].get("epochs", MODELS[name].get("step1_epochs", 0))


def test_every_model_of_the_check_takes_its_options(catalog, tiny_lm):
    from llmrec.data.dataset import Dataset

    ds = Dataset(catalog)
    for name in MODELS:
        options = {**_options(name), "backbone": {"llm": tiny_lm, "lora_dropout": 0.0}}
        model = build_model(name, options, ds.n_users, ds.n_items, Placement("cpu", "bfloat16"))
        model.prepare(ds)
        assert _last_stage_epochs(name) >= 2 and model.stages(ds)[-1].epochs == _last_stage_epochs(name)


@pytest.mark.parametrize(("device", "name"), RESUME_CASES, indirect=["device"])
def test_train_bf16_resume_and_evaluate_on_cpu(
    name, device, catalog, tiny_lm, reference_runs, tmp_path, monkeypatch, figures
):
    reference = reference_runs(name, catalog, tiny_lm, device)
    calls, epoch = {"n": 0}, loop.train_epoch
    epochs = sum(v for k, v in MODELS[name].items() if k in ("epochs", "step1_epochs"))

    def dies_in_last_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == epochs:
            raise Killed
        return epoch(*args, **kwargs)

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(loop, "train_epoch", dies_in_last_epoch)
        with pytest.raises(Killed):
            _train(name, catalog, tiny_lm, run, device)
    assert list(run.glob("checkpoint*.pt")), "no checkpoint to resume from"
    steps, step, resume, start = [], loop.TrainingStep.__call__, loop._resume, {}

    def resumed(ckpt, model, opt, *args):  # what the resumed run starts from, against the checkpoint
        out = resume(ckpt, model, opt, *args)
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        start["weights"] = _max_diff(model.checkpoint_state(), saved["model"])
        moments = opt.state_dict()["state"]
        start["optimizer"] = max(_max_diff(moments[i], s) for i, s in saved["optimizer"]["state"].items())
        start["epoch"] = out[1]["epoch"]
        return out

    monkeypatch.setattr(loop.TrainingStep, "__call__", lambda *a, **kw: steps.append(1) or step(*a, **kw))
    monkeypatch.setattr(loop, "_resume", resumed)
    _train(name, catalog, tiny_lm, run, device)
    assert start == {"weights": 0.0, "optimizer": 0.0, "epoch": _last_stage_epochs(name) - 1}, start
    assert "resumed from" in (run / "log.txt").read_text() and steps
    got, want = _weights(run), _weights(reference)
    assert got.keys() == want.keys()
    diff = max(float((got[k] - want[k]).abs().max()) for k in want)
    figures["max_weight_diff_after_resume"] = diff
    if device == "cpu":
        assert diff == 0.0
    else:  # not bit-reproducible: the two runs may part from the first step on (see the module docstring)
        n = epochs * len(steps)  # every optimiser step of the run (an epoch's steps times the epochs)
        for k in want:
            bound = 2 * 3.2 * LR * n + float(want[k].abs().max()) * 2**-8
            err = float((got[k] - want[k]).abs().max())
            assert err <= bound, f"{k}: {err:.3g} > {bound:.3g}"

    # the run trained on the device, evaluated on the CPU in fp32: portable, and close to the device's scores
    metrics = llmrec.evaluate(reference, device="cpu", dtype="float32")["test"]
    assert metrics and all(np.isfinite(v) for v in metrics.values() if isinstance(v, float))
    figures.update({k: v for k, v in metrics.items() if k in ("auc", "uauc", "ndcg@5", "hit@5")})
    cpu = llmrec.load(reference, device="cpu", dtype="float32")
    here = llmrec.load(reference, device=device, dtype="bfloat16")
    cands = [f"i{i:03d}" for i in range(0, 40, 4)]
    a, b = (_scores(m, cands, ["u1", "u5"]) for m in (cpu, here))
    figures["max_score_diff_cpu_fp32_vs_device_bf16"] = float(np.abs(a - b).max())
    np.testing.assert_allclose(b, a, atol=CPU_VS_DEVICE)
    assert np.corrcoef(a, b)[0, 1] > 0.99


def _max_diff(a, b) -> float:
    """The largest absolute difference between two tensors, or two dicts of tensors, on the CPU in fp32."""
    if isinstance(a, dict):
        return max((_max_diff(a[k], b[k]) for k in b), default=0.0)
    if not isinstance(a, torch.Tensor):
        return float(abs(a - b))
    return float((a.detach().float().cpu() - b.float().cpu()).abs().max()) if a.numel() else 0.0


def _scores(model, cands, users) -> np.ndarray:
    """The scores of ``cands`` for each of ``users``, in the order of ``cands``."""
    out = []
    for u in users:
        ranked = model.rank(cands, user_ids=[u]).set_index("item_id")["score"]
        out.append(ranked.loc[cands].to_numpy(dtype=float))
    return np.concatenate(out)


# --------------------------------------------------------------------------- reference paths on the device
TOLERANCES = {  # (device, dtype) -> (loss, gradient): see the module docstring
    ("cpu", "float32"): (1e-5, 1e-4),
    ("cuda", "float32"): (1e-4, 1e-3),
    ("cpu", "bfloat16"): (2e-2, 1e-1),
    ("cuda", "bfloat16"): (2e-2, 1e-1),
}


def _on(device, dtype, name, catalog, lm, **options):
    from llmrec.data.dataset import Dataset

    ds = Dataset(catalog)
    torch.manual_seed(0)
    opts = {**options, "backbone": {"llm": lm, "lora": True, "lora_dropout": 0.0}}
    model = build_model(name, opts, ds.n_users, ds.n_items, Placement(device, dtype))
    model.attach(ds)
    model.to(device)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero (LoRA a no-op): give it values
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g).to(p) * 0.3)
    return ds, model


def _loss_and_grads(model, fn, batch):
    model.zero_grad()
    loss = fn(batch)
    loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss), grads


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_one_pass_training_matches_two_passes(device, dtype, catalog, tiny_lm, figures):
    ds, model = _on(device, dtype, "illmrec", catalog, tiny_lm, adaptor_hidden=16, d_shared=8, batch_size=6)
    batch = next(model.train_batches(ds, np.random.default_rng(0)))
    batch = {k: v.to(device) for k, v in batch.items()}
    model.train()
    with model.switched(one_pass=False, shared_prefix=False):
        want = _loss_and_grads(model, lambda b: two_pass_loss(model, b), batch)
    with model.switched(one_pass=True, shared_prefix=True):
        got = _loss_and_grads(model, model.loss, batch)
    loss_tol, grad_tol = TOLERANCES[device, dtype]
    assert want[1] and got[1].keys() == want[1].keys()
    rel = max(float((got[1][n] - g).abs().max()) / (float(g.abs().max()) or 1.0) for n, g in want[1].items())
    figures.update(loss_diff=abs(got[0] - want[0]), max_rel_grad_diff=rel)
    assert abs(got[0] - want[0]) <= loss_tol * max(1.0, abs(want[0])), (got[0], want[0])
    assert rel <= grad_tol


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shared_prefix_ranking_matches_whole_prompts(device, dtype, catalog, tiny_lm, figures):
    tol = 1e-4 if dtype == "float32" else BF16_SCORES
    ds, model = _on(device, dtype, "histllm", catalog, tiny_lm, mapper_hidden=16, encoder_dim=16,
                    description_texts=None, rank_batch_size=7)  # fmt: skip
    model.eval()
    users = np.array([0, 3, 7])
    hist = [np.asarray(ds.train_sequences[u]) for u in users]
    cands = np.stack([np.random.default_rng(0).permutation(ds.n_items)[:12] for _ in users])
    shared, whole = model.score(users, hist, cands), model.score(users, hist, cands, shared_prefix=False)
    figures["histllm_max_diff"] = float(np.abs(shared - whole).max())
    np.testing.assert_allclose(shared, whole, atol=tol, rtol=0)
    ds, ill = _on(
        device, dtype, "illmrec", catalog, tiny_lm, adaptor_hidden=16, d_shared=8, score_batch_size=4
    )
    ill.eval()
    users = np.arange(8)
    hist = [np.asarray(ds.train_sequences[u]) for u in users]
    scores = {}
    for on in (True, False):
        with ill.switched(shared_prefix=on), torch.no_grad():
            scores[on] = (
                ill.score_all_tensor(torch.as_tensor(users, device=device), hist).float().cpu().numpy()
            )
    assert len(ill.backbone.prefixes) == 1
    figures["illmrec_max_diff"] = float(np.abs(scores[True] - scores[False]).max())
    np.testing.assert_allclose(scores[True], scores[False], atol=tol, rtol=0)
    if dtype == "bfloat16":
        assert np.corrcoef(scores[True].ravel(), scores[False].ravel())[0, 1] > 0.99


# --------------------------------------------------------------------------- serving
def test_serve_a_run_on_the_device(device, catalog, tiny_lm, reference_runs, figures):
    pytest.importorskip("fastapi", reason="fastapi is not installed: pip install 'llmrec[serve]'")
    pytest.importorskip("httpx", reason="httpx is not installed (FastAPI's TestClient needs it)")
    from fastapi.testclient import TestClient

    from llmrec.serve import create_app

    run = reference_runs("histllm", catalog, tiny_lm, device)
    model = llmrec.load(run, device=device, dtype="bfloat16")
    cands = ["i001", "i004", "i009", "i020"]
    with TestClient(create_app(model), raise_server_exceptions=False) as client:
        health = client.get("/health").json()
        assert health["device"].startswith(device), health
        r = client.post("/rank", json={"user_id": "u3", "candidates": cands})
        assert r.status_code == 200, r.text
        served = r.json()["items"]
    direct = model.rank(cands, user_ids=["u3"])
    assert [x["item_id"] for x in served] == direct["item_id"].tolist()
    np.testing.assert_allclose([x["score"] for x in served], direct["score"].to_numpy(), rtol=1e-6, atol=1e-6)
    figures["took_ms"] = r.json()["took_ms"]


# --------------------------------------------------------------------------- timing
def test_timing_of_the_paper_shaped_lm(device, tmp_path, figures):
    """On CUDA the Sheared-LLaMA-2.7B shape in bf16; on the CPU the tiny shape, a few users and steps."""
    import os

    if device == "cuda":
        out = Path(os.environ.get("LLMREC_GPU_CHECK_OUT", "runs/gpu-check"))
        cfg = GpuTimingConfig(out=str(out))
    else:
        cfg = GpuTimingConfig(
            shape="tiny", device="cpu", dtype="float32", lengths=(2, 4), users=2, batch_size=2,
            train_steps=1, description_words=6, out=str(tmp_path),
        )  # fmt: skip
    r = run_gpu_timing(cfg)
    saved = json.loads((Path(cfg.out) / "timing.json").read_text())
    assert saved["shape"]["name"] == cfg.shape and (Path(cfg.out) / "timing.md").exists()
    for rep in ("image", "description"):
        assert all(r["s_per_100_users"][rep][L] > 0 for L in cfg.lengths)
    longest = max(cfg.lengths)
    assert r["prompt_tokens"]["description"][longest] > r["prompt_tokens"]["image"][longest]
    modes = r["training_step"]["modes"]
    assert modes["one pass"]["positions_per_step"] < modes["two passes"]["positions_per_step"]
    assert set(r["shared_prefix"]["points"]) == set(cfg.lengths)
    figures.update(
        {f"{rep}@{L} s/100 users": r["s_per_100_users"][rep][L] for rep in ("image", "description")
         for L in cfg.lengths}
    )  # fmt: skip
    figures.update({f"train step {m} s": v["s_per_step"] for m, v in modes.items()})
    figures.update(
        {f"shared prefix @{L} speed-up": p["speedup"] for L, p in r["shared_prefix"]["points"].items()}
    )


def test_the_report_names_each_part_device_and_versions(tmp_path):
    parts = {
        "one_pass[float32]": {"outcome": "passed", "seconds": 1.5, "figures": {"loss_diff": 1e-7}},
        "serve": {"outcome": "skipped", "seconds": 0.0, "reason": "fastapi is not installed"},
        "resume[illmrec]": {"outcome": "failed", "seconds": 2.0, "reason": "AssertionError: 0.1 > 0.01"},
    }
    summary = write_report(tmp_path, "cpu", parts, 12.0)
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert (
        report["passed"] is False
        and report["verdict"] == "failed"
        and report["parts"] == parts
        and report["device"] == "cpu"
    )
    assert report["versions"]["torch"] == torch.__version__ and "python" in report["versions"]
    assert (
        summary.startswith("llmrec GPU check on cpu (") and "FAILED, 1 passed, 1 failed, 1 skipped" in summary
    )
    assert "| serve | skipped | 0.0 | fastapi is not installed |" in summary
    assert (tmp_path / "gpu-check.md").read_text() == summary + "\n"
    skipped = {"serve": parts["serve"]}
    assert (
        "on cpu (" in write_report(tmp_path, "cpu", skipped, 1.0)
        and "NOT RUN, 0 passed" in (tmp_path / "gpu-check.md").read_text()
    )
    assert json.loads((tmp_path / "gpu-check.json").read_text())["verdict"] == "not run"

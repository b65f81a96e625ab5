"""Running the service: :func:`serve` loads a run and answers HTTP with uvicorn until SIGINT/SIGTERM,
through :func:`server_config` (uvicorn's configuration with the app's header limits) and
:class:`GracefulServer` (a clean stop exits 0).

``--workers N`` (N > 1) runs N server processes on one listening socket (uvicorn's supervisor): each worker
loads the run itself and micro-batches its own requests (:func:`worker_app`, the app factory the workers
import, reads the options from :data:`WORKER_ENV`); SIGINT/SIGTERM to the parent stops every worker after
its requests in flight and its queue are answered. Their metrics are shared through files in a temporary
folder (``PROMETHEUS_MULTIPROC_DIR``, or the operator's own when it is set), so ``/metrics`` counts them all."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import tempfile
import types
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI

from llmrec.errors import ConfigError, LlmrecError
from llmrec.serve.app import create_app
from llmrec.serve.limits import HeaderLimitedProtocol
from llmrec.serve.ops import MULTIPROCESS_DIR, log_config
from llmrec.serve.settings import ServeConfig, ServeSettings

if TYPE_CHECKING:
    from llmrec.api import Model

log = logging.getLogger(__package__)  # the service's one logger, "llmrec.serve"


class GracefulServer(uvicorn.Server):
    """uvicorn's server, except that a SIGINT/SIGTERM it stopped on is not raised again once it has
    stopped (uvicorn re-raises it, so the process would die of the signal after a clean shutdown):
    ``llmrec serve`` then exits 0. A second SIGINT still forces the exit."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            log.info("%s: finishing the requests in flight, then stopping", signal.Signals(sig).name)
            self.should_exit = True


def server_config(app: FastAPI, host: str, port: int, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for an app of :func:`create_app`: its HTTP protocol bounds request heads
    with the app's own limits (``options``: uvicorn's others, e.g. ``log_level``)."""
    settings: ServeSettings = app.state.llmrec_settings
    protocol = type(
        "HeaderLimitedProtocol",
        (HeaderLimitedProtocol,),
        {"max_headers": settings.max_headers, "max_header_bytes": settings.max_header_bytes},
    )
    return uvicorn.Config(app, host=host, port=port, http=protocol, **options)


def load_runs(cfg: ServeConfig) -> dict[str, Model]:
    """Every run of ``cfg`` loaded once, by name (its folder's; the first answers requests naming none)."""
    from llmrec.recommend import load_for
    from llmrec.serve.served import unique_names

    runs = list(cfg.run)  # a list once the config is built (ServeConfig.__post_init__)
    models = {}
    for name, run in zip(unique_names(runs), runs):
        one = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        models[name] = load_for(types.SimpleNamespace(**{**one, "run": run}))
        log.info("loaded %s: %r", name, models[name])
    return models


WORKER_ENV = "LLMREC_WORKER_OPTIONS"  # the options of ``llmrec serve --workers N``, as JSON, for each worker


def serve(cfg: ServeConfig) -> None:
    """Load the run once, then answer HTTP requests until SIGINT/SIGTERM (graceful: in-flight requests
    finish); with ``--workers N``, N processes that each load them (:func:`serve_workers`)."""
    if cfg.workers > 1:
        serve_workers(cfg)
        return
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    app = create_app(load_runs(cfg), cfg.settings(), access_log=cfg.access_log)
    config = server_config(
        app, cfg.host, cfg.port, access_log=False, log_level="info", log_config=log_config(cfg.log_format)
    )
    server = GracefulServer(config)
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits when it cannot bind, after logging why
        if server.started:
            raise
        raise LlmrecError(
            f"cannot listen on {cfg.host}:{cfg.port} (exit {e.code}; uvicorn's reason is logged above)",
            hint="choose another --port, or stop what listens there",
        ) from None


class WorkerProtocol(HeaderLimitedProtocol):
    """The header-limited protocol of a worker process, its limits from :data:`WORKER_ENV` (uvicorn imports
    it by name in each worker: a class made at run time cannot be sent to another process)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = json.loads(os.environ.get(WORKER_ENV, "{}"))
        self.max_headers = settings.get("max_headers", self.max_headers)
        self.max_header_bytes = settings.get("max_header_bytes", self.max_header_bytes)
        super().__init__(*args, **kwargs)


def worker_threads(cfg: ServeConfig) -> int | None:
    """Each worker's torch threads: ``--threads``, else the CPU cores shared out (torch's default would give
    every worker all cores, and N workers would fight over them)."""
    if cfg.threads or cfg.workers <= 1:
        return cfg.threads
    return max(1, (os.cpu_count() or 1) // cfg.workers)


def worker_app() -> FastAPI:
    """The app factory each worker process of ``--workers N`` calls: the run loaded in this process, with
    its own micro-batcher (the options from :data:`WORKER_ENV`)."""
    import logging.config

    options = json.loads(os.environ[WORKER_ENV])
    cfg = ServeConfig(
        **{f.name: options[f.name] for f in dataclasses.fields(ServeConfig) if f.name in options}
    )
    logging.config.dictConfig(log_config(cfg.log_format))
    if threads := worker_threads(cfg):
        import torch

        torch.set_num_threads(threads)
    models = load_runs(cfg)
    log.info("worker %d loaded %s (%s torch threads)", os.getpid(), list(models), threads or "default")
    return create_app(models, cfg.settings(), access_log=cfg.access_log)


def _check_before_workers(cfg: ServeConfig) -> None:
    """What each worker would refuse, refused once here before any starts: no run, a placement the model
    cannot take (a worker that fails to start stops the service, with its traceback)."""
    from llmrec.models.base import model_dir, placement_for, read_model_record

    if cfg.add_items:
        raise ConfigError(
            "--add-items needs one server process: each of the --workers holds its own copy of the catalog, "
            "and an item added through one would be unknown to the others; drop --workers (or add items "
            "with 'llmrec add-items RUN' and restart the workers)"
        )
    for run in cfg.run:
        info = read_model_record(model_dir(run))
        placement_for(info["model"], cfg.device, cfg.dtype, cfg.quantize)


def serve_workers(cfg: ServeConfig) -> None:
    """``--workers N``: N uvicorn worker processes sharing one listening socket, each running
    :func:`worker_app`; returns once SIGINT/SIGTERM stopped them all (each drains its queue first)."""
    from uvicorn.supervisors import Multiprocess

    _check_before_workers(cfg)
    os.environ[WORKER_ENV] = json.dumps(dataclasses.asdict(cfg))  # the spawned workers inherit it
    own_metrics_dir = cfg.metrics and not os.environ.get(MULTIPROCESS_DIR)
    if own_metrics_dir:  # the workers' metrics, shared through files; the operator may name the folder
        os.environ[MULTIPROCESS_DIR] = tempfile.mkdtemp(prefix="llmrec-metrics-")
    config = uvicorn.Config(
        f"{__name__}:worker_app",
        factory=True,
        host=cfg.host,
        port=cfg.port,
        workers=cfg.workers,
        http=f"{__name__}:WorkerProtocol",
        access_log=False,  # the app's own access log (--access-log) carries the request ids
        log_level="info",
        log_config=log_config(cfg.log_format),
        timeout_worker_healthcheck=60,  # a worker loading an LLM may answer the supervisor's ping late
    )
    try:
        sock = config.bind_socket()
    except SystemExit as e:  # uvicorn exits when it cannot bind, after logging why
        raise LlmrecError(
            f"cannot listen on {cfg.host}:{cfg.port} (exit {e.code}; uvicorn's reason is logged above)",
            hint="choose another --port, or stop what listens there",
        ) from None
    log.info("%d workers on %s:%d, each loading %s", cfg.workers, cfg.host, sock.getsockname()[1], cfg.run)
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
        if own_metrics_dir:
            shutil.rmtree(os.environ.pop(MULTIPROCESS_DIR), ignore_errors=True)

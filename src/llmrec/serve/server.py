"""Running the service: :func:`serve` loads a run and answers HTTP with uvicorn until SIGINT/SIGTERM,
through :func:`server_config` (uvicorn's configuration with the app's header limits) and
:class:`GracefulServer` (a clean stop exits 0)."""

from __future__ import annotations

import dataclasses
import logging
import signal
import types
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI

from llmrec.errors import LlmrecError
from llmrec.serve.app import create_app
from llmrec.serve.limits import HeaderLimitedProtocol
from llmrec.serve.ops import log_config
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

    runs = [cfg.run] if isinstance(cfg.run, str) else list(cfg.run)
    models = {}
    for name, run in zip(unique_names(runs), runs):
        one = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        models[name] = load_for(types.SimpleNamespace(**{**one, "run": run}))
        log.info("loaded %s: %r", name, models[name])
    return models


def serve(cfg: ServeConfig) -> None:
    """Load the run once, then answer HTTP requests until SIGINT/SIGTERM (graceful: in-flight requests
    finish)."""
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

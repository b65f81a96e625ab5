"""The options of ``llmrec serve``: how the service batches and what it accepts (:class:`ServeSettings`,
all that :func:`llmrec.serve.create_app` needs), and which run it serves where (:class:`ServeConfig`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from llmrec.config import ConfigError, check_ranges, option
from llmrec.placement import DtypeName, QuantizeName, device_option, dtype_option, quantize_option


@dataclass
class ServeSettings:
    """How the service batches and what it accepts (the part of ``llmrec serve``'s options that
    :func:`create_app` uses)."""

    max_batch: int = option(32, "most queued requests answered by one model call", ge=1)
    max_wait_ms: float = option(5.0, "longest the first request of a batch waits for others (ms)", ge=0)
    queue_size: int = option(
        256, "most requests waiting for the model; one more is answered 503 with Retry-After", ge=1
    )
    max_history: int = option(1000, "longest ad-hoc history accepted (item ids)", ge=1)
    batching: bool = option(True, "micro-batching (--no-batching: one request per model call, to compare)")
    max_headers: int = option(
        100,
        "most header fields a request may send; one more is answered 431 (Request Header Fields Too Large)",
        ge=1,
    )
    max_header_bytes: int = option(
        16 * 1024,
        "most bytes of header names and values a request may send; more is answered 431 and the server stops "
        "reading a request head that grows past it (plus 8 KiB for the request line)",
        ge=1,
    )
    api_key_file: str | None = option(
        None,
        "a file of API keys, one per line: every route but /livez, /readyz and /docs then wants "
        "'Authorization: Bearer KEY' or 'X-API-Key: KEY' (401 without)",
    )
    cors_origins: list[str] = option(
        factory=list,
        help="origins whose browser pages may call the API (CORS), e.g. https://shop.example; '*' for any",
    )
    metrics: bool = option(True, "Prometheus metrics at /metrics (--no-metrics: off)")
    ui: bool = option(True, "a page to look at recommendations at /ui (--no-ui: off)")
    warm_up: bool = option(
        False, "answer one query before /readyz says ready (an app built in code: ready at once by default)"
    )
    add_items: bool = option(
        False,
        "accept POST /items: new items encoded with the run's encoders and added to its catalog (off by "
        "default: an add changes every client's recommendations and writes to the run folder)",
    )
    image_dir: str | None = option(None, "the folder POST /items's image paths are relative to")

    def __post_init__(self) -> None:
        check_ranges(self)

    @property
    def batch_limit(self) -> int:
        """The most requests one model call answers: max_batch, or 1 without batching."""
        return self.max_batch if self.batching else 1


@dataclass
class ServeConfig(ServeSettings):
    """``llmrec serve``: which run, where it listens, how it batches."""

    run: list[str] | str = option(
        factory=list,
        help="run directories of trained models: one or more (the first answers requests that name no model)",
    )
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = option(8000, "TCP port (0: any free one)", ge=0, le=65535)
    device: str = device_option()
    dtype: DtypeName = dtype_option()
    quantize: QuantizeName = quantize_option()
    data: str | None = option(None, "the run's dataset moved: its new folder (checksum verified)")
    candidates_from: str | None = option(
        None, "a run on the same dataset whose top items per request this model re-ranks"
    )
    candidates: int = option(100, "how many items --candidates-from retrieves per request", ge=1)
    threads: int | None = option(
        None, "torch CPU threads (default: torch's choice; with --workers: the cores shared out)", ge=1
    )
    workers: int = option(
        1, "server processes on one port, each loading the run and micro-batching its own requests", ge=1
    )
    warm_up: bool = option(True, "answer one query before /readyz says ready (--no-warm-up: ready at once)")
    access_log: bool = option(False, "log every request, with its request id (costs throughput)")
    log_format: Literal["text", "json"] = option(
        "text",
        "log lines: text (ISO-8601 time, level, logger, request id, message) or json (one object each)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.run, str):  # one run, as a config file or the API may give it
            self.run = [self.run] if self.run else []
        if not self.run:
            raise ConfigError("run: the run directory of a trained model is required")

    def settings(self) -> ServeSettings:
        names = [f.name for f in dataclasses.fields(ServeSettings)]
        return ServeSettings(**{n: getattr(self, n) for n in names})

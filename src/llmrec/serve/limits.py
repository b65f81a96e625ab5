"""Bounds on what a request may send, so that no request can exhaust the service: a request head with more
than ``max_headers`` header fields or ``max_header_bytes`` of them is answered 431, by the server as it
parses (:class:`HeaderLimitedProtocol`) and by the app (:class:`HeaderLimits`), one rule
(:func:`header_fault`) for both; a JSON body nested more than :data:`MAX_JSON_DEPTH` levels is refused
before Python's recursive parser reads it (:func:`parse_json`, through the app's routes)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from llmrec.serve.settings import ServeSettings

#: the deepest nesting of arrays/objects a JSON body may have (a request needs 2: an object of id lists)
MAX_JSON_DEPTH = 64
#: room for the request line (method, target, version) in the raw head the server buffers
REQUEST_LINE_BYTES = 8 * 1024
#: how long a connection answered 431 stays half-open, dropping what the client still sends, so that the
#: client reads the answer instead of a reset (a close with unread data in the socket resets it)
LINGER_SECONDS = 2.0

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)', re.S)


class JsonTooDeep(ValueError):
    """A JSON body nested deeper than :data:`MAX_JSON_DEPTH` (answered 422 naming the body)."""


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON ``text``, brackets inside strings not counted.
    Linear and without recursion: a body of 100,000 '[' is measured here, where Python's recursive parser
    would fail with a RecursionError."""
    skeleton = np.frombuffer(_JSON_STRING.sub("", text).encode("utf-8", "surrogatepass"), np.uint8)
    steps = np.isin(skeleton, (ord("["), ord("{"))).astype(np.int64) - np.isin(skeleton, (ord("]"), ord("}")))
    return int(steps.cumsum().max(initial=0))


def parse_json(body: bytes) -> Any:
    """A request body as JSON, as ``json.loads`` reads bytes (UTF-8, or UTF-16/32 by their first bytes),
    nested at most :data:`MAX_JSON_DEPTH` levels. Raises ``UnicodeDecodeError`` (not text),
    :class:`JsonTooDeep`, ``json.JSONDecodeError`` (malformed) or ``ValueError`` (e.g. an integer of more
    than 4,300 digits)."""
    text = body.decode(json.detect_encoding(body), "surrogatepass")
    opening = text.count("[") + text.count("{")  # the usual body has a few: no deeper than that
    if opening > MAX_JSON_DEPTH and (depth := json_depth(text)) > MAX_JSON_DEPTH:
        raise JsonTooDeep(f"{depth} levels")
    return json.loads(text)


class _JsonRequest(Request):
    """FastAPI reads a JSON body with ``request.json()``: this one bounds the nesting first."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class _JsonRoute(APIRoute):
    """Routes whose handlers see a :class:`_JsonRequest` (FastAPI's documented custom-route hook)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_JsonRequest(request.scope, request.receive))

        return route


def header_fault(count: int, size: int, max_headers: int, max_header_bytes: int) -> str | None:
    """Why a request head with ``count`` header fields of ``size`` bytes (names and values) is refused
    (answered 431), or None. The middleware applies it to a whole head, the server to each head as it is
    parsed: the same rule, so either answers alike."""
    if count > max_headers:
        return f"more than the {max_headers} header fields this service accepts (llmrec serve --max-headers)"
    if size > max_header_bytes:
        return (
            f"header names and values over the {max_header_bytes} bytes this service accepts "
            "(llmrec serve --max-header-bytes)"
        )
    return None


def _too_large_body(fault: str) -> bytes:
    body = {"detail": f"field 'headers': {fault}", "field": "headers"}
    return json.dumps(body, separators=(",", ":")).encode()


class HeaderLimits:
    """ASGI middleware: a request with too many or too large header fields is answered 431 before any
    handler runs (whatever server runs the app; under ``llmrec serve`` the server refuses it earlier)."""

    def __init__(self, app: ASGIApp, max_headers: int, max_header_bytes: int) -> None:
        self.app, self.max_headers, self.max_header_bytes = app, max_headers, max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            size = sum(len(name) + len(value) for name, value in headers)
            fault = header_fault(len(headers), size, self.max_headers, self.max_header_bytes)
            if fault is not None:
                response = Response(_too_large_body(fault), 431, media_type="application/json")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class HeaderLimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 protocol with bounded request heads (httptools buffers a head of any
    size): a head with more than ``max_headers`` fields or ``max_header_bytes`` of names and values
    (:func:`header_fault`), or a head still unfinished past those bytes and a request line
    (:data:`REQUEST_LINE_BYTES`), is answered 431 as soon as it is seen, before the app or the whole head;
    the connection then closes. :func:`llmrec.serve.server_config` makes one with the app's limits."""

    max_headers = ServeSettings.max_headers
    max_header_bytes = ServeSettings.max_header_bytes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False  # answered 431: whatever still arrives is dropped until the close
        self._heads = 0  # request heads begun on this connection
        self._head_open = False  # one has begun and its headers are not complete yet
        self._fields = self._field_bytes = self._raw = 0  # of the open head

    @property
    def head_allowance(self) -> int:
        """The most raw bytes of an unfinished head: the header fields with their ': ' and CRLF, and a
        request line."""
        return self.max_header_bytes + 4 * self.max_headers + REQUEST_LINE_BYTES

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        heads, was_open = self._heads, self._head_open
        super().data_received(data)
        if self._refused or not (was_open and self._head_open and heads == self._heads):
            return
        # all of ``data`` belongs to one unfinished head that httptools holds (a long header not yet
        # complete is not seen by on_header): bounded here
        self._raw += len(data)
        if self._raw > self.head_allowance:
            self._refuse(
                f"request line and headers over {self.head_allowance} bytes before their end (this service "
                f"accepts {self.max_header_bytes} bytes of header names and values, llmrec serve "
                "--max-header-bytes, and a request line)"
            )

    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._heads, self._head_open = self._heads + 1, True
        self._fields = self._field_bytes = self._raw = 0

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._fields += 1
        self._field_bytes += len(name) + len(value.rstrip(b" \t"))  # as the app sees it in the scope
        fault = header_fault(self._fields, self._field_bytes, self.max_headers, self.max_header_bytes)
        if fault is not None:
            self._refuse(fault)
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if not self._refused:
            self._head_open = False
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # the parser choking on what follows a refused head: answered already
            super().send_400_response(msg)

    def _refuse(self, fault: str) -> None:
        """Answer 431 and close (after the answer of a pipelined request still in flight, if any)."""
        self._refused, self._head_open = True, False
        client = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
        self.logger.warning("%s431 Request Header Fields Too Large: %s", client, fault)
        if self.cycle is not None and not self.cycle.response_complete:
            # a pipelined head behind a request still being answered: that answer finishes, then the
            # connection closes (the client retries what it pipelined after it, as HTTP/1.1 says)
            self.cycle.keep_alive = False
            return
        body = _too_large_body(fault)
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the answer goes out; the client's rest is read and dropped
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

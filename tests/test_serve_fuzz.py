"""Schema-driven fuzz of ``llmrec serve``: request bodies generated from the app's own OpenAPI schema
(:func:`from_schema`, a small translator of the JSON-schema subset FastAPI writes; hypothesis-jsonschema
0.23 breaks on current hypothesis' internals for object schemas), bodies built from real and unknown ids, arbitrary JSON, arbitrary bytes, random
item paths and methods. Whatever comes in: never a 5xx, and every 4xx body is JSON whose ``detail`` says
what is wrong (and ``field`` where, when the fault is in the request body or path).

The default run is short and deterministic (~100 requests in all); the long campaign is
``pytest -m fuzz tests/test_serve_fuzz.py`` with ``LLMREC_FUZZ_EXAMPLES`` examples per test (default 500).
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import llmrec
from llmrec.serve import ServeSettings, create_app
from test_serve import make_run

DEFAULT_EXAMPLES = 25  # per test: 4 tests, ~100 requests in the default run
CAMPAIGN_EXAMPLES = int(os.environ.get("LLMREC_FUZZ_EXAMPLES", "500"))
ENDPOINTS = ("/recommend", "/rank")
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def app_client(tmp_path_factory):
    model = llmrec.load(make_run(tmp_path_factory.mktemp("fuzz")), device="cpu")
    with TestClient(create_app(model, ServeSettings(max_history=50)), raise_server_exceptions=False) as c:
        yield model, c


def _inline(schema: Any, components: dict[str, Any]) -> Any:
    """The schema with every ``#/components/schemas/X`` reference replaced by X itself."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline(components[schema["$ref"].rsplit("/", 1)[1]], components)
        return {k: _inline(v, components) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_inline(v, components) for v in schema]
    return schema


def request_schemas(app) -> dict[str, dict[str, Any]]:
    """Each POST endpoint's JSON request body schema, from ``app.openapi()``."""
    spec = app.openapi()
    components = spec.get("components", {}).get("schemas", {})
    out = {}
    for path in ENDPOINTS:
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        out[path] = _inline(body, components)
    return out


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy:
    """Values valid for ``schema`` (anyOf, null, boolean, integer with bounds, number, string, array, object
    with required and optional properties); any JSON value for what it does not describe."""
    if "anyOf" in schema:
        return st.one_of(*[from_schema(s) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if kind == "string":
        return st.text(max_size=20)
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {})), min_size=schema.get("minItems", 0), max_size=10)
    if kind == "object":
        props, required = schema.get("properties", {}), set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v) for k, v in props.items() if k in required},
            optional={k: from_schema(v) for k, v in props.items() if k not in required},
        )
    return json_values()


def check(response, context: str) -> None:
    """No 5xx; a 4xx is JSON naming what is wrong; a 200 has the documented shape."""
    event(f"HTTP {response.status_code}")  # pytest --hypothesis-show-statistics shows the mix
    assert response.status_code < 500, f"{context} -> {response.status_code} {response.text[:500]}"
    body = response.json()
    if response.status_code >= 400:
        assert isinstance(body.get("detail"), str) and body["detail"], f"{context} -> {body}"
        assert "field" in body, f"{context} -> {body}"
    elif "items" in body:
        assert isinstance(body["items"], list) and isinstance(body["took_ms"], float)
        for item in body["items"]:
            assert set(item) == {"item_id", "title", "score"}, item


def json_values() -> st.SearchStrategy:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
        max_leaves=20,
    )


def _fuzz_settings(examples: int):
    return settings(
        max_examples=examples,
        derandomize=examples == DEFAULT_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def id_bodies(model, odd: bool) -> st.SearchStrategy:
    """Bodies from real ids (answered: 200); ``odd``: unknown ids and odd values mixed in."""
    items = st.sampled_from(model.item_ids)
    users = st.sampled_from(model.user_ids)
    if odd:
        items, users = items | st.text(max_size=4), users | st.text(max_size=8)
    who = st.fixed_dictionaries({"user_id": users}) | st.fixed_dictionaries(
        {"history": st.lists(items, min_size=1, max_size=8)}
    )
    candidates = st.lists(st.sampled_from(model.item_ids), min_size=1, max_size=6, unique=True)
    rest = st.fixed_dictionaries(
        {},
        optional={
            "k": st.integers(-2, 60) | json_values() if odd else st.integers(1, 60),
            "exclude_history": st.booleans(),
            "candidates": candidates | json_values() if odd else candidates,
        },
    )
    return st.tuples(who, rest).map(lambda parts: {**parts[0], **parts[1]})


def _run_schema_fuzz(app_client, examples: int) -> None:
    model, client = app_client
    schemas = request_schemas(client.app)
    bodies = st.one_of(*[st.tuples(st.just(p), from_schema(s)) for p, s in schemas.items()])
    for odd in (False, True):
        bodies |= st.tuples(st.sampled_from(ENDPOINTS), id_bodies(model, odd))

    @_fuzz_settings(examples)
    @given(bodies)
    def run(case):
        path, body = case
        check(client.post(path, content=json.dumps(body), headers=JSON), f"POST {path} {body!r}")

    run()


def _run_raw_fuzz(app_client, examples: int) -> None:
    _, client = app_client
    raw = st.binary(max_size=200) | json_values().map(lambda v: json.dumps(v).encode())

    @_fuzz_settings(examples)
    @given(st.sampled_from(ENDPOINTS), raw, st.sampled_from(["application/json", "text/plain", ""]))
    def run(path, content, content_type):
        headers = {"content-type": content_type} if content_type else {}
        check(client.post(path, content=content, headers=headers), f"POST {path} {content!r}")

    run()


def _run_path_fuzz(app_client, examples: int) -> None:
    _, client = app_client

    @_fuzz_settings(examples)
    @given(st.text(min_size=1, max_size=30), st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
    def run(item_id, method):
        url = "/items/" + quote(item_id, safe="")
        check(client.request(method, url), f"{method} {url}")
        check(client.request(method, "/" + quote(item_id, safe="")), f"{method} /{item_id!r}")

    run()


def test_schema_bodies_never_5xx(app_client):
    _run_schema_fuzz(app_client, DEFAULT_EXAMPLES * 2)


def test_raw_bodies_never_5xx(app_client):
    _run_raw_fuzz(app_client, DEFAULT_EXAMPLES)


def test_paths_never_5xx(app_client):
    _run_path_fuzz(app_client, DEFAULT_EXAMPLES)


def test_the_schema_names_the_endpoints(app_client):
    _, client = app_client
    schemas = request_schemas(client.app)
    assert set(schemas["/recommend"]["properties"]) == {
        "user_id",
        "history",
        "model",
        "k",
        "exclude_history",
        "candidates",
        "include",
        "exclude",
        "exclude_items",
    }
    assert schemas["/rank"]["required"] == ["candidates"]
    assert client.get("/openapi.json").json()["paths"].keys() >= {
        "/recommend",
        "/rank",
        "/items/{item_id}",
        "/health",
    }


def test_every_documented_error_answer_is_the_error_body_the_service_sends(app_client):
    """The schema's 4xx answers are ErrorBody ({detail, field}), what the handlers send, not FastAPI's default
    HTTPValidationError (GET /items/{item_id} once documented its 422 that way)."""
    _, client = app_client
    spec = client.get("/openapi.json").json()
    errors = {
        (path, method, status): answer["content"]["application/json"]["schema"].get("$ref", "")
        for path, methods in spec["paths"].items()
        for method, operation in methods.items()
        for status, answer in operation["responses"].items()
        if status.startswith("4")
    }
    assert ("/items/{item_id}", "get", "422") in errors
    assert set(errors.values()) == {"#/components/schemas/ErrorBody"}, errors


@pytest.mark.fuzz
@pytest.mark.parametrize("kind", ["schema", "raw", "path"])
def test_serve_fuzz_campaign(app_client, kind):
    {"schema": _run_schema_fuzz, "raw": _run_raw_fuzz, "path": _run_path_fuzz}[kind](
        app_client, CAMPAIGN_EXAMPLES
    )

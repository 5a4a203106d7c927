"""The lean server span against the FastAPI instrumentation's own: the same requests to the same
app, instrumented once with upstream's middleware and once with it patched, give the same spans
(name, kind, attributes, status, events, parent); the route lookup runs once per route."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.responses import StreamingResponse
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.propagators import (
    TraceResponsePropagator,
    get_global_response_propagator,
    set_global_response_propagator,
)
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_sidecar.instrumentation import server
from otel_sidecar.instrumentation.exceptions import CHAIN

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
HEADERS = {"user-agent": "tests/1.0", "x-request-id": "r-1", "cookie": "session=s3cret"}


def deep_failure(lesson: int) -> None:
    raise ValueError(f"lesson {lesson} is broken")


def build_app() -> FastAPI:
    app = FastAPI()
    versioned = APIRouter()

    @app.get("/items/{item_id}")
    def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.post("/items")
    def create() -> dict[str, str]:
        return {}

    @app.get("/fail/{lesson}")
    def fail(lesson: int) -> None:
        deep_failure(lesson)

    @app.get("/stream")
    def stream() -> StreamingResponse:
        return StreamingResponse(iter([b"a", b"b", b"c"]))

    @app.get("/slash/")
    def slash() -> dict[str, str]:
        return {}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @versioned.get("/users/{user_id}")
    def user(user_id: str) -> dict[str, str]:
        return {"user": user_id}

    app.include_router(versioned)
    app.include_router(versioned, prefix="/v1")
    app.include_router(versioned, prefix="/v2")  # one route object, three templates
    sub = FastAPI()

    @sub.get("/pages/{page}")
    def page(page: str) -> dict[str, str]:
        return {"page": page}

    app.mount("/sub", sub)
    return app


REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/items/1", HEADERS),
    ("GET", "/items/2?q=x", {**HEADERS, "traceparent": PARENT}),
    ("GET", "/items/not-a-number", HEADERS),  # 422
    ("PUT", "/items/3", HEADERS),  # 405: a partial match
    ("POST", "/items", HEADERS),
    ("GET", "/nowhere", HEADERS),  # 404: no route
    ("GET", "/fail/7", HEADERS),  # 500 from deep in a helper
    ("GET", "/stream", HEADERS),
    ("GET", "/slash", HEADERS),  # redirected
    ("GET", "/health", HEADERS),  # excluded
    ("GET", "/v1/users/a", HEADERS),
    ("GET", "/v2/users/b", HEADERS),
    ("GET", "/v1/users/c", HEADERS),
    ("GET", "/users/d", HEADERS),  # remembered: its template is the route's own path
    ("GET", "/v2/users/e", HEADERS),  # the same route object: not that template
    ("GET", "/sub/pages/home", HEADERS),
    ("BREW", "/items/4", HEADERS),  # a method outside HTTP's
    ("GET", "/items/5", HEADERS),
]


def spans_from(lean: bool, root_path: str) -> tuple[list[dict[str, Any]], list[str | None]]:
    """The spans of :data:`REQUESTS`, and the ``traceresponse`` header of each answer."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = build_app()
    if lean:
        server.install()
    try:
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=provider,
            meter_provider=NoOpMeterProvider(),
            excluded_urls="/health",
            exclude_spans=["send", "receive"],
            http_capture_headers_server_request=["user-agent", "x-request-id", "cookie"],
            http_capture_headers_sanitize_fields=["cookie"],
        )
        requests = [(method, root_path + path, headers) for method, path, headers in REQUESTS]
        answers = asyncio.run(send(app, requests, root_path))
    finally:
        server.uninstall()
    spans = [described(span) for span in exporter.get_finished_spans()]
    return spans, [answer.headers.get("traceresponse") for answer in answers]


def event_attributes(event: Any) -> dict[str, Any]:
    attributes = dict(event.attributes)
    attributes.pop("exception.stacktrace", None)
    if (chain := attributes.pop(CHAIN, None)) is not None:
        attributes[CHAIN] = [
            [(frame["function"], frame["vars"]) for frame in value["frames"] if frame["in_app"]]
            for value in json.loads(chain)
        ]
    return attributes


async def send(
    app: FastAPI, requests: list[tuple[str, str, dict[str, str]]], root_path: str = ""
) -> list[Any]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return [await client.request(*request[:2], headers=request[2]) for request in requests]


def described(span: Any) -> dict[str, Any]:
    """What the span says, the stack of an exception kept to the app's frames (this package's
    frames differ from upstream's in the middle of it)."""
    return {
        "name": span.name,
        "kind": span.kind,
        "attributes": dict(span.attributes),
        "status": (span.status.status_code, span.status.description),
        "events": [(event.name, event_attributes(event)) for event in span.events],
        "parent": span.parent.span_id if span.parent is not None else None,
        "trace": span.context.trace_id if span.parent is not None else None,
    }


@pytest.fixture
def response_propagator() -> Iterator[None]:
    before = get_global_response_propagator()
    set_global_response_propagator(TraceResponsePropagator())
    yield
    set_global_response_propagator(before)  # type: ignore[arg-type]


@pytest.mark.parametrize("root_path", ["", "/api"])  # behind a proxy: uvicorn --root-path
def test_the_lean_path_makes_upstreams_spans(
    installed: Any, response_propagator: None, root_path: str
) -> None:
    upstream, their_answers = spans_from(False, root_path)
    lean, our_answers = spans_from(True, root_path)
    assert [bool(header) for header in our_answers] == [bool(h) for h in their_answers]
    assert sum(bool(header) for header in our_answers) == len(REQUESTS) - 1
    assert len(upstream) == len(REQUESTS) - 1  # /health excluded
    for theirs, ours in zip(upstream, lean, strict=True):
        assert ours == theirs
    names = [span["name"] for span in lean]
    assert "GET /items/{item_id}" in names
    assert names.count("GET /v2/users/{user_id}") == 2
    assert names.count("GET /v1/users/{user_id}") == 2
    remote = [span for span in lean if span["trace"] is not None]
    assert [span["attributes"]["http.target"] for span in remote] == [root_path + "/items/2"]
    assert remote[0]["trace"] == int(PARENT.split("-")[1], 16)
    failed = next(span for span in lean if span["name"] == "GET /fail/{lesson}")
    assert failed["events"][0][1]["exception.type"] == "ValueError"
    assert ("deep_failure", {"lesson": "7"}) in failed["events"][0][1][CHAIN][-1]


PATHS = ("/items", "/v2/users")


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    server.install()
    calls: list[str] = []
    lookup = server._FASTAPI["lookup"]

    def counted(scope: Any) -> str | None:
        calls.append(scope["path"])
        return lookup(scope)  # type: ignore[no-any-return]

    monkeypatch.setitem(server._FASTAPI, "lookup", counted)
    yield calls
    server.uninstall()


def test_the_route_lookup_runs_once_per_route(lookups: list[str]) -> None:
    app = build_app()
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=TracerProvider(),
        meter_provider=NoOpMeterProvider(),
        exclude_spans=["send", "receive"],
    )
    numbers = range(5)
    asyncio.run(send(app, [("GET", f"{path}/{n}", {}) for n in numbers for path in PATHS]))
    # /items/{item_id} is remembered after its first request; the router included twice
    # is looked up in full every time, as upstream does
    assert lookups.count("/items/0") == 1
    assert [path for path in lookups if path.startswith("/items")] == ["/items/0"]
    assert len([path for path in lookups if path.startswith("/v2")]) == 5


def test_with_metrics_on_upstreams_path_runs(lookups: list[str]) -> None:
    app = build_app()
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=TracerProvider(), exclude_spans=["send", "receive"]
    )
    asyncio.run(send(app, [("GET", "/items/1", {})]))
    assert lookups == []  # upstream's own lookup ran, not the lean path's


def test_a_failing_route_lookup_leaves_the_answer_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    server.install()
    try:

        def broken(scope: Any) -> str | None:
            raise RuntimeError("a route the lookup cannot read")

        monkeypatch.setitem(server._FASTAPI, "lookup", broken)
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        app = build_app()
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=provider,
            meter_provider=NoOpMeterProvider(),
            exclude_spans=["send", "receive"],
        )
        (answer,) = asyncio.run(send(app, [("GET", "/items/1", {})]))
    finally:
        server.uninstall()
    assert answer.status_code == 200
    assert [span.name for span in exporter.get_finished_spans()] == ["GET"]

"""The lean server span against the FastAPI instrumentation's own: the same requests to the same
app, instrumented once with upstream's middleware and once with it patched, give the same spans
(name, kind, attributes, status, events, parent); the route lookup runs once per route."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.responses import StreamingResponse
from opentelemetry import trace
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
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult

from otel_sidecar.instrumentation import server
from otel_sidecar.instrumentation.exceptions import CHAIN

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
HEADERS = {"user-agent": "tests/1.0", "x-request-id": "r-1", "cookie": "session=s3cret"}


def deep_failure(lesson: int) -> None:
    raise ValueError(f"lesson {lesson} is broken")


def build_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(Alias)

    @app.get("/items/{item_id}")
    def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.post("/items")
    def create() -> dict[str, str]:
        return {}

    @app.get("/people/me")
    def me() -> dict[str, str]:
        return {}

    @app.put("/people/{person}")
    def put_person(person: str) -> dict[str, str]:
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

    @app.post("/graphql")
    def graphql() -> dict[str, str]:
        span = trace.get_current_span()  # the app names its span itself
        span.update_name("query GetUser")
        span.set_attribute("http.route", "/graphql/GetUser")
        return {}

    @app.get("/legacy/{number}")
    def legacy(number: int) -> dict[str, int]:
        return {"legacy": number}

    @app.get("/pages/{page:path}")
    def pages(page: str) -> dict[str, str]:
        return {"page": page}

    app.include_router(routers()["versioned"])
    app.include_router(routers()["versioned"], prefix="/v1")
    app.include_router(routers()["versioned"], prefix="/v2")  # one route, three templates
    app.include_router(routers()["files"], prefix="/files/v1")
    app.include_router(routers()["files"], prefix="/files")  # a catch-all, twice
    app.include_router(routers()["lessons"], prefix="/api")
    sub = FastAPI()
    sub.include_router(routers()["lessons"], prefix="/api")  # a route reachable in a mount too

    @sub.get("/pages/{page}")
    def page(page: str) -> dict[str, str]:
        return {"page": page}

    app.mount("/sub", sub)
    return app


def routers(cache: dict[str, APIRouter] = {}) -> dict[str, APIRouter]:  # noqa: B006
    """Routers shared by every app built here, as a module's routers are."""
    if not cache:
        versioned, files, lessons = APIRouter(), APIRouter(), APIRouter()

        @versioned.get("/users/{user_id}")
        def user(user_id: str) -> dict[str, str]:
            return {"user": user_id}

        @files.get("/{path:path}")
        def file(path: str) -> dict[str, str]:
            return {"path": path}

        @lessons.get("/lessons/{lesson}")
        def lesson(lesson: int) -> dict[str, int]:
            return {"lesson": lesson}

        cache.update(versioned=versioned, files=files, lessons=lessons)
    return cache


class Alias:
    """A path-rewriting middleware: /legacy/<x> is served by /pages/<x>."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/legacy/"):
            scope["path"] = "/pages/" + scope["path"].removeprefix("/legacy/")
        await self.app(scope, receive, send)


REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/items/1", HEADERS),
    ("GET", "/items/2?q=x", {**HEADERS, "traceparent": PARENT}),
    ("GET", "/items/not-a-number", HEADERS),  # 422
    ("PUT", "/items/3", HEADERS),  # 405: a partial match
    ("POST", "/items", HEADERS),
    ("GET", "/people/me", HEADERS),
    ("PATCH", "/people/me", HEADERS),  # 405: the router takes the first partial match
    ("GET", "/nowhere", HEADERS),  # 404: no route
    ("GET", "/fail/7", HEADERS),  # 500 from deep in a helper
    ("GET", "/stream", HEADERS),
    ("GET", "/slash", HEADERS),  # redirected
    ("GET", "/health", HEADERS),  # excluded
    ("POST", "/graphql", HEADERS),
    ("GET", "/pages/about", HEADERS),
    ("GET", "/legacy/1", HEADERS),  # named by the path it came with, as upstream does
    ("GET", "/v1/users/a", HEADERS),
    ("GET", "/v2/users/b", HEADERS),
    ("GET", "/v1/users/c", HEADERS),
    ("GET", "/users/d", HEADERS),
    ("GET", "/v2/users/e", HEADERS),
    ("GET", "/files/a.txt", HEADERS),
    ("GET", "/files/v1/a.txt", HEADERS),  # the same catch-all route, the other template
    ("GET", "/api/lessons/1", HEADERS),
    ("GET", "/api/lessons/2", HEADERS),
    ("GET", "/sub/pages/home", HEADERS),
    ("GET", "/sub/api/lessons/3", HEADERS),  # the route remembered at the top, in a mount
    ("BREW", "/items/4", HEADERS),  # a method outside HTTP's
    ("GET", "/items/5", HEADERS),
]


def instrumented(app: FastAPI, **options: Any) -> InMemorySpanExporter:
    """``app`` instrumented as the distribution does (metrics off, no send/receive spans),
    its spans kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        meter_provider=NoOpMeterProvider(),
        exclude_spans=["send", "receive"],
        **options,
    )
    return exporter


def spans_from(lean: bool, root_path: str) -> tuple[list[dict[str, Any]], list[str | None]]:
    """The spans of :data:`REQUESTS`, and the ``traceresponse`` header of each answer."""
    app = build_app()
    if lean:
        server.install()
    try:
        exporter = instrumented(
            app,
            excluded_urls="/health",
            http_capture_headers_server_request=["user-agent", "x-request-id", "cookie"],
            http_capture_headers_sanitize_fields=["cookie"],
        )
        requests = [(method, root_path + path, headers) for method, path, headers in REQUESTS]
        answers = asyncio.run(send(app, requests, root_path))
    finally:
        server.uninstall()
    spans = [described(span) for span in exporter.get_finished_spans()]
    return spans, [answer.headers.get("traceresponse") for answer in answers]


OWN = ("fail", "deep_failure")  # frames whose variables hold no object addresses


def frame_summary(frame: dict[str, Any]) -> tuple[str, Any]:
    return frame["function"], frame["vars"] if frame["function"] in OWN else None


def event_attributes(event: Any) -> dict[str, Any]:
    attributes = dict(event.attributes)
    attributes.pop("exception.stacktrace", None)
    if (chain := attributes.pop(CHAIN, None)) is not None:
        attributes[CHAIN] = [
            [frame_summary(frame) for frame in value["frames"] if frame["in_app"]]
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
    assert "GET /files/v1/{path:path}" in names and "query GetUser" in names
    remote = [span for span in lean if span["trace"] is not None]
    assert [span["attributes"]["http.target"] for span in remote] == [root_path + "/items/2"]
    assert remote[0]["trace"] == int(PARENT.split("-")[1], 16)
    failed = next(span for span in lean if span["name"] == "GET /fail/{lesson}")
    assert failed["events"][0][1]["exception.type"] == "ValueError"
    assert ("deep_failure", {"lesson": "7"}) in failed["events"][0][1][CHAIN][-1]


PATHS = ("/items", "/v2/users", "/api/lessons")


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    server.install()
    calls: list[str] = []
    lookup = server._OTEL["lookup"]

    def counted(scope: Any) -> str | None:
        calls.append(scope["path"])
        return lookup(scope)  # type: ignore[no-any-return]

    flatten = server._OTEL["flatten"]

    def counted_walk(routes: Any) -> Any:
        calls.append("walk")  # the app's routes walked to count a route's occurrences
        return flatten(routes)

    monkeypatch.setitem(server._OTEL, "lookup", counted)
    monkeypatch.setitem(server._OTEL, "flatten", counted_walk)
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
    # A route reachable once is looked up at its first request (a prefixed router's too);
    # one reachable under three prefixes is looked up in full every time, as upstream does.
    assert [path for path in lookups if path.startswith("/items")] == ["/items/0"]
    assert [path for path in lookups if path.startswith("/api")] == ["/api/lessons/0"]
    assert len([path for path in lookups if path.startswith("/v2")]) == 5
    assert lookups.count("walk") == len(PATHS)  # once per route, not per request


class RouteSampler(Sampler):
    """Reads the route at the span's start, as a sampler dropping health checks would."""

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        attributes = kwargs.get("attributes") or (args[4] if len(args) > 4 else None) or {}
        keep = attributes.get("http.route") != "/health"
        return SamplingResult(Decision.RECORD_AND_SAMPLE if keep else Decision.DROP)

    def get_description(self) -> str:
        return "RouteSampler"


@pytest.mark.parametrize(
    "options",
    [
        {"tracer_provider": TracerProvider()},  # metrics recorded
        {"meter_provider": NoOpMeterProvider(), "tracer_provider": TracerProvider(RouteSampler())},
        {
            "meter_provider": NoOpMeterProvider(),
            "tracer_provider": TracerProvider(ParentBased(RouteSampler())),
        },
        {
            "meter_provider": NoOpMeterProvider(),
            "tracer_provider": TracerProvider(),
            "server_request_hook": lambda span, scope: None,
        },
    ],
    ids=["metrics", "a sampler reading attributes", "one under ParentBased", "a request hook"],
)
def test_where_the_name_could_be_read_at_the_start_upstreams_path_runs(
    lookups: list[str], options: dict[str, Any]
) -> None:
    app = build_app()
    FastAPIInstrumentor.instrument_app(app, exclude_spans=["send", "receive"], **options)
    asyncio.run(send(app, [("GET", "/items/1", {})]))
    assert lookups == []  # upstream's own lookup ran, not the lean path's


def test_a_failing_route_lookup_leaves_the_answer_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    server.install()
    try:

        def broken(scope: Any) -> str | None:
            raise RuntimeError("a route the lookup cannot read")

        monkeypatch.setitem(server._OTEL, "lookup", broken)
        exporter = instrumented(app := build_app())
        (answer,) = asyncio.run(send(app, [("GET", "/items/1", {})]))
    finally:
        server.uninstall()
    assert answer.status_code == 200
    assert [span.name for span in exporter.get_finished_spans()] == ["GET"]


def test_a_route_included_again_at_runtime_is_named_by_its_new_prefix() -> None:
    app = build_app()
    server.install()
    try:
        exporter = instrumented(app)
        asyncio.run(send(app, [("GET", "/api/lessons/1", {})]))
        app.include_router(routers()["lessons"], prefix="/api/v9")
        asyncio.run(send(app, [("GET", "/api/v9/lessons/2", {})]))
    finally:
        server.uninstall()
    names = [span.name for span in exporter.get_finished_spans()]
    assert names == ["GET /api/lessons/{lesson}", "GET /api/v9/lessons/{lesson}"]


ZERO_CODE_APP = """
import asyncio, httpx
from opentelemetry.instrumentation.auto_instrumentation import initialize
initialize()  # what opentelemetry-instrument does first
from fastapi import FastAPI
app = FastAPI()
app.get("/items/{item_id}")(lambda item_id: {})
async def main():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:
        await c.get("/items/1")
asyncio.run(main())
stack = app.middleware_stack
while type(stack).__name__ != "OpenTelemetryMiddleware":
    stack = stack.app
print(type(stack._otel_sidecar_routes).__name__)
"""


def test_the_distribution_takes_the_lean_path_by_default() -> None:
    environment = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}
    done = subprocess.run(
        [sys.executable, "-c", ZERO_CODE_APP],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.stdout.strip().splitlines()[-1:] == ["_Routes"], done.stderr[-2000:]

"""A FastAPI request's server span for less of the app's CPU: the same span as the FastAPI
instrumentation makes, with the work that serves no one left out.

``opentelemetry-instrumentation-fastapi`` wraps each app in the ASGI instrumentation's
``OpenTelemetryMiddleware``. Per request, before the app runs, it matches the request against
every route of the app to name the span (a regular expression per route), sets each request
attribute twice (at the span's start, then one by one), and prepares the attributes of HTTP
metrics, which the distribution turns off by default (the sidecar computes them from spans).
:func:`install` wraps the middleware's ``__call__`` so that it makes the same span (name,
kind, attributes, status, exceptions, captured headers, its end when the response body is
sent) with less work:

- the route is read once the app has routed the request (Starlette and FastAPI put the
  matched route in the scope), when the response starts; its template is remembered per route
  object and used only when the request's path matches that route's own pattern (a router
  included under two prefixes is looked up in full, as upstream does);
- request attributes are set once, at the span's start;
- no metric bookkeeping.

It takes over only where that is the same span: HTTP requests (not websockets) to a FastAPI
app, metrics off (a no-op meter), ``send`` and ``receive`` spans excluded (the defaults here).
Anywhere else upstream's ``__call__`` runs. The class stays upstream's own: FastAPI's built-in
telemetry recognises it by name and stays off, so requests are not traced twice.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any, Callable

from opentelemetry import context, trace
from opentelemetry.instrumentation.asgi import (
    OpenTelemetryMiddleware,
    asgi_getter,
    asgi_setter,
    collect_custom_headers_attributes,
    collect_request_attributes,
    get_host_port_url_tuple,
)
from opentelemetry.instrumentation.propagators import get_global_response_propagator
from opentelemetry.instrumentation.utils import (
    _start_internal_or_server_span,
    is_http_instrumentation_enabled,
)
from opentelemetry.metrics import NoOpMeter
from opentelemetry.util.http import normalise_request_header_name, sanitize_method

from otel_sidecar.instrumentation.patches import patch, unpatch

_log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Send = Callable[[Message], Any]
_MAX_ROUTES = 1_000  # templates remembered; routes are few, but an app can add them at runtime


class _Routes:
    """What a middleware instance needs for the lean path: the FastAPI instrumentation's route
    lookup (the reference), and the templates found so far, per route object."""

    def __init__(self, lookup: Callable[[Scope], str | None], path: Callable[[Scope], str]):
        self._lookup = lookup
        self._path = path
        self._templates: dict[int, tuple[Any, str]] = {}

    def template(self, request: Scope, routed: Scope) -> str | None:
        """The matched route's template, as upstream's lookup gives it for ``request`` (the
        scope as it came in); ``routed`` is the scope the app's routing wrote to."""
        matched = routed.get("route")
        known = self._templates.get(id(matched)) if matched is not None else None
        if known is not None and known[0] is matched and self._matches(matched, request):
            return known[1]
        template = self._lookup(request)
        own = getattr(matched, "path", None)
        if template is not None and template == own and self._matches(matched, request):
            if len(self._templates) >= _MAX_ROUTES:
                self._templates.clear()
            self._templates[id(matched)] = (matched, template)
        return template

    def _matches(self, route: Any, request: Scope) -> bool:
        pattern = getattr(route, "path_regex", None)
        return pattern is not None and pattern.match(self._path(request)) is not None


def _routes_of(middleware: Any) -> _Routes | None:
    """The lean path's state for this middleware, or None where upstream's path must run."""
    try:
        return middleware._otel_sidecar_routes  # type: ignore[no-any-return]
    except AttributeError:
        pass
    routes = None
    lookup = _FASTAPI.get("lookup")
    if (
        lookup is not None
        and getattr(middleware, "default_span_details", None) is _FASTAPI.get("details")
        and isinstance(getattr(middleware, "meter", None), NoOpMeter)
        and getattr(middleware, "exclude_send_span", False)
        and getattr(middleware, "exclude_receive_span", False)
        and hasattr(middleware, "_set_server_span")
    ):
        routes = _Routes(lookup, _FASTAPI["path"])
    middleware._otel_sidecar_routes = routes
    return routes


_FASTAPI: dict[str, Any] = {}  # the FastAPI instrumentation's functions, set by install()


def _wrap_call(original: Callable[..., Any]) -> Callable[..., Any]:
    async def __call__(self: Any, scope: Scope, receive: Any, send: Send) -> None:
        routes = _routes_of(self) if scope["type"] == "http" else None
        if routes is None or not is_http_instrumentation_enabled():
            await original(self, scope, receive, send)
            return
        if self.excluded_urls and self.excluded_urls.url_disabled(
            get_host_port_url_tuple(scope)[2]
        ):
            await self.app(scope, receive, send)
            return
        await _traced(self, routes, scope, receive, send)

    return __call__


async def _traced(middleware: Any, routes: _Routes, scope: Scope, receive: Any, send: Send) -> None:
    request = dict(scope)  # as it came: routing adds to the scope
    method = sanitize_method(scope.get("method", "").strip())
    method = "HTTP" if method == "_OTHER" else method
    span, token = _start_internal_or_server_span(
        tracer=middleware.tracer,
        span_name=method,
        start_time=None,
        context_carrier=scope,
        context_getter=asgi_getter,
        attributes=collect_request_attributes(scope, middleware._sem_conv_opt_in_mode),
    )
    named = False

    def name() -> None:
        nonlocal named
        named = True
        try:
            route = routes.template(request, scope) if span.is_recording() else None
        except Exception as error:  # naming a span must never fail the app's response
            _log.debug("no route for the server span: %r", error)
            return
        if route:
            span.update_name(f"{method} {route}")
            span.set_attribute("http.route", route)

    trailers = False

    async def send_and_record(message: Message) -> None:
        nonlocal trailers
        kind = message["type"]
        if kind == "http.response.start":
            trailers = message.get("trailers", False)
            name()
            middleware._set_server_span(span, message, message["status"], {})
            _inject_response_context(span, message)
        await send(message)
        if (kind == "http.response.body" and not trailers and not message.get("more_body")) or (
            kind == "http.response.trailers" and not message.get("more_trailers")
        ):
            span.end()

    try:
        with trace.use_span(span, end_on_exit=False):
            if span.is_recording() and span.kind == trace.SpanKind.SERVER:
                _capture_request_headers(middleware, span, scope)
            if middleware.server_request_hook is not None:
                middleware.server_request_hook(span, scope)
            await middleware.app(scope, receive, send_and_record)
    finally:
        if not named:  # no response started (the client left first)
            name()
        if token:
            context.detach(token)
        if span.is_recording():
            span.end()


def _capture_request_headers(middleware: Any, span: trace.Span, scope: Scope) -> None:
    if middleware.http_capture_headers_server_request:
        headers = collect_custom_headers_attributes(
            scope,
            middleware.http_capture_headers_sanitize_fields,
            middleware.http_capture_headers_server_request,
            normalise_request_header_name,
        )
        if headers:
            span.set_attributes(headers)


def _inject_response_context(span: trace.Span, message: Message) -> None:
    propagator = get_global_response_propagator()
    if propagator:
        propagator.inject(
            message,
            context=trace.set_span_in_context(span, context.Context()),
            setter=asgi_setter,
        )


def install() -> None:
    """From now on, FastAPI apps' server spans are made the lean way (where it is the same
    span); a release of the instrumentation without what it relies on keeps upstream's."""
    try:
        from opentelemetry.instrumentation import fastapi as instrumentation
        from starlette._utils import get_route_path
    except ImportError as error:
        _log.debug("the server span stays upstream's: %s", error)
        return
    lookup = getattr(instrumentation, "_get_route_details", None)
    details = getattr(instrumentation, "_get_default_span_details", None)
    if lookup is None or details is None:
        return
    _FASTAPI.update(lookup=lookup, details=details, path=get_route_path)
    patch(OpenTelemetryMiddleware, "__call__", _wrap_call)


def uninstall() -> None:
    unpatch(OpenTelemetryMiddleware, "__call__")
    _FASTAPI.clear()

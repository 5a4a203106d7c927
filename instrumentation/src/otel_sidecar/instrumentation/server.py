"""A FastAPI request's server span for less of the app's CPU: the span the FastAPI
instrumentation makes, with the work that serves no one left out.

``opentelemetry-instrumentation-fastapi`` wraps each app in the ASGI instrumentation's
``OpenTelemetryMiddleware``. Per request, before the app runs, it matches the request against
every route of the app to name the span (a regular expression per route), sets each request
attribute twice (at the span's start, then one by one), and prepares the attributes of HTTP
metrics, which the distribution turns off by default (the sidecar computes them from spans).
:func:`install` wraps the middleware's ``__call__`` so that it exports the same span (name,
kind, attributes, status, exceptions, captured headers, its end when the response body is
sent) with less work:

- the route is named when the response starts, from the route the app's routing matched:
  upstream's lookup runs once per route, and its template is reused while that is certain to
  give upstream's answer (the route appears once in the app, the request matched it fully,
  no mount or middleware changed the path on the way, the app's routes are as they were);
- request attributes are set once, at the span's start;
- no metric bookkeeping.

What differs, by design: until the response starts the span is named by the method alone and
has no ``http.route`` (code reading the current span's name inside an endpoint sees ``GET``),
and ``http.route`` comes after the captured headers (with an attribute limit set low enough to
drop attributes, a different one goes). A name or ``http.route`` the app sets itself is kept.

It takes over only where nothing could read the span's name at its start: HTTP requests (not
websockets) to a FastAPI app, metrics off (a no-op meter), ``send`` and ``receive`` spans
excluded (the defaults here), no ``server_request_hook``, a sampler that reads no names or
attributes (this distribution's, or one of the SDK's own). Anywhere else, or with an
instrumentation release that lacks what it relies on, upstream's ``__call__`` runs. The class
stays upstream's own: FastAPI's built-in telemetry recognises it by name and stays off, so
requests are not traced twice.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import MutableMapping
from typing import Any, Callable

from otel_sidecar.instrumentation.patches import patch, unpatch

_log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Send = Callable[[Message], Any]
_MAX_ROUTES = 1_000  # templates remembered; routes are few, but an app can add them at runtime
# Read on upstream's middleware instance by the lean path.
_MIDDLEWARE_FIELDS = (
    "app",
    "tracer",
    "excluded_urls",
    "_sem_conv_opt_in_mode",
    "http_capture_headers_server_request",
    "http_capture_headers_sanitize_fields",
    "_set_server_span",
)
_OTEL: dict[str, Any] = {}  # what the lean path uses from upstream, set by install()


class _Routes:
    """Route templates of one app, found by upstream's lookup and remembered per route object
    while reusing them is certain to give upstream's answer."""

    def __init__(self) -> None:
        # id(route) -> (weak reference to the route, its template or None where it is reachable
        # more than once, the app's route count then)
        self._templates: dict[int, tuple[weakref.ref[Any], str | None, int]] = {}

    def template(self, request: Scope, routed: Scope) -> str | None:
        """The template upstream's lookup gives ``request`` (the scope as it came in);
        ``routed`` is the scope the app's routing wrote to."""
        lookup = _OTEL["lookup"]
        matched = routed.get("route")
        if matched is None or not _routed_directly(matched, request, routed):
            return lookup(request)  # type: ignore[no-any-return]
        routes = getattr(request.get("app"), "routes", ())
        known = self._templates.get(id(matched))
        if known is not None and known[0]() is matched and known[2] == len(routes):
            return known[1] or lookup(request)
        template: str | None = lookup(request)
        if template is not None:
            if len(self._templates) >= _MAX_ROUTES:
                self._templates.clear()
            remembered = template if _occurrences(routes, matched) == 1 else None
            self._templates[id(matched)] = (weakref.ref(matched), remembered, len(routes))
        return template


def _routed_directly(route: Any, request: Scope, routed: Scope) -> bool:
    """The app's own router matched ``route`` fully on the path the request came with: no
    partial match (405), no mount on the way, no middleware rewriting the path."""
    return (
        request.get("method") in (getattr(route, "methods", None) or ())
        and routed.get("path") == request.get("path")
        and routed.get("root_path") == request.get("root_path")
    )


def _occurrences(routes: Any, route: Any) -> int:
    """How many times ``route`` is reachable among the app's routes (an included router's
    route once per inclusion, each with its own prefix)."""
    return sum(getattr(item, "original_route", item) is route for item in _OTEL["flatten"](routes))


def _routes_of(middleware: Any) -> _Routes | None:
    """The lean path's state for this middleware, or None where upstream's path must run."""
    try:
        return middleware._otel_sidecar_routes  # type: ignore[no-any-return]
    except AttributeError:
        pass
    lean = (
        getattr(middleware, "default_span_details", None) is _OTEL.get("details")
        and isinstance(getattr(middleware, "meter", None), _OTEL["NoOpMeter"])
        and getattr(middleware, "exclude_send_span", False) is True
        and getattr(middleware, "exclude_receive_span", False) is True
        and getattr(middleware, "server_request_hook", True) is None
        and all(hasattr(middleware, name) for name in _MIDDLEWARE_FIELDS)
        and _reads_no_names(getattr(middleware.tracer, "sampler", None))
    )
    routes = _Routes() if lean else None
    middleware._otel_sidecar_routes = routes
    return routes


def _reads_no_names(sampler: Any) -> bool:
    """Whether ``sampler`` decides without the span's name and attributes: this distribution's
    sampler (it reads the kind) and the SDK's own (``ParentBased`` if its delegates are)."""
    from opentelemetry.sdk.trace import sampling

    from otel_sidecar.instrumentation.sampler import RequestRootsSampler

    if isinstance(sampler, RequestRootsSampler):
        return True
    if isinstance(sampler, sampling.ParentBased):
        delegates = [value for name, value in vars(sampler).items() if name.startswith("_")]
        return all(_reads_no_names(delegate) for delegate in delegates)
    return type(sampler).__module__ == sampling.__name__


def _wrap_call(original: Callable[..., Any]) -> Callable[..., Any]:
    async def __call__(self: Any, scope: Scope, receive: Any, send: Send) -> None:
        routes = _routes_of(self) if scope["type"] == "http" else None
        if routes is None or not _OTEL["enabled"]():
            await original(self, scope, receive, send)
            return
        if self.excluded_urls and self.excluded_urls.url_disabled(_OTEL["url"](scope)[2]):
            await self.app(scope, receive, send)
            return
        await _traced(self, routes, scope, receive, send)

    return __call__


async def _traced(middleware: Any, routes: _Routes, scope: Scope, receive: Any, send: Send) -> None:
    request = dict(scope)  # as it came: routing adds to the scope
    method = _OTEL["sanitize_method"](scope.get("method", "").strip())
    method = "HTTP" if method == "_OTHER" else method
    span, token = _OTEL["start_span"](
        tracer=middleware.tracer,
        span_name=method,
        start_time=None,
        context_carrier=scope,
        context_getter=_OTEL["getter"],
        attributes=_OTEL["request_attributes"](scope, middleware._sem_conv_opt_in_mode),
    )

    async def send_and_record(message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            _name(span, method, routes, request, scope)
            middleware._set_server_span(span, message, message["status"], {})
            _inject_response_context(span, message)
        await send(message)
        # As upstream with send spans excluded: the span ends with the last body message.
        if kind == "http.response.body" and not message.get("more_body"):
            span.end()

    trace = _OTEL["trace"]
    try:
        with trace.use_span(span, end_on_exit=False):
            if span.is_recording() and span.kind == trace.SpanKind.SERVER:
                _capture_request_headers(middleware, span, scope)
            await middleware.app(scope, receive, send_and_record)
    finally:
        # Ended at the last body message; otherwise the client left first, named or not yet.
        _name(span, method, routes, request, scope)
        if token:
            _OTEL["context"].detach(token)
        if span.is_recording():
            span.end()


def _name(span: Any, method: str, routes: _Routes, request: Scope, routed: Scope) -> None:
    """Name the span after its route, unless it has ended or its name and route are set."""
    if not span.is_recording() or (span.name != method and "http.route" in span.attributes):
        return
    try:
        route = routes.template(request, routed)
    except Exception as error:  # naming a span must never fail the app's response
        _log.debug("no route for the server span: %r", error)
        return
    if not route:
        return
    if span.name == method:
        span.update_name(f"{method} {route}")
    if "http.route" not in span.attributes:
        span.set_attribute("http.route", route)


def _capture_request_headers(middleware: Any, span: Any, scope: Scope) -> None:
    if middleware.http_capture_headers_server_request:
        headers = _OTEL["header_attributes"](
            scope,
            middleware.http_capture_headers_sanitize_fields,
            middleware.http_capture_headers_server_request,
            _OTEL["header_name"],
        )
        if headers:
            span.set_attributes(headers)


def _inject_response_context(span: Any, message: Message) -> None:
    propagator = _OTEL["response_propagator"]()
    if propagator:
        context, trace = _OTEL["context"], _OTEL["trace"]
        propagator.inject(
            message,
            context=trace.set_span_in_context(span, context.Context()),
            setter=_OTEL["setter"],
        )


def install() -> None:
    """From now on, FastAPI apps' server spans are made the lean way where that gives
    upstream's span; an instrumentation release without what it relies on keeps upstream's."""
    try:
        from opentelemetry import context, trace
        from opentelemetry.instrumentation import asgi
        from opentelemetry.instrumentation import fastapi as instrumentation
        from opentelemetry.instrumentation.propagators import get_global_response_propagator
        from opentelemetry.instrumentation.utils import (
            _start_internal_or_server_span,
            is_http_instrumentation_enabled,
        )
        from opentelemetry.metrics import NoOpMeter
        from opentelemetry.util.http import normalise_request_header_name, sanitize_method

        _OTEL.update(
            lookup=instrumentation._get_route_details,
            details=instrumentation._get_default_span_details,
            flatten=instrumentation._flatten_routes,
            getter=asgi.asgi_getter,
            setter=asgi.asgi_setter,
            url=asgi.get_host_port_url_tuple,
            request_attributes=asgi.collect_request_attributes,
            header_attributes=asgi.collect_custom_headers_attributes,
            header_name=normalise_request_header_name,
            sanitize_method=sanitize_method,
            start_span=_start_internal_or_server_span,
            enabled=is_http_instrumentation_enabled,
            response_propagator=get_global_response_propagator,
            NoOpMeter=NoOpMeter,
            context=context,
            trace=trace,
        )
        patch(asgi.OpenTelemetryMiddleware, "__call__", _wrap_call)
    except (ImportError, AttributeError) as error:
        _OTEL.clear()
        _log.debug("the server span stays upstream's: %r", error)


def uninstall() -> None:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    unpatch(OpenTelemetryMiddleware, "__call__")
    _OTEL.clear()

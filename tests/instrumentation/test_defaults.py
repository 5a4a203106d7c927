"""The defaults `opentelemetry-instrument` runs with: set only where the environment is silent,
a sampler that leaves start-up work out, and who is sending."""

from __future__ import annotations

import re

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.util.http import parse_excluded_urls

from otel_sidecar.instrumentation import resource, settings
from otel_sidecar.instrumentation.sampler import RequestRootsSampler
from tests.sidecar import ROOT


class TestEnvironment:
    def test_defaults_fill_only_what_is_unset(self) -> None:
        environ = {"OTEL_METRICS_EXPORTER": "none", "OTEL_TRACES_SAMPLER": ""}
        settings.apply_otel_defaults(environ)
        assert environ["OTEL_METRICS_EXPORTER"] == "none"  # the user's choice stays
        assert environ["OTEL_TRACES_SAMPLER"] == "otel_sidecar"  # an empty NAME= is unset
        fresh: dict[str, str] = {}
        settings.apply_otel_defaults(fresh)
        assert fresh["OTEL_METRICS_EXPORTER"] == "otlp"
        assert fresh["OTEL_LOGS_EXPORTER"] == "otlp"
        assert environ["OTEL_TRACES_EXPORTER"] == "otlp"
        assert environ["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4317"
        assert environ["OTEL_TRACES_SAMPLER"] == "otel_sidecar"

    def test_http_protobuf_goes_to_the_http_port(self) -> None:
        environ = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
        settings.apply_otel_defaults(environ)
        assert environ["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"

    @pytest.mark.parametrize(
        ("path", "excluded"),
        [
            ("/health", True), ("/health/ready", True), ("/health/live", True),
            ("/metrics", True), ("/favicon.ico", True), ("/health?full=1", True),
            ("/api/health-tips", False), ("/healthy", False), ("/api/metrics/daily", False),
            ("/", False),
        ],
    )  # fmt: skip
    def test_probes_and_scrapes_are_not_traced(self, path: str, excluded: bool) -> None:
        urls = parse_excluded_urls(settings.EXCLUDED_URLS)  # as the instrumentations read it
        assert urls.url_disabled(f"http://10.0.0.7:8000{path}") is excluded

    def test_an_unknown_level_falls_back_to_the_default(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        monkeypatch.setenv("OTEL_SIDECAR_APP_LOG_LEVEL", "loud")
        assert settings.level("OTEL_SIDECAR_APP_LOG_LEVEL") == 20
        assert "OTEL_SIDECAR_APP_LOG_LEVEL='loud' is not a log level" in caplog.text

    def test_the_readme_lists_every_default(self) -> None:
        readme = (ROOT / "README.md").read_text()
        rows = dict(re.findall(r"^\| `(OTEL_[A-Z_]+)` \| `([^`]*)` \|", readme, re.MULTILINE))
        for setting in (*settings.OTEL_DEFAULTS, *settings.SIDECAR_SETTINGS):
            assert rows.get(setting.name) == setting.default, setting.name


class TestSampler:
    sampler = RequestRootsSampler()

    def decide(self, kind: SpanKind, parent: Context | None = None) -> Decision:
        return self.sampler.should_sample(parent, 0x1234, "span", kind).decision

    def test_requests_and_jobs_are_recorded(self) -> None:
        assert self.decide(SpanKind.SERVER) is Decision.RECORD_AND_SAMPLE
        assert self.decide(SpanKind.CONSUMER) is Decision.RECORD_AND_SAMPLE
        assert self.decide(SpanKind.INTERNAL) is Decision.RECORD_AND_SAMPLE

    def test_a_query_outside_any_request_is_not(self) -> None:
        assert self.decide(SpanKind.CLIENT) is Decision.DROP

    def test_a_query_inside_a_request_follows_it(self) -> None:
        for flags, expected in ((1, Decision.RECORD_AND_SAMPLE), (0, Decision.DROP)):
            parent = SpanContext(0x1234, 0x99, is_remote=False, trace_flags=TraceFlags(flags))
            context = set_span_in_context(NonRecordingSpan(parent))
            assert self.decide(SpanKind.CLIENT, context) is expected


class TestResource:
    @pytest.mark.parametrize(
        ("argv", "name"),
        [
            (["/venv/bin/uvicorn", "helloagents.main:app", "--port", "8000"], "helloagents"),
            (["-m", "app:app"], "app"),
            (["/venv/bin/gunicorn", "-k", "uvicorn_worker.UvicornWorker", "shop.asgi:create()"],
             "shop"),
            (["/venv/bin/gunicorn", "--bind", "localhost:8000", "api:app"], "api"),
            (["worker.py"], "worker"),
            (["/venv/bin/celery", "worker"], ""),
        ],
    )  # fmt: skip
    def test_the_service_is_named_after_the_app(self, argv: list[str], name: str) -> None:
        assert resource.app_module(argv) == name

    def test_the_environment_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout")
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging")
        monkeypatch.setenv("SENTRY_ENVIRONMENT", "production")
        monkeypatch.setenv("SENTRY_RELEASE", "shop@2.0.1")
        found = resource.default_attributes(["uvicorn", "shop.main:app"])
        assert "service.name" not in found and "deployment.environment.name" not in found
        assert found["service.version"] == "shop@2.0.1"
        assert found["process.runtime.name"] == "cpython" and found["host.name"]
        assert found["os.type"] == "linux"

    def test_the_resource_is_hashed_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # The OTLP encoders hash the resource for every span and log record they encode.
        made = Resource.create({"service.name": "shop", "host.name": "pod-1"})
        expected = hash(made)
        resource.hash_once(made)
        calls: list[Resource] = []
        monkeypatch.setattr(Resource, "__hash__", lambda self: calls.append(self) or expected)
        assert hash(made) == hash(made) == expected
        assert len(calls) == 1
        assert made == Resource.create({"service.name": "shop", "host.name": "pod-1"})
        assert made.attributes["host.name"] == "pod-1"

"""The sidecar's configuration: collector-shaped YAML → validated, frozen dataclasses.

Loading fails fast, naming the YAML path (``processors.batch.timeout: ...``): unknown keys,
wrong types, values out of range, pipelines naming components that are not configured.
``${env:VAR}`` and ``${env:VAR:-default}`` are expanded in every string first.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from collector import components
from collector.component import Kind
from collector.settings import ConfigError, Duration, build, expand_env, setting
from collector.signals import Signal

# `run` without --config: the OTLP receivers on localhost; Sentry when SENTRY_DSN is set, and
# always a local file.
DEFAULT_YAML = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "${env:OTEL_SIDECAR_GRPC_ENDPOINT:-127.0.0.1:4317}"}
      http: {endpoint: "${env:OTEL_SIDECAR_HTTP_ENDPOINT:-127.0.0.1:4318}"}
processors:
  memory_limiter: {limit_mib: "${env:OTEL_SIDECAR_MEMORY_LIMIT_MIB:-256}"}
  slow_spans: {}
  key_metrics: {}
  sampler: {rate: "${env:SENTRY_TRACES_SAMPLE_RATE:-1.0}"}
  scrubber: {}
  batch: {}
exporters:
  sentry:
    dsn: "${env:SENTRY_DSN:-}"
    environment: "${env:SENTRY_ENVIRONMENT:-production}"
    release: "${env:SENTRY_RELEASE:-}"
  file: {path: "${env:OTEL_SIDECAR_FILE_PATH:-./sidecar-out/telemetry.jsonl}"}
extensions:
  health: {endpoint: "${env:OTEL_SIDECAR_HEALTH_ENDPOINT:-127.0.0.1:13133}"}
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, slow_spans, key_metrics, sampler, scrubber, batch]
      exporters: [sentry, file]
    logs:
      receivers: [otlp]
      processors: [memory_limiter, scrubber, batch]
      exporters: [sentry, file]
    metrics:
      receivers: [otlp]
      processors: [memory_limiter, scrubber, batch]
      exporters: [file]
"""

_PIPELINE_NAME = re.compile(r"(traces|logs|metrics)(/[A-Za-z0-9_.-]+)?")


@dataclass(frozen=True)
class PipelineSettings:
    receivers: tuple[str, ...]
    exporters: tuple[str, ...]
    processors: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServiceSettings:
    pipelines: dict[str, PipelineSettings]
    # SIGTERM to exit: time to stop receivers and flush batches and exporters.
    grace_period: Duration = setting(Duration(20), minimum=0, maximum=3600)
    log_level: str = setting("info", choices=("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class Config:
    receivers: dict[str, Any]
    processors: dict[str, Any]
    exporters: dict[str, Any]
    extensions: dict[str, Any]
    service: ServiceSettings

    def pipelines(self) -> dict[str, tuple[Signal, PipelineSettings]]:
        return {
            name: (Signal(name.partition("/")[0]), pipeline)
            for name, pipeline in self.service.pipelines.items()
        }


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config file: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
    return parse_yaml(text, environ)


def default(environ: Mapping[str, str] | None = None) -> Config:
    """The configuration used when no file is given, shaped by environment variables."""
    return parse_yaml(DEFAULT_YAML, environ)


def parse_yaml(text: str, environ: Mapping[str, str] | None = None) -> Config:
    try:
        return parse(yaml.safe_load(text), environ)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"<yaml>: not valid YAML{where}") from None
    except RecursionError:  # thousands of levels, or an alias inside itself (&a [*a])
        raise ConfigError("<yaml>: nested too deeply") from None


def parse(raw: Any, environ: Mapping[str, str] | None = None) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError("<root>: expected a mapping with receivers, exporters and service")
    unknown = sorted(set(raw) - {*components.SECTION_NAMES, "service"})
    if unknown:
        raise ConfigError(
            f"{unknown[0]}: unknown key (expected one of: "
            f"{', '.join(sorted([*components.SECTION_NAMES, 'service']))})"
        )
    raw = expand_env(raw, environ=environ)
    sections = {
        section: _components(section, raw.get(section), kinds)
        for section, kinds in components.sections().items()
    }
    if "service" not in raw:
        raise ConfigError("service: required (it lists the pipelines)")
    service = build(ServiceSettings, raw["service"], "service")
    _resolve_storage(sections["exporters"], sections["extensions"])
    config = Config(service=service, **sections)
    _check_pipelines(config)
    return config


def _resolve_storage(exporters: dict[str, Any], extensions: dict[str, Any]) -> None:
    """An exporter's ``sending_queue.storage`` names a file_storage extension: its queue is
    kept in that extension's directory."""
    for eid, settings in exporters.items():
        queue = getattr(settings, "sending_queue", None)
        if queue is None or queue.storage == "memory":
            continue
        storage = extensions.get(queue.storage)
        if storage is None or components.type_of(queue.storage) != "file_storage":
            raise ConfigError(
                f"exporters.{eid}.sending_queue.storage: {queue.storage!r} is not a configured "
                "file_storage extension (or memory)"
            )
        queue = dataclasses.replace(queue, directory=storage.directory)
        exporters[eid] = dataclasses.replace(settings, sending_queue=queue)


def _components(section: str, raw: Any, kinds: Mapping[str, Kind]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{section}: expected a mapping of component ids")
    built = {}
    for component_id, settings in raw.items():
        path = f"{section}.{component_id}"
        kind = kinds.get(components.type_of(str(component_id)))
        if kind is None:
            known = ", ".join(sorted(kinds)) or "none: is otel-sidecar installed? (pip install .)"
            raise ConfigError(f"{path}: unknown {section[:-1]} type (known: {known})")
        built[str(component_id)] = value = build(kind.settings, settings, path)
        check = getattr(value, "check", None)
        if check is not None:
            check(path)
    return built


def _check_pipelines(config: Config) -> None:
    pipelines = config.service.pipelines
    if not pipelines:
        raise ConfigError("service.pipelines: define at least one (traces, logs or metrics)")
    for name, pipeline in pipelines.items():
        path = f"service.pipelines.{name}"
        if not _PIPELINE_NAME.fullmatch(name):
            raise ConfigError(
                f"{path}: pipeline names are traces, logs or metrics, or one of them and /<x>"
            )
        signal = Signal(name.partition("/")[0])
        for role in ("receivers", "processors", "exporters"):
            ids: tuple[str, ...] = getattr(pipeline, role)
            if not ids and role != "processors":
                raise ConfigError(f"{path}.{role}: list at least one")
            configured = getattr(config, role)
            for index, component_id in enumerate(ids):
                where = f"{path}.{role}[{index}]"
                if component_id not in configured:
                    raise ConfigError(f"{where}: {role[:-1]} {component_id!r} is not configured")
                if ids.index(component_id) != index:
                    raise ConfigError(f"{where}: {component_id!r} is listed twice")
                kind = components.sections()[role][components.type_of(component_id)]
                if signal not in kind.signals:
                    raise ConfigError(f"{where}: {component_id!r} does not handle {signal}")

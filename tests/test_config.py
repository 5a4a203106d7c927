"""Config loading: each validation rule names the YAML path; env expansion; `validate`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from collector import config
from collector.settings import ConfigError
from tests.sidecar import ROOT

VALID = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: 127.0.0.1:4317}
processors:
  batch: {timeout: 200ms, send_batch_size: 512}
exporters:
  file: {path: /tmp/out.jsonl}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [file]}
"""


def error_of(text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        config.parse_yaml(text, environ or {})
    return str(caught.value)


def test_valid_config_loads_typed_values() -> None:
    loaded = config.parse_yaml(VALID, {})
    batch = loaded.processors["batch"]
    assert batch.timeout == pytest.approx(0.2)
    assert batch.send_batch_size == 512
    assert loaded.receivers["otlp"].protocols.http is None
    assert loaded.receivers["otlp"].protocols.grpc.endpoint.port == 4317
    assert loaded.service.grace_period == 20


def test_reference_config_is_valid() -> None:
    config.load(ROOT / "otel-config.yaml", {})


def test_default_config_follows_environment() -> None:
    loaded = config.default({"OTEL_SIDECAR_FILE_PATH": "/data/x.jsonl"})
    assert loaded.exporters["file"].path == "/data/x.jsonl"
    assert loaded.receivers["otlp"].protocols.grpc.endpoint == "127.0.0.1:4317"
    assert set(loaded.service.pipelines) == {"traces", "logs", "metrics"}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("timeout: 200ms", "timeout: soon"), "processors.batch.timeout: expected a duration"),
        (("timeout: 200ms", "timeout: 2h"), "processors.batch.timeout: must be at most 60"),
        (
            ("send_batch_size: 512", "send_batch_size: 0"),
            "processors.batch.send_batch_size: must be at least 1",
        ),
        (
            ("send_batch_size: 512", "send_batch_size: many"),
            "processors.batch.send_batch_size: expected an integer",
        ),
        (
            ("send_batch_size: 512", "send_batch_size: true"),
            "processors.batch.send_batch_size: expected an integer",
        ),
        (
            ("send_batch_size: 512", "send_batch_sise: 5"),
            "processors.batch.send_batch_sise: unknown key",
        ),
        (
            ("endpoint: 127.0.0.1:4317", "endpoint: nowhere"),
            "receivers.otlp.protocols.grpc.endpoint: expected host:port",
        ),
        (
            ("endpoint: 127.0.0.1:4317", "endpoint: 127.0.0.1:99999"),
            "receivers.otlp.protocols.grpc.endpoint: expected host:port",
        ),
        (("  batch: {", "  batchy: {"), "processors.batchy: unknown processor type"),
        (
            ("processors: [batch]", "processors: [batch2]"),
            "service.pipelines.traces.processors[0]: processor 'batch2' is not configured",
        ),
        (
            ("exporters: [file]", "exporters: []"),
            "service.pipelines.traces.exporters: list at least",
        ),
        (
            ("exporters: [file]", "exporters: [file, file]"),
            "service.pipelines.traces.exporters[1]: 'file' is listed twice",
        ),
        (("traces: {", "profiles: {"), "service.pipelines.profiles: pipeline names are"),
        (
            ("grpc: {endpoint: 127.0.0.1:4317}", "{}"),
            "receivers.otlp.protocols: enable at least one",
        ),
        (
            ("file: {path: /tmp/out.jsonl}", "file: {path: 7, mode: x}"),
            "exporters.file.mode: unknown",
        ),
        (("file: {path: /tmp/out.jsonl}", "file: [a]"), "exporters.file: expected a mapping"),
    ],
)
def test_validation_names_the_yaml_path(change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in VALID
    assert error_of(VALID.replace(old, new, 1)).startswith(expected)


def test_unknown_top_level_key() -> None:
    assert error_of(VALID + "extra: 1\n").startswith("extra: unknown key")


def test_missing_service() -> None:
    assert error_of(VALID.split("service:")[0]).startswith("service: required")


def test_not_yaml() -> None:
    assert "not valid YAML at line" in error_of("receivers: [\n")


def test_env_expansion_with_and_without_default() -> None:
    text = VALID.replace("send_batch_size: 512", 'send_batch_size: "${env:BATCH_SIZE:-64}"')
    text = text.replace("/tmp/out.jsonl", '"${env:OUT_DIR}/out.jsonl"')
    loaded = config.parse_yaml(text, {"OUT_DIR": "/var/data"})
    assert loaded.processors["batch"].send_batch_size == 64
    assert loaded.exporters["file"].path == "/var/data/out.jsonl"
    loaded = config.parse_yaml(text, {"OUT_DIR": "/x", "BATCH_SIZE": "8"})
    assert loaded.processors["batch"].send_batch_size == 8


def test_env_unset_without_default_is_an_error() -> None:
    text = VALID.replace("/tmp/out.jsonl", '"${env:OUT_DIR}/out.jsonl"')
    assert error_of(text) == (
        "exporters.file.path: environment variable OUT_DIR is not set "
        "(write ${env:OUT_DIR:-} to allow an empty default)"
    )


def test_env_value_is_validated_like_yaml() -> None:
    text = VALID.replace("send_batch_size: 512", 'send_batch_size: "${env:BATCH_SIZE}"')
    assert error_of(text, {"BATCH_SIZE": "-3"}).startswith(
        "processors.batch.send_batch_size: must be at least 1"
    )


def run_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", "validate", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_validate_command_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(VALID)
    result = run_validate(good)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID.replace("timeout: 200ms", "timeout: -1s"))
    result = run_validate(bad)
    assert result.returncode == 2
    assert "processors.batch.timeout:" in result.stderr

    result = run_validate(tmp_path / "missing.yaml")
    assert result.returncode == 2
    assert "cannot read config file" in result.stderr


def test_run_with_invalid_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID.replace("send_batch_size: 512", "send_batch_size: 0"))
    result = subprocess.run(
        [sys.executable, "-m", "collector", "run", "--config", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "processors.batch.send_batch_size: must be at least 1" in result.stderr


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        ("1.5", "processors.sampler.rate: must be at most 1, got 1.5"),
        ("-0.1", "processors.sampler.rate: must be at least 0, got -0.1"),
        ("ten percent", "processors.sampler.rate: expected a number, got 'ten percent'"),
    ],
)
def test_sample_rate_from_environment_is_validated(rate: str, expected: str) -> None:
    """SENTRY_TRACES_SAMPLE_RATE outside [0, 1] stops the start, naming the key."""
    assert error_of(config.DEFAULT_YAML, {"SENTRY_TRACES_SAMPLE_RATE": rate}) == expected


def test_default_sample_rate_comes_from_environment() -> None:
    loaded = config.default({"SENTRY_TRACES_SAMPLE_RATE": "0.1"})
    assert loaded.processors["sampler"].rate == 0.1
    assert config.default({}).processors["sampler"].rate == 1.0


def test_trace_only_processor_in_logs_pipeline_is_refused() -> None:
    text = VALID.replace("processors:\n", "processors:\n  sampler: {rate: 0.5}\n").replace(
        "traces: {receivers: [otlp], processors: [batch]",
        "logs: {receivers: [otlp], processors: [sampler, batch]",
    )
    assert error_of(text) == (
        "service.pipelines.logs.processors[0]: 'sampler' does not handle logs"
    )


def test_the_sidecar_process_never_loads_pretty_traceback_libraries(tmp_path: Path) -> None:
    """structlog imports rich or better_exceptions when installed (15 MiB, 0.1 s of start-up)
    for tracebacks the sidecar never prints: with both installed (stand-ins here), nothing
    the CLI and its components import loads them; a plugin that imports rich still can."""
    for name in ("rich", "better_exceptions"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("LOADED = True\n")
    probe = ("import sys, collector.cli, collector.components as c; "
             "[kind.factory for kinds in c.sections().values() for kind in kinds.values()]; "
             "import structlog.dev; "
             "print([m for m in ('rich', 'better_exceptions') if sys.modules.get(m)]); "
             "import rich; print(rich.LOADED)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})  # fmt: skip
    assert result.stdout.split() == ["[]", "True"]


def test_run_collects_cycles_less_often_than_python_by_default(tmp_path: Path) -> None:
    """`run` raises the garbage collector's young-generation threshold before it serves (the
    Sentry path's short-lived dicts made CPython's default cost 6 % of the CPU): checked at
    the moment the event loop would start, through the real entry point."""
    path = tmp_path / "config.yaml"
    path.write_text(VALID)
    tuned = "print(gc.get_threshold()[0])"
    probe = ("import asyncio, gc, sys, collector.cli as cli; "
             f"asyncio.run = lambda main: (main.close(), {tuned})[1] or 0; "
             f"{tuned}; "
             f"cli.main(['run', '--config', {str(path)!r}])")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)  # fmt: skip
    assert result.stdout.split() == ["700", "10000"]


@pytest.mark.parametrize(
    "value", ["[" * 5000 + "]" * 5000, "&loop [*loop]"], ids=["deep", "alias-in-itself"]
)
def test_endless_nesting_is_a_config_error_not_a_crash(value: str) -> None:
    """Thousands of levels make the YAML parser recurse past Python's limit, and an alias
    inside its own anchor makes the walk over what it read endless: the answer is a
    ConfigError, which `run` and a reload report (a reload then keeps the running config)."""
    text = VALID.replace("send_batch_size: 512", f"send_batch_size: {value}")
    assert error_of(text) == "<yaml>: nested too deeply"


def test_a_config_file_that_is_not_utf8_says_so(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(VALID.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"config.yaml: not UTF-8 text \(byte \d+\)"):
        config.load(path, {})

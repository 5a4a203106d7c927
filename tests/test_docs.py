"""The README's configuration example is a config the sidecar accepts."""

from __future__ import annotations

import re

from collector import config
from tests.sidecar import ROOT


def test_readme_config_example_is_valid() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert example is not None
    loaded = config.parse_yaml(example.group(1), {})
    assert loaded.processors["scrubber"].drop_keys == ("x-internal-token",)


def test_the_shipped_reference_config_is_valid() -> None:
    """otel-config.yaml, the config the README points users at, is accepted as it ships."""
    loaded = config.load(ROOT / "otel-config.yaml", {})
    assert set(loaded.exporters) == {"sentry", "otlp_http", "file"}
    assert set(loaded.extensions["health"].checks) == {"database"}
    assert set(loaded.service.pipelines) == {"traces", "logs", "metrics"}
    assert loaded.service.pipelines["metrics"].receivers == ("otlp", "key_metrics")

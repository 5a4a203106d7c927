"""The README's configuration example is a config the sidecar accepts."""

from __future__ import annotations

import re

import pytest

from collector import config
from tests.sidecar import ROOT


def test_readme_config_example_is_valid() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert example is not None
    loaded = config.parse_yaml(example.group(1), {})
    assert loaded.processors["scrubber"].drop_keys == ("x-internal-token",)


def test_design_reference_config_is_valid() -> None:
    """The config in ../shared/DESIGN.md, the contract deploy files rely on, is accepted."""
    design = ROOT.parent / "shared" / "DESIGN.md"
    if not design.exists():
        pytest.skip("shared/DESIGN.md is not beside this checkout")
    block = re.search(r"\*\*Config file\*\*.*?```yaml\n(.*?)```", design.read_text(), re.DOTALL)
    assert block is not None
    loaded = config.parse_yaml(block.group(1), {})
    assert set(loaded.exporters) == {"sentry", "otlp_http", "file"}
    assert set(loaded.extensions["health"].checks) == {"database", "ai_service", "sandbox_pool"}

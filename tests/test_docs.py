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

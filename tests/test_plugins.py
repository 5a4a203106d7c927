"""Component types come from entry points: the built-in ones register exactly as a third
party's would, and a third party's exporter, in its own distribution (an entry point and a
module, nothing else), loads from config with no change to the core."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collector import components
from collector.component import Kind
from tests.sidecar import Sidecar
from tests.test_receivers import post, trace_request

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A third party's exporter: appends each span's name to a file; with block_s, first holds the
loop that long per batch, as a careless exporter's blocking call would."""

import time
from dataclasses import dataclass

from collector.component import Kind
from collector.signals import Signal


@dataclass(frozen=True)
class Settings:
    path: str
    block_s: float = 0.0


class SpanNames:
    accepts_unsampled_errors = False
    durable = False

    def __init__(self, name, settings):
        self.name = name
        self.path = settings.path
        self.block_s = settings.block_s

    async def start(self):
        pass

    async def shutdown(self):
        pass

    def admit(self):
        pass

    def status(self):
        return "healthy", "writing span names"

    async def consume(self, batch):
        time.sleep(self.block_s)
        with open(self.path, "a") as out:
            for resource_spans in batch.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    out.writelines(span.name + "\\n" for span in scope_spans.spans)


KIND = Kind(Settings, SpanNames, frozenset({Signal.TRACES}))
'''

CONFIG = """
receivers:
  otlp:
    protocols:
      http: {endpoint: "127.0.0.1:0"}
exporters:
  span_names: {path: "NAMES"}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [span_names]}
"""


def install_plugin(site: Path) -> dict[str, str]:
    """A distribution as pip leaves it on a path: the module and its dist-info."""
    site.mkdir()
    (site / "span_names_exporter.py").write_text(PLUGIN)
    info = site / "span_names_exporter-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: span-names-exporter\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[otel_sidecar.exporters]\nspan_names = span_names_exporter:KIND\n"
    )
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path}


def test_a_third_party_exporter_loads_from_config(tmp_path: Path) -> None:
    env = install_plugin(tmp_path / "site")
    names = tmp_path / "names.txt"
    with Sidecar(tmp_path, CONFIG.replace("NAMES", str(names)), env) as sidecar:
        request = trace_request(spans=2, name="through a plugin")
        assert post(sidecar, "/v1/traces", request.SerializeToString())[0] == 200
        deadline = time.monotonic() + 10
        while not names.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert names.read_text().splitlines() == ["through a plugin"] * 2


def test_the_components_command_lists_what_is_installed(tmp_path: Path) -> None:
    env = {**os.environ, **install_plugin(tmp_path / "site")}
    listed = subprocess.run(
        [sys.executable, "-m", "collector", "components"],
        capture_output=True, text=True, env=env, cwd=ROOT, check=True,
    ).stdout  # fmt: skip
    exporters = listed.split("exporters:")[1].split("extensions:")[0]
    for name in ("sentry", "otlp_http", "otlp_grpc", "file", "span_names"):
        assert f"- name: {name}\n" in exporters
    assert "distribution: span-names-exporter 1.0" in exporters
    assert "signals: [traces]" in exporters.split("- name: span_names")[1]


def test_a_broken_plugin_is_a_clear_config_error(tmp_path: Path) -> None:
    env = {**os.environ, **install_plugin(tmp_path / "site")}
    (tmp_path / "site" / "span_names_exporter.py").write_text("import not_installed_anywhere\n")
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.replace("NAMES", str(tmp_path / "names.txt")))
    checked = subprocess.run(
        [sys.executable, "-m", "collector", "validate", "--config", str(config)],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    assert checked.returncode == 2
    assert "exporters type 'span_names' cannot be loaded from span_names_exporter:KIND" in (
        checked.stderr
    )
    assert "ModuleNotFoundError" in checked.stderr


def test_every_built_in_type_is_registered_as_a_kind() -> None:
    for section, kinds in components.sections().items():
        assert kinds, f"no {section} installed"
        for name in kinds:
            assert isinstance(kinds[name], Kind), (section, name)


def test_the_core_imports_no_component() -> None:
    """Nothing under collector/ but the components themselves imports an exporter, and the
    registry and the pipeline import no component module at all."""
    core = [ROOT / "collector" / "components.py", ROOT / "collector" / "pipeline.py"]
    for path in [*core, *(ROOT / "collector").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("exporters"), f"{path.name}: {node.module}"
                if path in core:
                    assert not node.module.startswith(
                        ("collector.receivers", "collector.processors", "collector.health")
                    ), f"{path.name}: {node.module}"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules a file imports, anywhere in it (in functions too); ``from package
    import submodule`` counts as the submodule, not the package."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            found |= submodules or {node.module}
    return found & modules


def test_no_import_circle() -> None:
    paths = {}
    for path in [*ROOT.glob("collector/**/*.py"), *ROOT.glob("exporters/**/*.py")]:
        parts = path.relative_to(ROOT).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}

    def circle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], {start}
        while stack:
            module, trail = stack.pop()
            for imported in graph[module]:
                if imported == start:
                    return trail
                if imported not in seen:
                    seen.add(imported)
                    stack.append((imported, [*trail, imported]))
        return None

    circles = [" -> ".join(c) for name in sorted(graph) if (c := circle_from(name))]
    assert not circles, circles


def test_an_exporter_missing_a_member_is_refused_at_start(tmp_path: Path) -> None:
    env = install_plugin(tmp_path / "site")
    module = tmp_path / "site" / "span_names_exporter.py"
    module.write_text(module.read_text().replace("    def admit(self):\n        pass\n", ""))
    sidecar = Sidecar(tmp_path, CONFIG.replace("NAMES", str(tmp_path / "names.txt")), env)
    with pytest.raises(RuntimeError):
        sidecar.start()
    assert sidecar.process is not None and sidecar.process.wait(15) == 1
    (failed,) = sidecar.named("start_failed")
    assert failed["error"].startswith("exporters.span_names: SpanNames is not an exporter")

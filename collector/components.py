"""The registry of component types, from the installed distributions' entry points.

Each type is a :class:`~collector.component.Kind` registered under an entry point in the group
``otel_sidecar.<section>`` (``otel_sidecar.exporters``, ...); the built-in ones register there
exactly as a third party's would, so the core imports no component and adding one needs no
change here. A type is imported when a config first names it.

A component id in the config is ``type`` or ``type/name`` (``batch``, ``batch/small``), as in
the OpenTelemetry Collector.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from importlib.metadata import EntryPoint, entry_points

from collector.component import Kind
from collector.settings import ConfigError

SECTION_NAMES = ("receivers", "processors", "exporters", "extensions")
GROUP = "otel_sidecar.{section}"


class Kinds(Mapping[str, Kind]):
    """One section's installed types by name; each loaded when first asked for."""

    def __init__(self, section: str) -> None:
        self.section = section
        self.entries: dict[str, EntryPoint] = {}
        self._twice: dict[str, list[str]] = {}
        self._loaded: dict[str, Kind] = {}
        for entry in entry_points(group=GROUP.format(section=section)):
            known = self.entries.setdefault(entry.name, entry)
            if known.value != entry.value:  # the same one met twice is not a conflict
                self._twice.setdefault(entry.name, [known.value]).append(entry.value)

    def __getitem__(self, name: str) -> Kind:
        if name not in self._loaded:
            self._loaded[name] = self._load(self.entries[name])
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    def _load(self, entry: EntryPoint) -> Kind:
        where = f"{self.section} type {entry.name!r}"
        if entry.name in self._twice:
            raise ConfigError(f"{where} is installed twice: {', '.join(self._twice[entry.name])}")
        try:
            kind = entry.load()
        except Exception as error:  # a broken plugin is named, never a crash
            raise ConfigError(
                f"{where} cannot be loaded from {entry.value}: {type(error).__name__}: {error}"
            ) from None
        if not isinstance(kind, Kind):
            raise ConfigError(f"{where}: {entry.value} is not a collector.component.Kind")
        return kind


@functools.cache
def sections() -> dict[str, Kinds]:
    """Every section's installed types (entry points are read once per process)."""
    return {section: Kinds(section) for section in SECTION_NAMES}


def type_of(component_id: str) -> str:
    return component_id.partition("/")[0]

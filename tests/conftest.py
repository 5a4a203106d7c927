from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.bugsink import Bugsink
from tests.sidecar import BASIC_CONFIG, Sidecar


@pytest.fixture(scope="session")
def bugsink_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bugsink]:
    """One Bugsink (a real Sentry-compatible receiver) for the whole test session;
    ``bugsink_server.dsn`` is its project's DSN. Tests that need an empty issue list of their
    own call ``bugsink_server.create_project(name)``."""
    server = Bugsink(tmp_path_factory.mktemp("bugsink")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    """A running sidecar with the OTLP receivers on free ports and the file exporter."""
    with Sidecar(tmp_path, BASIC_CONFIG) as running:
        yield running


@pytest.fixture(scope="module")
def shared_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    """One sidecar for a whole module of request/answer tests."""
    with Sidecar(tmp_path_factory.mktemp("sidecar"), BASIC_CONFIG) as running:
        yield running

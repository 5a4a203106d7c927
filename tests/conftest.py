from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bugsink import bugsink_server
from tests.sidecar import BASIC_CONFIG, Sidecar

__all__ = ["bugsink_server"]  # the session's Bugsink, a real Sentry-compatible receiver


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

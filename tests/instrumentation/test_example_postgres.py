"""The example on PostgreSQL (``DATABASE_URL``, psycopg 3), zero-code: its queries become the
request's database spans, named for PostgreSQL, their literals kept out."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from examples import services
from tests.postgres import postgres_server
from tests.sidecar import BASIC_CONFIG, Sidecar, attributes, spans_in

pytestmark = pytest.mark.slow


def test_queries_on_postgres_are_spans_of_their_request(tmp_path: Path) -> None:
    with postgres_server() as database_url, Sidecar(tmp_path, BASIC_CONFIG) as sidecar:
        stub, ai_url = services.ai_stub()
        try:
            endpoint = f"http://{sidecar.endpoints['otlp_grpc']}"
            env = services.app_env(tmp_path / "unused.db", ai_url, endpoint,
                                   {"DATABASE_URL": database_url})  # fmt: skip
            app, base_url = services.start_app(env)
            try:
                answer = httpx.get(f"{base_url}/api/lessons/2", headers={"X-User-Id": "4"})
                assert answer.status_code == 200, answer.text
            finally:
                app.stop()
        finally:
            stub.stop()
        assert sidecar.stop() == 0
    spans = [span for _, span in spans_in(sidecar.lines())]
    (server,) = [s for s in spans if s["name"] == "GET /api/lessons/{lesson_id}"]
    queries = [s for s in spans if s.get("parentSpanId") == server["spanId"]]
    assert len(queries) == 2  # the user, then the lesson; no connect span
    for query in queries:
        found = attributes(query)
        assert found["db.system"] == "postgresql"
        assert found["db.statement"].startswith("SELECT ")
        assert "%(pk_1)s" in found["db.statement"]  # parameters, not values
    names = {s["name"] for s in spans}
    assert not [n for n in names if n.startswith(("CREATE", "INSERT", "connect"))]  # start-up

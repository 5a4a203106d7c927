"""The status page at / on the health port, from a real sidecar after known traffic: the same
counts as /metrics, the guide's numbers against their targets, the slow requests and errors,
and no secret the traffic carried."""

from __future__ import annotations

import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector.status_page import _quantile
from tests.sidecar import Sidecar
from tests.test_key_metrics import SERVER, request, span, traffic
from tests.test_receivers import post

SECRET = "SECRETTOKEN123"
CONFIG = """
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
processors:
  slow_spans: {}
  key_metrics: {}
exporters:
  file: {path: "${OUT}"}
extensions:
  health: {endpoint: "127.0.0.1:0"}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [slow_spans, key_metrics], exporters: [file]}
"""


class Cells(HTMLParser):
    """The page's table rows, as lists of cell texts, and the class of each row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, list[str]]] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append((dict(attrs).get("class") or "", []))
        elif tag in ("td", "th") and self.rows:
            self.rows[-1][1].append("")

    def handle_data(self, data: str) -> None:
        self.text += data
        if self.rows and self.rows[-1][1]:
            self.rows[-1][1][-1] += data


def failing_request() -> bytes:
    failed = span(SERVER, 15, True, http_route="/agents/{id}/run",
                  **{"http.request.header.authorization": f"Bearer {SECRET}",
                     "url.full": f"https://api/agents/1/run?token={SECRET}"})  # fmt: skip
    event = failed.events.add(name="exception")
    event.attributes.add(key="exception.type").value.string_value = "ZeroDivisionError"
    slow = span(SERVER, 1800, http_route="/lessons/{id}", enduser_id=SECRET)
    injected = span(SERVER, 5, True, http_route="/x<script>alert(1)</script>")
    return request("shop", failed, slow, injected).SerializeToString()


def test_the_page_shows_what_metrics_counts_and_no_secret(tmp_path: Path) -> None:
    with Sidecar(tmp_path, CONFIG) as sidecar:
        for body in (traffic("shop").SerializeToString(), failing_request()):
            assert post(sidecar, "/v1/traces", body)[0] == 200
        base = f"http://{sidecar.endpoints['health']}"
        with urllib.request.urlopen(f"{base}/", timeout=10) as answer:
            assert answer.headers["Content-Type"].startswith("text/html")
            page = answer.read().decode()
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
    cells = Cells()
    cells.feed(page)
    rows = {tuple(r[:2]): (kind, r) for kind, r in cells.rows}
    accepted = next(s.value for f in text_string_to_metric_families(metrics) for s in f.samples
                    if s.name == "otelsidecar_receiver_accepted_items_total")  # fmt: skip
    assert rows[("accepted", "otlp_http")][1][3] == f"{accepted:,.0f}" == "18"
    (error_rate,) = [(kind, r) for kind, r in cells.rows if r and r[0] == "Error rate"]
    assert error_rate == ("bad", ["Error rate", "23.08%", "< 1.00%"])  # 3 of 13 requests
    assert [r for _, r in cells.rows if r and r[0] == "ZeroDivisionError"] == [
        ["ZeroDivisionError", "/agents/{id}/run", "1"]]  # fmt: skip
    slow = [r[1] for _, r in cells.rows if len(r) == 4 and r[0] == "slow_request"]
    assert slow[0] == "/lessons/{id}" and "/users/{id}" in slow  # the latest first
    assert "otlp_http" in cells.text and "healthy" in cells.text
    assert SECRET not in page
    assert "<script" not in page and "http" not in page.split("<body>")[0].replace("http-equiv", "")


@pytest.mark.parametrize(
    ("buckets", "expected"),
    [
        (
            {"0.1": 50, "0.5": 100, "+Inf": 100},
            0.1 + 0.4 * 0.9,
        ),  # 95th of 100: 45 % into (0.1, 0.5]
        ({"0.1": 100, "0.5": 100, "+Inf": 100}, 0.095),  # all in the first: from 0
        ({"0.1": 0, "1.0": 0, "+Inf": 10}, 1.0),  # beyond the last edge: its lower bound
        ({"0.1": 0, "+Inf": 0}, None),  # nothing counted
    ],
)
def test_the_quantile_reads_as_prometheus_does(buckets: dict[str, int], expected: float) -> None:
    samples = [({"le": le, "route": "/"}, float(count)) for le, count in buckets.items()]
    assert _quantile(samples, 0.95) == (pytest.approx(expected) if expected else None)

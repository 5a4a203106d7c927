"""The status page at / on the health port, from a real sidecar after known traffic: the same
counts as /metrics, the guide's numbers against their targets, the slow requests and errors,
and no secret the traffic carried."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def health(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A sidecar after known traffic: its health port's base URL."""
    with Sidecar(tmp_path_factory.mktemp("status"), CONFIG) as sidecar:
        for body in (traffic("shop").SerializeToString(), failing_request()):
            assert post(sidecar, "/v1/traces", body)[0] == 200
        yield f"http://{sidecar.endpoints['health']}"


def fetch(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        if url.endswith("/"):  # the page loads nothing from anywhere and may not be framed
            assert answer.headers["Content-Security-Policy"].startswith("default-src 'none'")
            assert answer.headers["X-Frame-Options"] == "DENY"
        return answer.headers["Content-Type"], answer.read().decode()


def accepted(base: str) -> float:
    metrics = fetch(f"{base}/metrics")[1]
    return next(s.value for f in text_string_to_metric_families(metrics) for s in f.samples
                if s.name == "otelsidecar_receiver_accepted_items_total")  # fmt: skip


def check_page(page: str, base: str) -> None:
    """What the page must show after the traffic, whoever rendered it."""
    cells = Cells()
    cells.feed(page)
    rows = {tuple(r[:2]): (kind, r) for kind, r in cells.rows}
    assert rows[("accepted", "otlp_http")][1][3] == f"{accepted(base):,.0f}" == "18"
    (error_rate,) = [(kind, r) for kind, r in cells.rows if r and r[0] == "Error rate"]
    assert error_rate == ("bad", ["Error rate", "23.08%", "< 1.00%"])  # 3 of 13 requests
    assert [r for _, r in cells.rows if r and r[0] == "ZeroDivisionError"] == [
        ["ZeroDivisionError", "/agents/{id}/run", "1"]]  # fmt: skip
    slow = [r[1] for _, r in cells.rows if len(r) == 4 and r[0] == "slow_request"]
    assert slow[0] == "/lessons/{id}" and "/users/{id}" in slow  # the latest first
    assert "otlp_http" in cells.text and "healthy" in cells.text
    assert SECRET not in cells.text


def test_the_page_shows_what_metrics_counts_and_no_secret(health: str) -> None:
    content_type, page = fetch(f"{health}/")
    assert content_type.startswith("text/html")
    check_page(page, health)
    assert SECRET not in page and "<script" not in page  # the injected route came escaped
    assert "http" not in page.split("<body>")[0].replace("http-equiv", "")  # no external asset


def test_the_page_in_a_real_browser(health: str, tmp_path: Path) -> None:
    """Debian's chromium, headless: the page as a person sees it, and a screenshot of it."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is needed (Debian: apt-get install chromium; .ci/run does)")
    browse = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
              f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400"]  # fmt: skip
    dom = subprocess.run([*browse, "--dump-dom", f"{health}/"], capture_output=True, text=True,
                         timeout=120, check=True).stdout  # fmt: skip
    check_page(dom, health)
    shot = tmp_path / "status-page.png"
    subprocess.run([*browse, f"--screenshot={shot}", f"{health}/"], capture_output=True,
                   timeout=120, check=True)  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


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

"""The status page at ``/`` on the health port: one self-contained HTML page (no external assets,
it works offline and refreshes itself every 10 s) for a person to look at.

It shows the health JSON's verdict and components, what went through (items accepted, sent,
dropped by reason, requests refused by reason), the sending queues, the monitoring guide's
key numbers against its targets (from the ``key_metrics`` processor's counts), the last slow
requests and the most frequent errors. Everything comes from what ``/health`` and
``/metrics`` already show, plus the slow-request lines the sidecar logged (scrubbed): nothing a
``/health`` client may not see. Every value is HTML-escaped.
"""

from __future__ import annotations

from collections import defaultdict
from html import escape
from typing import Any

from prometheus_client import CollectorRegistry

from collector.telemetry import ERRORS, RECENT_SLOW

# The monitoring guide's targets: (what, how it is read, the bound, higher is worse).
TARGETS = (
    ("Error rate", "error_rate", 0.01, "{:.2%}"),
    ("Response time P95", "p95_s", 0.5, "{:.0f} ms"),
    ("Database query P95", "db_p95_s", 0.1, "{:.0f} ms"),
)
_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}
h2{font-size:1.1em;margin-top:1.6em}table{border-collapse:collapse;margin:.4em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f4f4f4}
.ok{background:#d9f2d9}.bad{background:#f8d0d0}.unknown{background:#eee}td.n{text-align:right}
"""


def render(report: dict[str, Any], registry: CollectorRegistry) -> str:
    samples = _samples(registry)
    status = report.get("status", "unknown")
    components = [[name, c.get("status", ""), c.get("message", "")]
                  for name, c in sorted(report.get("components", {}).items())]  # fmt: skip
    slow = [[s["event"], s["where"], s["duration_ms"], s["trace_id"]]
            for s in reversed(RECENT_SLOW)]  # fmt: skip
    errors = [[kind, route, count] for (kind, route), count in ERRORS.most_common(10)]
    sections = [
        f"<h1>otel-sidecar {escape(str(report.get('version', '')))}: "
        f"<span class='{'ok' if status == 'healthy' else 'bad'}'>{escape(status)}</span></h1>",
        f"<p>{escape(str(report.get('timestamp', '')))} · refreshes every 10 s</p>",
        _table("Components", ["component", "status", "message"], components),
        _key_numbers(samples),
        _table("Items", ["what", "where", "signal or reason", "count"], _traffic(samples)),
        _table("Sending queues", ["exporter", "queued", "capacity"], _queues(samples)),
        _table("Last slow requests", ["event", "route or database", "duration ms", "trace"], slow),
        _table("Top errors", ["type", "route", "count"], errors),
    ]
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta http-equiv='refresh' content='10'><title>otel-sidecar status</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(sections)}</body></html>"
    )


Samples = dict[str, list[tuple[dict[str, str], float]]]


def _samples(registry: CollectorRegistry) -> Samples:
    found: Samples = defaultdict(list)
    for family in registry.collect():
        for sample in family.samples:
            found[sample.name].append((sample.labels, sample.value))
    return found


def _traffic(samples: Samples) -> list[list[Any]]:
    rows: list[list[Any]] = []
    kinds = (
        ("accepted", "otelsidecar_receiver_accepted_items_total", "receiver", "signal"),
        ("sent", "otelsidecar_exporter_sent_items_total", "exporter", "signal"),
        ("dropped", "otelsidecar_dropped_items_total", "component", "reason"),
        ("refused (requests)", "otelsidecar_receiver_refused_requests_total", "receiver", "reason"),
    )
    for what, name, where, detail in kinds:
        for labels, value in samples.get(name, []):
            rows.append([what, labels.get(where, ""), labels.get(detail, ""), f"{value:,.0f}"])
    return rows


def _queues(samples: Samples) -> list[list[Any]]:
    sizes = samples.get("otelsidecar_exporter_queue_capacity", [])
    capacity = {labels["exporter"]: value for labels, value in sizes}
    return [[labels["exporter"], f"{value:,.0f}", f"{capacity.get(labels['exporter'], 0):,.0f}"]
            for labels, value in samples.get("otelsidecar_exporter_queue_size", [])]  # fmt: skip


def key_numbers(samples: Samples) -> dict[str, float | None]:
    """The guide's numbers over everything counted since start (None: nothing to judge)."""
    requests = sum(v for _, v in samples.get("http_server_request_duration_seconds_count", []))
    errors = sum(v for _, v in samples.get("http_server_request_errors_total", []))
    return {
        "error_rate": errors / requests if requests else None,
        "p95_s": _quantile(samples.get("http_server_request_duration_seconds_bucket", []), 0.95),
        "db_p95_s": _quantile(samples.get("db_client_operation_duration_seconds_bucket", []), 0.95),
    }


def _quantile(buckets: list[tuple[dict[str, str], float]], q: float) -> float | None:
    """As Prometheus' histogram_quantile, over every series summed: linear within a bucket."""
    totals: dict[float, float] = defaultdict(float)
    for labels, value in buckets:
        totals[float(labels["le"])] += value
    edges = sorted(totals)
    if not edges or totals[edges[-1]] == 0:
        return None
    rank, lower, below = q * totals[edges[-1]], 0.0, 0.0
    for edge in edges:
        if totals[edge] >= rank:
            if edge == float("inf"):
                return lower  # beyond the last edge: its lower bound, as Prometheus says
            inside = totals[edge] - below
            return lower + (edge - lower) * ((rank - below) / inside if inside else 0)
        lower, below = edge, totals[edge]
    return None


def _key_numbers(samples: Samples) -> str:
    numbers = key_numbers(samples)
    rows = []
    for title, key, bound, shown in TARGETS:
        value = numbers[key]
        if value is None:
            rows.append(f"<tr class='unknown'><td>{title}</td><td>no data</td><td></td></tr>")
            continue
        text = shown.format(value * 1000 if key.endswith("_s") else value)
        target = shown.format(bound * 1000 if key.endswith("_s") else bound)
        verdict = "ok" if value < bound else "bad"
        rows.append(
            f"<tr class='{verdict}'><td>{title}</td><td>{text}</td><td>&lt; {target}</td></tr>"
        )
    head = "<tr><th>number</th><th>now (since start)</th><th>target</th></tr>"
    return f"<h2>Key numbers (every span)</h2><table>{head}{''.join(rows)}</table>"


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = (
        "".join(
            "<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>"
            for row in rows
        )
        or f"<tr><td colspan='{len(columns)}'>none</td></tr>"
    )
    return f"<h2>{escape(title)}</h2><table><tr>{head}</tr>{body}</table>"

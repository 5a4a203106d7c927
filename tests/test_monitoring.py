"""``deploy/monitoring``: the monitoring guide's alerts (a PrometheusRule), the scrape (a
PodMonitor) and the dashboard name only metrics a running sidecar's /metrics exposes, and
point at the pod the base deploys."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.sidecar import Sidecar
from tests.test_deploy import DEPLOY, kustomize
from tests.test_key_metrics import traffic
from tests.test_receivers import post

MONITORING = DEPLOY / "monitoring"
# The metric namespaces the sidecar exposes; any other identifier in PromQL is a function,
# a keyword or a label.
METRIC = re.compile(r"\b((?:otelsidecar|http_server|http_client|db_client|app)_[a-z0-9_]+)\b")
CONFIG = """
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
processors:
  memory_limiter: {limit_mib: 128}
  slow_spans: {}
  key_metrics: {}
  sampler: {rate: 0.5}
exporters:
  otlp_http: {endpoint: "http://127.0.0.1:9", retry_on_failure: {max_elapsed_time: 1s}}
extensions:
  health: {endpoint: "127.0.0.1:0"}
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, slow_spans, key_metrics, sampler]
      exporters: [otlp_http]
"""


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every sample name /metrics shows or announces (a labelled metric with no values yet is
    announced by its TYPE line) once traffic passed."""
    with Sidecar(tmp_path_factory.mktemp("monitoring"), CONFIG) as sidecar:
        assert post(sidecar, "/v1/traces", traffic("shop").SerializeToString())[0] == 200
        url = f"http://{sidecar.endpoints['health']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
    names = set()
    for family in text_string_to_metric_families(text):  # with samples or not yet
        names |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
    return names


_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}


def built() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in kustomize(MONITORING)}


def expressions() -> list[str]:
    rules = [r for g in built()["PrometheusRule"]["spec"]["groups"] for r in g["rules"]]
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    targets = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return [rule["expr"] for rule in rules] + targets


def test_every_expression_names_only_exposed_metrics(exposed: set[str]) -> None:
    unknown = {name for expr in expressions() for name in METRIC.findall(expr)} - exposed
    assert not unknown, f"not on /metrics: {sorted(unknown)}"


def test_the_guide_s_alerts_are_there_with_a_severity() -> None:
    groups = built()["PrometheusRule"]["spec"]["groups"]
    rules = {rule["alert"]: rule for group in groups for rule in group["rules"]}
    assert "increase(http_server_request_errors_total[1m])) > 10" in rules["AppErrorBurst"]["expr"]
    assert rules["AppSlowP95"]["for"] == "5m" and "> 1" in rules["AppSlowP95"]["expr"]
    assert "db_client_operation_errors_total" in rules["AppDatabaseErrors"]["expr"]
    assert {"OtelSidecarDropping", "OtelSidecarQueueNearlyFull", "OtelSidecarExporterFailing"} <= (
        rules.keys()
    )
    assert all(rule["labels"]["severity"] in ("warning", "critical") for rule in rules.values())


def test_the_podmonitor_scrapes_the_sidecars_health_port_of_the_deployed_pod() -> None:
    monitor = built()["PodMonitor"]["spec"]
    (deployment,) = [d for d in kustomize(DEPLOY) if d["kind"] == "Deployment"]
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["podMetricsEndpoints"]
    ports = {p["name"] for c in template["spec"]["initContainers"] + template["spec"]["containers"]
             for p in c.get("ports", [])}  # fmt: skip
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


def test_the_dashboard_has_the_guide_s_panels_and_is_provisioned() -> None:
    config_map = built()["ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["otel-sidecar.json"])
    titles = " | ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for wanted in ("error rate", "p95 / p99", "active users", "errors by endpoint", "slow",
                   "database query p95", "external api", "throughput", "sidecar"):  # fmt: skip
        assert wanted in titles, wanted

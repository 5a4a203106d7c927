"""What a platform team applies (``deploy/``): every manifest and kustomize build validates offline
against Kubernetes 1.29 and the newest schema; the pod is what the README promises (native
sidecar, probes the health server answers, ports from the config, no inlined secret, a
restricted security context); the Dockerfiles name real files and a real command; and the
sidecar takes what the OpenTelemetry Operator's Python injection sends."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from collector.cli import _parser
from tests.sidecar import BASIC_CONFIG, ROOT, Sidecar, attributes, logs_in, spans_in

DEPLOY = ROOT / "deploy"
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
OVERLAYS = DEPLOY / "overlays"
BUILDS = [DEPLOY, DEPLOY / "gateway", DEPLOY / "monitoring", *sorted(OVERLAYS.iterdir())]


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed to build deploy/ (it works offline)")
    out = subprocess.run([kubectl, "kustomize", str(directory)], check=True,
                         capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out) if doc]


def manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if OVERLAYS in path.parents:
            continue  # patches are partial objects: their builds are checked below
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        where = str(path.relative_to(ROOT))
        # Kubernetes objects only: not kustomizations, not the sidecar's or Collector's configs.
        found += [(where, d) for d in docs if "kind" in d and d["kind"] != "Kustomization"]
    for directory in BUILDS:
        found += [(f"kustomize {directory.relative_to(ROOT)}", doc) for doc in kustomize(directory)]
    # The Prometheus Operator's kinds have no schema here: tests/test_monitoring.py checks them.
    return [(w, d) for w, d in found if not d["apiVersion"].startswith("monitoring.coreos.com/")]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly(version: str) -> None:
    checked = manifests()
    assert checked
    for where, doc in checked:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{where}: {doc['kind']}/{doc['metadata']['name']}: {error}")


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    (deployment,) = [d for d in kustomize(DEPLOY) if d["kind"] == "Deployment"]
    return deployment["spec"]["template"]["spec"]


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in pod["initContainers"] + pod["containers"] if c["name"] == name]
    return found


def sidecar_config(build: Path = DEPLOY) -> str:
    (config_map,) = [d for d in kustomize(build) if d["kind"] == "ConfigMap"
                     and d["metadata"]["name"].startswith("otel-sidecar-config")]  # fmt: skip
    return config_map["data"]["config.yaml"]


def valid_sidecar_config(build: Path, tmp_path: Path) -> dict[str, Any]:
    """The build's sidecar ConfigMap, after ``otel-sidecar validate`` accepted it."""
    text = sidecar_config(build)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    run = subprocess.run([sys.executable, "-m", "collector", "validate", "--config", str(path)],
                         cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return yaml.safe_load(text)


def test_the_sidecar_is_a_native_sidecar_started_before_the_app(pod: dict[str, Any]) -> None:
    names = [c["name"] for c in pod["initContainers"]]
    assert names == ["otel-instrumentation", "otel-sidecar"]
    assert container(pod, "otel-sidecar")["restartPolicy"] == "Always"
    assert "restartPolicy" not in container(pod, "otel-instrumentation")  # runs once, first


def test_the_configmaps_config_is_valid_and_its_ports_are_the_pods(
    pod: dict[str, Any], tmp_path: Path
) -> None:
    config = valid_sidecar_config(DEPLOY, tmp_path)
    health = config["extensions"]["health"]["endpoint"]
    assert health.startswith("0.0.0.0:")  # the kubelet probes from outside the pod's loopback
    ports = {p["name"]: p["containerPort"] for p in container(pod, "otel-sidecar")["ports"]}
    assert ports == {"health": int(health.rpartition(":")[2])}
    for protocol in config["receivers"]["otlp"]["protocols"].values():
        assert protocol["endpoint"].startswith("127.0.0.1:")  # OTLP: the pod's containers only
    mounted = container(pod, "otel-sidecar")["volumeMounts"][0]["mountPath"]
    assert container(pod, "otel-sidecar")["args"] == ["--config", f"{mounted}/config.yaml"]


def test_the_probes_are_paths_the_health_server_answers(
    pod: dict[str, Any], tmp_path: Path
) -> None:
    """The ConfigMap's own config, run (health moved to a free loopback port)."""
    config = sidecar_config().replace("0.0.0.0:13133", "127.0.0.1:0")
    config = config.replace("/var/lib/otel-sidecar", str(tmp_path / "queue"))
    config = re.sub(r"127\.0\.0\.1:43(17|18)", "127.0.0.1:0", config)
    sidecar = container(pod, "otel-sidecar")
    with Sidecar(tmp_path, config) as running:
        base = f"http://{running.endpoints['health']}"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = sidecar[probe]["httpGet"]
            assert get["port"] == "health"
            with urllib.request.urlopen(base + get["path"], timeout=5) as answer:
                assert answer.status == 200, probe


def test_no_secret_is_inlined_and_the_dsn_comes_from_a_secret(pod: dict[str, Any]) -> None:
    assert not [d for d in manifests() if d[1]["kind"] == "Secret"]
    env = {e["name"]: e for e in container(pod, "otel-sidecar")["env"]}
    assert env["SENTRY_DSN"]["valueFrom"]["secretKeyRef"]["name"] == "sentry"
    everything = json.dumps([doc for _, doc in manifests()])
    assert not re.search(r"https?://[0-9a-f]{16,}@", everything)  # no DSN anywhere


def test_every_container_runs_restricted(pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for each in pod["initContainers"] + pod["containers"]:
        context = each["securityContext"]
        assert context["runAsNonRoot"] is True, each["name"]
        assert context["readOnlyRootFilesystem"] is True, each["name"]
        assert context["allowPrivilegeEscalation"] is False, each["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, each["name"]
        assert "memory" in each["resources"]["limits"], each["name"]


def test_the_app_gets_the_distro_as_the_operator_injects_it(pod: dict[str, Any]) -> None:
    app = container(pod, "app")
    env = {e["name"]: e.get("value") for e in app["env"]}
    copied_to = container(pod, "otel-instrumentation")["volumeMounts"][0]["mountPath"]
    assert env["PYTHONPATH"].split(":") == [
        f"{copied_to}/opentelemetry/instrumentation/auto_instrumentation", copied_to,
    ]  # fmt: skip
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4317"
    assert app["args"][0] == "uvicorn"  # the app's own command, unchanged
    assert {m["mountPath"] for m in app["volumeMounts"]} >= {copied_to}


# --- the Dockerfiles ---------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined and comments left out."""
    joined, steps = "", []
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        joined += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            steps.append(joined.strip())
            joined = ""
    return [(step.split(None, 1)[0].upper(), step.split(None, 1)[1]) for step in steps]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.instrumentation"])
def test_a_dockerfile_copies_files_that_exist_and_runs_as_non_root(name: str) -> None:
    steps = instructions(DEPLOY / name)
    for kind, argument in steps:
        assert kind in {"ARG", "FROM", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "ENV",
                        "ENTRYPOINT", "CMD"}, kind  # fmt: skip
        if kind == "COPY" and not argument.startswith("--from"):
            *sources, _ = argument.split()
            for source in sources:
                assert (ROOT / source).exists(), source
    (user,) = [argument for kind, argument in steps if kind == "USER"]
    assert int(user.split(":")[0]) > 0


def test_the_sidecar_images_entrypoint_is_the_cli(tmp_path: Path) -> None:
    steps = dict(instructions(DEPLOY / "Dockerfile"))
    entrypoint = json.loads(steps["ENTRYPOINT"])
    assert entrypoint[0] == "otel-sidecar"  # pyproject's console script
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'otel-sidecar = "collector.cli:main"' in pyproject
    _parser().parse_args(entrypoint[1:])  # a real subcommand
    assert "EXPOSE 4317 4318 13133" in (DEPLOY / "Dockerfile").read_text()


def test_the_image_installs_every_module_of_the_sidecar(tmp_path: Path) -> None:
    """The build stage's COPY lines, then its install, as a wheel: every module of this checkout
    is in it (a package left out of pyproject's list once made the image fail at start)."""
    context = tmp_path / "src"
    for kind, argument in instructions(DEPLOY / "Dockerfile"):
        if kind == "COPY" and not argument.startswith("--from"):
            *sources, destination = argument.split()
            for source in sources:
                into = context / destination
                if destination.endswith("/"):
                    into = into / Path(source).name
                copy = shutil.copytree if (ROOT / source).is_dir() else shutil.copyfile
                into.parent.mkdir(parents=True, exist_ok=True)
                copy(ROOT / source, into)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(wheels), str(context)],
                   check=True, capture_output=True)  # fmt: skip
    (wheel,) = wheels.glob("otel_sidecar-*.whl")
    built = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    checkout = {path.relative_to(ROOT).as_posix() for package in ("collector", "exporters")
                for path in (ROOT / package).rglob("*.py")}  # fmt: skip
    assert checkout - built == set()


COMPILE = re.compile(r"python -m compileall (?P<options>(?:-\S+ \S+ |-q )*)(?P<target>/\S+)")


@pytest.mark.parametrize(
    ("name", "packages", "module"),
    [("Dockerfile", ["collector", "exporters"], "collector.cli"),
     ("Dockerfile.instrumentation", ["instrumentation/src/otel_sidecar"],
      "otel_sidecar.instrumentation.configurator")],
)  # fmt: skip
def test_an_image_ships_bytecode_that_its_copy_leaves_valid(
    tmp_path: Path, name: str, packages: list[str], module: str
) -> None:
    """The image's own compile step, run on our packages: after a copy that gives every source
    a new time, an import with bytecode writing off (as the read-only image runs) compiles
    nothing from source. Without it the sidecar took 2.1-2.3 s to /health/ready, not ~0.9."""
    (run,) = [arg for kind, arg in instructions(DEPLOY / name) if "compileall" in arg]
    found = COMPILE.search(run)
    assert found is not None, run
    target = tmp_path / "installed"
    for package in packages:
        shutil.copytree(ROOT / package, target / Path(package).name,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    command = [sys.executable, "-m", "compileall", *found["options"].split(), str(target)]
    subprocess.run(command, check=True, capture_output=True)
    for source in target.rglob("*.py"):
        os.utime(source, (1, 1))  # what COPY --from may do to a file's time
    # -S: not this checkout's editable installs (their .pth files), only the copy, then the
    # third-party packages.
    path = os.pathsep.join([str(target), *(p for p in sys.path if p.endswith("site-packages"))])
    env = {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-S", "-v", "-c", f"import {module}"]
    verbose = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                             check=True).stderr  # fmt: skip
    loaded = re.findall(r"^# code object from '?(\S+?)'?$", verbose, re.MULTILINE)
    ours = [path for path in loaded if path.startswith(str(target))]
    assert ours and all(path.endswith(".pyc") for path in ours), ours


def test_the_build_context_leaves_out_what_the_images_do_not_need() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv*", "tests", ".env"} <= set(ignored)


# --- the Operator's route ----------------------------------------------------------------------

APP = """
import logging
from opentelemetry import trace
tracer = trace.get_tracer("shop")
with tracer.start_as_current_span("GET /cart", kind=trace.SpanKind.SERVER):
    logging.getLogger("shop").error("cart service slow")
trace.get_tracer_provider().shutdown()
from opentelemetry._logs import get_logger_provider
get_logger_provider().shutdown()
"""


def test_the_sidecar_takes_what_the_operators_python_injection_sends(tmp_path: Path) -> None:
    """No opentelemetry-instrument: PYTHONPATH's sitecustomize starts the distro, with the
    variables the Operator sets for Python (http/protobuf to the sidecar's 4318, its resource
    attributes), as in the README's Instrumentation resource."""
    import opentelemetry.instrumentation.auto_instrumentation as auto

    metrics = "    metrics: {receivers: [otlp], processors: [batch], exporters: [file]}\n"
    with Sidecar(tmp_path, BASIC_CONFIG + metrics) as sidecar:
        env = {
            **os.environ,
            "PYTHONPATH": f"{Path(auto.__file__).parent}:{ROOT}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{sidecar.endpoints['otlp_http']}",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_LOGS_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_SERVICE_NAME": "shop",
            "OTEL_RESOURCE_ATTRIBUTES": "k8s.namespace.name=prod,k8s.pod.name=shop-7d9f-x2,"
            "k8s.container.name=app",
        }
        run = subprocess.run([sys.executable, "-c", APP], env=env, capture_output=True,
                             text=True, timeout=60, cwd=tmp_path)  # fmt: skip
        assert run.returncode == 0, run.stderr
        # The app's own last-resort line, nothing else: no export error, no warning.
        assert run.stderr == "cart service slow\n"
        assert sidecar.stop() == 0
    lines = sidecar.lines()
    ((resource, span),) = spans_in(lines)
    assert span["name"] == "GET /cart"
    found = attributes(resource)
    assert found["service.name"] == "shop" and found["k8s.pod.name"] == "shop-7d9f-x2"
    ((_, record),) = logs_in(lines)
    assert record["body"]["stringValue"] == "cart service slow"
    assert record["traceId"] == span["traceId"]


# --- the gateway ---------------------------------------------------------------------------------

GATEWAY = DEPLOY / "overlays" / "gateway"


def by_kind(build: Path, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in kustomize(build) if d["kind"] == kind}


def test_with_the_gateway_every_trace_goes_to_it_and_sentry_keeps_its_sample(
    tmp_path: Path,
) -> None:
    config = valid_sidecar_config(GATEWAY, tmp_path)
    pipelines = config["service"]["pipelines"]
    assert "sampler" in pipelines["traces"]["processors"]  # Sentry's share
    assert "sampler" not in pipelines["traces/gateway"]["processors"]  # the gateway decides
    assert "scrubber" in pipelines["traces/gateway"]["processors"]  # nothing leaves unscrubbed
    endpoint = config["exporters"]["otlp_grpc"]["endpoint"]
    host, port = re.fullmatch(r".*:-(?:dns:///)?([\w-]+):(\d+)}", endpoint).groups()
    service = by_kind(GATEWAY, "Service")[host]
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    # Spread over every tier 1 pod: round robin over a headless Service's addresses.
    assert config["exporters"]["otlp_grpc"]["balancer_name"] == "round_robin"
    assert service["spec"]["clusterIP"] == "None"


def test_tier_one_routes_by_trace_id_to_every_tail_sampler() -> None:
    maps = by_kind(GATEWAY, "ConfigMap")
    (tier1,) = [yaml.safe_load(m["data"]["config.yaml"]) for n, m in maps.items()
                if n.startswith("otel-gateway-config")]  # fmt: skip
    balancer = tier1["exporters"]["loadbalancing"]
    assert balancer["routing_key"] == "traceID"
    assert tier1["service"]["pipelines"]["traces"]["exporters"] == ["loadbalancing"]
    samplers = by_kind(GATEWAY, "Service")[balancer["resolver"]["dns"]["hostname"]]
    assert samplers["spec"]["clusterIP"] == "None"  # headless: one address per pod
    assert int(balancer["resolver"]["dns"]["port"]) in {
        p["port"] for p in samplers["spec"]["ports"]
    }
    for name in ("otel-gateway", "otel-tail-sampler"):
        assert name in by_kind(GATEWAY, "PodDisruptionBudget")
        assert by_kind(GATEWAY, "HorizontalPodAutoscaler")[name]["spec"]["minReplicas"] >= 2


# --- the persistent queue --------------------------------------------------------------------


def test_the_sidecars_queue_is_on_the_volume_its_config_names(
    pod: dict[str, Any], tmp_path: Path
) -> None:
    config = valid_sidecar_config(DEPLOY, tmp_path)
    directory = config["extensions"]["file_storage"]["directory"]
    assert config["exporters"]["sentry"]["sending_queue"]["storage"] == "file_storage"
    mounts = {m["mountPath"]: m["name"] for m in container(pod, "otel-sidecar")["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts[directory]]  # by default: outlives container restarts


def test_the_persistent_queue_overlay_puts_it_on_a_claim(tmp_path: Path) -> None:
    build = OVERLAYS / "persistent-queue"
    (deployment,) = by_kind(build, "Deployment").values()
    spec = deployment["spec"]
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    claim_name = volumes["otel-sidecar-queue"]["persistentVolumeClaim"]["claimName"]
    assert "emptyDir" not in volumes["otel-sidecar-queue"]
    claim = by_kind(build, "PersistentVolumeClaim")[claim_name]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert (spec["replicas"], spec["strategy"]["type"]) == (1, "Recreate")  # one pod per claim
    config = valid_sidecar_config(build, tmp_path)
    largest = max(e.get("sending_queue", {}).get("max_size_mib", 0)
                  for e in config["exporters"].values())  # fmt: skip
    assert (
        int(claim["spec"]["resources"]["requests"]["storage"].removesuffix("Gi")) * 1024 > largest
    )

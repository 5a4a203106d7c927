"""``otel-sidecar``: run the sidecar, validate a config file, list the installed component
types, ask a running one for its health.

Exit codes: 0 success; 1 the sidecar failed at run time (a port in use, say); 2 bad usage
or an invalid configuration, with a message naming the YAML key.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import json
import os
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence

from collector import __version__, components
from collector import config as config_module
from collector.health import HEALTHY, UNHEALTHY
from collector.overload import OVERLOAD
from collector.pipeline import Service
from collector.settings import ConfigError
from collector.signals import Signal
from collector.telemetry import configure_logging, log


def _default_health_url() -> str:
    """Where ``run`` with the default config listens: OTEL_SIDECAR_HEALTH_ENDPOINT moves both."""
    endpoint = os.environ.get("OTEL_SIDECAR_HEALTH_ENDPOINT") or "127.0.0.1:13133"
    host, _, port = endpoint.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]", ""):  # listening everywhere: ask on loopback
        host = "127.0.0.1"
    return f"http://{host}:{port}/health"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.command(args)
    except ConfigError as error:  # the message names the YAML key and never a secret
        print(f"invalid config: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-sidecar",
        description="OpenTelemetry sidecar collector: receives OTLP traces and logs on "
        "localhost, samples, scrubs and marks slow spans, and forwards them.",
    )
    parser.add_argument("--version", action="version", version=f"otel-sidecar {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the sidecar until SIGTERM/SIGINT (SIGHUP reloads the config)",
        description="Run the sidecar. Without --config, the default pipelines are built from "
        "the environment (see the README).",
    )
    run.add_argument("--config", metavar="PATH", help="collector-style YAML config file")
    run.set_defaults(command=_run)

    validate = commands.add_parser(
        "validate",
        help="check a config file and exit (0 valid, 2 invalid)",
    )
    validate.add_argument("--config", metavar="PATH", required=True)
    validate.set_defaults(command=_validate)

    listed = commands.add_parser(
        "components",
        help="list the installed receivers, processors, exporters and extensions",
        description="Lists every component type the installed distributions register (entry "
        "point groups otel_sidecar.receivers, .processors, .exporters, .extensions), as YAML. "
        "Exit code 1 when one cannot be loaded.",
    )
    listed.set_defaults(command=_components)

    health = commands.add_parser(
        "health",
        help="print a running sidecar's /health (exit 0 healthy, 1 not)",
        description="Prints the health JSON of a running sidecar; exit code 0 when it answers "
        "healthy, 1 otherwise (unhealthy, or not answering). Usable as a probe command.",
    )
    default_url = _default_health_url()
    health.add_argument(
        "--url",
        default=default_url,
        help=f"health endpoint (default {default_url}, from OTEL_SIDECAR_HEALTH_ENDPOINT)",
    )
    health.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    health.set_defaults(command=_health)
    return parser


def _health(args: argparse.Namespace) -> int:
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:  # 503: unhealthy, with the report in the body
        status, body = error.code, error.read()
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or type(error).__name__
        print(f"{_without_credentials(args.url)}: not answering ({reason})", file=sys.stderr)
        return 1
    try:
        report = json.loads(body)
    except ValueError:
        report = None
    if not (isinstance(report, dict) and report.get("status") in (HEALTHY, UNHEALTHY)):
        print(f"{_without_credentials(args.url)}: HTTP {status}, not the health JSON "
              "(the sidecar's is at /health)", file=sys.stderr)  # fmt: skip
        return 1
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0 if status == 200 and report["status"] == HEALTHY else 1


def _without_credentials(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def _load(path: str | None) -> config_module.Config:
    return config_module.load(path) if path else config_module.default()


def _validate(args: argparse.Namespace) -> int:
    config = _load(args.config)
    pipelines = ", ".join(config.service.pipelines)
    print(f"{args.config}: valid (pipelines: {pipelines})")
    return 0


def _components(args: argparse.Namespace) -> int:
    broken = False
    for section, kinds in components.sections().items():
        print(f"{section}:")
        for name in kinds:
            entry = kinds.entries[name]
            print(f"  - name: {name}")
            try:
                kind = kinds[name]
            except ConfigError as error:
                print(f"    error: {json.dumps(str(error))}")
                broken = True
                continue
            if section != "extensions":
                print(f"    signals: [{', '.join(s.value for s in Signal if s in kind.signals)}]")
            print(f"    module: {entry.module}")
            if entry.dist is not None:
                print(f"    distribution: {entry.dist.name} {entry.dist.version}")
    return 1 if broken else 0


# Young objects the cyclic garbage collector waits for: CPython's default is 700.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Collect cycles less often. The Sentry path makes short-lived dicts and lists by the
    thousand a second (span records, events), nearly all freed by reference counting at once;
    at CPython's default threshold the collector still ran ~17 times a second, each older
    generation's pass walking every long-lived object (modules, the trace buffer), and took
    6 % of the sidecar's CPU on an app's replayed traffic (0.69 s of 11 s). At 10,000 young
    objects: 18 collections instead of 686, 0.21 s."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    configure_logging(config.service.log_level)
    tune_gc()
    return asyncio.run(_serve(config, lambda: _load(args.config)))


async def _serve(config: config_module.Config, reload: Callable[[], config_module.Config]) -> int:
    """Run until SIGTERM or SIGINT; on SIGHUP, read the config again and, if it is valid,
    restart the pipelines on it (as the Collector does), else keep the running one."""
    OVERLOAD.start()
    try:
        return await _serve_until_stopped(config, reload)
    finally:
        await OVERLOAD.stop()


async def _serve_until_stopped(
    config: config_module.Config, reload: Callable[[], config_module.Config]
) -> int:
    # Handlers first: a signal that comes as soon as `sidecar_started` is logged must not kill
    # the process (SIGHUP's default) or skip the drain.
    loop = asyncio.get_running_loop()
    stop, hangup = asyncio.Event(), asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hangup.set)
    service = await _start(config)
    if service is None:
        return 1
    while True:
        await _first(stop, hangup)
        if stop.is_set():
            break
        hangup.clear()
        try:
            new = reload()
        except ConfigError as error:
            log.error("config_reload_failed", error=str(error), keeping="the running config")
            continue
        await _stop(service, config)
        started = await _start(new)
        if started is None:  # the new one could not start (a port taken): back to the old one
            log.error("config_reload_failed", error="start failed", keeping="the running config")
            started = await _start(config)
            if started is None:
                return 1
            service = started  # the old config, running again: what SIGTERM must drain
            continue
        service, config = started, new
        log.info("config_reloaded")
    await _stop(service, config)
    return 0


async def _start(config: config_module.Config) -> Service | None:
    try:
        service = Service(config)  # ConfigError: a plugin exporter that is not one
        await service.start()
    except (OSError, ConfigError) as error:
        log.error("start_failed", error=str(error))
        return None
    log.info(
        "sidecar_started",
        version=__version__,
        endpoints=service.endpoints(),
        pipelines={
            name: {
                "receivers": list(p.receivers),
                "processors": list(p.processors),
                "exporters": list(p.exporters),
            }
            for name, p in config.service.pipelines.items()
        },
    )
    return service


async def _stop(service: Service, config: config_module.Config) -> None:
    grace = config.service.grace_period
    log.info("sidecar_stopping", grace_period_s=grace)
    await service.shutdown(grace)
    log.info("sidecar_stopped")


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in pending:
        wait.cancel()

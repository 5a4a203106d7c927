"""The example's processes, started as a user would start them: the AI service stub and the
HelloAgents backend under uvicorn (or gunicorn), with or without ``opentelemetry-instrument``.

Used by `make demo`, the end-to-end tests and ``bench/app_overhead.py``. Ports are free ones
picked at start; every process gets SIGTERM (then SIGKILL) when its context ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def die_with_parent(sig: int) -> Callable[[], None]:
    """For ``preexec_fn``: the child gets ``sig`` when the process that started it dies (Linux),
    so a test run or demo that is killed leaves no server behind."""

    def arrange() -> None:
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                pr_set_pdeathsig = 1
                ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, sig)

    return arrange


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Process:
    """A child process whose output lines are kept (and optionally echoed with a prefix)."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: Path, echo: str = "") -> None:
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self.echo = echo
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Process:
        self.process = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a signal to its group reaches workers and reloaders too
            preexec_fn=die_with_parent(signal.SIGTERM),  # graceful: it flushes, then goes
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if self.echo:
                print(f"{self.echo}{line.rstrip()}", flush=True)

    def json_lines(self) -> list[dict[str, Any]]:
        events = []
        for line in list(self.lines):
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    events.append(json.loads(line))
        return events

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM to the process (its server passes it on to workers), then SIGKILL."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            code = self.process.wait(10)
        time.sleep(0.1)  # the reader thread takes the last lines
        return code

    def __enter__(self) -> Process:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.stop()


def ai_stub(echo: str = "") -> tuple[Process, str]:
    """The AI service stub, running; (process, base URL)."""
    stub = Process(
        [sys.executable, "-m", "helloagents.ai_stub"], dict(os.environ), EXAMPLES, echo
    ).start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for event in stub.json_lines():
            if event.get("event") == "ai_stub_started":
                return stub, f"http://127.0.0.1:{event['port']}"
        time.sleep(0.05)
    stub.stop()
    raise RuntimeError(f"the AI stub did not start: {stub.lines}")


def app_env(
    database: Path, ai_url: str, otlp_endpoint: str | None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The backend's environment: its own settings and, with an endpoint, where OTLP goes."""
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{database}",
        "AI_SERVICE_URL": ai_url,
        "AI_API_KEY": "sk-demo-0123456789abcdef",
        "PYTHONUNBUFFERED": "1",
    }
    if otlp_endpoint is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint
    env.update(extra or {})
    return env


APP = "helloagents.main:app"


def server_argv(
    port: int,
    *,
    instrumented: bool,
    server: str = "uvicorn",
    args: Sequence[str] = (),
    app: str = APP,
) -> list[str]:
    """``[opentelemetry-instrument] uvicorn helloagents.main:app ...`` (or gunicorn)."""
    if server == "gunicorn":
        argv = [
            str(BIN / "gunicorn"), app, "--worker-class", "uvicorn_worker.UvicornWorker",
            "--bind", f"127.0.0.1:{port}", *args,
        ]  # fmt: skip
    else:
        argv = [str(BIN / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port), *args]
    return [str(BIN / "opentelemetry-instrument"), *argv] if instrumented else argv


def wait_until_up(
    base_url: str, process: Process, timeout: float = 60, path: str = "/health/live"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.running():
            raise RuntimeError("the app exited:\n" + "\n".join(process.lines[-40:]))
        try:
            with urllib.request.urlopen(f"{base_url}{path}", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the app did not answer:\n" + "\n".join(process.lines[-40:]))


def start_app(
    env: dict[str, str],
    *,
    instrumented: bool = True,
    server: str = "uvicorn",
    args: Sequence[str] = (),
    app_dir: Path = EXAMPLES,
    echo: str = "",
    port: int | None = None,
    app: str = APP,
) -> tuple[Process, str]:
    """The backend, answering; (process, base URL). On a free port unless one is given."""
    port = port or free_port()
    argv = server_argv(port, instrumented=instrumented, server=server, args=args, app=app)
    app = Process(argv, env, app_dir, echo).start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base_url, app)
    except RuntimeError:
        app.stop()
        raise
    return app, base_url

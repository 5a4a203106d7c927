"""A real Bugsink (self-hosted, Sentry-compatible error tracker) on localhost: the receiver of
`make demo-sentry` and of the end-to-end tests.

``Bugsink(workdir).start()`` sets up a throw-away single-user installation in ``workdir`` and
serves it with gunicorn on a free port of 127.0.0.1, as Bugsink's production setup does:

1. ``bugsink-create-conf --template=local`` writes ``bugsink_conf.py``, to which we append our
   overrides: SQLite files, ingestion dir and logs in ``workdir``; ``BASE_URL`` with the port;
   phone-home off; no email (dummy backend); high quotas; ``VALIDATE_ON_DIGEST`` (``strict`` by
   default, so an event that breaks Sentry's event schema is answered with 400 and the reason);
   and snappea's ``TASK_ALWAYS_EAGER``, which digests each event inside the ingest request: an
   issue exists as soon as the SDK's POST is answered, with no background worker to wait for.
2. ``bugsink-manage migrate`` (main DB) and ``migrate snappea --database=snappea`` run side by
   side.
3. gunicorn (``bugsink.wsgi``) is started on a socket this process bound, so nothing else can
   take the port in between; ``createsuperuser --noinput`` and ``create_auth_token`` run
   meanwhile.
4. A team and a project are made through Bugsink's REST API (``/api/canonical/0/``, bearer
   token); the project's ``dsn`` is ``http://<key>@127.0.0.1:<port>/<project id>``.

Issues and events are read back through the same API. ``stop()`` ends the server's process
group; the server is also killed if this process dies (``PR_SET_PDEATHSIG``) and at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from examples.services import die_with_parent

API = "/api/canonical/0"
ADMIN_EMAIL = "admin@example.org"
# Only ever reachable on 127.0.0.1 of this machine, inside a throw-away workdir.
ADMIN_PASSWORD = "bugsink-test-password"

# The environment of Bugsink's processes: ours, less what could point it elsewhere.
_DROPPED_ENV = (
    "DJANGO_SETTINGS_MODULE",
    "PYTHONPATH",
    "SECRET_KEY",
    "DATABASE_URL",
    "DATABASE_PATH",
    "SNAPPEA_DATABASE_PATH",
    "SENTRY_DSN",
    "PORT",
    "BASE_URL",
    "EMAIL_HOST",
    "EMAIL_BACKEND",
    "GUNICORN_CMD_ARGS",
    "WEB_CONCURRENCY",
)


# gunicorn's workers are forks of its arbiter, which gets SIGKILL when our process dies (see
# die_with_parent); they get it in turn when the arbiter dies, instead of lingering.
_GUNICORN_CONF = """\
import ctypes
import signal
import sys


def post_fork(server, worker):
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
"""


# Straight to 127.0.0.1, whatever *_proxy variables say.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BugsinkError(RuntimeError):
    """Bugsink could not be started or answered an API call with an error."""


class Bugsink:
    """One Bugsink server with one team and one project (more with ``create_project``)."""

    def __init__(
        self, workdir: Path, *, validate_on_digest: str = "warn", workers: int = 2
    ) -> None:
        self.workdir = Path(workdir)
        self.validate_on_digest = validate_on_digest  # "strict", "warn" or "none"
        self.workers = workers
        self.port = 0
        self.base_url = ""
        self.token = ""
        self.team_id = ""
        self.project_id = 0
        self.dsn = ""
        self.start_seconds = 0.0
        self.log_path = self.workdir / "bugsink.log"
        self._setup_log = self.workdir / "setup.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, timeout: float = 90) -> Bugsink:
        """Configure, migrate, serve, make a team and a project: all within ``timeout`` s."""
        if self._process is not None:
            raise BugsinkError("Bugsink already started")
        began = time.monotonic()
        deadline = began + timeout
        self.workdir.mkdir(parents=True, exist_ok=True)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            self.port = listener.getsockname()[1]
            self.base_url = f"http://127.0.0.1:{self.port}"
            self._write_conf(deadline)
            self._manage_parallel(
                deadline,
                ["migrate", "--noinput"],
                ["migrate", "snappea", "--database=snappea", "--noinput"],
            )
            self._start_server(listener)
        except BaseException:
            self.stop()
            raise
        finally:
            listener.close()  # gunicorn has its own copy of it
        try:
            superuser = ["createsuperuser", "--noinput", f"--username={ADMIN_EMAIL}"]
            token_out, _ = self._manage_parallel(
                deadline, ["create_auth_token"], [*superuser, f"--email={ADMIN_EMAIL}"]
            )
            self.token = token_out.strip().splitlines()[-1]
            self._wait_until_ready(deadline)
            team = self.api("POST", "/teams/", {"name": "otel-sidecar-tests"}, deadline=deadline)
            self.team_id = team["id"]
            project = self.create_project("otel-sidecar", deadline=deadline)
            self.project_id, self.dsn = project["id"], project["dsn"]
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Kill the server (its whole process group) and wait for it; safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            atexit.unregister(self.stop)
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)
            # Workers that outlived their arbiter (they leave by themselves within a second or so).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Bugsink:
        return self.start() if self._process is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what Bugsink stored -----------------------------------------------------------------------

    def create_project(self, name: str, *, deadline: float | None = None) -> dict[str, Any]:
        """A new project in the team (an empty issue list); its dict has ``id`` and ``dsn``."""
        self.api("POST", "/projects/", {"team": self.team_id, "name": name}, deadline=deadline)
        for project in self._pages(f"/projects/?team={self.team_id}", deadline=deadline):
            if project["name"] == name:
                return project
        raise BugsinkError(f"project {name!r} was created but is not listed")

    def issues(self, project_id: int | None = None) -> list[dict[str, Any]]:
        """The project's issues, oldest first: the API's fields plus ``type``, ``value``, ``title``
        and ``event_count`` (events digested into the issue)."""
        project = self.project_id if project_id is None else project_id
        issues = self._pages(f"/issues/?project={project}&sort=digest_order&order=asc")
        for issue in issues:
            issue["type"] = issue["calculated_type"]
            issue["value"] = issue["calculated_value"]
            issue["title"] = _title(issue["calculated_type"], issue["calculated_value"])
            issue["event_count"] = issue["digested_event_count"]
        return issues

    def events(self, issue_id: str) -> list[dict[str, Any]]:
        """The issue's stored events, oldest first, each with the full event ``data`` (the
        event JSON as stored: ``exception.values[].stacktrace.frames``, ``transaction``...)."""
        listed = self._pages(f"/events/?issue={urllib.parse.quote(str(issue_id))}&order=asc")
        return [self.api("GET", f"/events/{event['id']}/") for event in listed]

    def event(self, event_id: str, project_id: int | None = None) -> dict[str, Any]:
        """One stored event, looked up by the SDK's ``event_id``."""
        project = self.project_id if project_id is None else project_id
        return self.api("GET", f"/events/lookup/?project={project}&event_id={event_id}")

    def wait_for_issues(
        self, count: int, timeout: float = 60, project_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Poll until the project has at least ``count`` issues; return them all."""
        deadline = time.monotonic() + timeout
        while True:
            issues = self.issues(project_id)
            if len(issues) >= count:
                return issues
            if time.monotonic() > deadline:
                titles = [issue["title"] for issue in issues]
                raise TimeoutError(
                    f"Bugsink has {len(issues)} issue(s) {titles}, not {count}, after {timeout} s\n"
                    + self.log_tail()
                )
            self._check_alive()
            time.sleep(0.2)

    # -- plumbing ----------------------------------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        deadline: float | None = None,
    ) -> Any:
        """One call to Bugsink's REST API (``path`` below ``/api/canonical/0``, or a full URL)."""
        url = path if path.startswith("http") else f"{self.base_url}{API}{path}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        timeout = 30.0 if deadline is None else max(1.0, deadline - time.monotonic())
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:2000]
            raise BugsinkError(
                f"{method} {url} -> {error.code}: {detail}\n{self.log_tail()}"
            ) from None
        return json.loads(raw) if raw else None

    def server_log(self) -> str:
        """Everything the server wrote: access log, and Bugsink's own notes such as ``skipping
        non-supported envelope item: transaction`` or ``can only deal with one event``."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def validation_warnings(self) -> list[str]:
        """Events that failed Bugsink's event-schema check (``validate_on_digest="warn"``); they
        were stored all the same. (The SDK's own ``capture_message`` events show up here too:
        the schema has no top-level ``message`` string, only ``logentry``.)"""
        marker = "event data validation failed: "
        return [
            line.split(marker, 1)[1] for line in self.server_log().splitlines() if marker in line
        ]

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's and the setup commands' output."""
        parts = []
        for path in (self._setup_log, self.log_path):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} (last {len(text)} lines) ---\n" + "\n".join(text))
        return "\n".join(parts)

    def _pages(self, path: str, *, deadline: float | None = None) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        page = self.api("GET", path, deadline=deadline)
        while True:
            results.extend(page["results"])
            if not page.get("next"):
                return results
            page = self.api("GET", page["next"], deadline=deadline)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        env.update(
            DJANGO_SETTINGS_MODULE="bugsink_conf",
            PYTHONPATH=str(self.workdir),
            PYTHONUNBUFFERED="1",
            DJANGO_SUPERUSER_PASSWORD=ADMIN_PASSWORD,
            HOME=str(self.workdir),
        )
        return env

    def _write_conf(self, deadline: float) -> None:
        conf = self.workdir / "bugsink_conf.py"
        conf.unlink(missing_ok=True)
        self._run(
            deadline,
            [
                _script("bugsink-create-conf"),
                "--template=local",
                "--host=127.0.0.1",
                f"--port={self.port}",
                f"--output-file={conf}",
            ],
        )
        many = 1_000_000_000
        overrides = {
            "BASE_URL": self.base_url,
            "PHONEHOME": False,
            "USE_ADMIN": False,
            "SINGLE_USER": True,
            "INGEST_STORE_BASE_DIR": str(self.workdir / "ingestion"),
            "VALIDATE_ON_DIGEST": self.validate_on_digest,
            "KEEP_ENVELOPES": 0,
            **{
                f"MAX_EVENTS{scope}_PER_{period}": many
                for scope in ("", "_PER_PROJECT")
                for period in ("5_MINUTES", "HOUR", "MONTH")
            },
        }
        snappea = {
            "TASK_ALWAYS_EAGER": True,  # digest inside the ingest request: no snappea worker
            "PID_FILE": None,
            "WAKEUP_CALLS_DIR": str(self.workdir / "snappea-wakeup"),
        }
        with conf.open("a") as f:
            f.write(
                "\n\n# --- otel-sidecar test overrides (examples/bugsink.py) ---\n"
                f"DATABASES['default']['NAME'] = {str(self.workdir / 'db.sqlite3')!r}\n"
                f"DATABASES['default']['TEST']['NAME'] = {str(self.workdir / 'test.sqlite3')!r}\n"
                f"DATABASES['snappea']['NAME'] = {str(self.workdir / 'snappea.sqlite3')!r}\n"
                f"SNAPPEA = {snappea!r}\n"
                "EMAIL_BACKEND = 'django.core.mail.backends.dummy.EmailBackend'\n"
                "ALLOWED_HOSTS = ['127.0.0.1', 'localhost']\n"
                "TIME_ZONE = 'UTC'\n"
                f"BUGSINK.update({overrides!r})\n"
            )

    def _start_server(self, listener: socket.socket) -> None:
        gunicorn_conf = self.workdir / "gunicorn_conf.py"
        gunicorn_conf.write_text(_GUNICORN_CONF)
        self._log_file = self.log_path.open("ab")
        fd = listener.fileno()
        self._process = subprocess.Popen(
            [
                _script("gunicorn"),
                f"--bind=fd://{fd}",
                f"--workers={self.workers}",
                "--timeout=60",
                "--graceful-timeout=2",
                "--preload",
                "--no-control-socket",
                "--access-logfile=-",
                "--error-logfile=-",
                "--capture-output",
                f"--chdir={self.workdir}",
                f"--config={gunicorn_conf}",
                "bugsink.wsgi",
            ],
            cwd=self.workdir,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            pass_fds=(fd,),
            start_new_session=True,  # its own process group, so stop() reaches the workers too
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
        atexit.register(self.stop)

    def _wait_until_ready(self, deadline: float) -> None:
        url = f"{self.base_url}/health/ready"
        while True:
            self._check_alive()
            try:
                with _OPENER.open(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise BugsinkError(f"Bugsink did not answer on {url} in time\n{self.log_tail()}")
            time.sleep(0.1)

    def _check_alive(self) -> None:
        if self._process is None or self._process.poll() is not None:
            code = None if self._process is None else self._process.returncode
            raise BugsinkError(f"Bugsink's server is not running (exit {code})\n{self.log_tail()}")

    def _manage_parallel(self, deadline: float, *commands: list[str]) -> list[str]:
        """Run ``bugsink-manage`` commands side by side; their stdout, in order."""
        processes = [self._popen([_script("bugsink-manage"), *command]) for command in commands]
        try:
            return [self._finish(process, deadline) for process in processes]
        finally:
            for process in processes:
                if process.poll() is None:  # only after another one failed
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.communicate()

    def _run(self, deadline: float, argv: list[str]) -> str:
        return self._finish(self._popen(argv), deadline)

    def _popen(self, argv: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            argv,
            cwd=self.workdir,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def _finish(self, process: subprocess.Popen[str], deadline: float) -> str:
        argv = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(process.args))
        try:
            out, err = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            self._log_setup(argv, out, err)
            raise BugsinkError(f"`{argv}` timed out\n{self.log_tail()}") from None
        self._log_setup(argv, out, err)
        if process.returncode != 0:
            raise BugsinkError(f"`{argv}` failed ({process.returncode})\n{self.log_tail()}")
        return out

    def _log_setup(self, argv: str, out: str, err: str) -> None:
        with self._setup_log.open("a") as f:
            f.write(f"$ {argv}\n{out}{err}")


def _title(type_: str, value: str) -> str:
    """Bugsink's issue title (as in its UI): ``Type: first line of value``; a log message alone."""
    first_line = value.splitlines()[0] if value else ""
    if type_ == "Log Message":
        return first_line
    return f"{type_}: {first_line}" if first_line else type_


def _script(name: str) -> str:
    """A console script of the environment this Python runs in (the venv's bin/)."""
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise BugsinkError(f"{name} not found: is the `bugsink` package installed (dev extras)?")
    return found

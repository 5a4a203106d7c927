"""Resource attributes the zero-code side adds: who is sending (what Sentry shows as the
service, release, environment, ``contexts.runtime``, ``contexts.os`` and ``server_name``).

Only what the environment leaves unset: ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``
always win. Deliberately not the SDK's ``process`` detector: it records the command line, where
secrets are often passed, and a pid that is wrong in the workers a server forks.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import sys
from typing import Any

from opentelemetry.sdk.resources import OTELResourceDetector, Resource

# ``uvicorn helloagents.main:app``, ``gunicorn app:create_app()``: the app's module.
_APP_ARGUMENT = re.compile(r"(?P<module>[A-Za-z_][\w.]*):[A-Za-z_][\w.]*(\(.*\))?")


def default_attributes(argv: list[str] | None = None) -> dict[str, Any]:
    """The attributes to add, leaving out any the environment already sets."""
    wanted = {**_service(sys.argv if argv is None else argv), **_runtime()}
    already = OTELResourceDetector().detect().attributes
    return {key: value for key, value in wanted.items() if key not in already and value}


def _service(argv: list[str]) -> dict[str, Any]:
    return {
        "service.name": app_module(argv),
        "service.version": os.environ.get("SENTRY_RELEASE", ""),
        "deployment.environment.name": os.environ.get("SENTRY_ENVIRONMENT", ""),
    }


def app_module(argv: list[str]) -> str:
    """The top-level package of the module an ASGI/WSGI server is asked to load
    (``helloagents.main:app`` → ``helloagents``), else the script's name, else ""."""
    for argument in argv[1:]:
        match = _APP_ARGUMENT.fullmatch(argument)
        if match:
            return match["module"].split(".")[0]
    script = os.path.basename(argv[0]) if argv else ""
    return script[:-3] if script.endswith(".py") else ""


def _runtime() -> dict[str, Any]:
    return {
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": platform.python_version(),
        "process.runtime.description": sys.version,
        "os.type": platform.system().lower(),
        "os.version": platform.release(),
        "os.description": platform.platform(),
        "host.name": socket.gethostname(),
        "host.arch": platform.machine(),
    }


class _HashedOnce(Resource):
    """A resource that computes its hash once. The OTLP encoders group every span and log
    record by resource in a dict, and ``Resource.__hash__`` dumps all the attributes to JSON
    each time (9 µs per item for this module's attributes, measured); a resource never
    changes once made."""

    _hash: int | None = None

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = super().__hash__()
        return self._hash


def hash_once(resource: object) -> None:
    """Make the SDK's resource (shared by its providers) one that hashes once."""
    if type(resource) is Resource:
        resource.__class__ = _HashedOnce

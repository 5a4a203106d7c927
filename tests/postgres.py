"""A real PostgreSQL server for tests: Debian's ``initdb`` and ``pg_ctl`` in a throw-away data
directory, listening on a free port of 127.0.0.1 only, trusting local connections.

PostgreSQL refuses to run as root, so as root (CI containers) it runs as the ``postgres``
user, in a directory of its own under the system's temp dir (pytest's are root-only).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from examples.services import free_port


def _binary(name: str) -> str:
    installed = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))  # Debian's place
    found = shutil.which(name) or (installed[-1] if installed else None)
    if found is None:
        raise RuntimeError(f"{name} not found: install Debian's postgresql package")
    return found


@contextmanager
def postgres_server() -> Iterator[str]:
    """A running server; yields its SQLAlchemy URL (psycopg 3)."""
    as_user: list[str] = []
    directory = Path(tempfile.mkdtemp(prefix="otel-sidecar-pg-"))
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(directory, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = directory / "data", free_port()
    try:
        subprocess.run([*as_user, _binary("initdb"), "-D", str(data), "-A", "trust", "-U", "app"],
                       check=True, capture_output=True, timeout=120)  # fmt: skip
        options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1"
        subprocess.run([*as_user, _binary("pg_ctl"), "-D", str(data), "-o", options, "-w",
                        "-l", str(directory / "server.log"), "start"],
                       check=True, capture_output=True, timeout=120)  # fmt: skip
        try:
            yield f"postgresql+psycopg://app@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([*as_user, _binary("pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                           capture_output=True, timeout=60)  # fmt: skip
    finally:
        shutil.rmtree(directory, ignore_errors=True)

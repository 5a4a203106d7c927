"""HelloAgents with sentry-sdk in its process, initialised as the monitoring guide does: the
comparison point of ``bench/app_overhead.py`` and ``bench/sentry_parity.py`` (run as
``uvicorn sentry_app:app`` from bench/, with ``examples/`` on PYTHONPATH). sentry-sdk's FastAPI,
Starlette, SQLAlchemy and logging integrations enable themselves.

The example's enrichment calls (``set_user``, ``set_tag``...) are sentry_sdk's here: the port a
sentry-sdk user makes is one import, and this is the other direction of it.
"""

import os
import sys

import sentry_sdk

sentry_sdk.init(
    dsn=os.environ["SENTRY_DSN"],
    environment=os.environ.get("SENTRY_ENVIRONMENT", "bench"),
    traces_sample_rate=float(os.environ["SENTRY_TRACES_SAMPLE_RATE"]),
    send_default_pii=False,
    enable_logs=os.environ.get("SENTRY_ENABLE_LOGS") == "true",
)
sys.modules["otel_sidecar.instrumentation"] = sentry_sdk  # the example's one import

from helloagents.main import app  # noqa: E402  (after init, as sentry-sdk asks)

__all__ = ["app"]

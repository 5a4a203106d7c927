"""HelloAgents with sentry-sdk in its process, initialised as the monitoring guide does: the
comparison point of ``bench/app_overhead.py`` (run as ``uvicorn sentry_app:app`` from bench/,
with ``examples/`` on PYTHONPATH). sentry-sdk's FastAPI, Starlette and SQLAlchemy integrations
enable themselves."""

import os

import sentry_sdk

sentry_sdk.init(
    dsn=os.environ["SENTRY_DSN"],
    environment="bench",
    traces_sample_rate=float(os.environ["SENTRY_TRACES_SAMPLE_RATE"]),
    send_default_pii=False,
)

from helloagents.main import app  # noqa: E402  (after init, as sentry-sdk asks)

__all__ = ["app"]

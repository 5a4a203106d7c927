"""HelloAgents: a FastAPI + SQLAlchemy + structlog backend shaped like the service the monitoring
guide describes (users, lessons, code execution, agent runs calling an AI service). It has no
OpenTelemetry code: `opentelemetry-instrument uvicorn helloagents.main:app` instruments it."""

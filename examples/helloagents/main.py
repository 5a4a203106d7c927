"""The HTTP API. Run: ``uvicorn helloagents.main:app`` (from ``examples/``).

Users are identified by the ``X-User-Id`` header their gateway sets after authentication. The
Sentry-style enrichment (user, tags, contexts, a captured exception) is the monitoring guide's,
ported from sentry_sdk by changing its import.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from helloagents import ai, db, sandbox
from helloagents.logger import get_logger
from otel_sidecar.instrumentation import capture_exception, set_context, set_tag, set_user

VERSION = "1.0.0"
EXECUTION_TIMEOUT_S = float(os.environ.get("EXECUTION_TIMEOUT_S", "2"))
logger = get_logger(__name__)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    db.create_schema()
    logger.info("service_started", version=VERSION, ai_service=ai.configured())
    yield


app = FastAPI(title="HelloAgents", version=VERSION, lifespan=lifespan)
SessionDep = Annotated[Session, Depends(db.get_session)]


def current_user(session: SessionDep, x_user_id: Annotated[int | None, Header()] = None) -> db.User:
    user = session.get(db.User, x_user_id) if x_user_id is not None else None
    if user is None:
        raise HTTPException(401, "unknown user")
    set_user({"id": user.id, "email": user.email})
    return user


UserDep = Annotated[db.User, Depends(current_user)]


class Code(BaseModel):
    lesson_id: int
    code: str


class Prompt(BaseModel):
    prompt: str


@app.get("/api/users/me")
def me(user: UserDep) -> dict[str, Any]:
    return {"id": user.id, "name": user.name, "email": user.email}


@app.get("/api/lessons")
def lessons(session: SessionDep) -> list[dict[str, Any]]:
    return [{"id": ls.id, "title": ls.title} for ls in session.scalars(select(db.Lesson))]


@app.get("/api/lessons/{lesson_id}")
def lesson(lesson_id: int, session: SessionDep, user: UserDep) -> dict[str, Any]:
    found = session.get(db.Lesson, lesson_id)
    if found is None:
        raise HTTPException(404, "no such lesson")
    set_tag("lesson_id", lesson_id)
    logger.info("lesson_viewed", user_id=user.id, lesson_id=lesson_id)
    return {"id": found.id, "title": found.title, "content": found.content}


@app.post("/api/execute")
def execute_code(body: Code, session: SessionDep, user: UserDep) -> JSONResponse:
    set_tag("lesson_id", body.lesson_id)
    set_tag("feature", "code_execution")
    set_context(
        "code_execution",
        {"code_length": len(body.code), "language": "python", "timeout": EXECUTION_TIMEOUT_S},
    )
    started = time.perf_counter()
    try:
        output = sandbox.execute(body.code, EXECUTION_TIMEOUT_S)
    except sandbox.ExecutionTimeout as error:
        capture_exception(error)
        logger.warning("code_execution_timeout", user_id=user.id, lesson_id=body.lesson_id)
        return JSONResponse({"error": "execution timed out"}, status_code=408)
    elapsed_ms = (time.perf_counter() - started) * 1000
    submission = db.Submission(
        user_id=user.id, lesson_id=body.lesson_id, code=body.code, output=output, success=True
    )
    session.add(submission)
    session.commit()
    logger.info(
        "code_execution_completed",
        user_id=user.id,
        lesson_id=body.lesson_id,
        success=True,
        execution_time_ms=round(elapsed_ms, 2),
        output_length=len(output),
    )
    return JSONResponse({"output": output})


@app.post("/api/agents/{agent}/runs")
def run_agent(agent: str, body: Prompt, session: SessionDep, user: UserDep) -> dict[str, Any]:
    set_tag("feature", "agent_run")
    try:
        answer = ai.complete(agent, body.prompt)
    except ai.AIServiceError:
        logger.exception("agent_run_failed", user_id=user.id, agent=agent)
        raise HTTPException(502, "the AI service failed") from None
    session.add(db.AgentRun(user_id=user.id, agent=agent, prompt=body.prompt, answer=answer))
    session.commit()
    logger.info("agent_run_completed", user_id=user.id, agent=agent, answer_length=len(answer))
    return {"agent": agent, "answer": answer}


# --- health, in the monitoring guide's format ----------------------------------------------


def _components() -> dict[str, dict[str, str]]:
    try:
        db.ping()
        database = {"status": "healthy", "message": "Database connection successful"}
    except Exception as error:
        database = {"status": "unhealthy", "message": f"Database connection failed: {error}"}
    ai_service = (
        {"status": "configured", "message": "AI service API key is configured"}
        if ai.configured()
        else {"status": "disabled", "message": "AI service is not configured"}
    )
    return {
        "database": database,
        "sandbox_pool": {"status": "disabled", "message": "Container pool is not enabled"},
        "ai_service": ai_service,
    }


def _health(components: dict[str, dict[str, str]]) -> JSONResponse:
    healthy = all(c["status"] != "unhealthy" for c in components.values())
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "timestamp": datetime.now().isoformat(),
        "version": VERSION,
        "components": components,
    }
    return JSONResponse(body, status_code=200 if healthy else 503)


@app.get("/health")
def health() -> JSONResponse:
    return _health(_components())


@app.get("/health/ready")
def ready() -> JSONResponse:
    return _health({"database": _components()["database"]})


@app.get("/health/live")
def live() -> dict[str, str]:
    return {"status": "alive"}

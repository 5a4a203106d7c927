"""The AI service the agents call (an HTTP API; a stub of it in ai_stub.py)."""

from __future__ import annotations

import os

import httpx

AI_SERVICE_URL = os.environ.get("AI_SERVICE_URL", "")
AI_API_KEY = os.environ.get("AI_API_KEY", "")


class AIServiceError(Exception):
    """The AI service did not answer usefully."""


def configured() -> bool:
    return bool(AI_SERVICE_URL and AI_API_KEY)


def complete(agent: str, prompt: str) -> str:
    response = httpx.post(
        f"{AI_SERVICE_URL}/v1/complete",
        json={"agent": agent, "prompt": prompt},
        headers={"Authorization": f"Bearer {AI_API_KEY}"},
        timeout=10,
    )
    if response.status_code != 200:
        raise AIServiceError(f"AI service answered {response.status_code}")
    return str(response.json()["answer"])

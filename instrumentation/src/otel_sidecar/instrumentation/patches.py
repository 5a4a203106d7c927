"""Replacing a method of a class this distribution does not own: once, and reversibly.

The SDK's ``Span.record_exception``, ``logging.Logger.callHandlers``, structlog's
``BoundLoggerBase.__init__`` and uvicorn's ``Server.shutdown`` are wrapped this way; each
wrapper calls the original, and ``unpatch`` puts the original back (as instrumentors'
``uninstrument`` does).
"""

from __future__ import annotations

from typing import Any, Callable


def patch(owner: Any, name: str, wrap: Callable[[Any], Any]) -> None:
    """``owner.name = wrap(original)``, unless it is wrapped already."""
    original = getattr(owner, name)
    if hasattr(original, "original"):
        return
    wrapper = wrap(original)
    wrapper.original = original
    setattr(owner, name, wrapper)


def unpatch(owner: Any, name: str) -> None:
    current = getattr(owner, name)
    setattr(owner, name, getattr(current, "original", current))

"""What a piece of work leaves in reference cycles, for tests that the sidecar's refusals and
give-ups hold nothing of a request until the garbage collector runs (it runs rarely there)."""

from __future__ import annotations

import gc
from collections.abc import Callable
from types import FrameType


def cyclic_garbage(work: Callable[[], object]) -> list[object]:
    """Every object ``work`` left unreachable but in a cycle (``gc.DEBUG_SAVEALL``)."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        work()
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def frames_in(garbage: list[object], path_part: str = "") -> list[FrameType]:
    """The frames among ``garbage`` whose code's file path contains ``path_part``."""
    return [g for g in garbage if isinstance(g, FrameType) and path_part in g.f_code.co_filename]

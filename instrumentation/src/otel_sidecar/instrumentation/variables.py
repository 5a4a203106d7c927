"""Local variables as sentry-sdk trims them: the first :data:`MAX_VARIABLES` of a frame,
containers to as many items and :data:`MAX_DEPTH` levels, every value as its ``repr``, at most
:data:`MAX_REPR` characters. The ``repr`` of a builtin container, string or buffer is built
from its start only, so a huge local costs no more than a small one.
"""

from __future__ import annotations

import itertools
import sys
from array import array
from collections import OrderedDict, defaultdict, deque
from collections.abc import Iterable, Mapping
from typing import Any

MAX_VARIABLES = 10  # per frame, and items per container
MAX_DEPTH = 3
MAX_REPR = 1024
CUT = "..."


def cut(text: str, limit: int) -> str:
    """``text``, or its first characters and ``...`` in ``limit`` characters in all."""
    return text if len(text) <= limit else text[: limit - len(CUT)] + CUT


# Containers are only ever iterated with islice: copying a 5-million-entry dict to keep ten of
# its items would stall the request that failed.


def local_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
    items = itertools.islice(variables.items(), MAX_VARIABLES)
    return {str(name): _value(value, MAX_DEPTH) for name, value in items}


def _value(value: Any, depth: int) -> Any:
    if depth > 1 and isinstance(value, Mapping):
        items = itertools.islice(value.items(), MAX_VARIABLES)
        return {str(key): _value(item, depth - 1) for key, item in items}
    if depth > 1 and isinstance(value, (list, tuple, set, frozenset)):
        return [_value(item, depth - 1) for item in itertools.islice(value, MAX_VARIABLES)]
    return bounded_repr(value)


def bounded_repr(value: Any) -> str:
    try:
        text = _bounded_repr(value, MAX_REPR, set())
    except Exception:
        return "<broken repr>"
    return cut(text, MAX_REPR)


# The builtin reprs _bounded_repr writes itself (a subclass that keeps one reads the same).
_SLICED = (str, bytes, bytearray, array)  # cut before repr: each item is a character or more
_SLICED_REPRS = {kind.__repr__ for kind in _SLICED}
_BRACKETS = {list.__repr__: ("[", "]"), tuple.__repr__: ("(", ")"), dict.__repr__: ("{", "}")}
_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))
_CONTAINER_REPRS = {
    *_BRACKETS,
    set.__repr__,
    frozenset.__repr__,
    deque.__repr__,
    defaultdict.__repr__,
    OrderedDict.__repr__,
    *(view.__repr__ for view in _VIEWS),
}


def _bounded_repr(value: Any, limit: int, active: set[int]) -> str:
    """``repr(value)`` when it has at most ``limit`` characters; else more than ``limit`` of
    its first ones (so the caller's cut marks it), made from that many items at most, for the
    builtin containers, strings and buffers, however large. Other objects get their own
    ``repr``: how long that takes is theirs to say. ``active`` holds the containers being
    written, for one that holds itself (written ``[...]`` as ``repr`` writes it)."""
    limit = max(limit, 0)  # what is left once a long key is written; a negative slice is huge
    method = type(value).__repr__
    if method in _SLICED_REPRS and isinstance(value, _SLICED):
        return repr(value[: limit + 1] if len(value) > limit else value)
    if method not in _CONTAINER_REPRS:
        return repr(value)
    if id(value) in active:  # what repr writes for a container inside itself
        return "[...]" if method is list.__repr__ else "{...}" if isinstance(value, dict) else "..."
    active.add(id(value))
    try:
        return _container_repr(value, limit, active)
    finally:
        active.discard(id(value))


def _container_repr(value: Any, limit: int, active: set[int]) -> str:
    method = type(value).__repr__
    name = type(value).__name__
    if method in _BRACKETS:
        left, right = _BRACKETS[method]
        if isinstance(value, dict):
            return left + _items(value.items(), limit - 1, active, mapping=True) + right
        inner = _items(value, limit - 1, active)
        single = isinstance(value, tuple) and len(value) == 1
        return left + inner + ("," if single else "") + right
    if method is defaultdict.__repr__:
        head = f"{name}({_bounded_repr(value.default_factory, limit, active)}, {{"
        return head + _items(value.items(), limit - len(head), active, mapping=True) + "})"
    if method is OrderedDict.__repr__:
        if not value:
            return f"{name}()"
        if sys.version_info >= (3, 12):  # OrderedDict({...}) since 3.12, a list of pairs before
            inner = _items(value.items(), limit - len(name) - 2, active, mapping=True)
            return f"{name}({{{inner}}})"
        return f"{name}([" + _items(value.items(), limit - len(name) - 2, active) + "])"
    if isinstance(value, _VIEWS):
        return f"{name}([" + _items(value, limit - len(name) - 2, active) + "])"
    if isinstance(value, (set, frozenset)):
        if not value:
            return f"{name}()"
        inner = _items(value, limit - len(name) - 2, active)
        return "{" + inner + "}" if type(value) is set else f"{name}({{{inner}}})"
    # a deque
    maxlen = "" if value.maxlen is None else f", maxlen={value.maxlen}"
    return f"{name}([" + _items(value, limit - len(name) - 2, active) + "]" + maxlen + ")"


def _items(items: Iterable[Any], limit: int, active: set[int], mapping: bool = False) -> str:
    """The comma-separated reprs of ``items`` (a mapping's ``(key, value)`` pairs written
    ``key: value`` with ``mapping``) until past ``limit`` characters, then ``...``."""
    limit = max(limit, 0)
    written: list[str] = []
    length = 0
    for item in itertools.islice(items, limit + 1):  # each item takes a character
        if length > limit:
            written.append(CUT)
            break
        room = limit - length
        if mapping:
            key = _bounded_repr(item[0], room, active)
            text = f"{key}: {_bounded_repr(item[1], room - len(key) - 2, active)}"
        else:
            text = _bounded_repr(item, room, active)
        written.append(text)
        length += len(text) + 2
    return ", ".join(written)

"""Typed settings: the mechanism that turns a YAML mapping into a frozen dataclass.

A component declares its settings as a frozen dataclass whose fields carry their defaults and
limits (``setting(200, minimum=1)``); :func:`build` converts and validates a raw mapping against
it. Every error names the YAML path of the offending key (``processors.batch.timeout: ...``) and
never echoes the value of a field marked ``secret`` (a DSN, a header).
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = [
    "ConfigError",
    "Duration",
    "Endpoint",
    "build",
    "expand_env",
    "setting",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration the sidecar refuses to start with; the message starts with the YAML path."""


class Duration(float):
    """Seconds, written in YAML as ``200ms``, ``5s``, ``1m`` or ``1h`` (collector durations)."""


class Endpoint(str):
    """``host:port`` to listen on or connect to; port 0 asks the OS for a free one."""

    @property
    def host(self) -> str:
        return self.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.rpartition(":")[2])


def setting(
    default: Any = dataclasses.MISSING,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    secret: bool = False,
    factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with the limits :func:`build` checks when the value comes from YAML."""
    meta = {"minimum": minimum, "maximum": maximum, "choices": choices, "secret": secret}
    shown = not secret  # a secret stays out of repr(), so out of tracebacks and debug logs
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta, repr=shown)
    return dataclasses.field(default=default, metadata=meta, repr=shown)


_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(raw: Any, path: str = "", environ: Mapping[str, str] | None = None) -> Any:
    """Replace ``${env:VAR}`` and ``${env:VAR:-default}`` in every string of a YAML tree.

    An unset variable without a default is an error rather than a silent empty string: a
    sidecar started without its DSN or endpoint should say so at start, not drop data later.
    """
    env = os.environ if environ is None else environ
    if isinstance(raw, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{path}: environment variable {name} is not set "
                f"(write ${{env:{name}:-}} to allow an empty default)"
            )

        return _ENV_REF.sub(substitute, raw)
    if isinstance(raw, dict):
        return {key: expand_env(value, _join(path, str(key)), env) for key, value in raw.items()}
    if isinstance(raw, list):
        return [expand_env(value, f"{path}[{index}]", env) for index, value in enumerate(raw)]
    return raw


def build(cls: type[T], raw: Any, path: str) -> T:
    """Convert ``raw`` (a mapping from YAML, or None for all defaults) into ``cls``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or '<root>'}: expected a mapping, got {_kind(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(str(key) for key in raw if key not in fields)
    if unknown:
        raise ConfigError(
            f"{_join(path, unknown[0])}: unknown key (expected one of: {', '.join(sorted(fields))})"
        )
    hints = typing.get_type_hints(cls)
    values = {
        name: _convert(hints[name], raw[name], _join(path, name), fields[name].metadata)
        for name in fields
        if name in raw
    }
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{_join(path, missing[0])}: required")
    return cls(**values)


def _convert(kind: Any, value: Any, path: str, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        return build(kind, value, path)  # type: ignore[arg-type]
    if origin is dict:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {_kind(value)}")
        _, item_kind = typing.get_args(kind)
        return {
            str(key): _convert(item_kind, item, _join(path, str(key)), meta)
            for key, item in value.items()
        }
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {_kind(value)}")
        item_kind = typing.get_args(kind)[0]
        return tuple(
            _convert(item_kind, item, f"{path}[{index}]", meta) for index, item in enumerate(value)
        )
    if origin in (typing.Union, types.UnionType):
        option = next(o for o in typing.get_args(kind) if o is not type(None))
        if value is None and not dataclasses.is_dataclass(option):
            return None
        # A section that is present but empty (`grpc:`) is enabled with its defaults.
        return _convert(option, value, path, meta)
    converter = _SCALARS.get(kind)
    if converter is None:
        raise TypeError(f"{path}: no converter for {kind!r}")
    converted = converter(value, path, meta.get("secret", False))
    _check_limits(converted, path, meta)
    return converted


def _check_limits(value: Any, path: str, meta: Mapping[str, Any]) -> None:
    minimum, maximum, choices = meta.get("minimum"), meta.get("maximum"), meta.get("choices")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{path}: must be at least {_number(minimum)}, got {_number(value)}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{path}: must be at most {_number(maximum)}, got {_number(value)}")
    if choices is not None and value not in choices:
        shown = "" if meta.get("secret") else f", got {value!r}"
        raise ConfigError(f"{path}: must be one of {', '.join(choices)}{shown}")


def _to_str(value: Any, path: str, secret: bool) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{path}: expected a string, got {_kind(value)}")
    return str(value)


def _to_bool(value: Any, path: str, secret: bool) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"{path}: expected true or false, got {_shown(value, secret)}")


def _to_int(value: Any, path: str, secret: bool) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        return int(value)
    raise ConfigError(f"{path}: expected an integer, got {_shown(value, secret)}")


def _to_float(value: Any, path: str, secret: bool) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if number == number and abs(number) != float("inf"):
                return number
    raise ConfigError(f"{path}: expected a number, got {_shown(value, secret)}")


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _to_duration(value: Any, path: str, secret: bool) -> Duration:
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return Duration(0)
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(
            f"{path}: expected a duration such as 200ms, 5s or 1m, got {_shown(value, secret)}"
        )
    return Duration(float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def _to_endpoint(value: Any, path: str, secret: bool) -> Endpoint:
    text = value if isinstance(value, str) else ""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{path}: expected host:port, got {_shown(value, secret)}")
    return Endpoint(text)


_SCALARS = {
    str: _to_str,
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    Duration: _to_duration,
    Endpoint: _to_endpoint,
}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


def _shown(value: Any, secret: bool) -> str:
    return "a secret value (not shown)" if secret else repr(value)


def _number(value: float) -> str:
    return f"{value:g}"

"""Typed reading of configuration tables into frozen dataclasses.

Every error is a :class:`~intentflow.errors.ConfigError` that names the key,
e.g. ``model.lr: expected a number, got 'fast'``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from intentflow.errors import ConfigError

__all__ = ["InvalidFieldError", "build_dataclass", "coerce_value", "require_table"]

T = TypeVar("T")


class InvalidFieldError(ConfigError):
    """A field of a config dataclass holds a bad value (raised by ``__post_init__``)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def require_table(data: object, where: str) -> Mapping[str, Any]:
    """Return ``data`` as a mapping, or raise naming ``where``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
    return data


def coerce_value(want: Any, value: Any, where: str) -> Any:
    """``value`` checked against the type hint ``want`` (bool, int, float, str, their
    optionals, tuple of str); a :class:`ConfigError` names ``where`` otherwise.

    >>> coerce_value(float, 3, "model.lr")
    3.0
    """
    optional = False
    if isinstance(want, types.UnionType) or typing.get_origin(want) is typing.Union:
        args = [a for a in typing.get_args(want) if a is not type(None)]
        optional = len(args) < len(typing.get_args(want))
        want = args[0]
    if value is None and optional:
        return None
    if want is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if want is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if want is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: expected a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if want is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if typing.get_origin(want) is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    raise TypeError(f"{where}: unsupported field type {want!r}")  # pragma: no cover


def build_dataclass(cls: type[T], data: object, where: str) -> T:
    """Build the frozen dataclass ``cls`` from a TOML table, checking every key."""
    table = require_table(data, where)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r} (known keys: {', '.join(names)})")
        kwargs[key] = coerce_value(hints[key], value, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except InvalidFieldError as err:
        raise ConfigError(f"{where}.{err.key}: {err.reason}") from err

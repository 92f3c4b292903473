"""Event filters: conditions on props, and the routes they lead to.

A feature's filter is its event types plus ``where`` conditions. Which
features an event feeds depends only on its type and on the props the
conditions read, and only through a few *classes* of values: for equality,
whether the value is one of the listed ones (and which); for comparisons,
the outcome of each comparison. :func:`classify` maps a prop value to its
class, so that routes can be memoised per (type, classes) with a bounded
number of keys.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Final, NamedTuple

from intentflow.features.spec import Condition

__all__ = [
    "BOOL_KEYS",
    "Conds",
    "Group",
    "KeyPart",
    "Route",
    "classify",
    "compile_conditions",
    "holds",
    "key_parts",
    "norm",
    "route_for",
]

#: Booleans are compared under these keys so that true never equals 1
#: (a JSON prop value is never a tuple).
BOOL_KEYS: Final = {True: ("bool", True), False: ("bool", False)}

_COMPARE: Final[dict[str, Callable[[float, float], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

#: (prop, op, arg): op "in" with a frozenset of normalised values, or a
#: comparison with a number.
Conds = tuple[tuple[str, str, object], ...]


def norm(x: object) -> object:
    """A prop value as filters see it: str, int, float (booleans as BOOL_KEYS), else None.

    >>> norm("a"), norm(2), norm(True) == norm(1), norm(float("nan")), norm([1])
    ('a', 2, False, None, None)
    """
    t = type(x)
    if t is str or t is int:
        return x
    if t is bool:
        return BOOL_KEYS[x]  # type: ignore[index]
    if t is float and x == x:
        return x
    return None


def compile_conditions(conditions: tuple[Condition, ...]) -> Conds:
    """Spec conditions as ``(prop, op, arg)``, in a canonical order."""
    out: list[tuple[str, str, object]] = []
    for c in conditions:
        if c.op == "in":
            arg: object = frozenset(norm(v) for v in c.values)
        else:
            arg = c.values[0]
        out.append((c.prop, c.op, arg))
    return tuple(sorted(out, key=lambda c: (c[0], c[1], repr(c[2]) if c[1] != "in" else "")))


def holds(x: object, op: str, arg: object) -> bool:
    """Whether a normalised value ``x`` passes one condition."""
    if op == "in":
        return x in arg  # type: ignore[operator]
    t = type(x)
    if t is not int and t is not float:
        return False
    return _COMPARE[op](x, arg)  # type: ignore[arg-type]


class Route(NamedTuple):
    """What an event contributes to one table once its filters are decided.

    ``unit_cols`` take 1.0 (``ones`` is a tuple of 1.0 of the same length);
    ``valued`` are ``(column, value prop)``; ``distinct`` are ``(table,
    source)`` with source "entity_id", "account_id" or a prop name.
    """

    unit_cols: tuple[int, ...]
    ones: tuple[float, ...]
    valued: tuple[tuple[int, str], ...]
    distinct: tuple[tuple[int, str], ...]


class Group(NamedTuple):
    """Targets that share one filter: every condition of ``conds`` holds."""

    conds: Conds
    route: Route


def route_for(groups: Iterable[Group], values: Mapping[str, object]) -> Route:
    """The route of an event whose normalised filter props are ``values``."""
    units: list[int] = []
    valued: list[tuple[int, str]] = []
    distinct: list[tuple[int, str]] = []
    for conds, route in groups:
        if all(holds(values.get(prop), op, arg) for prop, op, arg in conds):
            units.extend(route.unit_cols)
            valued.extend(route.valued)
            distinct.extend(route.distinct)
    return Route(tuple(units), (1.0,) * len(units), tuple(valued), tuple(distinct))


class KeyPart(NamedTuple):
    """How one prop enters a route key: the values equality looks for, the comparisons."""

    prop: str
    equal: frozenset[object]
    compare: tuple[tuple[str, float], ...]


def key_parts(groups: Iterable[Group]) -> tuple[KeyPart, ...]:
    """The props the conditions of ``groups`` read, with what matters about each."""
    equal: dict[str, set[object]] = {}
    compare: dict[str, set[tuple[str, float]]] = {}
    for conds, _ in groups:
        for prop, op, arg in conds:
            equal.setdefault(prop, set())
            compare.setdefault(prop, set())
            if op == "in":
                equal[prop].update(arg)  # type: ignore[arg-type]
            else:
                compare[prop].add((op, arg))  # type: ignore[arg-type]
    return tuple(
        KeyPart(prop, frozenset(equal[prop]), tuple(sorted(compare[prop])))
        for prop in sorted(equal)
    )


def classify(x: object, part: KeyPart) -> object:
    """The class of normalised value ``x``: equal values matter as themselves, others as None.

    Comparisons add their outcomes, so values that every condition treats
    alike share a class.
    """
    cls = x if x in part.equal else None
    if not part.compare:
        return cls
    t = type(x)
    if t is not int and t is not float:
        return (cls, None)
    return (cls, tuple(_COMPARE[op](x, v) for op, v in part.compare))  # type: ignore[arg-type]

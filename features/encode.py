"""Encode a batch of events for the kernels: one Python pass, no per-event kernel calls.

For each event the filters decide a route per table (which signal columns
take 1.0, which take a numeric prop, which distinct tables take a value).
Routes depend only on the event type and the classes of the props the
filters read (:func:`~intentflow.features.filters.classify`), so they are
memoised under ``(type, classes)`` and numbered; an event then costs a dict
lookup and a few list appends (plus a prop read for valued or distinct
features). The kernels expand the route ids.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from intentflow.events import Event
from intentflow.features.filters import (
    BOOL_KEYS,
    Group,
    KeyPart,
    classify,
    key_parts,
    norm,
    route_for,
)
from intentflow.features.program import TableProgram
from intentflow.features.spec import VALUE_LIMIT

__all__ = ["Batch", "BatchEncoder", "Encoded", "KeyIndex", "str_hash", "value_hash"]

_ROUTE_LIMIT: Final = 4096
_HASH_LIMIT: Final = 1 << 13


@dataclass
class Encoded:
    """One table's view of a batch.

    Event ``i`` is on row ``rows[i]`` (-1: no key); it contributes ``v_val[j]``
    to column ``v_col[j]`` for every ``j`` with ``v_evt[j] == i`` and hash
    ``d_hash[j]`` to distinct table ``d_tab[j]`` for every ``j`` with
    ``d_evt[j] == i``. Contributions of 1.0 come from the event's route.
    """

    rows: list[int] = field(default_factory=list)
    v_evt: list[int] = field(default_factory=list)
    v_col: list[int] = field(default_factory=list)
    v_val: list[float] = field(default_factory=list)
    d_evt: list[int] = field(default_factory=list)
    d_tab: list[int] = field(default_factory=list)
    d_hash: list[int] = field(default_factory=list)


@dataclass
class Batch:
    """A batch encoded for both tables: timestamps, route ids, per-table parts."""

    ts: list[int]
    routes: list[int]
    entity: Encoded
    account: Encoded


class KeyIndex(Protocol):
    """Key -> row of one table (``row`` allocates unseen keys); ``hashes[row]`` of each key."""

    @property
    def index(self) -> dict[str, int]: ...

    @property
    def hashes(self) -> Sequence[int]: ...

    def row(self, key: str) -> int: ...


def value_hash(x: object) -> int | None:
    """Stable signed 64-bit hash of a distinct value (None: not countable).

    Strings by their UTF-8 text, booleans apart, numbers by their float64
    value (1 and 1.0 are the same value); non-finite numbers are ignored.

    >>> value_hash("a") == value_hash("a") != value_hash("b")
    True
    >>> value_hash(1) == value_hash(1.0) != value_hash(True), value_hash(float("nan"))
    (True, None)
    """
    t = type(x)
    if t is str:
        return str_hash(x)  # type: ignore[arg-type]
    if t is bool:
        data = b"b1" if x else b"b0"
    elif t is int or t is float:
        try:
            f = float(x)  # type: ignore[arg-type]
        except OverflowError:
            return None
        if not math.isfinite(f):
            return None
        data = b"n" + struct.pack("<d", f + 0.0)
    else:
        return None
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def str_hash(x: str) -> int:
    """:func:`value_hash` of a string."""
    data = b"s" + x.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


class _HashCache(dict[object, int | None]):
    """Bounded memo of :func:`value_hash`, keyed by :func:`_hash_key`."""

    def __missing__(self, key: object) -> int | None:
        if len(self) >= _HASH_LIMIT:
            self.clear()
        h = self[key] = value_hash(key[1] if type(key) is tuple else key)
        return h


def _hash_key(x: object) -> object:
    """Strings key themselves, other scalars go with their type (True is not 1), others None."""
    t = type(x)
    if t is str:
        return x
    if t is int or t is float or t is bool:
        return (t, x)
    return None


def _add_values(
    i: int, props: Mapping[str, Any], valued: tuple[tuple[int, str], ...], enc: Encoded
) -> None:
    """Append numeric prop values: finite numbers, clamped to ±VALUE_LIMIT; others skip."""
    for col, prop in valued:
        raw: Any = props.get(prop)
        t = type(raw)
        if t is int:
            v = float(min(max(raw, -VALUE_LIMIT), VALUE_LIMIT))
        elif t is float and math.isfinite(raw):
            v = min(max(raw, -VALUE_LIMIT), VALUE_LIMIT)
        else:
            continue
        enc.v_evt.append(i)
        enc.v_col.append(col)
        enc.v_val.append(v)


def _plan(parts: tuple[KeyPart, ...]) -> tuple[str | None, frozenset[object], tuple[KeyPart, ...]]:
    """``(prop, values, parts)``: prop is set when one equality-only prop decides the route."""
    if len(parts) == 1 and not parts[0].compare:
        return parts[0].prop, parts[0].equal, parts
    return None, frozenset(), parts


_Extra = tuple[tuple[tuple[int, str], ...], tuple[tuple[int, str], ...]]


class BatchEncoder:
    """Turns events into a :class:`Batch` for the entity and account tables.

    Routes get small integer ids; the kernels read each route's 1.0
    contributions from :meth:`route_table`. Holds only derived, bounded memos
    (routes and value hashes): it is rebuilt, never snapshotted.
    """

    def __init__(self, entity: TableProgram, account: TableProgram) -> None:
        self._programs = (entity, account)
        types = {*entity.by_type, *account.by_type}
        self._parts = {t: self._key_parts(t) for t in types}
        self._any_parts = self._key_parts(None)
        self._plans = {t: _plan(parts) for t, parts in self._parts.items()}
        self._any_plan = _plan(self._any_parts)
        self._hashes = _HashCache()
        self._reset_routes()

    def _key_parts(self, etype: str | None) -> tuple[KeyPart, ...]:
        groups: list[Group] = []
        for p in self._programs:
            groups.extend(p.by_type.get(etype, p.any_type) if etype else p.any_type)
        return key_parts(groups)

    def _reset_routes(self) -> None:
        self._route_ids: dict[object, int] = {}
        # per table: CSR of 1.0 columns per route id, and per route id the
        # (valued, distinct) targets or None when both are empty
        self._unit_ptr: tuple[list[int], list[int]] = ([0], [0])
        self._unit_col: tuple[list[int], list[int]] = ([], [])
        self._extras: tuple[list[_Extra | None], list[_Extra | None]] = ([], [])
        self._tables: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None] = [
            None,
            None,
        ]

    def _new_route(self, key: object, etype: str, props: Mapping[str, Any]) -> int:
        parts = self._parts.get(etype, self._any_parts)
        values = {part.prop: norm(props.get(part.prop)) for part in parts}
        rid = len(self._route_ids)
        for t, p in enumerate(self._programs):
            units, _, valued, distinct = route_for(p.by_type.get(etype, p.any_type), values)
            self._unit_col[t].extend(units)
            self._unit_ptr[t].append(len(self._unit_col[t]))
            self._extras[t].append((valued, distinct) if valued or distinct else None)
            self._tables[t] = None
        self._route_ids[key] = rid
        return rid

    def route_table(self, table: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """``(route_ptr, route_col)`` of table 0 (entity) or 1 (account)."""
        cached = self._tables[table]
        if cached is None:
            cached = (
                np.array(self._unit_ptr[table], dtype=np.int64),
                np.array(self._unit_col[table], dtype=np.int64),
            )
            self._tables[table] = cached
        return cached

    def _extra(
        self, i: int, ev: Event, extra: _Extra, enc: Encoded, e_hash: int, a_hash: int | None
    ) -> None:
        """Valued and distinct contributions; key hashes come from the tables' rows."""
        valued, distinct = extra
        if valued:
            _add_values(i, ev.props, valued, enc)
        for tab, source in distinct:
            if source == "entity_id":
                h: int | None = e_hash
            elif source == "account_id":
                h = a_hash
            else:
                h = self._hashes[_hash_key(ev.props.get(source))]
            if h is not None:
                enc.d_evt.append(i)
                enc.d_tab.append(tab)
                enc.d_hash.append(h)

    def encode(self, events: Sequence[Event], entity: KeyIndex, account: KeyIndex | None) -> Batch:
        """Encode ``events``; rows come from ``entity`` and ``account`` (None: no accounts)."""
        if len(self._route_ids) >= _ROUTE_LIMIT:
            self._reset_routes()
        batch = Batch([], [], Encoded(), Encoded())
        ts_append, rid_append = batch.ts.append, batch.routes.append
        e_get, a_get = entity.index.get, (account.index.get if account else None)
        e_hashes = entity.hashes
        e_extras, a_extras = self._extras
        e_append, a_append = batch.entity.rows.append, batch.account.rows.append
        plans, any_plan = self._plans, self._any_plan
        route_ids = self._route_ids
        for i, ev in enumerate(events):
            etype = ev.type
            props = ev.props
            prop, equal, parts = plans.get(etype, any_plan)
            if prop is not None:  # one prop, equality only: the common case, inlined
                x: Any = props.get(prop)
                tx = type(x)
                if tx is bool:
                    x = BOOL_KEYS[x]
                elif tx is not str and tx is not int and tx is not float:
                    x = None
                key: Any = (etype, x if x in equal else None)
            elif not parts:
                key = etype
            else:
                key = (etype, *[classify(norm(props.get(p.prop)), p) for p in parts])
            rid = route_ids.get(key)
            if rid is None:
                rid = self._new_route(key, etype, props)
            ts_append(ev.ts_ms)
            rid_append(rid)
            k = ev.entity_id
            row = e_get(k)
            if row is None:
                row = entity.row(k)
            e_append(row)
            k = ev.account_id  # type: ignore[assignment]
            arow = a_get(k) if a_get is not None and k else None
            if arow is None and account is not None and k:
                arow = account.row(k)
            extra = e_extras[rid]
            if extra is not None:
                a_hash = None if arow is None else account.hashes[arow]  # type: ignore[union-attr]
                self._extra(i, ev, extra, batch.entity, e_hashes[row], a_hash)
            if account is None:
                continue
            if arow is None:
                a_append(-1)
                continue
            a_append(arow)
            extra = a_extras[rid]
            if extra is not None:
                self._extra(i, ev, extra, batch.account, e_hashes[row], account.hashes[arow])
        return batch

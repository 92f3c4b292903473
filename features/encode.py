"""Encode a batch of events for the kernels: bulk passes, no per-event kernel calls.

For each event the filters decide a route per table (which signal columns
take 1.0, which take a numeric prop, which distinct tables take a value).
Routes depend only on the event type and the classes of the props the
filters read (:func:`~intentflow.features.filters.classify`), so they are
memoised under ``(type, classes)`` and numbered. A batch is encoded column
by column: route ids of unfiltered types and rows of known keys come from
one ``map`` over a dict each; only events of filtered types, new keys and
events whose route has valued or distinct targets take a narrower second
pass. The kernels expand the route ids.
"""

from __future__ import annotations

import math
import struct
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Final, NamedTuple, Protocol, TypeAlias, cast

import numpy as np
import numpy.typing as npt
from xxhash import xxh3_64_intdigest

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

__all__ = [
    "Batch",
    "BatchEncoder",
    "Encoded",
    "Floats",
    "Ints",
    "KeyIndex",
    "str_hash",
    "str_hash_array",
    "str_hashes",
    "value_hash",
]

_ROUTE_LIMIT: Final = 4096
_HASH_LIMIT: Final = 1 << 13
#: Distinct sources whose hashes the key tables hold.
_KEY_SOURCES: Final = frozenset({"entity_id", "account_id"})
#: XXH3 seed of non-string distinct values (strings use seed 0).
_OTHER_SEED: Final = 1


#: Integer columns of a batch: lists, or int64 arrays where built in bulk.
Ints: TypeAlias = "list[int] | npt.NDArray[np.int64]"
#: Float columns of a batch: lists, or float64 arrays where built in bulk.
Floats: TypeAlias = "list[float] | npt.NDArray[np.float64]"


@dataclass
class Encoded:
    """One table's view of a batch.

    Event ``i`` is on row ``rows[i]`` (-1: no key); it contributes ``v_val[j]``
    to column ``v_col[j]`` for every ``j`` with ``v_evt[j] == i`` and hash
    ``d_hash[j]`` to distinct table ``d_tab[j]`` for every ``j`` with
    ``d_evt[j] == i``. Contributions of 1.0 come from the event's route.
    """

    rows: Ints = field(default_factory=list)
    v_evt: Ints = field(default_factory=list)
    v_col: Ints = field(default_factory=list)
    v_val: Floats = field(default_factory=list)
    d_evt: Ints = field(default_factory=list)
    d_tab: Ints = field(default_factory=list)
    d_hash: Ints = field(default_factory=list)


@dataclass
class Batch:
    """A batch encoded for both tables: timestamps, route ids, per-table parts."""

    ts: list[int]
    routes: Ints
    entity: Encoded
    account: Encoded


class KeyIndex(Protocol):
    """Key -> row of one table; ``hashes[row]`` is the :func:`str_hash` of the row's key."""

    @property
    def hashes(self) -> array[int]: ...

    def rows(self, keys: Sequence[str]) -> npt.NDArray[np.int64]:
        """Row of each key; unseen keys get rows in order of first sight."""
        ...

    def account_rows(self, keys: Sequence[str | None]) -> tuple[npt.NDArray[np.int64], int]:
        """Row of each key, -1 for a missing (None or empty) key; and how many are missing."""
        ...


def value_hash(x: object) -> int | None:
    """Stable signed 64-bit hash of a distinct value (None: not countable).

    Strings by their UTF-8 text, booleans apart, numbers by their float64
    value (1 and 1.0 are the same value); non-finite numbers are ignored.
    XXH3-64: strings under seed 0, other values under seed 1.

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
    return _signed(xxh3_64_intdigest(data, _OTHER_SEED))


def _signed(h: int) -> int:
    return h - (1 << 64) if h >= 1 << 63 else h


def str_hash(x: str) -> int:
    """:func:`value_hash` of a string."""
    return _signed(xxh3_64_intdigest(x.encode("utf-8", "surrogatepass")))


def str_hashes(keys: Sequence[str]) -> list[int]:
    """:func:`str_hash` of each key."""
    return cast("list[int]", str_hash_array(keys).tolist())


def str_hash_array(keys: Sequence[str], seed: int = 0) -> npt.NDArray[np.int64]:
    """Signed XXH3-64 of each key's UTF-8 text under ``seed`` (0: :func:`str_hash`)."""
    try:
        data = list(map(str.encode, keys))
    except UnicodeEncodeError:  # lone surrogates
        data = [x.encode("utf-8", "surrogatepass") for x in keys]
    n = len(data)
    h = np.fromiter(map(xxh3_64_intdigest, data, repeat(seed, n)), dtype=np.uint64, count=n)
    return h.view(np.int64)


class _HashCache(dict[object, int | None]):
    """Bounded memo of :func:`value_hash`: strings key themselves, other scalars ``(type, x)``."""

    def __missing__(self, key: object) -> int | None:
        if len(self) >= _HASH_LIMIT:
            self.clear()
        h = self[key] = value_hash(key[1] if type(key) is tuple else key)
        return h


def _plan(parts: tuple[KeyPart, ...]) -> tuple[str | None, frozenset[object], tuple[KeyPart, ...]]:
    """``(prop, values, parts)``: prop is set when one equality-only prop decides the route."""
    if len(parts) == 1 and not parts[0].compare:
        return parts[0].prop, parts[0].equal, parts
    return None, frozenset(), parts


#: The key hashes of an absent account table.
_NO_HASHES: Final = array("q")

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
        # per table and route id: a small int standing for its extras (-1: None), so
        # that a batch's distinct kinds are a set of ints, not of nested tuples
        self._kind: tuple[list[int], list[int]] = ([], [])
        self._kind_extras: tuple[list[_Extra], list[_Extra]] = ([], [])  # kind -> extras
        self._tables: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None] = [
            None,
            None,
        ]
        self._has_extras: list[npt.NDArray[np.bool_] | None] = [None, None]
        self._one_value: list[_OneValue | None] = [None, None]
        # types routed by one equality-only prop: their prop; and the route id
        # of (type, value) for string or absent values seen (see _routes)
        self._prop_of: dict[str, str] = {
            t: prop for t, (prop, _, _) in self._plans.items() if prop is not None
        }
        self._by_value: dict[tuple[str, object], int] = {}

    def _new_route(self, key: object, etype: str, props: Mapping[str, Any]) -> int:
        parts = self._parts.get(etype, self._any_parts)
        values = {part.prop: norm(props.get(part.prop)) for part in parts}
        rid = len(self._route_ids)
        for t, p in enumerate(self._programs):
            units, _, valued, distinct = route_for(p.by_type.get(etype, p.any_type), values)
            self._unit_col[t].extend(units)
            self._unit_ptr[t].append(len(self._unit_col[t]))
            extra = (valued, distinct) if valued or distinct else None
            self._extras[t].append(extra)
            kinds = self._kind_extras[t]
            if extra is not None and extra not in kinds:  # a handful of kinds per spec
                kinds.append(extra)
            self._kind[t].append(-1 if extra is None else kinds.index(extra))
            self._tables[t] = None
            self._has_extras[t] = None
            self._one_value[t] = None
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

    def encode(self, events: Sequence[Event], entity: KeyIndex, account: KeyIndex | None) -> Batch:
        """Encode ``events``; rows come from ``entity`` and ``account`` (None: no accounts).

        Columns are read in bulk; only events of filtered types, new keys and
        routes with valued or distinct targets take a second, narrower pass.
        """
        if len(self._route_ids) >= _ROUTE_LIMIT:
            self._reset_routes()
        rid_a = self._routes(events)
        erows = entity.rows([ev.entity_id for ev in events])
        if account is None:
            keys = _Keys(erows, entity.hashes, None, _NO_HASHES, 0)
        else:
            arows, missing = account.account_rows([ev.account_id for ev in events])
            keys = _Keys(erows, entity.hashes, arows, account.hashes, missing)
        used = np.flatnonzero(np.bincount(rid_a)).tolist()  # the route ids in the batch
        e_enc, a_enc = Encoded(keys.row_a), Encoded()
        self._add_extras(0, events, rid_a, used, keys, e_enc)
        if keys.arow_a is not None:
            a_enc.rows = keys.arow_a
            self._add_extras(1, events, rid_a, used, keys, a_enc)
        return Batch([ev.ts_ms for ev in events], rid_a, e_enc, a_enc)

    def _routes(self, events: Sequence[Event]) -> npt.NDArray[np.int64]:
        """Route id of each event, looked up in bulk under ``(type, value)``.

        ``value`` is the event's value of the one equality-only prop that
        routes its type (of a prop named "" for other types: absent, so
        ``None``). Pairs not memoised, or a batch with an unhashable value,
        go one by one; only pairs whose route depends on nothing else, with
        a string or absent value, are memoised.
        """
        n = len(events)
        prop_of, memo = self._prop_of, self._by_value
        pairs = [(t := ev.type, ev.props.get(prop_of.get(t, ""))) for ev in events]
        try:
            rids = np.fromiter(map(memo.get, pairs, repeat(-1, n)), np.int64, n)
        except TypeError:  # an unhashable value (a list or dict): all one by one
            rids = np.full(n, -1, dtype=np.int64)
        for i in np.flatnonzero(rids < 0).tolist():  # not memoised: one by one
            pair = pairs[i]
            etype, x = pair
            rid = self._route(etype, events[i].props)
            if (x is None or type(x) is str) and self._memoable(etype):
                if len(memo) >= _ROUTE_LIMIT:
                    memo.clear()
                memo[pair] = rid
            rids[i] = rid
        return rids

    def _memoable(self, etype: str) -> bool:
        """Whether ``(etype, value)`` decides the route (see :meth:`_routes`)."""
        if etype in self._prop_of:
            return True
        prop, _, parts = self._plans.get(etype, self._any_plan)
        return prop is None and not parts

    def _route(self, etype: str, props: Mapping[str, Any]) -> int:
        """Route id of one event, from its key ``(type, classes)``."""
        prop, equal, parts = self._plans.get(etype, self._any_plan)
        if prop is not None:  # one prop, equality only
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
        rid = self._route_ids.get(key)
        if rid is None:
            rid = self._new_route(key, etype, props)
        return rid

    def _has(self, table: int) -> npt.NDArray[np.bool_]:
        """Per route id: whether it has valued or distinct targets in ``table``."""
        cached = self._has_extras[table]
        if cached is None:
            cached = np.array([x is not None for x in self._extras[table]], dtype=np.bool_)
            self._has_extras[table] = cached
        return cached

    def _value_targets(self, table: int) -> _OneValue:
        """Per route id: its one valued target in ``table``, for routes with nothing else."""
        cached = self._one_value[table]
        if cached is None:
            one = [x if x is not None and len(x[0]) == 1 and not x[1] else None
                   for x in self._extras[table]]  # fmt: skip
            cached = _OneValue(
                np.array([-1 if x is None else x[0][0][0] for x in one], dtype=np.int64),
                np.array(["" if x is None else x[0][0][1] for x in one], dtype=object),
            )
            self._one_value[table] = cached
        return cached

    def _add_values(
        self,
        table: int,
        events: Sequence[Event],
        rid_a: npt.NDArray[np.int64],
        mask: npt.NDArray[np.bool_] | None,
        enc: Encoded,
    ) -> bool:
        """Encode a batch whose routes here each have one valued target and nothing else.

        The values are read in one pass and checked, converted and clamped
        as arrays, with the results of the loop in :meth:`_add_extras`:
        numbers other than booleans, finite, clamped to ±VALUE_LIMIT.
        Returns False, having encoded nothing, for an int too large for a float.
        """
        cols, props = self._value_targets(table)
        evt = np.arange(rid_a.size) if mask is None else np.flatnonzero(mask)
        routes = rid_a[evt]
        names = props[routes].tolist()
        vals = [events[i].props.get(p) for i, p in zip(evt.tolist(), names, strict=True)]
        if not set(map(type, vals)) <= _NUMBERS:
            vals = [x if type(x) is float or type(x) is int else math.nan for x in vals]
        try:
            v = np.array(vals, dtype=np.float64)
        except OverflowError:
            return False
        keep = np.isfinite(v)
        np.clip(v, -VALUE_LIMIT, VALUE_LIMIT, out=v)
        if not keep.all():
            evt, routes, v = evt[keep], routes[keep], v[keep]
        enc.v_evt, enc.v_col, enc.v_val = evt, cols[routes], v
        return True

    def _add_extras(
        self,
        table: int,
        events: Sequence[Event],
        rid_a: npt.NDArray[np.int64],
        used: list[int],
        keys: _Keys,
        enc: Encoded,
    ) -> None:
        """Valued and distinct contributions to ``table`` (0: entity, 1: account).

        A batch whose only extra here is one distinct count of a key, or
        whose routes each have one valued target and nothing else, is encoded
        with array operations; others take a loop over the events that have
        extras.
        """
        extras = self._extras[table]
        kind = self._kind[table]
        kinds = {kind[r] for r in used}
        mask: npt.NDArray[np.bool_] | None = None  # events to visit; None: all
        if -1 in kinds:
            kinds.discard(-1)
            if not kinds:
                return
            mask = self._has(table)[rid_a]
        if table == 1 and keys.a_missing:
            mask = _and_valid(mask, keys.arow_a)
        extra = self._kind_extras[table][next(iter(kinds))] if len(kinds) == 1 else None
        if extra is not None and not extra[0] and len(extra[1]) == 1:
            tab, source = extra[1][0]
            if source in _KEY_SOURCES:
                if source == "entity_id":
                    src, hashes = keys.row_a, keys.e_hashes
                elif keys.arow_a is None:
                    return
                else:
                    src, hashes = keys.arow_a, keys.a_hashes
                    if keys.a_missing:
                        mask = _and_valid(mask, src)
                evt = np.arange(src.size) if mask is None else np.flatnonzero(mask)
                if evt.size:
                    enc.d_evt = evt
                    enc.d_tab = np.empty(evt.size, dtype=np.int64)
                    enc.d_tab.fill(tab)  # np.full costs several times more on small arrays
                    enc.d_hash = np.frombuffer(hashes, dtype=np.int64)[src[evt]]
                return
        kind_extras = self._kind_extras[table]
        single = all(len(kind_extras[k][0]) == 1 and not kind_extras[k][1] for k in kinds)
        if single and self._add_values(table, events, rid_a, mask, enc):
            return
        v_evt: list[int] = []
        v_col: list[int] = []
        v_val: list[float] = []
        d_evt: list[int] = []
        d_tab: list[int] = []
        d_hash: list[int] = []
        rows = keys.row_a.tolist()
        arows = None if keys.arow_a is None else keys.arow_a.tolist()
        e_hashes, a_hashes = keys.e_hashes, keys.a_hashes
        memo, lim, isfinite = self._hashes, VALUE_LIMIT, math.isfinite
        rids: list[int] = rid_a.tolist()
        sel = range(len(rids)) if mask is None else np.flatnonzero(mask).tolist()
        for i in sel:
            valued, distinct = extras[rids[i]]  # type: ignore[misc]
            props = events[i].props
            for col, prop in valued:  # finite numbers, clamped to ±VALUE_LIMIT
                v: Any = props.get(prop)
                t = type(v)
                if t is float:
                    if not -lim <= v <= lim:
                        if not isfinite(v):
                            continue
                        v = lim if v > 0 else -lim
                elif t is int:
                    v = float(v) if -lim <= v <= lim else (lim if v > 0 else -lim)
                else:
                    continue
                v_evt.append(i)
                v_col.append(col)
                v_val.append(v)
            for tab, source in distinct:
                h: int | None
                if source == "entity_id":
                    h = e_hashes[rows[i]]
                elif source == "account_id":
                    a = -1 if arows is None else arows[i]
                    if a < 0:
                        continue
                    h = a_hashes[a]
                else:
                    x = props.get(source)
                    t = type(x)
                    if t is str:
                        h = memo[x]
                    elif t is int or t is float or t is bool:
                        h = memo[(t, x)]
                    else:
                        continue
                    if h is None:
                        continue
                d_evt.append(i)
                d_tab.append(tab)
                d_hash.append(h)
        enc.v_evt, enc.v_col, enc.v_val = v_evt, v_col, v_val
        enc.d_evt, enc.d_tab, enc.d_hash = d_evt, d_tab, d_hash


class _OneValue(NamedTuple):
    """Per route id: the column and prop of its one valued target (-1 and "": none)."""

    cols: npt.NDArray[np.int64]
    props: npt.NDArray[np.object_]


#: Value types that count as numbers (``bool`` does not).
_NUMBERS: Final = frozenset({float, int})


class _Keys(NamedTuple):
    """Rows of a batch's events in both tables (-1: no account) and the tables' key hashes."""

    row_a: npt.NDArray[np.int64]
    e_hashes: array[int]
    arow_a: npt.NDArray[np.int64] | None
    a_hashes: array[int]
    a_missing: int  # events without an account row (-1 in arow_a)


def _and_valid(
    mask: npt.NDArray[np.bool_] | None, rows: npt.NDArray[np.int64] | None
) -> npt.NDArray[np.bool_] | None:
    """``mask`` restricted to events with a row (None: all events)."""
    if rows is None:
        return mask
    valid = rows >= 0
    if mask is None:
        return None if valid.all() else valid
    return mask & valid

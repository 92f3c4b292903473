"""Shard-level feature state: keys -> rows of numpy arrays, one kernel call per batch.

A :class:`FeatureState` holds every entity (and account) routed to one
shard. :meth:`FeatureState.update` encodes a batch of events in one Python
pass (key lookup, filters, values), then runs
:func:`~intentflow.features.kernels.update_table` once for the entity table
and once for the account table. Semantics: docs/features.md.
"""

from __future__ import annotations

import logging
import math
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt

from intentflow.errors import SnapshotMismatchError
from intentflow.events import Event
from intentflow.features import kernels as kern
from intentflow.features.encode import BatchEncoder, Encoded, Ints, str_hash_array
from intentflow.features.keys import KeyTable
from intentflow.features.program import TableProgram, compile_program
from intentflow.features.spec import FeatureSpec

__all__ = ["SCHEMA_VERSION", "FeatureBatch", "FeatureSnapshot", "FeatureState", "TableSnapshot"]

#: Version of the snapshot layout; bumped whenever the arrays change meaning
#: (2: distinct values hashed with XXH3-64 instead of BLAKE2b; 3: 3-day
#: buckets for windows of 18 days and more at the default 6 per window).
SCHEMA_VERSION: Final = 4

#: name -> (dtype, fill of an empty slot, program width key), in the order the kernel takes them
_ARRAYS: Final[dict[str, tuple[type[np.generic], float | int, str]]] = {
    "cnt": (np.uint32, 0, "cnt"),
    "sum": (np.float64, 0.0, "sum"),
    "min": (np.float64, math.inf, "min"),
    "max": (np.float64, -math.inf, "max"),
    "lts": (np.int64, kern.EMPTY_TS, "lts"),
    "lval": (np.float64, 0.0, "lval"),
    "dec": (np.float64, 0.0, "dec"),
    "dist_hash": (np.int64, 0, "dist"),
    "dist_ts": (np.int64, kern.EMPTY_TS, "dist"),
    "run": (np.uint32, 0, "run"),
}
#: The feature kernel, called with its constant arguments unpacked from tuples.
_update_table: Final[Callable[..., int]] = kern.update_table
#: Rows given their empty values at a time, ahead of need (one numpy call per array each).
_FILL_AHEAD: Final = 1024
#: Rows from which a growth is logged as a warning (below: at debug level).
_GROW_WARN_ROWS: Final = 65_536

_PLURAL: Final = {"entity": "entities", "account": "accounts"}

log = logging.getLogger(__name__)
_COUNTERS: Final = ("late_dropped", "late_accepted", "late_clamped", "late_dropped_account")


@dataclass
class FeatureBatch:
    """Feature rows of a batch: ``values[i]`` belongs to ``events[i]``.

    ``accepted[i]`` is False when the event was too late and the drop policy
    kept it out of its entity's or account's state; its row is still computed.
    ``dropped`` counts those events.
    """

    values: npt.NDArray[np.float64]
    accepted: npt.NDArray[np.bool_]
    names: tuple[str, ...] = ()
    dropped: int = 0

    def as_dict(self, i: int) -> dict[str, float]:
        """Row ``i`` as ``{name: value}``."""
        return dict(zip(self.names, self.values[i].tolist(), strict=True))


@dataclass(frozen=True)
class TableSnapshot:
    """Keys and read-only copies of their rows (row ``i`` belongs to ``keys[i]``)."""

    keys: tuple[str, ...]
    clock: npt.NDArray[np.int64]
    arrays: tuple[tuple[str, npt.NDArray[Any]], ...]
    #: earliest event time the table applied (EMPTY_TS: none); velocities read it
    start: int = kern.EMPTY_TS


@dataclass(frozen=True)
class FeatureSnapshot:
    """The whole feature state of a shard, tagged with its schema and spec hash."""

    schema_version: int
    spec_hash: str
    entities: TableSnapshot
    accounts: TableSnapshot
    counters: tuple[tuple[str, int], ...] = field(default=())


def _read_only(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``a`` (a copy, or a view of state) marked read-only."""
    a.flags.writeable = False
    return a


def _resized(a: npt.NDArray[Any], capacity: int, used: int) -> npt.NDArray[Any]:
    """A zeroed array of ``capacity`` rows that starts with the first ``used`` rows of ``a``."""
    new = np.zeros((capacity, *a.shape[1:]), dtype=a.dtype)
    new[:used] = a[:used]
    return new


class _Table:
    """Rows of one key kind: a key table, a free list and struct-of-arrays state."""

    def __init__(self, program: TableProgram, capacity: int, prefault: bool = False) -> None:
        self.program = program
        #: key of each row (None: free)
        self.keys: list[str | None] = []
        #: hash -> row (:mod:`~intentflow.features.keys`); ``key_hash[row]`` is the row's hash
        self.table = KeyTable(capacity)
        self.key_hash = np.zeros(capacity, dtype=np.int64)
        #: value_hash of each row's key (distinct counts of entity_id / account_id)
        self.hashes = array("q")
        self.free: list[int] = []
        self.capacity = capacity
        # zeroed (untouched pages take no memory); rows get their fill when allocated
        self.clock = np.zeros(capacity, dtype=np.int64)
        #: the earliest event time applied to any row, ever (evictions keep it)
        self.start = np.full(1, kern.EMPTY_TS, dtype=np.int64)
        self.arrays = {
            name: np.zeros((capacity, program.widths[w]), dtype=dtype)
            for name, (dtype, _, w) in _ARRAYS.items()
        }
        self.prefault = prefault
        #: times the arrays grew, and the seconds those copies took (process-local)
        self.grows = 0
        self.grow_s = 0.0
        # the kernel's arguments that do not change from batch to batch (built on first use)
        self._layout: tuple[Any, ...] = ()
        self._state: tuple[npt.NDArray[Any], ...] = ()
        #: rows [0, filled) hold the empty-row values or a key's state; rows beyond are zeros
        self.filled = 0
        if prefault:  # write every row now, so that no page is first touched later
            self._fill_to(capacity)

    def __len__(self) -> int:
        return len(self.table)

    def row(self, key: str) -> int:
        """Row of ``key``, allocated on first sight."""
        return int(self.rows([key])[0])

    def rows(self, keys: Sequence[str]) -> npt.NDArray[np.int64]:
        """Row of each key; unseen keys get rows in order of first sight."""
        return self._rows(keys, optional=False)[0]

    def account_rows(self, keys: Sequence[str | None]) -> tuple[npt.NDArray[np.int64], int]:
        """Row of each key, -1 for a missing (None or empty) key; and how many are missing."""
        return self._rows(keys, optional=True)

    def _rows(
        self, keys: Sequence[str | None], optional: bool
    ) -> tuple[npt.NDArray[np.int64], int]:
        """Rows of ``keys``, new keys added in order of first sight.

        Keys are looked up by hash first; only the hashes not held are looked
        at one by one. When ``optional``, None and "" are no key (never held):
        they get -1, and the second result counts them.
        """
        h = np.fromiter(map(hash, keys), dtype=np.int64, count=len(keys))
        rows, missing = self.table.lookup_counted(h)
        if not missing:
            return rows, 0
        miss = np.flatnonzero(rows < 0)
        new = np.array([i for i in miss.tolist() if keys[i]], np.int64) if optional else miss
        if new.size:
            hs = h[new]
            uniq, first = np.unique(hs, return_index=True)
            new_keys = cast("list[str]", [keys[i] for i in new.tolist()])  # true keys only
            if uniq.size == hs.size:  # each new key once: its row is the one added
                rows[new] = self.add(new_keys, hs)
            else:  # a key new more than once in the batch gets its row at its first sight
                firsts = np.sort(first)
                self.add([new_keys[j] for j in firsts.tolist()], hs[firsts])
                rows[new] = self.table.lookup(hs)
        return rows, len(miss) - len(new)

    def add(
        self, keys: Sequence[str], key_hashes: Sequence[int] | npt.NDArray[np.int64] | None = None
    ) -> list[int]:
        """Allocate rows for ``keys`` (distinct, none held yet), in order; returns them.

        ``key_hashes`` are the keys' ``hash`` values when the caller has them.
        """
        if key_hashes is None:
            key_hashes = [hash(k) for k in keys]
        hashes = str_hash_array(keys)
        held = self.keys
        reuse = min(len(self.free), len(keys))
        out = [self.free.pop() for _ in range(reuse)]
        for r, key, h in zip(out, keys, hashes[:reuse].tolist(), strict=False):
            held[r] = key
            self.hashes[r] = h
        if reuse < len(keys):  # the rest go to new rows at the end
            start = len(held)
            end = start + len(keys) - reuse
            if end > self.capacity:
                self._grow(max(end, 2 * self.capacity))
            held.extend(keys[reuse:])
            self.hashes.frombytes(hashes[reuse:].tobytes())  # int64, as the array's "q"
            out.extend(range(start, end))
            if end > self.filled:  # rows never handed out are empty once filled
                self._fill_to(min(self.capacity, max(end, self.filled + _FILL_AHEAD)))
        got = np.array(out, dtype=np.int64)
        kh = np.asarray(key_hashes, dtype=np.int64)
        self.key_hash[got] = kh
        self.table.insert(kh, got)
        return out

    def _fill_to(self, end: int) -> None:
        """Give the rows from ``filled`` to ``end`` the values of an unused row."""
        self._empty(slice(self.filled, end))
        self.filled = end

    def _empty(self, rows: slice | npt.NDArray[np.int64]) -> None:
        """Give ``rows`` the values of an unused row (clock "never", each array's fill)."""
        self.clock[rows] = kern.EMPTY_TS
        for name, (_, fill, _) in _ARRAYS.items():
            self.arrays[name][rows] = fill

    def _grow(self, capacity: int) -> None:
        """Reallocate for ``capacity`` rows; only rows handed out are copied.

        The shard processes nothing meanwhile: the time is counted and logged
        (a warning from :data:`_GROW_WARN_ROWS` rows on).
        """
        started = time.perf_counter()
        old = self.capacity
        used = len(self.keys)
        self.key_hash = _resized(self.key_hash, capacity, used)
        self.clock = _resized(self.clock, capacity, used)
        self.arrays = {name: _resized(a, capacity, used) for name, a in self.arrays.items()}
        self._state = ()
        self.capacity = capacity
        self.filled = used  # the copy ends there; the rest is zeros
        if self.prefault:
            self._fill_to(capacity)
        took = time.perf_counter() - started
        plural = _PLURAL.get(self.program.key, self.program.key)
        self.grows += 1
        self.grow_s += took
        log.log(
            logging.WARNING if old >= _GROW_WARN_ROWS else logging.DEBUG,
            "feature state: %s rows grew from %d to %d; the shard stopped %.0f ms for it. "
            "Set engine.%s_per_shard to the %s expected per shard to allocate them at "
            'start (docs/capacity.md, "Growth pauses")',
            self.program.key,
            old,
            capacity,
            took * 1000.0,
            plural,
            plural,
        )

    def evict(self, cutoff_ms: int) -> int:
        """Forget keys whose clock (latest event time) is before ``cutoff_ms``."""
        used = self.clock[: len(self.keys)]
        rows = np.flatnonzero((used != kern.EMPTY_TS) & (used < cutoff_ms))
        held = [r for r in rows.tolist() if self.keys[r] is not None]
        self.table.remove(self.key_hash[held])
        for r in held:
            self.keys[r] = None
        self.free.extend(held)
        self._empty(rows)
        return int(rows.size)

    def run(
        self,
        enc: Encoded,
        ts: npt.NDArray[np.int64],
        routes: npt.NDArray[np.int64],
        route_table: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
        spec: FeatureSpec,
        out: npt.NDArray[np.float64],
    ) -> tuple[npt.NDArray[np.int8], int]:
        """Apply an encoded batch (one kernel call).

        Returns each event's lateness code, and how many are not on time.
        """
        late = np.zeros(ts.shape[0], dtype=np.int8)
        n_late = _update_table(
            _ints(enc.rows),
            ts,
            routes,
            route_table[0],
            route_table[1],
            _ints(enc.v_evt),
            _ints(enc.v_col),
            np.asarray(enc.v_val, dtype=np.float64) if len(enc.v_val) else _NO_FLOATS,
            _ints(enc.d_evt),
            _ints(enc.d_tab),
            _ints(enc.d_hash),
            *(self._layout or self._layout_args(spec)),
            *(self._state or self._state_args()),
            out,
            late,
        )
        return late, n_late

    def _layout_args(self, spec: FeatureSpec) -> tuple[Any, ...]:
        """The kernel's settings and layout arguments (fixed for the table's life)."""
        p = self.program
        policy = kern.POLICY_CLAMP if spec.late_policy == "clamp" else kern.POLICY_DROP
        self._layout = (
            spec.allowed_lateness_ms, policy, spec.recency_cap_ms,
            p.tiers, p.rings, p.ring_wq_ptr, p.wq, p.col_ring_ptr, p.col_lts, p.col_lval,
            p.col_dec_ptr, p.dec_hl, p.dtabs, p.outs, p.outx,
        )  # fmt: skip
        return self._layout

    def _state_args(self) -> tuple[npt.NDArray[Any], ...]:
        """The state arrays in the kernel's order (kept until :meth:`_grow` replaces them)."""
        a = self.arrays
        self._state = (self.clock, self.start, *(a[name] for name in _ARRAYS))
        return self._state

    @property
    def row_bytes(self) -> int:
        """State bytes of one row."""
        return self.clock.itemsize + sum(int(x.itemsize * x.shape[1]) for x in self.arrays.values())

    @property
    def nbytes(self) -> int:
        """State bytes of all allocated rows (capacity, not only keys in use)."""
        return self.clock.nbytes + sum(x.nbytes for x in self.arrays.values())

    def snapshot(self, copy: bool = True) -> TableSnapshot:
        """The held rows, in order; ``copy=False`` gives read-only views of the live
        arrays where the held rows are all the rows (valid until the next change)."""
        keys = self.keys
        if not self.free:  # rows 0 .. n-1 are all held: slices
            n = len(keys)
            held = tuple(keys)

            def take(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
                return _read_only(x[:n].copy() if copy else x[:n])
        else:
            rows = np.array([r for r, k in enumerate(keys) if k is not None], dtype=np.int64)
            held = tuple(k for k in keys if k is not None)

            def take(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
                return _read_only(x[rows])  # a gather is a copy

        return TableSnapshot(
            keys=cast("tuple[str, ...]", held),
            clock=take(self.clock),
            arrays=tuple((name, take(x)) for name, x in self.arrays.items()),
            start=int(self.start[0]),
        )

    @classmethod
    def restore(cls, program: TableProgram, snap: TableSnapshot, capacity: int) -> _Table:
        """A table holding ``snap``, with room for ``capacity`` rows or twice the
        snapshot's, whichever is more: a resumed shard does not pause to grow at
        its first new key (unused rows take no memory)."""
        n = len(snap.keys)
        table = cls(program, max(capacity, 2 * n))
        table.add(snap.keys)  # rows 0 .. n-1, in order
        arrays = dict(snap.arrays)
        for name, (dtype, _, w) in _ARRAYS.items():
            got = arrays.get(name)
            if got is None or got.shape != (n, program.widths[w]) or got.dtype != dtype:
                shape = None if got is None else got.shape
                raise SnapshotMismatchError(
                    f"feature snapshot: {program.key} array {name!r} has shape {shape}, "
                    f"the running spec needs {(n, program.widths[w])}; "
                    "the snapshot does not belong to this spec"
                )
            table.arrays[name][:n] = got
        if snap.clock.shape != (n,):
            raise SnapshotMismatchError(
                f"feature snapshot: {program.key} clock has shape {snap.clock.shape} for {n} keys"
            )
        table.clock[:n] = snap.clock
        table.start[0] = snap.start
        return table


class FeatureState:
    """All feature state of one shard: entities and, keyed by account_id, accounts."""

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        initial_capacity: int = 1024,
        account_capacity: int = 0,
        prefault: bool = False,
    ) -> None:
        """A state with room for ``initial_capacity`` entities (the arrays grow beyond).

        ``account_capacity`` is the accounts' (0: a sixteenth of the entities').
        The arrays are allocated zeroed and take resident memory only as rows
        are handed out; growing beyond them copies every row (a pause, longer
        the more rows). ``prefault`` writes all capacity when it is allocated
        (at start and when the arrays double) instead, so that no page is
        first touched while events are processed: for a known population, at
        the cost of the memory up front.
        """
        if initial_capacity < 1:
            raise ValueError(f"initial_capacity must be >= 1, got {initial_capacity}")
        if account_capacity < 0:
            raise ValueError(f"account_capacity must be >= 0, got {account_capacity}")
        self.spec = spec
        self._capacity = initial_capacity
        self._account_capacity = account_capacity
        self._entities = _Table(compile_program(spec, "entity"), initial_capacity, prefault)
        self._accounts = _Table(
            compile_program(spec, "account"),
            _account_capacity(initial_capacity, account_capacity),
            prefault,
        )
        self._encoder = BatchEncoder(self._entities.program, self._accounts.program)
        self._with_accounts = self._accounts.program.n_outputs > 0
        #: Events kept out of some state by the drop policy (accepted False).
        self.late_dropped = 0
        #: Out-of-order events applied (within allowed lateness, or clamped).
        self.late_accepted = 0
        #: Of ``late_accepted``, events applied at the lateness bound (clamp policy).
        self.late_clamped = 0
        #: Of ``late_dropped``, events dropped only by their account's state.
        self.late_dropped_account = 0

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _restore,
            (self.spec, self.snapshot(), self._capacity, self._account_capacity),
        )

    @property
    def n_entities(self) -> int:
        """Entities held."""
        return len(self._entities)

    @property
    def n_accounts(self) -> int:
        """Accounts held."""
        return len(self._accounts)

    @property
    def nbytes(self) -> int:
        """Bytes of the state arrays (allocated capacity of both tables)."""
        return self._entities.nbytes + self._accounts.nbytes

    @property
    def grow_seconds(self) -> float:
        """Seconds this process spent growing the arrays (both tables; not snapshotted)."""
        return self._entities.grow_s + self._accounts.grow_s

    @property
    def grows(self) -> int:
        """Times the arrays grew in this process (both tables)."""
        return self._entities.grows + self._accounts.grows

    @property
    def entity_capacity(self) -> int:
        """Entity rows allocated."""
        return self._entities.capacity

    @property
    def account_capacity(self) -> int:
        """Account rows allocated."""
        return self._accounts.capacity

    @property
    def bytes_per_entity(self) -> int:
        """State-array bytes of one entity row (key index not included)."""
        return self._entities.row_bytes

    @property
    def bytes_per_account(self) -> int:
        """State-array bytes of one account row (key index not included)."""
        return self._accounts.row_bytes

    def update(self, events: Sequence[Event]) -> FeatureBatch:
        """Apply ``events`` in order; row ``i`` includes ``events[i]`` and all before it."""
        n = len(events)
        if n == 0:
            values = np.zeros((0, len(self.spec.names)), dtype=np.float64)
            return FeatureBatch(values, np.ones(0, dtype=np.bool_), self.spec.names)
        # every column belongs to one table, whose kernel writes it for every event
        values = np.empty((n, len(self.spec.names)), dtype=np.float64)
        ent, acc = self._entities, self._accounts
        with_accounts = self._with_accounts
        enc = self._encoder
        batch = enc.encode(events, ent, acc if with_accounts else None)
        try:
            ts = np.array(batch.ts, dtype=np.int64)
        except OverflowError as exc:
            raise ValueError("events: ts_ms outside the int64 range") from exc
        routes = np.asarray(batch.routes, dtype=np.int64)
        e_late, n_late = ent.run(batch.entity, ts, routes, enc.route_table(0), self.spec, values)
        a_late = None
        if with_accounts:
            a_late, a_n = acc.run(batch.account, ts, routes, enc.route_table(1), self.spec, values)
            n_late += a_n
        if not n_late:  # all on time
            return FeatureBatch(values, np.ones(n, dtype=np.bool_), self.spec.names)
        e_drop = e_late == kern.LATE_DROPPED
        late = (e_late == kern.LATE_ACCEPTED) | (e_late == kern.LATE_CLAMPED)
        clamped = e_late == kern.LATE_CLAMPED
        if a_late is not None:
            a_drop = a_late == kern.LATE_DROPPED
            accepted = ~(e_drop | a_drop)
            late |= (a_late == kern.LATE_ACCEPTED) | (a_late == kern.LATE_CLAMPED)
            clamped |= a_late == kern.LATE_CLAMPED
            self.late_dropped_account += int(np.count_nonzero(a_drop & ~e_drop))
        else:
            accepted = ~e_drop
        dropped = n - int(np.count_nonzero(accepted))
        self.late_dropped += dropped
        self.late_accepted += int(np.count_nonzero(late & accepted))
        self.late_clamped += int(np.count_nonzero(clamped & accepted))
        return FeatureBatch(values, accepted, self.spec.names, dropped)

    def evict_idle(self, now_ms: int) -> int:
        """Forget entities and accounts whose latest event is older than ``now_ms - ttl``.

        Pass event time (the shard's watermark), not wall time, so a backfill
        keeps its state. Returns how many keys were evicted.
        """
        cutoff = now_ms - self.spec.entity_ttl_ms
        return self._entities.evict(cutoff) + self._accounts.evict(cutoff)

    def snapshot(self, copy: bool = True) -> FeatureSnapshot:
        """An immutable, picklable copy of the whole state.

        ``copy=False`` skips the copy where it can: the arrays may be read-only
        views of the live state, valid until the next :meth:`update` or
        eviction. For a caller that pickles at once (the shard's snapshot):
        it saves a copy of every array, most of a snapshot's time.
        """
        return FeatureSnapshot(
            schema_version=SCHEMA_VERSION,
            spec_hash=self.spec.spec_hash,
            entities=self._entities.snapshot(copy),
            accounts=self._accounts.snapshot(copy),
            counters=tuple((c, int(getattr(self, c))) for c in _COUNTERS),
        )

    @classmethod
    def restore(
        cls,
        spec: FeatureSpec,
        snap: FeatureSnapshot,
        *,
        initial_capacity: int = 1024,
        account_capacity: int = 0,
    ) -> FeatureState:
        """Rebuild a state from ``snap``; :class:`SnapshotMismatchError` if it is foreign.

        The arrays get room for the capacities given or twice the snapshot's
        rows, whichever is more.
        """
        if snap.schema_version != SCHEMA_VERSION:
            raise SnapshotMismatchError(
                f"feature snapshot has schema version {snap.schema_version}, this engine "
                f"reads version {SCHEMA_VERSION}; replay the input into an empty state "
                "(new recovery directory) or run the engine version that wrote it"
            )
        if snap.spec_hash != spec.spec_hash:
            raise SnapshotMismatchError(
                f"feature snapshot was written with feature spec {snap.spec_hash[:12]}, "
                f"the configured spec is {spec.spec_hash[:12]}: the [features] section "
                "changed since the snapshot. Restore the previous [features] section, or "
                "start from a new recovery directory and replay the input to rebuild features"
            )
        state = cls(spec, initial_capacity=1)
        state._capacity = initial_capacity
        state._account_capacity = account_capacity
        state._entities = _Table.restore(state._entities.program, snap.entities, initial_capacity)
        state._accounts = _Table.restore(
            state._accounts.program,
            snap.accounts,
            _account_capacity(initial_capacity, account_capacity),
        )
        for name, value in snap.counters:
            if name in _COUNTERS:
                setattr(state, name, value)
        return state


_NO_INTS: Final = np.zeros(0, dtype=np.int64)
_NO_FLOATS: Final = np.zeros(0, dtype=np.float64)


def _ints(x: Ints) -> npt.NDArray[np.int64]:
    """``x`` as an int64 array for a kernel (read only there; a list is copied)."""
    if type(x) is list:
        return np.array(x, dtype=np.int64) if x else _NO_INTS
    return np.asarray(x, dtype=np.int64)


def _account_capacity(entity_capacity: int, given: int = 0) -> int:
    """``given`` account rows, or by default (0) 1/16 of the entity capacity (accounts
    are fewer); they grow by doubling beyond."""
    return given or max(1, entity_capacity // 16)


def _restore(
    spec: FeatureSpec, snap: FeatureSnapshot, capacity: int, accounts: int = 0
) -> FeatureState:
    return FeatureState.restore(spec, snap, initial_capacity=capacity, account_capacity=accounts)

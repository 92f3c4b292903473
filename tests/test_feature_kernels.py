"""The compiled feature kernels equal the slow reference on random specs and streams.

Streams mix in-order steps, out-of-order events (within and beyond the
allowed lateness), gaps from 1 ms to a month, timestamps on bucket edges,
idle eviction and snapshot/pickle/restore between batches. Run also with
NUMBA_DISABLE_JIT=1 so the kernel bodies execute as Python.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from feature_reference import Reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intentflow.events import Event
from intentflow.features.spec import DAY, HOUR, MINUTE, FeatureSpec, format_duration
from intentflow.features.state import FeatureState

T0 = 19_675 * DAY  # a UTC midnight, so that every bucket grid starts here
WINDOWS = ["1m", "2m", "5m", "15m", "1h", "6h", "24h", "7d"]
TYPES = ["page_view", "cart_add", "purchase"]
WHERE: list[list[str]] = [
    ['props.cat == "a"'],
    ['props.cat in ["a", "b"]'],
    ["props.cat == true"],
    ['props.cat in [1, "b"]'],
    ['props.cat in [0, "a"]'],
    ["props.x > 0"],
    ["props.x <= 2.5", "props.x >= -3.25"],
    ["props.cat >= 1"],
    ['props.cat in ["a", 1]', "props.x < 3"],
    ['props.page == "p1"', "props.cat < 1"],
]
GAPS = [0, 1, 999, 1_000, 9_999, 10_000, 29_999, 60_000, 299_999, HOUR, 4 * HOUR, DAY, 7 * DAY]
BACKS = [1, 30_000, 60_000, 5 * MINUTE, HOUR, 2 * HOUR, DAY]
X_VALUES: list[Any] = [
    *(0, 1, 2.5, -3.25, 7, "9", None, math.nan, math.inf, 1e20, -1e20, True, -0.0),
    10**400,  # an int too large for a float
]
CAT_VALUES: list[Any] = ["a", "b", True, 1, 1.0, 0, None, ["a"], {"a": 1}]
PAGE_VALUES: list[Any] = ["p1", "p2", "p3", "p4", "p5", 1, 1.0, math.nan, None, ["p1"]]


def _ms(text: str) -> int:
    unit = {"s": 1_000, "m": MINUTE, "h": HOUR, "d": DAY}[text[-1]]
    return int(text[:-1]) * unit


@st.composite
def feature_tables(draw: st.DrawFn, key: str) -> dict[str, Any]:
    d: dict[str, Any] = {"key": key}
    d["types"] = draw(
        st.one_of(
            st.just(["*"]), st.lists(st.sampled_from(TYPES), min_size=1, max_size=2, unique=True)
        )
    )
    if draw(st.booleans()):
        d["where"] = draw(st.sampled_from(WHERE))
    has_value = draw(st.booleans())
    if has_value:
        d["value"] = "props.x"
    pool = ["count", "recency", "velocity", "decayed_sum", "decayed_rate", "distinct"]
    if has_value:
        pool += ["sum", "mean", "min", "max", "last"]
    aggs = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4, unique=True))
    d["aggregations"] = aggs
    if {"count", "sum", "mean", "min", "max", "distinct"} & set(aggs):
        d["windows"] = draw(st.lists(st.sampled_from(WINDOWS), min_size=1, max_size=3, unique=True))
    if {"decayed_sum", "decayed_rate"} & set(aggs):
        d["half_lives"] = draw(
            st.lists(st.sampled_from(["1m", "1h", "3d"]), min_size=1, max_size=2, unique=True)
        )
    if "velocity" in aggs:
        d["velocity"] = draw(
            st.sampled_from([[["1m", "1h"]], [["5m", "24h"]], [["1m", "2m"], ["1h", "7d"]]])
        )
    if "distinct" in aggs:
        sources = ["props.page", "entity_id"] if key == "account" else ["props.page"]
        d["distinct"] = draw(st.sampled_from(sources))
        d["max_distinct"] = draw(st.integers(1, 4))
    return d


@st.composite
def specs(draw: st.DrawFn) -> FeatureSpec:
    data: dict[str, Any] = {
        "allowed_lateness": draw(st.sampled_from(["0s", "30s", "5m", "1h"])),
        "late_policy": draw(st.sampled_from(["drop", "clamp"])),
        "buckets_per_window": draw(st.integers(1, 8)),
        "recency_cap": draw(st.sampled_from(["1m", "1h", "30d"])),
    }
    n = draw(st.integers(1, 3))
    for i in range(n):
        key = draw(st.sampled_from(["entity", "entity", "account"]))
        data[f"f{i}"] = draw(feature_tables(key))
    # The shortest TTL the spec allows, plus a little: eviction happens in tests.
    longest = 0
    for value in data.values():
        if isinstance(value, dict):
            pairs = value.get("velocity", [])
            for w in [*value.get("windows", []), *(p[1] for p in pairs)]:
                longest = max(longest, _ms(w))
    extra = draw(st.sampled_from([0, 1, HOUR]))
    data["entity_ttl"] = format_duration(
        max(1_000, longest + _ms(data["allowed_lateness"]) + extra * 1_000)
    )
    return FeatureSpec.from_dict(data)


@dataclass
class Op:
    kind: str  # "event", "batch", "evict", "restore"
    event: Event | None = None
    now_ms: int = 0


EDGE_GRIDS = [10_000, 30_000, MINUTE, 5 * MINUTE, 15 * MINUTE, HOUR, 4 * HOUR, DAY]
EDGE_SPANS = [_ms(w) for w in WINDOWS] + [HOUR, 3 * DAY]
KINDS = ["step"] * 5 + ["back"] * 3 + ["grid", "span", "span", "same", "batch", "evict", "restore"]


@st.composite
def streams(draw: st.DrawFn, max_ops: int = 40) -> list[Op]:
    """Events plus batch breaks, evictions and restores.

    Besides random steps and out-of-order events, timestamps land next to
    bucket-grid points (``grid``), one window length (±1 ms) after an earlier
    event of the same entity, type and account (``span``), or on the previous
    event's time, entity and type (``same``).
    """
    ops: list[Op] = []
    high = T0 + draw(st.one_of(st.sampled_from([0, 1, DAY - 1]), st.integers(0, DAY)))
    seen: list[Event] = []
    for n in range(draw(st.integers(1, max_ops))):
        kind = draw(st.sampled_from(KINDS))
        if kind in ("batch", "restore"):
            ops.append(Op(kind))
            continue
        if kind == "evict":
            offset = draw(st.one_of(st.integers(-DAY, 40 * DAY), st.sampled_from([0, 35 * DAY])))
            ops.append(Op("evict", now_ms=high + offset))
            continue
        entity = draw(st.sampled_from(["e1", "e2", "e3"]))
        etype = draw(st.sampled_from([*TYPES, "ticket"]))
        account = draw(st.sampled_from(["a1", "a2", None]))
        if kind == "step" or (kind in ("span", "same") and not seen):
            high += draw(st.one_of(st.sampled_from(GAPS), st.integers(0, 2 * DAY)))
            ts = high
        elif kind == "back":
            ts = high - draw(st.one_of(st.sampled_from(BACKS), st.integers(0, DAY)))
        elif kind == "grid":
            grid = draw(st.sampled_from(EDGE_GRIDS))
            ts = (high // grid + 1) * grid + draw(st.sampled_from([-1, 0, 1]))
        elif kind == "span":
            before = draw(st.sampled_from(seen))
            ts = (
                before.ts_ms + draw(st.sampled_from(EDGE_SPANS)) + draw(st.sampled_from([-1, 0, 1]))
            )
            entity, etype, account = before.entity_id, before.type, before.account_id
        else:  # same time, entity and type as the previous event
            before = seen[-1]
            ts, entity, etype = before.ts_ms, before.entity_id, before.type
        high = max(high, ts)
        props: dict[str, Any] = {}
        for name, pool in (("cat", CAT_VALUES), ("x", X_VALUES), ("page", PAGE_VALUES)):
            value = draw(st.sampled_from(pool))
            if value is not None:
                props[name] = value
        ev = Event(
            event_id=str(n),
            ts_ms=ts,
            entity_id=entity,
            type=etype,
            account_id=account,
            props=props,
        )
        seen.append(ev)
        ops.append(Op("event", ev))
    return ops


def _assert_rows(
    spec: FeatureSpec, got: np.ndarray, want: list[list[float]], tol: list[list[float]]
) -> None:
    assert got.shape == (len(want), len(spec.names))
    assert np.isfinite(got).all()
    for i, (row, wrow, trow) in enumerate(zip(got.tolist(), want, tol, strict=True)):
        for name, g, w, t in zip(spec.names, row, wrow, trow, strict=True):
            assert abs(g - w) <= t, f"row {i} {name}: engine {g!r} != reference {w!r}"


def run_and_compare(spec: FeatureSpec, ops: list[Op], *, capacity: int = 1) -> None:
    """Feed ``ops`` to the engine and the reference; every row, flag and counter agrees."""
    state = FeatureState(spec, initial_capacity=capacity)
    ref = Reference(spec)
    batch: list[Event] = []

    def flush() -> None:
        if not batch:
            return
        got = state.update(batch)
        want, accepted, tol = ref.update(batch)
        _assert_rows(spec, got.values, want, tol)
        assert got.accepted.tolist() == accepted
        batch.clear()

    for op in ops:
        if op.kind == "event":
            assert op.event is not None
            batch.append(op.event)
            continue
        flush()
        if op.kind == "evict":
            assert state.evict_idle(op.now_ms) == ref.evict(op.now_ms)
        elif op.kind == "restore":
            state = pickle.loads(pickle.dumps(state))
    flush()
    for name in ("late_dropped", "late_accepted", "late_clamped", "late_dropped_account"):
        assert getattr(state, name) == getattr(ref, name), name
    assert state.n_entities == sum(1 for kind, _ in ref.keys if kind == "entity")
    assert state.n_accounts == sum(1 for kind, _ in ref.keys if kind == "account")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(), ops=streams())
def test_engine_equals_reference(spec: FeatureSpec, ops: list[Op]) -> None:
    run_and_compare(spec, ops)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=streams(max_ops=60))
def test_default_spec_equals_reference(ops: list[Op]) -> None:
    run_and_compare(FeatureSpec.default(), ops, capacity=2)


VALUE_SPECS = [
    {"types": ["page_view"], "value": "props.x", "aggregations": ["sum", "min", "max", "last"],
     "windows": ["1h"]},
    {"types": ["cart_add"], "value": "props.y", "aggregations": ["sum", "mean"], "windows": ["1h"]},
]  # fmt: skip


@pytest.mark.parametrize("odd", X_VALUES, ids=repr)
def test_value_props_of_any_type_in_a_batch_equal_the_reference(odd: Any) -> None:
    """Batches whose routes each value one prop are encoded as arrays: the same rows.

    Each batch mixes one value of any type (bool, string, None, non-finite,
    out of range, an int too large for a float) with plain numbers, as the
    only value of a batch and next to another type's value prop.
    """
    spec = FeatureSpec.from_dict({"views": VALUE_SPECS[0], "carts": VALUE_SPECS[1]})
    ops: list[Op] = []
    ts = T0
    for batch in ([odd], [odd, 2, 3.5], [1, odd], [odd, odd]):
        for x in batch:
            ts += 1_000
            for etype, prop in (("page_view", "x"), ("cart_add", "y")):
                ev = Event(event_id=str(ts), ts_ms=ts, entity_id="e1", type=etype,
                           props={prop: x})  # fmt: skip
                ops.append(Op("event", ev))
        ops.append(Op("batch"))
    run_and_compare(spec, ops)


def _event(ts: int, entity: str = "e1", **props: Any) -> Event:
    return Event(event_id=str(ts), ts_ms=ts, entity_id=entity, type="page_view", props=props)


@pytest.mark.parametrize("buckets", [1, 2, 6])
def test_window_edges_on_the_bucket_grid(buckets: int) -> None:
    """A 1h window: events exactly at the grid edge are in, one ms earlier out."""
    spec = FeatureSpec.from_dict(
        {
            "buckets_per_window": buckets,
            "views": {"types": ["page_view"], "aggregations": ["count"], "windows": ["1h"]},
        }
    )
    size = spec.resolution_ms(HOUR)
    q = T0 + 10 * HOUR + size // 2  # the query time, in the middle of a bucket
    lo = (q - HOUR + 1) // size * size  # first ms the window covers
    events = [_event(lo - 1), _event(lo), _event(lo + 1), _event(q)]
    rows = FeatureState(spec).update(events).values[:, 0].tolist()
    # Row i is computed at the latest time seen so far (events are in order).
    assert rows == [1.0, 2.0, 3.0, 3.0]


def test_window_sums_add_buckets_oldest_first() -> None:
    """A sum is each bucket's sum (in order applied), then the buckets oldest first.

    Floating-point addition is not associative (0.3 + 1e15 rounds), so the
    order is part of the definition (the reference follows it).
    """
    spec = FeatureSpec.from_dict(
        {
            "buckets_per_window": 1,
            "x": {"types": ["page_view"], "value": "props.x", "aggregations": ["sum"],
                  "windows": ["1m"]},
        }
    )  # fmt: skip
    events = [_event(T0, x=0.3)] + [
        Event(event_id=f"b{i}", ts_ms=T0 + MINUTE, entity_id="e1", type="page_view",
              props={"x": 1e15})
        for i in range(3)
    ]  # fmt: skip
    got = FeatureState(spec).update(events).values[-1, 0]
    assert got == 0.3 + (1e15 + 1e15 + 1e15)
    assert got != ((0.3 + 1e15) + 1e15) + 1e15  # what summing in event order would give


def test_each_window_gets_its_documented_resolution() -> None:
    spec = FeatureSpec.from_dict(
        {"v": {"types": ["*"], "aggregations": ["count"], "windows": ["1m"]}}
    )
    table = {
        "1m": "10s", "5m": "30s", "15m": "1m", "1h": "5m", "2h": "15m", "6h": "1h",
        "24h": "4h", "7d": "24h", "14d": "24h", "17d": "24h", "18d": "3d", "30d": "3d",
    }  # fmt: skip
    got = {w: format_duration(spec.resolution_ms(_ms(w))) for w in table}
    assert got == table


def test_only_kernels_of_the_package_are_cached_on_disk() -> None:
    """A source folder imported as a top-level package must not write Numba cache entries.

    Numba's cache records the compiling module's name; ``features.keys`` (pytest
    collecting the file from the repository root) could not be loaded by an
    engine started elsewhere (docs/layout.md).
    """
    from numba import config

    from intentflow.features import keys
    from intentflow.features.kernels import kernel

    def twice(x: int) -> int:
        return 2 * x

    twice.__module__ = "features.keys"
    compiled = kernel(twice)
    assert compiled(3) == 6
    if getattr(config, "DISABLE_JIT", False):
        pytest.skip("kernels are plain Python without the JIT")
    assert type(keys.put._cache).__name__ == "FunctionCache"  # the package's kernels
    assert type(compiled._cache).__name__ == "NullCache"

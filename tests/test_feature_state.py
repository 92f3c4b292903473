"""FeatureState: per-event rows, lateness policy, eviction, accounts, snapshots, memory."""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import pickle
import tracemalloc
from typing import Any

import numpy as np
import pytest
from xxhash import xxh3_64_intdigest

from intentflow.errors import SnapshotMismatchError
from intentflow.events import Event
from intentflow.features.encode import str_hash, str_hashes, value_hash
from intentflow.features.program import compile_program
from intentflow.features.spec import DAY, HOUR, MINUTE, FeatureSpec
from intentflow.features.state import SCHEMA_VERSION, FeatureState, _Table

T0 = 19_675 * DAY + 10 * HOUR  # 10:00 UTC


def _spec(**settings: Any) -> FeatureSpec:
    return FeatureSpec.from_dict(
        {
            **settings,
            "views": {
                "description": "pricing page views",
                "types": ["page_view"],
                "where": ['props.category == "pricing"'],
                "aggregations": ["count", "recency"],
                "windows": ["1h"],
            },
            "dwell": {
                "types": ["page_view"],
                "value": "props.duration_s",
                "aggregations": ["sum", "max", "last"],
                "windows": ["1h"],
            },
            "contacts": {
                "key": "account",
                "types": ["*"],
                "aggregations": ["distinct", "count"],
                "distinct": "entity_id",
                "windows": ["24h"],
            },
        }
    )


def _ev(
    ts: int, entity: str = "e1", account: str | None = "a1", etype: str = "page_view", **props: Any
) -> Event:
    return Event(f"{entity}-{ts}", ts, entity, etype, account, props)


def _row(spec: FeatureSpec, values: np.ndarray) -> dict[str, float]:
    return dict(zip(spec.names, values.tolist(), strict=True))


def test_rows_include_the_event_and_the_batch_before_it() -> None:
    spec = _spec()
    state = FeatureState(spec)
    batch = state.update(
        [
            _ev(T0, category="pricing", duration_s=30),
            _ev(T0 + MINUTE, entity="e2", category="product", duration_s=5),
            _ev(T0 + 2 * MINUTE, category="pricing", duration_s=12.5),
        ]
    )
    assert batch.values.shape == (3, len(spec.names))
    assert batch.accepted.tolist() == [True, True, True]
    first, second, third = (_row(spec, v) for v in batch.values)
    assert first == {
        "views__count__1h": 1.0,
        "views__recency_s": 0.0,
        "dwell__sum__1h": 30.0,
        "dwell__max__1h": 30.0,
        "dwell__last": 30.0,
        "contacts__distinct__24h": 1.0,
        "contacts__count__24h": 1.0,
    }
    assert second["views__count__1h"] == 0.0
    assert second["views__recency_s"] == spec.recency_cap_ms / 1000  # no pricing view yet
    assert second["contacts__distinct__24h"] == 2.0
    assert third["views__count__1h"] == 2.0
    assert third["dwell__sum__1h"] == 42.5
    assert third["dwell__last"] == 12.5
    assert third["contacts__count__24h"] == 3.0
    assert batch.as_dict(2) == third


def test_late_event_within_lateness_updates_its_bucket() -> None:
    spec = _spec(allowed_lateness="10m")
    state = FeatureState(spec)
    state.update([_ev(T0, category="pricing", duration_s=1)])
    batch = state.update([_ev(T0 - 9 * MINUTE, category="pricing", duration_s=100)])
    row = _row(spec, batch.values[0])
    assert batch.accepted.tolist() == [True]
    assert row["views__count__1h"] == 2.0
    assert row["dwell__sum__1h"] == 101.0
    assert row["dwell__last"] == 1.0  # the latest event in event time stays the last value
    assert row["views__recency_s"] == 0.0
    assert (state.late_accepted, state.late_dropped) == (1, 0)


def test_too_late_event_is_dropped_counted_and_still_gets_a_row() -> None:
    spec = _spec(allowed_lateness="10m")
    state = FeatureState(spec)
    before = state.update([_ev(T0, category="pricing", duration_s=1)]).values[0]
    batch = state.update([_ev(T0 - 11 * MINUTE, category="pricing", duration_s=100)])
    assert batch.accepted.tolist() == [False]
    assert batch.values[0].tolist() == before.tolist()
    assert (state.late_dropped, state.late_accepted, state.late_dropped_account) == (1, 0, 0)


def test_clamp_policy_applies_a_too_late_event_at_the_lateness_bound() -> None:
    spec = _spec(allowed_lateness="10m", late_policy="clamp")
    state = FeatureState(spec)
    state.update([_ev(T0, category="pricing", duration_s=1)])
    batch = state.update([_ev(T0 - 5 * HOUR, category="pricing", duration_s=100)])
    row = _row(spec, batch.values[0])
    assert batch.accepted.tolist() == [True]
    assert row["views__count__1h"] == 2.0  # counted at T0 - 10m, inside the hour
    assert (state.late_clamped, state.late_accepted, state.late_dropped) == (1, 1, 0)


def test_an_event_too_late_only_for_its_account_is_not_accepted() -> None:
    spec = _spec(allowed_lateness="10m")
    state = FeatureState(spec)
    state.update([_ev(T0, entity="e1"), _ev(T0 + HOUR, entity="e2")])
    batch = state.update([_ev(T0 + 5 * MINUTE, entity="e1", category="pricing")])
    row = _row(spec, batch.values[0])
    assert batch.accepted.tolist() == [False]
    assert row["views__count__1h"] == 1.0  # the entity state took it
    assert row["contacts__count__24h"] == 2.0  # the account state did not
    assert (state.late_dropped, state.late_dropped_account) == (1, 1)


def test_events_without_account_get_no_data_account_features() -> None:
    spec = _spec()
    state = FeatureState(spec)
    row = _row(spec, state.update([_ev(T0, account=None, category="pricing")]).values[0])
    assert row["contacts__distinct__24h"] == 0.0
    assert row["contacts__count__24h"] == 0.0
    assert row["views__count__1h"] == 1.0
    assert state.n_accounts == 0


def test_account_rollups_are_exact_when_shards_route_by_account() -> None:
    """Entities of one account on one shard: same account features as a single state."""
    spec = _spec()
    events = [
        _ev(T0 + i * MINUTE, entity=f"e{i % 7}", account=f"a{i % 3}", category="pricing")
        for i in range(60)
    ]
    single = FeatureState(spec).update(events).values
    shards = [FeatureState(spec) for _ in range(2)]
    sharded = np.zeros_like(single)
    for i, ev in enumerate(events):
        shard = shards[hash(ev.account_id) % 2]
        sharded[i] = shard.update([ev]).values[0]
    cols = [i for i, n in enumerate(spec.names) if n.startswith("contacts__")]
    assert sharded[:, cols].tolist() == single[:, cols].tolist()
    # distinct contacts of a0 over its 20 events: entities i % 7 for i = 0, 3, ..., 57
    a0 = [i for i, ev in enumerate(events) if ev.account_id == "a0"]
    assert single[a0[-1], cols[0]] == len({i % 7 for i in range(0, 60, 3)})


@pytest.mark.parametrize(
    ("where", "hits"),
    [
        # values: "a", "1", 1, 1.0, True, None, 2.5, nan, [1], -3
        ('props.v == "a"', [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("props.v == 1", [0, 0, 1, 1, 0, 0, 0, 0, 0, 0]),
        ("props.v == true", [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]),
        ('props.v in ["1", 2.5]', [0, 1, 0, 0, 0, 0, 1, 0, 0, 0]),
        ("props.v >= 1", [0, 0, 1, 1, 0, 0, 1, 0, 0, 0]),
        ("props.v < 1", [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
    ],
)
def test_filter_semantics(where: str, hits: list[int]) -> None:
    spec = FeatureSpec.from_dict(
        {"f": {"types": ["click"], "where": [where], "aggregations": ["count"], "windows": ["1h"]}}
    )
    values: list[Any] = ["a", "1", 1, 1.0, True, None, 2.5, math.nan, [1], -3]
    events = [_ev(T0 + i, etype="click", v=v) for i, v in enumerate(values)]
    events.append(_ev(T0 + 99, etype="page_view", v="a"))  # another type never matches
    counts = FeatureState(spec).update(events).values[:, 0].tolist()
    assert counts == np.cumsum([*hits, 0]).tolist()


def test_distinct_saturates_at_max_distinct() -> None:
    spec = FeatureSpec.from_dict(
        {
            "pages": {
                "types": ["page_view"],
                "aggregations": ["distinct"],
                "distinct": "props.url",
                "windows": ["1h"],
                "max_distinct": 3,
            }
        }
    )
    state = FeatureState(spec)
    urls = ["a", "b", "a", "c", "d", "e"]
    got = state.update([_ev(T0 + i, url=u) for i, u in enumerate(urls)]).values[:, 0]
    assert got.tolist() == [1.0, 2.0, 2.0, 3.0, 3.0, 3.0]


def test_eviction_forgets_idle_keys_and_reuses_their_rows() -> None:
    spec = _spec(entity_ttl="2d")
    state = FeatureState(spec, initial_capacity=2)
    state.update([_ev(T0, entity="old", account="a-old"), _ev(T0 + DAY, entity="new")])
    assert (state.n_entities, state.n_accounts) == (2, 2)
    nbytes = state.nbytes
    assert state.evict_idle(T0 + 2 * DAY) == 0  # exactly at the TTL: kept
    assert state.evict_idle(T0 + 2 * DAY + 1) == 2  # "old" and "a-old"
    assert (state.n_entities, state.n_accounts) == (1, 1)
    row = _row(spec, state.update([_ev(T0 + 3 * DAY, entity="other")]).values[0])
    assert state.nbytes == nbytes  # the freed rows were reused
    assert row["dwell__last"] == 0.0
    row = _row(spec, state.update([_ev(T0 + 3 * DAY, entity="old", category="pricing")]).values[0])
    assert row["views__count__1h"] == 1.0
    assert row["contacts__distinct__24h"] == 2.0  # "other" and "old" under a1


def test_distinct_value_hashes_are_stable() -> None:
    """Snapshots hold these hashes: the same values must hash the same in every version."""
    want = {
        "c-000132": -5506253470949695663,
        "": 3244421341483603138,
        "\u00e9\ud800": -3762487729965461172,  # a lone surrogate still hashes
    }
    assert [str_hash(k) for k in want] == str_hashes(list(want)) == list(want.values())
    assert [value_hash(k) for k in want] == list(want.values())
    # XXH3-64 of the UTF-8 text, as a signed integer
    assert str_hash("c-000132") == np.uint64(xxh3_64_intdigest(b"c-000132")).astype(np.int64)
    assert (value_hash(1), value_hash(1.0)) == (-8062512163467631356, -8062512163467631356)
    assert value_hash(True) == 9185796432261322601
    assert value_hash("b1") != value_hash(True)  # strings and other values use different seeds
    assert str_hashes([]) == []


def _stream(n: int) -> list[Event]:
    rng = np.random.default_rng(5)
    out = []
    ts = T0
    for _ in range(n):
        ts += int(rng.integers(0, 20 * MINUTE))
        late = int(rng.integers(0, 30 * MINUTE)) if rng.random() < 0.2 else 0
        out.append(
            _ev(
                ts - late,
                entity=f"e{rng.integers(0, 5)}",
                account=[None, "a1", "a2"][int(rng.integers(0, 3))],
                category=["pricing", "product"][int(rng.integers(0, 2))],
                duration_s=float(rng.integers(0, 100)) / 4,
            )
        )
    return out


@pytest.mark.parametrize("cut", [0, 1, 37, 120])
def test_resumed_run_equals_an_uninterrupted_one(cut: int) -> None:
    spec = _spec()
    events = _stream(120)
    whole = FeatureState(spec)
    expected = whole.update(events)
    first = FeatureState(spec)
    head = first.update(events[:cut])
    blob = pickle.dumps(first.snapshot())
    resumed = FeatureState.restore(spec, pickle.loads(blob))
    tail = resumed.update(events[cut:])
    got = np.vstack([head.values, tail.values])
    assert got.tolist() == expected.values.tolist()
    assert np.concatenate([head.accepted, tail.accepted]).tolist() == expected.accepted.tolist()
    for name in ("late_dropped", "late_accepted", "n_entities", "n_accounts"):
        assert getattr(resumed, name) == getattr(whole, name)
    assert resumed.snapshot().entities.keys == whole.snapshot().entities.keys


def test_pickled_state_continues_identically() -> None:
    spec = _spec()
    events = _stream(60)
    a = FeatureState(spec)
    a.update(events[:30])
    b = pickle.loads(pickle.dumps(a))
    assert b.update(events[30:]).values.tolist() == a.update(events[30:]).values.tolist()


def test_snapshot_is_an_immutable_copy() -> None:
    spec = _spec()
    state = FeatureState(spec)
    state.update([_ev(T0, category="pricing")])
    snap = state.snapshot()
    assert snap.schema_version == SCHEMA_VERSION
    assert snap.spec_hash == spec.spec_hash
    before = pickle.dumps(snap)
    state.update([_ev(T0 + 1, category="pricing")])
    assert pickle.dumps(snap) == before
    clock = snap.entities.clock
    with pytest.raises(ValueError, match="read-only"):
        clock[0] = 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.spec_hash = "x"  # type: ignore[misc]


def test_a_snapshot_without_copy_views_the_state_and_restores_the_same() -> None:
    """``copy=False`` (the shard pickles at once) shares the live arrays when every row
    is held, gathers them when some are free, and restores exactly like a copy."""
    spec = _spec(entity_ttl="2d")
    state = FeatureState(spec)
    state.update([_ev(T0 + i, entity=f"c{i % 5}", category="pricing") for i in range(20)])
    live = state._entities.arrays
    views, copied = state.snapshot(copy=False), state.snapshot()
    assert all(np.shares_memory(a, live[n]) for n, a in views.entities.arrays if a.size)
    assert not any(np.shares_memory(a, live[n]) for n, a in copied.entities.arrays)
    assert pickle.dumps(views) == pickle.dumps(copied)
    with pytest.raises(ValueError, match="read-only"):
        views.entities.clock[0] = 0
    assert state.evict_idle(T0 + 19 + 2 * DAY + 1) > 0  # frees every row
    state.update([_ev(T0 + 3 * DAY, entity="c1"), _ev(T0 + 3 * DAY, entity="new")])
    assert state._entities.free  # some rows are free: a gather
    views, copied = state.snapshot(copy=False), state.snapshot()
    assert not any(np.shares_memory(a, live[n]) for n, a in views.entities.arrays)
    assert pickle.dumps(views) == pickle.dumps(copied)
    restored = FeatureState.restore(spec, views)  # views hold until the state changes
    later = [_ev(T0 + 3 * DAY + 5, entity="new", category="pricing")]
    want = state.update(later).values
    assert restored.update(later).values.tolist() == want.tolist()


def test_restore_refuses_a_snapshot_of_another_spec() -> None:
    old = _spec()
    state = FeatureState(old)
    state.update([_ev(T0)])
    snap = state.snapshot()
    new = _spec(allowed_lateness="1h")
    with pytest.raises(SnapshotMismatchError, match=r"feature spec .* the \[features\] section"):
        FeatureState.restore(new, snap)
    with pytest.raises(SnapshotMismatchError, match="schema version 0"):
        FeatureState.restore(old, dataclasses.replace(snap, schema_version=0))
    broken = dataclasses.replace(
        snap, entities=dataclasses.replace(snap.entities, arrays=snap.entities.arrays[1:])
    )
    with pytest.raises(SnapshotMismatchError, match="does not belong to this spec"):
        FeatureState.restore(old, broken)


def test_values_stay_finite_on_extreme_input() -> None:
    spec = _spec()
    state = FeatureState(spec)
    events = [
        _ev(T0 + i, category="pricing", duration_s=v)
        for i, v in enumerate([1e300, -1e300, math.inf, math.nan, 10**400, -(10**400), "7", True])
    ]
    batch = state.update(events)
    assert np.isfinite(batch.values).all()
    last = _row(spec, batch.values[-1])
    assert last["dwell__max__1h"] == 1e15  # clamped to VALUE_LIMIT
    assert last["dwell__sum__1h"] == 0.0  # +1e15 -1e15 +1e15 -1e15; inf, nan, "7", True ignored


def test_empty_batch() -> None:
    spec = _spec()
    batch = FeatureState(spec).update([])
    assert batch.values.shape == (0, len(spec.names))
    assert batch.accepted.shape == (0,)


def test_default_spec_memory_per_entity_within_budget() -> None:
    """State arrays plus key index, measured with tracemalloc, stay under 2 KiB per entity."""
    spec = FeatureSpec.default()
    state = FeatureState(spec, initial_capacity=8)
    assert state.bytes_per_entity <= 2048
    state.update([_ev(T0)])  # load the compiled kernels before measuring
    n = 4096
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        # built while tracing, so that the key strings the state keeps are counted
        events = [
            Event(str(i), T0 + i, f"contact-{i:012d}", "page_view", None, {"category": "pricing"})
            for i in range(n)
        ]
        state = FeatureState(spec, initial_capacity=n)
        for i in range(0, n, 512):
            state.update(events[i : i + 512])
        del events
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    # the account table holds no key here; its preallocated rows are not entity memory
    per_entity = (used - state.bytes_per_account * state.account_capacity) / n
    assert state.n_entities == n
    assert per_entity <= 2048, per_entity


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_spare_capacity_takes_no_resident_memory() -> None:
    """Rows are filled when handed out, so unused capacity stays untouched (not resident)."""
    spec = FeatureSpec.default()
    FeatureState(spec).update([_ev(T0)])  # kernels loaded before measuring
    gc.collect()
    before = _rss()
    state = FeatureState(spec, initial_capacity=400_000)  # about 550 MB of arrays
    state.update([_ev(T0 + i, entity=f"c{i}", account=None) for i in range(1000)])
    grown = _rss() - before
    assert state.nbytes > 500 * 2**20
    assert grown < 120 * 2**20, grown
    # a row handed out from spare capacity starts empty, like one of a fresh state
    row = state.update([_ev(T0 + 5_000, entity="c7", account=None)]).values[0]
    fresh = FeatureState(spec).update(
        [_ev(T0 + 7, entity="c7", account=None), _ev(T0 + 5_000, entity="c7", account=None)]
    )
    assert row.tolist() == fresh.values[1].tolist()


def test_a_state_sized_for_its_keys_never_grows_and_keeps_its_size() -> None:
    """Capacities given up front hold every key without a copy, and survive a restore."""
    spec = _spec()
    state = FeatureState(spec, initial_capacity=1000, account_capacity=100)
    arrays = [id(a) for a in state._entities.arrays.values()]
    events = [_ev(T0 + i, entity=f"c{i}", account=f"a{i % 40}") for i in range(1000)]
    got = state.update(events).values
    assert (state.n_entities, state.n_accounts) == (1000, 40)
    assert (state.entity_capacity, state.account_capacity) == (1000, 100)
    assert [id(a) for a in state._entities.arrays.values()] == arrays  # no reallocation
    assert state.grows == 0
    assert got.tolist() == FeatureState(spec).update(events).values.tolist()
    for copy in (
        pickle.loads(pickle.dumps(state)),
        FeatureState.restore(spec, state.snapshot(), initial_capacity=1000, account_capacity=100),
    ):
        assert (copy.entity_capacity, copy.account_capacity) == (2000, 100)
    # a snapshot larger than the capacities asked for gets room for twice its rows
    small = FeatureState.restore(spec, state.snapshot(), initial_capacity=10, account_capacity=2)
    assert (small.entity_capacity, small.account_capacity) == (2000, 80)
    small.update([_ev(T0 + 1400, entity="new", account="new")])
    assert small.grows == 0
    assert FeatureState(spec, initial_capacity=320).account_capacity == 20  # a sixteenth
    with pytest.raises(ValueError, match="account_capacity"):
        FeatureState(spec, account_capacity=-1)


def test_growth_is_counted_and_logged_with_the_setting_that_avoids_it(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from intentflow.features import state as state_module

    monkeypatch.setattr(state_module, "_GROW_WARN_ROWS", 8)
    state = FeatureState(_spec(), initial_capacity=4)
    assert (state.grows, state.grow_seconds) == (0, 0.0)
    with caplog.at_level(logging.DEBUG, logger="intentflow.features.state"):
        for i in range(20):  # one new entity per batch: 4 -> 8 -> 16 -> 32 rows
            state.update([_ev(T0 + i, entity=f"c{i}", account=None)])
    grown = [r for r in caplog.records if "entity rows grew" in r.getMessage()]
    assert [r.levelno for r in grown] == [logging.DEBUG, logging.WARNING, logging.WARNING]
    assert "from 8 to 16" in grown[1].getMessage()
    assert "engine.entities_per_shard" in grown[1].getMessage()
    assert state.grows == 3
    assert state.grow_seconds > 0.0
    unsized = FeatureState(_spec(), initial_capacity=32)
    unsized.update([_ev(T0 + i, entity=f"c{i}", account=None) for i in range(20)])
    assert unsized.grows == 0


def test_prefault_writes_the_capacity_up_front() -> None:
    """Every row is written when allocated (at start and at each growth), not when handed out.

    Checked on the rows written, not on resident memory: the allocator may hand
    back memory the process freed earlier, which is resident already.
    """
    spec = FeatureSpec.default()
    state = FeatureState(spec, initial_capacity=100_000, prefault=True)
    lazy = FeatureState(spec, initial_capacity=100_000)
    assert state._entities.filled == state.entity_capacity == 100_000
    assert state._accounts.filled == state.account_capacity
    assert lazy._entities.filled == lazy._accounts.filled == 0
    events = [_ev(T0 + i, entity=f"c{i % 7}") for i in range(50)]
    got = state.update(events).values
    assert got.tolist() == FeatureState(spec).update(events).values.tolist()
    small = FeatureState(spec, initial_capacity=4, prefault=True)
    small.update([_ev(T0 + i, entity=f"c{i}") for i in range(10)])
    assert small.entity_capacity >= 10
    assert small._entities.filled == small.entity_capacity


def test_rows_of_missing_accounts_are_minus_one_and_counted() -> None:
    """None and "" are no account key; real keys get rows in order of first sight."""
    table = _Table(compile_program(FeatureSpec.default(), "account"), 4)
    rows, missing = table.account_rows([None, "a", "", "a", "b", None])
    assert (rows.tolist(), missing) == ([-1, 0, -1, 0, 1, -1], 3)
    rows, missing = table.account_rows(["b", None, "c"])
    assert (rows.tolist(), missing) == ([1, -1, 2], 1)
    assert table.keys == ["a", "b", "c"]
    # without missing keys, an entity table holds whatever it is given
    entity = _Table(compile_program(FeatureSpec.default(), "entity"), 4)
    assert entity.rows(["x", "", "x"]).tolist() == [0, 1, 0]
    assert entity.keys == ["x", ""]

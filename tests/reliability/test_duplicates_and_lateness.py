"""Duplicate and out-of-order events: each ``event_id`` counts once; lateness by policy.

Duplicates are injected at every distance (same batch, next batch, thousands
of events later) and with altered content (the first copy wins); the flow's
alerts and final state must equal the run without them, and the engine
counts every copy it dropped. Out-of-order events within
``allowed_lateness`` give the same feature state as the sorted stream;
events later than that are dropped or clamped as the spec's ``late_policy``
says, and counted either way.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from enginekit import PROBE, comparable, counters, shard_states
from flowkit import decisions, demo_config, gen_payloads, items_of, run_memory

from intentflow.contracts import Limits, Rejection, parse_event
from intentflow.events import Event
from intentflow.features.spec import FeatureSpec
from intentflow.features.state import FeatureSnapshot, FeatureState

N = 4000


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], list[Any], Path]:
    payloads = gen_payloads(N, seed=8)
    rec = tmp_path_factory.mktemp("base")
    out = run_memory(demo_config(), items_of(payloads), recovery_dir=rec)
    return payloads, decisions(out), rec


def test_every_duplicate_is_dropped_whatever_its_distance_or_content(
    base: tuple[list[bytes], list[Any], Path], tmp_path: Path
) -> None:
    payloads, expected, rec_ref = base
    rng = random.Random(5)
    stream = list(payloads)
    injected = 0
    for distance in (0, 1, 7, 120, 999, 3500):
        for _ in range(15):
            i = rng.randrange(0, len(payloads) - distance)
            copy = orjson.loads(payloads[i])
            if rng.random() < 0.5:  # a re-sent event with other content: the first wins
                copy["props"] = {"page": "/other", "category": "pricing", "duration_s": 999}
                copy["type"] = "page_view"
            at = stream.index(payloads[i]) + 1 + distance
            stream.insert(min(at, len(stream)), orjson.dumps(copy))
            injected += 1
    rec = tmp_path / "rec"
    rec.mkdir()
    out = run_memory(demo_config(), items_of(stream), recovery_dir=rec, batch_size=250)
    assert decisions(out) == expected
    got, ref = shard_states(rec), shard_states(rec_ref)
    assert sum(c.get("duplicates", 0) for c in counters(got).values()) == injected
    for s in got.values():
        del s["counters"]["duplicates"]
    assert comparable(got, PROBE) == comparable(ref, PROBE)


# --- lateness, on a shard's feature state -------------------------------------------------


def events_of(payloads: list[bytes]) -> list[Event]:
    parsed = [parse_event(p, Limits(), now_ms=2**62) for p in payloads]
    return [e for e in parsed if not isinstance(e, Rejection)]


def rows(snap: FeatureSnapshot) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for table in ("entities", "accounts"):
        t = getattr(snap, table)
        for i, key in enumerate(t.keys):
            out[f"{table}:{key}"] = {name: arr[i] for name, arr in t.arrays} | {
                "clock": np.array([t.clock[i]])
            }
    return out


def assert_same_state(a: FeatureSnapshot, b: FeatureSnapshot) -> None:
    ra, rb = rows(a), rows(b)
    assert ra.keys() == rb.keys()
    for key, arrays in ra.items():
        # Distinct values are a set kept in hash slots: compare (hash, time) pairs.
        pa = sorted(zip(arrays["dist_hash"].tolist(), arrays["dist_ts"].tolist(), strict=True))
        pb = sorted(zip(rb[key]["dist_hash"].tolist(), rb[key]["dist_ts"].tolist(), strict=True))
        assert pa == pb, key
        for name, x in arrays.items():
            if name.startswith("dist_"):
                continue
            y = rb[key][name]
            if x.dtype.kind == "f":
                np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-9, err_msg=f"{key} {name}")
            else:
                np.testing.assert_array_equal(x, y, err_msg=f"{key} {name}")


def test_out_of_order_within_the_allowed_lateness_equals_the_sorted_stream() -> None:
    spec = FeatureSpec.default()
    disordered = events_of(
        gen_payloads(N, seed=9, out_of_order_fraction=0.2, max_disorder_ms=5 * 60_000)
    )
    assert spec.allowed_lateness_ms > 5 * 60_000
    ordered = sorted(disordered, key=lambda e: e.ts_ms)
    assert [e.event_id for e in ordered] != [e.event_id for e in disordered]
    a, b = FeatureState(spec), FeatureState(spec)
    for i in range(0, len(disordered), 97):
        a.update(disordered[i : i + 97])
    b.update(ordered)
    snap = a.snapshot()
    assert dict(snap.counters)["late_accepted"] > 50, "the disorder must reach the state"
    assert dict(snap.counters)["late_dropped"] == 0
    assert_same_state(snap, b.snapshot())


@pytest.mark.parametrize("policy", ["drop", "clamp"])
def test_events_later_than_allowed_are_handled_by_policy_and_counted(policy: str) -> None:
    spec = dataclasses.replace(FeatureSpec.default(), late_policy=policy)
    events = events_of(gen_payloads(2000, seed=10))
    rng = random.Random(3)
    chosen = {ev.event_id for ev in rng.sample(events[500:], 40)}
    with_late: list[Event] = []
    for ev in events:
        with_late.append(ev)
        if ev.event_id in chosen:  # right after the original: its time is the key's clock
            behind = ev.ts_ms - spec.allowed_lateness_ms - 3_600_000
            with_late.append(dataclasses.replace(ev, event_id=f"late-{ev.event_id}", ts_ms=behind))
    late = [e for e in with_late if e.event_id.startswith("late-")]
    a, b = FeatureState(spec), FeatureState(spec)
    batch = a.update(with_late)
    b.update(events)
    counts = dict(a.snapshot().counters)
    is_late = np.array([e.event_id.startswith("late-") for e in with_late])
    if policy == "drop":
        assert counts["late_dropped"] == len(late)
        assert not batch.accepted[is_late].any()
        assert batch.accepted[~is_late].all()
        assert_same_state(a.snapshot(), b.snapshot())  # dropped: no trace in the state
    else:
        assert counts["late_clamped"] == len(late)
        assert batch.accepted.all()
        with pytest.raises(AssertionError):
            assert_same_state(a.snapshot(), b.snapshot())  # clamped: applied


def test_the_engine_counts_late_events_it_kept_out_of_the_state(tmp_path: Path) -> None:
    payloads = gen_payloads(1500, seed=12)
    late = []
    for p in payloads[600:640]:
        doc = orjson.loads(p)
        doc["event_id"] = "late-" + doc["event_id"]
        doc["ts"] = doc["ts"] - 2 * 3_600_000  # two hours behind its key: beyond 10 min
        late.append(orjson.dumps(doc))
    stream = payloads[:1000] + late + payloads[1000:]
    rec = tmp_path / "rec"
    rec.mkdir()
    run_memory(demo_config(), items_of(stream), recovery_dir=rec)
    per_shard = counters(shard_states(rec)).values()
    total = {k: sum(c.get(k, 0) for c in per_shard) for k in ("late_dropped", "events")}
    assert total["late_dropped"] == len(late)
    assert total["events"] == len(stream)

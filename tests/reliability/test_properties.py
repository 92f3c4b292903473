"""Property and stateful tests: parsing under mutation, and a shard under every history.

The parser's basic properties (arbitrary bytes never raise, valid objects are
accepted) are in ``tests/test_contracts.py``. Here: valid payloads mutated
byte by byte are either the same event or a dead letter with a valid record;
and a Hypothesis state machine drives one shard (:class:`ShardLogic`)
through random histories of new events, duplicates, local reordering,
changing batch sizes and snapshot/restore cycles (a resume), checking the
counters after every step and, at the end, that its state equals a shard
that saw each event once, in one batch, without interruption.
"""

from __future__ import annotations

import json
import pickle
import random
from importlib import resources
from typing import Any

import jsonschema
import numpy as np
import orjson
from enginekit import PROBE, probe_scores
from flowkit import demo_config, gen_payloads
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from intentflow.contracts import REASONS, Limits, Rejection, dead_letter, parse_event
from intentflow.dataflows.flow import engine_parts
from intentflow.dataflows.logic import ShardLogic
from intentflow.events import Event
from intentflow.sinks.base import ScoreOut, records

NOW = 1_767_300_000_000
LIMITS = Limits()
DLQ_SCHEMA = json.loads(
    resources.files("intentflow").joinpath("schemas/dlq.schema.json").read_text()
)
VALID = gen_payloads(300, seed=31)
POOL: list[Event] = [
    e for e in (parse_event(p, LIMITS, now_ms=NOW) for p in gen_payloads(1500, seed=32))
    if isinstance(e, Event)
]  # fmt: skip
PARTS = engine_parts(demo_config())


# --- parsing under mutation -------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid payload with a few bytes flipped, cut, inserted or duplicated."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "cut", "insert", "repeat"]))
        if op == "flip" and i < len(data):
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[i : i + draw(st.integers(1, 40))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif i < len(data):
            data[i:i] = data[i : i + draw(st.integers(1, 30))]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_a_mutated_payload_is_an_event_or_a_valid_dead_letter(payload: bytes) -> None:
    got = parse_event(payload, LIMITS, now_ms=NOW, source="s", offset="7")
    assert parse_event(payload, LIMITS, now_ms=NOW, source="s", offset="7") == got  # pure
    if isinstance(got, Rejection):
        assert got.reason in REASONS
        record = dead_letter(got, payload, LIMITS, source="s", offset="7", received_ts=1.0)
        jsonschema.validate(record, DLQ_SCHEMA)
        assert len(record["payload"]) <= LIMITS.dlq_payload_chars
        return
    # Accepted: the event is exactly what the (still valid) JSON says.
    doc = orjson.loads(payload)
    again = parse_event(
        orjson.dumps({k: doc[k] for k in ("event_id", "ts", "entity_id", "type") if k in doc}
                     | {"account_id": got.account_id, "props": got.props}),
        LIMITS,
        now_ms=NOW,
        source="s",
        offset="7",
    )  # fmt: skip
    assert again == got


# --- one shard under random histories -----------------------------------------------------------


def state_of(shard: ShardLogic) -> dict[str, Any]:
    """What two equivalent histories must agree on."""
    snap = shard.features.snapshot()
    tables = {}
    for name in ("entities", "accounts"):
        t = getattr(snap, name)
        rows = {}
        for i, key in enumerate(t.keys):
            arrays = dict(t.arrays)
            pairs = sorted(
                zip(arrays["dist_hash"][i].tolist(), arrays["dist_ts"][i].tolist(), strict=True)
            )
            rows[key] = (
                int(t.clock[i]),
                tuple(a[i].tobytes() for n, a in t.arrays if not n.startswith("dist_")),
                tuple(pairs),
            )
        tables[name] = rows
    counters = {k: v for k, v in shard.counters.items() if k != "duplicates"}
    return {
        "features": tables,
        "model": shard.model.version,
        "scores": probe_scores(shard.model, PROBE).tolist(),
        "seen": shard.seen.items(),
        "watermark": shard.watermark,
        "counters": counters,
        "pending": shard.labels.n_pending,
    }


class ShardHistory(RuleBasedStateMachine):
    """Random histories of one shard against the same events seen once, in one batch."""

    def __init__(self) -> None:
        super().__init__()
        self.shard = ShardLogic(PARTS, None)
        self.next = 0
        self.unique: list[Event] = []
        self.duplicates = 0
        self.last_score: dict[str, float] = {}
        self.resumes = 0

    def _feed(self, batch: list[Event]) -> None:
        out, _ = self.shard.on_batch(batch)
        for o in records(out):
            if isinstance(o, ScoreOut):
                self.last_score[o.entity_id] = o.score

    def _fresh(self, n: int) -> list[Event]:
        got = POOL[self.next : self.next + n]
        self.next += len(got)
        self.unique += got
        return got

    @precondition(lambda self: self.next < len(POOL))
    @rule(n=st.integers(1, 60))
    def apply(self, n: int) -> None:
        self._feed(self._fresh(n))

    @precondition(lambda self: self.next < len(POOL))
    @rule(n=st.integers(2, 40), size=st.integers(1, 7))
    def apply_in_small_batches(self, n: int, size: int) -> None:
        events = self._fresh(n)
        for i in range(0, len(events), size):
            self._feed(events[i : i + size])

    @precondition(lambda self: bool(self.unique))
    @rule(data=st.data(), fresh=st.integers(0, 10))
    def duplicate(self, data: st.DataObject, fresh: int) -> None:
        picks = data.draw(st.lists(st.sampled_from(self.unique), min_size=1, max_size=8))
        new = self._fresh(fresh)
        batch = picks + new
        random.Random(data.draw(st.integers(0, 2**16))).shuffle(batch)
        # The reference sees each new event once, in the order it arrives in the batch.
        ids = {e.event_id for e in new}
        del self.unique[len(self.unique) - len(new) :]
        self.unique += [e for e in batch if e.event_id in ids]
        self.duplicates += len(picks)
        self._feed(batch)

    @precondition(lambda self: self.next < len(POOL))
    @rule(n=st.integers(2, 30), seed=st.integers(0, 2**16))
    def reorder(self, n: int, seed: int) -> None:
        events = self._fresh(n)
        random.Random(seed).shuffle(events)  # within a second of event time: not late
        del self.unique[len(self.unique) - len(events) :]
        self.unique += events
        self._feed(events)

    @rule()
    def snapshot_and_resume(self) -> None:
        snap = pickle.loads(pickle.dumps(self.shard.snapshot()))
        before = state_of(self.shard)
        self.shard = ShardLogic(PARTS, snap)
        assert state_of(self.shard) == before
        self.resumes += 1

    @invariant()
    def counts_each_event_once(self) -> None:
        assert self.shard.counters.get("events", 0) == len(self.unique)
        assert self.shard.counters.get("duplicates", 0) == self.duplicates
        assert len(self.shard.seen) == len(self.unique)
        assert self.shard.watermark == max((e.ts_ms for e in self.unique), default=0)

    def teardown(self) -> None:
        if not self.unique:
            return
        reference = ShardLogic(PARTS, None)
        out, _ = reference.on_batch(list(self.unique))
        assert state_of(self.shard) == state_of(reference)
        ref_last = {o.entity_id: o.score for o in records(out) if isinstance(o, ScoreOut)}
        assert ref_last  # the reference scored something: the comparison has content
        assert self.last_score == ref_last
        assert np.isfinite(list(ref_last.values())).all()


TestShardHistory = ShardHistory.TestCase
TestShardHistory.settings = settings(
    max_examples=25, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck)
)

"""A recovery directory written before labels were columnar resumes exactly.

``tests/data/shard-schema3.pkl.gz`` is a shard snapshot of schema 3 (its
label books pickled one tuple per pending point, its matured labels as
:class:`Matured` lists), written by the version before schema 4 after
3,799 events of the stream below, with positives held, positives waiting
for a tick and an extra label definition. ``shard-schema3.json`` holds
what that version emitted for the rest of the stream, and its final
counts. This version must resume from the snapshot and emit the same.
"""

from __future__ import annotations

import gzip
import json
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flowkit import demo_config, gen_payloads

from intentflow.contracts import Limits, parse_event
from intentflow.dataflows.flow import engine_parts
from intentflow.dataflows.logic import SNAPSHOT_SCHEMA_VERSION, ShardLogic
from intentflow.errors import SnapshotMismatchError
from intentflow.events import Event
from intentflow.online_models.labels import Labels
from intentflow.sinks.base import AlertOut, Output, ScoreOut, records

DATA = Path(__file__).with_name("data")
NOW = 1_767_300_000_000
LABELS = {
    "horizon_ms": 60000,
    "min_gap_ms": 5000,
    "extra": [{"name": "buys_soon", "horizon_ms": 20000, "min_gap_ms": 2000}],
}


def _events() -> list[Event]:
    parsed = (parse_event(p, Limits(), now_ms=NOW) for p in gen_payloads(6000, seed=5, entities=60))
    return [e for e in parsed if isinstance(e, Event)]


def _emitted(out: list[Output]) -> list[list[Any]]:
    got: list[list[Any]] = []
    for x in records(out):
        if isinstance(x, ScoreOut):
            got.append(["score", x.entity_id, x.score])
        elif isinstance(x, AlertOut):
            got.append(["alert", x.alert["alert_id"], x.alert["score"]])
    return got


def _final(shard: ShardLogic) -> dict[str, Any]:
    return {
        "labels": shard.labels.stats(),
        "side": [b.stats() for b in shard.side.books],
        "model": shard.model.version,
        "counters": shard.counters,
    }


def _run(shard: ShardLogic, events: list[Event]) -> list[list[Any]]:
    got: list[list[Any]] = []
    for i in range(0, len(events), 200):
        out, _ = shard.on_batch(events[i : i + 200])
        got += _emitted(list(out))
    return got


def test_a_schema_3_shard_snapshot_resumes_as_the_version_that_wrote_it_went_on() -> None:
    expected = json.loads((DATA / "shard-schema3.json").read_text())
    with gzip.open(DATA / "shard-schema3.pkl.gz", "rb") as f:
        snap = pickle.load(f)
    assert snap.schema_version == 3
    events = _events()
    cut = expected["cut"]
    assert (len(events), events[cut].event_id) == (expected["events"], expected["resume_event_id"])
    parts = engine_parts(demo_config(labels=LABELS))

    shard = ShardLogic(parts, snap)
    # what the old form held, in the new one
    assert (shard.labels.n_pending, shard.labels.n_held) == (185, 3)
    assert [len(m) for m in shard._matured] == [2]
    assert all(isinstance(m, Labels) for m in shard._matured)
    assert [sum(map(len, m)) for m in shard.side._matured] == [4]
    assert shard.side.books[0].n_pending == 185

    assert _run(shard, events[cut:]) == expected["outputs"]
    assert json.loads(json.dumps(_final(shard))) == expected["final"]


def test_a_resumed_schema_3_snapshot_is_written_as_schema_4_and_resumes_again() -> None:
    expected = json.loads((DATA / "shard-schema3.json").read_text())
    with gzip.open(DATA / "shard-schema3.pkl.gz", "rb") as f:
        old = pickle.load(f)
    events = _events()
    cut = expected["cut"]
    parts = engine_parts(demo_config(labels=LABELS))
    first = ShardLogic(parts, old)
    head = _run(first, events[cut : cut + 600])
    snap = pickle.loads(pickle.dumps(first.snapshot()))
    assert snap.schema_version == SNAPSHOT_SCHEMA_VERSION == 4
    tail = _run(ShardLogic(parts, snap), events[cut + 600 :])
    assert head + tail == expected["outputs"]


@pytest.mark.parametrize("schema", [2, 5])
def test_other_shard_schemas_are_refused_with_the_ones_this_version_reads(schema: int) -> None:
    with gzip.open(DATA / "shard-schema3.pkl.gz", "rb") as f:
        snap = replace(pickle.load(f), schema_version=schema)
    parts = engine_parts(demo_config(labels=LABELS))
    with pytest.raises(SnapshotMismatchError, match=rf"schema {schema} .*reads schemas 3 and 4"):
        ShardLogic(parts, snap)

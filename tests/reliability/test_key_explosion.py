"""Key explosion: two million distinct entities; memory stays bounded thanks to eviction.

The shard feature state is driven directly, in large batches, with a small
spec (one count over one hour) and ``entity_ttl = 2h``: every event is a new
entity, ten per second of event time, and
idle keys are evicted at each batch, as the engine's housekeeping does. The
live set is then at most ``(entity_ttl + one batch) × 10/s`` ≈ 74,000
entities; rows are reused through the free list, so the arrays stop growing
and the process's resident memory stays flat. The bound is documented in
docs/reliability.md. Without eviction the same stream holds two million
rows and their keys (several hundred MB): the checks below would fail.
Accounts live in a second table of the same kind, evicted the same way.
"""

from __future__ import annotations

import gc

import pytest
from enginekit import rss_kb

from intentflow.events import Event
from intentflow.features.spec import FeatureSpec
from intentflow.features.state import FeatureState

ENTITIES = 2_000_000
BATCH = 20_000
STEP_MS = 100  # ten new entities per second of event time
T0 = 1_767_225_600_000
TTL_MS = 2 * 3_600_000
#: Keys alive at most: those seen within the TTL, plus one batch between evictions.
LIVE_BOUND = TTL_MS // STEP_MS + BATCH
#: Resident-memory growth allowed after the live set reached its size (KiB).
RSS_SLACK_KB = 48 * 1024


def spec() -> FeatureSpec:
    return FeatureSpec.from_dict(
        {
            "entity_ttl": "2h",
            "allowed_lateness": "1m",
            "views": {"types": ["page_view"], "aggregations": ["count"], "windows": ["1h"]},
        }
    )


def batch(start: int) -> list[Event]:
    return [
        Event(f"e{i}", T0 + i * STEP_MS, f"c-{i}", "page_view") for i in range(start, start + BATCH)
    ]


@pytest.mark.slow
def test_two_million_entities_stay_within_the_memory_bound() -> None:
    state = FeatureState(spec())
    assert state.spec.entity_ttl_ms == TTL_MS
    steady_rss = 0
    steady_bytes = 0
    peak_entities = 0
    evicted = 0
    for start in range(0, ENTITIES, BATCH):
        events = batch(start)
        state.update(events)
        evicted += state.evict_idle(events[-1].ts_ms)
        peak_entities = max(peak_entities, state.n_entities)
        if start == 20 * BATCH:  # 400,000 entities in: the live set has its final size
            gc.collect()
            steady_rss, steady_bytes = rss_kb(), state.nbytes
    gc.collect()
    assert steady_rss > 0
    assert peak_entities <= LIVE_BOUND
    assert state.n_entities <= LIVE_BOUND
    assert evicted >= ENTITIES - LIVE_BOUND
    assert state.nbytes == steady_bytes, "the arrays grew after the live set was reached"
    growth = rss_kb() - steady_rss
    assert growth < RSS_SLACK_KB, f"resident memory grew by {growth / 1024:.0f} MiB"

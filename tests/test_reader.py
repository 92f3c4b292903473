from __future__ import annotations

import doctest
import json
import time
from typing import Any

import redis

import intentflow.sinks.reader as reader_module
from intentflow.sinks.base import AlertOut
from intentflow.sinks.reader import AlertReader, iter_alerts
from intentflow.sinks.redis_sink import RedisOutputWriter, RedisSinkConfig

ALERTS = "intentflow:alerts"


def put(client: redis.Redis, alert_id: str, **extra: Any) -> str:
    """Append an alert entry directly (as a second copy would look after its seen key expired)."""
    doc = json.dumps({"alert_id": alert_id, "entity_id": "e1", **extra})
    return client.xadd(ALERTS, {"alert": doc}).decode()


def ids_of(entries: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [alert["alert_id"] for _, alert in entries]


def test_reads_sink_output_in_order_and_acks(redis_url: str, redis_client: redis.Redis) -> None:
    writer = RedisOutputWriter(RedisSinkConfig(url=redis_url))
    docs = [{"alert_id": f"a{i}", "entity_id": f"e{i}", "action": "call"} for i in range(5)]
    writer.write_batch([AlertOut(d) for d in docs])
    writer.close()
    with AlertReader(redis_url, "app", "c1", start_id="0") as reader:
        got = reader.read(count=10, block_ms=None)
        assert [alert for _, alert in got] == docs
        stream_ids = [i.decode() for i, _ in redis_client.xrange(ALERTS)]
        assert [entry_id for entry_id, _ in got] == stream_ids
        assert reader.pending_count() == 5
        assert reader.ack(entry_id for entry_id, _ in got) == 5
        assert reader.pending_count() == 0
        assert reader.read(count=10, block_ms=None) == []
        assert reader.ack([]) == 0


def test_count_limits_a_read(redis_url: str, redis_client: redis.Redis) -> None:
    for i in range(5):
        put(redis_client, f"n{i}")
    with AlertReader(redis_url, "app", "c1", start_id="0") as reader:
        assert ids_of(reader.read(count=2, block_ms=None)) == ["n0", "n1"]
        assert ids_of(reader.read(count=10, block_ms=None)) == ["n2", "n3", "n4"]


def test_default_start_skips_history(redis_url: str, redis_client: redis.Redis) -> None:
    put(redis_client, "old")
    with AlertReader(redis_url, "app", "c1") as reader:
        assert reader.read(block_ms=None) == []  # creates the group at "$"
        put(redis_client, "new")
        assert ids_of(reader.read(block_ms=None)) == ["new"]


def test_groups_are_independent(redis_url: str, redis_client: redis.Redis) -> None:
    put(redis_client, "g1")
    with (
        AlertReader(redis_url, "crm", "c1", start_id="0") as crm,
        AlertReader(redis_url, "chat", "c1", start_id="0") as chat,
    ):
        assert ids_of(crm.read(block_ms=None)) == ["g1"]
        assert ids_of(chat.read(block_ms=None)) == ["g1"]


def test_unacked_entries_come_back_to_the_restarted_consumer(
    redis_url: str, redis_client: redis.Redis
) -> None:
    for i in range(3):
        put(redis_client, f"u{i}")
    with AlertReader(redis_url, "app", "c1", start_id="0") as first:
        got = first.read(block_ms=None)
        first.ack([got[0][0]])  # handled u0, then "crashed"
    put(redis_client, "u3")
    with AlertReader(redis_url, "app", "c1", start_id="0") as again:
        assert ids_of(again.read(count=10, block_ms=None)) == ["u1", "u2"]
        assert ids_of(again.read(count=10, block_ms=None)) == ["u3"]


def test_duplicate_copies_are_skipped_and_acked(redis_url: str, redis_client: redis.Redis) -> None:
    put(redis_client, "d1")
    put(redis_client, "d2")
    put(redis_client, "d1")  # a second copy of d1
    with AlertReader(redis_url, "app", "c1", start_id="0") as reader:
        got = reader.read(block_ms=None)
        assert ids_of(got) == ["d1", "d2"]
        assert reader.duplicates == 1
        assert reader.pending_count() == 2  # the copy was acked by the reader
        reader.ack(entry_id for entry_id, _ in got)
        put(redis_client, "d2")  # later copies are skipped as well
        assert reader.read(block_ms=None) == []
        assert reader.pending_count() == 0


def test_dedup_memory_is_bounded(redis_url: str, redis_client: redis.Redis) -> None:
    for alert_id in ["a", "b", "c", "a", "c"]:
        put(redis_client, alert_id)
    with AlertReader(redis_url, "app", "c1", start_id="0", dedup_size=2) as reader:
        # "a" was evicted by "b" and "c", so its second copy is delivered; "c" was not.
        assert ids_of(reader.read(block_ms=None)) == ["a", "b", "c", "a"]
    with AlertReader(redis_url, "app2", "c1", start_id="0", dedup_size=0) as no_dedup:
        assert ids_of(no_dedup.read(block_ms=None)) == ["a", "b", "c", "a", "c"]


def test_stale_pending_entries_are_reclaimed(redis_url: str, redis_client: redis.Redis) -> None:
    for i in range(3):
        put(redis_client, f"s{i}")
    crashed = AlertReader(redis_url, "app", "dead", start_id="0", claim_min_idle_ms=None)
    assert len(crashed.read(block_ms=None)) == 3
    crashed.close()  # never acks
    with AlertReader(redis_url, "app", "patient", claim_min_idle_ms=60_000) as patient:
        assert patient.reclaim() == []  # not idle for a minute yet
    time.sleep(0.05)
    with AlertReader(redis_url, "app", "live", claim_min_idle_ms=20, claim_interval_s=0) as live:
        got = live.read(count=10, block_ms=None)
        assert ids_of(got) == ["s0", "s1", "s2"]
        assert live.reclaimed == 3
        consumers = {c["name"]: c["pending"] for c in redis_client.xinfo_consumers(ALERTS, "app")}
        assert consumers[b"live"] == 3
        assert consumers[b"dead"] == 0
        live.ack(entry_id for entry_id, _ in got)
        assert live.pending_count() == 0


def test_reclaim_does_not_redeliver_what_this_reader_holds(
    redis_url: str, redis_client: redis.Redis
) -> None:
    put(redis_client, "h1")
    with AlertReader(
        redis_url, "app", "c1", start_id="0", claim_min_idle_ms=10, claim_interval_s=0
    ) as reader:
        held = reader.read(block_ms=None)
        assert ids_of(held) == ["h1"]
        time.sleep(0.03)
        assert reader.read(block_ms=None) == []  # reclaimed from itself, still being handled
        assert reader.redelivered_skipped == 1
        assert reader.pending_count() == 1
        reader.ack([held[0][0]])
        assert reader.pending_count() == 0


def test_trimmed_and_malformed_entries_are_acked(redis_url: str, redis_client: redis.Redis) -> None:
    put(redis_client, "t1")
    with AlertReader(redis_url, "app", "c1", start_id="0", claim_min_idle_ms=None) as first:
        assert ids_of(first.read(block_ms=None)) == ["t1"]
    redis_client.xtrim(ALERTS, maxlen=0, approximate=False)
    redis_client.xadd(ALERTS, {"something": "else"})
    redis_client.xadd(ALERTS, {"alert": "{not json"})
    time.sleep(0.02)
    with AlertReader(
        redis_url, "app", "c2", start_id="0", claim_min_idle_ms=10, claim_interval_s=0
    ) as second:
        assert second.read(block_ms=None) == []
        assert second.reclaim() == []
        assert second.trimmed == 1
        assert second.malformed == 2
        assert second.pending_count() == 0


def test_group_is_recreated_when_the_stream_vanishes(
    redis_url: str, redis_client: redis.Redis
) -> None:
    put(redis_client, "v1")
    with AlertReader(redis_url, "app", "c1", start_id="0") as reader:
        assert ids_of(reader.read(block_ms=None)) == ["v1"]
        redis_client.delete(ALERTS)  # e.g. a Redis without persistence restarted
        put(redis_client, "v2")
        assert ids_of(reader.read(block_ms=None)) == ["v2"]


def test_blocking_read_returns_entries_written_meanwhile(
    redis_url: str, redis_client: redis.Redis
) -> None:
    with AlertReader(redis_url, "app", "c1") as reader:
        reader.ensure_group()
        put(redis_client, "b1")
        assert ids_of(reader.read(block_ms=2000)) == ["b1"]


def test_reader_accepts_a_bytes_client(redis_url: str, redis_client: redis.Redis) -> None:
    put(redis_client, "x1")
    reader = AlertReader(redis_client, "app", "c1", start_id="0")
    got = reader.read(block_ms=None)
    assert ids_of(got) == ["x1"]
    assert isinstance(got[0][0], str)
    assert reader.ack([got[0][0]]) == 1
    reader.close()
    assert redis_client.ping() is True  # not closed: the reader did not own it


def test_iter_alerts_from_start_with_read_times(redis_url: str, redis_client: redis.Redis) -> None:
    entry_ids = [put(redis_client, f"i{i}") for i in range(4)]
    redis_client.xadd(ALERTS, {"junk": "1"})
    before = time.time() * 1000
    got = list(iter_alerts(redis_url, start_id="0", count=3, block_ms=50, idle_timeout_s=0.1))
    after = time.time() * 1000
    assert [entry_id for entry_id, _, _ in got] == entry_ids
    assert [alert["alert_id"] for _, alert, _ in got] == ["i0", "i1", "i2", "i3"]
    assert all(before <= ts <= after for _, _, ts in got)
    assert redis_client.xinfo_groups(ALERTS) == []  # tailing creates no group


def test_iter_alerts_dollar_means_after_the_call(redis_url: str, redis_client: redis.Redis) -> None:
    put(redis_client, "old")
    tail = iter_alerts(redis_url, block_ms=50, max_entries=2)
    put(redis_client, "new1")
    put(redis_client, "new2")
    put(redis_client, "new3")
    assert [alert["alert_id"] for _, alert, _ in tail] == ["new1", "new2"]


def test_iter_alerts_resumes_after_an_id_and_on_missing_stream(
    redis_url: str, redis_client: redis.Redis
) -> None:
    assert list(iter_alerts(redis_client, block_ms=20, idle_timeout_s=0.05)) == []
    first = put(redis_client, "r1")
    put(redis_client, "r2")
    got = list(iter_alerts(redis_client, start_id=first, block_ms=20, idle_timeout_s=0.05))
    assert [alert["alert_id"] for _, alert, _ in got] == ["r2"]


def test_docstring_example_runs() -> None:
    result = doctest.testmod(reader_module)
    assert result.attempted > 0
    assert result.failed == 0

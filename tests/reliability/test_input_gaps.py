"""Input lost before the engine read it is detected, counted and reported, never hidden.

The Redis input partition is driven directly (as Bytewax drives it) against
real redis-servers: the packaged 6.2 (gaps seen from the stream's head) and,
when installed, Redis 7 (exact, from ``max-deleted-entry-id``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
import redis
from conftest import SYSTEM_REDIS

from intentflow.dataflows.sources import RawItem, RedisStreamSource
from intentflow.metrics import Metrics
from intentflow.redisutil import EmbeddedRedis, connect

STREAM = "intentflow:events:0"
SERVERS = ["6.2", "7"]


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> Iterator[EmbeddedRedis]:
    """A private redis-server without persistence (restarts wipe it)."""
    if request.param == "7" and SYSTEM_REDIS is None:
        pytest.skip("redis-server 7 is not installed (apt-get install redis-server)")
    exe = SYSTEM_REDIS if request.param == "7" else None
    with EmbeddedRedis(executable=exe) as srv:
        yield srv


def reader(url: str, metrics: Metrics, resume: str | None = None) -> object:
    source = RedisStreamSource(url=url, batch_size=10_000, metrics=metrics)
    return source.build_part("input", STREAM, resume)


def drain(part: object) -> list[RawItem]:
    """Poll as Bytewax would (honouring ``next_awake``) until three polls in a row are empty."""
    got: list[RawItem] = []
    empty = 0
    while empty < 3:
        awake = part.next_awake()  # type: ignore[attr-defined]
        if awake is not None:
            time.sleep(max(0.0, awake.timestamp() - time.time()))
        batch = part.next_batch()  # type: ignore[attr-defined]
        got += batch
        empty = 0 if batch else empty + 1
    return got


def add(client: redis.Redis, n: int, start: int = 0) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for i in range(start, start + n):
        pipe.xadd(STREAM, {b"event": str(i).encode()})
    return [x.decode() for x in pipe.execute()]


def gaps(metrics: Metrics, kind: str) -> float:
    return metrics.sample("intentflow_source_gaps_total", {"kind": kind}) or 0.0


def payloads(items: list[RawItem]) -> list[int]:
    return [int(i.payload or b"-1") for i in items]


def test_a_stream_trimmed_past_the_resume_position_is_a_counted_gap(
    server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    client = connect(server.url)
    ids = add(client, 100)
    client.xtrim(STREAM, maxlen=50, approximate=False)  # entries 0..49 gone
    metrics = Metrics(process_collectors=False)
    part = reader(server.url, metrics, resume=ids[9])  # had read 0..9 before a crash
    with caplog.at_level(logging.ERROR, logger="intentflow.dataflows.sources"):
        got = drain(part)
    assert payloads(got) == list(range(50, 100))
    assert gaps(metrics, "trimmed") == 1
    assert gaps(metrics, "reset") == 0
    [record] = [r for r in caplog.records if "input gap" in r.getMessage()]
    assert STREAM in record.getMessage()
    assert ids[9] in record.getMessage()
    exposed = metrics.exposition().decode()
    assert 'intentflow_source_gaps_total{kind="trimmed"} 1.0' in exposed
    # The same incident is not counted again, a new one is.
    more = add(client, 30, start=100)
    assert payloads(drain(part)) == list(range(100, 130))
    assert gaps(metrics, "trimmed") == 1
    add(client, 30, start=130)
    client.xtrim(STREAM, maxlen=10, approximate=False)
    assert payloads(drain(part)) == list(range(150, 160))
    assert gaps(metrics, "trimmed") == 2
    assert more


def test_trimming_and_deleting_entries_already_read_is_no_gap(server: EmbeddedRedis) -> None:
    client = connect(server.url)
    metrics = Metrics(process_collectors=False)
    part = reader(server.url, metrics)
    seen: list[int] = []
    for round_ in range(10):
        ids = add(client, 40, start=40 * round_)
        seen += payloads(drain(part))
        client.xdel(STREAM, ids[0], ids[5])  # already read
        client.xtrim(STREAM, maxlen=20, approximate=False)  # already read
    assert seen == list(range(400))
    assert gaps(metrics, "trimmed") == gaps(metrics, "reset") == 0


def test_a_deleted_and_recreated_stream_is_one_reset_and_the_new_stream_is_read(
    server: EmbeddedRedis,
) -> None:
    client = connect(server.url)
    add(client, 20)
    metrics = Metrics(process_collectors=False)
    part = reader(server.url, metrics)
    assert payloads(drain(part)) == list(range(20))
    client.delete(STREAM)
    assert drain(part) == []
    assert gaps(metrics, "reset") == 1
    # Recreated with ids behind the old position (explicit ids): read from its start.
    for i in range(5):
        client.xadd(STREAM, {b"event": str(1000 + i).encode()}, id=f"1-{i + 1}")
    assert payloads(drain(part)) == [1000, 1001, 1002, 1003, 1004]
    assert gaps(metrics, "reset") == 1
    assert gaps(metrics, "trimmed") == 0


@pytest.mark.parametrize("persistence", [False, True])
def test_redis_restarted_with_and_without_persistence(persistence: bool) -> None:
    with EmbeddedRedis(persistence=persistence, executable=SYSTEM_REDIS) as srv:
        client = connect(srv.url)
        add(client, 30)
        if persistence:
            client.save()
        metrics = Metrics(process_collectors=False)
        part = reader(srv.url, metrics)
        assert payloads(drain(part)) == list(range(30))
        srv.stop()
        srv.start()
        client = connect(srv.url)
        add(client, 10, start=30)  # written after the restart, before the engine polls
        got = drain(part)
        assert payloads(got) == list(range(30, 40))
        if persistence:
            assert gaps(metrics, "reset") == gaps(metrics, "trimmed") == 0
        elif SYSTEM_REDIS is not None:  # Redis 7 tells a new stream from a trimmed one
            assert (gaps(metrics, "reset"), gaps(metrics, "trimmed")) == (1, 0)
        else:  # Redis 6.2: the head moved past the reader, reported as trimmed
            assert (gaps(metrics, "reset"), gaps(metrics, "trimmed")) == (0, 1)


def test_producer_timestamps_are_read_and_a_malformed_one_is_only_dropped() -> None:
    """``produced_ts`` is optional metadata: a bad value never loses the entry."""
    with EmbeddedRedis() as srv:
        client = connect(srv.url)
        client.xadd(STREAM, {b"event": b"1", b"produced_ts": b"1767225600000.5"})
        client.xadd(STREAM, {b"event": b"2"})
        part = reader(srv.url, Metrics())
        first = drain(part)
        client.xadd(STREAM, {b"event": b"3", b"produced_ts": b"1767225600001"})
        client.xadd(STREAM, {b"event": b"4", b"produced_ts": b"not-a-number"})
        second = drain(part)
        client.close()
    items = first + second
    assert payloads(items) == [1, 2, 3, 4]
    assert [i.produced_ts for i in items] == [1767225600000.5, None, 1767225600001.0, None]
    assert len({i.offset for i in items}) == 4

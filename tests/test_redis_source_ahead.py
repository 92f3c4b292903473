"""A Redis input that is behind reads ahead: the next batch is asked for with a full one.

The partition is driven directly, as Bytewax drives it, against a real
redis-server. Whether a read was sent ahead is told by what it returns: an
entry added after a full batch was returned, and before the next call, is
not in the batch that call returns (that read was answered before the entry
existed), but in the one after. Position, snapshots and resumes must not
notice the read-ahead.
"""

from __future__ import annotations

import threading
import time
from typing import Any
from unittest import mock

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from intentflow.dataflows import sources
from intentflow.dataflows.sources import SEND_AHEAD_MIN, RawItem, ReadAhead, RedisStreamSource
from intentflow.redisutil import EmbeddedRedis

PREFIX = "ahead-test:events:"
STREAM = f"{PREFIX}0"


def _fill(client: redis.Redis, n: int, start: int = 0) -> list[bytes]:
    payloads = [f"e{i}".encode() for i in range(start, start + n)]
    pipe = client.pipeline(transaction=False)
    for p in payloads:
        pipe.xadd(STREAM, {b"event": p})
    pipe.execute()
    return payloads


def _source(url: str, batch: int, count: int = 0) -> RedisStreamSource:
    return RedisStreamSource(url=url, prefix=PREFIX, batch_size=batch, count=count, idle_block_ms=0)


def _answered(part: Any) -> None:
    """Wait until the read sent ahead has been run: its reply has started to arrive.

    Entries added after this are certainly not in it (commands on two
    connections have no order of their own).
    """
    deadline = time.monotonic() + 5.0
    while not part._conn.can_read(0):
        assert time.monotonic() < deadline, "Redis never answered the read sent ahead"
        time.sleep(0.001)


def test_a_full_batch_sends_the_next_read_ahead(redis_url: str, redis_client: redis.Redis) -> None:
    sent = _fill(redis_client, 6)
    part = _source(redis_url, 4).build_part("input", STREAM, None)
    try:
        assert [i.payload for i in part.next_batch()] == sent[:4]  # full: reads ahead
        _answered(part)
        late = _fill(redis_client, 1, start=6)
        # the read sent ahead was answered before the late entry existed
        second = part.next_batch()
        assert [i.payload for i in second] == sent[4:]
        assert part.snapshot() == second[-1].offset  # the position: what was returned
        assert [i.payload for i in part.next_batch()] == late
    finally:
        part.close()


def test_a_caught_up_reader_does_not_read_ahead(redis_url: str, redis_client: redis.Redis) -> None:
    sent = _fill(redis_client, 3)
    part = _source(redis_url, 4).build_part("input", STREAM, None)
    try:
        assert [i.payload for i in part.next_batch()] == sent  # 3 of 4: caught up
        more = _fill(redis_client, 2, start=3)
        assert [i.payload for i in part.next_batch()] == more  # read when asked, not before
    finally:
        part.close()


def test_a_busy_reader_sends_its_next_read_when_asked_before_the_sink_sends(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """send_ahead: the read takes what has arrived then; later entries go to the read after."""
    first = _fill(redis_client, SEND_AHEAD_MIN)
    part = _source(redis_url, 1000).build_part("input", STREAM, None)
    try:
        assert [i.payload for i in part.next_batch()] == first  # not full: nothing sent ahead
        during = _fill(redis_client, 5, start=SEND_AHEAD_MIN)  # arrived while the engine worked
        part.send_ahead()
        part.send_ahead()  # one read in flight at most
        _answered(part)
        late = _fill(redis_client, 3, start=SEND_AHEAD_MIN + 5)
        second = part.next_batch()
        assert [i.payload for i in second] == during
        assert part.snapshot() == second[-1].offset
        assert [i.payload for i in part.next_batch()] == late
    finally:
        part.close()


@pytest.mark.parametrize(("n", "linger_ms"), [(SEND_AHEAD_MIN - 1, 0.0), (SEND_AHEAD_MIN, 5.0)])
def test_a_quiet_or_lingering_reader_sends_nothing_ahead(
    redis_url: str, redis_client: redis.Redis, n: int, linger_ms: float
) -> None:
    first = _fill(redis_client, n)
    source = RedisStreamSource(
        url=redis_url, prefix=PREFIX, batch_size=1000, idle_block_ms=0, linger_ms=linger_ms
    )
    part = source.build_part("input", STREAM, None)
    try:
        assert [i.payload for i in part.next_batch()] == first
        part.send_ahead()
        more = _fill(redis_client, 4, start=n)
        assert [i.payload for i in part.next_batch()] == more  # read when asked, not before
    finally:
        part.close()


def test_the_count_limit_stops_the_read_ahead(redis_url: str, redis_client: redis.Redis) -> None:
    sent = _fill(redis_client, 12)
    part = _source(redis_url, 4, count=8).build_part("input", STREAM, None)
    got: list[bytes | None] = []
    try:
        while True:
            try:
                got += [i.payload for i in part.next_batch()]
            except StopIteration:
                break
    finally:
        part.close()
    assert got == sent[:8]


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(0, 40),
    batch=st.integers(1, 7),
    stops=st.lists(st.integers(0, 12), min_size=1, max_size=4),
    send_ahead=st.booleans(),
)
def test_resuming_from_any_snapshot_reads_every_entry_once(
    redis_url: str, n: int, batch: int, stops: list[int], send_ahead: bool
) -> None:
    """Stop after any number of calls (a read may be pending), resume from the snapshot.

    With ``send_ahead`` the sink's hook sends a read after every batch of at
    least one entry, as a busy reader's would be.
    """
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(STREAM)
        sent = _fill(client, n)
        got: list[bytes | None] = []
        resume: str | None = None
        with mock.patch.object(sources, "SEND_AHEAD_MIN", 1):
            for calls in [*stops, n + 2]:  # the last run reads to the end
                part = _source(redis_url, batch).build_part("input", STREAM, resume)
                try:
                    for _ in range(calls):
                        got += [i.payload for i in part.next_batch()]
                        if send_ahead:
                            part.send_ahead()
                    resume = part.snapshot()
                finally:
                    part.close()
        assert got == sent
    finally:
        client.close()


def test_a_read_ahead_lost_with_the_connection_is_made_again() -> None:
    """Redis restarts while a read is in flight: nothing is skipped or read twice."""
    with EmbeddedRedis(persistence=True) as server:
        client = redis.Redis.from_url(server.url)
        sent = _fill(client, 10)
        client.save()  # the entries survive the restart below
        part = _source(server.url, 4).build_part("input", STREAM, None)
        got: list[bytes | None] = []
        try:
            got += [i.payload for i in part.next_batch()]  # full: a read is sent ahead
            assert part._ahead  # the case under test: its replies are not read yet
            server.kill()
            server.start()
            for _ in range(20):  # the first call fails and backs off, later ones read on
                got += [i.payload for i in part.next_batch()]
                if len(got) == len(sent):
                    break
                time.sleep(0.05)
        finally:
            part.close()
            client.close()
    assert got == sent


def test_entries_give_their_event_and_send_time_whatever_their_fields(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """The producer's layout, other orders, extra, missing and malformed fields."""
    entries: list[dict[bytes, bytes]] = [
        {b"event": b"e0", b"produced_ts": b"1700000000000.5"},  # what the producer writes
        {b"produced_ts": b"1700000000001", b"event": b"e1"},  # another order
        {b"event": b"e2"},  # no send time
        {b"event": b"e3", b"produced_ts": b"soon"},  # malformed: dropped, not fatal
        {b"event": b"e4", b"source": b"crm", b"produced_ts": b"1700000000004"},  # extra field
        {b"payload": b"e5", b"produced_ts": b"1700000000005"},  # no event: dead-lettered later
        {b"produced_ts": b"1700000000006", b"event": b"e6", b"x": b"1", b"y": b"2"},
    ]
    ids = [redis_client.xadd(STREAM, e) for e in entries]
    part = _source(redis_url, 100).build_part("input", STREAM, None)
    try:
        got = part.next_batch()
    finally:
        part.close()
    assert [(i.payload, i.produced_ts) for i in got] == [
        (b"e0", 1700000000000.5),
        (b"e1", 1700000000001.0),
        (b"e2", None),
        (b"e3", None),
        (b"e4", 1700000000004.0),
        (None, 1700000000005.0),
        (b"e6", 1700000000006.0),
    ]
    assert [i.offset for i in got] == [i.decode() for i in ids]
    assert all(isinstance(i, RawItem) and i.source == f"redis:{STREAM}" for i in got)


def test_linger_defers_the_read_after_a_batch_that_was_not_full(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """``linger_ms``: caught up, the next read waits; behind (a full batch), it does not."""
    from datetime import UTC, datetime, timedelta

    src = RedisStreamSource(
        url=redis_url, prefix=PREFIX, batch_size=4, idle_block_ms=0, linger_ms=50.0
    )
    part = src.build_part("input", STREAM, None)
    try:
        sent = _fill(redis_client, 3)
        before = datetime.now(UTC)
        assert [i.payload for i in part.next_batch()] == sent  # 3 of 4: caught up
        awake = part.next_awake()
        assert awake is not None
        assert before + timedelta(milliseconds=50) <= awake
        assert awake <= datetime.now(UTC) + timedelta(milliseconds=50)
        full = _fill(redis_client, 5, start=3)
        assert [i.payload for i in part.next_batch()] == full[:4]  # full: read on at once
        assert part.next_awake() is None
        assert [i.payload for i in part.next_batch()] == full[4:]  # the read sent ahead
    finally:
        part.close()
    without = RedisStreamSource(url=redis_url, prefix=PREFIX, batch_size=100, idle_block_ms=0)
    part = without.build_part("input", STREAM, None)
    try:
        assert len(part.next_batch()) == 8
        assert part.next_awake() is None  # the default: no linger
    finally:
        part.close()


# --- receiving the read ahead early (ReadAhead) -------------------------------------------

BIG = 1000  # entries per batch: a read of them is about 230 KiB, far more than a socket takes


def _fill_big(client: redis.Redis, n: int) -> list[bytes]:
    """``n`` entries of about 200 bytes, each with the producer's two fields."""
    payloads = [(f'{{"event_id":"e{i}","pad":"' + "x" * 170 + '"}').encode() for i in range(n)]
    pipe = client.pipeline(transaction=False)
    for p in payloads:
        pipe.xadd(STREAM, {b"event": p, b"produced_ts": b"1.0"})
    pipe.execute()
    return payloads


def _reader_output(client: redis.Redis) -> dict[str, int]:
    """Output buffer figures of the source's connection (the one whose last command was EXEC)."""
    readers = [c for c in client.client_list() if c.get("cmd") == "exec"]
    assert len(readers) == 1, readers
    return {k: int(readers[0][k]) for k in ("obl", "oll", "omem")}


def _wait_answered(client: redis.Redis, redis_url: str) -> None:
    """Wait until Redis has answered the read ahead (on a unix socket: and holds its rest)."""
    if not redis_url.startswith("unix"):
        time.sleep(0.05)  # over TCP the kernel takes the whole reply: nothing to observe
        return
    deadline = time.monotonic() + 5.0
    while _reader_output(client)["omem"] == 0:
        assert time.monotonic() < deadline, "Redis never answered the read sent ahead"
        time.sleep(0.005)


def test_receive_ahead_takes_the_whole_reply_off_redis(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """The rest of a large reply leaves Redis at receive_ahead, and the batch is the same."""
    sent = _fill_big(redis_client, 2 * BIG + 10)
    part = _source(redis_url, BIG).build_part("input", STREAM, None)
    try:
        assert [i.payload for i in part.next_batch()] == sent[:BIG]  # full: reads ahead
        _wait_answered(redis_client, redis_url)
        part.receive_ahead()
        assert _reader_output(redis_client)["omem"] == 0  # Redis holds nothing for the reader
        # the position is still the end of the batch returned
        assert part.snapshot().encode() == redis_client.xrange(STREAM, count=BIG)[-1][0]
        part.receive_ahead()  # a second call receives nothing more and changes nothing
        second = part.next_batch()
        assert [i.payload for i in second] == sent[BIG : 2 * BIG]
        assert part.snapshot() == second[-1].offset  # the position moved when it was returned
        assert [i.payload for i in part.next_batch()] == sent[2 * BIG :]
    finally:
        part.close()


def test_receive_ahead_without_a_read_ahead_reads_nothing(
    redis_url: str, redis_client: redis.Redis
) -> None:
    sent = _fill(redis_client, 3)
    part = _source(redis_url, 4).build_part("input", STREAM, None)
    try:
        part.receive_ahead()  # nothing read yet
        assert [i.payload for i in part.next_batch()] == sent  # 3 of 4: caught up, no read ahead
        part.receive_ahead()
        more = _fill(redis_client, 2, start=3)
        assert [i.payload for i in part.next_batch()] == more  # read when asked, not before
    finally:
        part.close()


def test_a_connection_lost_before_receive_ahead_is_handled_by_next_batch(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """The error is kept for next_batch, which backs off and reads on: nothing lost or doubled."""
    sent = _fill_big(redis_client, 2 * BIG)
    part = _source(redis_url, BIG).build_part("input", STREAM, None)
    got: list[bytes | None] = []
    try:
        got += [i.payload for i in part.next_batch()]
        _wait_answered(redis_client, redis_url)
        reader = next(c for c in redis_client.client_list() if c.get("cmd") == "exec")
        redis_client.client_kill_filter(_id=reader["id"])
        part.receive_ahead()  # fails (or receives what was already sent): never raises
        for _ in range(40):  # a failed call backs off; a later one reads again from the position
            got += [i.payload for i in part.next_batch()]
            if len(got) >= len(sent):
                break
            time.sleep(0.05)
    finally:
        part.close()
    assert got == sent


def test_read_ahead_receives_for_its_partitions_until_they_close(
    redis_url: str, redis_client: redis.Redis
) -> None:
    sent = _fill_big(redis_client, 2 * BIG)
    hub = ReadAhead()
    source = RedisStreamSource(
        url=redis_url, prefix=PREFIX, batch_size=BIG, idle_block_ms=0, read_ahead=hub
    )
    part = source.build_part("input", STREAM, None)
    try:
        assert [i.payload for i in part.next_batch()] == sent[:BIG]
        _wait_answered(redis_client, redis_url)
        hub.receive()
        assert _reader_output(redis_client)["omem"] == 0
        assert [i.payload for i in part.next_batch()] == sent[BIG:]
    finally:
        part.close()
    hub.receive()  # a closed partition is no longer included (it would raise on its connection)
    assert hub._parts == []


def test_read_ahead_receives_only_for_partitions_of_the_calling_thread(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A partition's connection belongs to the worker thread that built it."""
    if not redis_url.startswith("unix"):
        pytest.skip("over TCP Redis holds nothing back: nothing to observe")
    sent = _fill_big(redis_client, 2 * BIG)
    hub = ReadAhead()
    source = RedisStreamSource(
        url=redis_url, prefix=PREFIX, batch_size=BIG, idle_block_ms=0, read_ahead=hub
    )
    got: list[bytes | None] = []
    held: list[int] = []

    def worker(step: str) -> None:
        if step == "read":
            parts.append(source.build_part("input", STREAM, None))
            got.extend(i.payload for i in parts[0].next_batch())
        elif step == "receive":
            hub.receive()
        else:
            got.extend(i.payload for i in parts[0].next_batch())
            parts[0].close()

    parts: list[Any] = []

    def in_worker(step: str) -> None:
        t = threading.Thread(target=worker, args=(step,))
        t.start()
        t.join()

    in_worker("read")
    _wait_answered(redis_client, redis_url)
    hub.receive()  # another thread: leaves the worker's partition alone
    held.append(_reader_output(redis_client)["omem"])
    in_worker("receive")
    held.append(_reader_output(redis_client)["omem"])
    in_worker("finish")
    assert held[0] > 0
    assert held[1] == 0
    assert got == sent


def test_before_send_sends_for_this_threads_busy_partitions_only(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """ReadAhead.before_send (the pipelined sink's hook) sends a busy partition's next read."""
    hub = ReadAhead()
    source = RedisStreamSource(
        url=redis_url, prefix=PREFIX, batch_size=1000, idle_block_ms=0, read_ahead=hub
    )
    part = source.build_part("input", STREAM, None)
    try:
        first = _fill(redis_client, SEND_AHEAD_MIN)
        assert [i.payload for i in part.next_batch()] == first
        during = _fill(redis_client, 2, start=SEND_AHEAD_MIN)
        other = threading.Thread(target=hub.before_send)  # another worker's thread: not ours
        other.start()
        other.join()
        more = _fill(redis_client, 1, start=SEND_AHEAD_MIN + 2)
        assert [i.payload for i in part.next_batch()] == during + more  # nothing was sent ahead
        busy = _fill(redis_client, SEND_AHEAD_MIN, start=SEND_AHEAD_MIN + 3)
        assert [i.payload for i in part.next_batch()] == busy
        during = _fill(redis_client, 2, start=2 * SEND_AHEAD_MIN + 3)
        hub.before_send()
        _answered(part)
        late = _fill(redis_client, 1, start=2 * SEND_AHEAD_MIN + 5)
        assert [i.payload for i in part.next_batch()] == during  # sent by before_send
        assert [i.payload for i in part.next_batch()] == late
    finally:
        part.close()

"""An idle Redis input: one stream waits in ``XREAD BLOCK``, several streams poll.

The partition is driven directly, as Bytewax drives it, against a real
redis-server. Whether a read blocked is told by what it returns, never by
how long it took: an entry added by another thread *after* the call started
can only be returned by a read that waited for it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from intentflow.dataflows.sources import RedisStreamSource

PREFIX = "idle-test:events:"


def _add_later(client: redis.Redis, stream: str, delay_s: float) -> threading.Thread:
    def run() -> None:
        time.sleep(delay_s)
        client.xadd(stream, {b"event": b"late"})

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _one_stream(redis_url: str, block_ms: int = 10_000) -> Any:
    """The partition of the one stream ``{PREFIX}0``, waiting up to ``block_ms`` when idle."""
    return RedisStreamSource(url=redis_url, prefix=PREFIX, idle_block_ms=block_ms).build_part(
        "input", f"{PREFIX}0", None
    )


def test_one_idle_stream_waits_for_its_next_entry(
    redis_url: str, redis_client: redis.Redis
) -> None:
    stream = f"{PREFIX}0"
    redis_client.xadd(stream, {b"event": b"first"})
    part = _one_stream(redis_url)
    try:
        assert [i.payload for i in part.next_batch()] == [b"first"]
        assert part.next_batch() == []  # nothing more: the reader is idle now
        assert part.next_awake() is None  # no poll timer: the next call waits in Redis
        writer = _add_later(redis_client, stream, 0.3)
        got = part.next_batch()  # starts before the entry exists
        writer.join()
        assert [i.payload for i in got] == [b"late"]
    finally:
        part.close()


def test_a_block_that_times_out_returns_nothing_and_reading_goes_on(
    redis_url: str, redis_client: redis.Redis
) -> None:
    stream = f"{PREFIX}0"
    part = _one_stream(redis_url, block_ms=20)
    try:
        assert part.next_batch() == []  # the stream does not exist yet
        assert part.next_batch() == []  # blocked 20 ms, nothing came
        redis_client.xadd(stream, {b"event": b"x"})
        assert [i.payload for i in part.next_batch()] == [b"x"]
    finally:
        part.close()


def test_several_streams_poll_instead_of_blocking(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Streams share a worker's loop: an idle one must not hold up the others."""
    source = RedisStreamSource(url=redis_url, prefix=PREFIX, partitions=2, idle_block_ms=10_000)
    part = source.build_part("input", f"{PREFIX}0", None)
    try:
        assert part.next_batch() == []
        assert part.next_awake() is not None  # polled again after poll_idle_ms
        writer = _add_later(redis_client, f"{PREFIX}0", 0.3)
        got = part.next_batch()  # returns at once: the entry does not exist yet
        writer.join()
        assert got == []
        assert [i.payload for i in part.next_batch()] == [b"late"]
    finally:
        part.close()


def test_idle_block_zero_polls(redis_url: str, redis_client: redis.Redis) -> None:
    part = RedisStreamSource(url=redis_url, prefix=PREFIX, idle_block_ms=0).build_part(
        "input", f"{PREFIX}0", None
    )
    try:
        assert part.next_batch() == []
        assert part.next_awake() is not None
    finally:
        part.close()


def test_the_read_behind_the_wait_takes_every_entry_that_came_with_the_first(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """The wait ends at the first entry; the checked read sent behind it takes the batch."""
    stream = f"{PREFIX}0"
    redis_client.xadd(stream, {b"event": b"first"})
    part = _one_stream(redis_url)

    def add_five() -> None:
        time.sleep(0.3)
        pipe = redis_client.pipeline(transaction=True)  # all five at once, as a producer batch
        for i in range(5):
            pipe.xadd(stream, {b"event": f"b{i}".encode()})
        pipe.execute()

    try:
        assert [i.payload for i in part.next_batch()] == [b"first"]
        assert part.next_batch() == []
        writer = threading.Thread(target=add_five)
        writer.start()
        got = part.next_batch()  # waits, then reads
        writer.join()
        assert [i.payload for i in got] == [f"b{i}".encode() for i in range(5)]
        assert part.snapshot() == got[-1].offset
        assert part.next_batch() == []  # after a batch: one read without waiting, then idle
        later = _add_later(redis_client, stream, 0.1)
        again = part.next_batch()  # the connection is in step for the next wait
        later.join()
        assert [i.payload for i in again] == [b"late"]
    finally:
        part.close()

"""Bytewax sources: Redis Streams, JSONL files and the synthetic generator.

Every source is a ``FixedPartitionedSource`` whose resume position is Bytewax
state, so a resumed run reads exactly what the snapshot had not yet covered.
Sources yield :class:`RawItem` records; parsing happens downstream so that a
bad payload becomes a dead letter, never an exception in the source.
"""

from __future__ import annotations

import logging
import random
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import redis
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from intentflow.generator import BuyerJourneyGenerator, GeneratorConfig
from intentflow.metrics import EngineMetrics
from intentflow.redisutil import connect, redact_url

__all__ = [
    "FilePosition",
    "GeneratorSource",
    "JsonlFileSource",
    "RawItem",
    "RedisStreamSource",
    "partition_for",
]

log = logging.getLogger(__name__)


class RawItem(NamedTuple):
    """One undecoded input record and where it came from."""

    source: str
    offset: str
    payload: bytes | None
    ingest_ts: float  # wall time the source read it, epoch ms
    produced_ts: float | None  # producer's send time, epoch ms, when given


def _now_ms() -> float:
    return time.time() * 1000.0


def partition_for(key: str, partitions: int) -> int:
    """The input partition a producer should route an entity or account to.

    >>> partition_for("a-00042", 4) == partition_for("a-00042", 4)
    True
    """
    return zlib.crc32(key.encode()) % partitions


class _Stop:
    """Shared end-of-input logic: a wall-clock deadline and an item budget."""

    def __init__(self, duration_s: float, count: int) -> None:
        self.deadline = time.monotonic() + duration_s if duration_s > 0 else None
        self.remaining = count if count > 0 else None

    def check(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise StopIteration
        if self.remaining is not None and self.remaining <= 0:
            raise StopIteration

    def budget(self, want: int) -> int:
        return want if self.remaining is None else min(want, self.remaining)

    def took(self, n: int) -> None:
        if self.remaining is not None:
            self.remaining -= n


class _Pacer:
    """Limits a partition to ``rate`` items per second (0: unlimited)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0

    def allowance(self, want: int) -> int:
        if self.rate <= 0:
            return want
        due = int((time.monotonic() - self.start) * self.rate) - self.sent
        return max(0, min(want, due))

    def sent_n(self, n: int) -> None:
        self.sent += n

    def wake_in(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=min(0.01, 1.0 / max(self.rate, 1.0)))


# --- Redis Streams -----------------------------------------------------------


class _RedisStreamPartition(StatefulSourcePartition[RawItem, str]):
    def __init__(self, src: RedisStreamSource, stream: str, last_id: str) -> None:
        self._src = src
        self._stream = stream
        self._key = stream.encode()
        self._last_id = last_id
        self._client: redis.Redis | None = None
        self._awake: datetime | None = None
        self._stop = _Stop(src.duration_s, src.count)
        self._backoff = 0.0
        self._label = f"redis:{stream}"
        metrics = src.metrics or EngineMetrics()
        self._probe = metrics.backlog_probe(stream, stream.removeprefix(src.prefix))

    def next_batch(self) -> list[RawItem]:
        self._stop.check()
        try:
            if self._client is None:
                self._client = connect(self._src.url)
            resp: Any = self._client.xread(
                {self._key: self._last_id}, count=self._stop.budget(self._src.batch_size)
            )
        except (redis.ConnectionError, redis.TimeoutError) as err:
            self._backoff = min(2.0, max(0.05, self._backoff * 2)) * (0.5 + random.random())
            log.warning(
                "input stream %s on %s unreachable (%s); retrying in %.2fs",
                self._stream,
                redact_url(self._src.url),
                type(err).__name__,
                self._backoff,
            )
            self._client = None
            self._awake = datetime.now(UTC) + timedelta(seconds=self._backoff)
            if self._probe is not None:
                self._probe.failed()
            return []
        self._backoff = 0.0
        if self._probe is not None:
            got = resp[0][1] if resp else []
            self._probe.polled(self._client, got[-1][0] if got else self._last_id, len(got))
        if not resp:
            self._awake = datetime.now(UTC) + timedelta(milliseconds=self._src.poll_idle_ms)
            return []
        self._awake = None
        entries: list[tuple[bytes, dict[bytes, bytes]]] = resp[0][1]
        now = _now_ms()
        label = self._label
        items = []
        for entry_id, fields in entries:
            produced = fields.get(b"produced_ts")
            try:
                produced_ts = float(produced) if produced is not None else None
            except ValueError:
                produced_ts = None
            items.append(RawItem(label, entry_id.decode(), fields.get(b"event"), now, produced_ts))
        self._last_id = entries[-1][0].decode()
        self._stop.took(len(items))
        return items

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> str:
        return self._last_id

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


@dataclass
class RedisStreamSource(FixedPartitionedSource[RawItem, str]):
    """Read ``{prefix}{i}`` streams, one Bytewax partition each, with ``XREAD``.

    The resume position is the last stream id returned, kept in Bytewax state
    (not a consumer group: acknowledgements cannot be tied to snapshots).
    Delivery into the dataflow is exactly-once with recovery enabled.
    """

    url: str
    prefix: str = "intentflow:events:"
    partitions: int = 1
    batch_size: int = 1000
    poll_idle_ms: float = 1.0
    start_id: str = "0-0"
    duration_s: float = 0.0
    count: int = 0
    metrics: EngineMetrics | None = field(default=None, repr=False, compare=False)

    def list_parts(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(self.partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: str | None
    ) -> _RedisStreamPartition:
        return _RedisStreamPartition(self, for_part, resume_state or self.start_id)


# --- JSONL files ---------------------------------------------------------------


@dataclass(frozen=True)
class FilePosition:
    """Resume position in a JSONL file: byte offset and line number."""

    byte: int = 0
    line: int = 0


class _JsonlPartition(StatefulSourcePartition[RawItem, FilePosition]):
    def __init__(self, src: JsonlFileSource, path: str, pos: FilePosition) -> None:
        self._src = src
        self._f = Path(path).open("rb")  # noqa: SIM115 - closed in close()
        self._f.seek(pos.byte)
        self._line = pos.line
        self._label = f"file:{Path(path).name}"
        self._stop = _Stop(src.duration_s, src.count)
        self._pacer = _Pacer(src.rate)
        self._awake: datetime | None = None
        self._max_line = src.max_line_bytes

    def next_batch(self) -> list[RawItem]:
        self._stop.check()
        want = self._pacer.allowance(self._stop.budget(self._src.batch_size))
        if want == 0:
            self._awake = self._pacer.wake_in()
            return []
        self._awake = None
        items: list[RawItem] = []
        now = _now_ms()
        readline = self._f.readline
        for _ in range(want):
            line = readline(self._max_line)
            if not line:
                break
            self._line += 1
            if len(line) == self._max_line and not line.endswith(b"\n"):
                # An over-long line: keep its head (rejected as too large) and skip the rest.
                while chunk := readline(1 << 20):
                    if chunk.endswith(b"\n"):
                        break
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            items.append(RawItem(self._label, str(self._line), line, now, None))
        if not items and not line:
            raise StopIteration
        self._pacer.sent_n(len(items))
        self._stop.took(len(items))
        return items

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> FilePosition:
        return FilePosition(self._f.tell(), self._line)

    def close(self) -> None:
        self._f.close()


@dataclass
class JsonlFileSource(FixedPartitionedSource[RawItem, FilePosition]):
    """Replay JSONL files (one event per line), one partition per file.

    Ends at the end of every file. ``rate`` paces each file (events/s);
    0 replays as fast as possible.
    """

    paths: list[str]
    batch_size: int = 1000
    rate: float = 0.0
    duration_s: float = 0.0
    count: int = 0
    max_line_bytes: int = 64 * 1024 + 1

    def list_parts(self) -> list[str]:
        return list(self.paths)

    def build_part(
        self, step_id: str, for_part: str, resume_state: FilePosition | None
    ) -> _JsonlPartition:
        return _JsonlPartition(self, for_part, resume_state or FilePosition())


# --- synthetic generator ---------------------------------------------------------------


class _GeneratorPartition(StatefulSourcePartition[RawItem, Any]):
    def __init__(self, src: GeneratorSource, resume: Any) -> None:
        self._src = src
        if resume is None:
            self._gen = BuyerJourneyGenerator(src.config)
        else:
            self._gen = BuyerJourneyGenerator.restore(src.config, resume)
        self._stop = _Stop(src.duration_s, src.count)
        self._pacer = _Pacer(src.rate)
        self._awake: datetime | None = None

    def next_batch(self) -> list[RawItem]:
        self._stop.check()
        want = self._pacer.allowance(self._stop.budget(self._src.batch_size))
        if want == 0:
            self._awake = self._pacer.wake_in()
            return []
        self._awake = None
        first = self._gen.position
        payloads = self._gen.next_payloads(want)
        now = _now_ms()
        items = [RawItem("generator", str(first + i), p, now, now) for i, p in enumerate(payloads)]
        self._pacer.sent_n(len(items))
        self._stop.took(len(items))
        return items

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> Any:
        return self._gen.snapshot()


@dataclass
class GeneratorSource(FixedPartitionedSource[RawItem, Any]):
    """The seeded synthetic buyer-journey generator as a single-partition source."""

    config: GeneratorConfig
    batch_size: int = 1000
    rate: float = 0.0
    duration_s: float = 0.0
    count: int = 0

    def list_parts(self) -> list[str]:
        return ["generator"]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _GeneratorPartition:
        return _GeneratorPartition(self, resume_state)


def encode_entry(event: dict[str, Any] | bytes, produced_ts: float) -> dict[bytes, bytes]:
    """The stream entry fields a producer writes for one event."""
    payload = event if isinstance(event, bytes) else orjson.dumps(event)
    return {b"event": payload, b"produced_ts": repr(produced_ts).encode()}

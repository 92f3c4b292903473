"""Bytewax sources: Redis Streams, JSONL files and the synthetic generator.

Every source is a ``FixedPartitionedSource`` whose resume position is Bytewax
state, so a resumed run reads exactly what the snapshot had not yet covered.
Sources yield :class:`RawItem` records; parsing happens downstream so that a
bad payload becomes a dead letter, never an exception in the source.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import repeat
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import redis
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from intentflow.config import SOURCE_BATCH_SIZES
from intentflow.generator import BuyerJourneyGenerator, GeneratorConfig
from intentflow.metrics import EngineMetrics
from intentflow.redisutil import BUSY_POLL_US, connect, read_replies, redact_url, send_commands

__all__ = [
    "FilePosition",
    "GeneratorSource",
    "JsonlFileSource",
    "RawItem",
    "ReadAhead",
    "RedisStreamSource",
    "partition_for",
]

log = logging.getLogger(__name__)


#: A Redis reader whose last batch brought at least this many entries is busy: the
#: next read is sent before the sink's batch (``_RedisStreamPartition.send_ahead``).
#: Below it a read sent ahead would mostly come back empty and cost a round trip
#: before the reader's idle wait.
SEND_AHEAD_MIN = 16


class RawItem(NamedTuple):
    """One undecoded input record and where it came from."""

    source: str
    offset: str
    payload: bytes | dict[str, Any] | None  # a dict: decoded by the source (the generator)
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


def _raw_reply(response: Any, **options: Any) -> Any:
    """A response callback that keeps the reply as Redis sent it (RESP3 maps as pairs)."""
    if isinstance(response, dict):
        return [[k, v] for k, v in response.items()]
    return response


def _xinfo_fields(info: Any) -> dict[str, Any]:
    """A raw ``XINFO STREAM`` reply (RESP3 map or RESP2 flat list) as ``{name: value}``.

    >>> _xinfo_fields([b"length", 2, b"first-entry", [b"1-0", [b"event", b"{}"]]])["length"]
    2
    >>> _xinfo_fields({b"last-generated-id": b"5-0"})
    {'last-generated-id': b'5-0'}
    """
    pairs = info.items() if isinstance(info, dict) else zip(info[::2], info[1::2], strict=False)
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in pairs}


def _event_fields(fields: list[bytes]) -> tuple[bytes | None, bytes | None]:
    """``(event, produced_ts)`` of a raw stream entry's flat field list.

    The producer's own layout (``event``, ``produced_ts``) is read inline by
    the partition's loop; this handles every other one.

    >>> _event_fields([b"produced_ts", b"1.5", b"event", b"{}"])
    (b'{}', b'1.5')
    """
    if len(fields) == 2 and fields[0] == b"event":
        return fields[1], None
    named = dict(zip(fields[::2], fields[1::2], strict=False))
    return named.get(b"event"), named.get(b"produced_ts")


def _stream_id(entry_id: str | bytes) -> tuple[int, int]:
    """A stream entry id as a comparable ``(ms, seq)`` pair."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class _RedisStreamPartition(StatefulSourcePartition[RawItem, str]):
    def __init__(
        self, src: RedisStreamSource, stream: str, last_id: str, *, resumed: bool = False
    ) -> None:
        self._src = src
        self._stream = stream
        self._key = stream.encode()
        self._last_id = last_id
        self._client: redis.Redis | None = None
        self._conn: Any = None  # the client's connection the reads use (raw_pipeline)
        self._awake: datetime | None = None
        self._stop = _Stop(src.duration_s, src.count)
        self._backoff = 0.0
        self._label = f"redis:{stream}"
        self._metrics = src.metrics or EngineMetrics()
        self._partition = stream.removeprefix(src.prefix)
        self._probe = self._metrics.backlog_probe(stream, self._partition)
        # Gap detection (docs/reliability.md): a position to compare exists once the
        # reader resumed or read something; each incident is reported once.
        self._positioned = resumed
        self._reported = (0, 0)  # newest deleted id already reported as a gap
        self._vanished = False  # the stream was found missing and reported
        # an idle single stream waits in Redis for its next entry (no polling)
        self._block_ms = int(src.idle_block_ms) if src.partitions == 1 else 0
        self._idle = False  # the last read returned nothing
        self._last_n = 0  # entries the last batch returned
        self._ahead = False  # a read was sent ahead and its replies are not read yet
        # the replies of the read ahead, received early by receive_ahead (or its error)
        self._early: list[Any] | Exception | None = None

    def next_batch(self) -> list[RawItem]:
        self._stop.check()
        try:
            if self._client is None:
                self._client = connect(self._src.url)
                # Entries as Redis sends them ([id, [field, value, ...]]): redis-py's own
                # XREAD parsing (a dict per entry, in Python) costs more than the engine's
                # parse step; this client is private to the partition.
                self._client.set_response_callback("XREAD", _raw_reply)
                self._conn = self._client.connection_pool.get_connection()
            if self._ahead:  # behind: the next batch was asked for with the last one
                self._ahead = False
                resp: Any = self._receive()
            else:
                # When idle, wait (up to the block) for an entry after the position.
                # The checked read is sent right behind the wait, and Redis runs it as
                # soon as the wait ends: one round trip. It takes the entry, with the
                # gap check, which therefore also runs at least once per block while
                # idle: a deleted or recreated stream (whose new ids may be behind the
                # position) is still noticed.
                block = self._block_ms if self._idle and self._blocks() else 0
                resp = self._read(self._stop.budget(self._src.batch_size), block)
        except (redis.ConnectionError, redis.TimeoutError) as err:
            # Jittered exponential backoff: uniform in [d/2, d], d doubling up to 2 s.
            self._backoff = min(2.0, max(0.05, self._backoff * 2))
            delay = self._backoff * (0.5 + random.random() / 2)
            log.warning(
                "input stream %s on %s unreachable (%s); retrying in %.2fs",
                self._stream,
                redact_url(self._src.url),
                type(err).__name__,
                delay,
            )
            self._drop_client()
            self._awake = datetime.now(UTC) + timedelta(seconds=delay)
            if self._probe is not None:
                self._probe.failed()
            return []
        self._backoff = 0.0
        if self._probe is not None:
            got = resp[0][1] if resp else []
            self._probe.polled(self._client, got[-1][0] if got else self._last_id, len(got))
        if not resp:
            self._last_n = 0
            self._idle = True
            if self._blocks():
                self._awake = None  # the next call waits in XREAD BLOCK
            else:
                self._awake = datetime.now(UTC) + timedelta(milliseconds=self._src.poll_idle_ms)
            return []
        self._idle = False
        self._awake = None
        entries: list[list[Any]] = resp[0][1]
        now = _now_ms()
        label = self._label
        items: list[RawItem] = []
        append = items.append
        make = tuple.__new__  # RawItem(...) goes through a Python-level __new__: 3x the cost
        for entry_id, fields in entries:
            if len(fields) == 4 and fields[0] == b"event" and fields[2] == b"produced_ts":
                payload, produced = fields[1], fields[3]  # what the producer writes
            else:
                payload, produced = _event_fields(fields)
            produced_ts = None
            if produced is not None:
                try:
                    produced_ts = float(produced)
                except ValueError:  # malformed metadata is dropped, never fatal
                    produced_ts = None
            append(make(RawItem, (label, entry_id.decode(), payload, now, produced_ts)))
        self._last_id = entries[-1][0].decode()
        self._positioned = True
        self._last_n = len(items)
        self._stop.took(len(items))
        if len(items) < self._src.batch_size and self._src.linger_ms > 0:
            # Caught up: let the next entries gather for a while, so that a low rate
            # makes fewer, larger batches (each batch has a fixed cost).
            self._awake = datetime.now(UTC) + timedelta(milliseconds=self._src.linger_ms)
        elif len(items) == self._src.batch_size and self._stop.budget(1) > 0:
            # A full batch: the reader is behind, and the next read will find a full
            # batch too. Ask for it now, so that Redis answers while the engine works
            # on this one. Nothing is taken until it is returned (the position moves
            # then), so a snapshot or a crash in between loses nothing.
            self._send_next()
        return items

    def _send_next(self) -> None:
        """Send the next read from the current position now; :meth:`next_batch` receives it."""
        try:
            self._send(self._stop.budget(self._src.batch_size))
            self._ahead = True
        except (redis.ConnectionError, redis.TimeoutError):
            self._drop_client()  # the next call reconnects and reads normally

    def _blocks(self) -> bool:
        """Whether an idle read waits in ``XREAD BLOCK`` (else it is polled again later).

        Not from ``$``: a blocking read from there waits only for entries added
        after the call, so the poll timer keeps its meaning.
        """
        return self._block_ms > 0 and self._last_id != "$"

    def _read(self, count: int, block_ms: int = 0) -> Any:
        """``XINFO STREAM`` and ``XREAD`` in one transaction, so a gap is seen before a read.

        Sent as one raw pipeline on the partition's own connection
        (:func:`~intentflow.redisutil.raw_pipeline`): the entries arrive as
        Redis sent them, ``[[stream, [[id, [field, value, ...]], ...]]]``.
        ``block_ms`` > 0: first wait up to that long for an entry after the
        position (``XREAD BLOCK``); Redis runs the transaction when it ends.
        """
        return self._receive(self._send(count, block_ms))

    def _send(self, count: int, block_ms: int = 0) -> int:
        """Send the transaction of :meth:`_read` from the current position; the reply count."""
        key, last = self._key, self._last_id
        commands: list[tuple[Any, ...]] = [
            ("MULTI",),
            ("XINFO", "STREAM", key),
            ("XREAD", "COUNT", count, "STREAMS", key, last),
            ("EXEC",),
        ]
        if block_ms > 0:  # (BLOCK 0 would wait for ever)
            commands.insert(0, ("XREAD", "COUNT", 1, "BLOCK", block_ms, "STREAMS", key, last))
        send_commands(self._conn, commands)
        return len(commands)

    def _receive(self, n: int = 4) -> Any:
        """The entries of the transaction :meth:`_send` sent (``n`` replies; None: none, or reset).

        A read sent ahead never waits: 4 replies, kept by :meth:`receive_ahead` if it came first.
        """
        replies, self._early = self._early, None
        if isinstance(replies, Exception):
            raise replies
        if replies is None:
            replies = read_replies(self._conn, n, self._src.busy_poll_us / 1e6)
        replies = replies[-4:]  # a wait's reply before them only told when it ended
        for reply in replies:  # MULTI, the two QUEUED, then EXEC's array
            if isinstance(reply, Exception):
                raise reply
        info, resp = replies[-1]
        if isinstance(resp, Exception):
            raise resp
        if self._positioned and self._check_gap(info):
            return None  # the position was reset: read again from there
        return _raw_reply(resp)

    def _check_gap(self, info: Any) -> bool:
        """Detect, count and log lost input; True when the position was reset."""
        pos = _stream_id(self._last_id)
        if isinstance(info, redis.ResponseError):  # no such key
            if not self._vanished and pos > (0, 0):
                self._vanished = True
                self._gap(
                    "reset",
                    "no longer exists (deleted, or Redis restarted without persistence); "
                    "entries it held after the position were never read",
                )
            return False
        if isinstance(info, Exception):
            raise info
        info = _xinfo_fields(info)
        last_gen = info.get("last-generated-id")
        if self._vanished or (last_gen is not None and _stream_id(last_gen) < pos):
            if not self._vanished:
                self._gap(
                    "reset",
                    f"was recreated behind the reader (last id {last_gen!r}); "
                    "reading it again from its first entry",
                )
            self._vanished = False
            self._last_id = "0-0"
            self._reported = (0, 0)
            return True
        # Trimming moved the stream's head past the reader (its own entry is gone too),
        # or, on Redis 7+, XDEL removed an entry after it (max-deleted-entry-id).
        first = info.get("first-entry")
        ms, seq = _stream_id(first[0]) if first else (0, 0)
        newest = (ms, seq - 1)
        if pos == (0, 0):  # nothing read yet: lost only if entries were ever removed
            added = info.get("entries-added")  # Redis 7+; unknown before
            if added is None or int(added) <= int(info.get("length", 0)):
                newest = (0, 0)
        max_deleted = info.get("max-deleted-entry-id")
        if max_deleted is not None:
            newest = max(newest, _stream_id(max_deleted))
        if newest > pos and newest > self._reported:
            self._reported = newest
            added = info.get("entries-added")  # Redis 7+
            if added is not None and int(added) <= int(info.get("length", 0)):
                # Nothing was ever removed from this stream, yet it starts after the
                # reader: it is a new stream (e.g. Redis restarted without persistence).
                self._gap("reset", "was recreated; entries before the reader's next read are gone")
            else:
                self._gap(
                    "trimmed",
                    "lost entries after the reader's position before they were read (trimmed "
                    "by MAXLEN/MINID or deleted while the engine was behind or down)",
                )
        return False

    def _gap(self, kind: str, what: str) -> None:
        log.error(
            "input gap (%s): stream %s on %s %s; position %s",
            kind,
            self._stream,
            redact_url(self._src.url),
            what,
            self._last_id,
        )
        self._metrics.input_gap(self._partition, kind)

    def receive_ahead(self) -> None:
        """Receive the read sent ahead now, if its reply has started to arrive.

        Redis writes a large reply only as fast as the reader takes it: over
        a unix socket about 64 KiB, then it waits until the reader has read
        some (a batch of 1,000 producer entries is about 250 KiB). The rest
        is written when Redis has time for it, and a stage that has just
        sent Redis a few milliseconds of work (the sink's scripts) would make
        the next read wait that long. :class:`ReadAhead` calls this before such
        a stage. The replies are kept for :meth:`next_batch`, which returns
        them as it would have; the position moves only then. An error is kept
        too, and raised by :meth:`next_batch`, which handles it as its own.
        """
        if not self._ahead or self._early is not None or self._conn is None:
            return
        try:
            if self._conn.can_read(0):
                self._early = read_replies(self._conn, 4, 0.0)  # sent ahead: no wait
        except Exception as exc:  # raised (and handled) by next_batch
            self._early = exc

    def send_ahead(self) -> None:
        """Send the next read now, when the reader is busy and has none in flight.

        Busy: its last batch brought at least :data:`SEND_AHEAD_MIN` entries
        (a full batch has its next read sent already). :class:`ReadAhead`
        calls this before the sink sends its batch, so Redis answers the
        read before it runs the sink's scripts, and the reply is there when
        the engine asks for it, instead of waiting behind those scripts. The
        read takes what has arrived by then; later entries go to the read
        after it. The position moves when the batch is returned, as for any
        read ahead. Never with ``linger_ms``, whose wait lets entries gather.
        """
        if (
            self._ahead
            or self._conn is None
            or self._last_n < SEND_AHEAD_MIN
            or self._src.linger_ms > 0
            or self._stop.budget(1) <= 0
        ):
            return
        self._send_next()

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> str:
        return self._last_id

    def _drop_client(self) -> None:
        """Forget the client and its connection (after an error; the next read reconnects)."""
        self._ahead = False
        self._early = None
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def close(self) -> None:
        if self._src.read_ahead is not None:
            self._src.read_ahead.unregister(self)
        self._drop_client()


class ReadAhead:
    """Puts the Redis source's reads ahead of the pipelined sink's scripts.

    A source partition that is behind sends its next read with each batch
    (:meth:`_RedisStreamPartition.next_batch`). Redis answers it at once,
    but writes a reply larger than the socket takes at once (over a unix
    socket, more than about 64 KiB) only as the reader reads it. When the
    pipelined sink sends a batch of scripts in between, the rest of the
    reply waits behind them, and so does the next batch. A busy partition
    that is not behind would send its next read only after the sink's
    batch, and wait behind those scripts too. The sink calls
    :meth:`before_send` before it sends: every registered partition
    receives its read ahead then (:meth:`receive`), while Redis has nothing
    else to do, and a busy one without a read in flight sends it
    (:meth:`send`) (docs/sinks.md, "The input's read ahead"). A
    partition's connection is used only by the thread that built it: both
    include only the partitions registered by the caller's thread (with
    one worker, all of them).
    """

    def __init__(self) -> None:
        self._parts: list[tuple[_RedisStreamPartition, int]] = []  # (partition, thread id)

    def register(self, part: _RedisStreamPartition) -> None:
        """Include ``part`` in this thread's :meth:`receive` until it is unregistered."""
        self.unregister(part)
        self._parts.append((part, threading.get_ident()))

    def unregister(self, part: _RedisStreamPartition) -> None:
        """Leave ``part`` out of :meth:`receive` (at its close)."""
        self._parts = [(p, t) for p, t in self._parts if p is not part]

    def _mine(self) -> list[_RedisStreamPartition]:
        """The partitions registered by the calling thread."""
        me = threading.get_ident()
        return [part for part, thread in self._parts if thread == me]

    def receive(self) -> None:
        """Receive the read ahead of this thread's partitions whose reply has started to arrive."""
        for part in self._mine():
            part.receive_ahead()

    def send(self) -> None:
        """Send the next read of this thread's busy partitions that have none in flight."""
        for part in self._mine():
            part.send_ahead()

    def before_send(self) -> None:
        """What the sink calls before it sends a batch: :meth:`receive`, then :meth:`send`."""
        self.receive()
        self.send()


@dataclass
class RedisStreamSource(FixedPartitionedSource[RawItem, str]):
    """Read ``{prefix}{i}`` streams, one Bytewax partition each, with ``XREAD``.

    The resume position is the last stream id returned, kept in Bytewax state
    (not a consumer group: acknowledgements cannot be tied to snapshots).
    Delivery into the dataflow is exactly-once with recovery enabled. Entries
    lost before they were read (a stream trimmed past the position, or reset
    by a Redis restart without persistence) are detected before each read,
    logged and counted (``EngineMetrics.input_gap``); see docs/reliability.md.
    """

    url: str
    prefix: str = "intentflow:events:"
    partitions: int = 1
    #: Entries per read (and batch) at most. A reader that fell behind works this
    #: many at a time before its outputs go out (docs/configuration.md).
    batch_size: int = SOURCE_BATCH_SIZES["redis"]
    poll_idle_ms: float = 1.0
    #: With a single partition, an idle reader waits in ``XREAD BLOCK`` up to this
    #: many ms for the next entry instead of polling every ``poll_idle_ms`` (0: poll).
    #: Several partitions share a worker's loop, so they always poll.
    idle_block_ms: int = 50
    #: After a read that was not full (the reader is caught up), wait this many ms
    #: before the next read, so that entries gather into fewer, larger batches: less
    #: CPU at low rates, at most this much more latency (0: read again at once).
    linger_ms: float = 0.0
    #: A read polls this many µs for its reply before it blocks (``redis.busy_poll_us``).
    busy_poll_us: int = BUSY_POLL_US
    start_id: str = "0-0"
    duration_s: float = 0.0
    count: int = 0
    metrics: EngineMetrics | None = field(default=None, repr=False, compare=False)
    #: Partitions register here, so that the sink can receive their reads ahead
    #: before it sends (:class:`ReadAhead`; one worker only).
    read_ahead: ReadAhead | None = field(default=None, repr=False, compare=False)

    def list_parts(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(self.partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: str | None
    ) -> _RedisStreamPartition:
        part = _RedisStreamPartition(
            self, for_part, resume_state or self.start_id, resumed=resume_state is not None
        )
        if self.read_ahead is not None:
            self.read_ahead.register(part)
        return part


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
        if self._src.decoded:
            payloads: list[Any] = self._gen.next_decoded(want)
        else:
            payloads = self._gen.next_payloads(want)
        now = _now_ms()
        # RawItem(...) goes through a Python-level __new__: build the tuples in C instead
        offsets = map(str, range(first, first + len(payloads)))
        rows = zip(repeat("generator"), offsets, payloads, repeat(now), repeat(now))
        items: list[RawItem] = list(map(tuple.__new__, repeat(RawItem), rows))
        self._pacer.sent_n(len(items))
        self._stop.took(len(items))
        return items

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> Any:
        return self._gen.snapshot()


@dataclass
class GeneratorSource(FixedPartitionedSource[RawItem, Any]):
    """The seeded synthetic buyer-journey generator as a single-partition source.

    With ``decoded`` (the engine's choice when ``limits.max_payload_bytes`` is
    at least :data:`~intentflow.generator.GENERATED_MAX_BYTES`) valid events
    are handed to the parse step as dicts, not as JSON to decode again; the
    parse step validates them by the same rules (poison items stay bytes).
    """

    config: GeneratorConfig
    batch_size: int = 1000
    rate: float = 0.0
    duration_s: float = 0.0
    count: int = 0
    decoded: bool = False

    def list_parts(self) -> list[str]:
        return ["generator"]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _GeneratorPartition:
        return _GeneratorPartition(self, resume_state)


def encode_entry(event: dict[str, Any] | bytes, produced_ts: float) -> dict[bytes, bytes]:
    """The stream entry fields a producer writes for one event."""
    payload = event if isinstance(event, bytes) else orjson.dumps(event)
    return {b"event": payload, b"produced_ts": repr(produced_ts).encode()}

"""The Redis alert sink: alerts and dead letters into streams, latest scores into hashes.

Delivery guarantee: Bytewax delivers output at least once (after a crash the
dataflow resumes from its last snapshot and re-emits what followed it). Every
alert is appended by a Lua script that first checks a per-alert "seen" key,
so a replayed alert is dropped: each ``alert_id`` appears once in the alerts
stream for as long as its seen key lives (``seen_ttl_s``, 7 days by default).
Score hashes are overwritten with the same values on replay (harmless). Dead
letters are at-least-once: a replayed batch may append a dead letter twice.

On a single server a batch is one pipeline of a few commands: one
:data:`~intentflow.sinks.lua.SCORES_SET` call per :data:`SCORES_PER_CALL`
score hashes, one :data:`~intentflow.sinks.lua.ALERTS_ONCE` call per
:data:`ALERTS_PER_CALL` alerts, and one ``XADD`` per dead letter.

Keys and streams are documented in ``docs/sinks.md``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import orjson
import redis
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)

from intentflow.errors import SinkError
from intentflow.metrics import EngineMetrics, SinkObserver
from intentflow.redisutil import (
    BUSY_POLL_US,
    connect,
    raw_pipeline,
    read_replies,
    redact_url,
    send_commands,
)
from intentflow.sinks.base import (
    AlertOut,
    DeadLetterOut,
    Output,
    OutputWriter,
    ScoreOut,
    ScoresOut,
)
from intentflow.sinks.lua import (
    ALERT_ONCE,
    ALERT_ONCE_SHA,
    ALERTS_ONCE,
    ALERTS_ONCE_SHA,
    SCORES_SET,
    SCORES_SET_SHA,
)

__all__ = [
    "ALERTS_PER_CALL",
    "PIPELINED_PART",
    "SCORES_PER_CALL",
    "PipelinedRedisSink",
    "PipelinedRedisSinkPartition",
    "RedisOutputWriter",
    "RedisSink",
    "RedisSinkConfig",
    "RedisSinkPartition",
]

log = logging.getLogger(__name__)

#: Errors after which the whole batch is retried (writes are idempotent).
RETRYABLE: Final[tuple[type[Exception], ...]] = (
    redis.ConnectionError,  # includes BusyLoadingError (server loading its data)
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,  # connected to a replica during a failover
)
#: Errors that no retry can fix.
FATAL: Final[tuple[type[Exception], ...]] = (
    redis.AuthenticationError,
    redis.exceptions.AuthorizationError,
)
#: Score hashes per script call. A running script blocks the server, and in
#: Lua an HSET + EXPIRE of a new key costs 2-8 µs (a fast idle server vs. a
#: loaded 2-core box), so a call blocks it for 0.5-2 ms. Larger calls were
#: measured no faster: the per-call overhead is small next to the per-key work.
SCORES_PER_CALL: Final = 250
#: Alerts per script call: EXISTS + XADD of about 1 KB + SET cost 5-20 µs,
#: so a call blocks the server for at most about 1 ms.
ALERTS_PER_CALL: Final = 50
#: What a Lua ``redis.call`` on a read-only replica reports (Redis 6.2 wraps
#: it in a plain script error rather than a ``READONLY`` reply).
_READONLY_IN_SCRIPT: Final = "-READONLY "
#: What an ACL refusal of a command inside a script reports (Redis 6.2, Redis 7).
_NOPERM_IN_SCRIPT: Final = ("NOPERM", "can't run this command")


@dataclass(frozen=True, slots=True)
class RedisSinkConfig:
    """Where and how the sink writes. Lengths are approximate (``MAXLEN ~``)."""

    url: str
    alerts_stream: str = "intentflow:alerts"
    alerts_maxlen: int = 1_000_000
    dlq_stream: str = "intentflow:dlq"
    dlq_maxlen: int = 1_000_000
    score_key_prefix: str = "intentflow:score:"
    score_ttl_s: int = 7 * 86400
    seen_key_prefix: str = "intentflow:alert-seen:"
    seen_ttl_s: int = 7 * 86400
    max_retries: int = 8
    backoff_base_s: float = 0.05
    backoff_max_s: float = 2.0
    busy_poll_us: int = BUSY_POLL_US  # a write polls this long for its reply, then blocks

    def __repr__(self) -> str:
        return (
            f"RedisSinkConfig(url={redact_url(self.url)!r}, alerts_stream={self.alerts_stream!r})"
        )


# One script call: (kind, sha, keys, args); kind is "alert" or "score".
_Call = tuple[str, str, list[str], list[Any]]


@dataclass(slots=True)
class _Prepared:
    """A batch serialised for Redis, before anything is sent.

    ``score_fields`` holds the ``score``, ``ts`` and ``model`` values of each
    of ``score_keys`` in turn; ``alerts`` are ``(seen key, JSON)``.
    """

    score_keys: list[str]
    score_fields: list[Any]
    alerts: list[tuple[str, bytes]]
    dead: list[bytes]


@dataclass(slots=True)
class _Flight:
    """A batch whose commands were sent and whose replies are still to be read."""

    batch: _Prepared
    calls: list[_Call]
    n_commands: int
    n_items: int = 0
    busy_s: float = 0.0  # time spent preparing and sending it


def _numbers(values: Any, dtype: type) -> list[bytes]:
    """Each value as the text of a JSON number (floats: the shortest that reads back the same)."""
    text = orjson.dumps(np.asarray(values, dtype=dtype), option=orjson.OPT_SERIALIZE_NUMPY)
    return text[1:-1].split(b",")


def _evalsha(call: _Call) -> tuple[Any, ...]:
    """The ``EVALSHA`` command of one script call."""
    _, sha, keys, args = call
    return ("EVALSHA", sha, len(keys), *keys, *args)


class RedisOutputWriter(OutputWriter):
    """Writes :data:`~intentflow.sinks.base.Output` batches to Redis, one pipeline per batch.

    On a single server (a :class:`redis.Redis` client) score hashes and
    alerts go through batched scripts, at most ``scores_per_call`` /
    ``alerts_per_call`` items per call; on any other client (a cluster) every
    write is its own pipelined command. Connects lazily on the first batch
    (or uses ``client``, which it then does not close). Counters are plain
    attributes: ``alerts_written``, ``alerts_duplicate`` (already in the
    stream, including those a retried batch had written before its
    connection broke), ``scores_written`` (score hashes written, after
    keeping only the last score of each entity in a batch),
    ``dead_letters_written``, ``retries``, ``script_loads`` (times the
    scripts were loaded: after connecting and after the server lost them),
    ``batches`` (batches delivered), ``last_batch_latency_s`` (wall time the
    writer spent on the last delivered batch, retries included; for a batch
    sent ahead by :meth:`send_batch`, sending it plus reading its replies,
    not the time in between), ``backoff_s`` (total time
    slept before retries) and ``connected`` (``None`` before the first
    attempt, then whether the last attempt reached Redis).
    """

    #: Items per script call on a single server (see :data:`SCORES_PER_CALL`).
    scores_per_call: int = SCORES_PER_CALL
    alerts_per_call: int = ALERTS_PER_CALL
    #: Whether :meth:`send_batch` sends ahead (the single server's scripted writes).
    _pipelines: bool = True

    def __init__(
        self,
        config: RedisSinkConfig,
        *,
        client: redis.Redis | None = None,
        seed: int | None = None,
    ) -> None:
        self.config = config
        self._client = client
        self._owns_client = client is None
        self._conn: Any = None  # the client's connection the scripted writes use
        self._script_loaded = False
        self._flight: _Flight | None = None  # a batch sent by send_batch, replies unread
        self._rng = random.Random(seed)
        self.alerts_written = 0
        self.alerts_duplicate = 0
        self.scores_written = 0
        self.dead_letters_written = 0
        self.retries = 0
        self.script_loads = 0
        self.batches = 0
        self.last_batch_latency_s = 0.0
        self.backoff_s = 0.0
        self.connected: bool | None = None

    # -- public API ------------------------------------------------------------------------
    def write_batch(self, items: list[Output]) -> None:
        """Write ``items`` in one pipeline, retrying the whole batch on connection errors.

        Raises :class:`ValueError`/:class:`TypeError` for a malformed record
        (nothing of the batch is written then) and
        :class:`~intentflow.errors.SinkError` when Redis cannot take the batch
        within ``max_retries`` retries or rejects a command. A batch sent by
        :meth:`send_batch` and not yet confirmed is confirmed first.
        """
        self.confirm()
        if not items:
            return
        started = time.perf_counter()
        self._write_retrying(self._prepare(items), len(items), started, None)

    def send_batch(self, items: list[Output]) -> None:
        """Send ``items`` in one pipeline and return without waiting for the replies.

        :meth:`confirm` reads them; at most one batch is in flight, so the
        batch sent before is confirmed first. Redis runs the commands as soon
        as they arrive, while the caller works on. A batch that cannot be
        sent is written as :meth:`write_batch` writes it (retries included)
        before this returns. Only a single server's scripted writes are sent
        ahead; any other writer writes at once.

        >>> from intentflow.redisutil import EmbeddedRedis
        >>> from intentflow.sinks.base import ScoresOut
        >>> with EmbeddedRedis() as server:
        ...     writer = RedisOutputWriter(RedisSinkConfig(url=server.url))
        ...     writer.send_batch([ScoresOut({"c-1": (0.5, 1_700_000_000_000, "m1")})])
        ...     sent = writer.in_flight
        ...     writer.confirm()
        ...     writer.close()
        >>> sent, writer.in_flight, writer.scores_written
        (True, False, 1)
        """
        self.confirm()
        if not items:
            return
        started = time.perf_counter()
        batch = self._prepare(items)
        if not self._pipelines:
            self._write_retrying(batch, len(items), started, None)
            return
        try:
            flight = self._send_scripted(self._redis(), batch)
        except FATAL as exc:
            raise self._refused(exc) from exc
        except RETRYABLE as exc:
            self._write_retrying(batch, len(items), started, exc)
            return
        flight.n_items = len(items)
        flight.busy_s = time.perf_counter() - started
        self._flight = flight

    @property
    def in_flight(self) -> bool:
        """Whether a batch was sent by :meth:`send_batch` and not confirmed yet."""
        return self._flight is not None

    def confirm(self) -> None:
        """Read the replies of the batch in flight, if any, and count what it wrote.

        A connection that broke before all replies came back sends the whole
        batch again (writes are idempotent), with the retries of
        :meth:`write_batch`; an error reply raises as there.
        """
        flight = self._flight
        if flight is None:
            return
        self._flight = None
        started = time.perf_counter()
        try:
            counts = self._receive_scripted(self._redis(), flight)
        except FATAL as exc:
            raise self._refused(exc) from exc
        except RETRYABLE as exc:
            self._write_retrying(flight.batch, flight.n_items, started - flight.busy_s, exc)
            return
        self._delivered(counts, flight.busy_s + time.perf_counter() - started)

    def _write_retrying(
        self, batch: _Prepared, n_items: int, started: float, error: Exception | None
    ) -> None:
        """Write ``batch`` until it is in Redis; ``error``: what the first attempt met."""
        attempt = 0
        while True:
            if error is not None:
                attempt += 1
                self._script_loaded = False
                self.connected = False
                if attempt > self.config.max_retries:
                    raise SinkError(
                        f"Redis sink could not write a batch of {n_items} records to"
                        f" {redact_url(self.config.url)} after {attempt} attempts"
                        f" ({type(error).__name__}); check that Redis is running and reachable"
                        " (--redis-url / REDIS_URL)"
                    ) from error
                self.retries += 1
                delay = self._backoff_s(attempt)
                self.backoff_s += delay
                log.warning(
                    "Redis sink: %s unreachable (%s); retry %d of %d in %.2fs",
                    redact_url(self.config.url),
                    type(error).__name__,
                    attempt,
                    self.config.max_retries,
                    delay,
                )
                time.sleep(delay)
                error = None
            try:
                counts = self._write_once(batch)
                break
            except FATAL as exc:
                raise self._refused(exc) from exc
            except RETRYABLE as exc:
                error = exc
        self._delivered(counts, time.perf_counter() - started)

    def _refused(self, exc: Exception) -> SinkError:
        return SinkError(
            f"Redis at {redact_url(self.config.url)} refused the sink's credentials or"
            f" permissions ({type(exc).__name__}); fix --redis-url / REDIS_URL"
            " or the user's ACL"
        )

    def _delivered(self, counts: tuple[int, int, int, int], seconds: float) -> None:
        written, duplicates, scores, dead = counts
        self.connected = True
        self.alerts_written += written
        self.alerts_duplicate += duplicates
        self.scores_written += scores
        self.dead_letters_written += dead
        self.batches += 1
        self.last_batch_latency_s = seconds

    def close(self) -> None:
        """Confirm the batch in flight, then close the connection pool if the writer created it."""
        try:
            self.confirm()
        finally:
            self._release()

    def _release(self) -> None:
        if self._conn is not None and self._client is not None and not self._owns_client:
            self._client.connection_pool.release(self._conn)
        self._conn = None
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None

    # -- internals -------------------------------------------------------------------------
    def _backoff_s(self, attempt: int) -> float:
        """Jittered exponential backoff: uniform in [d/2, d], d = min(max, base * 2**(n-1))."""
        cap = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (attempt - 1))
        return self._rng.uniform(cap / 2, cap)

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = connect(self.config.url)
            self._owns_client = True
        return self._client

    def _connection(self, client: redis.Redis) -> Any:
        """The connection the writer keeps for :func:`~intentflow.redisutil.raw_pipeline`.

        After an error it is disconnected and reconnects on the next send.
        """
        if self._conn is None:
            self._conn = client.connection_pool.get_connection()
        return self._conn

    def _prepare(self, items: list[Output]) -> _Prepared:
        """Validate and serialise a batch before anything is sent.

        Of several scores of one entity in a batch only the last is written.
        Scores and event times are written as JSON numbers (``0.25``,
        ``1e-7``, ``1700000000000``; a score that is not finite as ``null``),
        each score as the shortest text that reads back as the same float.
        """
        cfg = self.config
        latest: dict[str, tuple[Any, Any, str]] = {}
        alerts: list[tuple[str, bytes]] = []
        dead: list[bytes] = []
        for item in items:
            if isinstance(item, ScoresOut):  # the bulk of a batch, one record per shard
                latest.update(item.latest)
            elif isinstance(item, ScoreOut):
                latest[item.entity_id] = (item.score, item.ts_ms, item.model)
            elif isinstance(item, AlertOut):
                alert_id = item.alert.get("alert_id")
                if not isinstance(alert_id, str) or not alert_id:
                    raise ValueError(f"alert without a non-empty string alert_id: {item.alert!r}")
                alerts.append((cfg.seen_key_prefix + alert_id, orjson.dumps(item.alert)))
            elif isinstance(item, DeadLetterOut):
                dead.append(orjson.dumps(item.record))
            else:
                raise TypeError(f"not an output record: {type(item).__name__}")
        prefix = cfg.score_key_prefix
        keys = [prefix + entity_id for entity_id in latest]
        fields: list[Any] = [None] * (3 * len(keys))
        if keys:
            scores, ts, models = zip(*latest.values(), strict=True)
            fields[0::3] = _numbers(scores, np.float64)
            fields[1::3] = _numbers(ts, np.int64)
            fields[2::3] = models
        return _Prepared(keys, fields, alerts, dead)

    def _queue_alert(self, pipe: redis.client.Pipeline, seen_key: str, payload: bytes) -> None:
        cfg = self.config
        pipe.evalsha(
            ALERT_ONCE_SHA,
            2,
            seen_key,
            cfg.alerts_stream,
            cfg.seen_ttl_s,
            cfg.alerts_maxlen,
            payload,
        )

    def _load_script(self, client: redis.Redis) -> None:
        sha = client.script_load(ALERT_ONCE)
        if sha != ALERT_ONCE_SHA:  # pragma: no cover - would mean a non-Redis server
            raise SinkError(f"SCRIPT LOAD returned {sha!r}, expected {ALERT_ONCE_SHA}")
        self._script_loaded = True
        self.script_loads += 1

    def _load_scripts(self, client: redis.Redis) -> None:
        """Load the batched scripts in one round trip."""
        pipe = client.pipeline(transaction=False)
        pipe.script_load(SCORES_SET)
        pipe.script_load(ALERTS_ONCE)
        shas = pipe.execute(raise_on_error=False)
        for sha in shas:
            self._check(sha)
        if shas != [SCORES_SET_SHA, ALERTS_ONCE_SHA]:  # pragma: no cover - not a Redis server
            raise SinkError(f"SCRIPT LOAD returned {shas!r}, expected their SHA1s")
        self._script_loaded = True
        self.script_loads += 1

    def _write_once(self, batch: _Prepared) -> tuple[int, int, int, int]:
        """One attempt; returns (alerts written, duplicates, scores, dead letters)."""
        return self._write_scripted(self._redis(), batch)

    def _calls(self, batch: _Prepared) -> list[_Call]:
        """Group a batch's alerts, then its scores, into script calls."""
        cfg = self.config
        calls: list[_Call] = []
        n = max(1, self.alerts_per_call)
        for i in range(0, len(batch.alerts), n):
            part = batch.alerts[i : i + n]
            keys = [cfg.alerts_stream, *[seen for seen, _ in part]]
            args: list[Any] = [cfg.seen_ttl_s, cfg.alerts_maxlen, *[doc for _, doc in part]]
            calls.append(("alert", ALERTS_ONCE_SHA, keys, args))
        n = max(1, self.scores_per_call)
        score_keys, fields = batch.score_keys, batch.score_fields
        for i in range(0, len(score_keys), n):
            args = [cfg.score_ttl_s, *fields[3 * i : 3 * (i + n)]]
            calls.append(("score", SCORES_SET_SHA, score_keys[i : i + n], args))
        return calls

    def _write_scripted(self, client: redis.Redis, batch: _Prepared) -> tuple[int, int, int, int]:
        """One attempt on a single server: batched scripts plus one XADD per dead letter.

        Alerts go first: they are the output that matters most.
        """
        return self._receive_scripted(client, self._send_scripted(client, batch))

    def _send_scripted(self, client: redis.Redis, batch: _Prepared) -> _Flight:
        """The first half of :meth:`_write_scripted`: send the batch's commands."""
        cfg = self.config
        calls = self._calls(batch)
        if calls and not self._script_loaded:
            self._load_scripts(client)
        commands: list[tuple[Any, ...]] = [_evalsha(call) for call in calls]
        dlq, maxlen = cfg.dlq_stream, cfg.dlq_maxlen
        commands += [("XADD", dlq, "MAXLEN", "~", maxlen, "*", "dlq", p) for p in batch.dead]
        send_commands(self._connection(client), commands)
        return _Flight(batch, calls, len(commands))

    def _receive_scripted(self, client: redis.Redis, flight: _Flight) -> tuple[int, int, int, int]:
        """The second half of :meth:`_write_scripted`: read and check the replies."""
        conn = self._connection(client)
        results = read_replies(conn, flight.n_commands, self.config.busy_poll_us / 1e6)
        calls = flight.calls
        counts = [0, 0, 0, 0]  # alerts written, duplicates, scores, dead letters
        no_script: list[_Call] = []
        for call, result in zip(calls, results, strict=False):
            if isinstance(result, redis.exceptions.NoScriptError):
                no_script.append(call)  # the call did not run at all
            else:
                self._count(call, result, counts)
        for result in results[len(calls) :]:
            self._check(result)
            counts[3] += 1

        if no_script:
            # The server lost its scripts (restart, failover, SCRIPT FLUSH) without our
            # connection noticing: load them again and redo just the calls that did not run.
            self._load_scripts(client)
            retry = [_evalsha(call) for call in no_script]
            for call, result in zip(no_script, raw_pipeline(conn, retry), strict=True):
                self._count(call, result, counts)
        written, duplicates, scores, dead = counts
        return written, duplicates, scores, dead

    def _count(self, call: _Call, result: Any, counts: list[int]) -> None:
        """Check one script reply and add what it wrote to ``counts``."""
        self._check(result)
        kind, _, keys, _ = call
        if kind == "score":
            counts[2] += len(keys)
            return
        for reply in result:
            if reply == 0:
                counts[1] += 1
            else:
                counts[0] += 1

    def _write_pipelined(self, client: Any, batch: _Prepared) -> tuple[int, int, int, int]:
        """One attempt with one pipelined command per write (keys may span cluster slots)."""
        cfg = self.config
        if not self._script_loaded and batch.alerts:
            self._load_script(client)
        pipe = client.pipeline(transaction=False)
        for seen_key, payload in batch.alerts:
            self._queue_alert(pipe, seen_key, payload)
        fields = batch.score_fields
        for i, key in enumerate(batch.score_keys):
            score, ts, model = fields[3 * i : 3 * i + 3]
            pipe.hset(key, mapping={"score": score, "ts": ts, "model": model})
            pipe.expire(key, cfg.score_ttl_s)
        for payload in batch.dead:
            pipe.xadd(cfg.dlq_stream, {"dlq": payload}, maxlen=cfg.dlq_maxlen, approximate=True)
        results = pipe.execute(raise_on_error=False)

        written = duplicates = 0
        no_script: list[tuple[str, bytes]] = []
        n_alerts = len(batch.alerts)
        for (seen_key, payload), result in zip(batch.alerts, results, strict=False):
            if isinstance(result, redis.exceptions.NoScriptError):
                no_script.append((seen_key, payload))
                continue
            self._check(result)
            if result == 0:
                duplicates += 1
            else:
                written += 1
        for result in results[n_alerts:]:  # HSET and EXPIRE per score, then the XADDs
            self._check(result)

        if no_script:
            # The server lost its scripts (restart, failover, SCRIPT FLUSH) without our
            # connection noticing: load the script again and redo just those alerts.
            self._load_script(client)
            retry = client.pipeline(transaction=False)
            for key, payload in no_script:
                self._queue_alert(retry, key, payload)
            for result in retry.execute(raise_on_error=False):
                self._check(result)
                if result == 0:
                    duplicates += 1
                else:
                    written += 1
        return written, duplicates, len(batch.score_keys), len(batch.dead)

    def _check(self, result: Any) -> None:
        """Raise a retryable error as is; turn any other error reply into a SinkError.

        A script that met a read-only replica is retryable too: its first
        write failed, so it wrote nothing.
        """
        if not isinstance(result, Exception):
            return
        if isinstance(result, RETRYABLE):
            raise result
        if isinstance(result, redis.ResponseError) and _READONLY_IN_SCRIPT in str(result):
            raise redis.exceptions.ReadOnlyError(str(result)) from result
        if isinstance(result, redis.ResponseError) and any(
            marker in str(result) for marker in _NOPERM_IN_SCRIPT
        ):
            # An ACL refusal inside a script arrives as a plain script error: name it as
            # the refusal it is, as a direct command's NoPermissionError would.
            raise SinkError(
                f"Redis at {redact_url(self.config.url)} rejected a sink write:"
                f" NoPermissionError: {result}; grant the engine's ACL user the commands"
                " listed in docs/reliability.md (least-privilege users)"
            ) from result
        raise SinkError(
            f"Redis at {redact_url(self.config.url)} rejected a sink write:"
            f" {type(result).__name__}: {result}"
        ) from result

    def __repr__(self) -> str:
        return (
            f"RedisOutputWriter({redact_url(self.config.url)}, batches={self.batches},"
            f" alerts_written={self.alerts_written}, retries={self.retries})"
        )


def _report_failure(observer: SinkObserver, writer: RedisOutputWriter, exc: Exception) -> None:
    """Count a failed batch and say why: Bytewax reports a failed sink as a bare panic.

    URLs in ``exc`` are already redacted.
    """
    observer.failed(writer)
    log.error("the Redis sink failed and stops the dataflow: %s", exc)


class RedisSinkPartition(StatelessSinkPartition[Output]):
    """The per-worker partition of :class:`RedisSink`; ``writer`` exposes the counters."""

    def __init__(self, writer: RedisOutputWriter, observer: SinkObserver | None = None) -> None:
        self.writer = writer
        self.observer = observer or SinkObserver()

    def write_batch(self, items: list[Output]) -> None:
        """Deliver one Bytewax batch through the writer."""
        try:
            self.writer.write_batch(items)
        except Exception as exc:
            _report_failure(self.observer, self.writer, exc)
            raise
        self.observer.delivered(items, self.writer)

    def close(self) -> None:
        """Close the writer's connection."""
        self.writer.close()


class RedisSink(DynamicSink[Output]):
    """Bytewax sink writing alerts, scores and dead letters to Redis from every worker.

    Delivery: Bytewax output is at-least-once; alert writes are idempotent by
    ``alert_id`` (see :mod:`intentflow.sinks.redis_sink`), so each alert id
    appears once in the alerts stream while its seen key lives. Scores are
    last-write-wins per entity; dead letters are at-least-once.
    """

    def __init__(self, config: RedisSinkConfig, metrics: EngineMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or EngineMetrics()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> RedisSinkPartition:
        """Return a partition with its own :class:`RedisOutputWriter` (connects lazily)."""
        return RedisSinkPartition(RedisOutputWriter(self.config), self.metrics.sink())


#: The one partition of :class:`PipelinedRedisSink`.
PIPELINED_PART: Final = "redis"


class PipelinedRedisSinkPartition(StatefulSinkPartition[Output, None]):
    """The partition of :class:`PipelinedRedisSink`: sends ahead, confirms at every epoch.

    Each batch is sent without waiting for Redis's replies, which are read
    when the next batch is sent, at the end of every epoch
    (:meth:`snapshot`) and at :meth:`close`. Bytewax commits an epoch only
    after this partition's snapshot, so a committed epoch's output is in
    Redis: delivery stays at least once.
    """

    def __init__(
        self,
        writer: RedisOutputWriter,
        observer: SinkObserver | None = None,
        before_send: Callable[[], None] | None = None,
    ) -> None:
        self.writer = writer
        self.observer = observer or SinkObserver()
        self.before_send = before_send
        self._sent: tuple[list[Output], float] | None = None  # the batch in flight, sent at

    def write_batch(self, values: list[Output]) -> None:
        """Confirm the batch before, call ``before_send``, then send this one."""
        self._confirm()
        if self.before_send is not None:
            self.before_send()  # ReadAhead.before_send: the input's reads, ahead of our scripts
        sent_ms = time.time() * 1000.0
        try:
            self.writer.send_batch(values)
        except Exception as exc:
            _report_failure(self.observer, self.writer, exc)
            raise
        self._sent = (values, sent_ms)

    def snapshot(self) -> None:
        """Confirm the batch in flight: the epoch's output is in Redis before it commits."""
        self._confirm()

    def close(self) -> None:
        """Confirm the batch in flight and close the writer's connection."""
        try:
            self._confirm()
        finally:
            self.writer.close()

    def _confirm(self) -> None:
        sent = self._sent
        if sent is None:
            return
        self._sent = None
        try:
            self.writer.confirm()
        except Exception as exc:
            _report_failure(self.observer, self.writer, exc)
            raise
        self.observer.delivered(sent[0], self.writer, sent[1])


class PipelinedRedisSink(FixedPartitionedSink[Output, None]):
    """:class:`RedisSink` for a dataflow of one worker, sending each batch ahead.

    Items are ``(key, output)`` pairs (the flow keys them); there is one
    partition, so every output goes to it. The engine uses it when the
    whole run has one worker and ``output.pipelined`` is on
    (docs/sinks.md, "Pipelined writes"); with more workers every output
    would cross to the worker owning the partition, so :class:`RedisSink`
    writes from each worker instead.
    """

    def __init__(
        self,
        config: RedisSinkConfig,
        metrics: EngineMetrics | None = None,
        before_send: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or EngineMetrics()
        #: Called before each batch is sent (the flow passes ``ReadAhead.before_send``).
        self.before_send = before_send

    def list_parts(self) -> list[str]:
        """The one partition, :data:`PIPELINED_PART`."""
        return [PIPELINED_PART]

    def part_fn(self, item_key: str) -> int:
        """Every key goes to the one partition."""
        return 0

    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> PipelinedRedisSinkPartition:
        """A partition with its own writer; there is no position to resume from."""
        return PipelinedRedisSinkPartition(
            RedisOutputWriter(self.config), self.metrics.sink(), self.before_send
        )

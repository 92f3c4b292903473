"""The Redis alert sink: alerts and dead letters into streams, latest scores into hashes.

Delivery guarantee: Bytewax delivers output at least once (after a crash the
dataflow resumes from its last snapshot and re-emits what followed it). Every
alert is appended by a Lua script that first checks a per-alert "seen" key,
so a replayed alert is dropped: each ``alert_id`` appears once in the alerts
stream for as long as its seen key lives (``seen_ttl_s``, 7 days by default).
Score hashes are overwritten with the same values on replay (harmless). Dead
letters are at-least-once: a replayed batch may append a dead letter twice.

Keys and streams are documented in ``docs/sinks.md``.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Final

import orjson
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from intentflow.errors import SinkError
from intentflow.metrics import EngineMetrics, SinkObserver
from intentflow.redisutil import connect, redact_url
from intentflow.sinks.base import AlertOut, DeadLetterOut, Output, OutputWriter, ScoreOut
from intentflow.sinks.lua import ALERT_ONCE, ALERT_ONCE_SHA

__all__ = ["RedisOutputWriter", "RedisSink", "RedisSinkConfig", "RedisSinkPartition"]

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

    def __repr__(self) -> str:
        return (
            f"RedisSinkConfig(url={redact_url(self.url)!r}, alerts_stream={self.alerts_stream!r})"
        )


# One prepared write: (kind, key, payload). kind is "alert", "score" or "dlq".
_Op = tuple[str, str, Any]


class RedisOutputWriter(OutputWriter):
    """Writes :data:`~intentflow.sinks.base.Output` batches to Redis, one pipeline per batch.

    Connects lazily on the first batch (or uses ``client``, which it then does
    not close). Counters are plain attributes: ``alerts_written``,
    ``alerts_duplicate`` (already in the stream, including those a retried
    batch had written before its connection broke), ``scores_written`` (score
    hashes written, after keeping only the last score of each entity in a
    batch), ``dead_letters_written``, ``retries``, ``script_loads``,
    ``batches`` (batches delivered), ``last_batch_latency_s`` (wall time of
    the last delivered batch, retries included), ``backoff_s`` (total time
    slept before retries) and ``connected`` (``None`` before the first
    attempt, then whether the last attempt reached Redis).
    """

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
        self._script_loaded = False
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
        within ``max_retries`` retries or rejects a command.
        """
        if not items:
            return
        started = time.perf_counter()
        ops = self._prepare(items)
        attempt = 0
        while True:
            try:
                written, duplicates, scores, dead = self._write_once(ops)
                break
            except FATAL as exc:
                raise SinkError(
                    f"Redis at {redact_url(self.config.url)} refused the sink's credentials or"
                    f" permissions ({type(exc).__name__}); fix --redis-url / REDIS_URL"
                    " or the user's ACL"
                ) from exc
            except RETRYABLE as exc:
                attempt += 1
                self._script_loaded = False
                self.connected = False
                if attempt > self.config.max_retries:
                    raise SinkError(
                        f"Redis sink could not write a batch of {len(items)} records to"
                        f" {redact_url(self.config.url)} after {attempt} attempts"
                        f" ({type(exc).__name__}); check that Redis is running and reachable"
                        " (--redis-url / REDIS_URL)"
                    ) from exc
                self.retries += 1
                delay = self._backoff_s(attempt)
                self.backoff_s += delay
                time.sleep(delay)
        self.connected = True
        self.alerts_written += written
        self.alerts_duplicate += duplicates
        self.scores_written += scores
        self.dead_letters_written += dead
        self.batches += 1
        self.last_batch_latency_s = time.perf_counter() - started

    def close(self) -> None:
        """Close the connection pool if the writer created it."""
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

    def _prepare(self, items: list[Output]) -> list[_Op]:
        """Validate and serialise a batch before anything is sent."""
        cfg = self.config
        last_score_at = {
            item.entity_id: i for i, item in enumerate(items) if isinstance(item, ScoreOut)
        }
        ops: list[_Op] = []
        for i, item in enumerate(items):
            if isinstance(item, AlertOut):
                alert_id = item.alert.get("alert_id")
                if not isinstance(alert_id, str) or not alert_id:
                    raise ValueError(f"alert without a non-empty string alert_id: {item.alert!r}")
                ops.append(("alert", cfg.seen_key_prefix + alert_id, orjson.dumps(item.alert)))
            elif isinstance(item, ScoreOut):
                if last_score_at[item.entity_id] != i:
                    continue  # a later score of the same entity in this batch wins
                fields = {
                    "score": repr(float(item.score)),
                    "ts": str(int(item.ts_ms)),
                    "model": item.model,
                }
                ops.append(("score", cfg.score_key_prefix + item.entity_id, fields))
            elif isinstance(item, DeadLetterOut):
                ops.append(("dlq", cfg.dlq_stream, orjson.dumps(item.record)))
            else:
                raise TypeError(f"not an output record: {type(item).__name__}")
        return ops

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

    def _write_once(self, ops: list[_Op]) -> tuple[int, int, int, int]:
        """One attempt; returns (alerts written, duplicates, scores, dead letters)."""
        cfg = self.config
        client = self._redis()
        if not self._script_loaded and any(kind == "alert" for kind, _, _ in ops):
            self._load_script(client)
        pipe = client.pipeline(transaction=False)
        for kind, key, payload in ops:
            if kind == "alert":
                self._queue_alert(pipe, key, payload)
            elif kind == "score":
                pipe.hset(key, mapping=payload)
                pipe.expire(key, cfg.score_ttl_s)
            else:
                pipe.xadd(key, {"dlq": payload}, maxlen=cfg.dlq_maxlen, approximate=True)
        results = pipe.execute(raise_on_error=False)

        written = duplicates = scores = dead = 0
        no_script: list[tuple[str, bytes]] = []
        pos = 0
        for kind, key, payload in ops:
            result = results[pos]
            pos += 1
            if kind == "alert" and isinstance(result, redis.exceptions.NoScriptError):
                no_script.append((key, payload))
                continue
            self._check(result)
            if kind == "score":
                self._check(results[pos])  # the EXPIRE reply
                pos += 1
            if kind == "alert":
                if result == 0:
                    duplicates += 1
                else:
                    written += 1
            elif kind == "score":
                scores += 1
            else:
                dead += 1

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
        return written, duplicates, scores, dead

    def _check(self, result: Any) -> None:
        """Raise a retryable error as is; turn any other error reply into a SinkError."""
        if not isinstance(result, Exception):
            return
        if isinstance(result, RETRYABLE):
            raise result
        raise SinkError(
            f"Redis at {redact_url(self.config.url)} rejected a sink write:"
            f" {type(result).__name__}: {result}"
        ) from result

    def __repr__(self) -> str:
        return (
            f"RedisOutputWriter({redact_url(self.config.url)}, batches={self.batches},"
            f" alerts_written={self.alerts_written}, retries={self.retries})"
        )


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
            self.observer.failed(self.writer)
            # Bytewax reports a failed sink as a bare panic: say why here (URLs are redacted).
            log.error("the Redis sink failed and stops the dataflow: %s", exc)
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

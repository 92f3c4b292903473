"""Reading alerts back from Redis: consumer groups for apps, plain tailing for humans."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any, Final

import orjson
import redis

from intentflow.redisutil import connect
from intentflow.sinks.lua import RECLAIM_IDS

__all__ = ["DEFAULT_ALERTS_STREAM", "AlertReader", "iter_alerts"]

log = logging.getLogger(__name__)

DEFAULT_ALERTS_STREAM: Final[str] = "intentflow:alerts"

Entry = tuple[str, dict[str, Any]]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stream_entries(response: Any) -> list[tuple[Any, Any]]:
    """Entries of an XREAD/XREADGROUP reply for one stream (RESP2 list or RESP3 dict)."""
    if not response:
        return []
    groups = response.values() if isinstance(response, dict) else (e for _, e in response)
    entries: list[tuple[Any, Any]] = []
    for group in groups:
        # RESP3 replies may wrap each stream's entries, (id, fields) tuples, in one more list.
        if group and isinstance(group[0], list):
            group = group[0]
        entries.extend(group or [])
    return entries


def _parse_alert(fields: Any) -> dict[str, Any] | None:
    """The alert dict of an entry's fields, or ``None`` if absent or not a JSON object."""
    if not fields:
        return None
    raw = fields.get("alert", fields.get(b"alert"))
    if raw is None:
        return None
    try:
        alert = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return alert if isinstance(alert, dict) else None


class AlertReader:
    """At-least-once reader of the alerts stream through a consumer group.

    Every app (or app instance pool) uses its own ``group``; each process of
    it a distinct ``consumer`` name. :meth:`read` returns ``(entry_id, alert)``
    pairs; call :meth:`ack` once an alert is handled. What is not acked is
    delivered again: to this consumer when it restarts under the same name
    (its own pending entries come first), or to any consumer of the group that
    reclaims it after ``claim_min_idle_ms`` (``XAUTOCLAIM``, run by
    :meth:`read` at most every ``claim_interval_s``, or by :meth:`reclaim`).

    ``start_id`` only matters when the group is created: ``"$"`` (default)
    delivers alerts written from then on, so a new app does not start with
    the whole retained history; ``"0"`` delivers everything still in the
    stream. An existing group keeps its position.

    De-duplication: the reader remembers the last ``dedup_size`` alert ids
    it returned. An entry carrying one of them is not returned again; if it
    is another copy in the stream (a different entry id) it is acked at once,
    if it is the very entry re-delivered (reclaimed while still being
    handled) it is left to the ack of its first delivery. Entries trimmed from
    the stream while pending, and entries that hold no JSON alert, are acked
    and counted (``trimmed``, ``malformed``). Redis errors propagate.

    Example (runnable; a real Redis is started for it):

    >>> from intentflow.redisutil import EmbeddedRedis, connect
    >>> with EmbeddedRedis() as server:
    ...     producer = connect(server.url)
    ...     doc = '{"alert_id": "a1", "entity_id": "e1"}'
    ...     _ = producer.xadd("intentflow:alerts", {"alert": doc})
    ...     reader = AlertReader(server.url, group="crm-sync", consumer="worker-1", start_id="0")
    ...     batch = reader.read(count=10, block_ms=100)
    ...     acked = reader.ack([entry_id for entry_id, _ in batch])
    ...     reader.close()
    ...     producer.close()
    >>> [alert["alert_id"] for _, alert in batch], acked
    (['a1'], 1)

    In an app the loop is::

        reader = AlertReader(url, group="crm-sync", consumer=socket.gethostname())
        while True:
            for entry_id, alert in reader.read(count=100, block_ms=5000):
                handle(alert)
                reader.ack([entry_id])
    """

    def __init__(
        self,
        redis_url_or_client: str | redis.Redis,
        group: str,
        consumer: str,
        *,
        stream: str = DEFAULT_ALERTS_STREAM,
        start_id: str = "$",
        dedup_size: int = 10_000,
        claim_min_idle_ms: int | None = 60_000,
        claim_interval_s: float = 10.0,
    ) -> None:
        if dedup_size < 0:
            raise ValueError("dedup_size must be >= 0")
        if isinstance(redis_url_or_client, str):
            self._client = connect(redis_url_or_client, decode_responses=True)
            self._owns_client = True
        else:
            self._client = redis_url_or_client
            self._owns_client = False
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.start_id = start_id
        self.dedup_size = dedup_size
        self.claim_min_idle_ms = claim_min_idle_ms
        self.claim_interval_s = claim_interval_s
        self._seen: OrderedDict[str, str] = OrderedDict()  # alert_id -> entry id
        self._group_ready = False
        self._own_cursor: str | None = "0"  # replay of our own pending entries, then None
        self._claim_cursor = "0-0"
        self._reclaim_script = self._client.register_script(RECLAIM_IDS)
        self._last_claim = float("-inf")
        self.delivered = 0
        self.duplicates = 0
        self.redelivered_skipped = 0
        self.trimmed = 0
        self.malformed = 0
        self.reclaimed = 0

    # -- group -----------------------------------------------------------------------------
    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) unless it exists."""
        try:
            self._client.xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a group command, re-creating the group once if it vanished (NOGROUP)."""
        if not self._group_ready:
            self.ensure_group()
        try:
            return fn(*args, **kwargs)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()
            return fn(*args, **kwargs)

    # -- reading ---------------------------------------------------------------------------
    def read(self, count: int = 100, block_ms: int | None = 1000) -> list[Entry]:
        """Return up to ``count`` new or re-delivered alerts as ``(entry_id, alert)``.

        Order of sources: this consumer's own pending entries (once, after
        start), stale entries reclaimed from any consumer (when due), then new
        entries, waiting up to ``block_ms`` for them (``None``: do not wait;
        ``0``: wait forever, as in Redis).
        """
        while self._own_cursor is not None:
            raw = self._xreadgroup(self._own_cursor, count, None)
            if not raw:
                self._own_cursor = None
                break
            self._own_cursor = _text(raw[-1][0])
            out = self._accept(raw)
            if out:
                return out
        if self.claim_min_idle_ms is not None:
            now = time.monotonic()
            if now - self._last_claim >= self.claim_interval_s:
                self._last_claim = now
                out = self.reclaim(count)
                if out:
                    return out
        return self._accept(self._xreadgroup(">", count, block_ms))

    def _xreadgroup(self, last_id: str, count: int, block_ms: int | None) -> list[tuple[Any, Any]]:
        response = self._call(
            self._client.xreadgroup,
            self.group,
            self.consumer,
            {self.stream: last_id},
            count=count,
            block=block_ms,
        )
        return _stream_entries(response)

    def reclaim(self, count: int = 100, min_idle_ms: int | None = None) -> list[Entry]:
        """Take over entries pending for longer than ``min_idle_ms`` in any consumer.

        Uses ``XAUTOCLAIM`` from a cursor kept between calls, so successive
        calls sweep the whole pending list. Entries trimmed from the stream
        meanwhile are acked. Returns the claimed alerts that pass
        de-duplication.
        """
        idle = self.claim_min_idle_ms if min_idle_ms is None else min_idle_ms
        if idle is None:
            return []
        cursor, raw_ids = self._call(
            self._reclaim_script,
            keys=[self.stream],
            args=[self.group, self.consumer, idle, self._claim_cursor, count],
        )
        self._claim_cursor = _text(cursor)
        ids = [_text(i) for i in raw_ids]
        if not ids:
            return []
        self.reclaimed += len(ids)
        pipe = self._client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xrange(self.stream, min=entry_id, max=entry_id, count=1)
        # An id with no entry was trimmed while pending: empty fields mark it for ack.
        found = pipe.execute()
        claimed = [(i, f[0][1] if f else {}) for i, f in zip(ids, found, strict=True)]
        return self._accept(claimed)

    def _accept(self, raw: list[tuple[Any, Any]]) -> list[Entry]:
        """Parse and de-duplicate entries; ack the ones nobody needs to see."""
        out: list[Entry] = []
        to_ack: list[str] = []
        for raw_id, fields in raw:
            if raw_id is None:
                continue
            entry_id = _text(raw_id)
            alert = _parse_alert(fields)
            if alert is None:
                if fields:
                    self.malformed += 1
                    log.warning("alerts stream %s: entry %s holds no alert", self.stream, entry_id)
                else:
                    self.trimmed += 1
                to_ack.append(entry_id)
                continue
            alert_id = alert.get("alert_id")
            if isinstance(alert_id, str) and self.dedup_size:
                first = self._seen.get(alert_id)
                if first is not None:
                    self._seen.move_to_end(alert_id)
                    if first == entry_id:
                        self.redelivered_skipped += 1
                    else:
                        self.duplicates += 1
                        to_ack.append(entry_id)
                    continue
                self._seen[alert_id] = entry_id
                if len(self._seen) > self.dedup_size:
                    self._seen.popitem(last=False)
            out.append((entry_id, alert))
        if to_ack:
            self.ack(to_ack)
        self.delivered += len(out)
        return out

    def ack(self, ids: Iterable[str]) -> int:
        """Acknowledge handled entries; returns how many were pending."""
        id_list = list(ids)
        if not id_list:
            return 0
        return int(self._call(self._client.xack, self.stream, self.group, *id_list))

    def pending_count(self) -> int:
        """Number of entries delivered to the group and not yet acked."""
        summary = self._call(self._client.xpending, self.stream, self.group)
        return int(summary["pending"])

    def close(self) -> None:
        """Close the connection if the reader created it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> AlertReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _last_entry_id(client: redis.Redis, stream: str) -> str:
    last = client.xrevrange(stream, count=1)
    return _text(last[0][0]) if last else "0-0"


def iter_alerts(
    redis_url_or_client: str | redis.Redis,
    *,
    stream: str = DEFAULT_ALERTS_STREAM,
    start_id: str = "$",
    count: int = 100,
    block_ms: int = 1000,
    max_entries: int | None = None,
    idle_timeout_s: float | None = None,
) -> Iterator[tuple[str, dict[str, Any], float]]:
    """Tail the alerts stream with plain ``XREAD``: yields ``(entry_id, alert, read_ts_ms)``.

    No consumer group is involved, so tailing never disturbs apps' groups.
    ``start_id`` ``"$"`` means alerts written after the call, ``"0"`` the
    whole retained stream, or any entry id to resume after it.
    ``read_ts_ms`` is the wall time (epoch ms, float) when XREAD returned.
    Stops after ``max_entries`` alerts or ``idle_timeout_s`` without any;
    runs forever otherwise. Entries without a JSON alert are skipped.
    """
    if isinstance(redis_url_or_client, str):
        client = connect(redis_url_or_client, decode_responses=True)
        owns = True
    else:
        client, owns = redis_url_or_client, False
    try:
        # Resolved now, not at the first next(): "$" means after this call.
        last_id = _last_entry_id(client, stream) if start_id == "$" else start_id
    except BaseException:
        if owns:
            client.close()
        raise
    return _tail(client, owns, stream, last_id, count, block_ms, max_entries, idle_timeout_s)


def _tail(
    client: redis.Redis,
    owns: bool,
    stream: str,
    last_id: str,
    count: int,
    block_ms: int,
    max_entries: int | None,
    idle_timeout_s: float | None,
) -> Iterator[tuple[str, dict[str, Any], float]]:
    try:
        yielded = 0
        last_seen = time.monotonic()
        while max_entries is None or yielded < max_entries:
            response = client.xread({stream: last_id}, count=count, block=block_ms)
            read_ts_ms = time.time() * 1000.0
            entries = _stream_entries(response)
            if not entries:
                if idle_timeout_s is not None and time.monotonic() - last_seen >= idle_timeout_s:
                    return
                continue
            last_seen = time.monotonic()
            for raw_id, fields in entries:
                if raw_id is None:
                    continue
                last_id = _text(raw_id)
                alert = _parse_alert(fields)
                if alert is None:
                    log.warning("alerts stream %s: entry %s holds no alert", stream, last_id)
                    continue
                yield last_id, alert, read_ts_ms
                yielded += 1
                if max_entries is not None and yielded >= max_entries:
                    return
    finally:
        if owns:
            client.close()

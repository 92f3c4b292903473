"""Parse and validate raw event payloads into :class:`~intentflow.events.Event`.

Bad input never raises: :func:`parse_event` returns either an ``Event`` or a
:class:`Rejection` that the dataflow turns into a dead-letter record. The
rules are documented in ``docs/contracts.md``; the JSON Schemas in
``intentflow/schemas/`` describe the same contract for other languages.

>>> limits = Limits()
>>> ev = parse_event(b'{"event_id":"e1","ts":1767225600000,"entity_id":"c-1",'
...                  b'"type":"page_view","props":{"page":"/pricing","duration_s":42}}',
...                  limits, now_ms=1767225600000)
>>> ev.entity_id, ev.ts_ms, ev.props["duration_s"]
('c-1', 1767225600000, 42)
>>> parse_event(b'{"event_id":"e1"}', limits, now_ms=0).reason
'missing_field'
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson

from intentflow.events import OUTCOME_RESULTS, Event

__all__ = [
    "DLQ_SCHEMA_VERSION",
    "REASONS",
    "Limits",
    "Rejection",
    "dead_letter",
    "parse_event",
]

DLQ_SCHEMA_VERSION: Final = "1.0"

#: Every reason code a dead-letter record can carry.
REASONS: Final[frozenset[str]] = frozenset(
    {
        "payload_too_large",
        "invalid_utf8",
        "malformed_json",
        "non_finite_number",
        "number_out_of_range",
        "too_deep",
        "not_an_object",
        "missing_field",
        "wrong_type",
        "field_too_long",
        "text_too_long",
        "invalid_ts",
        "ts_in_future",
        "invalid_outcome",
        "missing_payload",
    }
)

_MIN_TS_MS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z
_MAX_ID_CHARS: Final = 256
_MAX_TYPE_CHARS: Final = 64
_MAX_INT: Final = 2**53  # integers beyond this lose precision in JSON consumers
_MIN_INT: Final = -_MAX_INT
_isfinite: Final = math.isfinite


@dataclass(frozen=True, slots=True)
class Limits:
    """Input limits; every one is configurable under ``[limits]``."""

    max_payload_bytes: int = 64 * 1024
    max_text_chars: int = 8192
    max_depth: int = 8
    max_future_ms: int = 24 * 3600 * 1000
    dlq_payload_chars: int = 2048


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a payload was refused: a reason code from :data:`REASONS` and a message."""

    reason: str
    message: str


def _walk(value: Any, depth: int, limits: Limits, path: str) -> Rejection | None:
    """Check nesting depth, finite numbers and string lengths below ``props``."""
    if depth > limits.max_depth:
        return Rejection("too_deep", f"{path}: nesting deeper than {limits.max_depth} levels")
    if isinstance(value, str):
        if len(value) > limits.max_text_chars:
            return Rejection(
                "text_too_long",
                f"{path}: {len(value)} characters, limit is {limits.max_text_chars}",
            )
    elif isinstance(value, float):
        if not math.isfinite(value):
            return Rejection("non_finite_number", f"{path}: {value!r} is not finite")
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if not -_MAX_INT <= value <= _MAX_INT:
            return Rejection("number_out_of_range", f"{path}: integer beyond ±2^53")
    elif isinstance(value, dict):
        for k, v in value.items():
            bad = _walk(v, depth + 1, limits, f"{path}.{k}")
            if bad is not None:
                return bad
    elif isinstance(value, list):
        for i, v in enumerate(value):
            bad = _walk(v, depth + 1, limits, f"{path}[{i}]")
            if bad is not None:
                return bad
    return None


def _classify_decode_error(payload: bytes, err: Exception) -> Rejection:
    text = str(err)
    if "UTF-8" in text or "utf-8" in text:
        return Rejection("invalid_utf8", "payload is not valid UTF-8")
    if "depth limit" in text:
        return Rejection("too_deep", "JSON nesting exceeds the parser's depth limit")
    if "infinity" in text:
        return Rejection("number_out_of_range", "a number is too large for a double")
    # orjson refuses NaN/Infinity literals; the standard parser accepts them,
    # which tells a non-finite number from other syntax errors.
    if b"NaN" in payload or b"Infinity" in payload:
        try:
            json.loads(payload)
        except (ValueError, RecursionError):
            pass
        else:
            return Rejection("non_finite_number", "NaN or Infinity is not valid JSON")
    return Rejection("malformed_json", f"not valid JSON: {text}")


def _parse_ts(raw: Any) -> int | Rejection:
    if isinstance(raw, bool):
        return Rejection("wrong_type", "ts: expected RFC 3339 string or epoch milliseconds")
    if isinstance(raw, int):
        ts = raw
    elif isinstance(raw, float):
        if not math.isfinite(raw):
            return Rejection("non_finite_number", "ts is not finite")
        ts = int(raw)
    elif isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError:
            return Rejection("invalid_ts", f"ts: {raw[:64]!r} is not an RFC 3339 timestamp")
        if dt.tzinfo is None:
            return Rejection("invalid_ts", "ts: RFC 3339 timestamp without a UTC offset")
        ts = int(dt.timestamp() * 1000)
    else:
        return Rejection("wrong_type", "ts: expected RFC 3339 string or epoch milliseconds")
    if ts < _MIN_TS_MS:
        return Rejection("invalid_ts", f"ts: {ts} is before 2000-01-01 (epoch milliseconds?)")
    return ts


def _req_str(obj: dict[str, Any], key: str, max_chars: int) -> str | Rejection:
    value = obj.get(key)
    if value is None:
        return Rejection("missing_field", f"{key} is required")
    if not isinstance(value, str):
        return Rejection("wrong_type", f"{key}: expected a string, got {type(value).__name__}")
    if not value:
        return Rejection("missing_field", f"{key} is empty")
    if len(value) > max_chars:
        return Rejection("field_too_long", f"{key}: longer than {max_chars} characters")
    return value


def _check_outcome(props: dict[str, Any]) -> Rejection | None:
    for key in ("alert_id", "action", "result"):
        if not isinstance(props.get(key), str):
            return Rejection("invalid_outcome", f"outcome: props.{key} must be a string")
    if props["result"] not in OUTCOME_RESULTS:
        allowed = ", ".join(sorted(OUTCOME_RESULTS))
        return Rejection("invalid_outcome", f"outcome: props.result must be one of {allowed}")
    value = props.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        return Rejection("invalid_outcome", "outcome: props.value must be a number")
    return None


#: The size :func:`parse_event` assumes for a payload handed over decoded: large
#: enough that every string's length is checked.
_UNSIZED: Final = 1 << 62


def parse_event(
    payload: bytes | dict[str, Any] | None,
    limits: Limits,
    now_ms: int,
    source: str = "",
    offset: str = "",
    ingest_ts: float = 0.0,
    produced_ts: float | None = None,
) -> Event | Rejection:
    """Decode and validate one payload; never raises on bad input.

    ``now_ms`` (epoch milliseconds) bounds ``ts`` from above; ``source``,
    ``offset``, ``ingest_ts`` and ``produced_ts`` are copied into the event.

    The common event (string ids, integer ``ts``, flat ``props``) is accepted
    by a few inline tests; every other payload, valid or not, goes through
    :func:`_validate`, which applies the rules in order and builds the exact
    rejection. The inline tests only accept what :func:`_validate` accepts,
    and build the same event.

    A source that makes its events itself (the generator) may hand one over
    as the decoded object instead of its JSON: it is validated by the same
    rules but the payload size, which such a source keeps far below the
    limit.
    """
    if isinstance(payload, dict):  # decoded by its source: every rule but the size applies
        obj: Any = payload
        size = _UNSIZED
    else:
        if payload is None:
            return Rejection("missing_payload", "the entry has no event field")
        size = len(payload)
        if size > limits.max_payload_bytes:
            return Rejection(
                "payload_too_large", f"{size} bytes, limit is {limits.max_payload_bytes}"
            )
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError as err:
            return _classify_decode_error(payload, err)
    # orjson builds exact built-in types, so ``type(x) is`` tests suffice.
    # Any test that fails hands the payload to _validate. The tests are
    # separate statements to keep the jumps short: CPython 3.11 only
    # specializes a comparison followed by a short conditional jump.
    try:
        event_id = obj["event_id"]
        entity_id = obj["entity_id"]
        etype = obj["type"]
        ts = obj["ts"]
    except (KeyError, TypeError):  # a missing field, or not an object
        return _validate(obj, limits, now_ms, source, offset, ingest_ts, produced_ts)
    # A string of n characters takes at least n + 2 bytes of the payload: in
    # a short payload no string is too long, and its length need not be read.
    short = size <= _MAX_ID_CHARS
    if not (
        type(event_id) is str
        and event_id
        and (short or len(event_id) <= _MAX_ID_CHARS)
        and type(entity_id) is str
        and entity_id
        and (short or len(entity_id) <= _MAX_ID_CHARS)
    ):
        return _validate(obj, limits, now_ms, source, offset, ingest_ts, produced_ts)
    if not (type(etype) is str and 0 < len(etype) <= _MAX_TYPE_CHARS and etype != "outcome"):
        return _validate(obj, limits, now_ms, source, offset, ingest_ts, produced_ts)
    # ts - now_ms is usually a small int, which compares faster than ts.
    if not (type(ts) is int and ts >= _MIN_TS_MS and ts - now_ms <= limits.max_future_ms):
        return _validate(obj, limits, now_ms, source, offset, ingest_ts, produced_ts)
    account_id = obj.get("account_id")
    if account_id is not None and (
        type(account_id) is not str
        or not account_id
        or (not short and len(account_id) > _MAX_ID_CHARS)
    ):
        return _validate(obj, limits, now_ms, source, offset, ingest_ts, produced_ts)
    props = obj.get("props")
    if props is None:
        props = {}
    elif type(props) is not dict or limits.max_depth < 2:
        return _validate(obj, limits, now_ms, source, offset, ingest_ts, produced_ts)
    else:
        # The checks of _walk, for values that are not objects or arrays.
        max_text = limits.max_text_chars
        short_text = size <= max_text
        for value in props.values():
            kind = type(value)
            if kind is str:
                if short_text or len(value) <= max_text:
                    continue
            elif kind is float:
                if _isfinite(value):
                    continue
            elif kind is int:
                if _MIN_INT <= value <= _MAX_INT:
                    continue
            elif kind is bool or value is None:
                continue
            return _validate(obj, limits, now_ms, source, offset, ingest_ts, produced_ts)
    # Positional in field order: keyword arguments cost several times more here.
    return Event(
        event_id, ts, entity_id, etype, account_id, props, source, offset, ingest_ts, produced_ts
    )


def _validate(
    obj: Any,
    limits: Limits,
    now_ms: int,
    source: str,
    offset: str,
    ingest_ts: float,
    produced_ts: float | None,
) -> Event | Rejection:
    """Apply every rule, in order, to a decoded payload: the reference path."""
    if not isinstance(obj, dict):
        return Rejection("not_an_object", f"expected a JSON object, got {type(obj).__name__}")

    event_id = _req_str(obj, "event_id", _MAX_ID_CHARS)
    if isinstance(event_id, Rejection):
        return event_id
    entity_id = _req_str(obj, "entity_id", _MAX_ID_CHARS)
    if isinstance(entity_id, Rejection):
        return entity_id
    etype = _req_str(obj, "type", _MAX_TYPE_CHARS)
    if isinstance(etype, Rejection):
        return etype
    if "ts" not in obj or obj["ts"] is None:
        return Rejection("missing_field", "ts is required")
    ts = _parse_ts(obj["ts"])
    if isinstance(ts, Rejection):
        return ts
    if ts > now_ms + limits.max_future_ms:
        return Rejection(
            "ts_in_future",
            f"ts is {(ts - now_ms) / 3.6e6:.1f} h ahead of the clock "
            f"(limit {limits.max_future_ms / 3.6e6:g} h)",
        )
    account_id = obj.get("account_id")
    if account_id is not None:
        if not isinstance(account_id, str):
            return Rejection("wrong_type", "account_id: expected a string or null")
        if len(account_id) > _MAX_ID_CHARS:
            return Rejection("field_too_long", f"account_id: longer than {_MAX_ID_CHARS}")
        account_id = account_id or None
    props = obj.get("props")
    if props is None:
        props = {}
    elif not isinstance(props, dict):
        return Rejection("wrong_type", "props: expected an object")
    else:
        bad = _walk(props, 1, limits, "props")
        if bad is not None:
            return bad
    if etype == "outcome":
        bad = _check_outcome(props)
        if bad is not None:
            return bad
    return Event(
        event_id=event_id,
        ts_ms=ts,
        entity_id=entity_id,
        type=etype,
        account_id=account_id,
        props=props,
        source=source,
        offset=offset,
        ingest_ts=ingest_ts,
        produced_ts=produced_ts,
    )


def dead_letter(
    rejection: Rejection,
    payload: bytes | dict[str, Any] | None,
    limits: Limits,
    *,
    source: str,
    offset: str,
    received_ts: float,
) -> dict[str, Any]:
    """Build the dead-letter record (``dlq.schema.json``) for a rejected payload.

    A payload handed over decoded is recorded as its JSON.
    """
    if isinstance(payload, dict):
        try:
            payload = orjson.dumps(payload)
        except orjson.JSONEncodeError:
            payload = repr(payload).encode()
    raw = payload or b""
    return {
        "schema_version": DLQ_SCHEMA_VERSION,
        "reason": rejection.reason,
        "message": rejection.message,
        "source": source,
        "offset": offset,
        "received_ts": received_ts,
        "payload": raw[: limits.dlq_payload_chars].decode("utf-8", errors="replace"),
        "payload_bytes": len(raw),
        "payload_sha256": hashlib.sha256(raw).hexdigest(),
    }

"""The event contract: parsing, validation and dead-letter records."""

from __future__ import annotations

import json
import math
from importlib import resources
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intentflow.contracts import REASONS, Limits, Rejection, _validate, dead_letter, parse_event
from intentflow.events import KNOWN_TYPES, Event

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z
LIMITS = Limits()


def schema(name: str) -> dict[str, Any]:
    text = resources.files("intentflow").joinpath(f"schemas/{name}.schema.json").read_text()
    return json.loads(text)


EVENT_SCHEMA = schema("event")
DLQ_SCHEMA = schema("dlq")


def good(**over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "event_id": "e-1",
        "ts": NOW - 1000,
        "entity_id": "c-1",
        "account_id": "a-1",
        "type": "page_view",
        "props": {"page": "/pricing", "category": "pricing", "duration_s": 42.5},
    }
    ev.update(over)
    return ev


def parse(obj: Any) -> Event | Rejection:
    payload = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return parse_event(payload, LIMITS, now_ms=NOW, source="test", offset="1")


def test_valid_event_roundtrip() -> None:
    ev = parse(good())
    assert isinstance(ev, Event)
    assert (ev.event_id, ev.ts_ms, ev.entity_id, ev.account_id, ev.type) == (
        "e-1",
        NOW - 1000,
        "c-1",
        "a-1",
        "page_view",
    )
    assert ev.props["duration_s"] == 42.5
    assert (ev.source, ev.offset) == ("test", "1")


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-01-01T00:00:00Z", NOW),
        ("2026-01-01T01:00:00+01:00", NOW),
        ("2025-12-31T23:59:59.250Z", NOW - 750),
        (NOW, NOW),
    ],
)
def test_timestamp_forms(ts: Any, expected: int) -> None:
    ev = parse(good(ts=ts))
    assert isinstance(ev, Event)
    assert ev.ts_ms == expected


def test_unknown_type_is_accepted_and_optional_fields_default() -> None:
    ev = parse({"event_id": "x", "ts": NOW, "entity_id": "c", "type": "webinar_join"})
    assert isinstance(ev, Event)
    assert ev.type not in KNOWN_TYPES
    assert ev.account_id is None
    assert ev.props == {}


def test_outcome_requires_its_props() -> None:
    ok = parse(
        good(
            type="outcome",
            props={"alert_id": "a", "action": "call_now", "result": "accepted", "value": 10},
        )
    )
    assert isinstance(ok, Event)
    bad = parse(good(type="outcome", props={"alert_id": "a", "action": "x", "result": "maybe"}))
    assert isinstance(bad, Rejection)
    assert bad.reason == "invalid_outcome"


POISON: list[tuple[str, bytes | None]] = [
    ("malformed_json", b'{"event_id": "x", '),
    ("malformed_json", b"not json at all"),
    ("invalid_utf8", b'{"event_id": "\xff\xfe"}'),
    (
        "non_finite_number",
        b'{"event_id":"x","ts":1767225600000,"entity_id":"c","type":"t","props":{"amount":NaN}}',
    ),
    ("non_finite_number", b'{"event_id":"x","props":{"a":Infinity}}'),
    ("number_out_of_range", b'{"event_id":"x","props":{"a":' + b"9" * 30_000 + b"}}"),
    ("payload_too_large", b'{"event_id":"x","props":{"a":' + b"9" * 100_000 + b"}}"),
    ("number_out_of_range", orjson.dumps(good(props={"n": 2**60}))),
    (
        "too_deep",
        orjson.dumps(good(props={"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}})),
    ),
    ("too_deep", b"[" * 5000 + b"]" * 5000),
    ("payload_too_large", orjson.dumps(good(props={"text": "x" * 70_000}))),
    ("payload_too_large", b"x" * (10 * 1024 * 1024)),
    ("text_too_long", orjson.dumps(good(props={"text": "y" * 9000}))),
    ("not_an_object", b"[1, 2, 3]"),
    ("not_an_object", b'"event"'),
    ("missing_field", orjson.dumps({k: v for k, v in good().items() if k != "event_id"})),
    ("missing_field", orjson.dumps({k: v for k, v in good().items() if k != "ts"})),
    ("missing_field", orjson.dumps(good(entity_id=""))),
    ("wrong_type", orjson.dumps(good(event_id=42))),
    ("wrong_type", orjson.dumps(good(ts=True))),
    ("wrong_type", orjson.dumps(good(props=[1, 2]))),
    ("wrong_type", orjson.dumps(good(account_id=7))),
    ("field_too_long", orjson.dumps(good(entity_id="c" * 300))),
    ("invalid_ts", orjson.dumps(good(ts="yesterday"))),
    ("invalid_ts", orjson.dumps(good(ts="2026-01-01T00:00:00"))),
    ("invalid_ts", orjson.dumps(good(ts=1_767_225_600))),
    ("ts_in_future", orjson.dumps(good(ts=NOW + 10 * 86_400_000))),
    ("missing_payload", None),
]


@pytest.mark.parametrize(("reason", "payload"), POISON, ids=[p[0] for p in POISON])
def test_poison_catalogue(reason: str, payload: bytes | None) -> None:
    res = parse_event(payload, LIMITS, now_ms=NOW)
    assert isinstance(res, Rejection), res
    assert res.reason == reason, res.message
    assert res.reason in REASONS
    record = dead_letter(res, payload, LIMITS, source="s", offset="9", received_ts=1.5)
    jsonschema.validate(record, DLQ_SCHEMA)
    assert len(record["payload"]) <= LIMITS.dlq_payload_chars
    assert record["payload_bytes"] == len(payload or b"")


def test_huge_integer_with_raised_limit() -> None:
    payload = b'{"event_id":"x","props":{"a":' + b"9" * 100_000 + b"}}"
    res = parse_event(payload, Limits(max_payload_bytes=1 << 20), now_ms=NOW)
    assert isinstance(res, Rejection)
    assert res.reason == "number_out_of_range"


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=50),
)
json_value = st.recursive(
    json_leaf,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(payload: bytes) -> None:
    res = parse_event(payload, LIMITS, now_ms=NOW)
    assert isinstance(res, Event | Rejection)
    if isinstance(res, Rejection):
        assert res.reason in REASONS


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["event_id", "ts", "entity_id", "account_id", "type", "props", "extra"]),
        json_value,
        max_size=7,
    )
)
def test_accepted_objects_satisfy_the_schema(obj: dict[str, Any]) -> None:
    res = parse(obj)
    if isinstance(res, Event):
        jsonschema.validate(obj, EVENT_SCHEMA)


@settings(max_examples=200, deadline=None)
@given(
    event_id=st.text(min_size=1, max_size=40),
    entity_id=st.text(min_size=1, max_size=40),
    etype=st.sampled_from([*sorted(KNOWN_TYPES - {"outcome"}), "custom"]),
    ts=st.integers(946_684_800_000, NOW),
    props=st.dictionaries(st.text(max_size=10), json_leaf, max_size=5),
)
def test_valid_events_are_accepted(
    event_id: str, entity_id: str, etype: str, ts: int, props: dict[str, Any]
) -> None:
    obj = {"event_id": event_id, "ts": ts, "entity_id": entity_id, "type": etype, "props": props}
    jsonschema.validate(obj, EVENT_SCHEMA)
    res = parse(obj)
    assert isinstance(res, Event), res
    assert res.props == props
    assert all(math.isfinite(v) for v in props.values() if isinstance(v, float))


FIELDS = ["event_id", "ts", "entity_id", "account_id", "type", "props"]
EDGE_VALUES: list[Any] = [
    "",
    "x",
    "x" * 64,
    "x" * 65,
    "x" * 256,
    "x" * 257,
    "outcome",
    "page_view",
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00",
    None,
    True,
    0,
    -1,
    1.5,
    1.5e12,
    946_684_800_000,
    946_684_799_999,
    NOW + LIMITS.max_future_ms,
    NOW + LIMITS.max_future_ms + 1,
    2**53 + 1,
    [],
    [1],
    {},
    {"a": 1},
]
EDGE_PROPS: list[Any] = [
    {"a": "y" * 8},
    {"a": "y" * 9},
    {"a": "y" * 65},
    {"a": 2**53},
    {"a": 2**53 + 1},
    {"a": -(2**53) - 1},
    {"a": True, "b": None, "c": 1.5, "d": -3},
    {"a": [1]},
    {"a": ["y" * 9]},
    {"a": {"b": 1}},
    {"a": [[[]]]},
    {"alert_id": "a", "action": "call_now", "result": "accepted"},
]
EDGE_LIMITS = [
    LIMITS,
    Limits(max_text_chars=8, max_depth=2),
    Limits(max_text_chars=64),
    Limits(max_depth=1),
    Limits(max_depth=0),
]


def same_as_full_rules(obj: dict[str, Any], limits: Limits) -> bool:
    """parse_event's fast path decides like the reference path, _validate, for JSON and dicts."""
    payload = orjson.dumps(obj)
    want = _validate(orjson.loads(payload), limits, NOW, "s", "7", 1.5, 2.5)
    got = parse_event(payload, limits, NOW, "s", "7", 1.5, 2.5)
    # the same object handed over decoded, as the generator source does
    decoded = parse_event(orjson.loads(payload), limits, NOW, "s", "7", 1.5, 2.5)
    return got == want and decoded == want


MINIMAL = {"event_id": "e", "ts": NOW, "entity_id": "c", "type": "t"}  # short payloads


@pytest.mark.parametrize("field", FIELDS)
def test_fast_path_agrees_with_the_full_rules_on_edges(field: str) -> None:
    values = EDGE_VALUES + EDGE_PROPS if field == "props" else EDGE_VALUES
    for limits in EDGE_LIMITS:
        missing = {k: v for k, v in good().items() if k != field}
        assert same_as_full_rules(missing, limits), (field, limits)
        for value in values:
            for base in (good(), good(type="outcome", props=EDGE_PROPS[-1]), MINIMAL):
                obj = {**base, field: value}
                assert same_as_full_rules(obj, limits), (obj, limits)


flat_props = st.dictionaries(
    st.text(max_size=5),
    json_leaf | st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, "y" * 8, "y" * 9]),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(
    props=flat_props | st.none() | json_value,
    edits=st.dictionaries(
        st.sampled_from(FIELDS), st.sampled_from(EDGE_VALUES) | json_value, max_size=2
    ),
    limits=st.sampled_from(EDGE_LIMITS),
)
def test_fast_path_agrees_with_the_full_rules(
    props: Any, edits: dict[str, Any], limits: Limits
) -> None:
    assert same_as_full_rules({**good(props=props), **edits}, limits)


def test_a_decoded_payload_is_recorded_as_its_json_in_a_dead_letter() -> None:
    obj = {"event_id": "", "ts": NOW, "entity_id": "c", "type": "t"}
    res = parse_event(obj, LIMITS, NOW)
    assert isinstance(res, Rejection)
    assert res.reason == "missing_field"
    record = dead_letter(res, obj, LIMITS, source="generator", offset="3", received_ts=1.0)
    assert orjson.loads(record["payload"]) == obj
    assert record["payload_bytes"] == len(orjson.dumps(obj))


def test_a_decoded_payload_skips_only_the_size_limit() -> None:
    obj = {**good(), "props": {"text": "y" * 100}}
    small = Limits(max_payload_bytes=50)
    refused = parse_event(orjson.dumps(obj), small, NOW)
    assert isinstance(refused, Rejection)
    assert refused.reason == "payload_too_large"
    assert isinstance(parse_event(obj, small, NOW), Event)
    too_long = parse_event(obj, Limits(max_text_chars=99), NOW)
    assert isinstance(too_long, Rejection)
    assert too_long.reason == "text_too_long"

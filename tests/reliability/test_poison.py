"""A catalogue of poison input: every item is a dead letter with its reason; nothing breaks.

The parser's own catalogue is in ``tests/test_contracts.py``; this one goes
through the running engine, interleaved with the reference input: every
item lands in ``intentflow:dlq`` with its reason and stream offset, the
engine stays up, the alerts and state equal the run without the poison,
and the model stays finite. Values that are valid but extreme (1e308, 1e25,
NUL characters) are accepted and must not poison the model either.
"""

from __future__ import annotations

import math
import multiprocessing.context
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis
from enginekit import (
    PROBE,
    Engine,
    Reference,
    check_equal,
    counters,
    engine_args,
    probe_scores,
    produce,
    run_to_end,
    shard_states,
    wait_for,
)
from flowkit import alerts, demo_config, gen_payloads, items_of, run_memory, scores

from intentflow.contracts import REASONS, Limits

Fork = multiprocessing.context.ForkServerContext
_OK = {"event_id": "p-ok", "entity_id": "c-poison", "type": "page_view", "props": {"page": "/x"}}


def _event(now_ms: int, **fields: object) -> bytes:
    return orjson.dumps({**_OK, "ts": now_ms, **fields})


def _text(template: str, now_ms: int) -> bytes:
    return template.replace("NOW", str(now_ms)).encode()


def catalogue(now_ms: int) -> list[tuple[str, bytes | None, str]]:
    """``(name, payload, reason)``; ``None`` is a stream entry without an ``event`` field."""
    head = '{"event_id":"p1","ts":NOW,"entity_id":"c-p","type":"page_view","props":'
    deep_props = '{"a":' * 1000 + "1" + "}" * 1000
    deep_array = "[" * 5000 + "]" * 5000
    big_int = "9" * 100_000
    missing_id = {k: v for k, v in _OK.items() if k != "event_id"}
    return [
        ("truncated JSON", b'{"event_id": "p1", "ts": ', "malformed_json"),
        ("trailing garbage", _event(now_ms) + b"}}", "malformed_json"),
        ("empty payload", b"", "malformed_json"),
        ("lone surrogate", _text('{"event_id":"\\ud800","ts":NOW}', now_ms), "malformed_json"),
        ("a JSON array", b"[1, 2, 3]", "not_an_object"),
        ("a JSON string", b'"event"', "not_an_object"),
        ("null", b"null", "not_an_object"),
        ("event_id is a number", _event(now_ms, event_id=42), "wrong_type"),
        ("ts is a boolean", _event(now_ms, ts=True), "wrong_type"),
        ("props is a list", _event(now_ms, props=[1, 2]), "wrong_type"),
        ("account_id is a number", _event(now_ms, account_id=7), "wrong_type"),
        ("NaN", _text(head + '{"x":NaN}}', now_ms), "non_finite_number"),
        ("Infinity", _text(head + '{"x":Infinity}}', now_ms), "non_finite_number"),
        ("-Infinity ts", _text('{"event_id":"p1","ts":-Infinity}', now_ms), "non_finite_number"),
        ("1e400", _text(head + '{"x":1e400}}', now_ms), "number_out_of_range"),
        (
            "integer beyond 2^53",
            _text(head + '{"x":9007199254740993}}', now_ms),
            "number_out_of_range",
        ),
        (
            "100,000-digit integer",
            _text(head + '{"x":' + big_int + "}}", now_ms),
            "payload_too_large",
        ),
        (
            "100,000-digit ts",
            _text('{"event_id":"p1","ts":' + big_int + "}", now_ms),
            "payload_too_large",
        ),
        ("props nested 1,000 deep", _text(head + deep_props + "}", now_ms), "too_deep"),
        ("array nested 5,000 deep", _text(head + '{"x":' + deep_array + "}}", now_ms), "too_deep"),
        ("10 MB payload", _event(now_ms, props={"blob": "x" * 10_000_000}), "payload_too_large"),
        ("invalid UTF-8", b'{"event_id":"\xff\xfe","ts":1}', "invalid_utf8"),
        ("UTF-8 byte order mark", b"\xef\xbb\xbf" + _event(now_ms), "invalid_utf8"),
        ("missing event_id", orjson.dumps({**missing_id, "ts": now_ms}), "missing_field"),
        ("empty entity_id", _event(now_ms, entity_id=""), "missing_field"),
        ("missing ts", orjson.dumps(_OK), "missing_field"),
        ("10 days ahead", _event(now_ms + 10 * 86_400_000), "ts_in_future"),
        ("year 9999", _event(now_ms, ts="9999-12-31T23:59:59Z"), "ts_in_future"),
        ("ts 2^62 ms", _event(now_ms, ts=2**62), "ts_in_future"),
        ("ts without offset", _event(now_ms, ts="2026-01-01T00:00:00"), "invalid_ts"),
        ("ts in 1970", _event(now_ms, ts=5), "invalid_ts"),
        ("id of 300 characters", _event(now_ms, event_id="x" * 300), "field_too_long"),
        ("text of 9,000 characters", _event(now_ms, props={"t": "x" * 9000}), "text_too_long"),
        (
            "outcome without alert",
            _event(now_ms, type="outcome", props={"result": "won"}),
            "invalid_outcome",
        ),
        ("no event field", None, "missing_payload"),
    ]


def test_the_catalogue_covers_the_reasons() -> None:
    found = {reason for _name, _payload, reason in catalogue(int(time.time() * 1000))}
    assert found == REASONS


def test_poison_through_the_engine_is_dead_lettered_and_changes_nothing(
    forkserver: Fork,
    redis_url: str,
    redis_client: redis.Redis,
    reference: Reference,
    tmp_path: Path,
) -> None:
    now = int(time.time() * 1000)
    items = catalogue(now)
    rec = tmp_path / "recovery"
    engine = Engine(forkserver, engine_args(redis_url, recovery=rec, init=True), tmp_path / "log")
    engine.start()
    try:
        step = len(reference.payloads) // len(items)
        offsets: dict[str, str] = {}
        for i, (name, payload, _reason) in enumerate(items):
            produce(redis_client, reference.payloads[i * step : (i + 1) * step])
            fields: Any = {b"other": b"x"} if payload is None else {b"event": payload}
            entry_id: Any = redis_client.xadd("intentflow:events:1", fields)
            offsets[name] = entry_id.decode()
        produce(redis_client, reference.payloads[len(items) * step :])
        run_to_end(engine, rec, reference, redis_client)
        expected = len(reference.dead_letter_reasons) + len(items)
        wait_for(
            lambda: redis_client.xlen("intentflow:dlq") >= expected, 30, "dead letters", engine
        )
        assert engine.alive()
    finally:
        engine.kill9()
    check_equal(redis_client, rec, reference)  # poison changed no alert, score or state
    entries: Any = redis_client.xrange("intentflow:dlq")
    dlq = [orjson.loads(f[b"dlq"]) for _id, f in entries]
    by_offset = {d["offset"]: d for d in dlq if d["source"] == "redis:intentflow:events:1"}
    for name, payload, reason in items:
        record = by_offset[offsets[name]]
        assert record["reason"] == reason, name
        assert record["payload_bytes"] == len(payload or b"")
        assert len(record["payload"]) <= Limits().dlq_payload_chars
    assert Counter(d["reason"] for d in dlq) == Counter(
        reference.dead_letter_reasons + [r for _n, _p, r in items]
    )
    for state in shard_states(rec).values():
        model = state["model"]
        assert np.isfinite(probe_scores(model, PROBE)).all()


def test_extreme_but_valid_values_keep_features_and_model_finite(tmp_path: Path) -> None:
    payloads = gen_payloads(4500, seed=13)
    extreme = []
    for i, p in enumerate(payloads[:4000]):
        doc = orjson.loads(p)
        if i % 50 == 0:
            doc["props"] = {
                **doc.get("props", {}),
                "duration_s": 1e308,
                "amount": -1e308,
                "note": "nul\x00inside",
                "x": 1e25,
            }
        extreme.append(orjson.dumps(doc))
    rec = tmp_path / "rec"
    rec.mkdir()
    out = run_memory(demo_config(), items_of(extreme + payloads[4000:]), recovery_dir=rec)
    assert all(math.isfinite(s.score) for s in scores(out))
    assert all(math.isfinite(a["score"]) for a in alerts(out))
    states = shard_states(rec)
    assert sum(c.get("events", 0) for c in counters(states).values()) == 4500
    for state in states.values():
        feats = state["features"]
        for table in (feats.entities, feats.accounts):
            for name, arr in table.arrays:
                if arr.dtype.kind == "f":
                    assert not np.isnan(arr).any(), name
        model = state["model"]
        assert model.champion.n_learned > 0
        assert np.isfinite(probe_scores(model, PROBE)).all()


def test_the_poison_benchmark_reports_its_ratio(redis_url: str, tmp_path: Path) -> None:
    """``python -m bench poison`` runs and writes its figures (speed is not checked)."""
    out = tmp_path / "poison.json"
    argv = ["poison", "--quick", "--events", "1500", "--rounds", "1", "--redis-url", redis_url]
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "bench", *argv, "--json", str(out)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    doc = orjson.loads(out.read_bytes())
    assert doc["scenario"] == "poison"
    assert doc["dead_letters"] == doc["poison_items"] > 0
    assert doc["ratio_poison_vs_clean"] > 0
    assert doc["params"]["events"] == 1500

"""Engine metrics: what the dataflow reports, label bounds, exposition format."""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np
import orjson
import pytest
import redis
from bytewax.testing import TestingSink, TestingSource, run_main
from flowkit import alerts, demo_config, gen_payloads
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from intentflow.config import EngineSection
from intentflow.contracts import REASONS
from intentflow.dataflows.flow import build_flow
from intentflow.dataflows.sources import RawItem, RedisStreamSource
from intentflow.errors import SinkError
from intentflow.events import KNOWN_TYPES, Event
from intentflow.metrics import (
    LATENCY_BUCKETS_S,
    BacklogProbe,
    EngineMetrics,
    Metrics,
    _BulkHistogram,
)
from intentflow.online_models.catalog import ActionCatalog
from intentflow.online_models.labels import Labels, Matured
from intentflow.sinks.base import AlertOut, DeadLetterOut, ScoreOut, ScoresOut
from intentflow.sinks.redis_sink import RedisSink, RedisSinkConfig

SHARDS = 3


def _families(m: Metrics) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(m.exposition().decode())}


def _samples(m: Metrics, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            if s.name == name:
                out.append((dict(s.labels), s.value))
    return out


@pytest.fixture(scope="module")
def flow_run() -> dict[str, Any]:
    """One in-memory run of the whole flow with metrics, over known inputs."""
    cfg = demo_config(engine=EngineSection(shards=SHARDS))
    payloads = gen_payloads(6000, seed=11)
    bad = [b"{not json", b'{"event_id": "x"}', b"[1, 2]", b"\xff\xfe"]
    now = time.time() * 1000.0
    items = [
        RawItem("redis:intentflow:events:0", str(i), p, now, None) for i, p in enumerate(payloads)
    ]
    items += [RawItem("file:bad.jsonl", str(i), p, now, None) for i, p in enumerate(bad)]
    repeats = [items[i] for i in range(0, 600, 3)]  # 200 exact repeats of earlier events
    items += repeats
    m = Metrics(version="9.9.9", config_hash=cfg.config_hash(), shards=SHARDS)
    out: list[Any] = []
    flow = build_flow(cfg, TestingSource(items, batch_size=250), TestingSink(out), metrics=m)
    run_main(flow)
    return {"cfg": cfg, "metrics": m, "out": out, "payloads": payloads, "repeats": len(repeats)}


def test_events_counted_by_type_and_source(flow_run: dict[str, Any]) -> None:
    m: Metrics = flow_run["metrics"]
    docs = [orjson.loads(p) for p in flow_run["payloads"]]
    docs += [orjson.loads(flow_run["payloads"][i]) for i in range(0, 600, 3)]
    valid = Counter(d["type"] if d["type"] in KNOWN_TYPES else "other" for d in docs)
    got = {labels["type"]: v for labels, v in _samples(m, "intentflow_events_total")}
    assert {labels["source"] for labels, _ in _samples(m, "intentflow_events_total")} == {"redis"}
    assert got == valid


def test_invalid_events_by_reason(flow_run: dict[str, Any]) -> None:
    m: Metrics = flow_run["metrics"]
    got = {
        (lab["reason"], lab["source"]): v
        for lab, v in _samples(m, "intentflow_events_invalid_total")
    }
    assert sum(got.values()) == 4
    assert {src for _, src in got} == {"file"}
    assert got[("malformed_json", "file")] >= 1
    assert all(reason in REASONS for reason, _ in got)


def test_duplicates_processed_and_alerts(flow_run: dict[str, Any]) -> None:
    m: Metrics = flow_run["metrics"]
    n_events = len(flow_run["payloads"])
    assert m.sample("intentflow_events_duplicate_total") == flow_run["repeats"]
    processed = _samples(m, "intentflow_events_processed_total")
    assert sum(v for _, v in processed) == n_events
    assert {lab["shard"] for lab, _ in processed} == {f"s{i}" for i in range(SHARDS)}

    emitted = alerts(flow_run["out"])
    assert emitted, "the run should produce alerts"
    want = Counter((a["action"]["id"], a["trigger"]["id"]) for a in emitted)
    got = {(lab["action"], lab["trigger"]): v for lab, v in _samples(m, "intentflow_alerts_total")}
    assert got == want
    catalog = {a.id for a in ActionCatalog.default().actions}
    assert {action for action, _ in got} <= catalog


def test_ingest_to_alert_histogram(flow_run: dict[str, Any]) -> None:
    m: Metrics = flow_run["metrics"]
    emitted = alerts(flow_run["out"])
    spans = [(a["emit_ts"] - a["ingest_ts"]) / 1000.0 for a in emitted]
    assert m.sample("intentflow_ingest_to_alert_seconds_count") == len(emitted)
    assert m.sample("intentflow_ingest_to_alert_seconds_sum") == pytest.approx(sum(spans))
    for le in LATENCY_BUCKETS_S:
        want = sum(1 for s in spans if s <= le)
        got = m.sample("intentflow_ingest_to_alert_seconds_bucket", {"le": repr(le)})
        assert got == want


def test_state_model_and_snapshot_gauges(flow_run: dict[str, Any]) -> None:
    m: Metrics = flow_run["metrics"]
    docs = [orjson.loads(p) for p in flow_run["payloads"]]
    n_entities = len({d["entity_id"] for d in docs})
    entities = _samples(m, "intentflow_entities_active")
    assert entities
    assert all(0 < v <= n_entities for _, v in entities)
    assert {lab["shard"] for lab, _ in entities} <= {f"s{i}" for i in range(SHARDS)}
    snap = _samples(m, "intentflow_state_bytes")
    assert any(lab["part"] == "snapshot" and v > 0 for lab, v in snap)
    ages = _samples(m, "intentflow_snapshot_age_seconds")
    assert ages
    assert all(v >= 0 for _, v in ages)
    for _, v in _samples(m, "intentflow_model_auc"):
        assert math.isnan(v) or 0.0 <= v <= 1.0
    labelled = sum(v for _, v in _samples(m, "intentflow_model_labels_total"))
    assert labelled > 0
    assert m.sample("intentflow_label_delay_seconds_count") == labelled


def test_no_entity_ids_in_exposition(flow_run: dict[str, Any]) -> None:
    text = flow_run["metrics"].exposition().decode()
    docs = [orjson.loads(p) for p in flow_run["payloads"][:500]]
    for d in docs:
        assert f'"{d["entity_id"]}"' not in text
        assert f'"{d["event_id"]}"' not in text
        if d.get("account_id"):
            assert f'"{d["account_id"]}"' not in text


def test_build_info_and_placeholders(flow_run: dict[str, Any]) -> None:
    m: Metrics = flow_run["metrics"]
    cfg = flow_run["cfg"]
    info = {"version": "9.9.9", "config_hash": cfg.config_hash()}
    assert m.sample("intentflow_build_info", info) == 1.0
    for name in (
        "intentflow_model_drift_detections_total",
        "intentflow_rules_reloads_total",
        "intentflow_rules_errors_total",
        "intentflow_policy_exploration_ratio",
    ):
        assert m.sample(name) == 0.0
    m2 = Metrics()
    m2.drift_detected(2)
    m2.rules_reloaded(ok=True)
    m2.rules_reloaded(ok=False)
    m2.rule_errors(3)
    m2.exploration_ratio(0.25)
    assert m2.sample("intentflow_model_drift_detections_total") == 2
    assert m2.sample("intentflow_rules_reloads_total") == 2
    assert m2.sample("intentflow_rules_errors_total") == 4
    assert m2.sample("intentflow_policy_exploration_ratio") == 0.25


def test_null_metrics_leave_the_flow_unchanged() -> None:
    cfg = demo_config(engine=EngineSection(shards=2))
    now = time.time() * 1000.0
    items = [RawItem("generator", str(i), p, now, now) for i, p in enumerate(gen_payloads(1500))]
    runs = []
    for metrics in (None, EngineMetrics(), Metrics(shards=2)):
        out: list[Any] = []
        run_main(build_flow(cfg, TestingSource(items, 200), TestingSink(out), metrics=metrics))
        runs.append(sorted((a["alert_id"], a["score"]) for a in alerts(out)))
    assert runs[0] == runs[1] == runs[2]


@settings(max_examples=40, deadline=None)
@given(
    types=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=40),
    sources=st.lists(st.text(max_size=30), min_size=1, max_size=5),
    reasons=st.lists(st.text(max_size=20), max_size=10),
)
def test_label_values_stay_bounded(
    types: list[str], sources: list[str], reasons: list[str]
) -> None:
    m = Metrics(process_collectors=False)
    events: list[Event | DeadLetterOut] = [
        Event(f"e{i}", 1000 + i, f"c{i}", t, source=sources[i % len(sources)])
        for i, t in enumerate(types)
    ]
    events += [DeadLetterOut({"reason": r, "source": sources[0]}) for r in reasons]
    m.parsed(len(events), events)
    allowed_types = KNOWN_TYPES | {"other"}
    allowed_sources = {"redis", "file", "generator", "other"}
    for lab, v in _samples(m, "intentflow_events_total"):
        assert lab["type"] in allowed_types
        assert lab["source"] in allowed_sources
        assert v > 0
    for lab, _ in _samples(m, "intentflow_events_invalid_total"):
        assert lab["reason"] in REASONS | {"other"}
        assert lab["source"] in allowed_sources
    total = sum(v for _, v in _samples(m, "intentflow_events_total"))
    assert total == len(types)
    assert sum(v for _, v in _samples(m, "intentflow_events_invalid_total")) == len(reasons)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=0, max_value=20, allow_nan=False) | st.sampled_from(LATENCY_BUCKETS_S),
        max_size=200,
    ),
    split=st.integers(min_value=0, max_value=200),
)
def test_bulk_histogram_matches_counting(values: list[float], split: int) -> None:
    h = _BulkHistogram("x_seconds", "doc", LATENCY_BUCKETS_S, ())
    h.observe_many(values[:split])
    h.observe_many(values[split:])
    (fam,) = h.collect()
    got = {s.labels["le"]: s.value for s in fam.samples if s.name == "x_seconds_bucket"}
    for le in LATENCY_BUCKETS_S:
        assert got[repr(le)] == sum(1 for v in values if v <= le)
    assert got["+Inf"] == len(values)
    total = next(s.value for s in fam.samples if s.name == "x_seconds_sum")
    assert total == pytest.approx(math.fsum(values))


def test_learned_labels_and_calibration() -> None:
    m = Metrics(process_collectors=False)
    obs = m.shard("s0")
    feats = np.zeros(2)
    matured = [
        Matured("c1", 0, 5_000, feats, 0.9, True),
        Matured("c2", 0, 60_000, feats, 0.2, False),
        Matured("c3", 1_000, 4_000, feats, 0.4, False),
    ]
    obs.learned(Labels.from_matured(matured, n_features=2))
    assert m.sample("intentflow_model_labels_total", {"outcome": "positive"}) == 1
    assert m.sample("intentflow_model_labels_total", {"outcome": "negative"}) == 2
    assert m.sample("intentflow_model_expected_positives_total") == pytest.approx(1.5)
    assert m.sample("intentflow_label_delay_seconds_bucket", {"le": "1.0"}) == 0
    assert m.sample("intentflow_label_delay_seconds_bucket", {"le": "10.0"}) == 2
    assert m.sample("intentflow_label_delay_seconds_sum") == pytest.approx(5 + 60 + 3)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not on PATH")
def test_promtool_check_metrics_is_clean(flow_run: dict[str, Any]) -> None:
    m: Metrics = flow_run["metrics"]
    m.shard("s0").learned(Labels.from_matured([Matured("c", 0, 1, np.zeros(1), 0.5, True)], 1))
    proc = subprocess.run(
        ["promtool", "check", "metrics"],
        input=m.exposition(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert proc.stdout.strip() == b""
    assert proc.stderr.strip() == b""


def test_metric_names_follow_conventions(flow_run: dict[str, Any]) -> None:
    fams = _families(flow_run["metrics"])
    ours = {n: f for n, f in fams.items() if n.startswith("intentflow_")}
    assert len(ours) >= 40
    for name, fam in ours.items():
        if fam.type == "counter":
            assert any(s.name == f"{name}_total" for s in fam.samples), name
        else:
            assert not name.endswith("_total"), name
        if fam.type == "histogram" and "latency" in name:
            assert name.endswith("_seconds"), name
        assert "millis" not in name, name
        assert "_ms" not in name, name


# --- sink and source hooks, against a real Redis -----------------------------------------


def _alert(i: int, produced_ts: float | None, ingest_ts: float) -> AlertOut:
    return AlertOut(
        {
            "alert_id": f"a-{i}",
            "entity_id": f"c-{i}",
            "ingest_ts": ingest_ts,
            "emit_ts": ingest_ts + 1.0,
            "action": {"id": "call_now"},
            "trigger": {"id": "model:intent"},
            "trace": {"produced_ts": produced_ts},
        }
    )


def test_sink_latency_and_counters(redis_url: str, redis_client: redis.Redis) -> None:
    m = Metrics(process_collectors=False)
    part = RedisSink(RedisSinkConfig(redis_url), m).build("sink", 0, 1)
    base = time.time() * 1000.0
    produced = [base - 200.0, None, base - 50.0]  # the second falls back to ingest_ts
    ingest = [base - 100.0, base - 300.0, base - 20.0]
    batch = [_alert(i, produced[i], ingest[i]) for i in range(3)]
    batch += [ScoreOut("c-0", 0.5, 1, "v1"), DeadLetterOut({"reason": "too_deep"})]
    batch += [ScoresOut({"c-1": (0.25, 2, "v1"), "c-2": (0.75, 3, "v1")})]
    before = time.time() * 1000.0
    part.write_batch(batch)
    after = time.time() * 1000.0
    starts = [base - 200.0, base - 300.0, base - 50.0]
    total = m.sample("intentflow_event_to_alert_latency_seconds_sum")
    assert m.sample("intentflow_event_to_alert_latency_seconds_count") == 3
    assert total is not None
    assert sum(before - s for s in starts) / 1000 <= total <= sum(after - s for s in starts) / 1000
    assert m.sample("intentflow_sink_records_total", {"kind": "alert"}) == 3
    assert m.sample("intentflow_sink_records_total", {"kind": "score"}) == 3
    assert m.sample("intentflow_sink_records_total", {"kind": "dead_letter"}) == 1
    assert m.sample("intentflow_sink_write_seconds_count") == 1
    assert m.sample("intentflow_batch_size_sum", {"stage": "sink"}) == 7  # records, not items
    assert m.sample("intentflow_redis_connected", {"client": "sink"}) == 1
    part.write_batch(batch[:3])  # a replay: each alert id is written once
    assert m.sample("intentflow_sink_records_total", {"kind": "alert"}) == 3
    assert m.sample("intentflow_sink_records_total", {"kind": "alert_duplicate"}) == 3
    part.close()
    assert redis_client.xlen("intentflow:alerts") == 3


def test_sink_failure_counts_retries_and_error() -> None:
    m = Metrics(process_collectors=False)
    cfg = RedisSinkConfig("redis://127.0.0.1:1/0", max_retries=2, backoff_base_s=0.01)
    part = RedisSink(cfg, m).build("sink", 0, 1)
    with pytest.raises(SinkError):
        part.write_batch([_alert(0, None, time.time() * 1000.0)])
    assert m.sample("intentflow_sink_errors_total") == 1
    assert m.sample("intentflow_sink_retries_total") == 2
    backoff = m.sample("intentflow_sink_backoff_seconds_total")
    assert backoff is not None
    assert 0.015 <= backoff <= 0.03
    assert m.sample("intentflow_redis_connected", {"client": "sink"}) == 0
    assert m.sample("intentflow_event_to_alert_latency_seconds_count") == 0


def _ids(client: redis.Redis, key: str) -> list[bytes]:
    return [eid for eid, _ in client.xrange(key)]


def test_backlog_probe_tracks_unread_entries(redis_client: redis.Redis) -> None:
    m = Metrics(process_collectors=False)
    key = "intentflow:events:0"
    probe = BacklogProbe(m, key, "0", interval_s=0.0)
    gauge = {"source": "redis", "partition": "0"}
    probe.polled(redis_client, "0-0", 0)
    assert m.sample("intentflow_source_backlog_entries", gauge) == 0  # no stream yet
    for i in range(10):
        redis_client.xadd(key, {"event": str(i)})
    ids = _ids(redis_client, key)
    probe.polled(redis_client, "0-0", 0)
    assert probe.value == 10
    probe.polled(redis_client, ids[3], 4)
    assert probe.value == 6
    probe.polled(redis_client, ids[9], 6)
    assert probe.value == 0
    for i in range(5):
        redis_client.xadd(key, {"event": str(i)})
    probe.polled(redis_client, ids[9], 0)
    assert probe.value == 5
    probe.polled(redis_client, _ids(redis_client, key)[11], 2)
    assert probe.value == 3
    assert m.sample("intentflow_source_backlog_entries", gauge) == 3


def test_redis_source_reports_backlog_and_progress(
    redis_url: str, redis_client: redis.Redis
) -> None:
    m = Metrics(process_collectors=False)
    for i in range(25):
        redis_client.xadd("intentflow:events:1", {"event": b"{}", "produced_ts": str(i)})
    src = RedisStreamSource(redis_url, partitions=2, batch_size=10, metrics=m)
    part = src.build_part("input", "intentflow:events:1", None)
    before = m.last_progress
    batch = part.next_batch()
    assert len(batch) == 10
    assert m.last_progress > before
    assert m.started
    # The first poll measures at once: 25 entries, 10 of them read.
    assert (
        m.sample("intentflow_source_backlog_entries", {"source": "redis", "partition": "1"}) == 15
    )
    assert m.sample("intentflow_redis_connected", {"client": "source"}) == 1
    part.close()


def test_event_time_lag_is_wall_minus_latest_batch() -> None:
    m = Metrics(process_collectors=False)
    wall = time.time() * 1000.0
    ev = [
        Event(f"e{i}", int(wall) - 60_000 + i, "c", "click", source="generator") for i in range(5)
    ]
    m.parsed(5, list(ev))
    (lab, lag), *_ = _samples(m, "intentflow_source_event_time_lag_seconds")
    now = time.time() * 1000.0
    assert lab == {"source": "generator"}
    latest = max(e.ts_ms for e in ev)
    assert (wall - latest) / 1000 - 0.001 <= lag <= (now - latest) / 1000 + 0.001
    m.parsed(1, [replace(ev[0], ts_ms=int(wall) - 5_000)])
    (_, lag2), *_ = _samples(m, "intentflow_source_event_time_lag_seconds")
    assert lag2 < 6.0


def test_policy_and_rules_hooks_are_fed(tmp_path: Any) -> None:
    """Exploration, rule reloads and rule errors reach the metrics from a real flow run."""
    from intentflow.config import RulesSection

    rules = tmp_path / "rules.toml"
    # A rule whose condition fails at run time: a page path is not an integer.
    rules.write_text(
        '[[rules]]\nid = "page_as_int"\ntypes = ["page_view"]\n'
        "when = 'int(props.page) > 0'\n\n[rules.alert]\naction = \"call_now\"\n",
        encoding="utf-8",
    )
    cfg = demo_config(
        engine=EngineSection(shards=SHARDS), rules=RulesSection(path=str(rules), redis_key="")
    )
    now = time.time() * 1000.0
    items = [RawItem("redis:s", str(i), p, now, None) for i, p in enumerate(gen_payloads(6000))]
    m = Metrics(process_collectors=False, shards=SHARDS)
    out: list[Any] = []
    run_main(build_flow(cfg, TestingSource(items, batch_size=250), TestingSink(out), metrics=m))
    assert m.sample("intentflow_rules_reloads_total") == 1  # the initial load
    assert (m.sample("intentflow_rules_errors_total") or 0) > 0
    ratio = m.sample("intentflow_policy_exploration_ratio")
    assert ratio is not None
    assert 0.0 <= ratio <= 1.0
    assert sum(1 for o in out if isinstance(o, AlertOut)) > 0


def test_state_growth_seconds_are_counted_once() -> None:
    """The shard reports its running total of growth time; the counter adds the increase."""
    m = Metrics(process_collectors=False)
    obs = m.shard("s0")
    sizes: dict[str, Any] = {
        "entities": 1,
        "accounts": 1,
        "feature_bytes": 1,
        "dedup_ids": 1,
        "pending_labels": 0,
        "model": {},
    }
    for total in (0.0, 0.25, 0.25, 0.75):
        obs.state(**sizes, grow_seconds=total)
    assert m.sample("intentflow_state_grow_seconds_total", {"shard": "s0"}) == pytest.approx(0.75)

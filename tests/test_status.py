"""``intentflow status``: figures read from a live metrics endpoint."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from flowkit import alerts, demo_config, gen_payloads
from hypothesis import given, settings
from hypothesis import strategies as st

from intentflow.cli import main
from intentflow.commands.status import histogram_quantile, parse_scrape, summarize
from intentflow.config import EngineSection
from intentflow.dataflows.flow import build_flow
from intentflow.dataflows.sources import RawItem
from intentflow.events import Event
from intentflow.health import HealthServer
from intentflow.metrics import LATENCY_BUCKETS_S, Metrics

INF = math.inf


def test_histogram_quantile_examples() -> None:
    buckets = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (INF, 40.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * 10 / 20)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.5 + 0.5 * 9.6 / 10)
    assert histogram_quantile(0.1, buckets) == pytest.approx(0.1 * 4 / 10)  # first bucket from 0
    # Ranks in the +Inf bucket answer the highest finite bound, as Prometheus does.
    assert histogram_quantile(0.99, [(0.1, 1.0), (INF, 10.0)]) == 0.1
    assert math.isnan(histogram_quantile(0.5, [(0.1, 0.0), (INF, 0.0)]))
    assert math.isnan(histogram_quantile(0.5, []))


@settings(max_examples=80, deadline=None)
@given(
    values=st.lists(st.floats(min_value=0.0, max_value=4.9), min_size=1, max_size=300),
    q=st.sampled_from([0.5, 0.9, 0.95, 0.99]),
)
def test_histogram_quantile_lies_in_the_bucket_of_the_true_quantile(
    values: list[float], q: float
) -> None:
    bounds = list(LATENCY_BUCKETS_S)
    buckets = [(le, float(sum(1 for v in values if v <= le))) for le in bounds]
    buckets.append((INF, float(len(values))))
    est = histogram_quantile(q, buckets)
    # The observation of rank ceil(q * n) (1-based) is the true quantile; its bucket bounds the
    # estimate (interpolation stays inside the bucket).
    ordered = sorted(values)
    true = ordered[max(0, math.ceil(q * len(values)) - 1)]
    upper = next(le for le in bounds if true <= le)
    i = bounds.index(upper)
    lower = bounds[i - 1] if i > 0 else 0.0
    assert lower - 1e-12 <= est <= upper + 1e-12


def _events(n: int, etype: str = "click") -> list[Event | Any]:
    now = int(time.time() * 1000)
    return [Event(f"e{i}", now, f"c{i}", etype, source="generator") for i in range(n)]


def test_summarize_rates_and_gauges() -> None:
    m = Metrics(process_collectors=False)
    m.parsed(40, _events(40))
    obs = m.shard("s0")
    a = parse_scrape(m.exposition().decode(), at=100.0)
    m.parsed(30, _events(30, "page_view"))
    m.duplicates.inc(6)
    ingest = time.time() * 1000.0
    alerts_out = [
        {
            "action": {"id": act},
            "trigger": {"id": "model:intent"},
            "emit_ts": ingest + ms,
            "ingest_ts": ingest,
        }
        for act, ms in [("call_now", 2.0), ("call_now", 3.0), ("book_demo", 40.0)]
    ]
    from intentflow.sinks.base import AlertOut

    obs.batch(30, 0, 0, [AlertOut(x) for x in alerts_out])
    obs.state(
        entities=5,
        accounts=2,
        feature_bytes=100,
        dedup_ids=70,
        pending_labels=3,
        model={"auc": 0.8, "log_loss": 0.3, "brier": 0.1, "window": 500.0},
        held_labels=4,
    )
    m.shard("s1").state(
        entities=1,
        accounts=1,
        feature_bytes=1,
        dedup_ids=1,
        pending_labels=1,
        model={"auc": 0.6, "log_loss": 0.5, "brier": 0.2, "window": 500.0},
    )
    assert m.sample("intentflow_labels_held", {"shard": "s0"}) == 4
    assert m.sample("intentflow_labels_held", {"shard": "s1"}) == 0  # not given: none held
    b = parse_scrape(m.exposition().decode(), at=102.0)
    fig = summarize(a, b)
    assert fig.interval_s == 2.0
    assert fig.events_per_s == 15.0
    assert fig.events_total == 70.0
    assert fig.duplicates_per_s == 3.0
    assert fig.alerts_per_s == 1.5
    assert fig.alerts_by_action == {
        "call_now": {"total": 2.0, "per_s": 1.0},
        "book_demo": {"total": 1.0, "per_s": 0.5},
    }
    assert fig.model_auc == pytest.approx(0.7)
    assert fig.model_auc_min == pytest.approx(0.6)
    assert fig.model_log_loss == pytest.approx(0.4)
    assert set(fig.event_time_lag_s) == {"generator"}
    # Processing times 2, 3 and 40 ms fall in the 2.5, 5 and 50 ms buckets.
    assert fig.latency_window == "since start"  # no event-to-alert sample (no sink here)
    assert 0.001 <= fig.processing_s["p50"] <= 0.005
    assert 0.025 <= fig.processing_s["p99"] <= 0.05


@pytest.fixture(scope="module")
def engine_metrics() -> Iterator[tuple[Metrics, HealthServer, list[Any]]]:
    """A metrics endpoint fed by a real in-memory run of the flow."""
    cfg = demo_config(engine=EngineSection(shards=2))
    now = time.time() * 1000.0
    items = [RawItem("generator", str(i), p, now, now) for i, p in enumerate(gen_payloads(5000))]
    m = Metrics(version="0.0.1", config_hash="feed", shards=2)
    out: list[Any] = []
    run_main(build_flow(cfg, TestingSource(items, 250), TestingSink(out), metrics=m))
    with HealthServer(m, port=0) as server:
        yield m, server, out


def test_status_json_against_a_live_endpoint(
    engine_metrics: tuple[Metrics, HealthServer, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    m, server, out = engine_metrics
    interval = 0.3
    timer = threading.Timer(interval / 2, lambda: m.parsed(120, _events(120)))
    timer.start()
    t0 = time.monotonic()
    code = main(
        ["status", "--metrics-url", f"{server.url}/metrics", "--interval", str(interval), "--json"]
    )
    elapsed = time.monotonic() - t0
    timer.join()
    assert code == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["version"] == "0.0.1"
    assert doc["config_hash"] == "feed"
    assert interval <= doc["interval_s"] <= elapsed
    assert 120 / elapsed <= doc["events_per_s"] <= 120 / interval
    emitted = alerts(out)
    assert doc["alerts_total"] == len(emitted)
    by_action: dict[str, int] = {}
    for a in emitted:
        by_action[a["action"]["id"]] = by_action.get(a["action"]["id"], 0) + 1
    assert {k: v["total"] for k, v in doc["alerts_by_action"].items()} == by_action
    assert list(doc["alerts_by_action"]) == sorted(by_action, key=lambda k: -by_action[k])
    aucs = [m.sample("intentflow_model_auc", {"shard": s}) for s in ("s0", "s1")]
    finite = [a for a in aucs if a is not None and not math.isnan(a)]
    if finite:
        assert doc["model_auc"] == pytest.approx(sum(finite) / len(finite))
    else:
        assert doc["model_auc"] is None
    assert set(doc["latency_s"]) == {"p50", "p95", "p99"}


def test_status_table(
    engine_metrics: tuple[Metrics, HealthServer, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, server, out = engine_metrics
    code = main(["status", "--metrics-url", f"{server.url}/metrics", "--interval", "0.05"])
    assert code == 0
    text = capsys.readouterr().out
    for label in ("events in", "alerts", "event-time lag", "event→alert p99", "model AUC"):
        assert label in text
    for a in alerts(out)[:3]:
        assert a["action"]["id"] in text


def test_status_unreachable_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["status", "--metrics-url", "http://127.0.0.1:1/metrics", "--interval", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot read metrics at http://127.0.0.1:1/metrics" in err

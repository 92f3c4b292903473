"""The benchmark harness: ``python -m bench e2e --quick --json PATH``, and its naive baseline.

The smoke test checks that the harness runs end to end and writes every
documented key with sensible values; it never checks speed. The naive
flow's features and labels are compared with a brute-force recomputation.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from intentflow.events import Event

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is not installed: it runs from the repository root
    sys.path.insert(0, str(ROOT))

from bench.e2e import RATE_BOUNDS, bounded_rate_warnings, default_rate  # noqa: E402
from bench.generator_phase import _tail as generator_tail  # noqa: E402
from bench.naive import FEATURES, NaiveAlert, NaiveConfig, NaiveMark, decide  # noqa: E402
from bench.naive import update_entity as naive_update  # noqa: E402

#: Probe figures of each latency run, also at the top level for the 50 % run.
PROBE_KEYS = {
    "probe_rate",
    "probes",
    "probe_samples",
    "model_samples",
    "model_p50_ms",
    "model_p99_ms",
}
#: Keys documented in bench/README.md for the e2e scenario.
E2E_KEYS = PROBE_KEYS | {
    "scenario",
    "quick",
    "started_at",
    "wall_s",
    "redis",
    "machine",
    "warnings",
    "params",
    "eps",
    "eps_rounds",
    "seconds_rounds",
    "throughput_events",
    "throughput_alerts",
    "throughput_startup_s",
    "engine_cpu_rounds",
    "engine_cpu_live",
    "eps_per_engine_cpu_s",
    "redis_cpu_rounds",
    "redis_cpu_live",
    "backlog_s",
    "latency_by_second",
    "offered_rate",
    "achieved_rate",
    "events",
    "alerts",
    "latency_samples",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "queue_p50_ms",
    "queue_p99_ms",
    "engine_p50_ms",
    "engine_p99_ms",
    "sink_read_p50_ms",
    "sink_read_p99_ms",
    "dead_letters",
    "latency_startup_s",
    "generator_eps",
    "generator_eps_rounds",
    "generator_seconds_rounds",
    "generator_cpu_rounds",
    "generator_eps_per_cpu_s",
    "generator_startup_s",
    "naive_eps",
    "naive_eps_rounds",
    "naive_seconds_rounds",
    "naive_alerts",
    "naive_cpu_rounds",
    "naive_redis_cpu_rounds",
    "naive_eps_per_cpu_s",
    "naive_startup_s",
    "ratio_vs_naive",
    "ratio_per_cpu_s",
    "by_load",
    "bytes_per_entity",
    "rss_1m_entities_mb",
    "memory",
    "stages",
    "plots",
}
#: Keys of each entry of ``by_load``.
LOAD_KEYS = PROBE_KEYS | {
    "offered_rate",
    "achieved_rate",
    "events",
    "alerts",
    "latency_samples",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "queue_p50_ms",
    "queue_p99_ms",
    "engine_p50_ms",
    "engine_p99_ms",
    "sink_read_p50_ms",
    "sink_read_p99_ms",
    "backlog_s",
    "engine_cpu_live",
    "redis_cpu_live",
    "startup_s",
    "dead_letters",
}
#: The stages of the profile, in pipeline order (bench/README.md).
STAGE_NAMES = [
    "read",
    "parse",
    "dedup",
    "features",
    "labels",
    "learn",
    "score",
    "rules",
    "decide",
    "alert",
    "sink",
    "other",
]
MACHINE_KEYS = {
    "cpu_model",
    "cores",
    "loadavg_1m",
    "loadavg_1m_end",
    "platform",
    "python",
    "packages",
    "redis_server",
}


def _positive(doc: dict[str, object], key: str) -> float:
    value = doc[key]
    assert isinstance(value, int | float), f"{key}={value!r}"
    assert math.isfinite(value), f"{key}={value!r}"
    assert value > 0, f"{key}={value!r}"
    return float(value)


def test_e2e_quick_writes_every_documented_key(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "e2e", "--quick", "--json", str(out)],
        cwd=ROOT,
        env=dict(os.environ),  # REDIS_URL, when set, is used as it is
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "intentflow bench e2e (quick)" in proc.stdout
    doc = json.loads(out.read_text())

    assert set(doc) >= E2E_KEYS, sorted(E2E_KEYS - set(doc))
    assert doc["scenario"] == "e2e"
    assert doc["quick"] is True
    assert set(doc["machine"]) >= MACHINE_KEYS, sorted(MACHINE_KEYS - set(doc["machine"]))
    assert doc["machine"]["cores"] >= 1
    assert {"bytewax", "river", "numba", "redis"} <= set(doc["machine"]["packages"])
    assert all(doc["machine"]["packages"][p] for p in ("bytewax", "river", "numba", "redis"))
    assert isinstance(doc["machine"]["redis_server"], str)

    params = doc["params"]
    rounds, per_round = params["rounds"], params["events_per_round"]
    assert len(doc["eps_rounds"]) == len(doc["seconds_rounds"]) == rounds
    assert doc["throughput_events"] == rounds * (per_round + 1)
    for eps, seconds in zip(doc["eps_rounds"], doc["seconds_rounds"], strict=True):
        assert math.isclose(eps * seconds, per_round + 1, rel_tol=1e-9)
    assert len(doc["redis_cpu_rounds"]) == rounds
    assert all(c > 0 for c in doc["redis_cpu_rounds"])
    _positive(doc, "redis_cpu_live")
    if sys.platform == "linux":  # the engine's CPU time comes from /proc
        assert len(doc["engine_cpu_rounds"]) == rounds
        assert all(c > 0 for c in doc["engine_cpu_rounds"])
        _positive(doc, "engine_cpu_live")
        _positive(doc, "eps_per_engine_cpu_s")
    low, high = min(doc["eps_rounds"]), max(doc["eps_rounds"])
    assert low <= _positive(doc, "eps") <= high

    for key in ("offered_rate", "achieved_rate", "events", "alerts", "latency_samples"):
        _positive(doc, key)
    assert doc["latency_samples"] <= doc["alerts"]
    # the offered rate is, without --rate, half the measured eps (within its bounds)
    assert params["rate_from"] == "50% of eps"
    assert doc["offered_rate"] == default_rate(doc["eps"])  # 50 %, within RATE_BOUNDS

    p50, p99, p999, top = (_positive(doc, k) for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms"))
    assert p50 <= p99 <= p999 <= top
    for stage in ("queue", "engine", "sink_read"):
        mid, tail = doc[f"{stage}_p50_ms"], doc[f"{stage}_p99_ms"]
        assert math.isfinite(mid), stage
        assert math.isfinite(tail), stage
        assert mid <= tail, stage
    seconds = doc["latency_by_second"]
    assert sum(row["alerts"] for row in seconds) == doc["latency_samples"]
    assert max(row["max_ms"] for row in seconds) == top
    assert [row["s"] for row in seconds] == sorted({row["s"] for row in seconds})
    assert math.isfinite(doc["backlog_s"])
    assert doc["backlog_s"] >= 0
    assert doc["dead_letters"] == 0
    if doc["latency_samples"] < 1000:
        assert any("p99.9" in w for w in doc["warnings"])

    # the generator source went through rounds of the same size
    assert len(doc["generator_eps_rounds"]) == len(doc["generator_seconds_rounds"]) == rounds
    for eps, seconds in zip(
        doc["generator_eps_rounds"], doc["generator_seconds_rounds"], strict=True
    ):
        assert math.isclose(eps * seconds, per_round, rel_tol=1e-9)
    low, high = min(doc["generator_eps_rounds"]), max(doc["generator_eps_rounds"])
    assert low <= _positive(doc, "generator_eps") <= high
    _positive(doc, "generator_startup_s")
    assert params["generator_polls"] >= 2
    if sys.platform == "linux":
        assert len(doc["generator_cpu_rounds"]) == rounds
        assert all(c > 0 for c in doc["generator_cpu_rounds"])
        _positive(doc, "generator_eps_per_cpu_s")

    # the naive flow went through the same rounds
    assert len(doc["naive_eps_rounds"]) == len(doc["naive_seconds_rounds"]) == rounds
    for eps, seconds in zip(doc["naive_eps_rounds"], doc["naive_seconds_rounds"], strict=True):
        assert math.isclose(eps * seconds, per_round + 1, rel_tol=1e-9)
    low, high = min(doc["naive_eps_rounds"]), max(doc["naive_eps_rounds"])
    assert low <= _positive(doc, "naive_eps") <= high
    assert math.isclose(doc["ratio_vs_naive"], doc["eps"] / doc["naive_eps"], rel_tol=1e-9)
    assert len(doc["naive_redis_cpu_rounds"]) == rounds
    if sys.platform == "linux":
        _positive(doc, "naive_eps_per_cpu_s")
        ratio = doc["eps_per_engine_cpu_s"] / doc["naive_eps_per_cpu_s"]
        assert math.isclose(doc["ratio_per_cpu_s"], ratio, rel_tol=1e-9)
    assert isinstance(doc["naive_alerts"], int)
    assert doc["naive_alerts"] >= 0
    _positive(doc, "naive_startup_s")

    # one latency run per load; the top-level latency keys are the 50 % run's
    assert params["loads"] == [25, 50, 75]
    assert set(doc["by_load"]) == {"25", "50", "75"}
    for load, run in doc["by_load"].items():
        assert set(run) >= LOAD_KEYS, (load, sorted(LOAD_KEYS - set(run)))
        assert run["offered_rate"] == default_rate(doc["eps"], int(load) / 100), load
        assert 0 <= run["latency_samples"] <= run["alerts"], load
        if run["latency_samples"] > 0:
            assert run["p50_ms"] <= run["p99_ms"] <= run["p999_ms"] <= run["max_ms"], load
        else:
            assert run["p50_ms"] is None, load
    main = doc["by_load"]["50"]
    for key in ("offered_rate", "latency_samples", "p50_ms", "p99_ms", "p999_ms", "max_ms"):
        assert main[key] == doc[key], key
    # every probe alerts (the probe rule), and the samples split into probes and the model
    assert params["probe_rate"] == 50.0
    for load, run in doc["by_load"].items():
        assert run["probe_rate"] == 50.0, load
        assert run["probes"] > 0, load
        assert run["probe_samples"] == run["probes"], load
        assert run["probe_samples"] + run["model_samples"] == run["latency_samples"], load
        if run["model_samples"] == 0:
            assert run["model_p50_ms"] is None, load
    assert main["backlog_s"] == doc["backlog_s"]

    # memory: shrunk in quick mode, and the JSON says so
    memory = doc["memory"]
    assert memory["entities"] == params["memory_entities"] < 1_000_000
    assert memory["extrapolated"] is True
    assert any("extrapolated" in w for w in doc["warnings"])
    assert doc["bytes_per_entity"] == memory["bytes_per_entity"]
    # every entity has its feature row in memory: RSS grows by at least that much per entity
    assert doc["bytes_per_entity"] >= memory["feature_row_bytes"] > 0
    mib = memory["rss_base_mb"] + 1_000_000 * doc["bytes_per_entity"] / 2**20
    assert math.isclose(doc["rss_1m_entities_mb"], mib, rel_tol=1e-9)
    assert memory["rss_base_mb"] < memory["rss_mb"] <= memory["rss_peak_mb"]
    # one event per synthetic entity, plus the warm-up's own 2000 entities
    assert memory["entities_held"] == memory["dedup_ids"] == memory["entities"] + 2000
    assert memory["accounts_held"] == memory["entities_held"] // 4
    assert 0 < memory["pending_labels"] <= memory["entities_held"]

    # the stage profile: every stage, shares summing to 1
    stages = doc["stages"]
    assert stages["events"] == params["profile_events"]
    assert list(stages["s_per_m_events"]) == STAGE_NAMES
    assert list(stages["share"]) == STAGE_NAMES
    assert all(v >= 0 for v in stages["s_per_m_events"].values())
    assert math.isclose(sum(stages["share"].values()), 1.0, rel_tol=1e-9)
    # seconds per million events, summed over the stages, is microseconds per event
    assert math.isclose(sum(stages["s_per_m_events"].values()), stages["us_per_event"])
    ranked = sorted(STAGE_NAMES, key=lambda k: -stages["share"][k])
    assert [stages["share"][k] for k in stages["top"]] == [stages["share"][k] for k in ranked[:3]]
    for stage in ("read", "parse", "features", "score", "sink"):
        assert stages["s_per_m_events"][stage] > 0, stage
    assert stages["rules"] == 5  # examples/rules.toml
    _positive(stages, "eps_in_process")
    _positive(stages, "eps_per_cpu_s")

    # PNG plots next to the JSON
    assert set(doc["plots"]) == {"latency", "throughput"}
    for path in doc["plots"].values():
        png = Path(path)
        assert png.parent == tmp_path
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the naive flow's features and labels, against a brute-force recomputation ------------

T0 = 1_767_225_600_000
HORIZON = 60_000
_TYPES = ["page_view", "email_open", "form_submit", "chat_message", "cart_add", "purchase"]
_PROPS = st.fixed_dictionaries(
    {
        "category": st.sampled_from(["pricing", "product", "blog"]),
        "duration_s": st.integers(0, 600),
        "form": st.sampled_from(["demo", "newsletter"]),
        "price": st.floats(0, 1000, allow_nan=False),
    }
)
_STREAM = st.lists(
    st.tuples(
        # gaps around the label horizon, the 5-minute and 1-hour windows, and past 24 hours
        st.one_of(st.integers(0, 90_000), st.integers(0, 7_200_000), st.integers(0, 108_000_000)),
        st.sampled_from(_TYPES),
        _PROPS,
    ),
    min_size=1,
    max_size=40,
)


def _events(raw: list[tuple[int, str, dict[str, object]]]) -> list[Event]:
    """One entity's events, in time order (gaps from the strategy, cumulated)."""
    out, ts = [], T0
    for i, (gap, etype, props) in enumerate(raw):
        ts += gap
        out.append(Event(f"e{i}", ts, "c-1", etype, "a-1", dict(props)))
    return out


def _expected(ev: Event, name: str) -> float | None:
    """What one event adds to a feature, written out by name from the feature list."""
    p, t = ev.props, ev.type
    if name.startswith("activity_count"):
        return 1.0
    if name == "page_views_count_1h":
        return 1.0 if t == "page_view" else None
    pricing = t == "page_view" and p["category"] == "pricing"
    if name.startswith("pricing_views"):
        return 1.0 if pricing else None
    if name.startswith("pricing_dwell"):
        return float(p["duration_s"]) if pricing else None
    if name == "product_views_count_24h":
        return 1.0 if t == "page_view" and p["category"] == "product" else None
    if name == "demo_requests_count_24h":
        return 1.0 if t == "form_submit" and p["form"] == "demo" else None
    if name == "email_engagement_count_24h":
        return 1.0 if t in ("email_open", "email_click") else None
    if name == "chat_messages_count_24h":
        return 1.0 if t == "chat_message" else None
    if name == "cart_adds_count_24h":
        return 1.0 if t == "cart_add" else None
    if name == "cart_value_sum_24h":
        return float(p["price"]) if t == "cart_add" else None
    raise AssertionError(f"no expectation for {name}")


_WINDOW_MS = {"5m": 300_000, "1h": 3_600_000, "24h": 86_400_000}


@settings(max_examples=60, deadline=None)
@given(_STREAM)
def test_naive_features_are_window_counts_and_sums(
    raw: list[tuple[int, str, dict[str, object]]],
) -> None:
    events = _events(raw)
    state = None
    for i, ev in enumerate(events):
        state, (_, x, _) = naive_update(state, ev, HORIZON)
        assert set(x) == {name for name, _, _ in FEATURES} | {"seconds_since_last"}
        for name in x:
            if name == "seconds_since_last":
                want = 86_400.0 if i == 0 else (ev.ts_ms - events[i - 1].ts_ms) / 1000.0
            else:
                window = _WINDOW_MS[name.rsplit("_", 1)[1]]
                values = [
                    _expected(e, name) for e in events[: i + 1] if e.ts_ms > ev.ts_ms - window
                ]
                want = sum(v for v in values if v is not None)
            assert math.isclose(x[name], want, rel_tol=1e-9, abs_tol=1e-6), (name, i)


@settings(max_examples=60, deadline=None)
@given(_STREAM)
def test_naive_labels_purchase_within_the_horizon(
    raw: list[tuple[int, str, dict[str, object]]],
) -> None:
    events = _events(raw)
    last = events[-1]
    events.append(Event("end", last.ts_ms + 1, "c-1", "purchase", "a-1", {}))
    state = None
    labels: list[bool] = []
    for ev in events:
        state, (_, _, matured) = naive_update(state, ev, HORIZON)
        labels.extend(y for _, y in matured)
    # the closing purchase matures every decision point (every event but purchases) once
    points = [(i, e) for i, e in enumerate(events) if e.type != "purchase"]
    assert len(labels) == len(points)
    # a point is positive when a purchase by the entity follows it within the horizon
    truth = [
        any(p.type == "purchase" and p.ts_ms - e.ts_ms <= HORIZON for p in events[i + 1 :])
        for i, e in points
    ]
    assert sorted(labels) == sorted(truth)


def test_naive_decision_threshold_cooldown_and_markers() -> None:
    cfg = NaiveConfig(url="unused", threshold=0.7, cooldown_ms=1000, mark_prefix="bench-")
    ev = Event("e1", T0, "c-1", "page_view", "a-1", {})
    assert decide(None, (ev, 0.69, True), cfg) == (None, None)  # below the threshold
    assert decide(None, (ev, 0.9, False), cfg) == (None, None)  # the model is not ready
    last, out = decide(None, (ev, 0.9, True), cfg)
    assert last == T0
    assert isinstance(out, NaiveAlert)
    assert out.alert["entity_id"] == "c-1"
    assert out.alert["score"] == 0.9
    later = Event("e2", T0 + 999, "c-1", "page_view", "a-1", {})
    assert decide(last, (later, 0.95, True), cfg) == (last, None)  # in the cooldown
    after = Event("e3", T0 + 1000, "c-1", "page_view", "a-1", {})
    assert decide(last, (after, 0.95, True), cfg)[0] == T0 + 1000
    mark = Event("m", T0, "bench-round-0", "page_view", None, {})
    assert decide(None, (mark, 0.0, False), cfg) == (None, NaiveMark("bench-round-0"))


# --- the generator phase's round boundaries --------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.tuples(st.floats(0.001, 5.0), st.integers(0, 5000)), min_size=1, max_size=40),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6),
)
def test_crossing_times_interpolate_between_polls(
    steps: list[tuple[float, int]], fractions: list[float]
) -> None:
    """A counter sampled by polls: each mark's crossing time lies between the polls around it
    and is where the line between them reaches the mark."""
    from bench.generator_phase import crossing_times

    samples = [(0.0, 0.0)]
    for dt, dn in steps:
        samples.append((samples[-1][0] + dt, samples[-1][1] + dn))
    top = samples[-1][1]
    marks = sorted(f * top for f in fractions)
    got = crossing_times(samples, marks)
    assert got == sorted(got)
    for mark, t in zip(marks, got, strict=True):
        i = next(i for i, (_, v) in enumerate(samples) if v >= mark)
        if i == 0:
            assert t == samples[0][0]
            continue
        (t0, v0), (t1, v1) = samples[i - 1], samples[i]
        assert t0 <= t <= t1
        assert math.isclose(v0 + (v1 - v0) * (t - t0) / (t1 - t0), mark, rel_tol=1e-9, abs_tol=1e-6)


def test_latency_probes_match_their_rule() -> None:
    """A probe is an event the probe rule alerts on; the e2e module's examples hold."""
    import doctest

    from bench import e2e
    from intentflow.contracts import Limits, parse_event
    from intentflow.rules.model import parse_rules_text

    (rule,) = parse_rules_text(e2e.PROBE_RULES.read_text()).rules
    assert rule.id == e2e.PROBE_RULE
    assert rule.types == (e2e.PROBE_TYPE,)
    ev = parse_event(e2e.probe_payload(7, 1_800_000_000_000), Limits(), 1_800_000_000_000)
    assert isinstance(ev, Event)
    assert (ev.type, ev.entity_id) == ("bench_probe", "bench-probe-07")
    assert ev.event_id == "bench-probe-7"
    assert e2e.is_probe_alert({"trigger": {"kind": "rule", "rule_id": rule.id}})
    assert not e2e.is_probe_alert({"trigger": {"kind": "rule", "rule_id": "other"}})
    result = doctest.testmod(e2e)
    assert result.attempted > 0
    assert result.failed == 0


def test_default_rate_is_the_share_of_eps_within_the_bounds() -> None:
    low, high = RATE_BOUNDS
    assert default_rate(32_000.0) == 16_000.0
    assert default_rate(32_000.0, 0.75) == 24_000.0
    assert default_rate(66_000.0, 0.75) == 49_500.0  # 75 % of the best eps so far: not capped
    assert default_rate(1e6, 0.75) == high
    assert default_rate(10.0, 0.25) == low
    # a bounded rate is said, an unbounded one is not
    assert bounded_rate_warnings(default_rate(66_000.0, 0.75), 75, 66_000.0) == []
    (warning,) = bounded_rate_warnings(default_rate(1e6, 0.5), 50, 1e6)
    assert "bounded by RATE_BOUNDS" in warning
    assert "not 50% of eps" in warning


@given(
    st.integers(1, 10**6),
    st.floats(0, 200_000, allow_nan=False),
    st.sampled_from([0.0, 0.1, 0.25, 1.0]),
)
def test_the_generator_phase_tail_outlasts_four_polls(
    events: int, eps: float, poll_s: float
) -> None:
    """The engine must still run when a poll sees the last round end (small --events too)."""
    tail = generator_tail(events, eps, poll_s)
    assert tail >= max(2000, events // 5)
    assert tail >= 4 * poll_s * eps  # events for four polls at that rate
    assert generator_tail(20_000, 40_000.0, 0.25) == 40_000  # the case that failed


def _serve_once(reply: bytes) -> str:
    """A server on a free local port that answers one request with ``reply`` and closes."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def answer() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(reply)
        srv.close()

    threading.Thread(target=answer, daemon=True).start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}/metrics"


def test_a_metrics_reply_cut_short_reads_as_no_reply() -> None:
    """An engine that exits mid-reply (the generator phase's end) is a failed poll,
    not a crash of the benchmark."""
    from bench.generator_phase import scrape

    whole = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    assert scrape(_serve_once(whole)) == b"hello"
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 22547\r\nConnection: close\r\n\r\nintentflow_"
    assert scrape(_serve_once(cut)) is None
    dead = _serve_once(b"")  # answers nothing and closes
    assert scrape(dead) is None

"""Smoke test of the benchmark harness: ``python -m bench e2e --quick --json PATH``.

It checks that the harness runs end to end and writes every documented key
with sensible values; it never checks speed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Keys documented in bench/README.md for the e2e scenario.
E2E_KEYS = {
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
}
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
    assert doc["offered_rate"] == max(100.0, min(20_000.0, round(doc["eps"] / 2)))

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

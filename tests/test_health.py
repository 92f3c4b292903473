"""The HTTP endpoint: /metrics, /healthz, /readyz; binding and secrets."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from intentflow.config import load_config
from intentflow.errors import IntentflowError
from intentflow.health import HealthServer, serve_engine_metrics
from intentflow.metrics import Metrics


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _json(url: str) -> tuple[int, Any]:
    code, _, body = _get(url)
    return code, orjson.loads(body)


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_metrics_endpoint_serves_the_registry() -> None:
    m = Metrics(version="1.2.3", config_hash="cafe")
    m.rules_reloaded(ok=True)
    with HealthServer(m, port=0) as server:
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}"
        code, headers, body = _get(f"{server.url}/metrics")
        assert code == 200
        assert headers["Content-Type"].startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert {"intentflow_build_info", "intentflow_rules_reloads", "process_cpu_seconds"} <= names
        assert b'intentflow_build_info{config_hash="cafe",version="1.2.3"} 1.0' in body
        assert _get(f"{server.url}/nope")[0] == 404


def test_binds_loopback_by_default() -> None:
    with HealthServer(Metrics(process_collectors=False), port=0) as server:
        assert server._server is not None
        assert server._server.server_address[0] == "127.0.0.1"


def test_taken_port_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(IntentflowError, match=f"127.0.0.1:{port}.*--metrics-port"):
            HealthServer(Metrics(process_collectors=False), port=port).start()
        cfg = load_config(None, env={})
        with pytest.raises(IntentflowError):
            serve_engine_metrics(cfg, port=port)


def test_liveness_follows_progress() -> None:
    m = Metrics(process_collectors=False)
    with HealthServer(m, port=0, liveness_timeout_s=0.3) as server:
        code, doc = _json(f"{server.url}/healthz")
        assert code == 200
        assert doc["status"] == "ok"
        assert "start-up" in doc["checks"]["progress"]["detail"]
        time.sleep(0.45)
        code, doc = _json(f"{server.url}/healthz")
        assert code == 503
        assert doc["status"] == "fail"
        assert doc["checks"]["progress"]["ok"] is False
        assert doc["checks"]["progress"]["age_s"] > 0.3
        m.heartbeat()
        code, doc = _json(f"{server.url}/healthz")
        assert code == 200
        assert "last progress" in doc["checks"]["progress"]["detail"]


def test_readiness_needs_engine_and_redis(redis_url: str) -> None:
    m = Metrics(process_collectors=False)
    with HealthServer(m, port=0, redis_url=redis_url, ping_interval_s=0.1) as server:
        code, doc = _json(f"{server.url}/readyz")
        assert code == 503
        assert doc["checks"]["engine"]["ok"] is False
        assert _wait(lambda: _json(f"{server.url}/readyz")[1]["checks"]["redis"]["ok"])
        assert _json(f"{server.url}/readyz")[0] == 503  # Redis is fine, the engine not started
        m.heartbeat()
        code, doc = _json(f"{server.url}/readyz")
        assert code == 200
        assert doc["status"] == "ok"
        assert m.sample("intentflow_redis_connected", {"client": "health"}) == 1


def test_unreachable_redis_is_not_ready_and_no_secret_leaks() -> None:
    m = Metrics(process_collectors=False)
    m.heartbeat()
    url = "redis://operator:s3cr3t-pw@127.0.0.1:1/0"
    with HealthServer(m, port=0, redis_url=url, ping_interval_s=0.1) as server:
        assert _wait(lambda: server._ping is not None)
        for path in ("/readyz", "/healthz", "/metrics"):
            _, _, body = _get(f"{server.url}{path}")
            assert b"s3cr3t" not in body
            assert b"operator" not in body
        code, doc = _json(f"{server.url}/readyz")
        assert code == 503
        assert doc["checks"]["redis"]["ok"] is False
        assert "PING failed" in doc["checks"]["redis"]["detail"]
        assert m.sample("intentflow_redis_connected", {"client": "health"}) == 0


def test_stale_ping_is_not_ready(redis_url: str) -> None:
    m = Metrics(process_collectors=False)
    m.heartbeat()
    server = HealthServer(m, port=0, redis_url=redis_url, ping_interval_s=0.1, ping_stale_s=0.2)
    with server:
        assert _wait(lambda: server.readiness()[0])
    # Stopped: no more pings, so the last answer becomes stale.
    time.sleep(0.3)
    ok, checks = server.readiness()
    assert not ok
    assert "last PING" in checks["redis"]["detail"]


def test_serve_engine_metrics_reports_build_and_config() -> None:
    cfg = load_config(None, env={})
    metrics, server = serve_engine_metrics(cfg, port=0)
    assert server is not None
    try:
        _, _, body = _get(f"{server.url}/metrics")
        assert f'config_hash="{cfg.config_hash()}"'.encode() in body
        assert metrics.shards == cfg.engine.shards
    finally:
        server.stop()

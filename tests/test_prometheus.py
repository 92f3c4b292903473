"""Deployment artefacts and a real Prometheus scraping a running engine.

The promtool and Prometheus tests skip, with a message, when the binaries are
not on PATH (Debian/Ubuntu: ``apt-get install prometheus``; ``.ci/run``
installs it). The engine runs as a subprocess (``intentflow run``) against the
test Redis; Prometheus listens on loopback with its storage in a temporary
directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from intentflow.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "intentflow.json"
DOCS = ROOT / "docs" / "observability.md"
DEMO_CONFIG = ROOT / "intentflow" / "defaults" / "demo.toml"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not on PATH (apt-get install prometheus; .ci/run installs it)",
)
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus not on PATH (apt-get install prometheus; .ci/run installs it)",
)
_METRIC = re.compile(r"\b(intentflow_[a-z0-9_]+)\b")


def _exposed_names() -> set[str]:
    """Every sample name the engine's registry can expose."""
    names: set[str] = set()
    for fam in Metrics().registry.collect():
        if fam.type == "counter":
            names |= {f"{fam.name}_total", f"{fam.name}_created"}
        elif fam.type == "histogram":
            names |= {f"{fam.name}_bucket", f"{fam.name}_sum", f"{fam.name}_count"}
        elif fam.type == "info":
            names.add(f"{fam.name}_info")
        else:
            names.add(fam.name)
    return names


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return doc


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", [])]


def _alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)", (PROM_DIR / "alerts.yml").read_text(), re.MULTILINE)


def _grafana_to_promql(expr: str) -> str:
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace('"$job"', '"intentflow"')
        .replace('"$instance"', '".*"')
    )


# --- static checks ---------------------------------------------------------------------


@needs_promtool
def test_promtool_checks_rules_and_config() -> None:
    for args in (
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
        ["check", "config", "prometheus.yml"],
    ):
        proc = subprocess.run(
            ["promtool", *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
        assert "SUCCESS" in proc.stdout


def test_rules_and_dashboard_use_exposed_metrics_only() -> None:
    exposed = _exposed_names()
    used = set(_METRIC.findall((PROM_DIR / "alerts.yml").read_text()))
    used |= {m for e in _dashboard_exprs() for m in _METRIC.findall(e)}
    assert used, "no intentflow metric referenced"
    assert used <= exposed, f"unknown metrics: {sorted(used - exposed)}"


def test_dashboard_is_importable_json() -> None:
    dash = _dashboard()
    assert dash["title"]
    assert dash["uid"]
    assert dash["schemaVersion"] >= 30
    assert dash.get("id") is None  # importable as a new dashboard
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0
        assert g["x"] + g["w"] <= 24
        assert g["h"] > 0
        if p["type"] == "row":
            continue
        assert p["description"], p["title"]
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}"
        for t in p["targets"]:
            assert "$job" in t["expr"], (p["title"], t["expr"])
            assert "$instance" in t["expr"], (p["title"], t["expr"])
    kinds = {p["type"] for p in dash["panels"]}
    assert {"timeseries", "heatmap", "stat", "bargauge"} <= kinds
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("events in", "latency", "heatmap", "lag", "dead letters", "auc", "top actions"):
        assert topic in titles


def test_docs_describe_every_metric_alert_and_panel() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for fam in Metrics(process_collectors=False).registry.collect():
        name = f"{fam.name}_info" if fam.type == "info" else fam.name
        if fam.type == "counter":
            name += "_total"
        assert f"`{name}`" in text, f"{name} is not documented"
    for alert in _alert_names():
        assert f"`{alert}`" in text, f"alert {alert} is not documented"
    for p in _dashboard()["panels"]:
        assert p["title"] in text, f"panel {p['title']!r} is not documented"
    for endpoint in ("/metrics", "/healthz", "/readyz"):
        assert endpoint in text
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/observability.md" in readme


# --- a running engine ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read() or b"null")


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _scraped_total(base: str, sample: str) -> float:
    """Sum of the samples called ``sample`` on the engine's /metrics."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == sample
    )


def _until(what: str, fn: Callable[[], Any], deadline: float) -> Any:
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (OSError, ValueError) as err:
            last = err
        else:
            if last:
                return last
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


class _Engine:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.base_url: str | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            m = re.search(r"metrics and health on (http://127\.0\.0\.1:\d+)", line)
            if m:
                self.base_url = m.group(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def engine(redis_url: str) -> Iterator[_Engine]:
    """``intentflow run`` on the synthetic generator, metrics on a free loopback port."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    cmd = [
        sys.executable,
        "-m",
        "intentflow.cli",
        "run",
        "--redis-url",
        redis_url,
        "--config",
        str(DEMO_CONFIG),
        "--source",
        "generator",
        "--rate",
        "300",
        "--shards",
        "2",
        "--metrics-port",
        "0",
        "--log-json",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTENTFLOW__")}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    eng = _Engine(proc)

    def address() -> str | None:
        if eng.base_url:
            return eng.base_url
        if proc.poll() is not None:
            pytest.fail("the engine exited:\n" + "".join(eng.lines)[-3000:])
        return None

    try:
        _until("the engine's metrics address in its log", address, time.monotonic() + 45)
        yield eng
    finally:
        eng.stop()


def test_engine_serves_metrics_health_and_status(engine: _Engine) -> None:
    base = engine.base_url
    assert base is not None
    deadline = time.monotonic() + 30
    _until("readiness", lambda: _get_json(f"{base}/readyz")[0] == 200, deadline)
    # The first engine batch compiles the feature kernels (cached on disk): wait for it.
    _until(
        "the first engine batch",
        lambda: _scraped_total(base, "intentflow_events_processed_total") > 0,
        time.monotonic() + 45,
    )
    code, doc = _get_json(f"{base}/healthz")
    assert code == 200
    assert doc["status"] == "ok"
    code, doc = _get_json(f"{base}/readyz")
    assert doc["checks"]["redis"]["ok"] is True
    assert doc["checks"]["engine"]["ok"] is True
    log_docs = [orjson.loads(line) for line in engine.lines if line.startswith("{")]
    assert log_docs
    assert all({"ts", "level", "logger", "msg"} <= set(d) for d in log_docs)

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "intentflow.cli",
            "status",
            "--metrics-url",
            f"{base}/metrics",
            "--interval",
            "1",
            "--json",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    fig = orjson.loads(proc.stdout)
    assert fig["events_total"] > 0
    assert fig["events_per_s"] > 0
    assert fig["redis_connected"].get("health") is True
    assert set(fig["event_time_lag_s"]) == {"generator"}


@needs_prometheus
def test_prometheus_scrapes_the_engine(engine: _Engine, tmp_path: Path) -> None:
    base = engine.base_url
    assert base is not None
    target = base.removeprefix("http://")
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {PROM_DIR / 'alerts.yml'}\n"
        "scrape_configs:\n  - job_name: intentflow\n"
        f"    static_configs:\n      - targets: ['{target}']\n",
        encoding="utf-8",
    )
    log = tmp_path / "prometheus.log"
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    api = f"http://127.0.0.1:{port}"

    def query(expr: str) -> dict[str, Any]:
        url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        code, doc = _get_json(url)
        assert code == 200, (expr, doc)
        assert doc["status"] == "success", (expr, doc)
        data: dict[str, Any] = doc["data"]
        return data

    try:
        deadline = time.monotonic() + 50

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail("prometheus exited:\n" + log.read_text(errors="replace")[-3000:])
            return _status(f"{api}/-/ready") == 200

        _until("Prometheus ready", ready, deadline)

        def scraped() -> float:
            res = query('sum(intentflow_events_total{job="intentflow"})')["result"]
            return float(res[0]["value"][1]) if res else 0.0

        events = _until("a scraped intentflow_events_total > 0", scraped, deadline)
        assert events > 0
        up = query('up{job="intentflow"}')["result"]
        assert [float(r["value"][1]) for r in up] == [1.0]
        info = query("intentflow_build_info")["result"]
        assert info
        assert info[0]["metric"]["version"]
        _until(
            "two samples of the event counter",
            lambda: query('sum(rate(intentflow_events_total{job="intentflow"}[1m]))')["result"],
            deadline,
        )

        code, rules = _get_json(f"{api}/api/v1/rules")
        assert code == 200
        loaded = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
        assert set(_alert_names()) <= loaded
        assert all(r["health"] != "err" for g in rules["data"]["groups"] for r in g["rules"])
        for expr in _dashboard_exprs():
            query(_grafana_to_promql(expr))  # every panel's query is valid PromQL
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

"""The engine's HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

One small stdlib HTTP server in a daemon thread, bound to loopback by
default (``port=0`` picks a free port; :attr:`HealthServer.port` tells
which). A second daemon thread PINGs Redis at most once per
``ping_interval_s`` and caches the answer, so a probe never waits on Redis.

- ``/metrics``: the Prometheus text format of a :class:`~intentflow.metrics.Metrics`.
- ``/healthz`` (liveness): 200 while the dataflow made progress (a source
  poll or a batch) within ``liveness_timeout_s``; the same grace applies from
  start-up. 503 otherwise: the process is stuck and should be restarted.
- ``/readyz`` (readiness): 200 when the engine has started (its first source
  poll or batch) and the last Redis PING, at most ``ping_stale_s`` old,
  succeeded. 503 otherwise.

Both answer JSON: ``{"status": "ok"|"fail", "checks": {name: {"ok": bool,
"detail": str}}}``. Details never contain URLs or credentials.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final

import orjson
import redis
from prometheus_client import CONTENT_TYPE_LATEST

from intentflow import __version__
from intentflow.config import Config
from intentflow.errors import IntentflowError
from intentflow.metrics import Metrics
from intentflow.redisutil import connect

__all__ = ["DEFAULT_METRICS_HOST", "DEFAULT_METRICS_PORT", "HealthServer", "serve_engine_metrics"]

log = logging.getLogger(__name__)

#: Default listen address of ``intentflow run`` (loopback only).
DEFAULT_METRICS_HOST: Final = "127.0.0.1"
#: Default port of ``intentflow run``.
DEFAULT_METRICS_PORT: Final = 9464

Check = dict[str, Any]


class HealthServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` for one engine process."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        host: str = DEFAULT_METRICS_HOST,
        port: int = 0,
        redis_url: str | None = None,
        liveness_timeout_s: float = 60.0,
        ping_interval_s: float = 1.0,
        ping_stale_s: float = 5.0,
    ) -> None:
        self.metrics = metrics
        self.host = host
        self.requested_port = port
        self.redis_url = redis_url
        self.liveness_timeout_s = liveness_timeout_s
        self.ping_interval_s = max(0.05, ping_interval_s)
        self.ping_stale_s = ping_stale_s
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._ping: tuple[float, bool, str] | None = None  # (monotonic time, ok, detail)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> HealthServer:
        """Bind and start serving; raises :class:`IntentflowError` if the port is taken."""
        handler = _handler_for(self)
        try:
            server = ThreadingHTTPServer((self.host, self.requested_port), handler)
        except OSError as err:
            raise IntentflowError(
                f"cannot serve metrics on {self.host}:{self.requested_port}"
                f" ({err.strerror or err}); choose another --metrics-port (0 picks a free one)"
            ) from err
        server.daemon_threads = True
        self._server = server
        t = threading.Thread(target=server.serve_forever, name="intentflow-http", daemon=True)
        t.start()
        self._threads.append(t)
        if self.redis_url:
            p = threading.Thread(target=self._ping_loop, name="intentflow-redis-ping", daemon=True)
            p.start()
            self._threads.append(p)
        return self

    def stop(self) -> None:
        """Stop serving and pinging (idempotent)."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for t in self._threads:
            t.join(timeout=5.0)
        self._threads.clear()

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port actually bound (after :meth:`start`)."""
        if self._server is None:
            return self.requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:9464``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- checks ------------------------------------------------------------------------------
    def liveness(self) -> tuple[bool, dict[str, Check]]:
        """Whether the dataflow made progress recently, with the reason."""
        age = self.metrics.progress_age_s()
        ok = age <= self.liveness_timeout_s
        what = "last progress" if self.metrics.started else "start-up"
        return ok, {
            "progress": {
                "ok": ok,
                "detail": f"{what} {age:.1f}s ago (limit {self.liveness_timeout_s:g}s)",
                "age_s": round(age, 3),
            }
        }

    def readiness(self) -> tuple[bool, dict[str, Check]]:
        """Whether the engine started and Redis answers, with the reasons."""
        started = self.metrics.started
        checks: dict[str, Check] = {
            "engine": {
                "ok": started,
                "detail": "dataflow running" if started else "dataflow not started yet",
            }
        }
        if self.redis_url:
            ping = self._ping
            if ping is None:
                checks["redis"] = {"ok": False, "detail": "no PING answered yet"}
            else:
                at, ok, detail = ping
                age = time.monotonic() - at
                if age > self.ping_stale_s:
                    ok, detail = False, f"last PING {age:.1f}s ago"
                checks["redis"] = {"ok": ok, "detail": detail}
        return all(c["ok"] for c in checks.values()), checks

    def _ping_loop(self) -> None:
        assert self.redis_url
        client: redis.Redis | None = None
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                if client is None:
                    client = connect(self.redis_url, socket_connect_timeout=1.0, socket_timeout=1.0)
                client.ping()
                self._ping = (time.monotonic(), True, "PING answered")
                self.metrics.redis_reachable(True)
            except (redis.RedisError, OSError) as err:
                self._ping = (time.monotonic(), False, f"PING failed: {type(err).__name__}")
                self.metrics.redis_reachable(False)
                if client is not None:
                    client.close()
                client = None
            self._stop.wait(max(0.0, self.ping_interval_s - (time.monotonic() - t0)))
        if client is not None:
            client.close()


def _handler_for(server: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, server.metrics.exposition(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._json(*server.liveness())
            elif path == "/readyz":
                self._json(*server.readiness())
            elif path == "/":
                body = b"intentflow: /metrics /healthz /readyz\n"
                self._send(200, body, "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        def _json(self, ok: bool, checks: dict[str, Check]) -> None:
            doc = {"status": "ok" if ok else "fail", "checks": checks}
            self._send(200 if ok else 503, orjson.dumps(doc), "application/json")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http %s %s", self.address_string(), format % args)

    return Handler


def serve_engine_metrics(
    config: Config, *, host: str | None = None, port: int | None = None
) -> tuple[Metrics, HealthServer | None]:
    """The metrics of an engine process for ``config`` and the server exposing them.

    ``host`` defaults to loopback. An explicit ``port`` (0: a free one) that
    cannot be bound is an error; when ``port`` is ``None`` the default port
    is tried and, if it is taken, the engine runs without the endpoint
    (a warning says so).
    """
    metrics = Metrics(
        version=__version__, config_hash=config.config_hash(), shards=config.engine.shards
    )
    server = HealthServer(
        metrics,
        host=host or DEFAULT_METRICS_HOST,
        port=DEFAULT_METRICS_PORT if port is None else port,
        redis_url=config.redis.url or None,
    )
    try:
        server.start()
    except IntentflowError as err:
        if port is not None:
            raise
        log.warning("%s; running without the metrics endpoint", err)
        return metrics, None
    log.info("metrics and health on %s (/metrics, /healthz, /readyz)", server.url)
    if server.host not in {"127.0.0.1", "::1", "localhost"}:
        log.warning("the metrics endpoint %s is reachable from other hosts", server.url)
    return metrics, server

"""Redis outages, pauses, slow and resetting links, lost write replies: nothing lost.

The engine reads its input and writes its output through a fault proxy
(``faultproxy.FaultProxy``) in front of a private redis-server on
127.0.0.1 with an append-only file. Half of the input is sent, a fault is
injected while the engine works, the rest is sent, and at the end the alert
stream, the latest scores and the final state must equal the uninterrupted
in-memory run: no alert lost, none doubled (the sink writes each
``alert_id`` once), nothing skipped. During an outage ``/readyz`` answers
503; backoff stays bounded; the engine's memory stays flat.
"""

from __future__ import annotations

import multiprocessing.context
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from enginekit import (
    Engine,
    Reference,
    check_equal,
    engine_args,
    http_status,
    produce,
    run_to_end,
    wait_for,
)
from faultproxy import FaultProxy

from intentflow.redisutil import EmbeddedRedis, connect
from intentflow.sinks.lua import ALERTS_ONCE_SHA

Fork = multiprocessing.context.ForkServerContext
#: Growth of the engine's resident memory allowed across a fault (KiB).
RSS_SLACK_KB = 64 * 1024
#: Events sent before the fault (the model starts alerting after about 3,200).
WARM_UP = 3600


@pytest.fixture
def proxy(tcp_redis: EmbeddedRedis) -> Iterator[FaultProxy]:
    assert tcp_redis.port is not None
    with FaultProxy(("127.0.0.1", tcp_redis.port)) as p:
        yield p


@pytest.fixture
def direct(tcp_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    """The test's own client, around the proxy."""
    client = connect(tcp_redis.url)
    yield client
    client.close()


class Feed:
    """Sends the reference input in order; a fault may send part of it while it acts."""

    def __init__(self, client: redis.Redis, payloads: list[bytes]) -> None:
        self.client = client
        self.payloads = payloads
        self.sent = 0

    def send(self, n: int) -> None:
        produce(self.client, self.payloads[self.sent : self.sent + n])
        self.sent = min(len(self.payloads), self.sent + n)

    def rest(self) -> None:
        self.send(len(self.payloads) - self.sent)


Fault = Callable[[Engine, str, Feed], None]


def scenario(
    forkserver: Fork,
    proxy: FaultProxy,
    direct: redis.Redis,
    ref: Reference,
    tmp_path: Path,
    fault: Fault,
) -> Engine:
    """Warm up, ``fault(engine, health_url, feed)``, the rest; then compare everything.

    The first :data:`WARM_UP` events take the model past its cold start, so that
    the events sent around the fault raise alerts.
    """
    feed = Feed(direct, ref.payloads)
    feed.send(WARM_UP)
    rec = tmp_path / "recovery"
    engine = Engine(
        forkserver, engine_args(proxy.url, recovery=rec, init=True), tmp_path / "engine.log"
    ).start()
    try:
        health = engine.health_url()
        wait_for(lambda: direct.xlen("intentflow:alerts") > 10, 60, "first alerts", engine)
        wait_for(lambda: http_status(f"{health}/readyz") == 200, 30, "ready", engine)
        rss_before = engine.rss_kb()
        fault(engine, health, feed)
        feed.rest()
        run_to_end(engine, rec, ref, direct)
        assert engine.alive(), "the engine must ride out the fault"
        assert engine.rss_kb() - rss_before < RSS_SLACK_KB, "memory grew across the fault"
    finally:
        engine.kill9()
    check_equal(direct, rec, ref)
    delays = [float(x) for x in re.findall(r"retrying in ([0-9.]+)s", engine.text())]
    assert all(d <= 2.0 for d in delays), f"unbounded source backoff: {max(delays)}"
    return engine


def outage_seen(health: str, engine: Engine) -> None:
    wait_for(lambda: http_status(f"{health}/readyz") == 503, 15, "/readyz to fail", engine)
    assert http_status(f"{health}/healthz") == 200, "liveness must not fail for a Redis outage"


def recovered(health: str, engine: Engine) -> None:
    wait_for(lambda: http_status(f"{health}/readyz") == 200, 30, "/readyz to recover", engine)


def metric(health: str, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"{health}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = re.findall(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found[0]) if found else 0.0


def test_redis_killed_and_restarted(
    forkserver: Fork,
    proxy: FaultProxy,
    direct: redis.Redis,
    tcp_redis: EmbeddedRedis,
    reference: Reference,
    tmp_path: Path,
) -> None:
    def fault(engine: Engine, health: str, feed: Feed) -> None:
        feed.send(700)
        time.sleep(0.1)  # the engine is reading and writing now
        tcp_redis.kill()  # SIGKILL; acknowledged writes are in the AOF already
        outage_seen(health, engine)
        # Keep Redis down until the engine has met the outage (bounded wait): the source
        # or the sink, whichever runs first on the worker, logs "unreachable" and retries.
        deadline = time.monotonic() + 15.0
        while "unreachable" not in engine.text() and time.monotonic() < deadline:
            time.sleep(0.1)
        tcp_redis.start()
        recovered(health, engine)

    engine = scenario(forkserver, proxy, direct, reference, tmp_path, fault)
    assert "unreachable" in engine.text(), "the engine should have met the outage and retried"


def test_redis_frozen_with_sigstop_and_client_pause(
    forkserver: Fork,
    proxy: FaultProxy,
    direct: redis.Redis,
    tcp_redis: EmbeddedRedis,
    reference: Reference,
    tmp_path: Path,
) -> None:
    def fault(engine: Engine, health: str, feed: Feed) -> None:
        pid = tcp_redis.pid
        assert pid is not None
        feed.send(500)
        time.sleep(0.1)
        os.kill(pid, signal.SIGSTOP)
        try:
            outage_seen(health, engine)
            time.sleep(1.0)
        finally:
            os.kill(pid, signal.SIGCONT)
        recovered(health, engine)
        feed.send(500)
        time.sleep(0.1)
        direct.execute_command("CLIENT", "PAUSE", 2500, "ALL")
        outage_seen(health, engine)
        recovered(health, engine)

    scenario(forkserver, proxy, direct, reference, tmp_path, fault)


def test_slow_and_resetting_connections(
    forkserver: Fork,
    proxy: FaultProxy,
    direct: redis.Redis,
    reference: Reference,
    tmp_path: Path,
) -> None:
    resets: list[int] = []

    def fault(engine: Engine, health: str, feed: Feed) -> None:
        proxy.delay_s = 0.02
        feed.send(1000)
        for _ in range(6):
            time.sleep(0.25)
            resets.append(proxy.reset_all())
        proxy.refuse = True
        proxy.reset_all()
        outage_seen(health, engine)
        proxy.refuse = False
        proxy.delay_s = 0.0
        recovered(health, engine)

    engine = scenario(forkserver, proxy, direct, reference, tmp_path, fault)
    assert sum(resets) >= 6, "the resets must have hit open connections"
    assert proxy.connections > 6
    assert "unreachable" in engine.text()


def test_a_write_whose_reply_is_lost_is_retried_without_duplicates(
    forkserver: Fork,
    proxy: FaultProxy,
    direct: redis.Redis,
    reference: Reference,
    tmp_path: Path,
) -> None:
    figures: dict[str, float] = {}

    def fault(engine: Engine, health: str, feed: Feed) -> None:
        # the sink's alert writes (its batches also run a script for the scores)
        proxy.lose_reply_after(ALERTS_ONCE_SHA.encode(), times=3)

        def settled() -> bool:
            figures["dup"] = metric(health, 'intentflow_sink_records_total{kind="alert_duplicate"}')
            figures["retries"] = metric(health, "intentflow_sink_retries_total")
            return proxy.lost_replies == 3 and figures["dup"] > 0

        feed.send(1400)  # new alerts to write while replies get lost
        wait_for(settled, 60, "three lost replies and their retries", engine)

    scenario(forkserver, proxy, direct, reference, tmp_path, fault)
    assert figures["retries"] >= 3
    assert figures["dup"] >= 1, "the retried batch found its alerts already written"

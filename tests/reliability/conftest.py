"""Fixtures of the fault-injection suite: engines, Redis servers, reference runs.

Everything listens on 127.0.0.1 or unix sockets in private temporary
directories. See docs/reliability.md for what each module checks.
"""

from __future__ import annotations

import multiprocessing.context
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from enginekit import Reference, build_reference, fork_context

from intentflow.redisutil import EmbeddedRedis

#: Debian's redis-server (7.x, built with TLS), when installed.
SYSTEM_REDIS = shutil.which("redis-server", path="/usr/bin:/usr/local/bin")


@pytest.fixture(scope="session")
def forkserver() -> multiprocessing.context.ForkServerContext:
    """The fork server that starts engine processes (imports done once)."""
    return fork_context()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tcp_redis() -> Iterator[EmbeddedRedis]:
    """A private redis-server on 127.0.0.1 with persistence (AOF), for fault tests."""
    with EmbeddedRedis(port=free_port(), persistence=True) as server:
        yield server


@pytest.fixture
def redis7() -> Iterator[EmbeddedRedis]:
    """A private Redis 7 (Debian's redis-server) on a unix socket; skips without it."""
    if SYSTEM_REDIS is None:
        pytest.skip("redis-server 7 is not installed (apt-get install redis-server)")
    with EmbeddedRedis(executable=SYSTEM_REDIS) as server:
        yield server


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The uninterrupted in-memory run every fault test is compared with."""
    return build_reference(tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="session")
def engine_recovery(
    forkserver: multiprocessing.context.ForkServerContext,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """A recovery directory the engine wrote (two Redis input partitions, demo settings)."""
    from enginekit import SHARDS, Engine, engine_args, produce, shard_states, wait_for
    from flowkit import gen_payloads

    from intentflow.redisutil import connect

    base = tmp_path_factory.mktemp("engine-recovery")
    rec = base / "recovery"
    with EmbeddedRedis() as server:
        client = connect(server.url)
        produce(client, gen_payloads(1200, seed=6))
        engine = Engine(forkserver, engine_args(server.url, recovery=rec, init=True), base / "log")
        engine.start()
        try:
            wait_for(
                lambda: len(shard_states(rec)) == SHARDS, 60, "snapshots of every shard", engine
            )
        finally:
            engine.kill9()
        client.close()
    return rec

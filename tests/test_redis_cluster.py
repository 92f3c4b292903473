"""The alert sink on a real Redis Cluster: three redis-server processes on loopback ports."""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import redis
from bytewax.testing import TestingSource, run_main
from flowkit import decisions, demo_config, gen_payloads, items_of, run_memory
from redis.cluster import RedisCluster

from intentflow.errors import ConfigError
from intentflow.redisutil import _find_redis_server, connect
from intentflow.runtime import make_output
from intentflow.sinks.base import AlertOut, DeadLetterOut, Output, ScoreOut
from intentflow.sinks.cluster import (
    RedisClusterOutputWriter,
    RedisClusterSink,
    cluster_key_names,
    hash_tag,
    slot_of,
)
from intentflow.sinks.redis_sink import RedisSinkConfig

SLOTS = 16384
START_TIMEOUT_S = 20.0


def _free_cluster_port() -> int:
    """A port <= 55535 that is free, and so is its cluster bus port (port + 10000)."""
    for _ in range(200):
        port = random.randint(20000, 55000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


class LocalCluster:
    """Three cluster-enabled redis-servers, each owning a third of the slots."""

    def __init__(self, nodes: int = 3) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="intentflow-rc-"))
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        exe = _find_redis_server()
        for _ in range(nodes):
            port = _free_cluster_port()
            while port in self.ports:
                port = _free_cluster_port()
            self.ports.append(port)
            cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
            cmd += ["--cluster-config-file", str(self.dir / f"nodes-{port}.conf")]
            cmd += ["--dir", str(self.dir), "--save", "", "--appendonly", "no"]
            cmd += ["--logfile", str(self.dir / f"redis-{port}.log")]
            self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        clients = [connect(f"redis://127.0.0.1:{p}/0", socket_timeout=2.0) for p in self.ports]
        try:
            for proc, client in zip(self.procs, clients, strict=True):
                while True:
                    if proc.poll() is not None:
                        raise RuntimeError(f"redis-server exited with {proc.returncode}")
                    try:
                        client.ping()
                        break
                    except redis.ConnectionError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.02)
            bounds = [SLOTS * i // len(clients) for i in range(len(clients) + 1)]
            for i, client in enumerate(clients):
                client.execute_command("CLUSTER ADDSLOTS", *range(bounds[i], bounds[i + 1]))
            for client in clients[1:]:
                client.execute_command("CLUSTER MEET", "127.0.0.1", self.ports[0])
            while not all(
                c.execute_command("CLUSTER INFO")["cluster_state"] == "ok" for c in clients
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError("the cluster did not reach cluster_state:ok")
                time.sleep(0.05)
        finally:
            for c in clients:
                c.close()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    local = LocalCluster()
    try:
        local.start()
    except (RuntimeError, TimeoutError, redis.RedisError, OSError) as err:
        local.close()
        pytest.skip(f"could not start a local Redis Cluster: {err}")
    yield local
    local.close()


@pytest.fixture
def rc(cluster: LocalCluster) -> Iterator[RedisCluster]:
    client = RedisCluster.from_url(cluster.url)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    client.close()


def cluster_config(cluster: LocalCluster, **kw: object) -> RedisSinkConfig:
    stream, seen = cluster_key_names("intentflow:alerts")
    return RedisSinkConfig(url=cluster.url, alerts_stream=stream, seen_key_prefix=seen, **kw)  # type: ignore[arg-type]


def test_the_alert_keys_share_one_slot_and_the_rest_spread(rc: RedisCluster) -> None:
    stream, seen = cluster_key_names("intentflow:alerts")
    assert (stream, seen) == ("intentflow:{alerts}", "intentflow:{alerts}:seen:")
    node = rc.get_primaries()[0].redis_connection
    server_slot = int(node.execute_command("CLUSTER KEYSLOT", stream))
    assert server_slot == slot_of(stream)
    for alert_id in ("a-1", "al-0042", "x" * 80):
        assert int(node.execute_command("CLUSTER KEYSLOT", seen + alert_id)) == server_slot
    assert hash_tag("app:{alerts}") == "alerts"
    assert cluster_key_names("app:{alerts}") == ("app:{alerts}", "app:{alerts}:seen:")
    with pytest.raises(ConfigError, match="hash tag"):
        cluster_key_names("app:alerts")
    with pytest.raises(ConfigError, match="share a hash tag"):
        RedisClusterOutputWriter(
            RedisSinkConfig(url="redis://x", alerts_stream="intentflow:{alerts}")
        )


def _batch(n_alerts: int, entities: int) -> list[Output]:
    out: list[Output] = [
        AlertOut({"alert_id": f"al-{i}", "entity_id": f"c-{i % entities}", "score": i / 100})
        for i in range(n_alerts)
    ]
    out += [ScoreOut(f"c-{i}", 0.5, 1000 + i, "m1") for i in range(entities)]
    out.append(DeadLetterOut({"reason": "malformed_json"}))
    return out


def _alert_ids(rc: RedisCluster, stream: str) -> list[str]:
    return [orjson.loads(f[b"alert"])["alert_id"] for _id, f in rc.xrange(stream)]


def test_each_alert_is_written_once_across_replays(rc: RedisCluster, cluster: LocalCluster) -> None:
    cfg = cluster_config(cluster)
    writer = RedisClusterOutputWriter(cfg)
    batch = _batch(30, 60)
    writer.write_batch(batch)
    writer.write_batch(batch)  # a replayed batch after a resume
    writer.write_batch([*batch[:5], AlertOut({"alert_id": "al-new", "entity_id": "c-1"})])
    assert _alert_ids(rc, cfg.alerts_stream) == [f"al-{i}" for i in range(30)] + ["al-new"]
    assert (writer.alerts_written, writer.alerts_duplicate) == (31, 35)
    assert writer.scores_written == 2 * 60  # the third batch holds alerts only
    ttl = rc.ttl(cfg.seen_key_prefix + "al-3")
    assert 0 < ttl <= cfg.seen_ttl_s
    # score keys spread over the cluster's nodes
    owners = {rc.get_node_from_key(f"intentflow:score:c-{i}").name for i in range(60)}
    assert len(owners) == 3
    assert rc.hgetall("intentflow:score:c-7") == {b"score": b"0.5", b"ts": b"1007", b"model": b"m1"}
    assert rc.xlen("intentflow:dlq") == 2  # dead letters are at-least-once
    writer.close()


def test_lost_scripts_are_loaded_again(rc: RedisCluster, cluster: LocalCluster) -> None:
    cfg = cluster_config(cluster)
    writer = RedisClusterOutputWriter(cfg)
    writer.write_batch(_batch(3, 2))
    for node in rc.get_primaries():  # as after a failover to a fresh replica
        node.redis_connection.script_flush()
    writer.write_batch([AlertOut({"alert_id": "after-flush", "entity_id": "c-1"})])
    assert _alert_ids(rc, cfg.alerts_stream) == ["al-0", "al-1", "al-2", "after-flush"]
    assert writer.script_loads == 2
    writer.close()


def test_the_engine_writes_its_alerts_to_the_cluster(
    rc: RedisCluster, cluster: LocalCluster
) -> None:
    payloads = gen_payloads(4000, seed=8)
    cfg = demo_config(short_run=True)
    expected = decisions(run_memory(cfg, items_of(payloads)))
    assert len(expected) > 10
    cfg = cfg.with_overrides({"output.sink": "redis-cluster", "output.cluster_url": cluster.url})
    sink = make_output(cfg)
    assert isinstance(sink, RedisClusterSink)
    assert sink.config.alerts_stream == "intentflow:{alerts}"
    from intentflow.dataflows.flow import build_flow

    run_main(build_flow(cfg, TestingSource(items_of(payloads), batch_size=500), sink))
    docs = [orjson.loads(f[b"alert"]) for _id, f in rc.xrange("intentflow:{alerts}")]
    assert sorted((d["alert_id"], d["action"]["id"], d["score"]) for d in docs) == expected


def test_a_missing_cluster_url_or_a_plain_server_is_refused(cluster: LocalCluster) -> None:
    cfg = demo_config(short_run=True).with_overrides({"output.sink": "redis-cluster"})
    with pytest.raises(ConfigError, match="cluster_url"):
        make_output(cfg)
    with contextlib.ExitStack() as stack:
        from intentflow.errors import SinkError
        from intentflow.redisutil import EmbeddedRedis

        plain = stack.enter_context(EmbeddedRedis(port=_free_cluster_port()))
        writer = RedisClusterOutputWriter(replace(cluster_config(cluster), url=plain.url))
        with pytest.raises(SinkError, match="not a reachable Redis Cluster"):
            writer.write_batch(_batch(1, 1))

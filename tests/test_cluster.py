"""Several engine processes: Bytewax's key routing, partition affinity, local clusters."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import bytewax.operators as op
import orjson
import pytest
import redis
from bytewax.dataflow import Dataflow
from bytewax.run import cli_main
from bytewax.testing import TestingSource
from flowkit import SHORT_RUN_TOML, decisions, demo_config, gen_payloads, items_of, run_memory
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from intentflow.cluster import (
    AFFINITY_MODULUS,
    ENGINE_STEP,
    AffinitySource,
    Placement,
    affine_source,
    affinity_keys,
    bytewax_route,
    check_shard_keys,
    parse_addresses,
    prepare_placement_recovery,
)
from intentflow.commands.produce import Producer
from intentflow.config import Config
from intentflow.dataflows.sources import RedisStreamSource, partition_for
from intentflow.errors import ConfigError, RecoveryError

DEMO_TOML = SHORT_RUN_TOML  # the runs must alert early
DIVISORS_840 = [w for w in range(1, 841) if AFFINITY_MODULUS % w == 0]


def cfg_with(shards: int, *, affinity: bool, **recovery: Any) -> Config:
    cfg = demo_config(short_run=True)
    cfg = replace(cfg, engine=replace(cfg.engine, shards=shards, affinity=affinity))
    if recovery:
        cfg = replace(cfg, recovery=replace(cfg.recovery, **recovery))
    return cfg


# --- Bytewax's routing ---------------------------------------------------------------------


class _Echo(op.StatefulBatchLogic[str, str, None]):
    def on_batch(self, values: list[str]) -> tuple[list[str], bool]:
        return values, False

    def snapshot(self) -> None:
        return None


@pytest.mark.parametrize("workers", [2, 3, 5])
def test_bytewax_route_predicts_where_bytewax_sends_a_key(workers: int) -> None:
    keys = [f"s{i}" for i in range(40)] + list(affinity_keys(12))
    keys += [f"an account id that spans several blocks #{i}" for i in range(20)] + ["", "é"]
    seen: dict[str, int] = {}
    flow = Dataflow("route")
    keyed = op.key_on("key", op.input("inp", flow, TestingSource(keys)), lambda k: k)
    out = op.stateful_batch("echo", keyed, lambda _resume: _Echo())
    op.inspect_debug("where", out, lambda _s, item, _e, worker: seen.__setitem__(item[0], worker))
    cli_main(flow, workers_per_process=workers)  # worker threads of this process
    assert set(seen) == set(keys)
    assert {k: bytewax_route(k, workers) for k in keys} == seen


@settings(max_examples=40, deadline=None)
@given(shards=st.integers(1, 24), workers=st.sampled_from(DIVISORS_840[:16]))
def test_affinity_keys_send_shard_i_to_worker_i_mod_workers(shards: int, workers: int) -> None:
    keys = affinity_keys(shards)
    assert len(set(keys)) == shards
    assert all(k == f"s{i}" or k.startswith(f"s{i}~") for i, k in enumerate(keys))
    assert [bytewax_route(k, workers) for k in keys] == [i % workers for i in range(shards)]


def test_affinity_keys_depend_on_the_shard_count_alone() -> None:
    assert affinity_keys(6)[:4] == affinity_keys(4)
    assert affinity_keys(4) == affinity_keys(4)


# --- placement ------------------------------------------------------------------------------


@pytest.mark.parametrize(("processes", "per_process"), [(1, 1), (2, 1), (3, 1), (2, 2)])
def test_each_partition_is_read_by_exactly_the_process_owning_its_shard(
    processes: int, per_process: int
) -> None:
    shards = 12
    inner = RedisStreamSource(url="redis://unused", prefix="ev:", partitions=shards)
    addresses = tuple(f"h{i}:1" for i in range(processes)) if processes > 1 else ()
    listed = [
        AffinitySource(
            inner, affinity_keys(shards), Placement(processes, pid, per_process, addresses)
        ).list_parts()
        for pid in range(processes)
    ]
    workers = processes * per_process
    for pid, parts in enumerate(listed):
        want = [f"ev:{i}" for i in range(shards) if (i % workers) // per_process == pid]
        assert parts == want
    assert sorted(p for parts in listed for p in parts) == sorted(inner.list_parts())


def test_a_layout_without_one_partition_per_shard_is_refused() -> None:
    cfg = cfg_with(4, affinity=True)
    with pytest.raises(ConfigError, match="one input partition per shard"):
        affine_source(cfg, RedisStreamSource(url="redis://unused", partitions=2), None)
    placement = Placement(5, 0, 1, tuple(f"h{i}:1" for i in range(5)))
    with pytest.raises(ConfigError, match="every process needs"):
        affine_source(cfg, RedisStreamSource(url="redis://unused", partitions=4), placement)


def test_placement_and_addresses_are_checked() -> None:
    assert parse_addresses("a:1, b:2") == ("a:1", "b:2")
    with pytest.raises(ConfigError, match="host:port"):
        parse_addresses("a:1;b")
    with pytest.raises(ConfigError, match="--process-id 2"):
        Placement(2, 2, 1, ("a:1", "b:1"))
    with pytest.raises(ConfigError, match="need 3 addresses"):
        Placement(3, 0, 1, ("a:1", "b:1"))


def test_affinity_changes_no_decision() -> None:
    items = items_of(gen_payloads(4000, seed=3))
    plain = decisions(run_memory(cfg_with(4, affinity=False), items))
    assert len(plain) > 20
    assert decisions(run_memory(cfg_with(4, affinity=True), items)) == plain


# --- recovery -------------------------------------------------------------------------------


def test_a_process_of_a_multi_host_cluster_keeps_its_own_recovery_partition(
    tmp_path: Path,
) -> None:
    rec = tmp_path / "rec"
    cfg = cfg_with(4, affinity=True, dir=str(rec))
    one_of_three = Placement(3, 1, 1, ("a:1", "b:1", "c:1"), shared_recovery=False)
    with pytest.raises(RecoveryError, match="--init-recovery"):
        prepare_placement_recovery(cfg, init=False, placement=one_of_three, workers=1)
    assert prepare_placement_recovery(cfg, init=True, placement=one_of_three, workers=1)
    assert sorted(p.name for p in rec.glob("part-*.sqlite3")) == ["part-1.sqlite3"]
    with sqlite3.connect(rec / "part-1.sqlite3") as con:
        assert con.execute("SELECT part_index, part_count FROM parts").fetchall() == [(1, 3)]
    assert (rec.stat().st_mode & 0o077) == 0
    assert prepare_placement_recovery(cfg, init=False, placement=one_of_three, workers=1)
    one_of_four = Placement(4, 1, 1, ("a:1", "b:1", "c:1", "d:1"), shared_recovery=False)
    with pytest.raises(RecoveryError, match="partition 1 of 3"):
        prepare_placement_recovery(cfg, init=True, placement=one_of_four, workers=1)


def test_recovery_refuses_state_under_other_shard_keys(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    run_memory(cfg_with(2, affinity=False), items_of(gen_payloads(300, seed=4)), recovery_dir=rec)
    with sqlite3.connect(rec / "part-0.sqlite3") as con:
        stored = {
            r[0]
            for r in con.execute("SELECT state_key FROM snaps WHERE step_id = ?", (ENGINE_STEP,))
        }
    assert stored == {"s0", "s1"}
    check_shard_keys(rec, ["s0", "s1"])
    with pytest.raises(RecoveryError, match=r"engine\.affinity"):
        check_shard_keys(rec, affinity_keys(2))


# --- local clusters ------------------------------------------------------------------------


def _free_run(n: int) -> int:
    """A port P such that P..P+n-1 are free on loopback."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue


def _scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def _cluster(url: str, *extra: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "intentflow.cli", "run", "--redis-url", url, "--config"]
    cmd += [DEMO_TOML, "--partitions", "2", "--shards", "2", "--processes", "2", *extra]
    with log.open("ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=f)


def _wait(cond: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 150
    while not cond():
        if proc.poll() is not None:
            pytest.fail(
                f"cluster exited {proc.returncode} waiting for {what}:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _kill_9(proc: subprocess.Popen[bytes]) -> None:
    """Crash the whole cluster: every process with SIGKILL."""
    for pid in _children(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait()


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                    kids.append(int(entry.name))
    return kids


def _sentinels(tag: str, ts_ms: int) -> list[bytes]:
    """One event of an entity of its own per input stream (the last of each)."""
    out = []
    for p in range(2):
        n = 0
        while partition_for(f"{tag}-{n}", 2) != p:
            n += 1
        entity = f"{tag}-{n}"
        out.append(
            orjson.dumps(
                {
                    "event_id": entity,
                    "ts": ts_ms,
                    "entity_id": entity,
                    "type": "page_view",
                    "props": {"page": "/x", "category": "home", "duration_s": 1},
                }
            )
        )
    return out


def test_two_processes_decide_like_one_exchange_nothing_and_resume(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    payloads = gen_payloads(4000, seed=17)
    first, second = payloads[:2000], payloads[2000:]
    marks1 = _sentinels("mark1", int(orjson.loads(first[-1])["ts"]))
    marks2 = _sentinels("mark2", int(orjson.loads(second[-1])["ts"]))
    # Per stream, the engine sees exactly this order (the producer keeps it per stream).
    expected = decisions(
        run_memory(cfg_with(2, affinity=False), items_of(first + marks1 + second + marks2))
    )
    assert len(expected) > 50

    producer = Producer(redis_client, "intentflow:events:", 2)
    producer.send(first + marks1)
    rec = tmp_path / "recovery"
    log = tmp_path / "cluster.log"
    port = _free_run(2)
    common = ("--recovery-dir", str(rec), "--snapshot-interval", "0.2", "--metrics-port", str(port))

    def scored(marks: list[bytes]) -> Callable[[], bool]:
        ids = [orjson.loads(m)["entity_id"] for m in marks]
        return lambda: all(redis_client.exists(f"intentflow:score:{e}") for e in ids)

    proc = _cluster(redis_url, *common, "--init-recovery", log=log)
    try:
        _wait(scored(marks1), proc, log, "the first half")
        scrapes = [_scrape(port), _scrape(port + 1)]
        assert len(_children(proc.pid)) == 2
    finally:
        _kill_9(proc)  # state resumes from the last snapshot; alerts after it are replayed
    for shard in range(2):  # each stream is read by the process that owns its shard
        readers = [
            i
            for i, sc in enumerate(scrapes)
            if any(
                lab.get("partition") == str(shard)
                for lab, _ in sc["intentflow_source_backlog_entries"]
            )
        ]
        owners = [
            i
            for i, sc in enumerate(scrapes)
            if any(
                lab.get("shard") == f"s{shard}" and v > 0
                for lab, v in sc.get("intentflow_events_processed_total", [])
            )
        ]
        assert readers == owners == [shard]

    producer.send(second + marks2)
    proc = _cluster(redis_url, *common, log=log)  # resumes from the snapshots
    try:
        _wait(scored(marks2), proc, log, "the second half after the resume")
        time.sleep(0.5)  # anything written twice would show up now
    finally:
        _kill_9(proc)
    docs = [orjson.loads(f[b"alert"]) for _id, f in redis_client.xrange("intentflow:alerts")]
    assert len({d["alert_id"] for d in docs}) == len(docs)
    assert sorted((d["alert_id"], d["action"]["id"], d["score"]) for d in docs) == expected


def test_when_one_process_dies_the_cluster_stops_with_an_error(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    log = tmp_path / "cluster.log"
    proc = _cluster(redis_url, "--metrics-port", "0", log=log)
    try:
        deadline = time.monotonic() + 60
        while len(kids := _children(proc.pid)) < 2:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the processes did not start"
            time.sleep(0.05)
        os.kill(max(kids), signal.SIGKILL)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code != 0
    assert not [k for k in kids if Path(f"/proc/{k}").exists()], "the other process is stopped"
    assert "exited with code" in log.read_text()


def test_more_processes_than_partitions_is_refused_before_anything_starts() -> None:
    from intentflow.cluster import run_local_cluster

    with pytest.raises(ConfigError, match="every process needs at least one"):
        run_local_cluster(cfg_with(2, affinity=True), processes=3)

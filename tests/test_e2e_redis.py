"""The engine as a process against a real redis-server: alerts, dead letters, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from importlib import resources
from pathlib import Path

import jsonschema
import orjson
import pytest
import redis
from flowkit import SHORT_RUN_TOML, decisions, demo_config, gen_payloads, items_of, run_memory

from intentflow.commands.produce import Producer

DEMO_TOML = SHORT_RUN_TOML  # the runs must alert early
ALERTS = jsonschema.Draft202012Validator(
    json.loads(resources.files("intentflow").joinpath("schemas/alert.schema.json").read_text())
)


def engine(url: str, *extra: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "intentflow.cli",
        "run",
        "--redis-url",
        url,
        "--source",
        "redis",
        "--config",
        DEMO_TOML,
        *extra,
    ]
    with log.open("ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=f)


def wait_for(cond: Callable[[], bool], timeout: float, what: str, proc=None, log=None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            pytest.fail(
                f"engine exited {proc.returncode} while waiting for {what}:\n"
                + (log.read_text()[-3000:] if log else "")
            )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def alert_docs(client: redis.Redis) -> list[dict]:
    return [orjson.loads(f[b"alert"]) for _id, f in client.xrange("intentflow:alerts")]


@pytest.fixture
def running(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log = tmp_path / "engine.log"
    proc = engine(redis_url, log=log)
    try:
        yield proc, log
    finally:
        stop(proc)


def test_external_producer_gets_alerts_and_garbage_is_dead_lettered(
    running: tuple[subprocess.Popen[bytes], Path], redis_client: redis.Redis
) -> None:
    proc, log = running
    payloads = gen_payloads(8000, seed=5)
    producer = Producer(redis_client, "intentflow:events:", 1)
    for i in range(0, len(payloads), 500):
        producer.send(payloads[i : i + 500])
    garbage = [b"{not json", b'{"event_id": "x"}', b"\xff\xfe\x00", b"[]"]
    producer.send(garbage)
    redis_client.xadd("intentflow:events:0", {b"something": b"else"})  # no event field

    wait_for(lambda: redis_client.xlen("intentflow:dlq") >= 5, 90, "dead letters", proc, log)
    wait_for(lambda: redis_client.xlen("intentflow:alerts") > 10, 90, "alerts", proc, log)
    assert proc.poll() is None, "bad input must not stop the flow"
    # The effective input batch is logged at start: the Redis source's own, 250.
    assert "running: source=redis partitions=1 batch=250 " in log.read_text()

    reasons = sorted(
        orjson.loads(f[b"dlq"])["reason"] for _id, f in redis_client.xrange("intentflow:dlq")
    )
    assert reasons == sorted(
        ["malformed_json", "missing_field", "invalid_utf8", "not_an_object", "missing_payload"]
    )
    docs = alert_docs(redis_client)
    for doc in docs:
        ALERTS.validate(doc)
    assert len({d["alert_id"] for d in docs}) == len(docs)
    entity = docs[0]["entity_id"]
    score = redis_client.hgetall(f"intentflow:score:{entity}")
    assert {b"score", b"ts", b"model"} <= set(score)
    assert 0 < redis_client.ttl(f"intentflow:score:{entity}") <= 7 * 86400


def test_kill_9_and_resume_loses_and_duplicates_nothing(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    payloads = gen_payloads(15000, seed=21, poison_fraction=0.005)
    # one shard per input partition, as docs/scaling.md says: each shard then reads its
    # partition in order, and the engine's alerts equal those of this in-memory run
    cfg = demo_config(short_run=True)
    out = run_memory(replace(cfg, engine=replace(cfg.engine, shards=2)), items_of(payloads))
    expected = {d[0] for d in decisions(out)}
    assert len(expected) > 50

    producer = Producer(redis_client, "intentflow:events:", 2)
    for i in range(0, len(payloads), 1000):
        producer.send(payloads[i : i + 1000])
    rec = tmp_path / "recovery"
    log = tmp_path / "engine.log"
    args = ("--partitions", "2", "--shards", "2", "--recovery-dir", str(rec))
    args += ("--snapshot-interval", "0.2")
    first = engine(redis_url, *args, "--init-recovery", log=log)
    try:
        wait_for(
            lambda: redis_client.xlen("intentflow:alerts") >= len(expected) // 3,
            120,
            "first alerts",
            first,
            log,
        )
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    assert redis_client.xlen("intentflow:alerts") < len(expected), "killed too late to test"
    assert (rec.stat().st_mode & 0o077) == 0, "the recovery directory must be owner-only"

    second = engine(redis_url, *args, log=log)
    try:
        wait_for(
            lambda: redis_client.xlen("intentflow:alerts") >= len(expected),
            120,
            "all alerts after resume",
            second,
            log,
        )
        time.sleep(1.0)  # anything extra would show up now
    finally:
        stop(second)
    ids = [d["alert_id"] for d in alert_docs(redis_client)]
    assert len(ids) == len(set(ids)), "each alert_id is in the stream once"
    assert set(ids) == expected


def test_resume_refuses_a_missing_recovery_directory(redis_url: str, tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "intentflow.cli",
            "run",
            "--redis-url",
            redis_url,
            "--recovery-dir",
            str(tmp_path / "nowhere"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "does not exist" in out.stderr
    assert "--init-recovery" in out.stderr


def test_bytewax_run_entry_point(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    payloads = gen_payloads(500, seed=9)
    Producer(redis_client, "intentflow:events:", 1).send(payloads)
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "INTENTFLOW_CONFIG": DEMO_TOML,
        "INTENTFLOW__INPUT__COUNT": "500",
    }
    out = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "intentflow.dataflows.main:get_flow"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    entities = {orjson.loads(p)["entity_id"] for p in payloads}
    keys = {k.decode().rpartition(":")[2] for k in redis_client.keys("intentflow:score:*")}
    assert keys == entities

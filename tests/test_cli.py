"""The command line: help everywhere, replay, produce and tail against a real Redis."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import orjson
import pytest
import redis
from flowkit import gen_payloads

DEMO_TOML = str(resources.files("intentflow").joinpath("defaults/demo.toml"))


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "intentflow.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("command", ["demo", "run", "produce", "tail", "replay"])
def test_every_command_has_help_with_the_shared_flags(command: str) -> None:
    out = cli(command, "--help")
    assert out.returncode == 0, out.stderr
    for flag in ("--redis-url", "--partitions", "--events-prefix", "--alerts-stream"):
        assert flag in out.stdout


def test_replay_a_file(tmp_path: Path, redis_url: str, redis_client: redis.Redis) -> None:
    path = tmp_path / "events.jsonl"
    payloads = gen_payloads(6000, seed=3, poison_fraction=0.01)
    path.write_bytes(b"\n".join(payloads) + b"\n")
    out = cli("replay", str(path), "--redis-url", redis_url, "--config", DEMO_TOML)
    assert out.returncode == 0, out.stderr
    assert "6,000" in out.stdout  # input lines
    dlq = redis_client.xlen("intentflow:dlq")
    assert dlq > 0
    assert f"{dlq:,}" in out.stdout
    assert redis_client.xlen("intentflow:alerts") > 0


def test_produce_then_tail(redis_url: str, redis_client: redis.Redis) -> None:
    out = cli("produce", "--redis-url", redis_url, "--count", "1200", "--partitions", "3")
    assert out.returncode == 0, out.stderr
    lens = [redis_client.xlen(f"intentflow:events:{i}") for i in range(3)]
    assert sum(lens) == 1200
    assert all(n > 0 for n in lens), "events are spread over the partitions"
    # Routing is by account: one account's events all land in one stream.
    where: dict[str, set[int]] = {}
    for i in range(3):
        for _id, fields in redis_client.xrange(f"intentflow:events:{i}"):
            ev = orjson.loads(fields[b"event"])
            where.setdefault(ev.get("account_id") or ev["entity_id"], set()).add(i)
    assert all(len(parts) == 1 for parts in where.values())

    redis_client.xadd(
        "intentflow:alerts",
        {
            b"alert": orjson.dumps(
                {
                    "alert_id": "a1",
                    "entity_id": "c-1",
                    "score": 0.9,
                    "action": {"id": "call_now"},
                    "reasons": [],
                }
            )
        },
    )
    out = cli("tail", "--redis-url", redis_url, "--from-start", "--json", "--count", "1")
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout.strip())["alert_id"] == "a1"


def test_errors_are_clear_and_exit_non_zero() -> None:
    out = cli("run", "--redis-url", "redis://user:s3cret@127.0.0.1:1/0", timeout=60)
    assert out.returncode == 2
    assert "s3cret" not in out.stderr
    assert "127.0.0.1:1" in out.stderr
    out = cli("replay", "/nonexistent.jsonl", "--redis-url", "redis://127.0.0.1:1")
    assert out.returncode != 0

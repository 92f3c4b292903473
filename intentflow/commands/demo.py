"""``intentflow demo``: the whole engine on synthetic journeys, end to end.

Starts Redis (embedded unless a URL is given), the engine as a child process
(``intentflow run`` on Redis Streams, with a recovery directory), a producer
thread that XADDs live synthetic events, and shows alerts as it reads them
from the alert stream. Latency is the reader's XREAD time minus the
producer's XADD time of the triggering event.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import redis
from rich.console import Console

from intentflow.commands.common import config_from_args, stream_len
from intentflow.commands.produce import Producer, live_generator
from intentflow.config import Config
from intentflow.display import alert_latency_ms, alert_line, percentile, summary_table
from intentflow.errors import IntentflowError
from intentflow.redisutil import connect, ping_or_fail, redis_url_or_embedded
from intentflow.runtime import generator_config

__all__ = ["cmd_demo"]

_READY_TIMEOUT_S = 120.0
#: Settings of the demo (short label horizon), used unless --config is given.
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "defaults" / "demo.toml"
#: Event time runs this much faster than the wall clock in the demo.
TIME_SCALE = 10.0


def _engine_cmd(args: argparse.Namespace, url: str, prefix: str, rec_dir: str) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "intentflow.cli",
        "run",
        "--redis-url",
        url,
        "--source",
        "redis",
        "--partitions",
        str(args.partitions or 1),
        "--events-prefix",
        prefix,
        "--recovery-dir",
        rec_dir,
        "--init-recovery",
        "--snapshot-interval",
        "5",
    ]
    cmd += ["--config", args.config or str(DEMO_CONFIG)]
    if args.alerts_stream:
        cmd += ["--alerts-stream", args.alerts_stream]
    return cmd


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo and print a summary; exit 0 when the engine ran cleanly."""
    console = Console(highlight=False)
    config = config_from_args(args)
    with (
        redis_url_or_embedded(config.redis.url or None) as url,
        tempfile.TemporaryDirectory(prefix="intentflow-demo-") as tmp,
    ):
        embedded = not config.redis.url
        config = config.with_overrides({"redis.url": url})
        client = connect(url)
        ping_or_fail(client, url)
        # A run-unique input prefix, so that a shared Redis never feeds old events in.
        prefix = f"{config.input.events_prefix}demo-{os.getpid()}-{int(time.time())}:"
        partitions = config.input.partitions
        out = config.output
        before_alerts = stream_len(client, out.alerts_stream)
        before_dlq = stream_len(client, out.dlq_stream)
        console.print(
            f"[bold]intentflow demo[/]: Redis {'embedded' if embedded else 'external'}, "
            f"{args.rate:,.0f} events/s for {args.duration:g} s, {args.entities:,} contacts"
        )
        log_path = Path(tmp) / "engine.log"
        rec_dir = str(Path(tmp) / "recovery")
        with log_path.open("wb") as log_file:
            engine = subprocess.Popen(
                _engine_cmd(args, url, prefix, rec_dir), stdout=log_file, stderr=log_file
            )
            try:
                return _drive(
                    args,
                    console,
                    config,
                    client,
                    engine,
                    prefix,
                    partitions,
                    log_path,
                    before_alerts,
                    before_dlq,
                )
            finally:
                if engine.poll() is None:
                    engine.send_signal(signal.SIGINT)
                    try:
                        engine.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        engine.kill()
                        engine.wait()
                client.close()


def _engine_failed(engine: subprocess.Popen[bytes], log_path: Path) -> IntentflowError:
    tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
    return IntentflowError(f"the engine exited with code {engine.returncode}:\n" + "\n".join(tail))


def _drive(
    args: argparse.Namespace,
    console: Console,
    config: Config,
    client: redis.Redis,
    engine: subprocess.Popen[bytes],
    prefix: str,
    partitions: int,
    log_path: Path,
    before_alerts: int,
    before_dlq: int,
) -> int:
    gen_cfg = generator_config(
        config.generator, seed=args.seed, entities=args.entities, poison_fraction=args.poison
    )
    gen = live_generator(gen_cfg, args.rate, TIME_SCALE)
    producer = Producer(client, prefix, partitions)
    alerts_key = config.output.alerts_stream
    last_id = _last_id(client, alerts_key)

    # Warm-up: one batch, then wait until the engine has scored it (start-up,
    # kernel compilation), so that the latency figures describe steady state.
    warm = gen.next_events(50)
    producer.send([orjson.dumps(e) for e in warm])
    probe = f"{config.output.score_key_prefix}{warm[-1]['entity_id']}"
    console.print("starting the engine (a first start compiles the feature kernels) ...")
    t0 = time.monotonic()
    while not client.exists(probe):
        if engine.poll() is not None:
            raise _engine_failed(engine, log_path)
        if time.monotonic() - t0 > _READY_TIMEOUT_S:
            raise IntentflowError(f"the engine did not start within {_READY_TIMEOUT_S:.0f} s")
        time.sleep(0.1)
    console.print(f"engine ready after {time.monotonic() - t0:.1f} s; streaming ...\n")

    errors: list[BaseException] = []
    sent_before = producer.sent

    def produce_loop() -> None:
        start = time.monotonic()
        try:
            while (elapsed := time.monotonic() - start) < args.duration:
                due = int(elapsed * args.rate) - (producer.sent - sent_before)
                if due <= 0:
                    time.sleep(0.002)
                    continue
                producer.send(gen.next_payloads(min(due, 500)))
        except BaseException as err:
            errors.append(err)

    measured_from = time.time() * 1000.0
    thread = threading.Thread(target=produce_loop, name="producer", daemon=True)
    thread.start()
    latencies: list[float] = []
    stages: tuple[list[float], list[float], list[float]] = ([], [], [])
    by_action: dict[str, int] = {}
    shown, second = 0, int(time.monotonic())
    drain_until: float | None = None
    reader = connect(config.redis.url)
    while drain_until is None or time.monotonic() < drain_until:
        if engine.poll() is not None:
            raise _engine_failed(engine, log_path)
        if drain_until is None and not thread.is_alive():
            drain_until = time.monotonic() + 1.5
        resp: Any = reader.xread({alerts_key: last_id}, count=500, block=100)
        read_ts = time.time() * 1000.0
        for entry_id, fields in resp[0][1] if resp else []:
            last_id = entry_id
            alert = orjson.loads(fields[b"alert"])
            lat = alert_latency_ms(alert, read_ts)
            produced = (alert.get("trace") or {}).get("produced_ts") or 0.0
            if lat is not None and produced >= measured_from:
                latencies.append(lat)
                stages[0].append(alert["ingest_ts"] - produced)
                stages[1].append(alert["emit_ts"] - alert["ingest_ts"])
                stages[2].append(read_ts - alert["emit_ts"])
            action = (alert.get("action") or {}).get("id", "?")
            by_action[action] = by_action.get(action, 0) + 1
            if int(time.monotonic()) != second:
                shown, second = 0, int(time.monotonic())
            if shown < args.show:
                console.print(alert_line(alert, lat))
                shown += 1
    reader.close()
    if errors:
        raise IntentflowError(f"the producer failed: {errors[0]!r}")
    alerts = stream_len(client, alerts_key) - before_alerts
    dead = stream_len(client, config.output.dlq_stream) - before_dlq
    events = sum(stream_len(client, f"{prefix}{i}") for i in range(partitions))
    rows = [
        ("events produced", f"{events:,}"),
        ("alerts", f"{alerts:,}"),
        ("dead letters", f"{dead:,}"),
        ("alerts by action", ", ".join(f"{k} {v}" for k, v in sorted(by_action.items())) or "-"),
        ("latency p50 (event -> alert)", f"{percentile(latencies, 50):.2f} ms"),
        ("latency p99 (event -> alert)", f"{percentile(latencies, 99):.2f} ms"),
        ("latency max", f"{max(latencies, default=float('nan')):.2f} ms"),
        (
            "p50 by stage: queue / engine / sink+read",
            " / ".join(f"{percentile(v, 50):.2f}" for v in stages) + " ms",
        ),
    ]
    console.print()
    console.print(summary_table("intentflow demo summary", rows))
    return 0


def _last_id(client: redis.Redis, key: str) -> bytes | str:
    last: Any = client.xrevrange(key, count=1)
    return bytes(last[0][0]) if last else "0-0"

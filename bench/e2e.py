"""Scenario ``e2e``: the whole pipeline through a real Redis, one engine process.

Throughput: the engine (``intentflow run --source redis --count ...``) first
works through a pre-loaded warm-up, so that start-up, kernel compilation and
the model's cold start are behind it. Each round then stages N events in a
separate stream and makes them visible to the engine at once with ``RENAME``
onto its input stream; the timed part runs from the ``RENAME`` reply until
the sink has written the score of the round's last event (a sentinel of its
own entity). ``eps`` is the median over rounds of ``(N + 1) / seconds``.

Latency: a fresh engine works through the same kind of warm-up, then a
separate producer process XADDs live events at ``offered_rate`` for D
seconds while this process reads the alert stream with blocking ``XREAD``.
Latency is the reader's wall time when ``XREAD`` returned minus the
producer's ``produced_ts`` of the triggering event (``trace.produced_ts``).
"""

from __future__ import annotations

import argparse
import gc
import math
import multiprocessing
import queue
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.queues import Queue
from typing import Any, Final

import orjson
import redis

from bench.common import (
    BenchError,
    Context,
    Engine,
    Keys,
    Result,
    latency_figures,
    redis_cpu_seconds,
    sentinel_payload,
    wait_until,
)
from intentflow.commands.produce import Producer
from intentflow.display import percentile
from intentflow.generator import BuyerJourneyGenerator, GeneratorConfig
from intentflow.redisutil import connect, ping_or_fail

__all__ = ["HELP", "Latency", "Sizes", "Throughput", "add_arguments", "run"]

HELP: Final = "whole pipeline through Redis: max events/s and event-to-alert latency"

#: Default offered rate of the latency phase as a share of the measured eps ...
RATE_SHARE: Final = 0.5
#: ... within these bounds (events/s).
RATE_BOUNDS: Final = (100.0, 20_000.0)
#: Warn when the engine got less of a core than this in a throughput round ...
BUSY_CPU_SHARE: Final = 0.8
#: Warn when the engine needed longer than this after the producer stopped (a backlog).
BACKLOG_WARN_S: Final = 1.0
#: Below this many samples p99.9 is not meaningful.
MIN_SAMPLES: Final = 1000
_SEND_BATCH: Final = 1000
_READY_TIMEOUT_S: Final = 300.0


@dataclass(frozen=True)
class Sizes:
    """How much work one run does."""

    events: int  # events per throughput round
    rounds: int  # throughput rounds
    warmup: int  # warm-up events before each phase
    duration_s: float  # seconds of live production in the latency phase
    event_time_rate: float  # events per second of event time (density of the journeys)


# The warm-up spans more event time than the demo's one-minute label horizon,
# so that the models have learned from matured labels and alert.
FULL: Final = Sizes(events=100_000, rounds=3, warmup=20_000, duration_s=60.0, event_time_rate=200.0)
QUICK: Final = Sizes(events=10_000, rounds=1, warmup=12_000, duration_s=4.0, event_time_rate=200.0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of this scenario (defaults depend on ``--quick``)."""
    p.add_argument("--events", type=int, help="events per throughput round (100000; quick 10000)")
    p.add_argument("--rounds", type=int, help="throughput rounds (3; quick 1)")
    p.add_argument("--warmup", type=int, help="warm-up events per engine (20000; quick 12000)")
    p.add_argument("--duration", type=float, help="seconds of live production (60; quick 4)")
    p.add_argument(
        "--rate",
        type=float,
        help="offered events/s in the latency phase (default: 50%% of the measured eps, "
        "within 100..20000)",
    )
    p.add_argument("--entities", type=int, default=2000, help="synthetic contacts (2000)")
    p.add_argument("--seed", type=int, default=7, help="generator seed (7)")
    p.add_argument(
        "--snapshot-interval",
        type=float,
        default=0.0,
        metavar="S",
        help="run the engine with a recovery directory and this snapshot interval "
        "(default 0: recovery off)",
    )


def _sizes(args: argparse.Namespace, quick: bool) -> Sizes:
    base = QUICK if quick else FULL
    sizes = Sizes(
        events=args.events or base.events,
        rounds=args.rounds or base.rounds,
        warmup=args.warmup or base.warmup,
        duration_s=args.duration or base.duration_s,
        event_time_rate=base.event_time_rate,
    )
    if sizes.events < 1 or sizes.rounds < 1 or sizes.warmup < 1 or sizes.duration_s <= 0:
        raise BenchError("--events, --rounds, --warmup and --duration must be positive")
    return sizes


def _generator(
    sizes: Sizes, entities: int, seed: int, events_before_now: int
) -> BuyerJourneyGenerator:
    """Journeys whose event time reaches the present after ``events_before_now`` events."""
    span_ms = int(events_before_now / sizes.event_time_rate * 1000.0)
    cfg = GeneratorConfig(
        seed=seed,
        entities=entities,
        start_ms=int(time.time() * 1000) - span_ms,
        events_per_second=sizes.event_time_rate,
    )
    return BuyerJourneyGenerator(cfg)


def _send(producer: Producer, payloads: list[bytes]) -> int:
    """XADD ``payloads`` in pipelined batches; returns the event time of the last one."""
    for i in range(0, len(payloads), _SEND_BATCH):
        producer.send(payloads[i : i + _SEND_BATCH])
    return int(orjson.loads(payloads[-1])["ts"])


def _exists(client: redis.Redis, key: str) -> Callable[[], bool]:
    return lambda: bool(client.exists(key))


def _engine_args(ctx: Context, snapshot_interval_s: float, tag: str) -> list[str]:
    if snapshot_interval_s <= 0:
        return []
    rec = ctx.workdir / f"recovery-{tag}"
    interval = f"{snapshot_interval_s:g}"
    return ["--recovery-dir", str(rec), "--init-recovery", "--snapshot-interval", interval]


def _warm_up(client: redis.Redis, engine: Engine, gen: BuyerJourneyGenerator, warmup: int) -> float:
    """Pre-load ``warmup`` events and a sentinel, start the engine, wait until it is through.

    Returns the seconds from the engine's start until the sentinel was scored.
    """
    keys = engine.keys
    last_ts = _send(Producer(client, keys.events_prefix, 1), gen.next_payloads(warmup))
    Producer(client, keys.events_prefix, 1).send([sentinel_payload("warm", last_ts)])
    t0 = time.monotonic()
    engine.start()
    done = wait_until(
        _exists(client, keys.score_key("bench-warm")),
        timeout_s=_READY_TIMEOUT_S,
        what="the engine to start and process the warm-up",
        poll_s=0.05,
        alive=engine.check_alive,
    )
    return done - t0


# --- throughput ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    """Figures of the throughput phase."""

    eps: float  # median over rounds
    eps_rounds: list[float]
    seconds_rounds: list[float]
    alerts: int  # alerts written during the timed rounds
    dead_letters: int
    startup_s: float  # engine start + warm-up (not timed)
    exit_code: int
    engine_cpu: list[float]  # the engine's CPU time per round / round seconds (Linux)
    redis_cpu: list[float]  # the same for the Redis server (INFO cpu)


def measure_throughput(
    ctx: Context, client: redis.Redis, sizes: Sizes, entities: int, seed: int, snap_s: float
) -> Throughput:
    """Rounds of N pre-staged events through a warm engine; see the module docstring."""
    keys = Keys.unique("e2e-tp")
    n, rounds = sizes.events, sizes.rounds
    gen = _generator(sizes, entities, seed, sizes.warmup + rounds * n)
    count = sizes.warmup + 1 + rounds * (n + 1)
    engine = Engine(
        ctx.url,
        keys,
        ctx.workdir / "engine-throughput.log",
        count=count,
        extra_args=_engine_args(ctx, snap_s, "throughput"),
    )
    try:
        ctx.console.print(
            f"throughput: starting the engine, warm-up of {sizes.warmup:,} events ..."
        )
        startup_s = _warm_up(client, engine, gen, sizes.warmup)
        eps_rounds: list[float] = []
        seconds: list[float] = []
        cpu: list[float] = []
        rcpu: list[float] = []
        alerts_before = int(client.xlen(keys.alerts))
        staging = f"{keys.staging_prefix}0"
        for r in range(rounds):
            stager = Producer(client, keys.staging_prefix, 1)
            last_ts = _send(stager, gen.next_payloads(n))
            tag = f"round-{r}"
            stager.send([sentinel_payload(tag, last_ts)])
            client.rename(staging, f"{keys.events_prefix}0")
            t0 = time.monotonic()
            cpu0, rcpu0 = engine.cpu_seconds(), redis_cpu_seconds(client)
            t1 = wait_until(
                _exists(client, keys.score_key(f"bench-{tag}")),
                timeout_s=max(120.0, n / 500.0),
                what=f"throughput round {r + 1}",
                poll_s=0.002,
                alive=engine.check_alive,
            )
            cpu1, rcpu1 = engine.cpu_seconds(), redis_cpu_seconds(client)
            if cpu0 is not None and cpu1 is not None:
                cpu.append((cpu1 - cpu0) / (t1 - t0))
            if rcpu0 is not None and rcpu1 is not None:
                rcpu.append((rcpu1 - rcpu0) / (t1 - t0))
            seconds.append(t1 - t0)
            eps_rounds.append((n + 1) / (t1 - t0))
            ctx.console.print(
                f"  round {r + 1}/{rounds}: {n + 1:,} events in {t1 - t0:.2f} s "
                f"= {eps_rounds[-1]:,.0f} events/s"
            )
        code = engine.wait_exit(60.0)
        if code != 0:
            raise BenchError(f"the engine exited with code {code}:\n{engine.log_tail()}")
        alerts = int(client.xlen(keys.alerts)) - alerts_before
        dead = int(client.xlen(keys.dlq)) if client.exists(keys.dlq) else 0
    finally:
        engine.stop()
        keys.cleanup(client)
    return Throughput(
        eps=statistics.median(eps_rounds),
        eps_rounds=eps_rounds,
        seconds_rounds=seconds,
        alerts=alerts,
        dead_letters=dead,
        startup_s=startup_s,
        exit_code=code,
        engine_cpu=cpu,
        redis_cpu=rcpu,
    )


# --- latency -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """Figures of the latency phase (milliseconds)."""

    offered_rate: float
    achieved_rate: float
    events: int
    alerts: int
    latencies: list[float]
    at_s: list[float]  # when each sample's event was produced, seconds into the live phase
    queue: list[float]  # ingest_ts - produced_ts
    engine: list[float]  # emit_ts - ingest_ts
    sink_read: list[float]  # read time - emit_ts
    dead_letters: int
    startup_s: float
    backlog_s: float  # from the producer's end until the engine had scored its last event
    engine_cpu: float  # the engine's CPU time while live / live seconds (NaN off Linux)
    redis_cpu: float  # the same for the Redis server


def _produce_live(
    url: str,
    prefix: str,
    cfg: GeneratorConfig,
    snapshot: Any,
    rate: float,
    duration_s: float,
    out: Queue[tuple[int, float, int]],
) -> None:
    """Producer process: XADD at ``rate`` for ``duration_s``, then a sentinel.

    Sends whatever is due about every millisecond (pipelined, one ``produced_ts``
    per pipeline) and puts ``(sent, seconds, last event time)`` on ``out``.
    """
    gen = BuyerJourneyGenerator.restore(cfg, snapshot)
    client = connect(url)
    producer = Producer(client, prefix, 1)
    last_ts = 0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < duration_s:
        due = int(elapsed * rate) - producer.sent
        if due <= 0:
            time.sleep(0.0005)
            continue
        payloads = gen.next_payloads(min(due, 500))
        producer.send(payloads)
        last_ts = int(orjson.loads(payloads[-1])["ts"])
    seconds = time.monotonic() - start
    sent = producer.sent
    producer.send([sentinel_payload("live-end", last_ts)])
    client.close()
    out.put((sent, seconds, last_ts))


def measure_latency(
    ctx: Context,
    client: redis.Redis,
    sizes: Sizes,
    rate: float,
    entities: int,
    seed: int,
    snap_s: float,
) -> Latency:
    """Live production at ``rate`` against a warm engine; see the module docstring."""
    keys = Keys.unique("e2e-lat")
    gen = _generator(sizes, entities, seed, sizes.warmup)
    engine = Engine(
        ctx.url,
        keys,
        ctx.workdir / "engine-latency.log",
        extra_args=_engine_args(ctx, snap_s, "latency"),
    )
    mp = multiprocessing.get_context("spawn")
    results: Queue[tuple[int, float, int]] = mp.Queue()
    reader = connect(ctx.url)
    producer: Any = None
    try:
        ctx.console.print(f"latency: starting the engine, warm-up of {sizes.warmup:,} events ...")
        startup_s = _warm_up(client, engine, gen, sizes.warmup)
        ctx.console.print(f"  producing {rate:,.0f} events/s for {sizes.duration_s:g} s ...")
        last: Any = client.xrevrange(keys.alerts, count=1)
        last_id: bytes | str = bytes(last[0][0]) if last else "0-0"
        live_from = time.time() * 1000.0
        gc.collect()
        gc.freeze()  # no full collections of start-up objects in the reader while it measures
        producer = mp.Process(
            target=_produce_live,
            args=(
                ctx.url,
                keys.events_prefix,
                gen.config,
                gen.snapshot(),
                rate,
                sizes.duration_s,
                results,
            ),
            name="bench-producer",
            daemon=True,
        )
        producer.start()
        cpu0, rcpu0, t0 = engine.cpu_seconds(), redis_cpu_seconds(client), time.monotonic()
        lat: list[float] = []
        at_s: list[float] = []
        stages: tuple[list[float], list[float], list[float]] = ([], [], [])
        alerts = 0
        summary: tuple[int, float, int] | None = None
        produced_until = backlog_s = math.nan
        end_key = keys.score_key("bench-live-end")
        deadline = time.monotonic() + sizes.duration_s + _READY_TIMEOUT_S
        finished = False
        while not finished:
            engine.check_alive()
            if summary is None:
                if not results.empty():
                    summary = results.get()
                    produced_until = time.monotonic()
                elif not producer.is_alive():
                    try:  # it may have put its result just before exiting
                        summary = results.get(timeout=2.0)
                        produced_until = time.monotonic()
                    except queue.Empty:
                        code = producer.exitcode
                        raise BenchError(f"the producer process exited with code {code}") from None
            if summary is not None and client.exists(end_key):
                finished = True  # one more read below collects the last alerts
                backlog_s = time.monotonic() - produced_until
            if time.monotonic() > deadline:
                raise BenchError("timed out waiting for the engine to process the live events")
            resp: Any = reader.xread(
                {keys.alerts: last_id}, count=1000, block=None if finished else 100
            )
            read_ts = time.time() * 1000.0
            for entry_id, fields in resp[0][1] if resp else []:
                last_id = entry_id
                alerts += 1
                alert = orjson.loads(fields[b"alert"])
                produced = (alert.get("trace") or {}).get("produced_ts")
                if not isinstance(produced, int | float) or produced < live_from:
                    continue  # not caused by a live event: no latency sample
                lat.append(read_ts - produced)
                at_s.append((produced - live_from) / 1000.0)
                stages[0].append(alert["ingest_ts"] - produced)
                stages[1].append(alert["emit_ts"] - alert["ingest_ts"])
                stages[2].append(read_ts - alert["emit_ts"])
        assert summary is not None
        cpu1, rcpu1, t1 = engine.cpu_seconds(), redis_cpu_seconds(client), time.monotonic()
        engine_cpu, redis_cpu = _share(cpu0, cpu1, t1 - t0), _share(rcpu0, rcpu1, t1 - t0)
        producer.join(timeout=10)
        sent, seconds, _ = summary
        dead = int(client.xlen(keys.dlq)) if client.exists(keys.dlq) else 0
    finally:
        if producer is not None and producer.is_alive():
            producer.terminate()
            producer.join(timeout=5)
        engine.stop()
        reader.close()
        keys.cleanup(client)
    return Latency(
        offered_rate=rate,
        achieved_rate=sent / seconds if seconds > 0 else math.nan,
        events=sent,
        alerts=alerts,
        latencies=lat,
        at_s=at_s,
        queue=stages[0],
        engine=stages[1],
        sink_read=stages[2],
        dead_letters=dead,
        startup_s=startup_s,
        backlog_s=backlog_s,
        engine_cpu=engine_cpu,
        redis_cpu=redis_cpu,
    )


# --- the scenario ----------------------------------------------------------------------------


def default_rate(eps: float) -> float:
    """The offered rate used when ``--rate`` is not given.

    >>> default_rate(30_000.0), default_rate(100.0), default_rate(1e6)
    (15000.0, 100.0, 20000.0)
    """
    low, high = RATE_BOUNDS
    return float(min(high, max(low, round(RATE_SHARE * eps))))


def run(args: argparse.Namespace, ctx: Context) -> Result:
    """Both phases; figures for the JSON document and rows for the table."""
    sizes = _sizes(args, ctx.quick)
    if args.rate is not None and args.rate <= 0:
        raise BenchError("--rate must be positive")
    client = connect(ctx.url)
    ping_or_fail(client, ctx.url)
    try:
        tp = measure_throughput(
            ctx, client, sizes, args.entities, args.seed, args.snapshot_interval
        )
        rate = float(args.rate) if args.rate else default_rate(tp.eps)
        lt = measure_latency(
            ctx, client, sizes, rate, args.entities, args.seed, args.snapshot_interval
        )
    finally:
        client.close()

    warnings: list[str] = []
    samples = len(lt.latencies)
    if samples < MIN_SAMPLES:
        warnings.append(
            f"only {samples} latency samples (< {MIN_SAMPLES}): p99.9 is not meaningful; "
            "run longer (--duration) for tail figures"
        )
    if lt.achieved_rate < 0.95 * lt.offered_rate:
        warnings.append(
            f"the producer reached only {lt.achieved_rate:,.0f} of {lt.offered_rate:,.0f} "
            "events/s (CPU-bound machine)"
        )
    cpu_pairs = list(zip(tp.engine_cpu, tp.redis_cpu, strict=False))
    busy = [e + r for e, r in cpu_pairs]
    if busy and min(busy) < BUSY_CPU_SHARE:
        warnings.append(
            f"the engine and Redis together had only {min(busy):.0%} of a core in a "
            "throughput round (they work in turn): other processes were using the machine; "
            "eps is understated"
        )
    if lt.backlog_s > BACKLOG_WARN_S:
        warnings.append(
            f"the engine fell behind the offered rate (it needed {lt.backlog_s:.1f} s after the "
            "producer stopped): the latency figures are mostly queueing; use a lower --rate "
            "(or a machine where the engine gets a whole core)"
        )
    if tp.dead_letters or lt.dead_letters:
        warnings.append(f"{tp.dead_letters + lt.dead_letters} dead letters (expected none)")

    figures: dict[str, Any] = {
        "eps": tp.eps,
        "eps_rounds": tp.eps_rounds,
        "seconds_rounds": tp.seconds_rounds,
        "throughput_events": sizes.rounds * (sizes.events + 1),
        "throughput_alerts": tp.alerts,
        "engine_cpu_rounds": tp.engine_cpu,
        "eps_per_engine_cpu_s": _median(
            [e / c for e, c in zip(tp.eps_rounds, tp.engine_cpu, strict=False) if c > 0]
        ),
        "engine_cpu_live": lt.engine_cpu,
        "redis_cpu_rounds": tp.redis_cpu,
        "redis_cpu_live": lt.redis_cpu,
        "backlog_s": lt.backlog_s,
        "latency_by_second": timeline(lt.at_s, lt.latencies),
        "offered_rate": lt.offered_rate,
        "achieved_rate": lt.achieved_rate,
        "events": lt.events,
        "alerts": lt.alerts,
        "latency_samples": samples,
        **latency_figures(lt.latencies),
        **{f"queue_{k}": v for k, v in _p50_p99(lt.queue).items()},
        **{f"engine_{k}": v for k, v in _p50_p99(lt.engine).items()},
        **{f"sink_read_{k}": v for k, v in _p50_p99(lt.sink_read).items()},
        "dead_letters": tp.dead_letters + lt.dead_letters,
        "throughput_startup_s": tp.startup_s,
        "latency_startup_s": lt.startup_s,
        "params": {
            "events_per_round": sizes.events,
            "rounds": sizes.rounds,
            "warmup_events": sizes.warmup,
            "duration_s": sizes.duration_s,
            "rate_from": "--rate" if args.rate else f"{RATE_SHARE:.0%} of eps",
            "entities": args.entities,
            "seed": args.seed,
            "event_time_rate": sizes.event_time_rate,
            "partitions": 1,
            "snapshot_interval_s": args.snapshot_interval,
        },
    }
    f = figures
    rows = [
        ("throughput rounds", f"{sizes.rounds} x {sizes.events + 1:,} events"),
        ("eps by round", ", ".join(f"{v:,.0f}" for v in tp.eps_rounds)),
        ("eps (median of rounds)", f"{tp.eps:,.0f} events/s"),
        ("alerts in throughput rounds", f"{tp.alerts:,}"),
        (
            "CPU by round: engine / Redis (share of a core)",
            ", ".join(f"{e:.0%}/{r:.0%}" for e, r in cpu_pairs),
        ),
        ("events per engine CPU-second (median)", f"{f['eps_per_engine_cpu_s']:,.0f}"),
        ("offered / achieved rate", f"{lt.offered_rate:,.0f} / {lt.achieved_rate:,.0f} events/s"),
        ("live events / alerts", f"{lt.events:,} / {lt.alerts:,}"),
        ("CPU while live: engine / Redis", f"{lt.engine_cpu:.0%} / {lt.redis_cpu:.0%}"),
        ("backlog when the producer stopped", f"{lt.backlog_s:.2f} s"),
        ("latency samples", f"{samples:,}"),
        ("busiest second: alerts, p50", _busiest(figures["latency_by_second"])),
        ("latency p50 / p99", f"{f['p50_ms']:.2f} / {f['p99_ms']:.2f} ms"),
        ("latency p99.9 / max", f"{f['p999_ms']:.2f} / {f['max_ms']:.2f} ms"),
        (
            "p50 by stage: queue / engine / sink+read",
            f"{f['queue_p50_ms']:.2f} / {f['engine_p50_ms']:.2f} / {f['sink_read_p50_ms']:.2f} ms",
        ),
        (
            "p99 by stage: queue / engine / sink+read",
            f"{f['queue_p99_ms']:.2f} / {f['engine_p99_ms']:.2f} / {f['sink_read_p99_ms']:.2f} ms",
        ),
        (
            "engine start + warm-up (not timed)",
            f"{tp.startup_s:.1f} s / {lt.startup_s:.1f} s",
        ),
    ]
    return Result(figures=figures, rows=rows, warnings=warnings)


def timeline(at_s: list[float], latencies: list[float]) -> list[dict[str, float]]:
    """Samples per second of the live phase (by production time), with p50 and max.

    >>> for row in timeline([0.1, 0.5, 2.0], [3.0, 5.0, 4.0]):
    ...     print(row)
    {'s': 0, 'alerts': 2, 'p50_ms': 3.0, 'max_ms': 5.0}
    {'s': 2, 'alerts': 1, 'p50_ms': 4.0, 'max_ms': 4.0}
    """
    by_s: dict[int, list[float]] = {}
    for t, v in zip(at_s, latencies, strict=True):
        by_s.setdefault(int(t), []).append(v)
    return [
        {"s": k, "alerts": len(v), "p50_ms": percentile(v, 50), "max_ms": max(v)}
        for k, v in sorted(by_s.items())
    ]


def _busiest(rows: list[dict[str, float]]) -> str:
    if not rows:
        return "-"
    top = max(rows, key=lambda r: r["alerts"])
    return f"s {top['s']:.0f}: {top['alerts']:.0f} alerts, {top['p50_ms']:.1f} ms"


def _share(before: float | None, after: float | None, seconds: float) -> float:
    """CPU seconds used between two readings per wall second (NaN when unknown)."""
    if before is None or after is None or seconds <= 0:
        return math.nan
    return (after - before) / seconds


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _p50_p99(values: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99)}

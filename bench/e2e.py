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
It is measured at 25 %, 50 % and 75 % of ``eps`` (``--loads``), each with a
fresh engine; the top-level latency keys are those of the 50 % run. Among
the live events the producer sends latency probes (``--probe-rate``), on
which one rule (``bench/probe-rules.toml``) alerts: in steady state the
model alerts on few events of the synthetic stream.

Also, in the same run: the naive Bytewax + River flow of :mod:`bench.naive`
through the same throughput rounds (``naive_eps``, ``ratio_vs_naive``), the
stage profile of :mod:`bench.profile` (``stages``), memory per entity and at
1M entities from :mod:`bench.memory`, and PNG plots (:mod:`bench.plots`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import multiprocessing
import queue
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.queues import Queue
from pathlib import Path
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

# bench.naive, bench.profile, bench.memory and bench.plots (Bytewax, River, matplotlib)
# are imported where they are used: the latency phase's producer process imports this
# module, and should start in a fraction of a second.
from intentflow.display import percentile
from intentflow.generator import BuyerJourneyGenerator, GeneratorConfig
from intentflow.redisutil import connect, ping_or_fail

__all__ = [
    "HELP",
    "LOADS",
    "Latency",
    "Sizes",
    "Throughput",
    "add_arguments",
    "bounded_rate_warnings",
    "run",
]

HELP: Final = (
    "whole pipeline through Redis: max events/s, latency at 25, 50 and 75 percent of it, "
    "the naive baseline, stage costs and memory"
)

#: Default offered rate of the main latency run as a share of the measured eps ...
RATE_SHARE: Final = 0.5
#: Offered loads of the latency runs, percent of eps; the top-level keys are the 50 % run's.
LOADS: Final = (25, 50, 75)
MAIN_LOAD: Final = 50
#: The rules in force in the stage profile by default (five example rules).
EXAMPLE_RULES: Final = Path(__file__).resolve().parents[1] / "examples" / "rules.toml"
#: The latency engines' one rule: it alerts on every latency probe.
PROBE_RULES: Final = Path(__file__).resolve().parent / "probe-rules.toml"
#: The probes' rule id, event type and contacts (``bench-probe-00`` ...).
PROBE_RULE: Final = "bench_latency_probe"
PROBE_TYPE: Final = "bench_probe"
PROBE_CONTACTS: Final = 64
#: Latency probes per second of the live phase (``--probe-rate``).
PROBE_RATE: Final = 50.0
#: ... within these bounds (events/s); a load whose rate they bound gets a warning.
RATE_BOUNDS: Final = (100.0, 200_000.0)
#: Warn when the engine got less of a core than this in a throughput round ...
BUSY_CPU_SHARE: Final = 0.8
#: Warn when the engine needed longer than this after the producer stopped (a backlog).
BACKLOG_WARN_S: Final = 1.0
#: Below this many samples p99.9 is not meaningful.
MIN_SAMPLES: Final = 1000
_SEND_BATCH: Final = 1000
#: The live producer sends what is due this often (seconds). Each send is a
#: round trip to Redis, which costs CPU: at 15,817 events/s on the 2-core
#: machine of bench/README.md the producer took 39 % of a core at 1 ms, 15 % at 2 ms.
_LIVE_EVERY_S: Final = 0.002
_READY_TIMEOUT_S: Final = 300.0


@dataclass(frozen=True)
class Sizes:
    """How much work one run does."""

    events: int  # events per throughput round
    rounds: int  # throughput rounds
    warmup: int  # warm-up events before each phase
    duration_s: float  # seconds of live production in each latency run
    event_time_rate: float  # events per second of event time (density of the journeys)
    profile_events: int = 50_000  # timed events of the stage profile
    profile_warmup: int = 20_000  # its warm-up
    memory_entities: int = 1_000_000  # distinct entities of the memory measurement


# The warm-up spans 200 s of event time: past the demo's one-minute label horizon
# (the models have learned from matured labels and alert), and past the second
# horizon, in which a fresh model alerts in a burst (docs/models.md, "The first
# horizon"), so that throughput rounds and live phases see the steady state.
FULL: Final = Sizes(events=100_000, rounds=3, warmup=40_000, duration_s=60.0, event_time_rate=200.0)
QUICK: Final = Sizes(
    events=10_000,
    rounds=1,
    warmup=12_000,
    duration_s=3.0,
    event_time_rate=200.0,
    profile_events=3_000,
    profile_warmup=2_000,
    memory_entities=14_000,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of this scenario (defaults depend on ``--quick``)."""
    p.add_argument("--events", type=int, help="events per throughput round (100000; quick 10000)")
    p.add_argument("--rounds", type=int, help="throughput rounds (3; quick 1)")
    p.add_argument("--warmup", type=int, help="warm-up events per engine (40000; quick 12000)")
    p.add_argument(
        "--duration", type=float, help="seconds of live production per load (60; quick 3)"
    )
    p.add_argument(
        "--rate",
        type=float,
        help="offered events/s of the 50%% run (default: 50%% of the measured eps, within "
        "100..200000); the other loads are scaled from it",
    )
    p.add_argument(
        "--probe-rate",
        type=float,
        default=PROBE_RATE,
        metavar="R",
        help=f"latency probes per second among the live events ({PROBE_RATE:g}; 0: none)",
    )
    p.add_argument(
        "--loads",
        default=",".join(str(x) for x in LOADS),
        metavar="P,P,...",
        help="latency runs at these percentages of eps (25,50,75; must include 50)",
    )
    p.add_argument(
        "--memory-entities",
        type=int,
        help="distinct entities of the memory measurement (1000000; quick 14000, extrapolated)",
    )
    p.add_argument(
        "--profile-events", type=int, help="timed events of the stage profile (50000; quick 3000)"
    )
    p.add_argument(
        "--profile-rules",
        default=str(EXAMPLE_RULES),
        metavar="FILE",
        help="rules in force in the stage profile (examples/rules.toml; '' for none)",
    )
    p.add_argument(
        "--plots",
        metavar="DIR",
        help="write the PNG plots here (default: next to --json; none without either)",
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
        profile_events=args.profile_events or base.profile_events,
        profile_warmup=base.profile_warmup,
        memory_entities=args.memory_entities or base.memory_entities,
    )
    positive = (sizes.events, sizes.rounds, sizes.warmup, sizes.duration_s)
    if min(positive) <= 0 or sizes.profile_events < 1 or sizes.memory_entities < 1:
        raise BenchError(
            "--events, --rounds, --warmup, --duration, --profile-events and "
            "--memory-entities must be positive"
        )
    return sizes


def _loads(text: str) -> tuple[int, ...]:
    """``--loads``: percentages of eps, 50 included.

    >>> _loads("75, 25,50")
    (25, 50, 75)
    """
    try:
        loads = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError as err:
        raise BenchError(f"--loads: expected percentages like 25,50,75, got {text!r}") from err
    if MAIN_LOAD not in loads or min(loads) <= 0:
        raise BenchError(f"--loads must be positive percentages including {MAIN_LOAD}")
    return loads


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


class _Sender:
    """Pipelined XADD to one input stream, entries as ``intentflow produce`` writes them.

    Fields ``event`` and ``produced_ts`` (the wall time, epoch ms, just before
    each pipeline is sent). Kept here rather than importing the CLI's
    ``Producer``, whose imports take seconds in the latency phase's producer process.
    """

    def __init__(self, client: redis.Redis, stream: str) -> None:
        self.client = client
        self.stream = stream.encode()
        self.sent = 0

    def send(self, payloads: list[bytes]) -> None:
        pipe = self.client.pipeline(transaction=False)
        now = repr(time.time() * 1000.0).encode()
        for p in payloads:
            pipe.xadd(self.stream, {b"event": p, b"produced_ts": now})
        pipe.execute()
        self.sent += len(payloads)


#: Appends ARGV[2..] to the stream KEYS[1] as entries ``event`` = ARGV[i],
#: ``produced_ts`` = ARGV[1]: the live producer's batches, one command each.
_XADD_MANY: Final = """
local ts = ARGV[1]
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'event', ARGV[i], 'produced_ts', ts)
end
return #ARGV - 1
"""


class _ScriptSender(_Sender):
    """:class:`_Sender` whose batch is one script call: the live producer's.

    The same entries; on the client one command per batch instead of one per
    event, so that the producer takes less of the CPU the engine needs
    (bench/README.md, phase 3).
    """

    def __init__(self, client: redis.Redis, stream: str) -> None:
        super().__init__(client, stream)
        self._script = client.register_script(_XADD_MANY)

    def send(self, payloads: list[bytes]) -> None:
        now = repr(time.time() * 1000.0).encode()
        self._script(keys=[self.stream], args=[now, *payloads])
        self.sent += len(payloads)


def _send(producer: _Sender, payloads: list[bytes]) -> int:
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


def probe_payload(n: int, ts_ms: int) -> bytes:
    """The ``n``-th latency probe of a live phase, at event time ``ts_ms``.

    >>> orjson.loads(probe_payload(65, 1000))["entity_id"]
    'bench-probe-01'
    """
    return orjson.dumps(
        {
            "event_id": f"bench-probe-{n}",
            "entity_id": f"bench-probe-{n % PROBE_CONTACTS:02d}",
            "type": PROBE_TYPE,
            "ts": ts_ms,
        }
    )


def is_probe_alert(alert: dict[str, Any]) -> bool:
    """Whether ``alert`` is the probe rule's.

    >>> is_probe_alert({"trigger": {"kind": "rule", "rule_id": PROBE_RULE}})
    True
    >>> is_probe_alert({"trigger": {"kind": "model", "id": "model"}})
    False
    """
    trigger = alert.get("trigger") or {}
    return trigger.get("kind") == "rule" and trigger.get("rule_id") == PROBE_RULE


def _preload_and_start(
    client: redis.Redis, engine: Engine, gen: BuyerJourneyGenerator, warmup: int
) -> float:
    """Pre-load ``warmup`` events and a sentinel, start the engine; its monotonic start time."""
    keys = engine.keys
    last_ts = _send(_Sender(client, f"{keys.events_prefix}0"), gen.next_payloads(warmup))
    _Sender(client, f"{keys.events_prefix}0").send([sentinel_payload("warm", last_ts)])
    t0 = time.monotonic()
    engine.start()
    return t0


def _wait_warm(client: redis.Redis, engine: Engine, t0: float) -> float:
    """Wait until the warm-up sentinel is scored; the seconds since ``t0``."""
    done = wait_until(
        _exists(client, engine.keys.score_key("bench-warm")),
        timeout_s=_READY_TIMEOUT_S,
        what="the engine to start and process the warm-up",
        poll_s=0.05,
        alive=engine.check_alive,
    )
    return done - t0


def _warm_up(client: redis.Redis, engine: Engine, gen: BuyerJourneyGenerator, warmup: int) -> float:
    """Pre-load ``warmup`` events and a sentinel, start the engine, wait until it is through.

    Returns the seconds from the engine's start until the sentinel was scored.
    """
    return _wait_warm(client, engine, _preload_and_start(client, engine, gen, warmup))


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
    ctx: Context,
    client: redis.Redis,
    sizes: Sizes,
    entities: int,
    seed: int,
    snap_s: float,
    *,
    naive: bool = False,
) -> Throughput:
    """Rounds of N pre-staged events through a warm engine; see the module docstring.

    With ``naive``, the naive flow of :mod:`bench.naive` takes the engine's
    place (same events, same rounds, same timing; no recovery).
    """
    keys = Keys.unique("e2e-naive" if naive else "e2e-tp")
    n, rounds = sizes.events, sizes.rounds
    gen = _generator(sizes, entities, seed, sizes.warmup + rounds * n)
    count = sizes.warmup + 1 + rounds * (n + 1)
    engine: Engine
    if naive:
        from bench.naive import NaiveProcess, demo_settings

        horizon_ms, threshold = demo_settings()
        engine = NaiveProcess(
            ctx.url,
            keys,
            ctx.workdir / "naive-throughput.log",
            count=count,
            horizon_ms=horizon_ms,
            threshold=threshold,
        )
    else:
        engine = Engine(
            ctx.url,
            keys,
            ctx.workdir / "engine-throughput.log",
            count=count,
            extra_args=_engine_args(ctx, snap_s, "throughput"),
        )
    what = "the naive flow" if naive else "the engine"
    try:
        ctx.console.print(
            f"throughput{' (naive)' if naive else ''}: starting {what}, "
            f"warm-up of {sizes.warmup:,} events ..."
        )
        startup_s = _warm_up(client, engine, gen, sizes.warmup)
        eps_rounds: list[float] = []
        seconds: list[float] = []
        cpu: list[float] = []
        rcpu: list[float] = []
        alerts_before = int(client.xlen(keys.alerts))
        staging = f"{keys.staging_prefix}0"
        for r in range(rounds):
            stager = _Sender(client, f"{keys.staging_prefix}0")
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
    probe: list[bool]  # whether each sample is a probe's alert (else the model's)
    probes: int  # probes sent
    probe_rate: float  # probes per second asked for
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
    probe_rate: float,
    out: Queue[tuple[int, float, int, int]],
    sending: Any = None,
) -> None:
    """Producer process: XADD at ``rate`` for ``duration_s``, then a sentinel.

    Generates every event first (``rate × duration_s`` and a margin; not
    timed), then sends whatever is due every :data:`_LIVE_EVERY_S` (one script
    call, one ``produced_ts`` per batch), with the latency probes due at
    ``probe_rate`` at the end of a batch (at the event time of its last
    generated event), and puts ``(events sent, seconds, last event time,
    probes sent)`` on ``out``. ``sending`` (an event), when given, is set
    when the events are generated and sending starts.
    """
    gen = BuyerJourneyGenerator.restore(cfg, snapshot)
    ready = gen.next_payloads(int(rate * duration_s * 1.02) + 1000)
    client = connect(url)
    producer = _ScriptSender(client, f"{prefix}0")
    last_ts = 0
    probes = 0
    made = 0
    next_at = 0.0
    if sending is not None:
        sending.set()
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < duration_s:
        if elapsed < next_at:
            time.sleep(next_at - elapsed)
            continue
        next_at = elapsed + _LIVE_EVERY_S
        due = int(elapsed * rate) - made
        if due <= 0:
            continue
        n = min(due, 2000)
        if made + n > len(ready):
            ready.extend(gen.next_payloads(max(n, 10_000)))
        payloads = ready[made : made + n]
        made += n
        last_ts = int(orjson.loads(payloads[-1])["ts"])
        while probes < int(elapsed * probe_rate):
            payloads.append(probe_payload(probes, last_ts))
            probes += 1
        producer.send(payloads)
    seconds = time.monotonic() - start
    sent = made
    producer.send([sentinel_payload("live-end", last_ts)])
    client.close()
    out.put((sent, seconds, last_ts, probes))


def _producer_alive(producer: Any) -> None:
    if not producer.is_alive():
        raise BenchError(f"the producer process exited with code {producer.exitcode}")


@dataclass
class LatencyEngine:
    """A fresh engine of one latency run, started and (after :meth:`wait`) warm."""

    keys: Keys
    gen: BuyerJourneyGenerator
    engine: Engine
    started: float  # monotonic time of the start
    startup_s: float = math.nan  # start + warm-up, set by wait()

    @classmethod
    def start(
        cls,
        ctx: Context,
        client: redis.Redis,
        sizes: Sizes,
        entities: int,
        seed: int,
        snap_s: float,
        tag: str,
    ) -> LatencyEngine:
        """Pre-load the warm-up and start the engine (its own keys, log and recovery)."""
        keys = Keys.unique("e2e-lat")
        gen = _generator(sizes, entities, seed, sizes.warmup)
        engine = Engine(
            ctx.url,
            keys,
            ctx.workdir / f"engine-latency-{tag}.log",
            extra_args=[
                *_engine_args(ctx, snap_s, f"latency-{tag}"),
                "--rules",
                str(PROBE_RULES),
            ],
        )
        return cls(keys, gen, engine, _preload_and_start(client, engine, gen, sizes.warmup))

    def wait(self, client: redis.Redis) -> LatencyEngine:
        """Wait until the engine is through its warm-up."""
        self.startup_s = _wait_warm(client, self.engine, self.started)
        return self

    def close(self, client: redis.Redis) -> None:
        """Kill the engine (its state is not needed: no graceful shutdown) and drop its keys."""
        _kill(self.engine)
        self.engine.stop()
        self.keys.cleanup(client)


def measure_latency(
    ctx: Context,
    client: redis.Redis,
    sizes: Sizes,
    rate: float,
    warm: LatencyEngine,
    probe_rate: float = PROBE_RATE,
) -> Latency:
    """Live production at ``rate`` against a warm engine; see the module docstring.

    The engine is closed at the end.
    """
    keys, gen, engine, startup_s = warm.keys, warm.gen, warm.engine, warm.startup_s
    mp = multiprocessing.get_context("spawn")
    results: Queue[tuple[int, float, int, int]] = mp.Queue()
    reader = connect(ctx.url)
    producer: Any = None
    try:
        ctx.console.print(f"  producing {rate:,.0f} events/s for {sizes.duration_s:g} s ...")
        last: Any = client.xrevrange(keys.alerts, count=1)
        last_id: bytes | str = bytes(last[0][0]) if last else "0-0"
        gc.collect()
        gc.freeze()  # no full collections of start-up objects in the reader while it measures
        sending = mp.Event()
        producer = mp.Process(
            target=_produce_live,
            args=(
                ctx.url,
                keys.events_prefix,
                gen.config,
                gen.snapshot(),
                rate,
                sizes.duration_s,
                probe_rate,
                results,
                sending,
            ),
            name="bench-producer",
            daemon=True,
        )
        producer.start()
        # The live phase starts when the producer has generated its events and sends.
        wait_until(
            sending.is_set,
            timeout_s=_READY_TIMEOUT_S,
            what="the producer to generate its events",
            poll_s=0.01,
            alive=lambda: _producer_alive(producer),
        )
        live_from = time.time() * 1000.0
        cpu0, rcpu0, t0 = engine.cpu_seconds(), redis_cpu_seconds(client), time.monotonic()
        lat: list[float] = []
        at_s: list[float] = []
        stages: tuple[list[float], list[float], list[float]] = ([], [], [])
        probe: list[bool] = []
        alerts = 0
        summary: tuple[int, float, int, int] | None = None
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
                probe.append(is_probe_alert(alert))
                stages[0].append(alert["ingest_ts"] - produced)
                stages[1].append(alert["emit_ts"] - alert["ingest_ts"])
                stages[2].append(read_ts - alert["emit_ts"])
        assert summary is not None
        cpu1, rcpu1, t1 = engine.cpu_seconds(), redis_cpu_seconds(client), time.monotonic()
        engine_cpu, redis_cpu = _share(cpu0, cpu1, t1 - t0), _share(rcpu0, rcpu1, t1 - t0)
        producer.join(timeout=10)
        sent, seconds, _, probes = summary
        dead = int(client.xlen(keys.dlq)) if client.exists(keys.dlq) else 0
    finally:
        if producer is not None and producer.is_alive():
            producer.terminate()
            producer.join(timeout=5)
        reader.close()
        warm.close(client)
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
        probe=probe,
        probes=probes,
        probe_rate=probe_rate,
        dead_letters=dead,
        startup_s=startup_s,
        backlog_s=backlog_s,
        engine_cpu=engine_cpu,
        redis_cpu=redis_cpu,
    )


# --- the scenario ----------------------------------------------------------------------------


def default_rate(eps: float, share: float = RATE_SHARE) -> float:
    """The offered rate used when ``--rate`` is not given: ``share`` of eps, within bounds.

    >>> default_rate(30_000.0), default_rate(100.0), default_rate(1e6)
    (15000.0, 100.0, 200000.0)
    >>> default_rate(4_000.0, 0.25), default_rate(4_000.0, 0.75)
    (1000.0, 3000.0)
    """
    low, high = RATE_BOUNDS
    return float(min(high, max(low, round(share * eps))))


def load_figures(lt: Latency) -> dict[str, Any]:
    """The figures of one latency run (an entry of ``by_load``)."""
    model = [v for v, p in zip(lt.latencies, lt.probe, strict=True) if not p]
    return {
        "offered_rate": lt.offered_rate,
        "achieved_rate": lt.achieved_rate,
        "events": lt.events,
        "alerts": lt.alerts,
        "latency_samples": len(lt.latencies),
        **latency_figures(lt.latencies),
        "probe_rate": lt.probe_rate,
        "probes": lt.probes,
        "probe_samples": len(lt.latencies) - len(model),
        "model_samples": len(model),
        **{f"model_{k}": v for k, v in _p50_p99(model).items()},
        **{f"queue_{k}": v for k, v in _p50_p99(lt.queue).items()},
        **{f"engine_{k}": v for k, v in _p50_p99(lt.engine).items()},
        **{f"sink_read_{k}": v for k, v in _p50_p99(lt.sink_read).items()},
        "backlog_s": lt.backlog_s,
        "engine_cpu_live": lt.engine_cpu,
        "redis_cpu_live": lt.redis_cpu,
        "startup_s": lt.startup_s,
        "dead_letters": lt.dead_letters,
    }


def _latency_runs(
    ctx: Context,
    client: redis.Redis,
    sizes: Sizes,
    args: argparse.Namespace,
    loads: tuple[int, ...],
    eps: float,
) -> dict[int, Latency]:
    """One latency run per load, each with a fresh engine.

    With ``--quick`` the engines start and warm up together (it saves two
    engine start-ups); while one is measured the others poll their idle
    input, which takes some CPU from it: quick latencies are for smoke tests.
    """
    ready: dict[int, LatencyEngine] = {}
    runs: dict[int, Latency] = {}
    snap_s = args.snapshot_interval

    def start(load: int) -> LatencyEngine:
        return LatencyEngine.start(
            ctx, client, sizes, args.entities, args.seed, snap_s, f"{load}pct"
        )

    try:
        if ctx.quick:
            ctx.console.print(
                f"latency: starting {len(loads)} engines, warm-up of {sizes.warmup:,} events each"
            )
            ready = {load: start(load) for load in loads}
            for warm in ready.values():
                warm.wait(client)
        for load in loads:
            share = load / 100.0
            rate = float(args.rate) * load / MAIN_LOAD if args.rate else default_rate(eps, share)
            if load not in ready:
                ctx.console.print(
                    f"latency at {load}% of eps: starting the engine, "
                    f"warm-up of {sizes.warmup:,} events ..."
                )
                ready[load] = start(load).wait(client)
            else:
                ctx.console.print(f"latency at {load}% of eps:")
            runs[load] = measure_latency(ctx, client, sizes, rate, ready[load], args.probe_rate)
    finally:
        for warm in ready.values():
            warm.close(client)  # idempotent: measured engines are closed already
    return runs


def _plots_dir(args: argparse.Namespace) -> tuple[Path, str] | None:
    """Where the plots go: ``--plots DIR``, else next to ``--json``; ``None`` without both."""
    json_path = getattr(args, "json", None)
    stem = Path(json_path).stem if json_path else "e2e"
    if args.plots:
        return Path(args.plots), stem
    if json_path:
        return Path(json_path).resolve().parent, stem
    return None


def _tp_warnings(tp: Throughput, who: str) -> list[str]:
    busy = [e + r for e, r in zip(tp.engine_cpu, tp.redis_cpu, strict=False)]
    if busy and min(busy) < BUSY_CPU_SHARE:
        return [
            f"{who} and Redis together had only {min(busy):.0%} of a core in a throughput "
            "round (they work in turn): other processes were using the machine; its eps is "
            "understated"
        ]
    return []


def bounded_rate_warnings(offered: float, load: int, eps: float) -> list[str]:
    """A warning when :data:`RATE_BOUNDS` made a load's default rate other than its share of eps.

    >>> bounded_rate_warnings(30_000.0, 50, 60_000.0)
    []
    >>> bounded_rate_warnings(200_000.0, 75, 300_000.0)[0][:40]
    'at 75% load: offered 200,000 events/s, b'
    """
    if offered == round(load / 100.0 * eps):
        return []
    return [
        f"at {load}% load: offered {offered:,.0f} events/s, bounded by RATE_BOUNDS "
        f"{RATE_BOUNDS[0]:,.0f}..{RATE_BOUNDS[1]:,.0f}: not {load}% of eps ({eps:,.0f})"
    ]


def _lat_warnings(lt: Latency, load: int) -> list[str]:
    at = f"at {load}% load: "
    warnings: list[str] = []
    samples = len(lt.latencies)
    if samples < MIN_SAMPLES:
        warnings.append(
            f"{at}only {samples} latency samples (< {MIN_SAMPLES}): p99.9 is not meaningful; "
            "run longer (--duration) for tail figures"
        )
    if lt.achieved_rate < 0.95 * lt.offered_rate:
        warnings.append(
            f"{at}the producer reached only {lt.achieved_rate:,.0f} of {lt.offered_rate:,.0f} "
            "events/s (CPU-bound machine)"
        )
    if lt.backlog_s > BACKLOG_WARN_S:
        warnings.append(
            f"{at}the engine fell behind the offered rate (it needed {lt.backlog_s:.1f} s after "
            "the producer stopped): the latency figures are mostly queueing; use a lower --rate "
            "(or a machine where the engine gets a whole core)"
        )
    return warnings


def run(args: argparse.Namespace, ctx: Context) -> Result:
    """Every phase; figures for the JSON document and rows for the table."""
    from bench.generator_phase import measure_generator
    from bench.memory import MemoryChild
    from bench.plots import write_plots
    from bench.profile import measure_stages

    sizes = _sizes(args, ctx.quick)
    loads = _loads(args.loads)
    if args.rate is not None and args.rate <= 0:
        raise BenchError("--rate must be positive")
    if not 0 <= args.probe_rate <= 1000:
        raise BenchError("--probe-rate must be between 0 and 1000 probes per second")
    rules_path = Path(args.profile_rules) if args.profile_rules else None
    if rules_path is not None and not rules_path.is_file():
        raise BenchError(f"--profile-rules: {rules_path} is not a file")
    client = connect(ctx.url)
    ping_or_fail(client, ctx.url)
    memory = MemoryChild(sizes.memory_entities)
    if ctx.quick:  # overlap it with the rest: quick figures are for smoke tests only
        memory.start()
    try:
        tp = measure_throughput(
            ctx, client, sizes, args.entities, args.seed, args.snapshot_interval
        )
        gen = measure_generator(
            ctx,
            client,
            warmup=sizes.warmup,
            events=sizes.events,
            rounds=sizes.rounds,
            entities=args.entities,
            seed=args.seed,
            event_time_rate=sizes.event_time_rate,
            extra_args=_engine_args(ctx, args.snapshot_interval, "generator"),
            poll_s=0.1 if ctx.quick else 0.25,  # each poll costs the engine ~4 ms of CPU
            expected_eps=tp.eps,  # the tail outlasts a few polls at about this rate
        )
        nv = measure_throughput(
            ctx, client, sizes, args.entities, args.seed, args.snapshot_interval, naive=True
        )
        runs = _latency_runs(ctx, client, sizes, args, loads, tp.eps)
        ctx.console.print(
            f"stage profile: {sizes.profile_events:,} events in-process "
            f"(warm-up {sizes.profile_warmup:,}) ..."
        )
        prof = measure_stages(
            client,
            ctx.url,
            events=sizes.profile_events,
            warmup=sizes.profile_warmup,
            entities=args.entities,
            seed=args.seed,
            event_time_rate=sizes.event_time_rate,
            rules_path=rules_path,
        )
        ctx.console.print(f"memory: {sizes.memory_entities:,} entities in a child process ...")
        mem = memory.result()
    finally:
        memory.stop()
        client.close()
    lt = runs[MAIN_LOAD]

    warnings = _tp_warnings(tp, "the engine") + _tp_warnings(nv, "the naive flow")
    for load in loads:
        warnings += _lat_warnings(runs[load], load)
        if args.rate is None:
            warnings += bounded_rate_warnings(runs[load].offered_rate, load, tp.eps)
    dead = tp.dead_letters + sum(r.dead_letters for r in runs.values())
    if dead:
        warnings.append(f"{dead} dead letters (expected none)")
    if mem.extrapolated:
        warnings.append(
            f"rss_1m_entities_mb is extrapolated from {sizes.memory_entities:,} entities "
            "(--quick or --memory-entities below 1000000)"
        )

    naive_per_cpu = _median(
        [e / c for e, c in zip(nv.eps_rounds, nv.engine_cpu, strict=False) if c > 0]
    )
    eps_per_cpu = _median(
        [e / c for e, c in zip(tp.eps_rounds, tp.engine_cpu, strict=False) if c > 0]
    )
    gen_per_cpu = _median(
        [e / c for e, c in zip(gen.eps_rounds, gen.engine_cpu, strict=False) if c > 0]
    )
    if gen.engine_cpu and min(gen.engine_cpu) < BUSY_CPU_SHARE:
        warnings.append(
            f"the engine had only {min(gen.engine_cpu):.0%} of a core in a generator round: "
            "other processes were using the machine; generator_eps is understated"
        )
    stages = prof.figures()
    by_load = {str(load): load_figures(runs[load]) for load in loads}
    main = by_load[str(MAIN_LOAD)]
    figures: dict[str, Any] = {
        "eps": tp.eps,
        "eps_rounds": tp.eps_rounds,
        "seconds_rounds": tp.seconds_rounds,
        "throughput_events": sizes.rounds * (sizes.events + 1),
        "throughput_alerts": tp.alerts,
        "engine_cpu_rounds": tp.engine_cpu,
        "eps_per_engine_cpu_s": eps_per_cpu,
        "redis_cpu_rounds": tp.redis_cpu,
        "generator_eps": gen.eps,
        "generator_eps_rounds": gen.eps_rounds,
        "generator_seconds_rounds": gen.seconds_rounds,
        "generator_cpu_rounds": gen.engine_cpu,
        "generator_eps_per_cpu_s": gen_per_cpu,
        "generator_startup_s": gen.startup_s,
        "naive_eps": nv.eps,
        "naive_eps_rounds": nv.eps_rounds,
        "naive_seconds_rounds": nv.seconds_rounds,
        "naive_alerts": nv.alerts,
        "naive_cpu_rounds": nv.engine_cpu,
        "naive_redis_cpu_rounds": nv.redis_cpu,
        "naive_eps_per_cpu_s": naive_per_cpu,
        "naive_startup_s": nv.startup_s,
        "ratio_vs_naive": tp.eps / nv.eps if nv.eps > 0 else math.nan,
        "ratio_per_cpu_s": eps_per_cpu / naive_per_cpu if naive_per_cpu > 0 else math.nan,
        "latency_by_second": timeline(lt.at_s, lt.latencies),
        # the 50 % run's figures (its startup_s is latency_startup_s; dead_letters is all runs')
        **{k: v for k, v in main.items() if k not in ("startup_s", "dead_letters")},
        "by_load": by_load,
        "dead_letters": dead,
        "throughput_startup_s": tp.startup_s,
        "latency_startup_s": lt.startup_s,
        "bytes_per_entity": mem.bytes_per_entity,
        "rss_1m_entities_mb": mem.rss_1m_entities_mb,
        "memory": {**mem.figures, "extrapolated": mem.extrapolated},
        "stages": stages,
        "params": {
            "events_per_round": sizes.events,
            "rounds": sizes.rounds,
            "warmup_events": sizes.warmup,
            "duration_s": sizes.duration_s,
            "rate_from": "--rate" if args.rate else f"{RATE_SHARE:.0%} of eps",
            "loads": list(loads),
            "probe_rate": args.probe_rate,
            "probe_rules": str(PROBE_RULES.relative_to(PROBE_RULES.parents[1])),
            "entities": args.entities,
            "seed": args.seed,
            "event_time_rate": sizes.event_time_rate,
            "partitions": 1,
            "snapshot_interval_s": args.snapshot_interval,
            "profile_events": sizes.profile_events,
            "profile_warmup_events": stages["warmup_events"],
            "profile_rules": str(rules_path) if rules_path else "",
            "memory_entities": sizes.memory_entities,
            "generator_poll_s": gen.poll_s,
            "generator_polls": gen.polls,
        },
    }
    where = _plots_dir(args)
    figures["plots"] = write_plots(figures, where[0], where[1]) if where else {}

    f = figures
    shares = stages["share"]
    rows = [
        ("throughput rounds", f"{sizes.rounds} x {sizes.events + 1:,} events"),
        ("eps by round", ", ".join(f"{v:,.0f}" for v in tp.eps_rounds)),
        ("eps (median of rounds)", f"{tp.eps:,.0f} events/s"),
        ("alerts in throughput rounds", f"{tp.alerts:,}"),
        (
            "CPU by round: engine / Redis (share of a core)",
            ", ".join(
                f"{e:.0%}/{r:.0%}" for e, r in zip(tp.engine_cpu, tp.redis_cpu, strict=False)
            ),
        ),
        ("events per engine CPU-second (median)", f"{f['eps_per_engine_cpu_s']:,.0f}"),
        (
            "generator source: eps by round / median",
            ", ".join(f"{v:,.0f}" for v in gen.eps_rounds) + f" / {gen.eps:,.0f} events/s",
        ),
        (
            "generator source: engine CPU by round / events per CPU-second",
            ", ".join(f"{c:.0%}" for c in gen.engine_cpu) + f" / {gen_per_cpu:,.0f}",
        ),
        ("naive eps by round", ", ".join(f"{v:,.0f}" for v in nv.eps_rounds)),
        ("naive eps (median) / alerts", f"{nv.eps:,.0f} events/s / {nv.alerts:,}"),
        ("naive events per CPU-second (median)", f"{naive_per_cpu:,.0f}"),
        (
            "ratio vs naive: eps / per CPU-second",
            f"{f['ratio_vs_naive']:.2f}x / {f['ratio_per_cpu_s']:.2f}x",
        ),
    ]
    for load in loads:
        r = f["by_load"][str(load)]
        rows.append(
            (
                f"latency at {load}% ({r['offered_rate']:,.0f}/s, n={r['latency_samples']:,})",
                f"p50 {r['p50_ms']:.1f} / p99 {r['p99_ms']:.1f} / p99.9 {r['p999_ms']:.1f} / "
                f"max {r['max_ms']:.1f} ms",
            )
        )
    rows += [
        (
            "50% run: offered / achieved rate",
            f"{lt.offered_rate:,.0f} / {lt.achieved_rate:,.0f} events/s",
        ),
        ("50% run: live events / alerts", f"{lt.events:,} / {lt.alerts:,}"),
        (
            "50% run: samples from probes / from the model (model p50, p99)",
            f"{main['probe_samples']:,} / {main['model_samples']:,} "
            f"({_ms(main['model_p50_ms'])}, {_ms(main['model_p99_ms'])})",
        ),
        ("50% run: CPU while live: engine / Redis", f"{lt.engine_cpu:.0%} / {lt.redis_cpu:.0%}"),
        ("50% run: backlog when the producer stopped", f"{lt.backlog_s:.2f} s"),
        ("50% run: busiest second: alerts, p50", _busiest(figures["latency_by_second"])),
        (
            "50% run: p50 by stage: queue / engine / sink+read",
            f"{f['queue_p50_ms']:.2f} / {f['engine_p50_ms']:.2f} / {f['sink_read_p50_ms']:.2f} ms",
        ),
        (
            "50% run: p99 by stage: queue / engine / sink+read",
            f"{f['queue_p99_ms']:.2f} / {f['engine_p99_ms']:.2f} / {f['sink_read_p99_ms']:.2f} ms",
        ),
        (
            "stage profile: µs per event, top stages",
            f"{stages['us_per_event']:.0f} µs; "
            + ", ".join(f"{k} {shares[k]:.0%}" for k in stages["top"]),
        ),
        (
            "memory: bytes per entity / RSS at 1M entities",
            f"{mem.bytes_per_entity:,.0f} B / {mem.rss_1m_entities_mb:,.0f} MiB"
            + (" (extrapolated)" if mem.extrapolated else ""),
        ),
        (
            "engine start + warm-up (not timed): engine / naive / 50% run",
            f"{tp.startup_s:.1f} s / {nv.startup_s:.1f} s / {lt.startup_s:.1f} s",
        ),
    ]
    if figures["plots"]:
        rows.append(("plots", ", ".join(figures["plots"].values())))
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


def _kill(engine: Engine) -> None:
    """SIGKILL a running engine (``Engine.stop`` then only closes its log)."""
    with contextlib.suppress(BenchError):
        if engine.proc.poll() is None:
            engine.proc.kill()
            engine.proc.wait()


def _share(before: float | None, after: float | None, seconds: float) -> float:
    """CPU seconds used between two readings per wall second (NaN when unknown)."""
    if before is None or after is None or seconds <= 0:
        return math.nan
    return (after - before) / seconds


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f} ms"


def _p50_p99(values: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99)}

"""Scenario ``scale``: events/s of one and of two engine processes on the same streams.

The same synthetic events, routed by account over P input streams (P = 2 by
default; ``engine.shards`` = P, partition affinity on), go through

* ``1``: one engine process (``intentflow run --affinity``);
* ``2``: a local cluster of two processes (``intentflow run --processes 2``);
* ``2_no_affinity`` (not with ``--quick``, or with ``--no-baseline``): two
  processes with Bytewax's own placement (shard keys ``s0..``, partitions
  spread by Bytewax), which exchanges every event whose shard the other
  process owns, one by one.

Each layout works through a warm-up first (start-up, kernel compilation and
the model's cold start are not timed), then each round stages N events and
one sentinel per stream, makes them visible at once (``RENAME`` of every
staging stream in one transaction) and is timed until every stream's
sentinel has been scored. ``eps`` is the median over rounds of
``(N + P) / seconds``.

``exchanged_items_per_event`` is measured from the running engines, not
assumed: each process's ``/metrics`` shows which input partitions it read
(``intentflow_source_backlog_entries{partition}``) and which shards it
processed (``intentflow_events_processed_total{shard}``); since stream ``i``
holds exactly the events of shard ``i``, every event of a shard processed by
another process than the one that read its stream crossed a process
boundary. Memory figures come from the same endpoints and ``/proc``.

``python -m bench.scale --baseline-child ARGS`` is the launcher of the
baseline layout (an ``intentflow run`` command line without affinity).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import redis
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    BenchError,
    Context,
    Engine,
    Keys,
    Result,
    process_cpu_seconds,
    wait_until,
)
from intentflow.commands.produce import Producer
from intentflow.dataflows.sources import partition_for
from intentflow.generator import BuyerJourneyGenerator, GeneratorConfig
from intentflow.redisutil import connect, ping_or_fail

__all__ = ["HELP", "LayoutResult", "Sizes", "add_arguments", "run"]

HELP: Final = "one vs two engine processes on the same streams: events/s, items exchanged"

#: Events per second of event time (the density the demo uses).
EVENT_TIME_RATE: Final = 200.0
_READY_TIMEOUT_S: Final = 300.0
_SEND_BATCH: Final = 1000


@dataclass(frozen=True)
class Sizes:
    """How much work one layout does."""

    events: int  # events per round (all streams together)
    rounds: int
    warmup: int  # warm-up events before the rounds


FULL: Final = Sizes(events=60_000, rounds=3, warmup=20_000)
QUICK: Final = Sizes(events=6_000, rounds=1, warmup=6_000)


@dataclass(frozen=True)
class Layout:
    """How the engine is run."""

    name: str
    processes: int
    affinity: bool


@dataclass
class LayoutResult:
    """Figures of one layout."""

    eps: float
    eps_rounds: list[float]
    seconds_rounds: list[float]
    engine_cpu_rounds: list[float]  # engine CPU seconds / round seconds (all its processes)
    eps_per_engine_cpu_s: float
    exchanged_items_per_event: float
    placement: dict[str, dict[str, Any]]  # partition -> readers, owners, events
    alerts: int
    startup_s: float
    entities: float
    feature_bytes: float
    dedup_ids: float
    rss_mb: list[float] = field(default_factory=list)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of this scenario (defaults depend on ``--quick``)."""
    p.add_argument("--events", type=int, help="events per round (60000; quick 6000)")
    p.add_argument("--rounds", type=int, help="timed rounds (3; quick 1)")
    p.add_argument("--warmup", type=int, help="warm-up events per layout (20000; quick 6000)")
    p.add_argument("--partitions", type=int, default=2, help="input streams = shards (2)")
    p.add_argument("--entities", type=int, default=2000, help="synthetic contacts (2000)")
    p.add_argument("--seed", type=int, default=7, help="generator seed (7)")
    p.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run two processes without partition affinity (default: on, off with --quick)",
    )


def _sizes(args: argparse.Namespace, quick: bool) -> Sizes:
    base = QUICK if quick else FULL
    sizes = Sizes(
        events=args.events or base.events,
        rounds=args.rounds or base.rounds,
        warmup=args.warmup or base.warmup,
    )
    if min(sizes.events, sizes.rounds, sizes.warmup) < 1:
        raise BenchError("--events, --rounds and --warmup must be positive")
    return sizes


def _routed_entity(tag: str, partition: int, partitions: int) -> str:
    """An entity id of its own that producers route to ``partition``."""
    n = 0
    while partition_for(f"bench-{tag}-{n}", partitions) != partition:
        n += 1
    return f"bench-{tag}-{n}"


def _sentinel(entity: str, ts_ms: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": entity,
            "ts": ts_ms,
            "entity_id": entity,
            "type": "page_view",
            "props": {"page": "/bench", "category": "home", "duration_s": 1},
        }
    )


def _send(producer: Producer, payloads: list[bytes]) -> int:
    for i in range(0, len(payloads), _SEND_BATCH):
        producer.send(payloads[i : i + _SEND_BATCH])
    return int(orjson.loads(payloads[-1])["ts"])


def _send_sentinels(
    client: redis.Redis, prefix: str, tag: str, partitions: int, ts_ms: int
) -> list[str]:
    """One sentinel per stream; returns their entity ids."""
    entities = [_routed_entity(tag, p, partitions) for p in range(partitions)]
    Producer(client, prefix, partitions).send([_sentinel(e, ts_ms) for e in entities])
    return entities


def _metrics_base(processes: int) -> int:
    """A port P with P..P+processes-1 free on loopback."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + processes > 65535:
            continue
        free = True
        for port in range(base, base + processes):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    free = False
                    break
        if free:
            return base
    raise BenchError("no free ports for the metrics endpoints")


def _scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of one engine's ``/metrics``: name -> [(labels, value)]."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return samples


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux ``/proc``)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return None


class _BaselineEngine(Engine):
    """The engine command line, run through this module's launcher (no affinity)."""

    def command(self) -> list[str]:
        cmd = super().command()
        return [
            sys.executable,
            "-m",
            "bench.scale",
            "--baseline-child",
            *cmd[cmd.index("run") + 1 :],
        ]


def _placement(
    scrapes: Sequence[dict[str, list[tuple[dict[str, str], float]]]], partitions: int
) -> tuple[dict[str, dict[str, Any]], float]:
    """Who read and who processed each partition's events; exchanged items per event."""
    placement: dict[str, dict[str, Any]] = {}
    exchanged = total = 0.0
    for p in range(partitions):
        readers = [
            i
            for i, sc in enumerate(scrapes)
            if any(
                lab.get("partition") == str(p)
                for lab, _ in sc.get("intentflow_source_backlog_entries", [])
            )
        ]
        by_owner = {
            i: sum(
                v
                for lab, v in sc.get("intentflow_events_processed_total", [])
                if lab.get("shard") == f"s{p}"
            )
            for i, sc in enumerate(scrapes)
        }
        owners = [i for i, v in by_owner.items() if v > 0]
        events = sum(by_owner.values())
        crossed = sum(v for i, v in by_owner.items() if i not in readers)
        placement[str(p)] = {"read_by": readers, "processed_by": owners, "events": events}
        exchanged += crossed
        total += events
    return placement, (exchanged / total if total else float("nan"))


def _gauge_sum(
    scrapes: Sequence[dict[str, list[tuple[dict[str, str], float]]]],
    name: str,
    **labels: str,
) -> float:
    return sum(
        v
        for sc in scrapes
        for lab, v in sc.get(name, [])
        if all(lab.get(k) == want for k, want in labels.items())
    )


def measure(
    ctx: Context,
    client: redis.Redis,
    layout: Layout,
    sizes: Sizes,
    partitions: int,
    entities: int,
    seed: int,
    start_ms: int,
) -> LayoutResult:
    """Warm up one layout, then time its rounds; see the module docstring.

    Every layout gets the same events (``start_ms`` is the first event time).
    """
    keys = Keys.unique(f"scale-{layout.name}")
    gen = BuyerJourneyGenerator(
        GeneratorConfig(
            seed=seed, entities=entities, start_ms=start_ms, events_per_second=EVENT_TIME_RATE
        )
    )
    base = _metrics_base(layout.processes)
    args = ["--partitions", str(partitions), "--shards", str(partitions)]
    args += ["--metrics-port", str(base)]
    if layout.processes > 1:
        args += ["--processes", str(layout.processes)]
    if layout.affinity:
        args += ["--affinity"]
    kind = Engine if layout.affinity else _BaselineEngine
    engine = kind(ctx.url, keys, ctx.workdir / f"engine-{layout.name}.log", extra_args=args)
    try:
        ctx.console.print(
            f"layout {layout.name}: warm-up of {sizes.warmup:,} events over {partitions} streams"
        )
        last_ts = _send(
            Producer(client, keys.events_prefix, partitions), gen.next_payloads(sizes.warmup)
        )
        warm = _send_sentinels(client, keys.events_prefix, "warm", partitions, last_ts)
        t0 = time.monotonic()
        engine.start()
        done = wait_until(
            lambda: all(client.exists(keys.score_key(e)) for e in warm),
            timeout_s=_READY_TIMEOUT_S,
            what=f"layout {layout.name} to start and process the warm-up",
            poll_s=0.05,
            alive=engine.check_alive,
        )
        startup_s = done - t0
        pids = [engine.proc.pid, *_children(engine.proc.pid)]
        eps_rounds: list[float] = []
        seconds: list[float] = []
        cpu: list[float] = []
        alerts_before = int(client.xlen(keys.alerts)) if client.exists(keys.alerts) else 0
        for r in range(sizes.rounds):
            stager = Producer(client, keys.staging_prefix, partitions)
            last_ts = _send(stager, gen.next_payloads(sizes.events))
            tag = f"round{r}"
            sentinels = _send_sentinels(client, keys.staging_prefix, tag, partitions, last_ts)
            pipe = client.pipeline(transaction=True)
            for p in range(partitions):
                pipe.rename(f"{keys.staging_prefix}{p}", f"{keys.events_prefix}{p}")
            cpu0 = [process_cpu_seconds(pid) for pid in pids]
            pipe.execute()
            t0 = time.monotonic()
            t1 = wait_until(
                lambda s=sentinels: all(client.exists(keys.score_key(e)) for e in s),
                timeout_s=max(120.0, sizes.events / 200.0),
                what=f"round {r + 1} of layout {layout.name}",
                poll_s=0.002,
                alive=engine.check_alive,
            )
            cpu1 = [process_cpu_seconds(pid) for pid in pids]
            used = sum(
                b - a for a, b in zip(cpu0, cpu1, strict=True) if a is not None and b is not None
            )
            n = sizes.events + partitions
            seconds.append(t1 - t0)
            eps_rounds.append(n / (t1 - t0))
            cpu.append(used / (t1 - t0))
            ctx.console.print(
                f"  round {r + 1}/{sizes.rounds}: {n:,} events in {t1 - t0:.2f} s "
                f"= {eps_rounds[-1]:,.0f} events/s"
            )
        time.sleep(1.2)  # state gauges are refreshed at most once a second
        scrapes = [_scrape(base + i) for i in range(layout.processes)]
        placement, exchanged = _placement(scrapes, partitions)
        workers = pids[1:] if layout.processes > 1 else pids[:1]
        rss = [m for m in (_rss_mb(pid) for pid in workers) if m is not None]
        alerts = int(client.xlen(keys.alerts)) - alerts_before
    finally:
        engine.stop()
        keys.cleanup(client)
    per_cpu = [e / c for e, c in zip(eps_rounds, cpu, strict=True) if c > 0]
    return LayoutResult(
        eps=statistics.median(eps_rounds),
        eps_rounds=eps_rounds,
        seconds_rounds=seconds,
        engine_cpu_rounds=cpu,
        eps_per_engine_cpu_s=statistics.median(per_cpu) if per_cpu else float("nan"),
        exchanged_items_per_event=exchanged,
        placement=placement,
        alerts=alerts,
        startup_s=startup_s,
        entities=_gauge_sum(scrapes, "intentflow_entities_active"),
        feature_bytes=_gauge_sum(scrapes, "intentflow_state_bytes", part="features"),
        dedup_ids=_gauge_sum(scrapes, "intentflow_dedup_ids"),
        rss_mb=rss,
    )


def _layout_figures(res: LayoutResult) -> dict[str, Any]:
    return {
        "eps": res.eps,
        "eps_rounds": res.eps_rounds,
        "seconds_rounds": res.seconds_rounds,
        "engine_cpu_rounds": res.engine_cpu_rounds,
        "eps_per_engine_cpu_s": res.eps_per_engine_cpu_s,
        "exchanged_items_per_event": res.exchanged_items_per_event,
        "placement": res.placement,
        "alerts": res.alerts,
        "startup_s": res.startup_s,
        "entities": res.entities,
        "feature_bytes": res.feature_bytes,
        "dedup_ids": res.dedup_ids,
        "rss_mb": res.rss_mb,
    }


def run(args: argparse.Namespace, ctx: Context) -> Result:
    """Every layout in turn; figures for the JSON document and rows for the table."""
    sizes = _sizes(args, ctx.quick)
    partitions = args.partitions
    if partitions < 2:
        raise BenchError("--partitions must be at least 2 (one per process)")
    baseline = (not ctx.quick) if args.baseline is None else bool(args.baseline)
    layouts = [Layout("1", 1, True), Layout("2", 2, True)]
    if baseline:
        layouts.append(Layout("2_no_affinity", 2, False))
    client = connect(ctx.url)
    ping_or_fail(client, ctx.url)
    results: dict[str, LayoutResult] = {}
    # The events reach the present at the end of the last layout's last round.
    span_s = (sizes.warmup + sizes.rounds * sizes.events) / EVENT_TIME_RATE
    start_ms = int((time.time() - span_s) * 1000)
    try:
        for layout in layouts:
            results[layout.name] = measure(
                ctx, client, layout, sizes, partitions, args.entities, args.seed, start_ms
            )
    finally:
        client.close()

    one, two = results["1"], results["2"]
    figures: dict[str, Any] = {
        "eps_1": one.eps,
        "eps_2": two.eps,
        "speedup": two.eps / one.eps,
        "exchanged_items_per_event": two.exchanged_items_per_event,
        "eps_per_engine_cpu_s_1": one.eps_per_engine_cpu_s,
        "eps_per_engine_cpu_s_2": two.eps_per_engine_cpu_s,
        "feature_bytes_per_entity": one.feature_bytes / one.entities if one.entities else None,
        "rss_mb_1": one.rss_mb,
        "rss_mb_2": two.rss_mb,
        "layouts": {name: _layout_figures(res) for name, res in results.items()},
        "params": {
            "events_per_round": sizes.events,
            "rounds": sizes.rounds,
            "warmup_events": sizes.warmup,
            "partitions": partitions,
            "shards": partitions,
            "entities": args.entities,
            "seed": args.seed,
            "event_time_rate": EVENT_TIME_RATE,
            "baseline": baseline,
        },
    }
    if baseline:
        base = results["2_no_affinity"]
        figures["eps_2_no_affinity"] = base.eps
        figures["exchanged_items_per_event_no_affinity"] = base.exchanged_items_per_event
    warnings: list[str] = []
    if len({res.alerts for res in results.values()}) > 1:
        warnings.append(
            "the layouts wrote different numbers of alerts in their rounds "
            f"({', '.join(f'{n}: {r.alerts}' for n, r in results.items())}); the same events "
            "should give the same alerts"
        )
    cores = os.cpu_count() or 1
    if cores <= 2:
        warnings.append(
            f"{cores} cores for two engine processes and Redis: the processes compete for CPU; "
            "eps_per_engine_cpu_s shows the work per process without that contention"
        )
    rows = [
        (
            "rounds",
            f"{sizes.rounds} x {sizes.events + partitions:,} events over {partitions} streams",
        ),
    ]
    for name, res in results.items():
        rows.append(
            (
                f"layout {name}: eps (rounds)",
                f"{res.eps:,.0f} ({', '.join(f'{v:,.0f}' for v in res.eps_rounds)})",
            )
        )
        rows.append(
            (
                f"layout {name}: engine CPU / events per CPU-s",
                f"{statistics.median(res.engine_cpu_rounds):.0%} of a core / "
                f"{res.eps_per_engine_cpu_s:,.0f}",
            )
        )
        rows.append(
            (f"layout {name}: exchanged items per event", f"{res.exchanged_items_per_event:.3f}")
        )
    rows.append(("speedup eps_2 / eps_1", f"{figures['speedup']:.2f}"))
    if figures["feature_bytes_per_entity"]:
        rows.append(
            ("feature state per entity", f"{figures['feature_bytes_per_entity']:,.0f} bytes")
        )
    return Result(figures=figures, rows=rows, warnings=warnings)


def _baseline_child(argv: Sequence[str]) -> int:
    """Run an ``intentflow run`` command line as a local cluster without partition affinity."""
    from intentflow.cli import build_parser
    from intentflow.cluster import run_local_cluster
    from intentflow.commands.common import config_from_args
    from intentflow.errors import IntentflowError
    from intentflow.logs import setup_logging

    args = build_parser().parse_args(["run", *argv])
    setup_logging(verbose=args.verbose, json_lines=args.log_json)
    config = config_from_args(args).with_overrides({"engine.affinity": False})
    try:
        return run_local_cluster(
            config,
            processes=args.processes or 2,
            workers_per_process=args.workers,
            metrics_host=args.metrics_host,
            metrics_port=args.metrics_port,
        )
    except IntentflowError as err:
        print(f"baseline: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--baseline-child":
        sys.exit(_baseline_child(sys.argv[2:]))
    sys.exit("usage: python -m bench scale [--json PATH] [--quick]")

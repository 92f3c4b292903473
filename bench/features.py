"""Scenario ``features``: the feature engine against two other ways to compute the same spec.

All three compute the default feature spec over the same synthetic stream
(the buyer-journey generator, 200,000 contacts, 50 events per second of
event time), in this process:

- **engine**: :class:`~intentflow.features.state.FeatureState` fed through
  ``update`` in batches of 1,000. The kernels are compiled (or loaded from
  Numba's cache) by an untimed first call. Each round starts a fresh state
  with room for every contact, prefaulted (no array growth and no first
  touch of a page while timing), applies the
  warm-up part of the stream untimed (after which it holds more than 100,000
  entities), then times every batch of the timed part. One untimed round
  comes first: its rows are the ones compared with the baseline's, and it
  takes the new process's first touch of the memory a round allocates.
- **python**: :class:`bench.features_baselines.DequeFeatures`, plain Python
  with a deque per key, feature and window, after the same warm-up; timed on
  the first ``python_events`` events of the timed part, one segment after
  each engine round. Its rows are compared with the engine's.
- **bytewax_windowing**: :func:`bench.features_baselines.windowing_flow`,
  ``fold_window`` over sliding windows with an ``EventClock``, run with
  ``bytewax.testing.run_main``. It is far slower, so it runs on a key
  sample of the timed part: every event of the accounts whose CRC-32 falls
  in one class of ``bytewax_share``, so that each sampled key gets the same
  events as in the full stream. A sample of its closed windows is checked
  against a recomputation from the events. The same flow with tumbling
  windows (coarser, not the same aggregates) runs for comparison.

``*_eps`` are events per wall-clock second (medians over rounds),
``*_cpu_eps`` events per CPU second of this process, steadier on a shared
machine. ``ratio_vs_python`` compares the engine and the baseline on the same
events.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import time
import tracemalloc
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from bytewax.testing import run_main

from bench.common import Context, Result
from bench.features_baselines import (
    WINDOWING_DIFFERENCES,
    DequeFeatures,
    WindowingPlan,
    contribution,
    windowing_flow,
)
from intentflow.display import percentile
from intentflow.events import Event
from intentflow.features.spec import FeatureSpec
from intentflow.features.state import FeatureState
from intentflow.generator import BuyerJourneyGenerator, GeneratorConfig

__all__ = ["HELP", "add_arguments", "run"]

HELP: Final = "feature engine vs pure-Python deques and Bytewax windowing on the same stream"
#: Targets of the default spec.
TARGET_RATIO_VS_PYTHON: Final = 20.0
TARGET_RATIO_VS_BYTEWAX: Final = 50.0
TARGET_BYTES_PER_ENTITY: Final = 2048
#: Python rows agree with the engine's within this relative tolerance (decayed values).
AGREEMENT_RTOL: Final = 1e-9
MIN_ENTITIES: Final = 100_000
#: Mean stage holding time of the generator: an hour, at 50 events/s of event time.
JOURNEY_SCALE_S: Final = 3600.0


@dataclass(frozen=True)
class Sizes:
    contacts: int  # generator population (accounts: a quarter of it)
    warmup: int  # events applied before timing
    timed: int  # events timed per engine round
    python_events: int  # events of the timed part the Python baseline is timed on
    bytewax_share: int  # the windowing flow gets the events of 1/share of the accounts
    rounds: int  # engine rounds


FULL: Final = Sizes(200_000, 200_000, 200_000, 50_000, 40, 3)
QUICK: Final = Sizes(6_000, 8_000, 6_000, 2_000, 12, 1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of this scenario (defaults depend on ``--quick``)."""
    p.add_argument("--contacts", type=int, help="contacts of the generator (200000; quick 6000)")
    p.add_argument("--warmup", type=int, help="untimed events first (200000; quick 8000)")
    p.add_argument("--timed", type=int, help="timed events per engine round (200000; quick 6000)")
    p.add_argument(
        "--python-events", type=int, help="timed events of the Python baseline (50000; quick 2000)"
    )
    p.add_argument(
        "--bytewax-share",
        type=int,
        help="the windowing flow runs on the accounts of one CRC-32 class in N (40; quick 12)",
    )
    p.add_argument("--rounds", type=int, help="engine rounds (3; quick 1)")
    p.add_argument("--batch", type=int, default=1000, help="events per update call (1000)")
    p.add_argument("--seed", type=int, default=7, help="generator seed (7)")
    p.add_argument(
        "--event-rate", type=float, default=50.0, help="events per second of event time (50)"
    )


def _events(contacts: int, n: int, seed: int, rate: float) -> list[Event]:
    """The first ``n`` events of the generator as validated-event records."""
    cfg = GeneratorConfig(
        seed=seed, entities=contacts, events_per_second=rate, journey_scale_s=JOURNEY_SCALE_S
    )
    gen = BuyerJourneyGenerator(cfg)
    out: list[Event] = []
    while len(out) < n:
        for d in gen.next_events(min(50_000, n - len(out))):
            out.append(
                Event(
                    event_id=d["event_id"],
                    ts_ms=d["ts"],
                    entity_id=d["entity_id"],
                    type=d["type"],
                    account_id=d.get("account_id"),
                    props=d["props"],
                    source="generator",
                    offset=str(len(out)),
                )
            )
    return out


def _batches(events: Sequence[Event], size: int) -> list[Sequence[Event]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


@dataclass
class _EngineRound:
    eps: float  # events per wall second over the timed part
    cpu_eps: float  # events per CPU second over the timed part
    same_eps: float  # ... over the events the Python baseline is timed on
    same_cpu_eps: float
    batch_ms: list[float]
    batch_cpu_ms: list[float]
    entities: int
    entities_end: int
    accounts: int


def _engine_round(
    spec: FeatureSpec,
    warm: list[Sequence[Event]],
    timed: list[Sequence[Event]],
    capacity: int,
    same_events: int,
    keep_rows: bool,
) -> tuple[_EngineRound, npt.NDArray[np.float64]]:
    """A fresh state, the warm-up untimed, then every batch of the timed part timed."""
    state = FeatureState(spec, initial_capacity=capacity, prefault=True)
    for b in warm:
        state.update(b)
    entities = state.n_entities
    batch_ms: list[float] = []
    cpu_s: list[float] = []
    kept: list[npt.NDArray[np.float64]] = []
    clock, cpu_clock = time.perf_counter, time.process_time
    n_seen = 0
    same_batches = 0
    for b in timed:
        t0, c0 = clock(), cpu_clock()
        out = state.update(b)
        t1, c1 = clock(), cpu_clock()
        batch_ms.append((t1 - t0) * 1000.0)
        cpu_s.append(c1 - c0)
        if n_seen < same_events:
            same_batches += 1
            if keep_rows:
                kept.append(out.values)
        n_seen += len(b)
    n = sum(len(b) for b in timed)
    n_same = sum(len(b) for b in timed[:same_batches])

    def rate(events: int, seconds: float) -> float:
        return events / seconds if seconds > 0 else math.nan

    rnd = _EngineRound(
        eps=rate(n, sum(batch_ms) / 1000.0),
        cpu_eps=rate(n, sum(cpu_s)),
        same_eps=rate(n_same, sum(batch_ms[:same_batches]) / 1000.0),
        same_cpu_eps=rate(n_same, sum(cpu_s[:same_batches])),
        batch_ms=batch_ms,
        batch_cpu_ms=[c * 1000.0 for c in cpu_s],
        entities=entities,
        entities_end=state.n_entities,
        accounts=state.n_accounts,
    )
    rows = np.vstack(kept)[:same_events] if kept else np.zeros((0, len(spec.names)))
    return rnd, rows


def _compare(
    got: npt.NDArray[np.float64], want: npt.NDArray[np.float64]
) -> tuple[float, float, int]:
    """(max absolute difference, fraction of values within tolerance, values compared)."""
    if got.shape != want.shape or got.size == 0:
        return math.nan, 0.0, 0
    diff = np.abs(got - want)
    ok = diff <= AGREEMENT_RTOL * np.maximum(np.abs(want), 1.0)
    return float(diff.max()), float(ok.mean()), int(got.size)


def _sample_by_account(events: Sequence[Event], share: int) -> list[Event]:
    """Every event of the accounts (entities without one) in CRC-32 class 0 of ``share``."""
    return [e for e in events if zlib.crc32((e.account_id or e.entity_id).encode()) % share == 0]


def _window_value(spec: FeatureSpec, col: int, inside: Sequence[Event], close: int) -> float:
    """One output of a closed window, straight from its events (evaluated at close - 1 ms)."""
    o = spec.outputs[col]
    d = spec.features[o.feature]
    agg, q, cap = o.aggregation, close - 1, spec.recency_cap_ms
    got = [(e.ts_ms, c) for e in inside if (c := contribution(d, e)) is not None]
    vals = [(ts, c[0]) for ts, c in got if c[0] is not None]
    numbers = [v for _, v in vals]
    if agg == "count":
        return float(len(vals))
    if agg == "sum":
        return math.fsum(numbers)
    if agg == "mean":
        return math.fsum(numbers) / len(numbers) if numbers else 0.0
    if agg in ("min", "max"):
        return (min(numbers) if agg == "min" else max(numbers)) if numbers else 0.0
    if agg == "distinct":
        return float(min(len({c[1] for _, c in got if c[1] is not None}), d.max_distinct))
    if agg == "velocity":
        short = sum(1 for ts, _ in vals if ts >= close - o.window_ms)
        return (short / o.window_ms) / (len(vals) / o.window2_ms) if vals else 0.0
    if agg in ("last", "recency"):
        if not vals:
            return cap / 1000.0 if agg == "recency" else 0.0
        latest = max(ts for ts, _ in vals)
        if agg == "recency":
            return min(q - latest, cap) / 1000.0
        return [v for ts, v in vals if ts == latest][-1]
    h = o.half_life_ms
    total = math.fsum(v * 2.0 ** (-(q - ts) / h) for ts, v in vals)
    return total * math.log(2.0) * 3_600_000 / h if agg == "decayed_rate" else total


def _check_windows(
    spec: FeatureSpec, events: Sequence[Event], plan: WindowingPlan, limit: int
) -> tuple[float, int]:
    """Largest relative difference between up to ``limit`` closed windows and a recomputation.

    Returns (max |got - want| / max(1, |want|), values compared).
    """
    by_key: dict[tuple[str, str], list[Event]] = defaultdict(list)
    for e in events:
        by_key[("entity", e.entity_id)].append(e)
        if e.account_id:
            by_key[("account", e.account_id)].append(e)
    step = max(1, len(plan.rows) // limit)
    worst, checked = 0.0, 0
    for row in plan.rows[::step][:limit]:
        inside = [e for e in by_key[(row.kind, row.key)] if row.open_ms <= e.ts_ms < row.close_ms]
        for col, value in row.values:
            want = _window_value(spec, col, inside, row.close_ms)
            worst = max(worst, abs(value - want) / max(1.0, abs(want)))
            checked += 1
    return worst, checked


def _run_windowing(
    spec: FeatureSpec, events: Sequence[Event], batch: int, *, tumbling: bool = False
) -> tuple[float, float, WindowingPlan]:
    """(events per wall second, per CPU second, plan with the results) of one flow run."""
    flow, plan = windowing_flow(spec, events, batch_size=batch, tumbling=tumbling)
    t0, c0 = time.perf_counter(), time.process_time()
    run_main(flow)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(events) / wall, (len(events) / cpu if cpu > 0 else math.nan), plan


def _bytes_per_entity(spec: FeatureSpec, events: Sequence[Event], batch: int) -> float:
    """Bytes one entity holds: state arrays, key index, key hash and key string (tracemalloc).

    The state is sized for exactly the entities of ``events`` (no spare rows);
    the account table's arrays are not entity memory and are left out.
    """
    n_entities = len({e.entity_id for e in events})
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        state = FeatureState(spec, initial_capacity=n_entities)
        for b in _batches(events, batch):
            # fresh key strings, as parsing creates them, so that those the state keeps count
            state.update(
                [
                    Event(
                        e.event_id,
                        e.ts_ms,
                        e.entity_id.encode().decode(),
                        e.type,
                        e.account_id,
                        e.props,
                    )
                    for e in b
                ]
            )
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    return (used - state.bytes_per_account * state.account_capacity) / state.n_entities


def _fmt_eps(x: float) -> str:
    return f"{x:,.0f} events/s"


def run(args: argparse.Namespace, ctx: Context) -> Result:
    """Measure the three implementations; see the module docstring."""
    sizes = QUICK if ctx.quick else FULL
    contacts = args.contacts or sizes.contacts
    n_warm = args.warmup or sizes.warmup
    n_timed = args.timed or sizes.timed
    n_python = min(args.python_events or sizes.python_events, n_timed)
    share = args.bytewax_share or sizes.bytewax_share
    rounds = args.rounds or sizes.rounds
    batch = args.batch
    spec = FeatureSpec.default()
    say = ctx.console.print

    t0 = time.perf_counter()
    events = _events(contacts, n_warm + n_timed, args.seed, args.event_rate)
    warm_events, timed_events = events[:n_warm], events[n_warm:]
    say(f"stream: {len(events):,} events in {time.perf_counter() - t0:.1f} s")
    gc.collect()
    gc.freeze()  # the stream is long-lived: keep it out of every collection
    try:
        FeatureState(spec).update(timed_events[:10])  # compile or load the kernels, untimed
        warm, timed = _batches(warm_events, batch), _batches(timed_events, batch)

        say("python baseline: warm-up (untimed)")
        base = DequeFeatures(spec)
        for b in warm:
            base.update(b)
        # engine rounds and Python segments alternate, so that both see the same machine load
        engine: list[_EngineRound] = []
        # An untimed round first gives the rows compared with the baseline's. It also
        # takes the process's first touch of the memory the rounds allocate (the kept
        # rows among it), which otherwise made the first timed round about 10 % slower
        # than the others on this machine: a one-off cost of a new process, not of the
        # engine's work per event (bench/README.md).
        _, engine_rows = _engine_round(spec, warm, timed, contacts, n_python, keep_rows=True)
        gc.collect()
        py_eps: list[float] = []
        py_cpu: list[float] = []
        py_wall_s = py_cpu_s = 0.0
        py_rows: list[list[float]] = []
        seg = -(-n_python // rounds)
        for r in range(rounds):
            rnd, _ = _engine_round(spec, warm, timed, contacts, n_python, keep_rows=False)
            engine.append(rnd)
            gc.collect()
            part = timed_events[r * seg : min(n_python, (r + 1) * seg)]
            w0, c0 = time.perf_counter(), time.process_time()
            for b in _batches(part, batch):
                py_rows += base.update(b)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            py_wall_s, py_cpu_s = py_wall_s + wall, py_cpu_s + cpu
            py_eps.append(len(part) / wall)
            py_cpu.append(len(part) / cpu if cpu > 0 else math.nan)
            say(
                f"  round {r + 1}: engine {_fmt_eps(rnd.eps)} ({rnd.cpu_eps:,.0f} per CPU s), "
                f"python {_fmt_eps(py_eps[-1])} ({py_cpu[-1]:,.0f} per CPU s)"
            )
        max_abs, agree, compared = _compare(np.array(py_rows), engine_rows)
        del base, py_rows
        gc.collect()

        sample = _sample_by_account(timed_events, share)
        say(f"bytewax windowing on {len(sample):,} events (1/{share} of the accounts)")
        bw_eps, bw_cpu, plan = _run_windowing(spec, sample, batch)
        bw_diff, bw_checked = _check_windows(spec, sample, plan, 2000)
        bw_windows, bw_late = len(plan.rows), len(plan.late)
        assignments = plan.windows_per_event
        del plan
        tb_eps, tb_cpu, tplan = _run_windowing(spec, sample, batch, tumbling=True)
        tb_assign = tplan.windows_per_event
        del tplan
        say(f"  bytewax windowing: {_fmt_eps(bw_eps)}; tumbling: {_fmt_eps(tb_eps)}")
        gc.collect()

        say("memory per entity (tracemalloc over the warm-up)")
        per_entity = _bytes_per_entity(spec, warm_events, batch)
    finally:
        gc.unfreeze()

    probe = FeatureState(spec, initial_capacity=1)
    engine_eps = statistics.median(r.eps for r in engine)
    engine_cpu = statistics.median(r.cpu_eps for r in engine)
    same_eps = statistics.median(r.same_eps for r in engine)
    same_cpu = statistics.median(r.same_cpu_eps for r in engine)
    python_eps, python_cpu = statistics.median(py_eps), statistics.median(py_cpu)
    all_ms = [ms for r in engine for ms in r.batch_ms]
    all_cpu_ms = [ms for r in engine for ms in r.batch_cpu_ms]
    entities = min(r.entities for r in engine)
    figures: dict[str, Any] = {
        "engine_eps": engine_eps,
        "engine_eps_rounds": [r.eps for r in engine],
        "engine_cpu_eps": engine_cpu,
        "engine_eps_same_events": same_eps,
        "engine_cpu_eps_same_events": same_cpu,
        "engine_cpu_share": statistics.median(r.eps / r.cpu_eps for r in engine),
        "python_eps": python_eps,
        "python_eps_rounds": py_eps,
        "python_cpu_eps": python_cpu,
        "python_cpu_share": py_cpu_s / py_wall_s,
        "bytewax_windowing_eps": bw_eps,
        "bytewax_windowing_cpu_eps": bw_cpu,
        "bytewax_tumbling_eps": tb_eps,
        "bytewax_tumbling_cpu_eps": tb_cpu,
        "ratio_vs_python": same_eps / python_eps,
        "ratio_vs_bytewax_windowing": engine_eps / bw_eps,
        "cpu_ratio_vs_python": same_cpu / python_cpu,
        "cpu_ratio_vs_bytewax_windowing": engine_cpu / bw_cpu,
        "bytes_per_entity": per_entity,
        "state_bytes_per_entity": probe.bytes_per_entity,
        "state_bytes_per_account": probe.bytes_per_account,
        "batch_latency_p50_ms": percentile(all_ms, 50),
        "batch_latency_p99_ms": percentile(all_ms, 99),
        "batch_latency_max_ms": max(all_ms),
        "batch_cpu_p50_ms": percentile(all_cpu_ms, 50),
        "batch_cpu_p99_ms": percentile(all_cpu_ms, 99),
        "batches_timed": len(all_ms),
        "entities": entities,
        "entities_end": max(r.entities_end for r in engine),
        "accounts": max(r.accounts for r in engine),
        "outputs": len(spec.names),
        "python_max_abs_diff": max_abs,
        "python_agreement": agree,
        "python_values_compared": compared,
        "bytewax_windowing_events": len(sample),
        "bytewax_windowing_windows": bw_windows,
        "bytewax_windowing_late": bw_late,
        "bytewax_windowing_windows_per_event": assignments,
        "bytewax_tumbling_windows_per_event": tb_assign,
        "bytewax_windowing_checked_values": bw_checked,
        "bytewax_windowing_max_rel_diff": bw_diff,
        "bytewax_windowing_differences": list(WINDOWING_DIFFERENCES),
        "targets": {
            "ratio_vs_python": TARGET_RATIO_VS_PYTHON,
            "ratio_vs_bytewax_windowing": TARGET_RATIO_VS_BYTEWAX,
            "bytes_per_entity": TARGET_BYTES_PER_ENTITY,
        },
        "params": {
            "contacts": contacts,
            "warmup_events": n_warm,
            "timed_events": n_timed,
            "python_events": n_python,
            "bytewax_share": share,
            "rounds": rounds,
            "batch": batch,
            "seed": args.seed,
            "event_time_rate": args.event_rate,
            "journey_scale_s": JOURNEY_SCALE_S,
            "initial_capacity": contacts,
            "spec_hash": spec.spec_hash,
        },
    }
    met = {
        "ratio_vs_python": figures["ratio_vs_python"] >= TARGET_RATIO_VS_PYTHON,
        "ratio_vs_bytewax_windowing": figures["ratio_vs_bytewax_windowing"]
        >= TARGET_RATIO_VS_BYTEWAX,
        "bytes_per_entity": per_entity <= TARGET_BYTES_PER_ENTITY,
    }
    figures["targets_met"] = met

    warnings: list[str] = []
    if ctx.quick:
        warnings.append(
            f"quick: {entities:,} entities (the full run holds at least {MIN_ENTITIES:,}); "
            "figures are for smoke tests only"
        )
    elif entities < MIN_ENTITIES:
        warnings.append(f"only {entities:,} entities held when timing started")
    for key, ok in met.items():
        if not ok:
            warnings.append(f"{key} = {figures[key]:,.1f} misses its target {_target(key)}")
    if agree < 1.0:
        warnings.append(f"the Python rows agree with the engine's on only {agree:.4%} of values")
    if bw_late:
        warnings.append(f"{bw_late} items were late for Bytewax windows (not in their windows)")
    share_cpu = figures["engine_cpu_share"]
    if share_cpu < 0.8:
        warnings.append(
            f"the engine had {share_cpu:.0%} of a core while timed (median of the rounds): "
            "other processes were using the machine; wall-clock figures are understated"
        )
    if max(r.eps for r in engine) > 1.25 * min(r.eps for r in engine):
        warnings.append(
            "engine rounds differ by more than 25 % in wall-clock eps: the machine is busy; "
            "the *_cpu_eps figures are steadier"
        )

    rows: list[tuple[str, str]] = [
        ("entities held (timed part)", f"{entities:,} to {figures['entities_end']:,}"),
        ("engine", f"{_fmt_eps(engine_eps)} ({engine_cpu:,.0f} per CPU s)"),
        ("python deques", f"{_fmt_eps(python_eps)} ({python_cpu:,.0f} per CPU s)"),
        (
            "bytewax windowing",
            f"{_fmt_eps(bw_eps)} on {len(sample):,} events ({bw_cpu:,.0f} per CPU s)",
        ),
        ("bytewax tumbling (coarser)", f"{_fmt_eps(tb_eps)}"),
        (
            "ratio vs python",
            f"{figures['ratio_vs_python']:.1f}x (CPU {figures['cpu_ratio_vs_python']:.1f}x)",
        ),
        (
            "ratio vs bytewax windowing",
            f"{figures['ratio_vs_bytewax_windowing']:.0f}x "
            f"(CPU {figures['cpu_ratio_vs_bytewax_windowing']:.0f}x)",
        ),
        (
            "batch latency p50 / p99",
            f"{figures['batch_latency_p50_ms']:.2f} / "
            f"{figures['batch_latency_p99_ms']:.2f} ms per {batch} events "
            f"(CPU {figures['batch_cpu_p50_ms']:.2f} / {figures['batch_cpu_p99_ms']:.2f})",
        ),
        ("bytes per entity", f"{per_entity:,.0f} ({probe.bytes_per_entity:,} in state arrays)"),
        ("python vs engine", f"max |diff| {max_abs:.2g}, {agree:.4%} of {compared:,} values"),
        ("bytewax check", f"max relative diff {bw_diff:.2g} over {bw_checked:,} values"),
    ]
    return Result(figures=figures, rows=rows, warnings=warnings)


def _target(key: str) -> str:
    """The target of a figure, in words."""
    return {
        "ratio_vs_python": f">= {TARGET_RATIO_VS_PYTHON:g}",
        "ratio_vs_bytewax_windowing": f">= {TARGET_RATIO_VS_BYTEWAX:g}",
        "bytes_per_entity": f"<= {TARGET_BYTES_PER_ENTITY:,}",
    }[key]

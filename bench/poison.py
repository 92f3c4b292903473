"""Scenario ``poison``: throughput with 1 % poison input against a clean run.

The whole dataflow runs in memory (``TestingSource`` → parse → shards →
``TestingSink``; no Redis, so the figure is the engine's own) over the same
synthetic events twice per round: once clean, once with a poison item after
every 99 events (1 % of the input). The poison cycles through twelve kinds,
from cheap (truncated JSON, wrong types, NaN) to expensive ones (a 10 MB
payload, nesting 5,000 levels deep, a 100,000-digit integer, a 60 KB payload
that parses and fails validation at its end), each becoming a dead letter
with its digest computed. Runs alternate after a warm-up; ``eps_*`` is the
median of valid events per wall-clock second, ``cpu_eps_*`` per CPU second
of this process (steadier on a shared machine). ``ratio_poison_vs_clean``
is ``cpu_eps_poison / cpu_eps_clean``; the target is at least 0.8.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tomllib
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any, Final

import orjson
from bytewax.testing import TestingSink, TestingSource, run_main

from bench.common import Context, Result
from intentflow.config import Config, load_config
from intentflow.dataflows.flow import build_flow, engine_parts
from intentflow.dataflows.sources import RawItem
from intentflow.generator import BuyerJourneyGenerator, GeneratorConfig
from intentflow.sinks.base import DeadLetterOut, Output

__all__ = ["HELP", "add_arguments", "poison_kinds", "run"]

HELP: Final = "bad input cost: events/s with 1 % poison input against a clean run"
TARGET_RATIO: Final = 0.8
#: One poison item after this many events (1 % of the input).
EVERY: Final = 99
EVENT_TIME_RATE: Final = 50.0


@dataclass(frozen=True)
class Sizes:
    events: int
    rounds: int


FULL: Final = Sizes(events=60_000, rounds=3)
QUICK: Final = Sizes(events=10_000, rounds=2)


def poison_kinds(now_ms: int) -> list[bytes]:
    """Twelve kinds of refused payload, cheap and expensive (shared objects, not copies)."""
    ok = {"event_id": "p", "ts": now_ms, "entity_id": "c-p", "type": "page_view"}
    head = orjson.dumps(ok)[:-1]
    return [
        b'{"event_id": "p1", "ts": ',
        b"\xff\xfe not UTF-8",
        b"[1, 2, 3]",
        orjson.dumps({**ok, "event_id": 42}),
        head + b',"props":{"x":NaN}}',
        head + b',"props":{"x":1e400}}',
        orjson.dumps({**ok, "ts": now_ms + 30 * 86_400_000}),
        orjson.dumps({k: v for k, v in ok.items() if k != "event_id"}),
        orjson.dumps({**ok, "props": {"blob": "x" * 10_000_000}}),
        head + b',"props":{"x":' + b"[" * 5000 + b"]" * 5000 + b"}}",
        head + b',"props":{"x":' + b"9" * 100_000 + b"}}",
        orjson.dumps({**ok, "props": {"t": "y" * 60_000}}),
    ]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, help="valid events per run (default 60,000)")
    p.add_argument("--rounds", type=int, help="measured rounds (default 3)")
    p.add_argument("--shards", type=int, default=4, help="engine shards (default 4)")
    p.add_argument("--batch", type=int, default=1000, help="source batch size (default 1000)")


def _config(shards: int) -> Config:
    demo = tomllib.loads(resources.files("intentflow").joinpath("defaults/demo.toml").read_text())
    cfg = load_config(None, env={})
    cfg = replace(cfg, labels=demo["labels"], model=demo["model"])
    return cfg.with_overrides({"engine.shards": shards})


def _run_once(
    cfg: Config, items: list[RawItem], batch: int, valid: int
) -> tuple[float, float, int]:
    """One run: (valid events per wall second, per CPU second, dead letters)."""
    parts = engine_parts(cfg)
    out: list[Output] = []
    flow = build_flow(cfg, TestingSource(items, batch_size=batch), TestingSink(out), parts=parts)
    t0, c0 = time.perf_counter(), time.process_time()
    run_main(flow)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    dead = sum(1 for o in out if isinstance(o, DeadLetterOut))
    return valid / wall, valid / cpu, dead


def run(args: argparse.Namespace, ctx: Context) -> Result:
    """Measure clean and poisoned throughput; see the module docstring."""
    sizes = QUICK if ctx.quick else FULL
    n_events = args.events or sizes.events
    rounds = args.rounds or sizes.rounds
    cfg = _config(args.shards)
    gen = BuyerJourneyGenerator(GeneratorConfig(events_per_second=EVENT_TIME_RATE, seed=5))
    payloads = gen.next_payloads(n_events)
    kinds = poison_kinds(int(time.time() * 1000))
    clean = [RawItem("bench", str(i), p, 0.0, None) for i, p in enumerate(payloads)]
    mixed: list[RawItem] = []
    n_poison = 0
    for i, p in enumerate(payloads):
        mixed.append(RawItem("bench", str(len(mixed)), p, 0.0, None))
        if (i + 1) % EVERY == 0:
            bad = kinds[n_poison % len(kinds)]
            mixed.append(RawItem("bench", str(len(mixed)), bad, 0.0, None))
            n_poison += 1
    ctx.console.print(
        f"warm-up, then {rounds} round(s) of {n_events:,} events, clean and with "
        f"{n_poison:,} poison items ({100 * n_poison / len(mixed):.2f} %)"
    )
    _run_once(cfg, mixed[: min(len(mixed), 5000)], args.batch, 5000)
    runs: dict[str, list[tuple[float, float]]] = {"clean": [], "poison": []}
    dead = {"clean": 0, "poison": 0}
    for r in range(rounds):
        order = ("clean", "poison") if r % 2 == 0 else ("poison", "clean")
        for name in order:
            items = clean if name == "clean" else mixed
            wall, cpu, dead[name] = _run_once(cfg, items, args.batch, n_events)
            runs[name].append((wall, cpu))
            ctx.console.print(
                f"  round {r + 1}: {name:<6} {wall:>10,.0f} events/s ({cpu:,.0f} per CPU second)"
            )
    eps = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu_eps = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
    ratio = cpu_eps["poison"] / cpu_eps["clean"]
    wall_ratio = eps["poison"] / eps["clean"]
    figures: dict[str, Any] = {
        "params": {
            "events": n_events,
            "rounds": rounds,
            "shards": args.shards,
            "batch": args.batch,
            "poison_every": EVERY,
        },
        "poison_items": n_poison,
        "poison_share": n_poison / len(mixed),
        "dead_letters": dead["poison"],
        "eps_clean": eps["clean"],
        "eps_poison": eps["poison"],
        "cpu_eps_clean": cpu_eps["clean"],
        "cpu_eps_poison": cpu_eps["poison"],
        "ratio_poison_vs_clean": ratio,
        "wall_ratio_poison_vs_clean": wall_ratio,
        "target_ratio": TARGET_RATIO,
        "target_met": ratio >= TARGET_RATIO,
    }
    rows = [
        ("events per run", f"{n_events:,} valid (+{n_poison:,} poison)"),
        ("clean", f"{eps['clean']:,.0f} events/s, {cpu_eps['clean']:,.0f} per CPU s"),
        ("1 % poison", f"{eps['poison']:,.0f} events/s, {cpu_eps['poison']:,.0f} per CPU s"),
        (
            "ratio poison / clean",
            f"{ratio:.3f} CPU ({wall_ratio:.3f} wall), target ≥ {TARGET_RATIO}",
        ),
        ("dead letters", f"{dead['poison']:,} (clean run: {dead['clean']:,})"),
    ]
    warnings: list[str] = []
    if dead["poison"] != n_poison or dead["clean"] != 0:
        warnings.append(f"expected {n_poison} dead letters, got {dead['poison']}")
    if not figures["target_met"]:
        warnings.append(f"poison costs more than {100 * (1 - TARGET_RATIO):.0f} % of throughput")
    return Result(figures=figures, rows=rows, warnings=warnings)

"""Scenario ``rules``: what rules cost. Events/s with 0, 10 and 100 rules on the same stream.

The whole dataflow runs in memory (``TestingSource`` → parse → shards →
``TestingSink``; no Redis, so the figure is the engine's own), over the same
synthetic events each time, with a rules file of 0, 10 or 100 rules: the
five example rules of ``examples/rules.toml`` plus generated ones of every
kind (props and feature conditions, keyword lists in English and Chinese,
counts, score adjustments, rules for every event type, absence timers).
Runs alternate between the three rule counts, each measured ``rounds``
times after a warm-up; ``eps_N`` is the median of events per wall-clock
second, ``cpu_eps_N`` of events per CPU second of this process (the engine
runs in one thread here, so CPU time is what the run would take on a quiet
machine; it is much steadier than wall time on a shared one).
``cost_N_pct`` (``cpu_cost_N_pct``) is the throughput lost to N rules
relative to 0 rules; the target is 100 rules < 30 %, checked on CPU time.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tomllib
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Final

from bytewax.testing import TestingSink, TestingSource, run_main

from bench.common import Context, Result
from intentflow.config import Config, load_config
from intentflow.dataflows.flow import build_flow, engine_parts
from intentflow.dataflows.sources import RawItem
from intentflow.generator import BuyerJourneyGenerator, GeneratorConfig
from intentflow.rules.provider import RulesProvider
from intentflow.sinks.base import AlertOut, Output

__all__ = ["HELP", "add_arguments", "make_rules", "run"]

HELP: Final = "rules cost: events/s with 0, 10 and 100 rules on the same stream"
RULE_COUNTS: Final = (0, 10, 100)
EXAMPLES: Final = Path(__file__).resolve().parents[1] / "examples" / "rules.toml"
#: Events per second of event time in the synthetic stream.
EVENT_TIME_RATE: Final = 50.0
TARGET_COST_PCT: Final = 30.0

_WORDS_EN: Final = (
    "price", "quote", "contract", "discount", "budget", "competitor", "cancel", "refund",
    "outage", "slow", "bug", "security", "pilot", "trial", "renewal", "invoice", "sso",
    "integration", "migrate", "legal",
)  # fmt: skip
_WORDS_ZH: Final = (
    "价格", "报价", "合同", "折扣", "预算", "竞品", "取消", "退款", "故障", "很慢",
    "安全", "试用", "续约", "发票", "单点登录", "集成", "迁移", "法务",
)  # fmt: skip
_CATEGORIES: Final = ("pricing", "product", "blog", "docs", "case_study", "careers", "home")
_ACTIONS: Final = ("call_now", "book_demo", "send_case_study", "nurture_email", "offer_discount")
#: "Hot" rules: a feature threshold and the event types they watch.
_HOT: Final = (
    ("page_views__count__1h", '["page_view"]'),
    ("pricing_views__count__7d", '["page_view"]'),
    ("chat_messages__count__24h", '["chat_message"]'),
    ("email_clicks__count__7d", '["email_click", "email_open"]'),
    ("cart_adds__count__24h", '["cart_add"]'),
    ("form_submits__count__7d", '["form_submit"]'),
    ("product_views__count__24h", '["page_view", "click"]'),
    ("support_tickets__count__7d", '["ticket"]'),
    ("account_activity__count__7d", '["crm_activity", "email_open"]'),
    ("activity__count__24h", '["click"]'),
)
#: Event types counted by counting rules.
_COUNTED: Final = (
    "page_view",
    "email_open",
    "click",
    "chat_message",
    "form_submit",
    "page_view",
    "email_click",
    "crm_activity",
    "ticket",
    "mention",
)


@dataclass(frozen=True)
class Sizes:
    events: int
    rounds: int


FULL: Final = Sizes(events=60_000, rounds=3)
QUICK: Final = Sizes(events=15_000, rounds=1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of this scenario (defaults depend on ``--quick``)."""
    p.add_argument("--events", type=int, help="events per run (60000; quick 15000)")
    p.add_argument("--rounds", type=int, help="measured runs per rule count (3; quick 1)")
    p.add_argument("--shards", type=int, default=4, help="engine shards (4)")
    p.add_argument("--batch", type=int, default=500, help="input batch size (500)")


def _generated(i: int) -> str:
    """One generated rule; the kinds cycle so that every 10 rules hold each kind once."""
    kind = i % 10
    rid = f"gen_{i:03d}"
    action = _ACTIONS[i % len(_ACTIONS)]
    cat = _CATEGORIES[i % len(_CATEGORIES)]
    alert = f'[rules.alert]\naction = "{action}"\ntarget = "owner"\ndeadline = "4h"\n'
    if kind in (0, 5):
        return (
            f'[[rules]]\nid = "{rid}"\ntypes = ["page_view"]\ncooldown = "6h"\n'
            f'when = \'props.category == "{cat}" && has(props.duration_s) && '
            f"props.duration_s > {240 + 5 * i}'\n{alert}"
        )
    if kind == 1:
        feature, types = _HOT[(i // 10) % len(_HOT)]
        return (
            f'[[rules]]\nid = "{rid}"\ntypes = {types}\ncooldown = "12h"\n'
            f"when = 'features.{feature} >= {8 + i % 5}.0 && score >= 0.{8 + i % 2}'\n"
            f"{alert}"
        )
    if kind == 2:
        words = [_WORDS_EN[(i + k) % len(_WORDS_EN)] for k in range(4)]
        words += [_WORDS_ZH[(i + k) % len(_WORDS_ZH)] for k in range(4)]
        listed = ", ".join(f'"{w}"' for w in words)
        return (
            f'[[rules]]\nid = "{rid}"\ntypes = ["chat_message", "mention", "ticket"]\n'
            f'keywords = [{listed}]\ncooldown = "1d"\n{alert}'
        )
    if kind == 3:
        return (
            f'[[rules]]\nid = "{rid}"\ntypes = ["cart_add", "purchase"]\ncooldown = "1d"\n'
            f"when = 'has(props.price) && props.price > {5000 * (1 + i % 7)}.0 || "
            f"features.cart_adds__count__24h >= {4 + i % 3}.0'\n{alert}"
        )
    if kind == 4:
        return (
            f'[[rules]]\nid = "{rid}"\ntypes = ["email_open", "email_click"]\ncooldown = "1d"\n'
            f"when = 'features.email_engagement__count__7d >= {10 + i % 6}.0'\n{alert}"
        )
    if kind == 6:
        return (
            f'[[rules]]\nid = "{rid}"\ntypes = ["page_view"]\n'
            f'when = \'props.category == "pricing" && features.pricing_views__count__7d >= '
            f"{2 + i % 4}.0'\n[rules.adjust]\nboost = 1.{1 + i % 5}\n"
        )
    if kind == 7:
        counted = _COUNTED[(i // 10) % len(_COUNTED)]
        return (
            f'[[rules]]\nid = "{rid}"\ntypes = ["{counted}"]\nscope = "account"\n'
            f'cooldown = "1d"\n[rules.count]\nat_least = {3 + i % 4}\nwithin = "1d"\n'
            f'gap = "10m"\nreset_types = ["purchase"]\n{alert}'
        )
    if kind == 8:
        return (
            f'[[rules]]\nid = "{rid}"\ntypes = ["*"]\ncooldown = "1d"\n'
            f"when = 'features.activity__count__24h >= {80 + i}.0 && "
            f"features.account_contacts__distinct__7d >= 3.0'\n{alert}"
        )
    return (
        f'[[rules]]\nid = "{rid}"\ntypes = ["form_submit", "crm_activity", "ticket"]\n'
        f'cooldown = "7d"\n'
        f'when = \'(has(props.form) && props.form == "demo_request" && '
        f"features.demo_requests__count__30d >= {2 + i % 3}.0) || "
        f'(has(props.severity) && props.severity in ["high", "critical"] && '
        f"features.support_tickets__count__7d >= {2 + i % 3}.0)'\n{alert}"
    )


def make_rules(n: int) -> str:
    """A rules file of ``n`` rules: the five examples first, then generated ones."""
    if n == 0:
        return "format = 1\n"
    text = EXAMPLES.read_text(encoding="utf-8")
    blocks = text.split("\n[[rules]]\n")
    head, examples = blocks[0], blocks[1:]
    chosen = examples[: min(n, len(examples))]
    parts = [head, *(f"[[rules]]\n{b}" for b in chosen)]
    parts += [_generated(i) for i in range(n - len(chosen))]
    return "\n".join(parts) + "\n"


def _config(shards: int, batch: int) -> Config:
    demo = tomllib.loads(resources.files("intentflow").joinpath("defaults/demo.toml").read_text())
    cfg = load_config(None, env={})
    cfg = replace(cfg, labels=demo["labels"], model=demo["model"])
    return cfg.with_overrides({"engine.shards": shards, "input.batch_size": batch})


def _run_once(
    cfg: Config, items: list[RawItem], rules_path: Path, batch: int
) -> tuple[float, float, int]:
    """One run: (events per wall second, events per CPU second, rule alerts)."""
    parts = engine_parts(cfg)
    provider = RulesProvider(
        parts.spec, parts.catalog, path=rules_path, redis_key=None, reload_interval_s=3600.0
    )
    provider.load_initial()
    out: list[Output] = []
    flow = build_flow(
        cfg, TestingSource(items, batch_size=batch), TestingSink(out), parts=parts, rules=provider
    )
    t0, c0 = time.perf_counter(), time.process_time()
    run_main(flow)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rule_alerts = sum(
        1 for o in out if isinstance(o, AlertOut) and o.alert["trigger"]["kind"] == "rule"
    )
    return len(items) / wall, len(items) / cpu, rule_alerts


def run(args: argparse.Namespace, ctx: Context) -> Result:
    """Measure events/s for each rule count; see the module docstring."""
    sizes = QUICK if ctx.quick else FULL
    n_events = args.events or sizes.events
    rounds = args.rounds or sizes.rounds
    cfg = _config(args.shards, args.batch)
    gen = BuyerJourneyGenerator(GeneratorConfig(events_per_second=EVENT_TIME_RATE, seed=5))
    items = [
        RawItem("bench", str(i), p, 0.0, None) for i, p in enumerate(gen.next_payloads(n_events))
    ]
    paths: dict[int, Path] = {}
    for n in RULE_COUNTS:
        paths[n] = ctx.workdir / f"rules-{n}.toml"
        paths[n].write_text(make_rules(n), encoding="utf-8")
    ctx.console.print(
        f"warm-up (kernel compilation), then {rounds} round(s) of {n_events:,} events"
    )
    _run_once(cfg, items[: min(len(items), 5000)], paths[RULE_COUNTS[-1]], args.batch)
    eps: dict[int, list[float]] = {n: [] for n in RULE_COUNTS}
    cpu_eps: dict[int, list[float]] = {n: [] for n in RULE_COUNTS}
    alerts: dict[int, int] = {}
    for r in range(rounds):
        order = RULE_COUNTS if r % 2 == 0 else tuple(reversed(RULE_COUNTS))
        for n in order:
            wall, cpu, alerts[n] = _run_once(cfg, items, paths[n], args.batch)
            eps[n].append(wall)
            cpu_eps[n].append(cpu)
            ctx.console.print(
                f"  round {r + 1}: {n:>3} rules {wall:>10,.0f} events/s ({cpu:,.0f} per CPU second)"
            )
    med = {n: statistics.median(v) for n, v in eps.items()}
    cpu_med = {n: statistics.median(v) for n, v in cpu_eps.items()}
    figures: dict[str, Any] = {
        "events": n_events,
        "rounds": rounds,
        "shards": args.shards,
        "batch": args.batch,
        "target_cost_pct": TARGET_COST_PCT,
    }
    rows: list[tuple[str, str]] = [("events per run", f"{n_events:,}"), ("rounds", str(rounds))]
    for n in RULE_COUNTS:
        figures[f"eps_{n}"] = med[n]
        figures[f"eps_{n}_runs"] = eps[n]
        figures[f"cpu_eps_{n}"] = cpu_med[n]
        figures[f"rule_alerts_{n}"] = alerts[n]
        rows.append(
            (
                f"{n} rules",
                f"{med[n]:,.0f} events/s, {cpu_med[n]:,.0f} per CPU s ({alerts[n]:,} rule alerts)",
            )
        )
    warnings: list[str] = []
    for n in RULE_COUNTS[1:]:
        cost = 100.0 * (1.0 - med[n] / med[0]) if med[0] else float("nan")
        cpu_cost = 100.0 * (1.0 - cpu_med[n] / cpu_med[0]) if cpu_med[0] else float("nan")
        figures[f"cost_{n}_pct"] = cost
        figures[f"cpu_cost_{n}_pct"] = cpu_cost
        rows.append((f"cost of {n} rules", f"{cost:.1f} % of throughput ({cpu_cost:.1f} % CPU)"))
    figures["target_met"] = figures["cpu_cost_100_pct"] < TARGET_COST_PCT
    if not figures["target_met"]:
        warnings.append(
            f"100 rules cost {figures['cpu_cost_100_pct']:.1f} % of CPU throughput "
            f"(target < {TARGET_COST_PCT:g} %)"
        )
    if max(eps[0]) > 1.25 * min(eps[0]):
        warnings.append(
            "wall-clock runs of the same configuration differ by more than 25 %: the machine "
            "is busy; the CPU-time figures are the steadier ones"
        )
    return Result(figures=figures, rows=rows, warnings=warnings)

"""``intentflow rules check|test|push``: validate, try out and publish a rules file."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from intentflow.commands.common import config_from_args
from intentflow.config import Config
from intentflow.contracts import Rejection, parse_event
from intentflow.dataflows.flow import engine_parts
from intentflow.dataflows.logic import EngineParts, ShardLogic, shard_key
from intentflow.errors import ConfigError, IntentflowError
from intentflow.events import Event
from intentflow.features.spec import format_duration
from intentflow.redisutil import connect, ping_or_fail
from intentflow.rules.compile import RuleSet
from intentflow.rules.provider import RulesProvider, load_rules_file
from intentflow.sinks.base import AlertOut

__all__ = ["RulesRun", "cmd_check", "cmd_push", "cmd_test", "read_events", "run_rules"]


def _describe(rs: RuleSet) -> Table:
    table = Table(title=f"rules {rs.version} ({rs.source})")
    for name in ("rule", "on", "condition", "outcome"):
        table.add_column(name, overflow="fold")
    for rule in rs.doc.rules:
        if rule.absence is not None:
            on = f"no outcome within {format_duration(rule.absence.after_ms)} of " + ", ".join(
                rule.absence.watch
            )
        else:
            on = ", ".join(rule.types) or "every event"
        cond = []
        if rule.keywords:
            cond.append("keywords: " + ", ".join(rule.keywords))
        if rule.when:
            cond.append(rule.when)
        if rule.count is not None:
            c = rule.count
            cond.append(f"{c.at_least}× within {format_duration(c.within_ms)} per {rule.scope}")
        if rule.alert is not None:
            a = rule.alert
            outcome = (
                f"alert {a.action or '(awaited action)'} → {a.target}, "
                f"deadline {format_duration(a.deadline_ms)}"
            )
        else:
            assert rule.adjust is not None
            outcome = "suppress" if rule.adjust.suppress else f"boost ×{rule.adjust.boost:g}"
        if rule.cooldown_ms:
            outcome += f", cooldown {format_duration(rule.cooldown_ms)}"
        name = rule.id if rule.enabled else f"{rule.id} (disabled)"
        table.add_row(name, on, "\n".join(cond) or "-", outcome)
    return table


def _load(args: argparse.Namespace) -> tuple[Config, EngineParts, RuleSet]:
    config = config_from_args(args)
    parts = engine_parts(config)
    return config, parts, load_rules_file(args.file, parts.spec, parts.catalog)


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a rules file against the configured feature spec and action catalog."""
    _, parts, rs = _load(args)
    console = Console(highlight=False)
    console.print(_describe(rs))
    console.print(
        f"[green]ok[/]: {len(rs.doc.rules)} rules ({len(rs.rules)} enabled), content hash "
        f"{rs.content_hash[:12]}, checked against feature spec {parts.spec.spec_hash[:8]} "
        f"and {len(parts.catalog.actions)} catalog actions"
    )
    return 0


def read_events(path: str | Path, config: Config) -> tuple[list[Event], list[tuple[int, str]]]:
    """Events of a JSONL file, and ``(line, reason)`` of the lines that are not valid events."""
    events: list[Event] = []
    bad: list[tuple[int, str]] = []
    now_ms = int(time.time() * 1000)
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as err:
        raise ConfigError(f"--events: cannot read {path}: {err}") from err
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        res = parse_event(line, config.limits, now_ms=now_ms, source=str(path), offset=str(i))
        if isinstance(res, Rejection):
            bad.append((i, f"{res.reason}: {res.message}"))
        else:
            events.append(res)
    return events, bad


@dataclass
class RulesRun:
    """What the rules did on a sequence of events."""

    alerts: list[dict[str, Any]] = field(default_factory=list)  # rule alerts, in order per shard
    model_alerts: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    pending: list[dict[str, Any]] = field(default_factory=list)  # absence timers still open


def run_rules(
    events: Iterable[Event],
    parts: EngineParts,
    provider: RulesProvider,
    *,
    shards: int = 1,
    batch_size: int = 1000,
) -> RulesRun:
    """Run the whole per-shard engine (features, score, rules) over ``events`` in memory."""
    by_shard: dict[str, list[Event]] = {}
    for ev in events:
        by_shard.setdefault(shard_key(ev.account_id or ev.entity_id, shards), []).append(ev)
    run = RulesRun()
    for key in sorted(by_shard):
        logic = ShardLogic(parts, None, None, provider)
        evs = by_shard[key]
        for start in range(0, len(evs), batch_size):
            out, _ = logic.on_batch(evs[start : start + batch_size])
            for o in out:
                if isinstance(o, AlertOut):
                    kind = o.alert["trigger"]["kind"]
                    (run.alerts if kind == "rule" else run.model_alerts).append(o.alert)
        for name, n in logic.rule_engine.state.counts.items():
            run.counts[name] = run.counts.get(name, 0) + n
        for per in logic.rule_engine.state.pending.values():
            run.pending.extend(p._asdict() for p in per.values())
    return run


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def cmd_test(args: argparse.Namespace) -> int:
    """Show which rules fire on which events of a JSONL sample."""
    config, parts, rs = _load(args)
    provider = RulesProvider(
        parts.spec, parts.catalog, path=args.file, redis_key=None, reload_interval_s=1e9
    )
    provider.load_initial()
    events, bad = read_events(args.events, config)
    run = run_rules(
        events, parts, provider, shards=config.engine.shards, batch_size=config.input.batch
    )
    if args.json:
        for alert in run.alerts:
            print(orjson.dumps(alert).decode())
        return 0
    console = Console(highlight=False)
    table = Table(title=f"rules {rs.version} on {args.events}")
    for name in ("event", "time", "entity", "rule", "action → target", "why"):
        table.add_column(name, overflow="fold")
    for alert in run.alerts:
        action = alert["action"]
        target = action["target"]
        table.add_row(
            ", ".join(alert["trace"]["event_ids"]),
            _iso(alert["event_ts"]),
            alert["entity_id"],
            alert["trigger"]["rule_id"],
            f"{action['id']} → {target['kind']} {target['id'] or '?'}",
            action["why"],
        )
    console.print(table)
    summary = Table(title="per rule")
    for name in ("rule", "fired", "errors"):
        summary.add_column(name)
    for rule in rs.doc.rules:
        summary.add_row(
            rule.id,
            str(run.counts.get(f"fired:{rule.id}", 0)),
            str(run.counts.get(f"rule_errors:{rule.id}", 0)),
        )
    console.print(summary)
    console.print(
        f"{len(events)} events, {len(bad)} invalid lines, {len(run.alerts)} rule alerts, "
        f"{len(run.pending)} absence timers still waiting at the end"
    )
    for line, reason in bad[:10]:
        console.print(f"[yellow]line {line}[/]: {reason}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """Validate a rules file, then store it in the Redis key that running engines watch."""
    config, _, rs = _load(args)
    key = config.rules.redis_key
    if not config.redis.url:
        raise ConfigError("rules push needs --redis-url or REDIS_URL (the engines' Redis)")
    if not key:
        raise ConfigError("rules.redis_key is empty: the engines do not read rules from Redis")
    client = connect(config.redis.url)
    try:
        ping_or_fail(client, config.redis.url)
        client.set(key, Path(args.file).read_text(encoding="utf-8"))
    except OSError as err:
        raise IntentflowError(f"cannot read {args.file}: {err}") from err
    finally:
        client.close()
    Console(highlight=False).print(
        f"stored {len(rs.doc.rules)} rules (content hash {rs.content_hash[:12]}) in {key}; "
        f"engines apply them within rules.reload_interval_s ({config.rules.reload_interval_s:g} s)"
    )
    return 0

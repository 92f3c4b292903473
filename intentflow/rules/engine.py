"""Per-shard rule evaluation and the rules' own state (cooldowns, counts, absence timers).

A :class:`RuleEngine` belongs to one shard. It runs the shard's current
:class:`~intentflow.rules.compile.RuleSet` on every event, in event order,
after the event is scored. Its :class:`RuleState` is Bytewax state: plain
dicts, lists and tuples, picklable and bounded, snapshotted with the shard.

Time is event time. The engine's clock is the largest event time it has
seen; cooldowns, count windows and absence deadlines are measured against
it, so results do not depend on batching and a replay gives the same alerts.
An absence deadline fires when the clock passes it (an event later than
the deadline arrives). On an idle shard, :meth:`RuleEngine.notify_at` asks
Bytewax to wake the shard when the deadline would pass if event time kept
pace with the wall clock since the last event; :meth:`RuleEngine.on_notify`
then fires what is due (docs/rules.md, "Time").
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple, Protocol

import cel
import numpy as np
from numpy.typing import NDArray

from intentflow.events import Event
from intentflow.online_models.policy import alert_id
from intentflow.rules.compile import CompiledRule, RuleSet
from intentflow.sinks.base import AlertOut, Output

__all__ = ["Adjustment", "ModelInfo", "Pending", "RuleEngine", "RuleState"]

log = logging.getLogger("intentflow.rules")

_NO_HITS: Final[tuple[set[int], set[int]]] = (set(), set())


class ModelInfo(Protocol):
    """The model named in rule alerts."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...


class Pending(NamedTuple):
    """An absence timer: an alert awaiting an ``outcome`` until ``deadline_ms``."""

    deadline_ms: int
    rule_id: str
    alert_id: str
    entity_id: str
    account_id: str | None
    owner: str | None
    action_id: str
    channel: str
    priority: float
    score: float
    trigger_id: str
    event_id: str
    event_type: str
    source: str
    offset: str


@dataclass
class RuleState:
    """The rules' per-shard state (picklable, bounded by :class:`RuleEngine` limits).

    ``cooldowns``: (rule, key) → event time of the last firing. ``counters``:
    (rule, key) → [last matching event time, counted event times...].
    ``pending``: awaited alert id → rule → timer; ``heap`` orders the timers
    by deadline (entries of answered timers are skipped lazily). ``owners``:
    account (else entity) → the last ``props.owner`` seen.
    """

    clock: int = 0
    cooldowns: dict[tuple[str, str], int] = field(default_factory=dict)
    counters: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    pending: dict[str, dict[str, Pending]] = field(default_factory=dict)
    heap: list[tuple[int, str, str]] = field(default_factory=list)
    n_pending: int = 0
    owners: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Adjustment:
    """How rules change the model-driven decision of one event."""

    factor: float = 1.0
    suppress: bool = False
    applied: list[dict[str, Any]] = field(default_factory=list)

    def score(self, score: float) -> float:
        """The score the policy decides on: ``score × factor``, at most 1."""
        return min(1.0, score * self.factor)


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _clip(score: float) -> float:
    score = float(score)
    if not math.isfinite(score):
        return 0.0
    return round(min(1.0, max(0.0, score)), 6)


class RuleEngine:
    """Runs rule sets on one shard's events and owns the shard's :class:`RuleState`.

    ``max_keys`` bounds cooldown, counter and owner entries each (the least
    recently used are forgotten first); ``max_timers`` bounds the absence
    timers (further ones are dropped and counted). ``idle_timers`` enables
    firing absence deadlines on an idle shard (wall clock, see module doc).
    """

    def __init__(
        self,
        state: RuleState | None = None,
        *,
        schema_version: str = "1.0",
        max_keys: int = 200_000,
        max_timers: int = 100_000,
        idle_timers: bool = True,
    ) -> None:
        self.state = state if state is not None else RuleState()
        self.schema_version = schema_version
        self.max_keys = max_keys
        self.max_timers = max_timers
        self.idle_timers = idle_timers
        self._anchor: tuple[float, int] | None = None  # (wall ms, clock) for idle timers
        self._logged: set[tuple[str, str]] = set()

    # --- bookkeeping -----------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        counts = self.state.counts
        counts[name] = counts.get(name, 0) + n

    def _error(self, rs: RuleSet, rule: CompiledRule, err: BaseException) -> None:
        self._count("rule_errors")
        self._count(f"rule_errors:{rule.id}")
        if (rs.version, rule.id) not in self._logged and len(self._logged) < 10_000:
            self._logged.add((rs.version, rule.id))
            log.warning(
                "rule %s (rules %s): evaluation failed: %s: %s (logged once; counted in "
                "rule_errors:%s)",
                rule.id,
                rs.version,
                type(err).__name__,
                err,
                rule.id,
            )

    def _run(self, program: cel.Program, ctx: cel.Context, rs: RuleSet, rule: CompiledRule) -> bool:
        try:
            result = program.execute(ctx)
        except Exception as err:  # CEL raises KeyError, TypeError, ValueError, RuntimeError, ...
            self._error(rs, rule, err)
            return False
        if result is True:
            return True
        if result is not False:
            self._error(rs, rule, TypeError(f"condition gave {result!r}, not true or false"))
        return False

    def _remember_owner(self, key: str, owner: str) -> None:
        owners = self.state.owners
        owners.pop(key, None)
        owners[key] = owner
        if len(owners) > self.max_keys:
            del owners[next(iter(owners))]

    # --- events ------------------------------------------------------------------------------

    def advance(
        self,
        rs: RuleSet,
        ev: Event,
        model: ModelInfo,
        now_ms: float,
        out: list[Output],
    ) -> None:
        """Move the clock to ``ev``'s time; fire the absence deadlines it passed.

        Call for every event (outcomes included), in order, before the event
        itself is handled.
        """
        st = self.state
        if ev.ts_ms > st.clock:
            st.clock = ev.ts_ms
        if st.heap and st.heap[0][0] < st.clock:
            self._fire_due(rs, st.clock, ev.ingest_ts, model, now_ms, out)
        if ev.type == "outcome":
            awaited = ev.props.get("alert_id")
            if isinstance(awaited, str):
                answered = st.pending.pop(awaited, None)
                if answered:
                    st.n_pending -= len(answered)
                    self._count("rule_timers_answered", len(answered))

    def on_event(
        self,
        rs: RuleSet,
        ev: Event,
        score: float,
        row: NDArray[np.float64] | None,
        model: ModelInfo,
        now_ms: float,
        out: list[Output],
    ) -> Adjustment | None:
        """Run the rules on one scored (non-outcome) event; append rule alerts to ``out``.

        Returns how rules adjust the model-driven decision, or ``None``. Cheap
        tests come first (type, index key, cooldown, keywords); the CEL context
        is then built once, with only what the remaining programs read.
        """
        st = self.state
        props = ev.props
        account_key = ev.account_id or ev.entity_id
        if rs.track_owners:
            owner = props.get("owner")
            if isinstance(owner, str) and owner and st.owners.get(account_key) != owner:
                self._remember_owner(account_key, owner)
        idx = rs.index.get(ev.type, rs.any_index)
        resetters = rs.resets.get(ev.type)
        if not idx.rules and not resetters:
            return None
        ts = ev.ts_ms
        cooldowns = st.cooldowns
        counters = st.counters
        entity_id = ev.entity_id
        adjustment: Adjustment | None = None
        # Rules that need CEL wait until the cheap tests of all rules are done, so that one
        # context holds exactly what they read: (rule, key, matched keywords, is a reset).
        deferred: list[tuple[CompiledRule, str, tuple[str, ...], bool]] = []
        programs: list[int] = []
        if resetters:
            for rule in resetters:
                key = entity_id if rule.scope_entity else account_key
                if (rule.id, key) not in counters:
                    continue
                if rule.reset_when is None:
                    del counters[(rule.id, key)]
                    self._count("rule_count_resets")
                else:
                    deferred.append((rule, key, (), True))
                    programs.append(2 * rule.position + 1)
        hits: dict[str, tuple[set[int], set[int]]] | None = None
        for rule in idx.candidates(props, row, score):
            guards = rule.guards
            if guards:
                passed = True
                for guard in guards:
                    if not guard(props, row, score):
                        passed = False
                        break
                if not passed:
                    continue
            key = entity_id if rule.scope_entity else account_key
            if rule.cooldown_ms and rule.count is None:
                last = cooldowns.get((rule.id, key))
                if last is not None and ts < last + rule.cooldown_ms:
                    continue
            matched: tuple[str, ...] = ()
            if rule.keyword_ids:
                if hits is None:
                    hits = {}
                matched = self._keywords(rs, rule, ev, hits)
                if not matched:
                    continue
            if rule.when is not None:
                deferred.append((rule, key, matched, False))
                programs.append(2 * rule.position)
                continue
            if rule.count is not None and not self._counted(rule, key, ts):
                continue
            adjustment = self._act(
                rs, rule, key, matched, ev, score, row, model, now_ms, out, adjustment
            )
        if deferred:
            ctx = rs.plan_of(tuple(programs)).context(ev, score, row, rs.doc.lookups)
            for rule, key, matched, is_reset in deferred:
                program = rule.reset_when if is_reset else rule.when
                assert program is not None
                if not self._run(program, ctx, rs, rule):
                    continue
                if is_reset:
                    del counters[(rule.id, key)]
                    self._count("rule_count_resets")
                    continue
                if rule.count is not None and not self._counted(rule, key, ts):
                    continue
                adjustment = self._act(
                    rs, rule, key, matched, ev, score, row, model, now_ms, out, adjustment
                )
        return adjustment

    def _act(
        self,
        rs: RuleSet,
        rule: CompiledRule,
        key: str,
        matched: tuple[str, ...],
        ev: Event,
        score: float,
        row: NDArray[np.float64] | None,
        model: ModelInfo,
        now_ms: float,
        out: list[Output],
        adjustment: Adjustment | None,
    ) -> Adjustment | None:
        """A rule whose condition holds: start its cooldown, then alert or adjust."""
        if rule.cooldown_ms:
            cooldowns = self.state.cooldowns
            ck = (rule.id, key)
            last = cooldowns.pop(ck, None)
            if last is not None and ev.ts_ms < last + rule.cooldown_ms:
                cooldowns[ck] = last  # a count reached during the cooldown
                return adjustment
            cooldowns[ck] = ev.ts_ms
            if len(cooldowns) > self.max_keys:
                del cooldowns[next(iter(cooldowns))]
        self._count(f"fired:{rule.id}")
        if rule.adjust is not None:
            if adjustment is None:
                adjustment = Adjustment()
            if rule.adjust.suppress:
                adjustment.suppress = True
                effect: dict[str, Any] = {"effect": "suppress"}
            else:
                adjustment.factor *= rule.adjust.boost
                effect = {"effect": "boost", "factor": rule.adjust.boost}
            adjustment.applied.append({"rule_id": rule.id, "rules_version": rs.version, **effect})
            self._count("rule_adjustments")
            return adjustment
        account_key = ev.account_id or ev.entity_id
        alert = self._event_alert(rs, rule, ev, score, row, model, now_ms, matched, account_key)
        out.append(AlertOut(alert))
        self._count("rule_alerts")
        if rs.absence:
            self.watch(rs, alert)
        return adjustment

    def _keywords(
        self,
        rs: RuleSet,
        rule: CompiledRule,
        ev: Event,
        hits: dict[str, tuple[set[int], set[int]]],
    ) -> tuple[str, ...]:
        matcher = rs.matcher
        assert matcher is not None
        found: set[int] = set()
        for name in rule.keyword_fields:
            h = hits.get(name)
            if h is None:
                text = ev.props.get(name)
                h = matcher.find(text) if isinstance(text, str) and text else _NO_HITS
                hits[name] = h
            pool = h[1] if rule.whole_words else h[0]
            if pool:
                found |= pool & rule.keyword_ids
        return tuple(matcher.keywords[i] for i in sorted(found))

    def _counted(self, rule: CompiledRule, key: str, ts: int) -> bool:
        """Count a matching event; True when it completes ``at_least`` within the window."""
        spec = rule.count
        assert spec is not None
        counters = self.state.counters
        ck = (rule.id, key)
        seq = counters.get(ck)
        if seq is None:
            seq = [ts, ts]
            if len(counters) >= self.max_keys:
                del counters[next(iter(counters))]  # the oldest count started
            counters[ck] = seq
        else:
            last = seq[0]
            if ts > last:
                seq[0] = ts
            if spec.gap_ms and ts - last < spec.gap_ms:
                return False  # the same visit
            seq.append(ts)
            cutoff = ts - spec.within_ms
            first = 1
            while first < len(seq) and seq[first] < cutoff:
                first += 1
            keep = max(first, len(seq) - spec.at_least)
            if keep > 1:
                del seq[1:keep]
        if len(seq) - 1 >= spec.at_least:
            del counters[ck]
            self._count("rule_counts_reached")
            return True
        return False

    def _target(self, rule: CompiledRule, owner: str | None) -> dict[str, Any]:
        spec = rule.defn.alert
        assert spec is not None
        if spec.target == "owner":
            if owner is None and spec.fallback is not None:
                return {"kind": "team", "id": spec.fallback[5:]}
            return {"kind": "owner", "id": owner}
        return {"kind": "team", "id": spec.target[5:]}

    def _details(
        self,
        rs: RuleSet,
        rule: CompiledRule,
        ev: Event,
        score: float,
        row: NDArray[np.float64] | None,
    ) -> dict[str, Any]:
        ctx = rule.detail_plan.context(ev, score, row, rs.doc.lookups)
        details: dict[str, Any] = {}
        for name, program in rule.details:
            try:
                details[name] = _json_safe(program.execute(ctx))
            except Exception as err:  # a detail that cannot be computed is shown as null
                self._error(rs, rule, err)
                details[name] = None
        return details

    def _event_alert(
        self,
        rs: RuleSet,
        rule: CompiledRule,
        ev: Event,
        score: float,
        row: NDArray[np.float64] | None,
        model: ModelInfo,
        now_ms: float,
        matched: tuple[str, ...],
        account_key: str,
    ) -> dict[str, Any]:
        d = rule.defn
        spec = d.alert
        assert spec is not None
        assert spec.action is not None
        owner = ev.props.get("owner")
        if not isinstance(owner, str) or not owner:
            owner = self.state.owners.get(account_key)
        why = f"rule {rule.id}: {d.description}"
        if matched:
            why += f"; matched {', '.join(matched)}"
        action: dict[str, Any] = {
            "id": spec.action,
            "channel": rule.channel,
            "priority": rule.priority,
            "probability": 1.0,
            "why": why,
            "target": self._target(rule, owner),
            "deadline_ts": ev.ts_ms + spec.deadline_ms,
        }
        if rule.details:
            action["details"] = self._details(rs, rule, ev, score, row)
        trigger: dict[str, Any] = {
            "kind": "rule",
            "id": rule.trigger_id,
            "rule_id": rule.id,
            "rules_version": rs.version,
        }
        if matched:
            trigger["matched"] = list(matched)
        reasons = (
            []
            if row is None
            else [
                {"feature": name, "label": label, "value": float(row[col]), "contribution": 0.0}
                for name, label, col in rule.reasons
            ]
        )
        return {
            "schema_version": self.schema_version,
            "alert_id": alert_id(ev.entity_id, rule.trigger_id, ev.event_id),
            "entity_id": ev.entity_id,
            "account_id": ev.account_id,
            "owner": owner,
            "event_ts": ev.ts_ms,
            "ingest_ts": ev.ingest_ts,
            "emit_ts": now_ms,
            "score": _clip(score),
            "trigger": trigger,
            "action": action,
            "reasons": reasons,
            "model": {"name": model.name, "version": model.version},
            "trace": {
                "event_ids": [ev.event_id],
                "event_type": ev.type,
                "source": ev.source,
                "offset": ev.offset,
                "produced_ts": ev.produced_ts,
            },
        }

    # --- absence -----------------------------------------------------------------------------

    def watch(self, rs: RuleSet, alert: Mapping[str, Any]) -> None:
        """Start the absence timers of the rules that await ``alert``'s outcome."""
        if not rs.absence:
            return
        trigger = alert["trigger"]
        trigger_id = trigger["id"]
        from_absence = "awaited_alert_id" in trigger
        slim: dict[str, Any] | None = None
        for rule in rs.absence:
            spec = rule.defn.absence
            assert spec is not None
            if spec.watch == ("*",):
                if from_absence:
                    continue
            elif trigger_id not in spec.watch:
                continue
            if rule.when is not None:
                if slim is None:
                    slim = _slim(alert)
                env: dict[str, Any] = {"alert": slim}
                if rule.when_refs is not None and rule.when_refs.uses("lookups"):
                    env["lookups"] = rs.doc.lookups
                if not self._run(rule.when, cel.Context(env), rs, rule):
                    continue
            self._start_timer(rule, alert, alert["event_ts"] + spec.after_ms)

    def _start_timer(self, rule: CompiledRule, alert: Mapping[str, Any], deadline: int) -> None:
        st = self.state
        aid = alert["alert_id"]
        per = st.pending.get(aid)
        if per is not None and rule.id in per:
            return
        if st.n_pending >= self.max_timers:
            self._count("rule_timers_dropped")
            return
        action = alert["action"]
        trace = alert["trace"]
        timer = Pending(
            deadline_ms=deadline,
            rule_id=rule.id,
            alert_id=aid,
            entity_id=alert["entity_id"],
            account_id=alert.get("account_id"),
            owner=alert.get("owner"),
            action_id=action["id"],
            channel=action["channel"],
            priority=float(action["priority"]),
            score=float(alert["score"]),
            trigger_id=alert["trigger"]["id"],
            event_id=trace["event_ids"][0],
            event_type=trace.get("event_type", ""),
            source=trace.get("source", ""),
            offset=trace.get("offset", ""),
        )
        if per is None:
            per = st.pending[aid] = {}
        per[rule.id] = timer
        st.n_pending += 1
        heapq.heappush(st.heap, (deadline, aid, rule.id))
        self._count("rule_timers_started")
        if len(st.heap) > 2 * st.n_pending + 1024:
            self._rebuild_heap()

    def _rebuild_heap(self) -> None:
        st = self.state
        st.heap = [
            (p.deadline_ms, aid, rid) for aid, per in st.pending.items() for rid, p in per.items()
        ]
        heapq.heapify(st.heap)

    def _fire_due(
        self,
        rs: RuleSet,
        until: int,
        ingest_ts: float,
        model: ModelInfo,
        now_ms: float,
        out: list[Output],
    ) -> int:
        """Fire every timer whose deadline is before ``until``; returns how many fired."""
        st = self.state
        heap = st.heap
        fired = 0
        while heap and heap[0][0] < until:
            _, aid, rule_id = heapq.heappop(heap)
            per = st.pending.get(aid)
            timer = per.pop(rule_id, None) if per is not None else None
            if timer is None:
                continue  # answered by an outcome
            st.n_pending -= 1
            if not per:
                del st.pending[aid]
            rule = rs.by_id.get(rule_id)
            if rule is None or rule.defn.absence is None or rule.defn.alert is None:
                self._count("rule_timers_orphaned")
                continue
            alert = self._absence_alert(rs, rule, timer, ingest_ts, model, now_ms)
            out.append(AlertOut(alert))
            self._count("rule_alerts")
            self._count("rule_timers_fired")
            self._count(f"fired:{rule.id}")
            fired += 1
            self.watch(rs, alert)
        return fired

    def _absence_alert(
        self,
        rs: RuleSet,
        rule: CompiledRule,
        p: Pending,
        ingest_ts: float,
        model: ModelInfo,
        now_ms: float,
    ) -> dict[str, Any]:
        spec = rule.defn.alert
        absence = rule.defn.absence
        assert spec is not None
        assert absence is not None
        action_id = spec.action or p.action_id
        channel = rule.channel if spec.action is not None else p.channel
        priority = (
            rule.priority if spec.action is not None or spec.priority is not None else p.priority
        )
        hours = absence.after_ms / 3_600_000
        why = (
            f"rule {rule.id}: {rule.defn.description}; no outcome for alert {p.alert_id} "
            f"({p.action_id}, {p.trigger_id}) within {hours:g} h"
        )
        owner = p.owner or self.state.owners.get(p.account_id or p.entity_id)
        return {
            "schema_version": self.schema_version,
            "alert_id": alert_id(p.entity_id, rule.trigger_id, p.alert_id),
            "entity_id": p.entity_id,
            "account_id": p.account_id,
            "owner": owner,
            "event_ts": p.deadline_ms,
            "ingest_ts": ingest_ts,
            "emit_ts": now_ms,
            "score": _clip(p.score),
            "trigger": {
                "kind": "rule",
                "id": rule.trigger_id,
                "rule_id": rule.id,
                "rules_version": rs.version,
                "awaited_alert_id": p.alert_id,
                "awaited_trigger": p.trigger_id,
            },
            "action": {
                "id": action_id,
                "channel": channel,
                "priority": priority,
                "probability": 1.0,
                "why": why,
                "target": self._target(rule, owner),
                "deadline_ts": p.deadline_ms + spec.deadline_ms,
            },
            "reasons": [],
            "model": {"name": model.name, "version": model.version},
            "trace": {
                "event_ids": [p.event_id],
                "event_type": p.event_type,
                "source": p.source,
                "offset": p.offset,
                "produced_ts": None,
            },
        }

    # --- idle shards and housekeeping --------------------------------------------------------

    def notify_at(self, now_ms: float | None = None) -> datetime | None:
        """When an idle shard should wake to fire its next absence deadline, or ``None``."""
        st = self.state
        if not self.idle_timers or not st.heap:
            return None
        now = time.time() * 1000.0 if now_ms is None else now_ms
        if self._anchor is None or self._anchor[1] != st.clock:
            self._anchor = (now, st.clock)
        wall, clock = self._anchor
        due = wall + (st.heap[0][0] - clock) + 1.0
        return datetime.fromtimestamp(max(due, now) / 1000.0, tz=UTC)

    def on_notify(
        self,
        rs: RuleSet,
        model: ModelInfo,
        out: list[Output],
        now_ms: float | None = None,
    ) -> int:
        """Fire the deadlines an idle shard has passed by the wall clock; returns how many."""
        if not self.idle_timers or self._anchor is None or self._anchor[1] != self.state.clock:
            return 0
        now = time.time() * 1000.0 if now_ms is None else now_ms
        wall, clock = self._anchor
        virtual = clock + int(now - wall)
        if virtual <= self.state.clock:
            return 0
        fired = self._fire_due(rs, virtual, now, model, now, out)
        if fired:
            self._count("rule_timers_fired_idle", fired)
        return fired

    def prune(self, rs: RuleSet) -> None:
        """Forget ended cooldowns and counts, and the state of rules no longer in ``rs``."""
        st = self.state
        now = st.clock
        by_id = rs.by_id
        for ck, last in list(st.cooldowns.items()):
            rule = by_id.get(ck[0])
            if rule is None or last + rule.defn.cooldown_ms <= now:
                del st.cooldowns[ck]
        for ck, seq in list(st.counters.items()):
            rule = by_id.get(ck[0])
            spec = rule.defn.count if rule is not None else None
            if spec is None or seq[0] < now - spec.within_ms:
                del st.counters[ck]
        orphans = 0
        for aid in list(st.pending):
            per = st.pending[aid]
            for rid in [r for r in per if r not in by_id]:
                del per[rid]
                orphans += 1
            if not per:
                del st.pending[aid]
        if orphans:
            st.n_pending -= orphans
            self._count("rule_timers_orphaned", orphans)
            self._rebuild_heap()


def _slim(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The alert as the ``alert`` variable of absence conditions."""
    action = alert["action"]
    trigger = alert["trigger"]
    return {
        "alert_id": alert["alert_id"],
        "entity_id": alert["entity_id"],
        "account_id": alert.get("account_id"),
        "owner": alert.get("owner"),
        "event_ts": alert["event_ts"],
        "score": alert["score"],
        "trigger": {"kind": trigger["kind"], "id": trigger["id"]},
        "action": {
            "id": action["id"],
            "channel": action["channel"],
            "priority": action["priority"],
        },
    }

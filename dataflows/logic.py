"""The per-shard engine: de-duplicate → features → label → learn → score → decide.

Entities are hashed to a fixed number of shards (``engine.shards``); Bytewax
routes whole batches per shard key, and one :class:`ShardLogic` owns all the
state of its shard: the de-duplication window, the feature arrays, the River
model, the pending delayed labels and the policy's cooldowns. Everything is
Bytewax state: :meth:`ShardLogic.snapshot` captures it, the builder restores
it, so a resumed run continues exactly where the snapshot left off.
"""

from __future__ import annotations

import pickle
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import compress
from typing import Any, Final

import numpy as np
from bytewax.operators import StatefulBatchLogic

from intentflow.dataflows.dedup import SeenIds
from intentflow.errors import RecoveryError, SnapshotMismatchError
from intentflow.events import Event
from intentflow.features.spec import FeatureSpec
from intentflow.features.state import FeatureState
from intentflow.metrics import EngineMetrics, ShardObserver
from intentflow.online_models.catalog import ActionCatalog
from intentflow.online_models.champion import ModelSet
from intentflow.online_models.labels import LabelBook, LabelConfig, Labels, labels_list
from intentflow.online_models.model import IntentModel, ModelConfig
from intentflow.online_models.policy import DEFAULT_TRIGGER, Policy
from intentflow.online_models.scorelog import ScoreLogBatch
from intentflow.online_models.targets import SideTargets
from intentflow.rules.compile import RuleSet
from intentflow.rules.engine import RuleEngine
from intentflow.rules.provider import RulesProvider
from intentflow.sinks.base import AlertOut, Output, ScoresOut

__all__ = [
    "ALERT_SCHEMA_VERSION",
    "EngineParts",
    "ShardLogic",
    "ShardSnapshot",
    "shard_key",
]

ALERT_SCHEMA_VERSION: Final = "1.0"
SNAPSHOT_SCHEMA_VERSION: Final = 4
#: Shard snapshot schemas this version resumes from. Schema 4 changed only the
#: label book's form (``LabelBook`` schema 4: pending points in arrays, labels as
#: :class:`Labels`); a schema-3 snapshot is converted as it loads.
READABLE_SNAPSHOT_SCHEMAS: Final = (3, SNAPSHOT_SCHEMA_VERSION)
MODEL_TRIGGER: Final = DEFAULT_TRIGGER  # "model:intent": the trigger of every model alert
#: What a shard emits: outputs for the sink, and score-log batches when enabled.
EngineOutput = Output | ScoreLogBatch


def shard_key(routing_key: str, shards: int) -> str:
    """The Bytewax key of the shard that owns ``routing_key``.

    Events are routed by ``account_id`` when present, else ``entity_id``, so a
    whole account lives in one shard and account roll-ups are exact.

    >>> shard_key("a-00042", 4)
    's3'
    """
    return f"s{zlib.crc32(routing_key.encode()) % shards}"


@dataclass(frozen=True)
class EngineParts:
    """Everything a shard needs to build its state, parsed once from config."""

    spec: FeatureSpec
    model: ModelConfig
    labels: LabelConfig
    catalog: ActionCatalog
    dedup_window_ms: int = 86_400_000
    dedup_max: int = 1_000_000
    entities_per_shard: int = 1024  # feature rows allocated at start (engine.entities_per_shard)
    accounts_per_shard: int = 0  # 0: a sixteenth of entities_per_shard
    housekeeping_interval_ms: int = 60_000
    learn_tick_ms: int = 5_000
    initial_model: IntentModel | None = None  # warm start of fresh shards (--model-file)
    score_log: bool = False  # emit a ScoreLogBatch per scored segment (--score-log)
    #: False when the run has no recovery: Bytewax still asks every stateful step for
    #: a snapshot at each epoch, and pickling the whole shard would be thrown away.
    snapshots: bool = True


@dataclass(frozen=True)
class ShardSnapshot:
    """Immutable, versioned snapshot of one shard (its state pickled at snapshot time)."""

    schema_version: int
    spec_hash: str
    model_kind: str
    state: bytes
    #: CRC-32 of ``state`` (-1: not recorded); detects damage, not tampering.
    crc32: int = -1

    def damaged(self) -> bool:
        """Whether ``state`` no longer matches the checksum taken when it was written."""
        return self.crc32 != -1 and zlib.crc32(self.state) != self.crc32


#: What a shard answers for a snapshot when the run has no recovery (nothing can
#: resume from it: its schema version is refused by :meth:`ShardLogic._restore`).
_NO_SNAPSHOT: Final = ShardSnapshot(0, "", "", b"")


#: What a shard receives: events, or lists of events in order.
ShardInput = Event | list[Event]


def _flatten(values: Sequence[ShardInput]) -> list[Event]:
    """The events of ``values`` in order: all events, or all lists of events."""
    if not values or type(values[0]) is not list:
        return values if type(values) is list else list(values)  # type: ignore[arg-type]
    if len(values) == 1:
        return values[0]
    return [e for chunk in values for e in chunk]  # type: ignore[union-attr]


class ShardLogic(StatefulBatchLogic[ShardInput, EngineOutput, ShardSnapshot]):
    """All the state and per-batch processing of one shard."""

    def __init__(
        self,
        parts: EngineParts,
        resume: ShardSnapshot | None,
        metrics: EngineMetrics | None = None,
        rules: RulesProvider | None = None,
    ) -> None:
        self._parts = parts
        self.rule_engine = RuleEngine(schema_version=ALERT_SCHEMA_VERSION)
        self._metrics = metrics or EngineMetrics()  # process-local, never snapshotted
        self._obs: ShardObserver | None = None
        if resume is None:
            self.features = FeatureState(
                parts.spec,
                initial_capacity=parts.entities_per_shard,
                account_capacity=parts.accounts_per_shard,
            )
            self.model = ModelSet(parts.model, parts.spec.spec_hash, parts.initial_model)
            self.labels = LabelBook(parts.labels)
            self.side = SideTargets(parts.labels, parts.model, parts.spec.spec_hash)
            self.policy = Policy(parts.catalog, parts.model.threshold)
            self.seen = SeenIds(parts.dedup_max)
            self.watermark = 0
            self.counters: dict[str, int] = {}
            self._next_housekeeping_ms = parts.housekeeping_interval_ms
            self._matured: list[Labels] = []  # positives resolved since the last tick
        else:
            self._restore(resume)
        self._rules = rules  # process-wide rules provider (configuration, not state)
        self._ruleset: RuleSet | None = None  # the rules of the current batch
        if rules is not None:
            self.rule_engine = rules.engine(self.rule_engine.state, ALERT_SCHEMA_VERSION)
        self._latest: dict[str, tuple[float, int, str]] = {}  # score, event time, model
        self._logged: list[ScoreLogBatch] = []  # score-log batches of the current batch
        self._names = parts.spec.names
        self._descriptions = parts.spec.descriptions
        self._top_k = parts.model.reason_top_k

    # --- state -------------------------------------------------------------------

    def _restore(self, snap: ShardSnapshot) -> None:
        if snap.schema_version not in READABLE_SNAPSHOT_SCHEMAS:
            raise SnapshotMismatchError(
                f"shard snapshot schema {snap.schema_version} cannot be read by this version "
                f"(it reads schemas {' and '.join(map(str, READABLE_SNAPSHOT_SCHEMAS))}); "
                "start from a new recovery directory"
            )
        if snap.spec_hash != self._parts.spec.spec_hash:
            raise SnapshotMismatchError(
                f"the recovery directory was written with feature spec {snap.spec_hash}, "
                f"the configuration now has {self._parts.spec.spec_hash}; restore the old "
                "spec or start from a new recovery directory"
            )
        if snap.model_kind != self._parts.model.kind:
            raise SnapshotMismatchError(
                f"the recovery directory holds a {snap.model_kind!r} model, the configuration "
                f"asks for {self._parts.model.kind!r}; export/import the model or start anew"
            )
        if snap.damaged():
            raise RecoveryError(
                "a shard snapshot in the recovery directory is damaged (checksum mismatch); "
                "restore the directory from a backup or start a new one"
            )
        state = pickle.loads(snap.state)
        self.features = FeatureState.restore(
            self._parts.spec,
            state["features"],
            initial_capacity=self._parts.entities_per_shard,
            account_capacity=self._parts.accounts_per_shard,
        )
        self.model = state["model"]
        self.labels = state["labels"]
        self.side = state["side"]
        self.policy = state["policy"]
        self.seen = state["seen"]
        self.seen.limit(self._parts.dedup_max)  # a snapshot of an older version holds no cap
        self.watermark = state["watermark"]
        self.counters = state["counters"]
        self._next_housekeeping_ms = state["next_housekeeping_ms"]
        self._matured = labels_list(state["matured"], len(self._parts.spec.names))
        self.rule_engine = RuleEngine(state.get("rules"), schema_version=ALERT_SCHEMA_VERSION)

    def snapshot(self) -> ShardSnapshot:
        if not self._parts.snapshots:
            return _NO_SNAPSHOT
        state = {
            "features": self.features.snapshot(copy=False),  # pickled below, at once
            "model": self.model,
            "labels": self.labels,
            "side": self.side,
            "policy": self.policy,
            "seen": self.seen,
            "watermark": self.watermark,
            "counters": self.counters,
            "next_housekeeping_ms": self._next_housekeeping_ms,
            "matured": self._matured,
            "rules": self.rule_engine.state,
        }
        blob = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        snap = ShardSnapshot(
            SNAPSHOT_SCHEMA_VERSION,
            self._parts.spec.spec_hash,
            self._parts.model.kind,
            blob,
            zlib.crc32(blob),
        )
        if self._obs is not None:
            self._obs.snapshotted(len(snap.state))
        return snap

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # --- processing ------------------------------------------------------------------

    def _dedup(self, events: list[Event]) -> list[Event]:
        new = self.seen.admit([ev.event_id for ev in events], [ev.ts_ms for ev in events])
        fresh = list(compress(events, new.tolist()))
        dups = len(events) - len(fresh)
        if dups:
            self._count("duplicates", dups)
        return fresh

    def _trim_seen(self) -> None:
        """Forget ids older than the de-duplication window (insertion order ≈ time)."""
        self.seen.trim(self.watermark - self._parts.dedup_window_ms, self._parts.dedup_max)

    def _learn(self, matured: Labels) -> None:
        if not len(matured):
            return
        y = matured.y
        drifts = self.model.counts["drifts"]
        self.model.learn_batch(matured.X, y, self._names)
        if self.model.counts["drifts"] > drifts:
            self._metrics.drift_detected(self.model.counts["drifts"] - drifts)
        if self._obs is not None:
            self._obs.learned(matured)
        self._count("labels", len(matured))
        self._count("labels_positive", int(y.sum()))

    def _process_segment(
        self, events: list[Event], feats: np.ndarray, a: int, b: int, out: list[Output]
    ) -> None:
        """Score events ``a:b`` in one call, then decide, observe and resolve in order.

        The model does not change inside a segment (it learns only at ticks),
        so one scoring call gives each event the score it would get alone.
        """
        if a >= b:
            return
        scores = self.model.score_batch(feats[a:b], self._names)
        only = self._parts.model.scored_types
        if self.side:
            self.side.process_segment(events, feats, a, b, self._names, only)
        if self._parts.score_log:
            self._logged.append(
                ScoreLogBatch.of(events, a, b, scores, self.model.version, self._parts.model)
            )
        ready = self.model.ready
        version = self.model.version  # the model that scored this segment
        now_ms = time.time() * 1000.0
        labels, policy, latest = self.labels, self.policy, self._latest
        decide = policy.decide
        threshold = policy.threshold
        label_cfg = self._parts.labels
        conversion_types = label_cfg.conversion_types
        is_conversion = label_cfg.is_conversion
        matured = self._matured
        rules, rule_engine = self._ruleset, self.rule_engine
        below = 0  # events whose score is below the threshold: no decision to make
        # decision points, recorded in one call before each conversion and at the end
        obs_ids: list[str] = []
        obs_ts: list[int] = []
        obs_rows: list[int] = []
        obs_scores: list[float] = []
        for j, score in enumerate(scores.tolist(), a):
            ev = events[j]
            etype = ev.type
            if rules is not None:
                rule_engine.advance(rules, ev, self.model, now_ms, out)
            if etype in conversion_types or (etype == "outcome" and is_conversion(ev)):
                if obs_ids:
                    labels.observe_many(obs_ids, obs_ts, feats, obs_rows, obs_scores)
                    obs_ids, obs_ts, obs_rows, obs_scores = [], [], [], []
                positives = labels.on_conversion(ev.entity_id, ev.ts_ms)
                if len(positives):
                    matured.append(positives)
            if etype == "outcome":
                policy.feedback(ev)
                continue
            if only is not None and etype not in only:
                continue  # not a scored type (model.score_types)
            latest[ev.entity_id] = (score, ev.ts_ms, version)
            obs_ids.append(ev.entity_id)
            obs_ts.append(ev.ts_ms)
            obs_rows.append(j)
            obs_scores.append(score)
            adjust = None
            if rules is not None:
                adjust = rule_engine.on_event(rules, ev, score, feats[j], self.model, now_ms, out)
            if not ready:
                continue
            if adjust is None:
                if score < threshold:  # what Policy.decide would answer, without the call
                    below += 1
                    continue
            elif adjust.suppress:
                self._count("alerts_suppressed")
                continue
            decided = score if adjust is None else adjust.score(score)
            row = feats[j]  # a view: made only for the few events that reach a decision
            decision = decide(ev, decided, row, self._names)
            if decision is not None:
                alert = self._alert(ev, score, row, decision, now_ms)
                if adjust is not None:
                    alert["adjustments"] = adjust.applied
                out.append(AlertOut(alert))
                self._count("alerts")
                if rules is not None:
                    rule_engine.watch(rules, alert)
        if obs_ids:
            labels.observe_many(obs_ids, obs_ts, feats, obs_rows, obs_scores)
        if below:
            policy.counts["below_threshold"] += below

    def _tick(self) -> None:
        """Learn every label matured so far: resolved positives and expired negatives."""
        self._matured.append(self.labels.expire(self.watermark))
        matured = Labels.concat(self._matured, len(self._names))
        self._matured = []
        self._learn(matured)
        if self.side:
            self.side.tick(self.watermark, self._names)

    def on_batch(self, values: Sequence[ShardInput]) -> tuple[Iterable[EngineOutput], bool]:
        """Process a batch exactly as if its events had arrived one by one.

        ``values`` are events, or lists of events (the flow sends one list per
        shard and input batch; the two are not mixed); either way they are
        processed in order.

        The model learns at event-time *ticks* (``engine.learn_tick_s``): when
        the watermark enters a new tick, it learns every label that matured
        before (positives resolved by conversions, negatives whose horizon
        ended), then scores on. Segments between ticks are scored in one call
        each. Ticks depend only on event times, so results do not depend on
        batch boundaries (which differ after a resume).
        """
        flat = _flatten(values)
        events = self._dedup(flat)
        obs = self._observer(flat)
        rule_errors = self.rule_engine.state.counts.get("rule_errors", 0)
        if not events:
            obs.batch(len(flat), len(flat), 0, ())
            return [], StatefulBatchLogic.RETAIN
        self._count("events", len(events))
        current = self._rules.current() if self._rules is not None else None
        self._ruleset = None if current is None or current.empty else current
        batch = self.features.update(events)
        feats = batch.values
        late = batch.dropped
        if late:
            self._count("late_dropped", late)

        out: list[Output] = []
        self._latest = {}
        tick_ms = self._parts.learn_tick_ms
        watermark = self.watermark
        tick = watermark // tick_ms
        seg = 0
        for i, ev in enumerate(events):
            ts = ev.ts_ms
            if ts <= watermark:
                continue
            watermark = ts
            if ts // tick_ms > tick:
                self._process_segment(events, feats, seg, i, out)
                seg = i
                self.watermark = watermark  # the tick expires labels at the new watermark
                tick = ts // tick_ms
                self._tick()
        self.watermark = watermark
        self._process_segment(events, feats, seg, len(events), out)

        if self._latest:
            out.append(ScoresOut(self._latest))  # one record for the batch's score hashes
        if self.watermark >= self._next_housekeeping_ms:
            self._housekeeping()
        obs.batch(len(flat), len(flat) - len(events), late, out)
        errors = self.rule_engine.state.counts.get("rule_errors", 0) - rule_errors
        if errors:
            self._metrics.rule_errors(errors)
        if obs.due():
            decided = self.policy.counts["decisions"]
            if decided:
                self._metrics.exploration_ratio(self.policy.counts["explored"] / decided)
            obs.state(
                entities=self.features.n_entities,
                accounts=self.features.n_accounts,
                feature_bytes=self.features.nbytes,
                dedup_ids=len(self.seen),
                pending_labels=self.labels.n_pending,
                held_labels=self.labels.n_held,
                model=self.model.metrics(),
                grow_seconds=self.features.grow_seconds,
            )
        if self._logged:
            logged, self._logged = self._logged, []
            return [*out, *logged], StatefulBatchLogic.RETAIN
        return out, StatefulBatchLogic.RETAIN

    def _observer(self, values: list[Event]) -> ShardObserver:
        """This shard's metrics observer, labelled by the shard of its first event."""
        if self._obs is None:
            if not values:
                return ShardObserver()
            first = values[0]
            key = shard_key(first.account_id or first.entity_id, self._metrics.shards)
            self._obs = self._metrics.shard(key)
        return self._obs

    def _alert(
        self, ev: Event, score: float, row: np.ndarray, decision: Any, now_ms: float
    ) -> dict[str, Any]:
        threshold = self._parts.model.threshold
        return {
            "schema_version": ALERT_SCHEMA_VERSION,
            "alert_id": decision.alert_id,  # alert_id(entity, MODEL_TRIGGER, event id)
            "entity_id": ev.entity_id,
            "account_id": ev.account_id,
            "owner": ev.props.get("owner") if isinstance(ev.props.get("owner"), str) else None,
            "event_ts": ev.ts_ms,
            "ingest_ts": ev.ingest_ts,
            "emit_ts": now_ms,
            "score": round(score, 6),
            "trigger": {"kind": "model", "id": MODEL_TRIGGER, "threshold": threshold},
            "action": {
                "id": decision.action_id,
                "channel": decision.channel,
                "priority": decision.priority,
                "probability": decision.probability,
                "acceptance": decision.acceptance,
                "exploration": decision.explored,
                "why": decision.why,
            },
            "reasons": self.model.explain(row, self._names, self._descriptions, self._top_k),
            "model": {
                "name": self.model.name,
                "version": self.model.version,
                "challenger": self.model.challenger_version,
            },
            **self._side_scores(score, row),
            "trace": {
                "event_ids": [ev.event_id],
                "event_type": ev.type,
                "source": ev.source,
                "offset": ev.offset,
                "produced_ts": ev.produced_ts,
            },
        }

    def _side_scores(self, score: float, row: np.ndarray) -> dict[str, Any]:
        """``{"scores": {label name: score}}`` when extra label definitions run, else ``{}``."""
        if not self.side:
            return {}
        primary = {self._parts.labels.name: round(score, 6)}
        return {"scores": {**primary, **self.side.score_row(row, self._names)}}

    # --- time ----------------------------------------------------------------------

    def _housekeeping(self) -> None:
        """Evict idle entities and forget old ids; paced by event time (deterministic)."""
        self._next_housekeeping_ms = self.watermark + self._parts.housekeeping_interval_ms
        evicted = self.features.evict_idle(self.watermark)
        if evicted:
            self._count("evicted", evicted)
        self.policy.prune(self.watermark)
        self._trim_seen()
        if self._rules is not None:
            self.rule_engine.prune(self._rules.current())

    def notify_at(self) -> datetime | None:
        """When an idle shard must wake to fire a rule's absence deadline (docs/rules.md)."""
        return self.rule_engine.notify_at() if self._rules is not None else None

    def on_notify(self) -> tuple[Iterable[EngineOutput], bool]:
        """Fire the absence deadlines an idle shard has passed by the wall clock."""
        out: list[Output] = []
        if self._rules is not None:
            current = self._rules.current()
            if not current.empty:
                self.rule_engine.on_notify(current, self.model, out)
        return out, StatefulBatchLogic.RETAIN

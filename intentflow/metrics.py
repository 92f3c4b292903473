"""Prometheus metrics of one engine process and the facade the dataflow reports through.

The dataflow never touches ``prometheus_client`` directly: it reports to an
:class:`EngineMetrics` object, once per batch (never once per event), and the
default :class:`EngineMetrics` ignores everything, so a flow built without
metrics pays one no-op method call per batch. :class:`Metrics` is the real
implementation: it owns its own :class:`~prometheus_client.CollectorRegistry`
(no global registry), aggregates each batch into a few counter increments and
one bulk histogram update, and computes time-dependent gauges (lags, ages) when
scraped.

Metrics are process-local observability, not dataflow state: they are never
snapshotted and restart from zero with the process (counters are counters).

Label values are bounded: event ``type`` is one of
:data:`~intentflow.events.KNOWN_TYPES` or ``other``; ``source`` is the source
kind (``redis``, ``file``, ``generator`` or ``other``); ``reason`` is one of
:data:`~intentflow.contracts.REASONS` or ``other``; ``action`` and
``trigger`` come from the configured catalog; ``shard`` from
``engine.shards``; ``partition`` from ``input.partitions``. No metric carries
an entity, account or event id. Every metric is listed in
``docs/observability.md``.

>>> m = Metrics(version="0.1.0", config_hash="abc")
>>> ev = Event("e1", 1_000, "c-1", "page_view", source="redis:intentflow:events:0")
>>> m.parsed(1, [ev])
>>> m.sample("intentflow_events_total", {"type": "page_view", "source": "redis"})
1.0
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from operator import attrgetter
from typing import Any, Final, Protocol

import numpy as np
import redis
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from intentflow.contracts import REASONS
from intentflow.events import KNOWN_TYPES, Event
from intentflow.online_models.labels import Labels
from intentflow.sinks.base import AlertOut, DeadLetterOut, Output, ScoresOut

__all__ = [
    "BATCH_BUCKETS",
    "LABEL_DELAY_BUCKETS_S",
    "LATENCY_BUCKETS_S",
    "SOURCE_KINDS",
    "BacklogProbe",
    "EngineMetrics",
    "Metrics",
    "ShardObserver",
    "SinkCounters",
    "SinkObserver",
    "reason_label",
    "source_label",
    "type_label",
]

#: Latency buckets (seconds), 100 µs to 5 s.
LATENCY_BUCKETS_S: Final[tuple[float, ...]] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
#: Batch-size buckets (records per batch).
BATCH_BUCKETS: Final[tuple[float, ...]] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
#: Label-delay buckets (seconds of event time), 1 s to 7 days.
LABEL_DELAY_BUCKETS_S: Final[tuple[float, ...]] = (
    1,
    10,
    60,
    300,
    900,
    1800,
    3600,
    3 * 3600,
    6 * 3600,
    86400,
    7 * 86400,
)
#: Sink write-time buckets (seconds): the latency buckets plus long retries.
SINK_WRITE_BUCKETS_S: Final[tuple[float, ...]] = (*LATENCY_BUCKETS_S, 10.0, 30.0)
#: Source kinds used as the ``source`` label.
SOURCE_KINDS: Final[frozenset[str]] = frozenset({"redis", "file", "generator"})
#: State gauges and model figures of a shard are refreshed at most this often.
STATE_INTERVAL_S: Final[float] = 1.0

_type_source = attrgetter("type", "source")
_ts_ms = attrgetter("ts_ms")


def type_label(event_type: str) -> str:
    """The ``type`` label of an event type: a known type or ``other``.

    >>> type_label("page_view"), type_label("x-custom")
    ('page_view', 'other')
    """
    return event_type if event_type in KNOWN_TYPES else "other"


def source_label(source: str) -> str:
    """The ``source`` label of a source name: its kind (the part before ``:``).

    >>> source_label("redis:intentflow:events:3"), source_label("file:a.jsonl")
    ('redis', 'file')
    >>> source_label("generator"), source_label("test")
    ('generator', 'other')
    """
    kind = source.split(":", 1)[0]
    return kind if kind in SOURCE_KINDS else "other"


def reason_label(reason: object) -> str:
    """The ``reason`` label of a dead letter: a known reason code or ``other``."""
    return reason if isinstance(reason, str) and reason in REASONS else "other"


class SinkCounters(Protocol):
    """The counters a sink writer keeps (see ``RedisOutputWriter``)."""

    alerts_written: int
    alerts_duplicate: int
    scores_written: int
    dead_letters_written: int
    retries: int
    last_batch_latency_s: float
    backoff_s: float
    connected: bool | None


# --- no-op interface -------------------------------------------------------------------


class ShardObserver:
    """What one shard reports; this base ignores everything."""

    def batch(self, n_in: int, n_duplicate: int, n_late: int, out: Sequence[Output]) -> None:
        """One engine batch: input size, duplicates dropped, late events, outputs."""

    def due(self) -> bool:
        """Whether :meth:`state` should be called now (at most once per second)."""
        return False

    def state(
        self,
        *,
        entities: int,
        accounts: int,
        feature_bytes: int,
        dedup_ids: int,
        pending_labels: int,
        model: Mapping[str, float],
        held_labels: int = 0,
        grow_seconds: float = 0.0,
    ) -> None:
        """Shard state sizes and the model's progressive-validation figures.

        ``grow_seconds``: the total so far of the time the shard stopped to grow
        its feature arrays.
        """

    def learned(self, matured: Labels) -> None:
        """Labels the model just learned from."""

    def snapshotted(self, nbytes: int) -> None:
        """The shard was snapshotted; ``nbytes`` is the pickled state size."""


class SinkObserver:
    """What one sink partition reports; this base ignores everything."""

    def delivered(
        self, items: Sequence[Output], writer: SinkCounters, sent_ms: float | None = None
    ) -> None:
        """A batch is in Redis (called once its replies were read).

        ``sent_ms``: when a batch sent ahead was sent (epoch ms); ``None``: just now.
        """

    def failed(self, writer: SinkCounters) -> None:
        """A batch could not be written (the flow fails next)."""


class EngineMetrics:
    """The interface the dataflow reports through; this base ignores everything.

    Pass a :class:`Metrics` instead to collect Prometheus metrics.
    """

    #: ``engine.shards``: lets a shard compute its own label from a routing key.
    shards: int = 1

    def heartbeat(self) -> None:
        """The dataflow made progress (a source poll, a batch)."""

    def parsed(self, n_items: int, out: Sequence[Event | DeadLetterOut]) -> None:
        """One parse batch: ``n_items`` raw items turned into events or dead letters."""

    def shard(self, shard: str) -> ShardObserver:
        """The observer of shard ``shard`` (e.g. ``"s2"``)."""
        return ShardObserver()

    def sink(self) -> SinkObserver:
        """An observer for one sink partition."""
        return SinkObserver()

    def backlog_probe(self, stream: str, partition: str) -> BacklogProbe | None:
        """A backlog probe for a Redis input stream, or ``None`` without metrics."""
        return None

    def drift_detected(self, n: int = 1) -> None:
        """The drift detector fired ``n`` times."""

    def exploration_ratio(self, ratio: float) -> None:
        """The policy's current exploration rate (0..1)."""

    def rules_reloaded(self, *, ok: bool) -> None:
        """A rule reload finished (``ok=False``: it was refused and counted as an error)."""

    def rule_errors(self, n: int = 1) -> None:
        """Rule evaluation errors."""

    def redis_reachable(self, ok: bool) -> None:
        """Result of the health check's Redis PING."""

    def input_gap(self, partition: str, kind: str) -> None:
        """An input stream lost entries before they were read (``trimmed`` or ``reset``)."""


# --- bulk histogram ----------------------------------------------------------------------


class _BulkHistogram:
    """A histogram that takes a whole batch of observations in one call."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], labelnames: Sequence[str]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], tuple[np.ndarray, list[float]]] = {}

    def observe_many(self, values: Iterable[float], labels: tuple[str, ...] = ()) -> None:
        if isinstance(values, np.ndarray):
            arr = values.astype(np.float64, copy=False).reshape(-1)
        else:
            arr = np.fromiter(values, dtype=np.float64)
        if arr.size == 0:
            return
        idx = np.searchsorted(self.bounds, arr, side="left")  # "le" buckets are inclusive
        counts = np.bincount(idx, minlength=self.bounds.size + 1)
        total = float(arr.sum())
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = (np.zeros(self.bounds.size + 1, dtype=np.int64), [0.0])
                self._series[labels] = series
            series[0][:] += counts
            series[1][0] += total

    def collect(self) -> Iterable[Metric]:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            snap = [(k, v[0].copy(), v[1][0]) for k, v in self._series.items()]
        if not snap and not self.labelnames:
            snap = [((), np.zeros(self.bounds.size + 1, dtype=np.int64), 0.0)]
        for labels, counts, total in snap:
            cum = np.cumsum(counts)
            buckets = [(_le(b), float(c)) for b, c in zip(self.bounds, cum[:-1], strict=True)]
            buckets.append(("+Inf", float(cum[-1])))
            fam.add_metric(list(labels), buckets, total)
        yield fam


def _le(bound: float) -> str:
    return repr(float(bound))


def _id_tuple(entry_id: str | bytes) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


# --- Prometheus implementation -----------------------------------------------------------


#: Stages of ``intentflow_batch_size``.
_STAGES: Final = ("input", "engine", "sink")


class _Children(dict[tuple[str, ...], Any]):
    """The labelled children of one metric by label values, each looked up once.

    Label values must come from a bounded set (the ``*_label`` functions).
    """

    def __init__(self, metric: Any) -> None:
        super().__init__()
        self.metric = metric

    def __missing__(self, key: tuple[str, ...]) -> Any:
        child = self[key] = self.metric.labels(*key)
        return child


class Metrics(EngineMetrics):
    """Prometheus metrics of one engine process (thread-safe; shared by workers).

    ``registry`` defaults to a new registry holding these metrics plus the
    standard ``process_*``, ``python_gc_*`` and ``python_info`` collectors.
    """

    def __init__(
        self,
        *,
        version: str = "",
        config_hash: str = "",
        shards: int = 1,
        registry: CollectorRegistry | None = None,
        process_collectors: bool = True,
    ) -> None:
        reg = CollectorRegistry() if registry is None else registry
        self.registry = reg
        self.shards = shards
        self.started_at = time.monotonic()
        self.last_progress = self.started_at
        self.started = False
        self._lock = threading.Lock()
        self._latest_event_ms: dict[str, float] = {}
        self._snapshot_at: dict[str, float] = {}
        self._writers: list[SinkCounters] = []
        self._probes: list[BacklogProbe] = []
        self._redis_ok: bool | None = None

        if process_collectors:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)
        Info("intentflow_build", "Build and configuration of this process.", registry=reg).info(
            {"version": version, "config_hash": config_hash}
        )

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> PromCounter:
            return PromCounter(name, doc, labels, registry=reg)

        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=reg)

        # input and parsing
        self.events = counter(
            "intentflow_events_total",
            "Valid events read, by event type and source kind.",
            ("type", "source"),
        )
        self.invalid = counter(
            "intentflow_events_invalid_total",
            "Refused inputs (sent to the dead-letter stream), by reason code and source kind.",
            ("reason", "source"),
        )
        self.batch_size = Histogram(
            "intentflow_batch_size",
            "Records per batch, by stage (input, engine, sink).",
            ("stage",),
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.input_gaps = counter(
            "intentflow_source_gaps_total",
            "Input stream gaps: entries trimmed past the reader (trimmed), or a stream reset.",
            ("kind",),
        )
        for kind in ("trimmed", "reset"):
            self.input_gaps.labels(kind)
        self.backlog = gauge(
            "intentflow_source_backlog_entries",
            "Stream entries after the reader's position (Redis input), by partition.",
            ("source", "partition"),
        )
        # engine
        self.processed = counter(
            "intentflow_events_processed_total",
            "Events processed by the engine after de-duplication, by shard.",
            ("shard",),
        )
        self.duplicates = counter(
            "intentflow_events_duplicate_total", "Duplicate events suppressed (same event_id)."
        )
        self.late = counter(
            "intentflow_events_late_total",
            "Events older than their feature windows (not counted in features).",
        )
        self.alerts = counter(
            "intentflow_alerts_total",
            "Alerts emitted, by action and trigger.",
            ("action", "trigger"),
        )
        self.ingest_to_alert = _BulkHistogram(
            "intentflow_ingest_to_alert_seconds",
            "Engine processing time of an alert: emit_ts minus ingest_ts.",
            LATENCY_BUCKETS_S,
            (),
        )
        reg.register(self.ingest_to_alert)
        self.entities = gauge(
            "intentflow_entities_active", "Entities (contacts) held in state.", ("shard",)
        )
        self.accounts = gauge("intentflow_accounts_active", "Accounts held in state.", ("shard",))
        self.state_bytes = gauge(
            "intentflow_state_bytes",
            "State size: feature arrays (part=features) and the last snapshot (part=snapshot).",
            ("shard", "part"),
        )
        self.dedup_ids = gauge(
            "intentflow_dedup_ids", "Event ids kept for de-duplication.", ("shard",)
        )
        self.grow_seconds = counter(
            "intentflow_state_grow_seconds",
            "Seconds a shard stopped to grow its feature arrays (engine.entities_per_shard).",
            ("shard",),
        )
        self.pending_labels = gauge(
            "intentflow_labels_pending", "Decision points waiting for their label.", ("shard",)
        )
        self.held_labels = gauge(
            "intentflow_labels_held",
            "Positives of the first horizon held until their horizon has passed.",
            ("shard",),
        )
        # model and policy
        self.auc = gauge(
            "intentflow_model_auc",
            "Rolling ROC AUC of the model over its recent labels (NaN until defined).",
            ("shard",),
        )
        self.log_loss = gauge(
            "intentflow_model_log_loss", "Log loss of the model over its recent labels.", ("shard",)
        )
        self.brier = gauge(
            "intentflow_model_brier_score",
            "Brier score (mean squared error of the probability) over recent labels.",
            ("shard",),
        )
        self.window = gauge(
            "intentflow_model_window_labels",
            "Labels covered by the rolling model-quality figures.",
            ("shard",),
        )
        self.labels = counter(
            "intentflow_model_labels_total",
            "Labels learned, by outcome (positive, negative).",
            ("outcome",),
        )
        self.expected = counter(
            "intentflow_model_expected_positives_total",
            "Sum of the predicted probabilities of labelled decision points (calibration).",
        )
        self.label_delay = _BulkHistogram(
            "intentflow_label_delay_seconds",
            "Event time from a decision point to its label.",
            LABEL_DELAY_BUCKETS_S,
            (),
        )
        reg.register(self.label_delay)
        self.drift = counter("intentflow_model_drift_detections_total", "Concept-drift detections.")
        self.exploration = gauge(
            "intentflow_policy_exploration_ratio", "Share of decisions that explore (0..1)."
        )
        self.rule_reloads = counter("intentflow_rules_reloads_total", "Rule reloads attempted.")
        self.rule_errors_total = counter(
            "intentflow_rules_errors_total", "Rule errors (refused reloads, evaluation errors)."
        )
        # sink
        self.event_to_alert = _BulkHistogram(
            "intentflow_event_to_alert_latency_seconds",
            "From the producer's send time (else the read time) to the alert being in Redis.",
            LATENCY_BUCKETS_S,
            (),
        )
        reg.register(self.event_to_alert)
        self.sink_write = Histogram(
            "intentflow_sink_write_seconds",
            "Wall time of one sink batch, retries included (the time it held the dataflow).",
            buckets=SINK_WRITE_BUCKETS_S,
            registry=reg,
        )
        self.sink_records = counter(
            "intentflow_sink_records_total",
            "Records written by the sink, by kind (alert, alert_duplicate, score, dead_letter).",
            ("kind",),
        )
        self.sink_retries = counter("intentflow_sink_retries_total", "Sink batch retries.")
        self.sink_backoff = counter(
            "intentflow_sink_backoff_seconds_total", "Time the sink waited before retrying."
        )
        self.sink_errors = counter(
            "intentflow_sink_errors_total", "Sink batches that failed for good."
        )
        reg.register(_LiveCollector(self))
        # labelled children used on every batch, looked up once (``labels()`` costs
        # a few microseconds: label checks and a lock)
        self.events_by = _Children(self.events)
        self.sink_records_by = _Children(self.sink_records)
        for kind in ("alert", "alert_duplicate", "score", "dead_letter"):
            self.sink_records_by[(kind,)] = self.sink_records.labels(kind)
        for outcome in ("positive", "negative"):
            self.labels.labels(outcome)
        self.batch_sizes = {stage: self.batch_size.labels(stage) for stage in _STAGES}

    # -- facade ------------------------------------------------------------------------------
    def heartbeat(self) -> None:
        self.last_progress = time.monotonic()
        self.started = True

    def parsed(self, n_items: int, out: Sequence[Event | DeadLetterOut]) -> None:
        self.heartbeat()
        self.batch_sizes["input"].observe(n_items)
        events = [x for x in out if type(x) is Event]
        if events:
            tally_in = Counter(map(_type_source, events))
            for (etype, src), n in tally_in.items():
                self.events_by[type_label(etype), source_label(src)].inc(n)
            sources = {src for _, src in tally_in}
            latest: dict[str, float] = {}
            if len(sources) == 1:
                latest[source_label(events[0].source)] = max(map(_ts_ms, events))
            else:
                for e in events:
                    key = source_label(e.source)
                    latest[key] = max(latest.get(key, -math.inf), e.ts_ms)
            with self._lock:
                for key, ts in latest.items():
                    self._latest_event_ms[key] = ts
        if len(events) != len(out):
            tally: Counter[tuple[str, str]] = Counter()
            for x in out:
                if isinstance(x, DeadLetterOut):
                    rec = x.record
                    tally[
                        reason_label(rec.get("reason")), source_label(str(rec.get("source")))
                    ] += 1
            for (reason, src), n in tally.items():
                self.invalid.labels(reason, src).inc(n)

    def shard(self, shard: str) -> ShardObserver:
        return _PromShardObserver(self, shard)

    def sink(self) -> SinkObserver:
        return _PromSinkObserver(self)

    def backlog_probe(self, stream: str, partition: str) -> BacklogProbe:
        probe = BacklogProbe(self, stream, partition)
        with self._lock:
            self._probes.append(probe)
        return probe

    def drift_detected(self, n: int = 1) -> None:
        self.drift.inc(n)

    def exploration_ratio(self, ratio: float) -> None:
        self.exploration.set(ratio)

    def rules_reloaded(self, *, ok: bool) -> None:
        self.rule_reloads.inc()
        if not ok:
            self.rule_errors_total.inc()

    def rule_errors(self, n: int = 1) -> None:
        self.rule_errors_total.inc(n)

    def redis_reachable(self, ok: bool) -> None:
        self._redis_ok = ok

    def input_gap(self, partition: str, kind: str) -> None:
        self.input_gaps.labels(kind).inc()

    # -- reading -----------------------------------------------------------------------------
    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    def sample(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """The current value of one sample (``None`` if absent); for tests and tools."""
        value = self.registry.get_sample_value(name, dict(labels or {}))
        return None if value is None else float(value)

    def progress_age_s(self) -> float:
        """Seconds since the dataflow last made progress (or since start)."""
        return time.monotonic() - self.last_progress

    # -- internal hooks ------------------------------------------------------------------------
    def _register_writer(self, writer: SinkCounters) -> None:
        with self._lock:
            if not any(w is writer for w in self._writers):
                self._writers.append(writer)

    def _snapshot_taken(self, shard: str) -> None:
        with self._lock:
            self._snapshot_at[shard] = time.monotonic()

    def _live(self) -> tuple[dict[str, float], dict[str, float], dict[str, bool | None]]:
        """(event-time lag per source, snapshot age per shard, Redis state per client)."""
        now_ms = time.time() * 1000.0
        mono = time.monotonic()
        with self._lock:
            lag = {k: (now_ms - ts) / 1000.0 for k, ts in self._latest_event_ms.items()}
            age = {k: mono - t for k, t in self._snapshot_at.items()}
            writers = list(self._writers)
            probes = list(self._probes)
        states: dict[str, bool | None] = {"health": self._redis_ok}
        for client, flags in (
            ("sink", [w.connected for w in writers]),
            ("source", [p.connected for p in probes]),
        ):
            known = [f for f in flags if f is not None]
            states[client] = all(known) if known else None
        return lag, age, states


class _LiveCollector:
    """Gauges computed at scrape time: lags, ages, connection states."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterable[Metric]:
        lag, age, states = self._m._live()
        fam = GaugeMetricFamily(
            "intentflow_source_event_time_lag_seconds",
            "Wall time minus the latest event time of the last batch read, by source kind.",
            labels=("source",),
        )
        for src, value in sorted(lag.items()):
            fam.add_metric([src], value)
        yield fam
        fam = GaugeMetricFamily(
            "intentflow_snapshot_age_seconds",
            "Seconds since the shard's state was last snapshotted.",
            labels=("shard",),
        )
        for shard, value in sorted(age.items()):
            fam.add_metric([shard], value)
        yield fam
        yield GaugeMetricFamily(
            "intentflow_progress_age_seconds",
            "Seconds since the dataflow last made progress (source poll or batch).",
            value=self._m.progress_age_s(),
        )
        fam = GaugeMetricFamily(
            "intentflow_redis_connected",
            "1 when the client's last Redis command succeeded, by client (health, source, sink).",
            labels=("client",),
        )
        for client, ok in sorted(states.items()):
            if ok is not None:
                fam.add_metric([client], 1.0 if ok else 0.0)
        yield fam


class _PromShardObserver(ShardObserver):
    def __init__(self, metrics: Metrics, shard: str) -> None:
        m = self._m = metrics
        self._shard = shard
        self._processed = m.processed.labels(shard)
        self._positive = m.labels.labels("positive")
        self._negative = m.labels.labels("negative")
        self._next_state = 0.0
        self._grow_seconds = 0.0  # reported so far
        self._grow = m.grow_seconds.labels(shard)  # the series exists from the start
        self._alert_children: dict[tuple[str, str], Any] = {}

    def batch(self, n_in: int, n_duplicate: int, n_late: int, out: Sequence[Output]) -> None:
        m = self._m
        m.heartbeat()
        m.batch_sizes["engine"].observe(n_in)
        if n_in > n_duplicate:
            self._processed.inc(n_in - n_duplicate)
        if n_duplicate:
            m.duplicates.inc(n_duplicate)
        if n_late:
            m.late.inc(n_late)
        alerts = [o.alert for o in out if type(o) is AlertOut]
        if not alerts:
            return
        tally: Counter[tuple[str, str]] = Counter()
        for a in alerts:
            tally[_action_trigger(a)] += 1
        for key, n in tally.items():
            child = self._alert_children.get(key)
            if child is None:
                child = self._alert_children[key] = m.alerts.labels(*key)
            child.inc(n)
        m.ingest_to_alert.observe_many(
            max(0.0, (float(a["emit_ts"]) - float(a["ingest_ts"])) / 1000.0)
            for a in alerts
            if a.get("emit_ts") is not None and a.get("ingest_ts")
        )

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next_state:
            return False
        self._next_state = now + STATE_INTERVAL_S
        return True

    def state(
        self,
        *,
        entities: int,
        accounts: int,
        feature_bytes: int,
        dedup_ids: int,
        pending_labels: int,
        model: Mapping[str, float],
        held_labels: int = 0,
        grow_seconds: float = 0.0,
    ) -> None:
        m, s = self._m, self._shard
        if grow_seconds > self._grow_seconds:
            self._grow.inc(grow_seconds - self._grow_seconds)
            self._grow_seconds = grow_seconds
        m.entities.labels(s).set(entities)
        m.accounts.labels(s).set(accounts)
        m.state_bytes.labels(s, "features").set(feature_bytes)
        m.dedup_ids.labels(s).set(dedup_ids)
        m.pending_labels.labels(s).set(pending_labels)
        m.held_labels.labels(s).set(held_labels)
        m.auc.labels(s).set(model.get("auc", math.nan))
        m.log_loss.labels(s).set(model.get("log_loss", math.nan))
        m.brier.labels(s).set(model.get("brier", math.nan))
        m.window.labels(s).set(model.get("window", 0.0))

    def learned(self, matured: Labels) -> None:
        n = len(matured)
        if not n:
            return
        m = self._m
        positives = int(matured.y.sum())
        if positives:
            self._positive.inc(positives)
        if n > positives:
            self._negative.inc(n - positives)
        m.expected.inc(max(0.0, float(matured.scores.sum())))
        delays = matured.delay_ms.astype(np.float64)
        m.label_delay.observe_many(delays / 1000.0)

    def snapshotted(self, nbytes: int) -> None:
        self._m.state_bytes.labels(self._shard, "snapshot").set(nbytes)
        self._m._snapshot_taken(self._shard)


def _action_trigger(alert: Mapping[str, Any]) -> tuple[str, str]:
    action = alert.get("action")
    trigger = alert.get("trigger")
    a = action.get("id") if isinstance(action, Mapping) else None
    t = trigger.get("id") if isinstance(trigger, Mapping) else None
    return (a if isinstance(a, str) else "unknown", t if isinstance(t, str) else "unknown")


class _PromSinkObserver(SinkObserver):
    _FIELDS: Final = (
        ("alerts_written", "alert"),
        ("alerts_duplicate", "alert_duplicate"),
        ("scores_written", "score"),
        ("dead_letters_written", "dead_letter"),
    )

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        self._seen: dict[str, float] = {}

    def _delta(self, writer: SinkCounters, name: str) -> float:
        value = float(getattr(writer, name))
        delta = value - self._seen.get(name, 0.0)
        self._seen[name] = value
        return max(0.0, delta)

    def _sync(self, writer: SinkCounters) -> None:
        m = self._m
        m._register_writer(writer)
        for name, kind in self._FIELDS:
            d = self._delta(writer, name)
            if d:
                m.sink_records_by[(kind,)].inc(d)
        d = self._delta(writer, "retries")
        if d:
            m.sink_retries.inc(d)
        d = self._delta(writer, "backoff_s")
        if d:
            m.sink_backoff.inc(d)

    def delivered(
        self, items: Sequence[Output], writer: SinkCounters, sent_ms: float | None = None
    ) -> None:
        at_ms = time.time() * 1000.0 if sent_ms is None else sent_ms  # when it left
        m = self._m
        m.heartbeat()
        self._sync(writer)
        if not items:
            return
        m.batch_sizes["sink"].observe(sum(map(_n_records, items)))
        m.sink_write.observe(writer.last_batch_latency_s)
        starts = [_start_ms(o.alert) for o in items if type(o) is AlertOut]
        if starts:
            m.event_to_alert.observe_many(
                max(0.0, (at_ms - s) / 1000.0) for s in starts if s is not None
            )

    def failed(self, writer: SinkCounters) -> None:
        self._sync(writer)
        self._m.sink_errors.inc()


def _n_records(item: Output) -> int:
    """Output records in ``item``: a :class:`ScoresOut` counts its scores."""
    return len(item) if type(item) is ScoresOut else 1


def _start_ms(alert: Mapping[str, Any]) -> float | None:
    """The producer's send time of the triggering event, else its read time (epoch ms)."""
    trace = alert.get("trace")
    produced = trace.get("produced_ts") if isinstance(trace, Mapping) else None
    start = (
        produced if isinstance(produced, int | float) and produced > 0 else alert.get("ingest_ts")
    )
    return float(start) if isinstance(start, int | float) and start > 0 else None


class BacklogProbe:
    """Measures one Redis input stream's backlog, at most once per ``interval_s``.

    The backlog is the number of entries after the reader's last id. It is
    exact whenever the reader is caught up (0) or behind the first entry (the
    stream length); in between it is the entries added since the reader was
    last caught up minus those it read since (``entries-added`` from
    ``XINFO STREAM`` on Redis 7+, the length on older servers, which a trimmed
    stream makes an estimate). Before the reader was first caught up it is
    the length minus the entries read since start: exact for a fresh reader,
    an upper bound after a resume.
    """

    def __init__(
        self, metrics: Metrics, stream: str, partition: str, interval_s: float = 1.0
    ) -> None:
        self._m = metrics
        self.stream = stream
        self._gauge = metrics.backlog.labels("redis", partition)
        self._interval = interval_s
        self._next = 0.0
        self._read = 0  # entries read since the base (or since start)
        self._base: int | None = None  # entries-added when last caught up
        self.connected: bool | None = None
        self.value: int | None = None

    def polled(self, client: redis.Redis, last_id: str | bytes, n_read: int) -> None:
        """After a successful ``XREAD`` that returned ``n_read`` entries."""
        self._m.heartbeat()
        self.connected = True
        self._read += n_read
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._interval
        try:
            info = client.xinfo_stream(self.stream)
        except redis.ResponseError:  # no such stream yet
            self._set(0, added=0)
            return
        except (redis.ConnectionError, redis.TimeoutError):
            self.connected = False
            return
        length = int(info.get("length", 0))
        added_raw = info.get("entries-added")
        added = int(added_raw) if added_raw is not None else length
        last_gen = info.get("last-generated-id")
        first = info.get("first-entry")
        pos = _id_tuple(last_id)
        if length == 0 or (last_gen is not None and pos >= _id_tuple(last_gen)):
            self._set(0, added=added)
        elif first and pos < _id_tuple(first[0]):
            self._set(length, added=added)
        elif self._base is not None:
            self._gauge_set(min(length, max(0, added - self._base - self._read)))
        else:
            self._gauge_set(min(length, max(0, length - self._read)))

    def failed(self) -> None:
        """The source could not reach Redis (the dataflow itself is alive)."""
        self._m.heartbeat()
        self.connected = False

    def _set(self, backlog: int, *, added: int) -> None:
        """An exact reading: remember ``added`` minus ``backlog`` as the read position."""
        self._base = added - backlog
        self._read = 0
        self._gauge_set(backlog)

    def _gauge_set(self, value: int) -> None:
        self.value = value
        self._gauge.set(value)

"""The naive pipeline: the same job written the way the Bytewax and River examples do it.

It is the baseline of ``python -m bench e2e`` (``naive_eps``, ``ratio_vs_naive``):
a real Bytewax dataflow over the same Redis input stream as the engine, with

1. input: :class:`~intentflow.dataflows.sources.RedisStreamSource` (XREAD in
   batches, as the engine reads), then ``op.map`` of
   :func:`~intentflow.contracts.parse_event` on every item;
2. ``op.key_on`` by ``entity_id`` and ``op.stateful_map`` with one
   :class:`EntityState` per entity: a Python ``deque`` of ``(ts, value)`` per
   rolling feature (counts and sums over 5 minutes to 24 hours of page views,
   pricing views and dwell, product views, demo requests, email engagement,
   chat, carts), trimmed and summed per event, and the entity's pending
   decision points for its labels;
3. labels: every event is a decision point; a purchase by the entity within
   ``horizon_ms`` after it makes it a positive, otherwise it becomes a
   negative when the entity's next event is past the horizon;
4. ``op.key_on`` to a single key and ``op.stateful_map`` holding one River
   ``StandardScaler | LogisticRegression``: ``learn_one`` for every matured
   label and ``predict_proba_one`` for every event;
5. ``op.key_on`` by entity again and ``op.stateful_map`` for the decision:
   score above the threshold, model warmed up, and at most one alert per
   entity per ``cooldown_ms`` of event time;
6. output: one ``XADD`` per alert (no pipelining).

Run it with ``python -m bench.naive --redis-url URL --events-prefix P
--alerts-stream S [--count N]``. Events of entities whose id starts with
``--mark-prefix`` are markers: when one reaches the output, ``SET
{mark_key_prefix}{entity_id}`` tells the benchmark how far the flow got
(the engine's score keys serve the same purpose).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import bytewax.operators as op
import orjson
import redis
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main
from river import linear_model, preprocessing

from bench.common import DEMO_CONFIG, Engine, Keys
from intentflow.config import load_config
from intentflow.contracts import Limits, Rejection, parse_event
from intentflow.dataflows.flow import engine_parts
from intentflow.dataflows.sources import RawItem, RedisStreamSource
from intentflow.events import Event
from intentflow.redisutil import connect

__all__ = [
    "FEATURES",
    "MARK_PREFIX",
    "EntityState",
    "NaiveAlert",
    "NaiveConfig",
    "NaiveMark",
    "NaiveModel",
    "NaiveProcess",
    "build_naive_flow",
    "decide",
    "demo_settings",
    "main",
    "update_entity",
]

#: Entity ids of the benchmark's sentinel events (``bench.common.sentinel_payload``).
MARK_PREFIX: Final = "bench-"
MINUTE: Final = 60_000
HOUR: Final = 60 * MINUTE
DAY: Final = 24 * HOUR

#: ``(name, window_ms, value of an event or None when it does not count)``.
#: Counts use the value 1.0, sums the event's own number.
Feature = tuple[str, int, Callable[[Event], float | None]]


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _one(ev: Event) -> float | None:
    return 1.0


def _page_view(ev: Event) -> float | None:
    return 1.0 if ev.type == "page_view" else None


def _pricing_view(ev: Event) -> float | None:
    return 1.0 if ev.type == "page_view" and ev.props.get("category") == "pricing" else None


def _pricing_dwell(ev: Event) -> float | None:
    if ev.type == "page_view" and ev.props.get("category") == "pricing":
        return _num(ev.props.get("duration_s"))
    return None


def _product_view(ev: Event) -> float | None:
    return 1.0 if ev.type == "page_view" and ev.props.get("category") == "product" else None


def _demo_request(ev: Event) -> float | None:
    demo = ev.props.get("form") in ("demo", "demo_request", "contact_sales")
    return 1.0 if ev.type == "form_submit" and demo else None


def _email(ev: Event) -> float | None:
    return 1.0 if ev.type in ("email_open", "email_click") else None


def _chat(ev: Event) -> float | None:
    return 1.0 if ev.type == "chat_message" else None


def _cart(ev: Event) -> float | None:
    return 1.0 if ev.type == "cart_add" else None


def _cart_value(ev: Event) -> float | None:
    return _num(ev.props.get("price")) if ev.type == "cart_add" else None


#: The rolling features of the naive flow: the engine's main signals over a few windows.
FEATURES: Final[tuple[Feature, ...]] = (
    ("activity_count_5m", 5 * MINUTE, _one),
    ("activity_count_1h", HOUR, _one),
    ("activity_count_24h", DAY, _one),
    ("page_views_count_1h", HOUR, _page_view),
    ("pricing_views_count_1h", HOUR, _pricing_view),
    ("pricing_views_count_24h", DAY, _pricing_view),
    ("pricing_dwell_s_sum_1h", HOUR, _pricing_dwell),
    ("pricing_dwell_s_sum_24h", DAY, _pricing_dwell),
    ("product_views_count_24h", DAY, _product_view),
    ("demo_requests_count_24h", DAY, _demo_request),
    ("email_engagement_count_24h", DAY, _email),
    ("chat_messages_count_24h", DAY, _chat),
    ("cart_adds_count_24h", DAY, _cart),
    ("cart_value_sum_24h", DAY, _cart_value),
)


@dataclass(frozen=True)
class NaiveConfig:
    """Settings of the naive flow (defaults: the demo's horizon and threshold)."""

    url: str
    events_prefix: str = "intentflow:events:"
    alerts_stream: str = "intentflow:alerts"
    partitions: int = 1
    batch_size: int = 1000
    count: int = 0  # stop after this many input items per partition (0: run forever)
    horizon_ms: int = MINUTE  # a purchase within this much event time labels a point positive
    threshold: float = 0.7
    cooldown_ms: int = DAY  # at most one alert per entity per this much event time
    warmup_labels: int = 50  # no alerts before the model learned this many labels
    mark_prefix: str = ""  # entity ids of marker events ("": none)
    mark_key_prefix: str = "bench:naive:mark:"


@dataclass
class EntityState:
    """Per-entity state of the ``features`` step: one deque per rolling feature."""

    windows: list[deque[tuple[int, float]]] = field(
        default_factory=lambda: [deque() for _ in FEATURES]
    )
    sums: list[float] = field(default_factory=lambda: [0.0] * len(FEATURES))
    last_ts: int | None = None
    pending: deque[tuple[int, dict[str, float]]] = field(default_factory=deque)


#: What the features step emits: the event, its features and the labels that matured.
Featured = tuple[Event, dict[str, float], list[tuple[dict[str, float], bool]]]


def update_entity(
    state: EntityState | None, ev: Event, horizon_ms: int
) -> tuple[EntityState, Featured]:
    """Add ``ev`` to its entity's windows; its features and the labels it matured.

    Every event is a decision point. A purchase makes the pending points of
    the last ``horizon_ms`` positives; points older than the horizon become
    negatives. (``stateful_map`` mapper of the ``features`` step.)
    """
    st = EntityState() if state is None else state
    ts = ev.ts_ms
    x: dict[str, float] = {}
    for i, (name, window_ms, value_of) in enumerate(FEATURES):
        win = st.windows[i]
        value = value_of(ev)
        if value is not None:
            win.append((ts, value))
            st.sums[i] += value
        cutoff = ts - window_ms
        while win and win[0][0] <= cutoff:
            st.sums[i] -= win.popleft()[1]
        x[name] = st.sums[i]
    gap = (ts - st.last_ts) / 1000.0 if st.last_ts is not None else 86_400.0
    x["seconds_since_last"] = max(0.0, gap)
    st.last_ts = ts if st.last_ts is None else max(st.last_ts, ts)

    matured: list[tuple[dict[str, float], bool]] = []
    pending = st.pending
    if ev.type == "purchase":
        while pending:
            p_ts, p_x = pending.popleft()
            matured.append((p_x, ts - p_ts <= horizon_ms))
    else:
        while pending and pending[0][0] < ts - horizon_ms:
            matured.append((pending.popleft()[1], False))
        pending.append((ts, x))
    return st, (ev, x, matured)


class NaiveModel:
    """The River model of the ``score`` step; one instance behind a single key."""

    def __init__(self) -> None:
        self.pipeline: Any = preprocessing.StandardScaler() | linear_model.LogisticRegression()
        self.learned = 0
        self.positives = 0

    def ready(self, warmup_labels: int) -> bool:
        """Learned ``warmup_labels`` labels including a positive and a negative."""
        return self.learned >= warmup_labels and 0 < self.positives < self.learned

    def step(self, item: Featured) -> float:
        """``learn_one`` every matured label, then ``predict_proba_one`` the event."""
        _, x, matured = item
        for px, y in matured:
            self.pipeline.learn_one(px, y)
            self.learned += 1
            self.positives += int(y)
        proba: dict[Any, float] = self.pipeline.predict_proba_one(x)
        return float(proba.get(True, 0.0))


@dataclass(frozen=True)
class NaiveAlert:
    """One alert of the naive flow."""

    alert: dict[str, Any]


@dataclass(frozen=True)
class NaiveMark:
    """A marker event reached the output (benchmark progress)."""

    entity_id: str


def decide(
    last_alert_ts: int | None,
    item: tuple[Event, float, bool],
    cfg: NaiveConfig,
) -> tuple[int | None, NaiveAlert | NaiveMark | None]:
    """Threshold and per-entity cooldown (``stateful_map`` mapper of the ``decide`` step)."""
    ev, score, ready = item
    if cfg.mark_prefix and ev.entity_id.startswith(cfg.mark_prefix):
        return last_alert_ts, NaiveMark(ev.entity_id)
    if not ready or not score >= cfg.threshold:
        return last_alert_ts, None
    if last_alert_ts is not None and ev.ts_ms - last_alert_ts < cfg.cooldown_ms:
        return last_alert_ts, None
    alert = {
        "alert_id": f"naive:{ev.entity_id}:{ev.event_id}",
        "entity_id": ev.entity_id,
        "account_id": ev.account_id,
        "event_ts": ev.ts_ms,
        "ingest_ts": ev.ingest_ts,
        "emit_ts": time.time() * 1000.0,
        "score": round(score, 6),
        "action": {"id": "call_now"},
        "trace": {"event_ids": [ev.event_id], "produced_ts": ev.produced_ts},
    }
    return ev.ts_ms, NaiveAlert(alert)


class _XaddPartition(StatelessSinkPartition[NaiveAlert | NaiveMark]):
    def __init__(self, cfg: NaiveConfig) -> None:
        self._cfg = cfg
        self._client: redis.Redis = connect(cfg.url)

    def write_batch(self, items: list[NaiveAlert | NaiveMark]) -> None:
        for item in items:  # one round trip per alert
            if isinstance(item, NaiveAlert):
                self._client.xadd(self._cfg.alerts_stream, {"alert": orjson.dumps(item.alert)})
            else:
                self._client.set(f"{self._cfg.mark_key_prefix}{item.entity_id}", b"1")

    def close(self) -> None:
        self._client.close()


class XaddSink(DynamicSink[NaiveAlert | NaiveMark]):
    """One ``XADD`` per alert (and one ``SET`` per marker)."""

    def __init__(self, cfg: NaiveConfig) -> None:
        self._cfg = cfg

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _XaddPartition:
        return _XaddPartition(self._cfg)


def _itself(out: NaiveAlert | NaiveMark | None) -> NaiveAlert | NaiveMark | None:
    return out


def build_naive_flow(cfg: NaiveConfig) -> Dataflow:
    """The naive dataflow (see the module docstring)."""
    limits = Limits()
    horizon = cfg.horizon_ms

    def parse(item: RawItem) -> Event | None:
        res = parse_event(
            item.payload,
            limits,
            now_ms=int(time.time() * 1000),
            source=item.source,
            offset=item.offset,
            ingest_ts=item.ingest_ts,
            produced_ts=item.produced_ts,
        )
        return None if isinstance(res, Rejection) else res

    def features(state: EntityState | None, ev: Event) -> tuple[EntityState, Featured]:
        return update_entity(state, ev, horizon)

    def score(
        model: NaiveModel | None, item: Featured
    ) -> tuple[NaiveModel, tuple[Event, float, bool]]:
        model = NaiveModel() if model is None else model
        p = model.step(item)
        return model, (item[0], p, model.ready(cfg.warmup_labels))

    def decision(
        last: int | None, item: tuple[Event, float, bool]
    ) -> tuple[int | None, NaiveAlert | NaiveMark | None]:
        return decide(last, item, cfg)

    source = RedisStreamSource(
        url=cfg.url,
        prefix=cfg.events_prefix,
        partitions=cfg.partitions,
        batch_size=cfg.batch_size,
        count=cfg.count,
    )
    flow = Dataflow("naive")
    raw = op.input("input", flow, source)
    events = op.filter_map("parse", raw, parse)
    by_entity = op.key_on("entity", events, lambda ev: ev.entity_id)
    featured = op.stateful_map("features", by_entity, features)
    to_model = op.key_on("model", op.key_rm("unkey_f", featured), lambda _: "model")
    scored = op.stateful_map("score", to_model, score)
    rekeyed = op.key_on("entity_again", op.key_rm("unkey_s", scored), lambda s: s[0].entity_id)
    decided = op.stateful_map("decide", rekeyed, decision)
    outputs: Any = op.filter_map("alerts", op.key_rm("unkey_d", decided), _itself)
    op.output("xadd", outputs, XaddSink(cfg))
    return flow


def demo_settings() -> tuple[int, float]:
    """The label horizon (ms) and alert threshold of the engine's demo settings."""
    parts = engine_parts(load_config(DEMO_CONFIG, env={}))
    return parts.labels.horizon_ms, parts.model.threshold


class NaiveProcess(Engine):
    """``python -m bench.naive`` as a child process, driven like :class:`~bench.common.Engine`.

    Sentinel events (entities ``bench-*``) are markers: the flow sets the
    sentinel's key under ``keys.score_prefix`` when it reaches the output,
    as the engine writes the sentinel's score.
    """

    def __init__(
        self,
        url: str,
        keys: Keys,
        log_path: Path,
        *,
        count: int = 0,
        horizon_ms: int = MINUTE,
        threshold: float = 0.7,
    ) -> None:
        super().__init__(url, keys, log_path, count=count)
        self.horizon_ms = horizon_ms
        self.threshold = threshold

    def command(self) -> list[str]:
        """The naive flow's command line (one input partition)."""
        cmd = [
            sys.executable,
            "-m",
            "bench.naive",
            "--redis-url",
            self.url,
            "--events-prefix",
            self.keys.events_prefix,
            "--alerts-stream",
            self.keys.alerts,
            "--mark-prefix",
            MARK_PREFIX,
            "--mark-key-prefix",
            self.keys.score_prefix,
            "--horizon-ms",
            str(self.horizon_ms),
            "--threshold",
            repr(self.threshold),
        ]
        if self.count > 0:
            cmd += ["--count", str(self.count)]
        return cmd


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.naive", description=__doc__.split("\n")[0])
    p.add_argument("--redis-url", required=True)
    p.add_argument("--events-prefix", default="intentflow:events:")
    p.add_argument("--alerts-stream", default="intentflow:alerts")
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("--count", type=int, default=0, help="stop after N items per partition")
    p.add_argument("--horizon-ms", type=int, default=MINUTE)
    p.add_argument("--threshold", type=float, default=0.7)
    p.add_argument("--mark-prefix", default="")
    p.add_argument("--mark-key-prefix", default="bench:naive:mark:")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the naive flow until its input ends (``--count``) or it is interrupted."""
    args = _parser().parse_args(argv)
    if not 0.0 < args.threshold <= 1.0 or not math.isfinite(args.threshold):
        raise SystemExit("--threshold must be in (0, 1]")
    cfg = NaiveConfig(
        url=args.redis_url,
        events_prefix=args.events_prefix,
        alerts_stream=args.alerts_stream,
        partitions=args.partitions,
        count=args.count,
        horizon_ms=args.horizon_ms,
        threshold=args.threshold,
        mark_prefix=args.mark_prefix,
        mark_key_prefix=args.mark_key_prefix,
    )
    try:
        # the engine's default epoch (= snapshot) interval, 10 s
        cli_main(build_naive_flow(cfg), workers_per_process=1, epoch_interval=timedelta(seconds=10))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

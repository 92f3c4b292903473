"""Scenario ``learning``: does the online model learn from delayed labels? (ROC AUC)

The synthetic buyer journeys (:mod:`intentflow.generator`) know the truth:
every purchase they emit. The engine's shard logic (one shard, so one model
sees the whole stream, in input batches of 500 events) runs over the same
events three times:

- **online**: the default model (``StandardScaler | LogisticRegression``)
  learning from delayed labels, "purchase within ``horizon_s``";
- **no learning**: the same model with ``model.learn = false``: labels
  mature but are never learned, so it stays cold;
- **frozen** (extra): learning stops at the end of the warm-up.

Every scored event after the warm-up (the first ``warmup`` share of event
time) is a decision point. Its truth is whether the entity's *next*
purchase comes within ``horizon_s`` of event time after it. Each variant is
scored with the score it gave at that moment (before the label existed:
progressive validation), read from the engine's score log. The fixed rule
baseline is "pricing-page dwell > 120 s": the entity's seconds on pricing
pages in the last 10 minutes (the feature ``pricing_dwell_s__sum__10m``)
exceed 120, scored 1 or 0.

The generator compresses a buying journey into minutes of event time
(``journey_scale_s``, 120 s), so the scenario uses a feature spec whose
windows fit that scale (2 to 30 minutes instead of hours to 30 days; see
:data:`FEATURES`) and a two-minute label horizon. ``first_purchase_*``
figures use the generator's own ground truth of first purchases
(:meth:`~intentflow.generator.BuyerJourneyGenerator.conversions`) instead
of every purchase.
"""

from __future__ import annotations

import argparse
import bisect
import logging
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import numpy as np

from bench.common import Context, Result
from intentflow.config import load_config
from intentflow.contracts import Limits, parse_event
from intentflow.dataflows.flow import engine_parts
from intentflow.dataflows.logic import EngineParts, ShardLogic
from intentflow.events import Event
from intentflow.features.state import FeatureState
from intentflow.generator import BuyerJourneyGenerator, GeneratorConfig
from intentflow.online_models.champion import rank_auc
from intentflow.online_models.scorelog import ScoreLogBatch

__all__ = ["FEATURES", "HELP", "add_arguments", "run"]

HELP: Final = "online model vs a fixed rule vs no learning: progressive ROC AUC on ground truth"

#: The rule baseline: this feature above RULE_THRESHOLD.
RULE_FEATURE: Final = "pricing_dwell_s__sum__10m"
RULE_THRESHOLD: Final = 120.0
#: Input batch size (as the engine's sources deliver).
BATCH: Final = 500

#: Feature spec on the generator's compressed time scale.
FEATURES: Final = """
[features]
allowed_lateness = "1m"
late_policy = "drop"
entity_ttl = "2h"
recency_cap = "1h"
buckets_per_window = 6

[features.activity]
description = "events"
types = ["*"]
aggregations = ["count", "velocity", "decayed_rate", "recency"]
windows = ["10m"]
velocity = [["2m", "30m"]]
half_lives = ["5m"]

[features.page_views]
description = "page views"
types = ["page_view"]
aggregations = ["count"]
windows = ["2m", "30m"]

[features.product_views]
description = "product page views"
types = ["page_view"]
where = ['props.category == "product"']
aggregations = ["count"]
windows = ["10m"]

[features.pricing_views]
description = "pricing page views"
types = ["page_view"]
where = ['props.category == "pricing"']
aggregations = ["count", "recency"]
windows = ["2m", "30m"]

[features.pricing_dwell_s]
description = "seconds on pricing pages"
types = ["page_view"]
where = ['props.category == "pricing"']
value = "props.duration_s"
aggregations = ["sum"]
windows = ["2m", "10m"]

[features.demo_requests]
description = "demo requests"
types = ["form_submit"]
where = ['props.form in ["demo", "demo_request", "contact_sales"]']
aggregations = ["count", "recency"]
windows = ["30m"]

[features.form_submits]
description = "form submissions"
types = ["form_submit"]
aggregations = ["count"]
windows = ["10m"]

[features.email_engagement]
description = "email opens and clicks"
types = ["email_open", "email_click"]
aggregations = ["count"]
windows = ["30m"]

[features.chat_messages]
description = "chat messages"
types = ["chat_message"]
aggregations = ["count"]
windows = ["2m", "10m"]

[features.cart_adds]
description = "items added to the cart"
types = ["cart_add"]
aggregations = ["count", "recency"]
windows = ["10m"]

[features.purchases]
description = "purchases"
types = ["purchase"]
aggregations = ["count", "recency"]
windows = ["30m"]

[features.support_tickets]
description = "support tickets"
types = ["ticket"]
aggregations = ["count"]
windows = ["30m"]

[features.account_activity]
description = "account events"
key = "account"
types = ["*"]
aggregations = ["count", "velocity"]
windows = ["30m"]
velocity = [["2m", "30m"]]

[features.account_pricing_views]
description = "pricing page views across the account"
key = "account"
types = ["page_view"]
where = ['props.category == "pricing"']
aggregations = ["count"]
windows = ["10m"]
"""


@dataclass(frozen=True)
class Sizes:
    events: int
    entities: int


FULL: Final = Sizes(events=150_000, entities=2000)
QUICK: Final = Sizes(events=60_000, entities=2000)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of this scenario (defaults depend on ``--quick``)."""
    p.add_argument("--events", type=int, help="events in the stream (150000; quick 60000)")
    p.add_argument("--entities", type=int, help="synthetic contacts (2000)")
    p.add_argument("--seed", type=int, default=7, help="generator seed (7)")
    p.add_argument("--rate", type=float, default=50.0, help="events per second of event time")
    p.add_argument("--horizon-s", type=float, default=120.0, help="label horizon (120 s)")
    p.add_argument("--min-gap-s", type=float, default=5.0, help="decision-point gap (5 s)")
    p.add_argument("--warmup", type=float, default=0.2, help="share of event time (0.2)")


@dataclass
class Variant:
    """One run over the stream: the score of every scored event, and the model's figures."""

    name: str
    scores: dict[str, float]
    metrics: dict[str, float]
    version: str
    labels: int
    positives: int
    delay_p50_ms: float
    seconds: float


def _events(cfg: GeneratorConfig, n: int) -> tuple[list[Event], dict[str, int]]:
    gen = BuyerJourneyGenerator(cfg)
    payloads = gen.next_payloads(n)
    limits = Limits()
    now_ms = 2**62
    events: list[Event] = []
    for i, payload in enumerate(payloads):
        ev = parse_event(
            payload, limits, now_ms=now_ms, source="bench", offset=str(i), ingest_ts=0.0
        )
        if isinstance(ev, Event):
            events.append(ev)
    return events, gen.conversions()


def _run(
    name: str, parts: EngineParts, events: Sequence[Event], freeze_at_ms: int | None
) -> Variant:
    logic = ShardLogic(replace(parts, score_log=True), None)
    scores: dict[str, float] = {}
    t0 = time.perf_counter()
    frozen = False
    for i in range(0, len(events), BATCH):
        batch = list(events[i : i + BATCH])
        if freeze_at_ms is not None and not frozen and batch[0].ts_ms >= freeze_at_ms:
            champion = logic.model.champion
            champion.retune(replace(champion.config, learn=False))
            frozen = True
        out, _ = logic.on_batch(batch)
        for item in out:
            if isinstance(item, ScoreLogBatch):
                scores.update(zip(item.event_ids, item.scores, strict=True))
    seconds = time.perf_counter() - t0
    counters = logic.counters
    return Variant(
        name=name,
        scores=scores,
        metrics=logic.model.metrics(),
        version=logic.model.version,
        labels=counters.get("labels", 0),
        positives=counters.get("labels_positive", 0),
        delay_p50_ms=logic.labels.delay_stats()["p50_ms"],
        seconds=seconds,
    )


def _truth(
    events: Sequence[Event], horizon_ms: int, first: dict[str, int]
) -> tuple[dict[str, bool], dict[str, bool]]:
    """Per event id: next purchase within the horizon; first purchase within the horizon."""
    buys: dict[str, list[int]] = {}
    for ev in events:
        if ev.type == "purchase":
            buys.setdefault(ev.entity_id, []).append(ev.ts_ms)
    any_buy: dict[str, bool] = {}
    first_buy: dict[str, bool] = {}
    for ev in events:
        times = buys.get(ev.entity_id, [])
        k = bisect.bisect_right(times, ev.ts_ms)
        any_buy[ev.event_id] = k < len(times) and times[k] <= ev.ts_ms + horizon_ms
        f = first.get(ev.entity_id)
        first_buy[ev.event_id] = f is not None and ev.ts_ms < f <= ev.ts_ms + horizon_ms
    return any_buy, first_buy


def _auc(ids: list[str], truth: dict[str, bool], scores: dict[str, float]) -> float:
    y = np.fromiter((truth[i] for i in ids), dtype=bool, count=len(ids))
    p = np.fromiter((scores[i] for i in ids), dtype=np.float64, count=len(ids))
    return rank_auc(y, p)


def run(args: argparse.Namespace, ctx: Context) -> Result:
    """Three runs over the same stream, then the AUCs on the decision points after warm-up."""
    sizes = QUICK if ctx.quick else FULL
    n_events = args.events or sizes.events
    entities = args.entities or sizes.entities
    horizon_ms = round(args.horizon_s * 1000)
    gen_cfg = GeneratorConfig(
        seed=args.seed,
        entities=entities,
        events_per_second=args.rate,
        unknown_type_fraction=0.0,
    )
    ctx.console.print(f"generating {n_events:,} events ({entities:,} contacts)")
    events, first = _events(gen_cfg, n_events)
    base = load_config(None, env={})
    config = replace(
        base,
        features=tomllib.loads(FEATURES)["features"],
        labels={"horizon_ms": horizon_ms, "min_gap_ms": round(args.min_gap_s * 1000)},
        engine=replace(base.engine, shards=1),
    )
    parts = engine_parts(config)
    t_first, t_last = events[0].ts_ms, max(ev.ts_ms for ev in events)
    warm_ms = t_first + round((t_last - t_first) * args.warmup)

    frozen_parts = parts
    still = replace(parts, model=replace(parts.model, learn=False))
    variants = []
    quiet = logging.getLogger("intentflow.online_models.champion")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # drift lines are counted in the figures instead
    try:
        for name, p, freeze in (
            ("online", parts, None),
            ("no learning", still, None),
            ("frozen after warm-up", frozen_parts, warm_ms),
        ):
            ctx.console.print(f"  run: {name}")
            variants.append(_run(name, p, events, freeze))
    finally:
        quiet.setLevel(level)
    online, still_v, frozen_v = variants

    rows_all = FeatureState(parts.spec).update(list(events)).values
    col = parts.spec.names.index(RULE_FEATURE)
    rule = {ev.event_id: float(rows_all[i, col] > RULE_THRESHOLD) for i, ev in enumerate(events)}
    any_buy, first_buy = _truth(events, horizon_ms, first)
    ids = [
        ev.event_id
        for ev in events
        if ev.ts_ms >= warm_ms and ev.ts_ms + horizon_ms <= t_last and ev.event_id in online.scores
    ]
    base_rate = float(np.mean([any_buy[i] for i in ids])) if ids else float("nan")
    figures: dict[str, Any] = {
        "params": {
            "events": n_events,
            "entities": entities,
            "seed": args.seed,
            "rate": args.rate,
            "horizon_s": args.horizon_s,
            "min_gap_s": args.min_gap_s,
            "warmup": args.warmup,
            "batch": BATCH,
            "rule": f"{RULE_FEATURE} > {RULE_THRESHOLD:g}",
            "model": parts.model.kind,
            "lr": parts.model.lr,
        },
        "events": len(events),
        "labels": online.labels,
        "positives": online.positives,
        "decision_points": len(ids),
        "base_rate": base_rate,
        "model_auc": _auc(ids, any_buy, online.scores),
        "rule_auc": _auc(ids, any_buy, rule),
        "no_learning_auc": _auc(ids, any_buy, still_v.scores),
        "frozen_auc": _auc(ids, any_buy, frozen_v.scores),
        "first_purchase_model_auc": _auc(ids, first_buy, online.scores),
        "first_purchase_rule_auc": _auc(ids, first_buy, rule),
        "first_purchase_no_learning_auc": _auc(ids, first_buy, still_v.scores),
        "model_progressive_auc": online.metrics["auc"],
        "model_log_loss": online.metrics["log_loss"],
        "model_brier": online.metrics["brier"],
        "model_version": online.version,
        "label_delay_p50_s": online.delay_p50_ms / 1000.0,
        "drifts": online.metrics.get("drifts", 0.0),
        "seconds": {v.name: round(v.seconds, 3) for v in variants},
    }
    figures["beats_baselines"] = bool(
        figures["model_auc"] > figures["rule_auc"]
        and figures["model_auc"] > figures["no_learning_auc"]
    )
    rows = [
        ("events / decision points", f"{len(events):,} / {len(ids):,} (base rate {base_rate:.3f})"),
        ("labels learned", f"{online.labels:,} ({online.positives:,} positive)"),
        ("online model AUC", f"{figures['model_auc']:.4f}"),
        ("rule AUC (pricing dwell > 120 s)", f"{figures['rule_auc']:.4f}"),
        ("no-learning AUC", f"{figures['no_learning_auc']:.4f}"),
        ("frozen-after-warm-up AUC", f"{figures['frozen_auc']:.4f}"),
        ("model", online.version),
    ]
    warnings = []
    if not figures["beats_baselines"]:
        warnings.append("the online model does not beat both baselines on this run")
    return Result(figures=figures, rows=rows, warnings=warnings)

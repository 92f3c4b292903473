"""Build the intentflow dataflow from one typed config, with no I/O of its own.

``raw items → parse/validate → (dead letters | events) → shard → engine → sink``
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from intentflow.config import Config
from intentflow.contracts import Limits, Rejection, dead_letter, parse_event
from intentflow.dataflows.logic import EngineParts, ShardLogic, ShardSnapshot, shard_key
from intentflow.dataflows.sources import RawItem
from intentflow.events import Event
from intentflow.features.spec import FeatureSpec
from intentflow.online_models.catalog import ActionCatalog
from intentflow.online_models.labels import LabelConfig
from intentflow.online_models.model import ModelConfig
from intentflow.sinks.base import DeadLetterOut, Output

__all__ = ["build_flow", "engine_parts", "make_parser"]


def engine_parts(config: Config) -> EngineParts:
    """Parse and validate the component sections (features, model, labels, actions)."""
    spec = (
        FeatureSpec.from_dict(config.features, where="features")
        if config.features
        else FeatureSpec.default()
    )
    return EngineParts(
        spec=spec,
        model=ModelConfig.from_dict(config.model, where="model"),
        labels=LabelConfig.from_dict(config.labels, where="labels"),
        catalog=(
            ActionCatalog.from_dict(config.actions, where="actions")
            if config.actions
            else ActionCatalog.default()
        ),
        dedup_window_ms=int(config.engine.dedup_window_s * 1000),
        dedup_max=config.engine.dedup_max_per_shard,
        housekeeping_interval_ms=int(config.engine.housekeeping_interval_s * 1000),
        learn_tick_ms=max(1, int(config.engine.learn_tick_s * 1000)),
    )


def make_parser(limits: Limits) -> Callable[[list[RawItem]], list[Event | DeadLetterOut]]:
    """A batch function turning raw items into events or dead letters."""

    def parse_batch(items: list[RawItem]) -> list[Event | DeadLetterOut]:
        now_ms = int(time.time() * 1000)
        out: list[Event | DeadLetterOut] = []
        for item in items:
            res = parse_event(
                item.payload,
                limits,
                now_ms=now_ms,
                source=item.source,
                offset=item.offset,
                ingest_ts=item.ingest_ts,
                produced_ts=item.produced_ts,
            )
            if isinstance(res, Rejection):
                record = dead_letter(
                    res,
                    item.payload,
                    limits,
                    source=item.source,
                    offset=item.offset,
                    received_ts=item.ingest_ts,
                )
                out.append(DeadLetterOut(record))
            else:
                out.append(res)
        return out

    return parse_batch


def build_flow(
    config: Config,
    source: Source[RawItem],
    sink: Sink[Output],
    *,
    parts: EngineParts | None = None,
    flow_id: str = "intentflow",
) -> Dataflow:
    """Assemble the dataflow; ``source`` and ``sink`` are injected (tests use Testing*)."""
    parts = parts or engine_parts(config)
    shards = config.engine.shards
    flow = Dataflow(flow_id)
    raw = op.input("input", flow, source)
    parsed = op.flat_map_batch("parse", raw, make_parser(config.limits))
    split = op.branch("valid", parsed, lambda x: isinstance(x, Event))
    events: Any = split.trues
    dead: Any = split.falses

    keyed = op.key_on("shard", events, lambda e: shard_key(e.account_id or e.entity_id, shards))

    def build(resume: ShardSnapshot | None) -> ShardLogic:
        return ShardLogic(parts, resume)

    outputs = op.stateful_batch("engine", keyed, build)
    merged = op.merge("outputs", op.key_rm("unkey", outputs), dead)
    op.output("sink", merged, sink)
    return flow

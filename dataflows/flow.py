"""Build the intentflow dataflow from one typed config, with no I/O of its own.

``raw items → parse/validate → (dead letters | events) → shard → engine → sink``
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import FixedPartitionedSink, Sink

from intentflow.config import Config
from intentflow.contracts import Limits, Rejection, dead_letter, parse_event
from intentflow.dataflows.logic import EngineParts, ShardLogic, ShardSnapshot, shard_key
from intentflow.dataflows.sources import RawItem
from intentflow.events import Event
from intentflow.features.spec import FeatureSpec
from intentflow.metrics import EngineMetrics
from intentflow.online_models.catalog import load_catalog
from intentflow.online_models.labels import LabelConfig
from intentflow.online_models.model import ModelConfig
from intentflow.online_models.scorelog import ScoreLogBatch
from intentflow.rules.provider import RulesProvider
from intentflow.sinks.base import DeadLetterOut, OutputSink

__all__ = ["build_flow", "engine_parts", "make_parser"]


def engine_parts(config: Config) -> EngineParts:
    """Parse and validate the component sections (features, model, labels, actions)."""
    spec = (
        FeatureSpec.from_dict(config.features, where="features")
        if config.features
        else FeatureSpec.default()
    )
    catalog = load_catalog(config.actions)
    catalog.check_features(spec.names)
    return EngineParts(
        spec=spec,
        model=ModelConfig.from_dict(config.model, where="model"),
        labels=LabelConfig.from_dict(config.labels, where="labels"),
        catalog=catalog,
        dedup_window_ms=int(config.engine.dedup_window_s * 1000),
        dedup_max=config.engine.dedup_max_per_shard,
        entities_per_shard=config.engine.entities_per_shard,
        accounts_per_shard=config.engine.accounts_per_shard,
        housekeeping_interval_ms=int(config.engine.housekeeping_interval_s * 1000),
        learn_tick_ms=max(1, int(config.engine.learn_tick_s * 1000)),
    )


def make_parser(
    limits: Limits, metrics: EngineMetrics | None = None
) -> Callable[[list[RawItem]], list[Event | DeadLetterOut]]:
    """A batch function turning raw items into events or dead letters."""
    metrics = metrics or EngineMetrics()

    def parse_batch(items: list[RawItem]) -> list[Event | DeadLetterOut]:
        now_ms = int(time.time() * 1000)
        out: list[Event | DeadLetterOut] = []
        append = out.append
        for source, offset, payload, ingest_ts, produced_ts in items:
            # Positional: keyword arguments cost measurably at this rate.
            res = parse_event(payload, limits, now_ms, source, offset, ingest_ts, produced_ts)
            if isinstance(res, Rejection):
                record = dead_letter(
                    res, payload, limits, source=source, offset=offset, received_ts=ingest_ts
                )
                append(DeadLetterOut(record))
            else:
                append(res)
        metrics.parsed(len(items), out)
        return out

    return parse_batch


def _sink_item(output: Any) -> tuple[str, Any]:
    """``output`` keyed for a partitioned sink (its one partition takes every key)."""
    return ("out", output)


def _values(batch: list[tuple[str, Any]]) -> list[Any]:
    """The values of a batch of ``(key, value)`` items."""
    return [value for _, value in batch]


def build_flow(
    config: Config,
    source: Source[RawItem],
    sink: OutputSink,
    *,
    parts: EngineParts | None = None,
    flow_id: str = "intentflow",
    metrics: EngineMetrics | None = None,
    score_log: Sink[ScoreLogBatch] | None = None,
    rules: RulesProvider | None = None,
) -> Dataflow:
    """Assemble the dataflow; ``source`` and ``sink`` are injected (tests use Testing*).

    With ``score_log``, every scored event also goes there (see
    :mod:`intentflow.online_models.scorelog`).

    ``metrics`` receives per-batch figures (see :mod:`intentflow.metrics`);
    the default ignores them.

    ``rules`` is the process's rules provider; without one, a provider is
    made from ``config.rules`` (it reads nothing until the first batch).
    """
    parts = parts or engine_parts(config)
    if rules is None:
        rules = RulesProvider.from_config(config, parts.spec, parts.catalog)
    if score_log is not None:
        parts = replace(parts, score_log=True)
    metrics = metrics or EngineMetrics()
    if rules is not None:
        reload_metrics = metrics
        rules.on_reload = lambda ok: reload_metrics.rules_reloaded(ok=ok)
    shards = config.engine.shards
    metrics.shards = shards
    flow = Dataflow(flow_id)
    raw = op.input("input", flow, source)
    parse = make_parser(config.limits, metrics)
    if config.engine.affinity:  # shard i's key lands on the worker reading partition i
        from intentflow.cluster import affinity_keys, shard_index

        names = affinity_keys(shards)

        def route(e: Event) -> str:
            return names[shard_index(e.account_id or e.entity_id, shards)]
    else:

        def route(e: Event) -> str:
            return shard_key(e.account_id or e.entity_id, shards)

    def parse_and_route(items: list[RawItem]) -> list[tuple[str, list[Event]] | DeadLetterOut]:
        # One (shard, events) item per shard and input batch, in input order: Bytewax
        # routes a handful of items per batch instead of one per event.
        groups: dict[str, list[Event]] = {}
        dead: list[tuple[str, list[Event]] | DeadLetterOut] = []
        for x in parse(items):
            if isinstance(x, Event):
                key = route(x)
                group = groups.get(key)
                if group is None:
                    groups[key] = [x]
                else:
                    group.append(x)
            else:
                dead.append(x)
        return [*groups.items(), *dead]

    only = names[0] if config.engine.affinity else shard_key("", 1)

    def parse_one_shard(items: list[RawItem]) -> list[tuple[str, list[Event]] | DeadLetterOut]:
        # With one shard every event goes to it: no key to compute per event.
        parsed = parse(items)
        events = [x for x in parsed if type(x) is Event]
        if len(events) == len(parsed):
            return [(only, events)] if events else []
        dead: list[tuple[str, list[Event]] | DeadLetterOut] = [
            x for x in parsed if isinstance(x, DeadLetterOut)
        ]
        return [(only, events), *dead] if events else dead

    parsed = op.flat_map_batch("parse", raw, parse_one_shard if shards == 1 else parse_and_route)
    split = op.branch("valid", parsed, lambda x: type(x) is tuple)
    keyed: Any = split.trues
    dead: Any = split.falses

    def build(resume: ShardSnapshot | None) -> ShardLogic:
        return ShardLogic(parts, resume, metrics, rules)

    outputs = op.stateful_batch("engine", keyed, build)
    # One Python call per batch of outputs, not one per output as ``key_rm`` makes.
    results: Any = op.flat_map_batch("unkey", outputs, _values)
    if score_log is not None:
        logged = op.branch("score_log_split", results, lambda x: isinstance(x, ScoreLogBatch))
        op.output("score_log", logged.trues, score_log)
        results = logged.falses
    merged = op.merge("outputs", results, dead)
    if isinstance(sink, FixedPartitionedSink):  # a partitioned sink takes (key, output) pairs
        merged = op.map("sink_key", merged, _sink_item)
    op.output("sink", merged, sink)
    return flow

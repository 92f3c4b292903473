"""What each stage of the engine costs: ``stages`` of ``python -m bench e2e``.

The engine's own stage functions run in this process, without the Bytewax
runtime around them, over the synthetic stream through a real Redis:

- **read**: the engine's Redis source partition
  (:class:`~intentflow.dataflows.sources.RedisStreamSource`: ``XINFO`` +
  ``XREAD`` of up to ``batch`` entries);
- **parse**: the flow's parse step (:func:`~intentflow.dataflows.flow.make_parser`);
- then the batch is split by shard (``engine.shards``, 1 by default) as Bytewax routes
  it, and each shard's :meth:`ShardLogic.on_batch` runs, inside which
  **dedup** (``_dedup``), **features** (``FeatureState.update``),
  **labels** (``LabelBook.observe_many``/``on_conversion``/``expire``),
  **learn** (``ModelSet.learn_batch`` at learning ticks), **score**
  (``ModelSet.score_batch``), **rules** (the rules provider and
  ``RuleEngine.advance``/``on_event``/``watch``), **decide**
  (``Policy.decide``/``feedback``) and **alert** (building the alert record
  with its reason codes, ``ShardLogic._alert``) are timed separately by
  wrapping those methods of the live objects with ``time.perf_counter``;
- **sink**: :class:`~intentflow.sinks.redis_sink.RedisOutputWriter` writes
  the batch's outputs (alerts through the Lua script, score hashes) to Redis;
- **other**: the rest of ``on_batch`` (the per-event loop that ties the
  stages together, score records, housekeeping, metrics) and the routing.

The same events first run through a fresh, unwrapped copy of the pipeline:
``eps_in_process`` (wall time) and ``eps_per_cpu_s`` (this process's CPU
time, steadier on a shared machine) come from that pass, and
``instrumentation_overhead`` is how much more CPU time the wrapped pass
took (the per-call cost of the timers). Stage times are wall times
(``time.perf_counter``): read and sink include waiting for Redis.
Both passes start with the same warm-up (Numba kernels loaded, the model
past its cold start), which is not timed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import redis

from bench.common import DEMO_CONFIG, BenchError, Keys
from intentflow.commands.produce import Producer
from intentflow.config import load_config
from intentflow.dataflows.flow import engine_parts, make_parser
from intentflow.dataflows.logic import EngineParts, ShardLogic, shard_key
from intentflow.dataflows.sources import RawItem, RedisStreamSource
from intentflow.events import Event
from intentflow.generator import BuyerJourneyGenerator, GeneratorConfig
from intentflow.rules.provider import RulesProvider
from intentflow.sinks.base import AlertOut, DeadLetterOut, Output, ScoreOut, ScoresOut
from intentflow.sinks.redis_sink import RedisOutputWriter, RedisSinkConfig

__all__ = ["EXAMPLE_RULES", "STAGES", "StageProfile", "measure_stages"]

#: Stages in pipeline order.
STAGES: Final = (
    "read",
    "parse",
    "dedup",
    "features",
    "labels",
    "learn",
    "score",
    "rules",
    "decide",
    "alert",
    "sink",
    "other",
)
#: The rules the profile runs with by default (five example rules).
EXAMPLE_RULES: Final = Path(__file__).resolve().parents[1] / "examples" / "rules.toml"
_SEND_BATCH: Final = 1000


@dataclass(frozen=True)
class StageProfile:
    """Seconds per stage over ``events`` timed events, and the unwrapped pass."""

    events: int
    warmup: int
    batch: int
    shards: int
    rules: int  # rules in force
    seconds: dict[str, float]
    wrapped_s: float  # wall time of the wrapped pass (timed part)
    plain_s: float  # wall time of the unwrapped pass (timed part)
    wrapped_cpu_s: float  # CPU time of this process in the wrapped pass (timed part)
    plain_cpu_s: float  # the same for the unwrapped pass
    alerts: int  # alerts of the timed part (wrapped pass)

    def figures(self) -> dict[str, Any]:
        """The ``stages`` block of the JSON document."""
        total = sum(self.seconds.values())
        per_m = {k: v / self.events * 1e6 for k, v in self.seconds.items()}
        share = {k: (v / total if total > 0 else 0.0) for k, v in self.seconds.items()}
        top = sorted(share, key=lambda k: -share[k])[:3]
        return {
            "events": self.events,
            "warmup_events": self.warmup,
            "batch": self.batch,
            "shards": self.shards,
            "rules": self.rules,
            "alerts": self.alerts,
            "s_per_m_events": per_m,
            "share": share,
            "top": top,
            "us_per_event": total / self.events * 1e6,
            "eps_in_process": _ratio(self.events, self.plain_s),
            "eps_per_cpu_s": _ratio(self.events, self.plain_cpu_s),
            "instrumentation_overhead": _ratio(self.wrapped_cpu_s, self.plain_cpu_s) - 1.0,
        }


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


class _Timers:
    """Accumulated seconds per stage; wraps methods of live objects."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.on = False  # timing starts after the warm-up

    def start(self) -> None:
        """Forget what the warm-up accumulated; from now on every batch counts."""
        for stage in self.seconds:
            self.seconds[stage] = 0.0
        self.on = True

    def wrap(self, obj: Any, name: str, stage: str) -> None:
        """Replace ``obj.name`` (a bound method) by a timed call, on this instance only."""
        fn: Callable[..., Any] = getattr(obj, name)
        seconds = self.seconds
        clock = time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[stage] += clock() - t0

        setattr(obj, name, timed)


def _instrument(logic: ShardLogic, timers: _Timers) -> None:
    timers.wrap(logic, "_dedup", "dedup")
    timers.wrap(logic.features, "update", "features")
    for method in ("observe_many", "on_conversion", "expire"):
        timers.wrap(logic.labels, method, "labels")
    timers.wrap(logic.model, "learn_batch", "learn")
    timers.wrap(logic.model, "score_batch", "score")
    for method in ("advance", "on_event", "watch"):
        timers.wrap(logic.rule_engine, method, "rules")
    timers.wrap(logic.policy, "decide", "decide")
    timers.wrap(logic.policy, "feedback", "decide")
    timers.wrap(logic, "_alert", "alert")


class _Pipeline:
    """read → parse → route by shard → ShardLogic.on_batch → sink, one batch at a time."""

    def __init__(
        self,
        parts: EngineParts,
        shards: int,
        parse: Callable[[list[RawItem]], list[Any]],
        rules: RulesProvider | None,
        writer: RedisOutputWriter,
        timers: _Timers | None,
    ) -> None:
        self.parts = parts
        self.shards = shards
        self.parse = parse
        self.rules = rules
        self.writer = writer
        self.timers = timers
        self.logics: dict[str, ShardLogic] = {}
        self.alerts = 0

    def _logic(self, key: str) -> ShardLogic:
        logic = self.logics.get(key)
        if logic is None:
            logic = ShardLogic(self.parts, None, None, self.rules)
            if self.timers is not None:
                _instrument(logic, self.timers)
            self.logics[key] = logic
        return logic

    def step(self, read: Callable[[], list[RawItem]]) -> int:
        """One batch through every stage; returns the number of input items."""
        timers = self.timers
        on = timers is not None and timers.on
        clock = time.perf_counter
        t0 = clock()
        items = read()
        t1 = clock()
        parsed = self.parse(items)
        t2 = clock()
        outputs: list[Output] = []
        groups: dict[str, list[Event]] = {}
        for x in parsed:
            if isinstance(x, Event):
                groups.setdefault(shard_key(x.account_id or x.entity_id, self.shards), []).append(x)
            else:
                outputs.append(x)
        for key, events in groups.items():
            out, _ = self._logic(key).on_batch(events)
            outputs.extend(
                o for o in out if isinstance(o, AlertOut | ScoreOut | ScoresOut | DeadLetterOut)
            )
        t3 = clock()
        self.writer.write_batch(outputs)
        t4 = clock()
        if on and timers is not None:
            s = timers.seconds
            s["read"] += t1 - t0
            s["parse"] += t2 - t1
            s["other"] += t3 - t2  # the inner stages are taken out in _finish
            s["sink"] += t4 - t3
            self.alerts += sum(1 for o in outputs if isinstance(o, AlertOut))
        return len(items)


def _finish(timers: _Timers) -> dict[str, float]:
    """``other`` held the whole engine part: subtract what the wrapped stages took."""
    s = dict(timers.seconds)
    inner = sum(v for k, v in s.items() if k not in ("read", "parse", "sink", "other"))
    s["other"] = max(0.0, s["other"] - inner)
    return s


def _run_pass(
    *,
    url: str,
    stream_prefix: str,
    keys: Keys,
    parts: EngineParts,
    shards: int,
    parse: Callable[[list[RawItem]], list[Any]],
    rules_path: Path | None,
    warmup: int,
    events: int,
    batch: int,
    timers: _Timers | None,
) -> tuple[float, float, int]:
    """One pass over the staged stream: timed wall and CPU seconds, alerts in the timed part."""
    rules = None
    if rules_path is not None:
        rules = RulesProvider(
            parts.spec, parts.catalog, path=rules_path, redis_key=None, reload_interval_s=3600.0
        )
    source = RedisStreamSource(url=url, prefix=stream_prefix, partitions=1, batch_size=batch)
    part = source.build_part("input", f"{stream_prefix}0", None)
    writer = RedisOutputWriter(
        RedisSinkConfig(
            url=url,
            alerts_stream=keys.alerts,
            dlq_stream=keys.dlq,
            score_key_prefix=keys.score_prefix,
            seen_key_prefix=keys.seen_prefix,
        )
    )
    pipe = _Pipeline(parts, shards, parse, rules, writer, timers)
    try:
        done = 0
        while done < warmup:
            n = pipe.step(part.next_batch)
            if n == 0:
                raise BenchError("profile: the staged stream ended during the warm-up")
            done += n
        if timers is not None:
            timers.start()
        t0, c0 = time.perf_counter(), time.process_time()
        timed = 0
        while timed < events:
            n = pipe.step(part.next_batch)
            if n == 0:
                break
            timed += n
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        part.close()
        writer.close()
        if rules is not None:
            rules.close()
    if timed != events:
        raise BenchError(f"profile: read {timed} of {events} events")
    return seconds, cpu, pipe.alerts


def measure_stages(
    client: redis.Redis,
    url: str,
    *,
    events: int,
    warmup: int,
    entities: int,
    seed: int,
    event_time_rate: float,
    batch: int | None = None,
    rules_path: Path | None = EXAMPLE_RULES,
) -> StageProfile:
    """Stage seconds over ``events`` events after ``warmup`` (see the module docstring)."""
    cfg = load_config(DEMO_CONFIG, env={})
    batch = cfg.input.batch if batch is None else batch  # None: as the engine reads
    if events < 1 or warmup < 0 or batch < 1:
        raise BenchError("profile: events and batch must be positive, warmup non-negative")
    warmup = -(-warmup // batch) * batch  # whole batches, so the timed part starts cleanly
    parts = engine_parts(cfg)
    shards = cfg.engine.shards
    parse = make_parser(cfg.limits)
    span_ms = int((warmup + events) / event_time_rate * 1000.0)
    gen = BuyerJourneyGenerator(
        GeneratorConfig(
            seed=seed,
            entities=entities,
            start_ms=int(time.time() * 1000) - span_ms,
            events_per_second=event_time_rate,
        )
    )
    stream = Keys.unique("profile-in")
    payloads = gen.next_payloads(warmup + events)
    producer = Producer(client, stream.events_prefix, 1)
    for i in range(0, len(payloads), _SEND_BATCH):
        producer.send(payloads[i : i + _SEND_BATCH])
    del payloads
    n_rules = 0
    if rules_path is not None:
        probe = RulesProvider(parts.spec, parts.catalog, path=rules_path, redis_key=None)
        n_rules = len(probe.load_initial().rules)
        probe.close()
    plain_keys, wrapped_keys = Keys.unique("profile-plain"), Keys.unique("profile-wrapped")
    timers = _Timers()
    common: dict[str, Any] = {
        "url": url,
        "stream_prefix": stream.events_prefix,
        "parts": parts,
        "shards": shards,
        "parse": parse,
        "rules_path": rules_path,
        "warmup": warmup,
        "events": events,
        "batch": batch,
    }
    try:
        plain_s, plain_cpu, _ = _run_pass(keys=plain_keys, timers=None, **common)
        wrapped_s, wrapped_cpu, alerts = _run_pass(keys=wrapped_keys, timers=timers, **common)
    finally:
        for keys in (stream, plain_keys, wrapped_keys):
            keys.cleanup(client)
    return StageProfile(
        events=events,
        warmup=warmup,
        batch=batch,
        shards=shards,
        rules=n_rules,
        seconds=_finish(timers),
        wrapped_s=wrapped_s,
        plain_s=plain_s,
        wrapped_cpu_s=wrapped_cpu,
        plain_cpu_s=plain_cpu,
        alerts=alerts,
    )

"""One typed configuration for the whole engine.

Sources, lowest precedence first: built-in defaults, a TOML file, environment
variables ``INTENTFLOW__SECTION__KEY=value`` (values parsed as TOML scalars,
e.g. ``INTENTFLOW__INPUT__PARTITIONS=4``), ``REDIS_URL``, then CLI flags.
Errors name the offending key. Secrets (passwords in URLs) are never printed:
use :meth:`Config.redacted`.

>>> cfg = load_config(None, env={"INTENTFLOW__INPUT__PARTITIONS": "3"})
>>> cfg.input.partitions, cfg.output.alerts_stream
(3, 'intentflow:alerts')
>>> try:
...     load_config(None, env={"INTENTFLOW__INPUT__PARTITIONS": "zero"})
... except ConfigError as err:
...     print(err)
input.partitions (from INTENTFLOW__INPUT__PARTITIONS): expected an integer, got 'zero'
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, get_type_hints

import orjson

from intentflow.contracts import Limits
from intentflow.errors import ConfigError
from intentflow.online_models._validate import coerce_value
from intentflow.redisutil import BUSY_POLL_US

__all__ = [
    "SOURCE_BATCH_SIZES",
    "Config",
    "EngineSection",
    "InputSection",
    "KafkaSection",
    "OutputSection",
    "RecoverySection",
    "RedisSection",
    "RulesSection",
    "load_config",
]


@dataclass(frozen=True)
class RedisSection:
    """Where Redis is. Empty ``url``: ``REDIS_URL``, else an embedded server."""

    url: str = ""
    # how long a source read or sink write polls for its reply before it blocks (0: block;
    # docs/configuration.md)
    busy_poll_us: int = BUSY_POLL_US


#: Records per input batch at most, by source, when ``input.batch_size`` is 0 (the
#: default). A live source's batch bounds how long the engine works before its
#: next output: a reader that fell behind takes 250 entries at a time, not 1,000,
#: which halved the p99 under load at the same maximum throughput (docs/configuration.md,
#: "input.batch_size"). Replays (file, generator) keep the larger batch.
SOURCE_BATCH_SIZES: Final[Mapping[str, int]] = MappingProxyType(
    {"redis": 250, "kafka": 1000, "file": 1000, "generator": 1000}
)


@dataclass(frozen=True)
class InputSection:
    """Where events come from."""

    source: str = "redis"  # redis | file | generator | kafka
    partitions: int = 1
    events_prefix: str = "intentflow:events:"
    # records per input batch at most; 0: the source's own (SOURCE_BATCH_SIZES)
    batch_size: int = 0
    poll_idle_ms: float = 1.0
    # with one Redis stream, an idle reader waits in XREAD BLOCK up to this long (0: poll)
    idle_block_ms: int = 50
    # Redis source: after a read that was not full, wait this long before the next one
    # (fewer, larger batches at low rates; at most this much more latency). 0: at once
    linger_ms: float = 0.0
    start_id: str = "0-0"  # where a fresh (not resumed) run starts reading each stream
    path: str = ""  # JSONL file(s) for source=file, comma separated
    rate: float = 0.0  # events/s per partition for file/generator; 0 = as fast as possible
    count: int = 0  # stop after this many items per partition (generator/file); 0 = no limit
    duration_s: float = 0.0  # stop reading after this many seconds; 0 = run forever

    @property
    def batch(self) -> int:
        """Records per input batch at most: ``batch_size``, or the source's default when 0.

        >>> InputSection().batch, InputSection(source="generator").batch
        (250, 1000)
        >>> InputSection(batch_size=500).batch
        500
        """
        return self.batch_size or SOURCE_BATCH_SIZES[self.source]


@dataclass(frozen=True)
class OutputSection:
    """Where alerts, scores and dead letters go."""

    alerts_stream: str = "intentflow:alerts"
    alerts_maxlen: int = 1_000_000
    dlq_stream: str = "intentflow:dlq"
    dlq_maxlen: int = 1_000_000
    score_key_prefix: str = "intentflow:score:"
    score_ttl_s: int = 7 * 86400
    seen_key_prefix: str = "intentflow:alert-seen:"
    seen_ttl_s: int = 7 * 86400
    max_retries: int = 8
    score_log: str = ""  # every score, for offline evaluation: a JSONL path or redis:STREAM
    sink: str = "redis"  # redis | redis-cluster (cluster_url) | kafka ([kafka] section)
    cluster_url: str = ""  # a Redis Cluster node for sink = "redis-cluster" (docs/scaling.md)
    #: with one worker in all, send each batch ahead and confirm it before the next one
    #: and at every epoch's end (docs/sinks.md, "Pipelined writes"); sink = "redis" only
    pipelined: bool = True


@dataclass(frozen=True)
class EngineSection:
    """How events are sharded and de-duplicated."""

    shards: int = 1  # one process's default; scale-out sets S up front (docs/scaling.md)
    dedup_window_s: float = 86400.0
    dedup_max_per_shard: int = 1_000_000
    #: feature rows allocated per shard at start (the arrays double beyond, pausing the
    #: shard: docs/capacity.md, "Growth pauses"); memory is taken as rows are used
    entities_per_shard: int = 1024
    accounts_per_shard: int = 0  # 0: a sixteenth of entities_per_shard
    housekeeping_interval_s: float = 60.0  # event time between evictions/trims
    learn_tick_s: float = 5.0  # event time between model updates from matured labels
    model_file: str = ""  # warm-start every fresh shard's model from this exported model file
    affinity: bool = False  # one input partition per shard, read where it is owned (scaling.md)
    #: objects allocated between collections of the garbage collector's youngest
    #: generation once the engine runs (Python's default is 700); 0 keeps Python's
    #: setting (docs/configuration.md, engine.gc_young_threshold)
    gc_young_threshold: int = 10_000


@dataclass(frozen=True)
class KafkaSection:
    """Kafka input (``input.source = "kafka"``) and alert sink (``output.sink = "kafka"``)."""

    brokers: str = ""  # bootstrap servers, host:port[,host:port...]
    events_topic: str = "intentflow-events"  # one topic partition per input partition
    alerts_topic: str = "intentflow-alerts"
    scores_topic: str = "intentflow-scores"  # latest scores keyed by entity; "": not written
    dlq_topic: str = "intentflow-dlq"
    properties: str = ""  # a client properties file (security.protocol, sasl.*, ssl.*)
    delivery_timeout_s: float = 30.0  # a record not acknowledged by then fails the batch
    tail: bool = True  # false: stop at the end of every partition (replays)


@dataclass(frozen=True)
class RecoverySection:
    """Bytewax recovery: empty ``dir`` runs without recovery."""

    dir: str = ""
    snapshot_interval_s: float = 10.0
    backup_interval_s: float = 0.0


@dataclass(frozen=True)
class RulesSection:
    """Declarative rules (docs/rules.md): a TOML file and/or a Redis key, reloaded live."""

    path: str = ""  # rules file (TOML); empty: none
    redis_key: str = "intentflow:rules"  # key holding rules TOML text (wins over path); "": off
    reload_interval_s: float = 2.0  # how often the file and the key are checked
    audit_stream: str = "intentflow:rules:audit"  # applied changes and rejections
    audit_maxlen: int = 10_000
    idle_timers: bool = True  # fire absence deadlines on idle shards by the wall clock
    max_keys_per_shard: int = 200_000  # cooldown, count and owner entries (each)
    max_timers_per_shard: int = 100_000  # absence timers awaiting an outcome


_SECTIONS: dict[str, type] = {
    "redis": RedisSection,
    "input": InputSection,
    "output": OutputSection,
    "engine": EngineSection,
    "recovery": RecoverySection,
    "limits": Limits,
    "rules": RulesSection,
    "kafka": KafkaSection,
}
#: Sections handed as raw tables to their components, which validate them.
_COMPONENT_SECTIONS = ("features", "model", "labels", "actions", "generator")


@dataclass(frozen=True)
class Config:
    """The engine configuration: typed sections plus component tables."""

    redis: RedisSection = field(default_factory=RedisSection)
    input: InputSection = field(default_factory=InputSection)
    output: OutputSection = field(default_factory=OutputSection)
    engine: EngineSection = field(default_factory=EngineSection)
    recovery: RecoverySection = field(default_factory=RecoverySection)
    limits: Limits = field(default_factory=Limits)
    rules: RulesSection = field(default_factory=RulesSection)
    kafka: KafkaSection = field(default_factory=KafkaSection)
    features: Mapping[str, Any] = field(default_factory=dict)
    model: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, Any] = field(default_factory=dict)
    actions: Mapping[str, Any] = field(default_factory=dict)
    generator: Mapping[str, Any] = field(default_factory=dict)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """Apply ``{"section.key": value}`` overrides (CLI flags); ``None`` is skipped."""
        cfg = self
        for dotted, value in overrides.items():
            if value is None:
                continue
            section, _, key = dotted.partition(".")
            current = getattr(cfg, section)
            checked = _coerce(type(current), key, value, f"{dotted} (command line)")
            cfg = replace(cfg, **{section: replace(current, **{key: checked})})
        return cfg

    def redacted(self) -> dict[str, Any]:
        """The configuration as a dict, with passwords in URLs masked."""
        from intentflow.redisutil import redact_url

        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            data[f.name] = dict(value) if isinstance(value, Mapping) else _asdict(value)
        data["redis"]["url"] = redact_url(self.redis.url) if self.redis.url else ""
        data["output"]["cluster_url"] = redact_url(self.output.cluster_url)
        return data

    def config_hash(self) -> str:
        """A short stable hash of the configuration (for metrics and logs)."""
        blob = orjson.dumps(self.redacted(), option=orjson.OPT_SORT_KEYS)
        return hashlib.blake2b(blob, digest_size=6).hexdigest()


def _asdict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _coerce(cls: type, key: str, value: Any, where: str) -> Any:
    hints = get_type_hints(cls)
    if key not in hints:
        known = ", ".join(sorted(hints))
        raise ConfigError(f"{where}: unknown key {key!r} (known keys: {known})")
    return coerce_value(hints[key], value, where)


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _build_section(cls: type, table: Mapping[str, Any], where: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table")
    kwargs = {k: _coerce(cls, k, v, f"{where}.{k}") for k, v in table.items()}
    obj = cls(**kwargs)
    _validate(obj, where)
    return obj


def _validate(obj: Any, where: str) -> None:
    positive = {
        "partitions",
        "shards",
        "max_payload_bytes",
        "max_text_chars",
        "max_depth",
        "alerts_maxlen",
        "dlq_maxlen",
        "snapshot_interval_s",
        "housekeeping_interval_s",
        "learn_tick_s",
        "dedup_max_per_shard",
        "entities_per_shard",
    }
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name in positive and value <= 0:
            raise ConfigError(f"{where}.{f.name}: must be > 0, got {value!r}")
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"{where}.{f.name}: must be >= 0, got {value!r}")
    if isinstance(obj, OutputSection) and obj.sink not in {"redis", "redis-cluster", "kafka"}:
        raise ConfigError(
            f"{where}.sink: {obj.sink!r} is not a sink (use redis, redis-cluster or kafka)"
        )
    if isinstance(obj, InputSection) and obj.source not in {"redis", "file", "generator", "kafka"}:
        raise ConfigError(
            f"{where}.source: {obj.source!r} is not a source (use redis, file, generator or kafka)"
        )


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Load defaults, then ``path`` (TOML), then environment overrides."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ConfigError(f"config file {p} does not exist") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {p}: {err}") from err
    unknown = set(data) - set(_SECTIONS) - set(_COMPONENT_SECTIONS)
    if unknown:
        known = ", ".join(sorted([*_SECTIONS, *_COMPONENT_SECTIONS]))
        raise ConfigError(f"unknown section(s) {sorted(unknown)} (known: {known})")

    tables: dict[str, dict[str, Any]] = {name: dict(data.get(name, {})) for name in _SECTIONS}
    sources: dict[tuple[str, str], str] = {}
    for name, raw in env.items():
        if not name.startswith("INTENTFLOW__"):
            continue
        parts = name.split("__")
        if len(parts) != 3:
            raise ConfigError(f"{name}: use INTENTFLOW__SECTION__KEY")
        section, key = parts[1].lower(), parts[2].lower()
        if section not in _SECTIONS:
            raise ConfigError(f"{name}: unknown section {section!r}")
        tables[section][key] = _parse_env_value(raw)
        sources[(section, key)] = name
    if not tables["redis"].get("url") and env.get("REDIS_URL"):
        tables["redis"]["url"] = env["REDIS_URL"]

    built: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        table = tables[name]
        for key, value in table.items():
            origin = sources.get((name, key))
            where = f"{name}.{key}" + (f" (from {origin})" if origin else "")
            _coerce(cls, key, value, where)
        built[name] = _build_section(cls, table, name)
    for name in _COMPONENT_SECTIONS:
        table = data.get(name, {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"{name}: expected a table")
        built[name] = table
    return Config(**built)

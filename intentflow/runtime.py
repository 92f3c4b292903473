"""Turn a :class:`~intentflow.config.Config` into a runnable dataflow.

This is where I/O is chosen (sources, sinks, recovery); the flow itself is
built by :func:`intentflow.dataflows.flow.build_flow` with no I/O of its own.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import sqlite3
import stat
import tempfile
from contextlib import closing
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.recovery import RecoveryConfig, init_db_dir

from intentflow.config import Config
from intentflow.dataflows.flow import build_flow
from intentflow.dataflows.sources import (
    GeneratorSource,
    JsonlFileSource,
    RawItem,
    ReadAhead,
    RedisStreamSource,
)
from intentflow.errors import ConfigError, RecoveryError
from intentflow.generator import GENERATED_MAX_BYTES, GeneratorConfig
from intentflow.metrics import EngineMetrics
from intentflow.sinks.base import OutputSink
from intentflow.sinks.redis_sink import PipelinedRedisSink, RedisSink, RedisSinkConfig

if TYPE_CHECKING:
    from intentflow.cluster import Placement

__all__ = [
    "generator_config",
    "make_flow",
    "make_output",
    "make_sink",
    "make_source",
    "prepare_recovery",
]

log = logging.getLogger(__name__)


def generator_config(table: Any, **overrides: Any) -> GeneratorConfig:
    """A :class:`GeneratorConfig` from the ``[generator]`` table plus overrides."""
    known = set(GeneratorConfig.__dataclass_fields__)
    unknown = set(table) - known
    if unknown:
        raise ConfigError(
            f"generator: unknown key(s) {sorted(unknown)} (known: {', '.join(sorted(known))})"
        )
    cfg = GeneratorConfig(**dict(table))
    clean = {k: v for k, v in overrides.items() if v is not None}
    return replace(cfg, **clean) if clean else cfg


def make_source(config: Config, metrics: EngineMetrics | None = None) -> Source[RawItem]:
    """The input source named by ``input.source``."""
    inp = config.input
    if inp.source == "kafka":
        from intentflow.dataflows.kafka import kafka_source

        return kafka_source(config)
    if inp.source == "redis":
        return RedisStreamSource(
            url=config.redis.url,
            prefix=inp.events_prefix,
            partitions=inp.partitions,
            batch_size=inp.batch,
            poll_idle_ms=inp.poll_idle_ms,
            idle_block_ms=inp.idle_block_ms,
            linger_ms=inp.linger_ms,
            busy_poll_us=config.redis.busy_poll_us,
            start_id=inp.start_id,
            duration_s=inp.duration_s,
            count=inp.count,
            metrics=metrics,
        )
    if inp.source == "file":
        paths = [p.strip() for p in inp.path.split(",") if p.strip()]
        if not paths:
            raise ConfigError("input.path: required with input.source = 'file' (--path FILE)")
        for p in paths:
            if not Path(p).is_file():
                raise ConfigError(f"input.path: {p} is not a file")
        return JsonlFileSource(
            paths,
            batch_size=inp.batch,
            rate=inp.rate,
            duration_s=inp.duration_s,
            count=inp.count,
        )
    return GeneratorSource(
        generator_config(config.generator),
        batch_size=inp.batch,
        rate=inp.rate,
        duration_s=inp.duration_s,
        count=inp.count,
        decoded=config.limits.max_payload_bytes >= GENERATED_MAX_BYTES,
    )


def make_sink(
    config: Config, metrics: EngineMetrics | None = None, *, workers: int | None = 1
) -> RedisSink | PipelinedRedisSink:
    """The Redis sink for alerts, latest scores and dead letters.

    ``workers``: workers in the whole run (``None``: not known here). With
    one, and ``output.pipelined``, the sink sends each batch ahead
    (:class:`PipelinedRedisSink`).
    """
    out = config.output
    sink_config = RedisSinkConfig(
        url=config.redis.url,
        alerts_stream=out.alerts_stream,
        alerts_maxlen=out.alerts_maxlen,
        dlq_stream=out.dlq_stream,
        dlq_maxlen=out.dlq_maxlen,
        score_key_prefix=out.score_key_prefix,
        score_ttl_s=out.score_ttl_s,
        seen_key_prefix=out.seen_key_prefix,
        seen_ttl_s=out.seen_ttl_s,
        max_retries=out.max_retries,
        busy_poll_us=config.redis.busy_poll_us,
    )
    if out.pipelined and workers == 1:
        return PipelinedRedisSink(sink_config, metrics)
    return RedisSink(sink_config, metrics)


def make_output(
    config: Config, metrics: EngineMetrics | None = None, *, workers: int | None = 1
) -> OutputSink:
    """The sink named by ``output.sink``: Redis, a Redis Cluster or Kafka.

    ``workers``: workers in the whole run (see :func:`make_sink`).
    """
    if config.output.sink == "kafka":
        from intentflow.sinks.kafka_sink import make_kafka_sink

        return make_kafka_sink(config, metrics)
    if config.output.sink == "redis-cluster":
        from intentflow.sinks.cluster import make_cluster_sink

        return make_cluster_sink(config, metrics)
    return make_sink(config, metrics, workers=workers)


def _total_workers(workers: int | None, placement: Placement | None) -> int | None:
    """Workers in the whole run: this process's times the processes (``None``: not known)."""
    if workers is None:
        return None
    return workers * (placement.processes if placement is not None else 1)


def connect_read_ahead(source: Source[RawItem], output: OutputSink) -> bool:
    """Have a pipelined sink receive and send the Redis input's reads ahead before it sends.

    Only a flow of one worker has a :class:`PipelinedRedisSink`, so the
    source's partitions and the sink run on one thread (docs/sinks.md, "The
    input's read ahead"). Returns whether they were connected.
    """
    if isinstance(source, RedisStreamSource) and isinstance(output, PipelinedRedisSink):
        source.read_ahead = ReadAhead()
        output.before_send = source.read_ahead.before_send
        return True
    return False


def make_flow(
    config: Config,
    metrics: EngineMetrics | None = None,
    placement: Placement | None = None,
    *,
    workers: int | None = 1,
) -> Dataflow:
    """The production dataflow for ``config``, reporting to ``metrics`` when given.

    With ``engine.affinity`` this process reads only the input partitions
    whose shards it owns in ``placement`` (default: one process).

    ``engine.model_file`` warm-starts every fresh shard's model from an
    exported model file; ``output.score_log`` adds the score log.
    ``workers``: worker threads of this process (``placement`` gives the
    process count; ``None``: not known, as under ``bytewax.run``), which
    picks the Redis sink (:func:`make_sink`).
    """
    from intentflow.dataflows.flow import engine_parts
    from intentflow.online_models.modelfile import load_model_file
    from intentflow.online_models.scorelog import make_score_log
    from intentflow.warmup import compile_kernels

    parts = engine_parts(config)
    # every kernel now, not at its first use in the middle of the stream
    log.info("kernels ready in %.1f s", compile_kernels(parts.spec, parts.model))
    if not config.recovery.dir:  # nothing will ever resume: skip pickling shard state
        parts = replace(parts, snapshots=False)
    if config.engine.model_file:
        model = load_model_file(
            config.engine.model_file, spec_hash=parts.spec.spec_hash, config=parts.model
        )
        log.info("fresh shards start from model %s (%s)", model.version, config.engine.model_file)
        parts = replace(parts, initial_model=model)
    score_log = (
        make_score_log(config.output.score_log, config.redis.url)
        if config.output.score_log
        else None
    )
    from intentflow.rules.provider import RulesProvider

    rules = RulesProvider.from_config(config, parts.spec, parts.catalog)
    if rules is not None:
        loaded = rules.load_initial()  # a bad rule set stops the start with a clear error
        log.info("rules %s from %s: %d enabled", loaded.version, loaded.source, len(loaded.rules))
    source = make_source(config, metrics)
    if config.engine.affinity:
        from intentflow.cluster import affine_source

        source = affine_source(config, source, placement)
    output = make_output(config, metrics, workers=_total_workers(workers, placement))
    connect_read_ahead(source, output)
    return build_flow(
        config,
        source,
        output,
        parts=parts,
        metrics=metrics,
        score_log=score_log,
        rules=rules,
    )


def prepare_recovery(config: Config, *, init: bool, partitions: int = 1) -> RecoveryConfig | None:
    """Check (or, with ``init``, create) the recovery directory.

    A missing or empty directory is an error unless ``init`` is given: the
    engine never starts over silently. New directories are owner-only because
    Bytewax loads pickles from them (a trust boundary, see docs/operations.md).
    """
    rec = config.recovery
    if not rec.dir:
        return None
    path = Path(rec.dir)
    parts = sorted(path.glob("part-*.sqlite3")) if path.is_dir() else []
    if not parts:
        if not init:
            state = "does not exist" if not path.exists() else "holds no recovery partitions"
            raise RecoveryError(
                f"recovery directory {path} {state}; pass --init-recovery to create a new one "
                "(this starts from an empty state), or point --recovery-dir at the right place"
            )
        if path.exists() and any(path.iterdir()):
            raise RecoveryError(
                f"recovery directory {path} is not empty but holds no recovery partitions; "
                "refusing to initialise over unknown files"
            )
        _init_recovery_dir(path, partitions)
        log.info("initialised recovery directory %s with %d partition(s)", path, partitions)
    else:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning(
                "recovery directory %s is accessible by other users (mode %o); "
                "it holds pickles that are loaded on resume: chmod 700 it",
                path,
                mode,
            )
        positions = check_recovery_partitions(parts)
        _check_input_partitions(config, positions)
    return RecoveryConfig(path, backup_interval=timedelta(seconds=rec.backup_interval_s))


def _init_recovery_dir(path: Path, partitions: int) -> None:
    """Create an owner-only recovery directory so that a crash leaves it whole or absent.

    The partitions are written in a private staging directory next to ``path``
    and renamed into place; a crash meanwhile leaves no ``path`` (and a stale
    ``.NAME.init-*`` directory that the next initialisation removes). An
    existing empty ``path`` (e.g. a mount point) is initialised in place.
    """
    if path.exists():
        os.chmod(path, 0o700)
        init_db_dir(path, partitions)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.init-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.init-", dir=path.parent))  # mode 700
    try:
        init_db_dir(staging, partitions)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_input_partitions(config: Config, stored: set[str]) -> None:
    """Refuse a directory holding positions of input partitions the config does not read.

    Bytewax cannot place such a position and aborts; a changed ``--source``,
    ``--partitions`` or ``--events-prefix`` is the usual cause.
    """
    wanted = set(make_source(config).list_parts())  # type: ignore[attr-defined]
    unknown = sorted(stored - wanted)
    if unknown:
        shown = ", ".join(unknown[:4]) + (" …" if len(unknown) > 4 else "")
        raise RecoveryError(
            f"recovery directory {config.recovery.dir} holds input positions of {shown}, which "
            f"this configuration does not read (it reads {', '.join(sorted(wanted))}); restore "
            "the --source/--partitions/--events-prefix it was written with, or start a new "
            "recovery directory with --init-recovery"
        )


_RECOVERY_TABLES = frozenset({"parts", "exs", "fronts", "commits", "snaps"})


def check_recovery_partitions(parts: list[Path], input_step: str = "intentflow.input") -> set[str]:
    """Refuse damaged or incomplete recovery partitions before the flow starts.

    Checks that every file is an intact SQLite database (``PRAGMA quick_check``)
    with Bytewax's tables, that no partition is missing, and that every stored
    snapshot unpickles at its outer layer (what Bytewax loads on resume).
    Raises :class:`RecoveryError` naming the file; never repairs anything.
    Returns the input partitions ``input_step`` holds positions for.
    """
    positions: set[str] = set()
    fix = (
        "restore the directory from a backup, or move it away and start anew with "
        "--init-recovery (this starts from an empty state)"
    )
    counts: set[int] = set()
    indexes: set[int] = set()
    for part in parts:
        try:
            with closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True)) as con:
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
                if not tables >= _RECOVERY_TABLES:
                    missing = ", ".join(sorted(_RECOVERY_TABLES - tables))
                    raise RecoveryError(
                        f"recovery partition {part} is damaged (missing table(s) {missing}); {fix}"
                    )
                check = con.execute("PRAGMA quick_check").fetchone()
                if check is None or check[0] != "ok":
                    what = check[0] if check else "no answer"
                    raise RecoveryError(f"recovery partition {part} is damaged ({what}); {fix}")
                for index, count in con.execute("SELECT part_index, part_count FROM parts"):
                    indexes.add(int(index))
                    counts.add(int(count))
                rows = con.execute("SELECT step_id, state_key, ser_change FROM snaps")
                for step, key, blob in rows:
                    _check_snapshot(part, step, key, blob, fix)
                    if step == input_step and blob is not None:
                        positions.add(key)
        except sqlite3.DatabaseError as err:
            raise RecoveryError(f"recovery partition {part} is damaged ({err}); {fix}") from err
    want = max(counts, default=0)
    if not counts:
        raise RecoveryError(
            f"recovery directory {parts[0].parent} is damaged (no partition record); {fix}"
        )
    if len(counts) > 1 or indexes != set(range(want)):
        absent = sorted(set(range(want)) - indexes)
        raise RecoveryError(
            f"recovery directory {parts[0].parent} is incomplete (partition(s) {absent} of "
            f"{want} missing, or partitions of different directories mixed); {fix}"
        )
    return positions


def _check_snapshot(part: Path, step: str, key: str, blob: bytes | None, fix: str) -> None:
    if blob is None:
        return  # the state was discarded
    try:
        snap = pickle.loads(blob)
    except Exception as err:
        raise RecoveryError(
            f"recovery partition {part} holds an unreadable snapshot of {step}/{key} "
            f"({type(err).__name__}: {err}); {fix}"
        ) from err
    damaged = getattr(snap, "damaged", None)
    if callable(damaged) and damaged():
        raise RecoveryError(
            f"recovery partition {part} holds a damaged snapshot of {step}/{key} "
            f"(checksum mismatch); {fix}"
        )


def epoch_interval(config: Config) -> timedelta:
    """The Bytewax epoch (= snapshot) interval."""
    return timedelta(seconds=config.recovery.snapshot_interval_s)

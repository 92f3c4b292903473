"""``intentflow run`` and ``intentflow replay``."""

from __future__ import annotations

import argparse
import gc
import logging
import time

from bytewax.run import cli_main

from intentflow.cluster import Placement, parse_addresses, prepare_placement_recovery
from intentflow.commands.common import config_from_args, stream_len
from intentflow.config import Config
from intentflow.errors import ConfigError
from intentflow.redisutil import connect, ping_or_fail, redact_url, redis_url_or_embedded

__all__ = ["cmd_replay", "cmd_run", "placement_warnings", "run_config", "young_gc"]

log = logging.getLogger("intentflow.run")


def placement_warnings(config: Config, workers: int) -> list[str]:
    """What is wrong, though not fatal, with this shard count for ``workers`` workers in all.

    >>> from intentflow.config import load_config
    >>> placement_warnings(load_config(None, env={}), 1)
    []
    >>> cfg = load_config(None, env={}).with_overrides({"input.partitions": 2})
    >>> [w.split(":")[0] for w in placement_warnings(cfg, 2)]
    ['2 input partitions but engine.shards = 1', '2 workers but engine.shards = 1']
    """
    out: list[str] = []
    parts, shards = config.input.partitions, config.engine.shards
    if config.input.source == "redis" and shards % parts:
        # shard i holds crc % S == i, partition p crc % P == p: one partition per shard iff P | S
        out.append(
            f"{parts} input partitions but engine.shards = {shards}: a shard reads several "
            "partitions, whose interleaving differs from run to run, so a resumed run may "
            "differ from an uninterrupted one; make engine.shards a multiple of "
            "input.partitions (docs/scaling.md)"
        )
    if workers > shards:
        out.append(
            f"{workers} workers but engine.shards = {shards}: {workers - shards} worker(s) "
            "will hold no shard and idle (shards are fixed for a recovery directory; "
            "docs/scaling.md)"
        )
    return out


def young_gc(threshold: int) -> None:
    """Collect the youngest generation every ``threshold`` allocations (0: leave as is).

    The engine builds and drops several objects per event (its payload's
    dict, the event, its items), most of them alive until their batch is
    done. Python's default (700) collects the youngest generation several
    times per batch, each time walking the batch's live objects again; every
    10,000 allocations ran the in-process pipeline about 5 % faster (six
    alternating pairs, bench/README.md, "Garbage collector"). The older
    generations keep their thresholds.

    >>> import gc
    >>> before = gc.get_threshold()
    >>> young_gc(10_000)
    >>> gc.get_threshold()[0]
    10000
    >>> gc.set_threshold(*before)
    """
    if threshold > 0:
        gc.set_threshold(threshold, *gc.get_threshold()[1:])


def run_config(
    config: Config,
    *,
    workers: int = 1,
    init_recovery: bool = False,
    metrics_address: tuple[str | None, int | None] | None = None,
    placement: Placement | None = None,
) -> None:
    """Run the dataflow for ``config`` in this process until its input ends.

    With a clustered ``placement`` this process joins a Bytewax cluster
    (``docs/scaling.md``).

    With ``metrics_address`` (host, port), serve ``/metrics``, ``/healthz`` and
    ``/readyz`` while it runs (see :func:`intentflow.health.serve_engine_metrics`).
    """
    from intentflow.runtime import epoch_interval, make_flow  # heavy: not in a cluster's parent

    client = connect(config.redis.url)
    ping_or_fail(client, config.redis.url)
    client.close()
    recovery = prepare_placement_recovery(
        config, init=init_recovery, placement=placement, workers=workers
    )
    metrics, server = None, None
    if metrics_address is not None:
        from intentflow.health import serve_engine_metrics

        metrics, server = serve_engine_metrics(
            config, host=metrics_address[0], port=metrics_address[1]
        )
    flow = make_flow(config, metrics, placement, workers=workers)
    # Start-up objects (modules, config, compiled kernels' wrappers) live for the whole
    # run: move them out of the collector's generations, so that collections triggered
    # by per-batch garbage never scan them again (shorter GC pauses in the tail).
    gc.collect()
    gc.freeze()
    young_gc(config.engine.gc_young_threshold)
    cluster = placement is not None and placement.clustered
    if cluster:
        assert placement is not None
        log.info("process %d of %d", placement.process_id, placement.processes)
    for warning in placement_warnings(
        config, workers * (placement.processes if placement is not None else 1)
    ):
        log.warning("%s", warning)
    log.info(
        "running: source=%s partitions=%d batch=%d redis=%s recovery=%s workers=%d config=%s",
        config.input.source,
        config.input.partitions,
        config.input.batch,
        redact_url(config.redis.url),
        config.recovery.dir or "off",
        workers,
        config.config_hash(),
    )
    try:
        cli_main(
            flow,
            workers_per_process=workers,
            process_id=placement.process_id if cluster and placement else None,
            addresses=list(placement.addresses) if cluster and placement else None,
            epoch_interval=epoch_interval(config),
            recovery_config=recovery,
        )
    finally:
        if server is not None:
            server.stop()


def cmd_run(args: argparse.Namespace) -> int:
    """Run the engine; with an embedded Redis when no URL is configured."""
    config = config_from_args(args)
    processes = getattr(args, "processes", None) or 1
    addresses = getattr(args, "addresses", None)
    placement = None
    if processes > 1 and (addresses or args.process_id is not None):
        raise ConfigError(
            "--processes starts a local cluster, --process-id/--addresses join a multi-host one: "
            "give one or the other"
        )
    if addresses:
        if args.process_id is None:
            raise ConfigError("--addresses needs --process-id (this process's index in them)")
        hosts = parse_addresses(addresses)
        placement = Placement(len(hosts), args.process_id, args.workers, hosts, False)
    if getattr(args, "affinity", False) or processes > 1 or placement is not None:
        config = config.with_overrides({"engine.affinity": True})
    with redis_url_or_embedded(config.redis.url or None) as url:
        if not config.redis.url:
            log.warning("no --redis-url/REDIS_URL: using an embedded redis-server at %s", url)
        config = config.with_overrides({"redis.url": url})
        if processes > 1:
            from intentflow.cluster import run_local_cluster

            return run_local_cluster(
                config,
                processes=processes,
                workers_per_process=args.workers,
                init_recovery=args.init_recovery,
                metrics_host=args.metrics_host,
                metrics_port=args.metrics_port,
                verbose=args.verbose,
                log_json=args.log_json,
            )
        run_config(
            config,
            workers=args.workers,
            init_recovery=args.init_recovery,
            metrics_address=(args.metrics_host, args.metrics_port),
            placement=placement,
        )
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Run the flow over a JSONL file and print what it produced."""
    from rich.console import Console
    from rich.table import Table

    config = config_from_args(args, **{"input.source": "file", "input.path": args.file})
    with redis_url_or_embedded(config.redis.url or None) as url:
        config = config.with_overrides({"redis.url": url})
        client = connect(url)
        out = config.output
        before = (stream_len(client, out.alerts_stream), stream_len(client, out.dlq_stream))
        t0 = time.perf_counter()
        run_config(config, init_recovery=args.init_recovery)
        elapsed = time.perf_counter() - t0
        alerts = stream_len(client, out.alerts_stream) - before[0]
        dead = stream_len(client, out.dlq_stream) - before[1]
        lines = sum(1 for line in open(args.file, "rb") if line.strip())  # noqa: SIM115
        client.close()
    table = Table(title=f"replay of {args.file}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("input lines", f"{lines:,}")
    table.add_row("alerts written", f"{alerts:,}")
    table.add_row("dead letters", f"{dead:,}")
    table.add_row("wall time", f"{elapsed:.2f} s")
    table.add_row("throughput", f"{lines / elapsed:,.0f} events/s" if elapsed else "-")
    Console().print(table)
    return 0

"""The ``intentflow`` command line: demo, run, produce, tail, replay, status, model, rules.

Flag names (``--redis-url``, ``--partitions``, ``--events-prefix``,
``--alerts-stream``) are part of the contract and stay stable.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from intentflow import __version__
from intentflow.errors import IntentflowError

__all__ = ["build_parser", "main"]

log = logging.getLogger("intentflow")


def _shared(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("shared options")
    g.add_argument("--config", metavar="PATH", help="TOML configuration file")
    g.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis URL (default: $REDIS_URL, else an embedded redis-server)",
    )
    g.add_argument("--partitions", type=int, metavar="N", help="number of input streams")
    g.add_argument(
        "--events-prefix", metavar="PREFIX", help="input stream prefix (intentflow:events:)"
    )
    g.add_argument("--alerts-stream", metavar="KEY", help="alert stream (intentflow:alerts)")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    g.add_argument("--log-json", action="store_true", help="log as JSON lines")


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source",
        choices=["redis", "file", "generator", "kafka"],
        help="input: Redis streams (default), JSONL file(s), the synthetic generator or a "
        "Kafka topic ([kafka] section)",
    )
    p.add_argument("--path", help="JSONL file(s), comma separated (with --source file)")
    p.add_argument("--rate", type=float, help="events/s per partition for file/generator input")
    p.add_argument("--count", type=int, help="stop after N input items per partition")
    p.add_argument("--duration", type=float, help="stop reading input after SECONDS")
    p.add_argument("--workers", type=int, default=1, help="worker threads in this process")
    p.add_argument("--recovery-dir", metavar="DIR", help="Bytewax recovery directory")
    p.add_argument(
        "--init-recovery",
        action="store_true",
        help="create and initialise --recovery-dir if it does not exist yet",
    )
    p.add_argument("--snapshot-interval", type=float, metavar="S", help="seconds per snapshot")
    p.add_argument("--shards", type=int, help="state shards (fixed for a recovery directory)")
    p.add_argument(
        "--rules", metavar="FILE", help="rules file (TOML), reloaded live when it changes"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="intentflow",
        description="Real-time buying intent and next-best-action alerts.",
    )
    parser.add_argument("--version", action="version", version=f"intentflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="run the engine on synthetic journeys and show live alerts",
        description="Start Redis (embedded unless --redis-url/REDIS_URL), produce synthetic "
        "buyer journeys, run the dataflow, show live alerts, then print a summary.",
    )
    _shared(p)
    p.add_argument("--duration", type=float, default=20.0, help="seconds to run (default 20)")
    p.add_argument("--rate", type=float, default=1000.0, help="events/s produced (default 1000)")
    p.add_argument("--entities", type=int, default=2000, help="synthetic contacts")
    p.add_argument("--seed", type=int, default=7, help="generator seed")
    p.add_argument("--poison", type=float, default=0.002, help="fraction of invalid payloads")
    p.add_argument("--show", type=int, default=8, help="alerts shown per second at most")
    p.set_defaults(func="intentflow.commands.demo:cmd_demo")

    p = sub.add_parser(
        "run",
        help="run the dataflow (production entry point)",
        description="Run the dataflow until its input ends (or forever for Redis input).",
    )
    _shared(p)
    _run_options(p)
    p.add_argument(
        "--metrics-host",
        metavar="HOST",
        help="address of /metrics, /healthz, /readyz (default 127.0.0.1)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="port of /metrics, /healthz, /readyz (default 9464; 0: a free port, logged)",
    )
    p.add_argument(
        "--score-log",
        metavar="PATH",
        help="log every score (event_id, entity_id, ts, score, model) to a JSONL file, "
        "or to a Redis stream with redis:STREAM",
    )
    p.add_argument(
        "--model-file",
        metavar="PATH",
        help="start every fresh shard from this exported model (intentflow model export)",
    )
    g = p.add_argument_group("scaling out (docs/scaling.md)")
    g.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="run N processes on this machine as one cluster (implies --affinity)",
    )
    g.add_argument(
        "--process-id", type=int, metavar="I", help="this process's index in --addresses"
    )
    g.add_argument(
        "--addresses",
        metavar="H:P;H:P",
        help="host:port of every process of a multi-host cluster (implies --affinity)",
    )
    g.add_argument(
        "--affinity",
        action="store_true",
        help="one input partition per shard, read by the process owning the shard "
        "(engine.affinity; fixed for a recovery directory)",
    )
    p.set_defaults(func="intentflow.commands.run:cmd_run")

    p = sub.add_parser(
        "replay",
        help="run the dataflow over a JSONL file and print a summary",
        description="Run the whole dataflow over FILE (one event per line), exit at its end.",
    )
    _shared(p)
    p.add_argument("file", help="JSONL file of events")
    p.add_argument("--rate", type=float, help="events/s (default: as fast as possible)")
    p.add_argument("--recovery-dir", metavar="DIR", help="Bytewax recovery directory")
    p.add_argument("--init-recovery", action="store_true", help="create --recovery-dir")
    p.add_argument("--rules", metavar="FILE", help="rules file (TOML)")
    p.set_defaults(func="intentflow.commands.run:cmd_replay")

    p = sub.add_parser(
        "produce",
        help="send synthetic or JSONL events to the input streams",
        description="XADD events to {events-prefix}{i}, routed by account (else entity).",
    )
    _shared(p)
    p.add_argument("--file", help="JSONL file to send (default: the synthetic generator)")
    p.add_argument("--rate", type=float, default=0.0, help="events/s (0: as fast as possible)")
    p.add_argument("--count", type=int, default=10_000, help="events to send (0: no limit)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after SECONDS")
    p.add_argument("--entities", type=int, help="synthetic contacts")
    p.add_argument("--seed", type=int, help="generator seed")
    p.add_argument("--poison", type=float, default=0.0, help="fraction of invalid payloads")
    p.add_argument("--live", action="store_true", help="stamp events with the current time")
    p.set_defaults(func="intentflow.commands.produce:cmd_produce")

    p = sub.add_parser(
        "tail",
        help="print alerts as they arrive",
        description="Read the alert stream with XREAD (no consumer group) and print alerts.",
    )
    _shared(p)
    p.add_argument("--from-start", action="store_true", help="start at the oldest alert")
    p.add_argument("--json", action="store_true", help="print raw JSON lines")
    p.add_argument("--count", type=int, default=0, help="exit after N alerts (0: never)")
    p.add_argument("--timeout", type=float, default=0.0, help="exit after SECONDS idle")
    p.set_defaults(func="intentflow.commands.tail:cmd_tail")

    p = sub.add_parser(
        "status",
        help="key figures of a running engine, from its metrics endpoint",
        description="Scrape a running engine's /metrics twice, INTERVAL apart, and print "
        "throughput, lag, latency percentiles, alerts per action and model quality.",
    )
    p.add_argument(
        "--metrics-url",
        default="http://127.0.0.1:9464/metrics",
        metavar="URL",
        help="the engine's metrics endpoint (default http://127.0.0.1:9464/metrics)",
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes (1)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--log-json", action="store_true", help="log as JSON lines")
    p.set_defaults(func="intentflow.commands.status:cmd_status")

    p = sub.add_parser(
        "model",
        help="export a trained model, or check a model file before starting from it",
        description="Warm starts: export a shard's model from a recovery directory, and check "
        "a model file against the configuration (then: intentflow run --model-file PATH).",
    )
    msub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    q = msub.add_parser(
        "export",
        help="write the model of a recovery directory to a model file",
        description="Read the newest engine snapshots of --recovery-dir and write the model "
        "of the shard that has learned the most labels (or --shard) to PATH.",
    )
    q.add_argument("path", help="model file to write")
    q.add_argument("--recovery-dir", required=True, metavar="DIR", help="Bytewax recovery dir")
    q.add_argument("--shard", metavar="KEY", help="export this shard's model (e.g. s2)")
    q.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    q.add_argument("--log-json", action="store_true", help="log as JSON lines")
    q.set_defaults(func="intentflow.commands.model:cmd_export")
    q = msub.add_parser(
        "import",
        help="check a model file against the configuration",
        description="Check that PATH fits the configuration (feature spec, model kind, "
        "checksum) and print how to start from it with intentflow run --model-file.",
    )
    q.add_argument("path", help="model file to check")
    q.add_argument("--config", metavar="PATH", help="TOML configuration file")
    q.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    q.add_argument("--log-json", action="store_true", help="log as JSON lines")
    q.set_defaults(func="intentflow.commands.model:cmd_import")

    p = sub.add_parser(
        "rules",
        help="check, try out or publish a rules file",
        description="Declarative triggers and decision adjustments (docs/rules.md).",
    )
    rsub = p.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    q = rsub.add_parser(
        "check",
        help="validate a rules file offline",
        description="Validate FILE against the configured feature spec and action catalog "
        "and describe its rules; exit 2 with the offending key on error.",
    )
    _shared(q)
    q.add_argument("file", help="rules file (TOML)")
    q.set_defaults(func="intentflow.commands.rules:cmd_check")
    q = rsub.add_parser(
        "test",
        help="show which rules fire on which events of a sample",
        description="Run the engine in memory (features, score, rules) over a JSONL sample "
        "and show the alerts each rule would send.",
    )
    _shared(q)
    q.add_argument("file", help="rules file (TOML)")
    q.add_argument("--events", required=True, metavar="SAMPLE.jsonl", help="events, one a line")
    q.add_argument("--json", action="store_true", help="print the rule alerts as JSON lines")
    q.set_defaults(func="intentflow.commands.rules:cmd_test")
    q = rsub.add_parser(
        "push",
        help="validate a rules file and store it in the engines' Redis key",
        description="Validate FILE, then SET it as the value of rules.redis_key "
        "(intentflow:rules): running engines apply it within rules.reload_interval_s.",
    )
    _shared(q)
    q.add_argument("file", help="rules file (TOML)")
    q.set_defaults(func="intentflow.commands.rules:cmd_push")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``intentflow`` console script."""
    import importlib

    from intentflow.logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(verbose=args.verbose, json_lines=args.log_json)
    module_name, _, func_name = args.func.partition(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(args) or 0)
    except IntentflowError as err:
        print(f"intentflow: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

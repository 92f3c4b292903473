"""The ``intentflow`` command line: demo, run, produce, tail, replay.

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
        choices=["redis", "file", "generator"],
        help="input: Redis streams (default), JSONL file(s) or the synthetic generator",
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
    p.add_argument("--rate", type=float, default=2000.0, help="events/s produced (default 2000)")
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

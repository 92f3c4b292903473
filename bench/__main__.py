"""``python -m bench SCENARIO [--json PATH] [--quick]``: run one benchmark scenario."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from rich.console import Console

from bench import SCENARIOS
from bench.common import Context, Scenario, machine_info, write_json
from intentflow.display import summary_table
from intentflow.errors import IntentflowError
from intentflow.redisutil import connect, ping_or_fail, redis_url_or_embedded

__all__ = ["build_parser", "main"]


def _scenario(name: str) -> Scenario:
    return cast(Scenario, importlib.import_module(f"bench.{name}"))


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per scenario, each with the shared options."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="intentflow benchmarks: print a table, optionally write JSON.",
    )
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for name in SCENARIOS:
        module = _scenario(name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
        p.add_argument("--quick", action="store_true", help="reduced sizes (CI smoke test)")
        p.add_argument(
            "--redis-url",
            metavar="URL",
            help="Redis to use (default: $REDIS_URL, else an embedded redis-server)",
        )
        module.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenario named in ``argv``; 0 on success, 2 when it could not run."""
    args = build_parser().parse_args(argv)
    module = _scenario(args.scenario)
    console = Console(highlight=False)
    started = datetime.now(UTC)
    t0 = time.monotonic()
    given = args.redis_url or os.environ.get("REDIS_URL") or None
    try:
        with (
            tempfile.TemporaryDirectory(prefix="intentflow-bench-") as tmp,
            redis_url_or_embedded(given) as url,
        ):
            client = connect(url)
            ping_or_fail(client, url)
            machine = machine_info(client)
            client.close()
            ctx = Context(
                url=url,
                embedded=given is None,
                quick=args.quick,
                workdir=Path(tmp),
                console=console,
            )
            result = module.run(args, ctx)
    except IntentflowError as err:
        console.print(f"[red]bench {args.scenario}: error:[/] {err}")
        return 2
    except KeyboardInterrupt:
        return 130

    machine["loadavg_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    doc: dict[str, Any] = {
        "scenario": args.scenario,
        "quick": bool(args.quick),
        "started_at": started.isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - t0, 3),
        "redis": {"embedded": given is None, "unix_socket": url.startswith("unix:")},
        "machine": machine,
        **result.figures,
        "warnings": result.warnings,
    }
    title = f"intentflow bench {args.scenario}" + (" (quick)" if args.quick else "")
    rows = [
        *result.rows,
        ("machine", f"{machine['cores']} cores, {machine['cpu_model']}"),
        ("redis-server", f"{machine['redis_server']} ({'embedded' if given is None else 'given'})"),
    ]
    console.print()
    console.print(summary_table(title, rows))
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    if args.json:
        write_json(args.json, doc)
        console.print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

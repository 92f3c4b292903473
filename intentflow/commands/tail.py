"""``intentflow tail``: print alerts as they arrive."""

from __future__ import annotations

import argparse

import orjson
from rich.console import Console

from intentflow.commands.common import config_from_args
from intentflow.display import alert_latency_ms, alert_line
from intentflow.errors import ConfigError
from intentflow.sinks.reader import iter_alerts

__all__ = ["cmd_tail"]


def cmd_tail(args: argparse.Namespace) -> int:
    """Follow the alert stream with XREAD (never disturbs consumer groups)."""
    config = config_from_args(args)
    if not config.redis.url:
        raise ConfigError("tail needs --redis-url or REDIS_URL")
    console = Console()
    for _entry_id, alert, read_ts in iter_alerts(
        config.redis.url,
        stream=config.output.alerts_stream,
        start_id="0" if args.from_start else "$",
        max_entries=args.count or None,
        idle_timeout_s=args.timeout or None,
    ):
        if args.json:
            print(orjson.dumps(alert).decode(), flush=True)
        else:
            console.print(alert_line(alert, alert_latency_ms(alert, read_ts)))
    return 0

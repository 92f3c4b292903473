"""Helpers shared by the subcommands: config from flags, Redis stream figures."""

from __future__ import annotations

import argparse
from typing import Any

import redis

from intentflow.config import Config, load_config

__all__ = ["config_from_args", "stream_len"]

_FLAG_KEYS = {
    "redis_url": "redis.url",
    "partitions": "input.partitions",
    "events_prefix": "input.events_prefix",
    "alerts_stream": "output.alerts_stream",
    "source": "input.source",
    "path": "input.path",
    "rate": "input.rate",
    "count": "input.count",
    "duration": "input.duration_s",
    "recovery_dir": "recovery.dir",
    "snapshot_interval": "recovery.snapshot_interval_s",
    "shards": "engine.shards",
    "score_log": "output.score_log",
    "model_file": "engine.model_file",
    "rules": "rules.path",
}


def config_from_args(args: argparse.Namespace, **extra: Any) -> Config:
    """Load ``--config`` and apply environment overrides, then the flags given."""
    cfg = load_config(getattr(args, "config", None))
    overrides = {
        key: getattr(args, flag) for flag, key in _FLAG_KEYS.items() if hasattr(args, flag)
    }
    overrides.update(extra)
    return cfg.with_overrides(overrides)


def stream_len(client: redis.Redis, key: str) -> int:
    """XLEN that is 0 for a missing key."""
    return int(client.xlen(key))

"""Helpers for tests that run the whole dataflow in memory."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from intentflow.config import Config, load_config
from intentflow.dataflows.flow import build_flow
from intentflow.dataflows.sources import RawItem
from intentflow.generator import BuyerJourneyGenerator, GeneratorConfig
from intentflow.sinks.base import AlertOut, DeadLetterOut, Output, ScoreOut, records

#: demo.toml with ``labels.hold_first_horizon = false``, for tests whose short
#: streams must alert early (see the file's comment).
SHORT_RUN_TOML = str(Path(__file__).with_name("short-run.toml"))


def demo_config(*, short_run: bool = False, **sections: Any) -> Config:
    """The packaged demo settings (short label horizon), plus overrides.

    ``short_run``: :data:`SHORT_RUN_TOML`'s settings instead.
    """
    if short_run:
        text = Path(SHORT_RUN_TOML).read_text()
    else:
        text = resources.files("intentflow").joinpath("defaults/demo.toml").read_text()
    data = tomllib.loads(text)
    cfg = load_config(None, env={})
    cfg = replace(cfg, labels=data["labels"], model=data["model"])
    return replace(cfg, **sections) if sections else cfg


def gen_payloads(n: int, **gen: Any) -> list[bytes]:
    """``n`` payloads of the synthetic generator; 50 events per second of event time."""
    cfg = GeneratorConfig(**{"events_per_second": 50.0, **gen})
    return BuyerJourneyGenerator(cfg).next_payloads(n)


def items_of(payloads: list[bytes], source: str = "test") -> list[RawItem]:
    return [RawItem(source, str(i), p, 0.0, None) for i, p in enumerate(payloads)]


def run_memory(
    cfg: Config,
    items: list[Any],
    *,
    batch_size: int = 500,
    recovery_dir: Path | None = None,
    out: list[Output] | None = None,
) -> list[Output]:
    """Run the flow over ``items`` (TestingSource markers allowed) into a list."""
    out = [] if out is None else out
    flow = build_flow(cfg, TestingSource(items, batch_size=batch_size), TestingSink(out))
    recovery = None
    if recovery_dir is not None:
        if not any(recovery_dir.glob("part-*.sqlite3")):
            init_db_dir(recovery_dir, 1)
        recovery = RecoveryConfig(recovery_dir)
    epoch = timedelta(milliseconds=20) if recovery else None
    run_main(flow, epoch_interval=epoch, recovery_config=recovery)
    return out


def alerts(out: list[Output]) -> list[dict[str, Any]]:
    return [o.alert for o in out if isinstance(o, AlertOut)]


def dead_letters(out: list[Output]) -> list[dict[str, Any]]:
    return [o.record for o in out if isinstance(o, DeadLetterOut)]


def scores(out: list[Output]) -> list[ScoreOut]:
    return [o for o in records(out) if isinstance(o, ScoreOut)]


def decisions(out: list[Output]) -> list[tuple[str, str, float]]:
    """What must be equal between runs: (alert_id, action, score), sorted.

    Shards interleave their outputs differently with different batching, so
    the order across shards is not part of the result.
    """
    return sorted((a["alert_id"], a["action"]["id"], a["score"]) for a in alerts(out))

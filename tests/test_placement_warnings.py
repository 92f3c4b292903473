"""Start-up warnings about the shard count (``intentflow.commands.run.placement_warnings``)."""

from __future__ import annotations

import pytest

from intentflow.commands.run import placement_warnings
from intentflow.config import Config, load_config


def cfg(source: str = "redis", partitions: int = 1, shards: int = 1) -> Config:
    return load_config(None, env={}).with_overrides(
        {"input.source": source, "input.partitions": partitions, "engine.shards": shards}
    )


def test_the_defaults_on_one_worker_warn_of_nothing() -> None:
    assert placement_warnings(load_config(None, env={}), 1) == []


@pytest.mark.parametrize(
    ("partitions", "shards", "mixed"),
    [(1, 1, False), (1, 4, False), (2, 2, False), (2, 4, False), (4, 12, False),
     (2, 1, True), (3, 4, True), (4, 2, True), (8, 12, True)],
)  # fmt: skip
def test_a_shard_reading_several_partitions_is_warned_of(
    partitions: int, shards: int, mixed: bool
) -> None:
    warned = placement_warnings(cfg(partitions=partitions, shards=shards), 1)
    assert any("reads several partitions" in w for w in warned) == mixed
    # what the warning is about: some shard's keys fall in two partitions
    keys = range(10_000)
    spread = any(len({k % partitions for k in keys if k % shards == s}) > 1 for s in range(shards))
    assert spread == mixed


def test_other_sources_have_no_partition_warning() -> None:
    assert placement_warnings(cfg(source="generator", partitions=2, shards=1), 1) == []


@pytest.mark.parametrize(
    ("workers", "shards", "idle"), [(1, 1, 0), (2, 1, 1), (4, 4, 0), (6, 4, 2)]
)
def test_workers_beyond_the_shard_count_are_warned_of(workers: int, shards: int, idle: int) -> None:
    warned = [w for w in placement_warnings(cfg(shards=shards), workers) if "workers" in w]
    assert bool(warned) == bool(idle)
    if idle:
        assert f"{idle} worker(s) will hold no shard" in warned[0]

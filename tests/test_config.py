"""Typed configuration: files, environment, flags, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from intentflow.config import load_config
from intentflow.errors import ConfigError


def test_defaults() -> None:
    cfg = load_config(None, env={})
    assert cfg.input.partitions == 1
    assert cfg.input.events_prefix == "intentflow:events:"
    assert cfg.output.alerts_stream == "intentflow:alerts"
    assert cfg.redis.url == ""


def test_file_env_and_flags_in_order(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[input]\npartitions = 2\nsource = "file"\n[engine]\nshards = 8\n')
    cfg = load_config(path, env={"INTENTFLOW__ENGINE__SHARDS": "16", "REDIS_URL": "redis://h"})
    assert (cfg.input.partitions, cfg.input.source, cfg.engine.shards) == (2, "file", 16)
    assert cfg.redis.url == "redis://h"
    cfg2 = cfg.with_overrides({"input.partitions": 5, "engine.shards": None})
    assert (cfg2.input.partitions, cfg2.engine.shards) == (5, 16)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[input]\npartitions = 0\n", "input.partitions: must be > 0"),
        ('[input]\nsource = "kafkaa"\n', "input.source"),
        ("[input]\nbatchsize = 3\n", "input.batchsize: unknown key 'batchsize'"),
        ("[inptu]\n", "unknown section"),
        ("[output]\nalerts_stream = 3\n", "output.alerts_stream: expected a string"),
        ("[input\n", "c.toml"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as info:
        load_config(path, env={})
    assert needle in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/intentflow.toml", env={})


def test_redacted_hides_password() -> None:
    cfg = load_config(None, env={"REDIS_URL": "redis://user:s3cret@host:6379/0"})
    assert "s3cret" not in str(cfg.redacted())
    assert "s3cret" not in cfg.config_hash()
    assert cfg.redis.url.endswith("@host:6379/0")


def test_busy_poll_reaches_the_redis_source_and_sink() -> None:
    from intentflow.runtime import make_sink, make_source

    cfg = load_config(None, env={"INTENTFLOW__REDIS__BUSY_POLL_US": "0"})
    assert cfg.redis.busy_poll_us == 0
    assert make_source(cfg).busy_poll_us == 0  # type: ignore[attr-defined]
    assert make_sink(cfg).config.busy_poll_us == 0
    with pytest.raises(ConfigError, match="busy_poll_us"):
        load_config(None, env={"INTENTFLOW__REDIS__BUSY_POLL_US": "-1"})


def test_presized_feature_rows_reach_the_shards_and_survive_a_restore(tmp_path: Path) -> None:
    """engine.entities_per_shard / accounts_per_shard size a shard's feature arrays,
    fresh and restored (docs/capacity.md, "Growth pauses")."""
    from intentflow.dataflows.flow import engine_parts
    from intentflow.dataflows.logic import ShardLogic

    path = tmp_path / "c.toml"
    path.write_text("[engine]\nentities_per_shard = 5000\naccounts_per_shard = 700\n")
    parts = engine_parts(load_config(path, env={}))
    fresh = ShardLogic(parts, None)
    assert (fresh.features.entity_capacity, fresh.features.account_capacity) == (5000, 700)
    restored = ShardLogic(parts, fresh.snapshot())
    assert (restored.features.entity_capacity, restored.features.account_capacity) == (5000, 700)
    default = ShardLogic(engine_parts(load_config(None, env={})), None)
    assert (default.features.entity_capacity, default.features.account_capacity) == (1024, 64)
    path.write_text("[engine]\nentities_per_shard = 0\n")
    with pytest.raises(ConfigError, match=r"engine\.entities_per_shard: must be > 0"):
        load_config(path, env={})


def test_the_young_generation_threshold_defaults_to_ten_thousand_and_is_checked() -> None:
    assert load_config(None, env={}).engine.gc_young_threshold == 10_000
    env = {"INTENTFLOW__ENGINE__GC_YOUNG_THRESHOLD": "0"}
    assert load_config(None, env=env).engine.gc_young_threshold == 0  # Python's own setting
    with pytest.raises(ConfigError, match="gc_young_threshold"):
        load_config(None, env={"INTENTFLOW__ENGINE__GC_YOUNG_THRESHOLD": "-5"})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, 250),  # the Redis input's own batch
        ({"INTENTFLOW__INPUT__SOURCE": "generator"}, 1000),  # a replay keeps the larger one
        ({"INTENTFLOW__INPUT__BATCH_SIZE": "500"}, 500),
        ({"INTENTFLOW__INPUT__SOURCE": "generator", "INTENTFLOW__INPUT__BATCH_SIZE": "64"}, 64),
    ],
)
def test_batch_size_zero_means_the_sources_own(env: dict[str, str], expected: int) -> None:
    from intentflow.runtime import make_source

    cfg = load_config(None, env=env)
    assert cfg.input.batch == expected
    assert make_source(cfg).batch_size == expected  # type: ignore[attr-defined]


def test_batch_size_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"input\.batch_size: must be >= 0"):
        load_config(None, env={"INTENTFLOW__INPUT__BATCH_SIZE": "-1"})

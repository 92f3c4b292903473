"""Shipped configuration files load and match the code's defaults."""

from __future__ import annotations

from pathlib import Path

from intentflow.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_example_config_states_the_defaults() -> None:
    assert load_config(ROOT / "examples" / "intentflow.toml", env={}) == load_config(None, env={})


def test_demo_settings_load() -> None:
    cfg = load_config(ROOT / "intentflow" / "defaults" / "demo.toml", env={})
    assert cfg.labels["horizon_ms"] == 60_000

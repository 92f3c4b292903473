"""Several label definitions side by side; outcome conversions by action; label delays."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from importlib import resources
from typing import Any

import jsonschema
import numpy as np
import pytest
from flowkit import alerts, demo_config, gen_payloads, items_of, run_memory

from intentflow.errors import ConfigError
from intentflow.events import Event
from intentflow.online_models.labels import LabelBook, LabelConfig
from intentflow.online_models.model import ModelConfig
from intentflow.online_models.targets import SideTargets

ACCEPTS = {
    "name": "accepts_call_1h",
    "horizon_ms": 3_600_000,
    "conversion_types": [],
    "conversion_outcome_results": ["accepted"],
    "conversion_actions": ["call_now", "retention_call"],
}


def outcome(entity: str, ts: int, action: str, result: str) -> Event:
    return Event(f"o-{entity}-{ts}", ts, entity, "outcome",
                 props={"action": action, "result": result, "alert_id": "a"})  # fmt: skip


def test_extra_definitions_are_parsed_and_checked() -> None:
    cfg = LabelConfig.from_dict({"horizon_ms": 1000, "extra": [ACCEPTS]})
    assert cfg.name == "converts"
    (extra,) = cfg.extra
    assert (extra.name, extra.horizon_ms, extra.conversion_types) == (
        "accepts_call_1h",
        3_600_000,
        (),
    )
    assert extra.is_conversion(outcome("c", 0, "call_now", "accepted"))
    assert not extra.is_conversion(outcome("c", 0, "book_demo", "accepted"))
    assert not extra.is_conversion(outcome("c", 0, "call_now", "rejected"))
    assert not extra.is_conversion(Event("p", 0, "c", "purchase"))
    assert cfg.is_conversion(Event("p", 0, "c", "purchase"))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"extra": {"name": "x"}}, r"labels\.extra: expected a list"),
        ({"extra": [{"horizon_ms": 5}]}, r"labels\.extra\[0\]\.name: every extra"),
        ({"extra": [{"name": "converts"}]}, r"labels\.extra\[0\]\.name: duplicate"),
        ({"extra": [{"name": "a"}, {"name": "a"}]}, r"labels\.extra\[1\]\.name: duplicate"),
        ({"extra": [{"name": "a", "extra": []}]}, r"labels\.extra\[0\]\.extra: extra"),
        ({"extra": [{"name": "a", "horizon_ms": 0}]}, r"labels\.extra\[0\]\.horizon_ms"),
        ({"extra": [{"name": "a b"}]}, r"labels\.extra\[0\]\.name"),
        ({"conversion_types": [], "conversion_outcome_results": []}, r"labels\.conversion_types"),
    ],
)
def test_extra_definition_errors_name_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LabelConfig.from_dict(table)


def test_label_delays_of_the_recent_positives() -> None:
    book = LabelBook(LabelConfig(horizon_ms=10_000, min_gap_ms=0, max_pending_per_entity=100))
    assert np.isnan(book.delay_stats()["mean_ms"])
    rng = np.random.default_rng(1)
    delays = []
    for i in range(1500):
        entity, ts = f"e{i}", i * 10
        d = int(rng.integers(1, 10_000))
        book.observe(entity, ts, np.zeros(1), 0.0)
        book.on_conversion(entity, ts + d)
        delays.append(d)
    recent = np.array(delays[-1000:])
    stats = book.delay_stats()
    assert stats["window"] == 1000
    assert stats["mean_ms"] == pytest.approx(recent.mean())
    assert stats["p50_ms"] == pytest.approx(np.percentile(recent, 50))
    assert stats["p90_ms"] == pytest.approx(np.percentile(recent, 90))


def test_side_targets_learn_their_own_label() -> None:
    """Entities with a high first feature accept a call 10 s later; buying is unrelated."""
    labels = LabelConfig.from_dict(
        {"horizon_ms": 60_000, "min_gap_ms": 0, "extra": [{**ACCEPTS, "horizon_ms": 60_000}]}
    )
    side = SideTargets(labels, ModelConfig(warmup_labels=20, lr=0.05))
    names = ("signal", "noise")
    rng = np.random.default_rng(3)
    events: list[Event] = []
    rows: list[np.ndarray] = []
    for i in range(1500):
        ts = i * 1000
        row = rng.normal(size=2)
        events.append(Event(f"d{i}", ts, f"c{i}", "page_view"))
        rows.append(row)
        if row[0] > 0.5:
            events.append(outcome(f"c{i}", ts + 10_000, "call_now", "accepted"))
            rows.append(row)
    order = sorted(range(len(events)), key=lambda j: events[j].ts_ms)
    events = [events[j] for j in order]
    feats = np.array([rows[j] for j in order])
    tick = 0
    start = 0
    for j, ev in enumerate(events):  # one segment per second of event time, as the shard does
        if ev.ts_ms // 1000 > tick:
            side.process_segment(events, feats, start, j, names)
            tick, start = ev.ts_ms // 1000, j
            side.tick(ev.ts_ms, names)
    side.process_segment(events, feats, start, len(events), names)
    (model,) = side.models
    assert model.ready
    assert model.metrics()["auc"] > 0.9
    metrics = side.metrics()["accepts_call_1h"]
    assert metrics["label_delay_mean_ms"] == pytest.approx(10_000)
    clone = pickle.loads(pickle.dumps(side))
    probe = np.array([[2.0, 0.0], [-2.0, 0.0]])
    hi, lo = clone.score_row(probe[0], names), clone.score_row(probe[1], names)
    assert hi["accepts_call_1h"] > 0.5 > lo["accepts_call_1h"]


def test_alerts_carry_every_definition_score() -> None:
    validator = jsonschema.Draft202012Validator(
        json.loads(resources.files("intentflow").joinpath("schemas/alert.schema.json").read_text())
    )
    cfg = demo_config()
    extra = {"name": "buys_soon", "horizon_ms": 20_000, "min_gap_ms": 5_000}
    cfg = replace(cfg, labels={**cfg.labels, "extra": [extra]})
    out = run_memory(cfg, items_of(gen_payloads(8000, seed=4)))
    found = alerts(out)
    assert found
    for a in found:
        validator.validate(a)
        assert set(a["scores"]) == {"converts", "buys_soon"}
        assert a["scores"]["converts"] == a["score"]
        assert 0.0 <= a["scores"]["buys_soon"] <= 1.0
    assert any(a["scores"]["buys_soon"] > 0.0 for a in found), "the extra model learned"
    plain = run_memory(demo_config(), items_of(gen_payloads(3000, seed=4)))
    assert all("scores" not in a for a in alerts(plain))

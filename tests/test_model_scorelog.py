"""The score log: every scored event, its score and model version, to a list, JSONL or Redis."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
import redis
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from flowkit import alerts, demo_config, gen_payloads, items_of, scores

from intentflow.dataflows.flow import build_flow, engine_parts
from intentflow.errors import ConfigError
from intentflow.online_models.scorelog import (
    JsonlScoreLog,
    RedisScoreLog,
    ScoreLogBatch,
    make_score_log,
)
from intentflow.sinks.base import Output


def flow_with_log(payloads: list[bytes], log: object, out: list[Output]) -> Dataflow:
    return build_flow(
        demo_config(),
        TestingSource(items_of(payloads), batch_size=300),
        TestingSink(out),
        score_log=log,  # type: ignore[arg-type]
    )


def test_every_scored_event_is_logged_once_with_its_score() -> None:
    payloads = gen_payloads(4000, seed=12)
    out: list[Output] = []
    logged: list[ScoreLogBatch] = []
    run_main(flow_with_log(payloads, TestingSink(logged), out))
    entries = [
        (eid, ent, ts, s, batch.model)
        for batch in logged
        for eid, ent, ts, s in zip(
            batch.event_ids, batch.entity_ids, batch.ts_ms, batch.scores, strict=True
        )
    ]
    events = [orjson.loads(p) for p in payloads]
    scored = {e["event_id"] for e in events if e["type"] != "outcome"}
    assert sorted(e[0] for e in entries) == sorted(scored)
    assert all(0.0 <= e[3] <= 1.0 for e in entries)
    assert any(e[3] > 0.0 for e in entries)
    assert all(e[4].startswith("logreg-") for e in entries)
    # The sink's latest score per entity is the score log's last score of that entity.
    last: dict[str, tuple[int, float]] = {}
    for _, ent, ts, s, _ in entries:
        if ent not in last or ts >= last[ent][0]:
            last[ent] = (ts, s)
    for so in scores(out):
        if so.ts_ms == last[so.entity_id][0]:
            assert round(so.score, 6) == pytest.approx(last[so.entity_id][1], abs=1e-6)
    # Without a score log, the engine emits no score-log records at all.
    plain: list[Output] = []
    run_main(build_flow(demo_config(), TestingSource(items_of(payloads), 300), TestingSink(plain)))
    assert not any(isinstance(o, ScoreLogBatch) for o in plain)


def test_jsonl_score_log(tmp_path: Path) -> None:
    path = tmp_path / "scores.jsonl"
    payloads = gen_payloads(1500, seed=13)
    run_main(flow_with_log(payloads, JsonlScoreLog(path), []), epoch_interval=timedelta(seconds=5))
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert len(lines) == sum(1 for p in payloads if orjson.loads(p)["type"] != "outcome")
    assert set(lines[0]) == {"event_id", "entity_id", "ts", "score", "model"}
    with pytest.raises(ConfigError, match="does not exist"):
        JsonlScoreLog(tmp_path / "missing" / "scores.jsonl")


def test_redis_stream_score_log(redis_url: str, redis_client: redis.Redis) -> None:
    sink = make_score_log("redis:test:scores", redis_url)
    assert isinstance(sink, RedisScoreLog)
    payloads = gen_payloads(800, seed=14)
    run_main(flow_with_log(payloads, sink, []))
    entries = [orjson.loads(e[b"score"]) for _, e in redis_client.xrange("test:scores")]
    expected = {
        orjson.loads(p)["event_id"] for p in payloads if orjson.loads(p)["type"] != "outcome"
    }
    assert len(entries) == len(expected)
    assert {e["event_id"] for e in entries} == expected
    with pytest.raises(ConfigError, match="stream name"):
        make_score_log("redis:", redis_url)


def test_only_the_configured_types_are_scored() -> None:
    cfg = demo_config()
    cfg = replace(cfg, model={**cfg.model, "score_types": ["page_view", "form_submit"]})
    payloads = gen_payloads(5000, seed=15)
    out: list[Output] = []
    logged: list[ScoreLogBatch] = []
    flow = build_flow(
        cfg, TestingSource(items_of(payloads), 250), TestingSink(out), score_log=TestingSink(logged)
    )
    run_main(flow)
    types = {orjson.loads(p)["event_id"]: orjson.loads(p)["type"] for p in payloads}
    logged_types = {types[e] for batch in logged for e in batch.event_ids}
    assert logged_types == {"page_view", "form_submit"}
    assert sum(len(b.event_ids) for b in logged) == sum(
        1 for t in types.values() if t in {"page_view", "form_submit"}
    )
    found = alerts(out)
    assert found
    assert {a["trace"]["event_type"] for a in found} <= {"page_view", "form_submit"}
    with pytest.raises(ConfigError, match=r"model\.score_types"):
        engine_parts(replace(cfg, model={"score_types": ["outcome"]}))

"""The engine learns from delayed labels: a pattern that predicts a purchase H later.

Half of the contacts request a demo and buy H/2 later; the others sign up for
the newsletter and never buy. Through the whole dataflow (parse → shard →
features → labels → learning at ticks → scoring), the model learns that a
demo request predicts a purchase, from labels that only exist H/2 after the
decision. The same run without label learning does not learn it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from bytewax.testing import TestingSink, TestingSource, run_main
from flowkit import alerts, items_of

from intentflow.config import load_config
from intentflow.dataflows.flow import build_flow
from intentflow.online_models.champion import rank_auc
from intentflow.online_models.scorelog import ScoreLogBatch
from intentflow.sinks.base import Output

ROOT = Path(__file__).resolve().parents[1]
H = 60_000
T0 = 1_767_225_600_000
N = 700


def journeys() -> tuple[list[bytes], dict[str, bool]]:
    """Events in time order, and which form submissions are demo requests."""
    rng = np.random.default_rng(5)
    rows: list[dict[str, Any]] = []
    pattern: dict[str, bool] = {}
    for i in range(N):
        entity, start = f"c-{i:04d}", T0 + i * 2_000
        buys = bool(rng.random() < 0.5)
        form = "demo_request" if buys else "newsletter"
        for k in range(3):
            rows.append(
                {
                    "entity_id": entity,
                    "ts": start + k * 6_000,
                    "type": "page_view",
                    "props": {"page": "/product", "category": "product", "duration_s": 30},
                }
            )
        form_id = f"form-{i}"
        rows.append(
            {
                "event_id": form_id,
                "entity_id": entity,
                "ts": start + 18_000,
                "type": "form_submit",
                "props": {"form": form},
            }
        )
        pattern[form_id] = buys
        if buys:
            rows.append(
                {
                    "entity_id": entity,
                    "ts": start + 18_000 + H // 2,
                    "type": "purchase",
                    "props": {"item_id": "plan-team", "amount": 6000.0},
                }
            )
    rows.sort(key=lambda r: r["ts"])
    payloads = []
    for j, row in enumerate(rows):
        row.setdefault("event_id", f"ev-{j}")
        row["account_id"] = f"a-{row['entity_id']}"
        payloads.append(orjson.dumps(row))
    return payloads, pattern


def run(learn: bool) -> tuple[list[Output], dict[str, float], list[str]]:
    base = load_config(None, env={})
    cfg = replace(
        base,
        engine=replace(base.engine, shards=1),
        labels={"horizon_ms": H, "min_gap_ms": 5_000},
        model={"learn": learn, "warmup_labels": 50, "lr": 0.05, "threshold": 0.7},
    )
    payloads, _ = journeys()
    out: list[Output] = []
    logged: list[ScoreLogBatch] = []
    flow = build_flow(
        cfg,
        TestingSource(items_of(payloads), batch_size=97),
        TestingSink(out),
        score_log=TestingSink(logged),
    )
    run_main(flow, epoch_interval=timedelta(seconds=10))
    scores: dict[str, float] = {}
    versions: list[str] = []
    for batch in logged:
        scores.update(zip(batch.event_ids, batch.scores, strict=True))
        versions.append(batch.model)
    return out, scores, versions


def late_form_auc(scores: dict[str, float], pattern: dict[str, bool]) -> float:
    """AUC of the decision-time scores of the last third of the form submissions."""
    forms = sorted(pattern, key=lambda f: int(f.split("-")[1]))[2 * N // 3 :]
    y = np.array([pattern[f] for f in forms])
    p = np.array([scores[f] for f in forms])
    return rank_auc(y, p)


def test_a_pattern_seen_h_before_the_purchase_is_learned() -> None:
    _, pattern = journeys()
    out, scores, versions = run(learn=True)
    assert late_form_auc(scores, pattern) > 0.95
    learned = [v for v in versions if not v.endswith("-n0")]
    assert learned, "the model must have learned at a tick"
    # Late demo requests score far above late newsletter sign-ups, and alert.
    late = [f for f in pattern if int(f.split("-")[1]) > 2 * N // 3]
    demo = np.mean([scores[f] for f in late if pattern[f]])
    news = np.mean([scores[f] for f in late if not pattern[f]])
    assert demo > 0.7 > 0.3 > news
    triggered = {a["trace"]["event_ids"][0] for a in alerts(out)}
    assert any(pattern.get(e, False) for e in triggered)
    assert not any(e in pattern and not pattern[e] for e in triggered)


def test_without_learning_the_pattern_is_not_learned() -> None:
    _, pattern = journeys()
    out, scores, versions = run(learn=False)
    assert set(versions) == {versions[0]}
    assert versions[0].endswith("-n0")
    assert all(s == 0.0 for s in scores.values())
    assert np.isnan(late_form_auc(scores, pattern)) or late_form_auc(scores, pattern) == 0.5
    assert alerts(out) == []


def test_the_learning_benchmark_writes_its_figures(tmp_path: Path) -> None:
    """``python -m bench learning`` on a tiny stream: every documented key, sane values."""
    out = tmp_path / "learning.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "learning", "--quick", "--events", "12000",
         "--entities", "400", "--json", str(out)],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    for key in ("model_auc", "rule_auc", "no_learning_auc", "frozen_auc"):
        assert 0.0 <= doc[key] <= 1.0, key
    assert doc["no_learning_auc"] == 0.5
    assert doc["events"] == 12000
    assert 0 < doc["labels"] <= doc["events"]
    assert doc["scenario"] == "learning"

"""The start-up warm-up compiles every kernel the engine calls, with the engine's own types.

Checked in a fresh interpreter (nothing compiled before): after
:func:`~intentflow.warmup.compile_kernels`, every kernel has a compiled
signature, and a shard that then learns, scores and alerts over the
synthetic stream compiles nothing more.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from numba import config as numba_config

SCRIPT = r"""
import json, time
from intentflow.config import load_config
from intentflow.dataflows.flow import engine_parts, make_parser
from intentflow.dataflows.logic import ShardLogic
from intentflow.dataflows.sources import RawItem
from intentflow.events import Event
from intentflow.features import keys, kernels
from intentflow.generator import BuyerJourneyGenerator, GeneratorConfig
from intentflow.online_models import linear
from intentflow.sinks.base import AlertOut
from intentflow.warmup import compile_kernels

KERNELS = {
    "update_table": kernels.update_table,
    "probe": keys.probe,
    "put": keys.put,
    "put_absent": keys.put_absent,
    "drop": keys.drop,
    "sgd_logreg_learn": linear.sgd_logreg_learn,
    "logreg_scores": linear.logreg_scores,
    "logreg_contributions": linear.logreg_contributions,
    "top_abs": linear.top_abs,
}
config = load_config("DEMO", env={})
parts = engine_parts(config)
compile_kernels(parts.spec, parts.model)
warm = {k: len(d.signatures) for k, d in KERNELS.items()}
parse = make_parser(config.limits)
gen = BuyerJourneyGenerator(GeneratorConfig(seed=7, entities=500, events_per_second=200))
shard = ShardLogic(parts, None)
alerts = 0
for _ in range(20):
    items = [RawItem("t", str(i), p, 0.0, None) for i, p in enumerate(gen.next_payloads(1000))]
    events = [e for e in parse(items) if isinstance(e, Event)]
    out, _ = shard.on_batch(events)
    alerts += sum(isinstance(o, AlertOut) for o in out)
shard.features.evict_idle(10**15)
after = {k: len(d.signatures) for k, d in KERNELS.items()}
labels = shard.counters.get("labels", 0)
print(json.dumps({"warm": warm, "after": after, "alerts": alerts, "labels": labels}))
"""


@pytest.mark.skipif(numba_config.DISABLE_JIT, reason="kernels are plain Python without the JIT")
def test_the_warm_up_compiles_every_kernel_with_the_engines_types() -> None:
    from bench.common import DEMO_CONFIG

    script = SCRIPT.replace('"DEMO"', repr(DEMO_CONFIG))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["alerts"] > 0  # the shard did score and alert
    assert got["labels"] > 0  # and learn
    assert all(n >= 1 for n in got["warm"].values()), got["warm"]
    assert got["after"] == got["warm"]  # nothing compiled after the warm-up

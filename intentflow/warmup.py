"""Compile every kernel of the engine at start-up, before any input is read.

Numba compiles a kernel at its first call (or loads it from its on-disk
cache). Without this, the feature kernels compiled with the first batch,
the learning kernel at the first learning tick, the scoring kernel when the
model became ready and the reason-code kernel with the first alert: each
one stalled the stream for up to seconds, in the middle of a run. The
production dataflow (:func:`intentflow.runtime.make_flow`, for ``intentflow
run`` and ``bytewax.run``) calls :func:`compile_kernels` while it is built,
with the argument types the engine's own calls use, so none compiles later.

>>> from intentflow.features.spec import FeatureSpec
>>> from intentflow.online_models.model import ModelConfig
>>> compile_kernels(FeatureSpec.default(), ModelConfig()) >= 0.0
True
"""

from __future__ import annotations

import time

import numpy as np

from intentflow.dataflows.dedup import SeenIds
from intentflow.events import Event
from intentflow.features.spec import FeatureSpec
from intentflow.features.state import FeatureState
from intentflow.online_models.linear import LinearState, top_abs
from intentflow.online_models.model import ModelConfig

__all__ = ["compile_kernels"]


def compile_kernels(spec: FeatureSpec, model: ModelConfig) -> float:
    """Run each compiled kernel once on throw-away state; returns the seconds it took."""
    t0 = time.perf_counter()
    # feature tables (entity and account kernels) and their key tables; eviction
    # of the only entity drops its key (the key table's remove kernel)
    state = FeatureState(spec, initial_capacity=4)
    event = Event("warm-0", 1, "warm-entity", "page_view", "warm-account")
    state.update([event])
    state.evict_idle(1 + spec.entity_ttl_ms + 1)
    # the de-duplication window: admit (insert-absent), lookups and trimming
    seen = SeenIds(max_ids=1)
    seen.admit(["warm-0", "warm-1"], [1, 2])  # the second forgets the first (the cap)
    seen.trim(3, 0)
    # the logreg model: learn, score, explain, reason-code order
    n = len(spec.names)
    linear = LinearState(n)
    rows = np.zeros((2, n))
    linear.learn(
        rows, np.array([True, False]), lr=model.lr, l2=model.l2, min_spread=model.min_spread
    )
    linear.scores(rows, model.min_spread)
    contributions = linear.contributions(rows[0], model.min_spread)
    top_abs(contributions, np.empty(min(3, n), dtype=np.int64))
    return time.perf_counter() - t0

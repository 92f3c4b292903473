"""Champion, shadow challenger, promotion and drift detection (ModelSet)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intentflow.errors import SnapshotMismatchError
from intentflow.online_models.champion import ModelSet, rank_auc
from intentflow.online_models.model import IntentModel, ModelConfig

NAMES = ("a", "b")


def stream(n: int, seed: int, *, flip: bool = False, xor: bool = False) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    noisy = X[:, 0] + 0.3 * rng.normal(size=n) > 0
    y = (X[:, 0] > 0) ^ (X[:, 1] > 0) if xor else noisy
    if flip:
        y = ~y
    return X, y


def feed(models: ModelSet, X: np.ndarray, y: np.ndarray, batch: int = 20) -> None:
    for i in range(0, X.shape[0], batch):
        models.learn_batch(X[i : i + batch], y[i : i + batch], NAMES)


def cfg(**kw: object) -> ModelConfig:
    return ModelConfig.from_dict({"warmup_labels": 20, **kw})


def brute_auc(y: np.ndarray, p: np.ndarray) -> float:
    pos, neg = p[y], p[~y]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0])), min_size=2))
def test_rank_auc_is_the_pair_count(pairs: list[tuple[bool, float]]) -> None:
    y = np.array([t for t, _ in pairs])
    p = np.array([s for _, s in pairs])
    if y.all() or not y.any():
        assert np.isnan(rank_auc(y, p))
    else:
        assert rank_auc(y, p) == pytest.approx(brute_auc(y, p), abs=1e-12)


def test_a_stationary_stream_does_not_drift() -> None:
    models = ModelSet(cfg())
    X, y = stream(4000, 1)
    feed(models, X, y)
    assert models.counts["drifts"] == 0
    assert models.version.startswith("logreg-")


def test_a_flipped_concept_is_a_drift_that_names_the_model() -> None:
    models = ModelSet(cfg())
    X, y = stream(3000, 2)
    feed(models, X, y)
    before = models.version
    X2, y2 = stream(1000, 3, flip=True)
    feed(models, X2, y2)
    assert models.counts["drifts"] >= 1
    first = next(h for h in models.history if h["event"] == "drift")
    assert first["action"] == "log"
    # The record names the champion that was serving when the loss rose.
    n_then = int(first["model"].rsplit("-n", 1)[1])
    assert int(before.rsplit("-n", 1)[1]) <= n_then <= 4000
    assert models.metrics()["drifts"] == models.counts["drifts"]


def test_reset_on_drift_starts_a_fresh_generation() -> None:
    models = ModelSet(cfg(on_drift="reset"))
    X, y = stream(3000, 4)
    feed(models, X, y)
    X2, y2 = stream(2000, 5, flip=True)
    feed(models, X2, y2)
    assert models.counts["resets"] >= 1
    gen = models.champion.generation
    assert gen >= 1
    assert f"-g{gen}-" in models.version
    # The fresh champion learns the new concept.
    probe, truth = stream(500, 6, flip=True)
    assert brute_auc(truth, models.score_batch(probe, NAMES)) > 0.9


def test_challenger_on_drift_is_promoted_when_it_wins() -> None:
    models = ModelSet(cfg(on_drift="challenger", lr=0.005, promote_min_labels=200))
    X, y = stream(3000, 7)
    feed(models, X, y)
    assert models.challenger is None
    old = models.version
    X2, y2 = stream(3000, 8, flip=True)
    feed(models, X2, y2)
    assert models.counts["challengers"] >= 1
    assert models.counts["promotions"] >= 1
    promo = next(h for h in models.history if h["event"] == "promotion")
    assert promo["metric"] == "log_loss"
    assert promo["challenger"] + 0.01 <= promo["champion"]
    assert models.champion.generation >= 1
    assert models.version != old


def test_a_configured_challenger_runs_in_shadow_and_wins_a_nonlinear_pattern() -> None:
    models = ModelSet(cfg(challenger="hoeffding", promote_metric="auc", promote_min_labels=300))
    assert models.challenger_version is not None
    assert models.challenger_version.startswith("hoeffding-")
    assert "-g1-" in models.challenger_version
    X, y = stream(4000, 9, xor=True)
    feed(models, X, y, batch=50)
    assert models.counts["promotions"] == 1
    assert models.name == "hoeffding"
    assert models.version.startswith("hoeffding-")
    assert models.challenger is None  # until the next drift


def test_no_promotion_without_the_margin() -> None:
    models = ModelSet(cfg(challenger="logreg", promote_min_labels=100, promote_margin=0.5))
    X, y = stream(2000, 10)
    feed(models, X, y)
    assert models.counts["promotions"] == 0
    cmp = models.comparison()
    assert cmp["shared"] == 1000
    assert 0.0 < cmp["challenger_log_loss"] < 1.0


def test_scoring_never_changes_the_set() -> None:
    models = ModelSet(cfg(challenger="hoeffding"))
    X, y = stream(600, 11)
    feed(models, X, y)
    before = pickle.dumps(models)
    models.score_batch(X, NAMES)
    models.explain(X[0], NAMES, NAMES)
    assert pickle.dumps(models) == before


def test_warm_start_copies_and_retunes_the_initial_model() -> None:
    donor = IntentModel(cfg(), spec_hash="ab" * 16)
    X, y = stream(500, 12)
    donor.learn_batch(X, y, NAMES)
    models = ModelSet(cfg(learn=False), spec_hash="ab" * 16, initial=donor)
    assert models.version == donor.version
    assert models.ready
    assert np.array_equal(models.score_batch(X, NAMES), donor.score_batch(X, NAMES))
    models.learn_batch(X, y, NAMES)  # frozen by the configuration: validates only
    assert models.n_learned == donor.n_learned == 500
    assert models.champion is not donor
    with pytest.raises(SnapshotMismatchError, match="feature spec"):
        ModelSet(cfg(), spec_hash="cd" * 16, initial=donor)
    with pytest.raises(SnapshotMismatchError, match="'logreg' model"):
        ModelSet(cfg(kind="arf"), spec_hash="ab" * 16, initial=donor)

"""Contract tests over every model configuration.

For each configuration: learn → pickle → unpickle gives identical predictions
and identical further learning; every score is finite and in [0, 1] whatever
the input; no NaN or inf ever reaches the River estimator.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from intentflow.errors import ConfigError
from intentflow.online_models.champion import ModelSet
from intentflow.online_models.model import MAX_ABS, IntentModel, ModelConfig

NAMES = ("a", "b", "c")

CONFIGS: dict[str, dict[str, Any]] = {
    "logreg": {},
    "logreg_platt": {"calibration": "platt"},
    "logreg_sampled": {"learn_fraction": 0.5},
    "hoeffding": {"kind": "hoeffding"},
    "hoeffding_platt": {"kind": "hoeffding", "calibration": "platt"},
    "arf": {"kind": "arf"},
    "arf_sampled": {"kind": "arf", "learn_fraction": 0.25},
    "logreg_with_challenger": {"challenger": "hoeffding", "promote_min_labels": 50},
}


def data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * np.array([1.0, 10.0, 1000.0])
    y = X[:, 0] + 0.1 * X[:, 1] + rng.normal(scale=0.5, size=n) > 0.5
    return X, y


def build(name: str) -> ModelSet:
    cfg = ModelConfig.from_dict({"warmup_labels": 20, **CONFIGS[name]})
    return ModelSet(cfg)


def trained(name: str, n: int = 300) -> ModelSet:
    models = build(name)
    X, y = data(n, 1)
    for i in range(0, n, 50):
        models.learn_batch(X[i : i + 50], y[i : i + 50], NAMES)
    return models


def spy_on_river(model: IntentModel) -> list[dict[str, float]]:
    """Record every feature dict the River estimator receives (learning and scoring)."""
    seen: list[dict[str, float]] = []
    est = model.estimator
    learn, predict = est.learn_one, est.predict_proba_one

    def learn_one(x: dict[str, float], y: bool) -> Any:
        seen.append(dict(x))
        return learn(x, y)

    def predict_proba_one(x: dict[str, float]) -> Any:
        seen.append(dict(x))
        return predict(x)

    est.learn_one = learn_one
    est.predict_proba_one = predict_proba_one
    return seen


@pytest.mark.parametrize("name", CONFIGS)
def test_pickle_round_trip_predicts_and_learns_identically(name: str) -> None:
    models = trained(name)
    clone = pickle.loads(pickle.dumps(models))
    X, y = data(200, 2)
    assert np.array_equal(clone.score_batch(X, NAMES), models.score_batch(X, NAMES))
    models.learn_batch(X[:100], y[:100], NAMES)
    clone.learn_batch(X[:100], y[:100], NAMES)
    assert np.array_equal(clone.score_batch(X[100:], NAMES), models.score_batch(X[100:], NAMES))
    assert clone.version == models.version
    assert clone.challenger_version == models.challenger_version
    assert clone.metrics() == pytest.approx(models.metrics(), nan_ok=True)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_learns_the_pattern(name: str) -> None:
    models = trained(name, n=600)
    assert models.ready
    X, y = data(400, 3)
    p = models.score_batch(X, NAMES)
    pos, neg = p[y], p[~y]
    assert (pos[:, None] > neg[None, :]).mean() > 0.75


finite_or_not = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1e300, -1e300, math.nan, math.inf, -math.inf]),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(sorted(CONFIGS)),
    X=hnp.arrays(np.float64, st.tuples(st.integers(1, 30), st.just(3)), elements=finite_or_not),
    y=st.lists(st.booleans(), min_size=30, max_size=30),
)
def test_scores_are_finite_and_nothing_non_finite_reaches_river(
    name: str, X: np.ndarray, y: list[bool]
) -> None:
    models = trained(name, n=100)
    spies = [spy_on_river(models.champion)]
    if models.challenger is not None:
        spies.append(spy_on_river(models.challenger))
    labels = np.array(y[: X.shape[0]])
    for _ in range(2):
        scores = models.score_batch(X, NAMES)
        assert scores.shape == (X.shape[0],)
        assert np.all(np.isfinite(scores))
        assert np.all((scores >= 0.0) & (scores <= 1.0))
        models.learn_batch(X, labels, NAMES)
    explained = models.explain(X[0], NAMES, NAMES, top_k=3)
    assert all(math.isfinite(r["contribution"]) for r in explained)
    for seen in spies:
        for x in seen:
            assert all(math.isfinite(v) and abs(v) <= MAX_ABS for v in x.values()), x
    # Rows with a non-finite value were refused, finite ones learned.
    bad = int((~np.isfinite(X).all(axis=1)).sum())
    assert models.champion.n_refused >= 2 * bad


def test_platt_calibration_improves_a_miscalibrated_tree() -> None:
    """A Hoeffding tree's leaf frequencies are overconfident early; Platt tempers them."""
    X, y = data(3000, 4)
    raw = IntentModel(ModelConfig(kind="hoeffding", warmup_labels=0, metrics_window=2000))
    cal = IntentModel(
        ModelConfig(kind="hoeffding", warmup_labels=0, metrics_window=2000, calibration="platt")
    )
    for i in range(0, 3000, 25):
        raw.learn_batch(X[i : i + 25], y[i : i + 25], NAMES)
        cal.learn_batch(X[i : i + 25], y[i : i + 25], NAMES)
    assert cal.calibration is not None
    assert cal.metrics()["log_loss"] < raw.metrics()["log_loss"]
    # The calibration is monotone (a >= 0): it never reverses the tree's ranking.
    probe, _ = data(200, 7)
    tree_p = np.array(
        [
            cal.estimator.predict_proba_one(dict(zip(NAMES, r, strict=True))).get(True, 0.0)
            for r in probe.tolist()
        ]
    )
    served = cal.score_batch(probe, NAMES)
    order = np.argsort(tree_p, kind="stable")
    assert np.all(np.diff(served[order]) >= -1e-12)


def test_learn_fraction_learns_exactly_that_share_whatever_the_batching() -> None:
    X, y = data(1000, 5)
    one = IntentModel(ModelConfig(learn_fraction=0.3, warmup_labels=0))
    many = IntentModel(ModelConfig(learn_fraction=0.3, warmup_labels=0))
    one.learn_batch(X, y, NAMES)
    for i in range(0, 1000, 7):
        many.learn_batch(X[i : i + 7], y[i : i + 7], NAMES)
    assert one.n_learned == many.n_learned == 300
    assert np.array_equal(one.score_batch(X, NAMES), many.score_batch(X, NAMES))


def test_frozen_model_validates_but_does_not_learn() -> None:
    X, y = data(400, 6)
    model = IntentModel(ModelConfig(warmup_labels=0))
    model.learn_batch(X[:200], y[:200], NAMES)
    before = model.score_batch(X, NAMES)
    model.retune(ModelConfig(warmup_labels=0, learn=False))
    done = model.learn_scored(X[200:], y[200:], NAMES)
    assert done.n_learned == 0
    assert done.scores is not None
    assert np.array_equal(done.scores, before[200:])
    assert np.array_equal(model.score_batch(X, NAMES), before)
    assert model.metrics()["validated"] == 200
    with pytest.raises(ValueError, match="cannot retune"):
        model.retune(ModelConfig(kind="arf"))


@pytest.mark.parametrize(
    ("data_", "key"),
    [
        ({"calibration": "isotonic"}, "model.calibration"),
        ({"learn_fraction": 0.0}, "model.learn_fraction"),
        ({"drift": "ddm"}, "model.drift"),
        ({"on_drift": "panic"}, "model.on_drift"),
        ({"challenger": "svm"}, "model.challenger"),
        ({"promote_metric": "f1"}, "model.promote_metric"),
        ({"promote_margin": -0.1}, "model.promote_margin"),
        ({"learn": "yes"}, "model.learn"),
        ({"learn": False, "on_drift": "reset"}, "model.learn"),
        ({"challenger": "arf", "promote_min_labels": 2000}, "model.promote_min_labels"),
        ({"score_types": ["outcome"]}, "model.score_types"),
    ],
)
def test_new_model_keys_are_checked(data_: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        ModelConfig.from_dict(data_)

"""The online intent model: scoring, progressive validation, pickling, reasons."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from intentflow.errors import ConfigError, SnapshotMismatchError
from intentflow.online_models.model import COLD_SCORE, KINDS, IntentModel, ModelConfig

NAMES = ("a", "b", "c", "d")
DESCRIPTIONS = ("feature a", "feature b", "feature c", "feature d")


def rank_auc(y: np.ndarray, p: np.ndarray) -> float:
    """AUC by counting ordered pairs (ties count one half): the definition."""
    pos = p[y]
    neg = p[~y]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """y = a - b > 0 with a margin of 0.5: clearly separable; c is noise, d constant."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n * 2, 4))
    X[:, 3] = 7.0
    margin = X[:, 0] - X[:, 1]
    keep = np.abs(margin) > 0.5
    X, margin = X[keep][:n], margin[keep][:n]
    return X, margin > 0


def trained(kind: str, n: int = 600, seed: int = 1, **kw: int) -> IntentModel:
    model = IntentModel(ModelConfig(kind=kind, **kw))
    X, y = separable(n, seed)
    for i in range(0, n, 100):
        model.learn_batch(X[i : i + 100], y[i : i + 100], NAMES)
    return model


@pytest.fixture(scope="module")
def logreg() -> IntentModel:
    return trained("logreg", n=1000)


# --- config ---------------------------------------------------------------------------------


def test_config_defaults_and_from_dict() -> None:
    cfg = ModelConfig.from_dict({"kind": "arf", "lr": 0.1, "threshold": 0.8, "seed": 7})
    assert (cfg.kind, cfg.lr, cfg.threshold, cfg.seed) == ("arf", 0.1, 0.8, 7)
    assert ModelConfig.from_dict({}) == ModelConfig()
    assert ModelConfig().kind == "logreg"
    assert ModelConfig().lr == 0.005


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"kind": "svm"}, "model.kind"),
        ({"lr": "fast"}, "model.lr"),
        ({"lr": 0}, "model.lr"),
        ({"threshold": 0.0}, "model.threshold"),
        ({"threshold": 1.5}, "model.threshold"),
        ({"seed": 1.5}, "model.seed"),
        ({"reason_top_k": -1}, "model.reason_top_k"),
        ({"metrics_window": 0}, "model.metrics_window"),
        ({"min_spread": -0.1}, "model.min_spread"),
        ({"min_spread": float("nan")}, "model.min_spread"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_config_errors_name_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        ModelConfig.from_dict(data)


def test_config_error_uses_given_location() -> None:
    with pytest.raises(ConfigError, match=r"^engine\.model\.l2: "):
        ModelConfig.from_dict({"l2": -1.0}, where="engine.model")


# --- near-constant features (model.min_spread) ----------------------------------------------


def _near_constant_model(min_spread: float) -> tuple[IntentModel, np.ndarray]:
    """Learned while ``a`` sat at 288 but for two rows a little off; ``b`` is the signal."""
    rng = np.random.default_rng(11)
    X = np.zeros((400, len(NAMES)))
    X[:, 0] = 288.0
    X[[37, 211], 0] = [288.5, 287.5]  # a few late events: a tiny spread
    X[:, 1] = rng.normal(size=400)
    X[:, 2:] = rng.normal(size=(400, 2))
    y = X[:, 1] + 0.3 * rng.normal(size=400) > 1.0
    y[[37, 211]] = [False, True]  # one label each way: a weight for ``a`` is noise
    model = IntentModel(ModelConfig(lr=0.05, warmup_labels=10, min_spread=min_spread))
    model.learn_batch(X, y, NAMES)
    return model, X


def test_a_near_constant_feature_that_starts_to_move_does_not_swing_the_scores() -> None:
    """Once ``a`` spreads out (288 -> 260), the scores stay those of the signal."""
    model, X = _near_constant_model(0.01)
    probe = X[-50:].copy()
    moved = probe.copy()
    moved[:, 0] = 260.0
    np.testing.assert_array_equal(model.score_batch(moved, NAMES), model.score_batch(probe, NAMES))
    # the same rows explain themselves without ``a``
    assert all(r["feature"] != "a" for r in model.explain(moved[0], NAMES, NAMES, top_k=3))


def test_without_min_spread_the_same_movement_swings_every_score() -> None:
    """River's plain scaler: 28 units on a 0.04 standard deviation is ~700 sigmas."""
    model, X = _near_constant_model(0.0)
    probe = X[-50:].copy()
    moved = probe.copy()
    moved[:, 0] = 260.0
    shift = np.abs(model.score_batch(moved, NAMES) - model.score_batch(probe, NAMES))
    assert np.median(shift) > 0.2


def test_a_model_pickled_before_min_spread_existed_uses_the_default() -> None:
    model = IntentModel(ModelConfig(lr=0.05, warmup_labels=10))
    state = pickle.loads(pickle.dumps(model))
    del state.config.__dict__["min_spread"]  # the attribute older pickles lack
    again = pickle.loads(pickle.dumps(state))
    assert again.config.min_spread == ModelConfig().min_spread == 0.01


# --- scoring before and after learning ------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_cold_model_scores_the_prior_and_is_not_ready(kind: str) -> None:
    model = IntentModel(ModelConfig(kind=kind, warmup_labels=10))
    X, y = separable(30, 2)
    assert not model.ready
    assert np.array_equal(model.score_batch(X, NAMES), np.full(30, COLD_SCORE))
    # Positives only: still cold (no negative seen), whatever the count.
    model.learn_batch(X[y][:12], y[y][:12], NAMES)
    assert not model.ready
    assert np.array_equal(model.score_batch(X, NAMES), np.full(30, COLD_SCORE))
    model.learn_batch(X[~y][:1], y[~y][:1], NAMES)
    assert model.ready


def test_learns_a_separable_pattern_progressively() -> None:
    model = trained("logreg", n=2000, seed=3)
    m = model.metrics()
    assert m["auc"] > 0.9
    assert m["log_loss"] < math.log(2)
    assert m["labels"] == 2000
    assert m["window"] == 1000  # the first batch is learned without being scored
    X, y = separable(500, 99)
    assert rank_auc(y, model.score_batch(X, NAMES)) > 0.97


@pytest.mark.parametrize("kind", ["hoeffding", "arf"])
def test_tree_kinds_learn_something(kind: str) -> None:
    model = trained(kind, n=800)
    X, y = separable(300, 98)
    assert rank_auc(y, model.score_batch(X, NAMES)) > 0.8


def test_progressive_metrics_use_scores_from_before_learning() -> None:
    model = IntentModel(ModelConfig(warmup_labels=0, metrics_window=10_000))
    X1, y1 = separable(200, 4)
    model.learn_batch(X1, y1, NAMES)
    assert model.metrics()["window"] == 0
    rng = np.random.default_rng(5)
    X2 = rng.normal(size=(150, 4))
    y2 = rng.random(150) < 0.4
    p = model.score_batch(X2, NAMES)
    model.learn_batch(X2, y2, NAMES)
    m = model.metrics()
    pc = np.clip(p, 1e-15, 1 - 1e-15)
    expected_log_loss = float(np.mean(np.where(y2, -np.log(pc), -np.log(1 - pc))))
    assert m["window"] == 150
    assert m["brier"] == pytest.approx(float(np.mean((p - y2) ** 2)), abs=1e-12)
    assert m["log_loss"] == pytest.approx(expected_log_loss, abs=1e-9)
    assert m["auc"] == pytest.approx(rank_auc(y2, p), abs=1e-9)
    assert m["positives"] == int(y1.sum() + y2.sum())


def test_metrics_roll_over_the_window() -> None:
    model = IntentModel(ModelConfig(warmup_labels=0, metrics_window=50))
    X, y = separable(400, 6)
    for i in range(0, 400, 40):
        model.learn_batch(X[i : i + 40], y[i : i + 40], NAMES)
    m = model.metrics()
    assert m["window"] == 50
    assert m["labels"] == 400


def test_metrics_are_nan_until_defined() -> None:
    model = IntentModel()
    m = model.metrics()
    assert math.isnan(m["auc"])
    assert math.isnan(m["log_loss"])
    assert math.isnan(m["brier"])
    X, _ = separable(20, 7)
    model.learn_batch(X[:10], np.ones(10, dtype=bool), NAMES)
    model.learn_batch(X[10:], np.ones(10, dtype=bool), NAMES)
    m = model.metrics()
    assert math.isnan(m["auc"])  # one class only
    assert m["window"] == 10
    assert not math.isnan(m["brier"])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 20), st.just(4)),
        elements=st.floats(-1e6, 1e6, allow_nan=False),
    )
)
def test_batch_scores_equal_river_per_row(logreg: IntentModel, X: np.ndarray) -> None:
    river = copy.deepcopy(logreg.estimator)
    expected = np.array(
        [river.predict_proba_one(dict(zip(NAMES, row, strict=True)))[True] for row in X.tolist()]
    )
    got = logreg.score_batch(X, NAMES)
    assert np.all((got >= 0) & (got <= 1))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_constant_feature_is_ignored_like_river(logreg: IntentModel) -> None:
    X, _ = separable(5, 8)
    moved = X.copy()
    moved[:, 3] = -1e3  # d was constant during training: River scales it to 0
    assert np.array_equal(logreg.score_batch(X, NAMES), logreg.score_batch(moved, NAMES))


@pytest.mark.parametrize("kind", KINDS)
def test_scoring_and_explaining_do_not_change_state(kind: str) -> None:
    model = trained(kind, n=300)
    before = pickle.dumps(model)
    X, _ = separable(50, 9)
    first = model.score_batch(X, NAMES)
    model.explain(X[0], NAMES, DESCRIPTIONS)
    assert pickle.dumps(model) == before
    assert np.array_equal(model.score_batch(X, NAMES), first)


# --- pickling -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_pickle_round_trip_scores_and_continues_identically(kind: str) -> None:
    model = trained(kind, n=300)
    clone = pickle.loads(pickle.dumps(model))
    X, y = separable(200, 10)
    assert np.array_equal(clone.score_batch(X, NAMES), model.score_batch(X, NAMES))
    model.learn_batch(X[:100], y[:100], NAMES)
    clone.learn_batch(X[:100], y[:100], NAMES)
    assert np.array_equal(clone.score_batch(X[100:], NAMES), model.score_batch(X[100:], NAMES))
    assert clone.version == model.version
    assert clone.metrics() == pytest.approx(model.metrics(), nan_ok=True)


# --- validation of inputs -------------------------------------------------------------------


def test_non_finite_rows_are_refused_and_counted() -> None:
    X, y = separable(120, 11)
    dirty = X.copy()
    dirty[3, 0] = np.nan
    dirty[50, 2] = np.inf
    dirty[77, 1] = -np.inf
    model = IntentModel(ModelConfig(warmup_labels=0))
    assert model.learn_batch(dirty, y, NAMES) == 117
    assert model.n_refused == 3
    assert model.n_learned == 117
    assert model.metrics()["refused"] == 3
    keep = np.ones(120, dtype=bool)
    keep[[3, 50, 77]] = False
    reference = IntentModel(ModelConfig(warmup_labels=0))
    reference.learn_batch(X[keep], y[keep], NAMES)
    probe, _ = separable(40, 12)
    assert np.array_equal(model.score_batch(probe, NAMES), reference.score_batch(probe, NAMES))
    weights = model.estimator["LogisticRegression"].weights
    assert all(math.isfinite(w) for w in weights.values())


def test_non_finite_rows_score_zero_and_others_are_untouched(logreg: IntentModel) -> None:
    X, _ = separable(6, 13)
    dirty = X.copy()
    dirty[2, 1] = np.nan
    got = logreg.score_batch(dirty, NAMES)
    clean = logreg.score_batch(X, NAMES)
    assert got[2] == 0.0
    assert np.array_equal(np.delete(got, 2), np.delete(clean, 2))


def test_shape_and_name_checks() -> None:
    model = IntentModel(spec_hash="0123456789abcdef")
    X, y = separable(10, 14)
    with pytest.raises(ValueError, match="X: expected shape"):
        model.score_batch(X[:, :3], NAMES)
    model.learn_batch(X, y, NAMES)
    with pytest.raises(ValueError, match="y: expected 10 labels"):
        model.learn_batch(X, y[:5], NAMES)
    with pytest.raises(SnapshotMismatchError, match="built for features"):
        model.score_batch(X, ("a", "b", "c", "e"))
    assert model.feature_names == NAMES


def test_version_tracks_spec_and_learning() -> None:
    model = IntentModel(spec_hash="0123456789abcdef")
    assert model.version == "logreg-01234567-n0"
    X, y = separable(10, 15)
    model.learn_batch(X, y, NAMES)
    assert model.version == "logreg-01234567-n10"
    unnamed = IntentModel(ModelConfig(kind="hoeffding"))
    assert unnamed.version == "hoeffding-unbound-n0"
    unnamed.score_batch(X, NAMES)
    assert unnamed.version.startswith("hoeffding-")
    assert unnamed.version.endswith("-n0")
    assert len(unnamed.feature_spec_hash) == 32


# --- reason codes ---------------------------------------------------------------------------


def test_logreg_contributions_sum_with_bias_to_the_logit(logreg: IntentModel) -> None:
    X, _ = separable(20, 16)
    intercept = logreg.estimator["LogisticRegression"].intercept
    river = copy.deepcopy(logreg.estimator)
    for row in X:
        reasons = logreg.explain(row, NAMES, DESCRIPTIONS, top_k=len(NAMES))
        p = river.predict_proba_one(dict(zip(NAMES, row.tolist(), strict=True)))[True]
        logit = math.log(p / (1 - p))
        assert sum(r["contribution"] for r in reasons) + intercept == pytest.approx(logit, 1e-9)


def test_explain_orders_by_magnitude_and_labels_features(logreg: IntentModel) -> None:
    row = np.array([2.5, 1.5, 0.1, 7.0])  # y = a - b > 0: a pushes up, b down
    reasons = logreg.explain(row, NAMES, DESCRIPTIONS)
    assert len(reasons) == logreg.config.reason_top_k == 3
    mags = [abs(r["contribution"]) for r in reasons]
    assert mags == sorted(mags, reverse=True)
    assert [r["feature"] for r in reasons[:2]] == ["a", "b"]
    assert reasons[0]["label"] == "feature a"
    assert reasons[0]["value"] == 2.5
    assert reasons[0]["contribution"] > 0 > reasons[1]["contribution"]
    assert logreg.explain(row, NAMES, DESCRIPTIONS, top_k=0) == []


@pytest.mark.parametrize("kind", ["hoeffding", "arf"])
def test_tree_contribution_is_the_standardized_deviation(kind: str) -> None:
    model = IntentModel(ModelConfig(kind=kind))
    X, y = separable(300, 17)
    for i in range(0, 300, 70):
        model.learn_batch(X[i : i + 70], y[i : i + 70], NAMES)
    row = np.array([1.0, -1.0, 3.0, 7.0])
    std = X.std(axis=0)
    expected = np.zeros(4)
    expected[:3] = (row[:3] - X.mean(axis=0)[:3]) / std[:3]  # d is constant: 0
    assert std[3] == 0.0
    reasons = model.explain(row, NAMES, DESCRIPTIONS, top_k=4)
    got = {r["feature"]: r["contribution"] for r in reasons}
    for j, name in enumerate(NAMES):
        assert got[name] == pytest.approx(expected[j], rel=1e-9, abs=1e-12)

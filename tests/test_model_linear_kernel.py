"""The compiled ``logreg`` learner against River's own ``learn_one``, row by row.

The reference is River itself: ``StandardScaler() | LogisticRegression(
SGD(lr), l2, intercept_lr=lr)`` learning one dict at a time. The kernel must
reach the same scaler statistics, weights and intercept (to 1e-9) for any
rows, labels, batch split and settings; pickles written when the model
learned through River still load.
"""

from __future__ import annotations

import pickle

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intentflow.online_models.linear import LinearState, top_abs
from intentflow.online_models.model import IntentModel, ModelConfig, build_estimator

COLS = 5
NAMES = tuple(f"f{i}" for i in range(COLS))

rows = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 60), st.just(COLS)),
    elements=st.one_of(
        st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
        st.sampled_from([0.0, 1.0, -1.0]),  # repeated values: zero variances, ties
    ),
)


def river_reference(
    X: np.ndarray, y: np.ndarray, lr: float, l2: float, min_spread: float = 0.0
) -> LinearState:
    pipeline = build_estimator(ModelConfig(lr=lr, l2=l2, min_spread=min_spread))
    for row, label in zip(X.tolist(), y.tolist(), strict=True):
        pipeline.learn_one(dict(zip(NAMES, row, strict=True)), label)
    return LinearState.from_river(pipeline, NAMES)


def assert_same(got: LinearState, want: LinearState) -> None:
    assert got.count == want.count
    for a, b in ((got.mean, want.mean), (got.var, want.var), (got.w, want.w)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    assert got.intercept == pytest.approx(want.intercept, rel=1e-9, abs=1e-9)


@settings(max_examples=120, deadline=None)
@given(
    X=rows,
    data=st.data(),
    lr=st.sampled_from([0.005, 0.05, 0.5]),
    l2=st.sampled_from([0.0, 0.001, 0.1]),
    min_spread=st.sampled_from([0.0, 0.01, 0.5]),
)
def test_kernel_learns_exactly_as_river_learn_one(
    X: np.ndarray, data: st.DataObject, lr: float, l2: float, min_spread: float
) -> None:
    y = np.array(data.draw(st.lists(st.booleans(), min_size=len(X), max_size=len(X))))
    cut = data.draw(st.integers(0, len(X)))  # batch boundaries must not matter
    state = LinearState(COLS)
    state.learn(X[:cut], y[:cut], lr=lr, l2=l2, min_spread=min_spread)
    state.learn(X[cut:], y[cut:], lr=lr, l2=l2, min_spread=min_spread)
    assert_same(state, river_reference(X, y, lr, l2, min_spread))


def test_kernel_handles_saturated_logits_like_river() -> None:
    """Rows far beyond the intercept hit Log.gradient's |z| > 18 branches."""
    X = np.array([[1e6, 0.0, 0.0, 0.0, 1.0]] * 3 + [[-1e6, 5.0, 0.0, 0.0, 1.0]] * 3)
    y = np.array([True, True, False, False, True, False])
    state = LinearState(COLS)
    state.learn(X, y, lr=5.0, l2=0.0)
    assert_same(state, river_reference(X, y, 5.0, 0.0))


def test_state_round_trips_through_river() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, COLS)) * 10
    y = X[:, 0] > 0
    state = LinearState(COLS)
    state.learn(X, y, lr=0.05, l2=0.01)
    pipeline = state.to_river(NAMES, 0.05, 0.01)
    assert_same(LinearState.from_river(pipeline, NAMES), state)
    # The exported pipeline goes on learning as the kernel does.
    more = rng.normal(size=(50, COLS))
    for row, label in zip(more.tolist(), (more[:, 1] > 0).tolist(), strict=True):
        pipeline.learn_one(dict(zip(NAMES, row, strict=True)), label)
    state.learn(more, more[:, 1] > 0, lr=0.05, l2=0.01)
    assert_same(state, LinearState.from_river(pipeline, NAMES))


def test_model_pickled_with_a_river_estimator_still_loads() -> None:
    """A model written when ``logreg`` learned through River resumes with the same state."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, COLS))
    y = X[:, 0] + X[:, 1] > 0
    model = IntentModel(ModelConfig(lr=0.05, warmup_labels=10))
    model.learn_batch(X, y, NAMES)
    old_style = pickle.loads(pickle.dumps(model))
    # Rewrite it as the older layout: the River pipeline held the learned state.
    legacy = old_style.__dict__
    legacy["_estimator"] = model.estimator
    del legacy["_lin"], legacy["_linear"]
    restored = pickle.loads(pickle.dumps(old_style))
    probe = rng.normal(size=(40, COLS))
    np.testing.assert_allclose(
        restored.score_batch(probe, NAMES), model.score_batch(probe, NAMES), atol=1e-12
    )
    restored.learn_batch(X[:50], y[:50], NAMES)
    model.learn_batch(X[:50], y[:50], NAMES)
    np.testing.assert_allclose(
        restored.score_batch(probe, NAMES), model.score_batch(probe, NAMES), atol=1e-12
    )


@settings(max_examples=80, deadline=None)
@given(
    X=hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 30), st.just(COLS)),
        elements=st.one_of(
            st.floats(-1e15, 1e15, allow_nan=False, allow_infinity=False),
            st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1e13]),
        ),
    )
)
def test_scoring_kernel_equals_river_predict_proba_one(X: np.ndarray) -> None:
    """Finite values clipped to +-1e12 score as River scores them; other rows score 0."""
    rng = np.random.default_rng(11)
    train = rng.normal(size=(80, COLS)) * 5
    state = LinearState(COLS)
    state.learn(train, train[:, 0] - train[:, 2] > 0, lr=0.2, l2=0.0)
    pipeline = state.to_river(NAMES, 0.2, 0.0)
    want = []
    for row in X.tolist():
        if not all(np.isfinite(row)):
            want.append(0.0)
            continue
        clipped = [min(max(v, -1e12), 1e12) for v in row]
        want.append(pipeline.predict_proba_one(dict(zip(NAMES, clipped, strict=True)))[True])
    got = state.scores(X)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    # A row scores the same alone as in any batch.
    alone = np.array([state.scores(X[i : i + 1])[0] for i in range(len(X))])
    assert np.array_equal(alone, got)


@settings(max_examples=60, deadline=None)
@given(
    row=hnp.arrays(
        np.float64,
        COLS,
        elements=st.one_of(
            st.floats(-1e15, 1e15, allow_nan=False, allow_infinity=False),
            st.sampled_from([np.nan, np.inf, -np.inf, 0.0]),
        ),
    )
)
def test_contribution_kernel_is_the_standardised_term_of_the_logit(row: np.ndarray) -> None:
    rng = np.random.default_rng(13)
    train = rng.normal(size=(60, COLS)) * 3
    train[:, 4] = 2.0  # zero variance: contributes nothing
    state = LinearState(COLS)
    state.learn(train, train[:, 0] > 0, lr=0.3, l2=0.0)
    got = state.contributions(row)
    finite = np.isfinite(row)
    x = np.clip(np.where(finite, row, 0.0), -1e12, 1e12)
    safe = np.where(state.var > 0, state.var, 1.0)
    want = np.where(finite & (state.var > 0), (x - state.mean) / np.sqrt(safe) * state.w, 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    if finite.all():  # the terms and the intercept make the logit River scores with
        p = state.scores(row.reshape(1, -1))[0]
        z = got.sum() + state.intercept
        if 1e-12 < p < 1 - 1e-12 and abs(z) < 30:
            assert z == pytest.approx(np.log(p / (1 - p)), rel=1e-6, abs=1e-6)


@settings(max_examples=300, deadline=None)
@given(
    values=hnp.arrays(
        np.float64,
        st.integers(0, 30),
        elements=st.one_of(
            st.floats(allow_infinity=True, allow_nan=True),
            st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0]),  # ties of |value|
        ),
    ),
    k=st.integers(0, 35),
)
def test_top_abs_is_the_stable_argsort_of_minus_abs(values: np.ndarray, k: int) -> None:
    """The reason codes' order: the k largest |contribution|, ties by index, NaN last."""
    k = min(k, values.shape[0])
    out = np.empty(k, dtype=np.int64)
    top_abs(values, out)
    want = np.argsort(-np.abs(values), kind="stable")[:k]
    assert out.tolist() == want.tolist()

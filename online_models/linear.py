"""Compiled learning for the ``logreg`` model, equal to River's ``learn_one``.

The default model is River's ``StandardScaler() | LogisticRegression(
optimizer=SGD(lr), l2=l2, intercept_lr=lr)``. Learning it row by row through
River costs ~60 µs per labelled row (dicts per row, per-feature Python
loops). :func:`sgd_logreg_learn` does exactly what that pipeline's
``learn_one`` does, row after row and in the same order, for a whole batch
of rows in one compiled call. :class:`LinearState` owns the arrays; it can
be turned into the equivalent River pipeline (:meth:`LinearState.to_river`)
and built from one (:meth:`LinearState.from_river`), and the tests check
the kernel against River's own ``learn_one`` (to 1e-9).

Per row, in River's order: the scaler learns the row (count, running mean,
running population variance), the row is standardised with the updated
statistics (0 where the variance is 0, and with ``min_spread`` > 0 also
where the standard deviation is below ``min_spread × (|mean| + 1)``: River's
scaler with that rule is :class:`SpreadScaler`), the logistic loss gradient of the
logit (``Log.gradient``, clipped to ``clip``) updates the intercept by
``intercept_lr × g`` and every weight by ``lr × (x_std × g + l2 × w)``.

>>> import numpy as np
>>> state = LinearState(2)
>>> state.learn(np.array([[1.0, 0.0], [3.0, 2.0]]), np.array([False, True]), lr=0.1, l2=0.0)
>>> state.count, state.mean.tolist(), state.var.tolist()
(2, [2.0, 1.0], [1.0, 1.0])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from river import linear_model, optim, preprocessing, utils

from intentflow.features.kernels import inlined, kernel

__all__ = [
    "CLIP_GRADIENT",
    "MAX_ABS",
    "LinearState",
    "SpreadScaler",
    "logreg_contributions",
    "logreg_scores",
    "sgd_logreg_learn",
    "top_abs",
]

#: River's default ``clip_gradient`` of linear models.
CLIP_GRADIENT: Final[float] = 1e12
#: Finite values are clipped to +-MAX_ABS before scoring (as before learning).
MAX_ABS: Final[float] = 1e12

FloatArray = NDArray[np.float64]


class SpreadScaler(preprocessing.StandardScaler):
    """River's ``StandardScaler`` that standardises a feature to 0 while it barely varies.

    Barely: its running standard deviation is below ``min_spread × (|running
    mean| + 1)``. A feature that was (nearly) constant while the scaler
    learned it would otherwise standardise its first real movements to huge
    values, and move every score at once.

    >>> s = SpreadScaler(0.01)
    >>> for x in (100.0, 100.0, 100.001, 100.0):
    ...     s.learn_one({"a": x, "b": x - 100.0})
    >>> s.transform_one({"a": 101.0, "b": 1.0})["a"]
    0.0
    """

    def __init__(self, min_spread: float = 0.01) -> None:
        super().__init__()
        self.min_spread = min_spread

    def transform_one(self, x: dict[Any, Any]) -> dict[Any, Any]:
        means, vars_, k = self.means, self.vars, self.min_spread
        out: dict[Any, Any] = {}
        for i, xi in x.items():
            m = means[i]
            sd = _scale(vars_[i], m, k)
            out[i] = (xi - m) / sd if sd else 0.0
        return out


def _scale(var: float, mean: float, min_spread: float) -> float:
    """The standard deviation a feature is divided by; 0 when it does not count (yet).

    It does not count while its variance is 0 or its standard deviation is
    below ``min_spread × (|mean| + 1)``: River's ``StandardScaler`` with the
    rule of :class:`SpreadScaler` (``min_spread = 0``: the plain scaler).
    """
    if var == 0.0:
        return 0.0
    sd = math.sqrt(var)
    return sd if sd >= min_spread * (abs(mean) + 1.0) else 0.0


_scale_nb = inlined(_scale)


def _sgd_logreg_learn(
    X: FloatArray,
    y: NDArray[np.bool_],
    mean: FloatArray,
    var: FloatArray,
    w: FloatArray,
    scalars: FloatArray,
    lr: float,
    l2: float,
    clip: float,
    min_spread: float,
) -> None:
    """Learn the rows of ``X`` in order; ``scalars`` is ``[count, intercept]`` (in place).

    A feature standardises to 0 while its standard deviation is below
    ``min_spread × (|mean| + 1)`` (0: only while its variance is 0).
    """
    n_rows, n_cols = X.shape
    z = np.empty(n_cols)
    count = scalars[0]
    intercept = scalars[1]
    for r in range(n_rows):
        count += 1.0
        for j in range(n_cols):
            xj = X[r, j]
            old = mean[j]
            mean[j] = old + (xj - old) / count
            var[j] = var[j] + ((xj - old) * (xj - mean[j]) - var[j]) / count
        dot = 0.0
        for j in range(n_cols):
            sd = _scale_nb(var[j], mean[j], min_spread)
            zj = (X[r, j] - mean[j]) / sd if sd != 0.0 else 0.0
            z[j] = zj
            dot += w[j] * zj
        raw = dot + intercept
        sign = 1.0 if y[r] else -1.0
        m = raw * sign
        if m > 18.0:
            g = math.exp(-m) * -sign
        elif m < -18.0:
            g = -sign
        else:
            g = -sign / (math.exp(m) + 1.0)
        g = min(max(g, -clip), clip)
        intercept -= lr * g
        if l2 != 0.0:
            for j in range(n_cols):
                w[j] -= lr * (z[j] * g + w[j] * l2)
        else:
            for j in range(n_cols):
                w[j] -= lr * (z[j] * g)
    scalars[0] = count
    scalars[1] = intercept


sgd_logreg_learn = kernel(_sgd_logreg_learn)


def _logreg_scores(
    X: FloatArray,
    mean: FloatArray,
    var: FloatArray,
    w: FloatArray,
    intercept: float,
    clip_abs: float,
    min_spread: float,
    out: FloatArray,
) -> None:
    """P(True) per row as River's ``predict_proba_one``; 0 for rows with a non-finite value.

    Finite values are clipped to ``+-clip_abs`` first; the logit is
    ``sum(w * z) + intercept`` with ``z = (x - mean) / sqrt(var)`` (0 where var
    is 0 or the standard deviation is below ``min_spread × (|mean| + 1)``),
    and the sigmoid is exactly 0 below -30 and 1 above 30.
    """
    n_rows, n_cols = X.shape
    for r in range(n_rows):
        dot = 0.0
        finite = True
        for j in range(n_cols):
            x = X[r, j]
            if not math.isfinite(x):
                finite = False
                break
            x = min(max(x, -clip_abs), clip_abs)
            sd = _scale_nb(var[j], mean[j], min_spread)
            if sd != 0.0:
                dot += w[j] * ((x - mean[j]) / sd)
        if not finite:
            out[r] = 0.0
            continue
        z = dot + intercept
        if z < -30.0:
            out[r] = 0.0
        elif z > 30.0:
            out[r] = 1.0
        else:
            out[r] = 1.0 / (1.0 + math.exp(-z))


logreg_scores = kernel(_logreg_scores)


def _logreg_contributions(
    row: FloatArray,
    mean: FloatArray,
    var: FloatArray,
    w: FloatArray,
    clip_abs: float,
    min_spread: float,
    out: FloatArray,
) -> None:
    """``w * (x - mean) / sqrt(var)`` per feature of one row; 0 for non-finite values,
    zero variances and standard deviations below ``min_spread × (|mean| + 1)``; finite
    values clipped to ``+-clip_abs`` first."""
    for j in range(row.shape[0]):
        x = row[j]
        sd = _scale_nb(var[j], mean[j], min_spread)
        if not math.isfinite(x) or sd == 0.0:
            out[j] = 0.0
        else:
            x = min(max(x, -clip_abs), clip_abs)
            out[j] = ((x - mean[j]) / sd) * w[j]


logreg_contributions = kernel(_logreg_contributions)


def _top_abs(values: FloatArray, out: NDArray[np.int64]) -> None:
    """``out``: indices of the ``len(out)`` largest ``|values|``, largest first.

    The order of ``np.argsort(-np.abs(values), kind="stable")``: ties keep
    index order and NaN comes last. One pass per index taken (``len(out)``
    is a handful of reason codes).
    """
    n = values.shape[0]
    taken = np.zeros(n, dtype=np.bool_)
    for r in range(out.shape[0]):
        best = -1
        best_abs = 0.0
        for j in range(n):
            if taken[j]:
                continue
            a = abs(values[j])
            if best < 0 or a > best_abs or (math.isnan(best_abs) and not math.isnan(a)):
                best, best_abs = j, a
        taken[best] = True
        out[r] = best


top_abs = kernel(_top_abs)


class LinearState:
    """Scaler statistics, weights and intercept of one ``logreg`` model, as arrays.

    ``count`` rows have been learned; ``mean``/``var`` are the scaler's
    running mean and population variance per feature; ``w`` the weights of
    the standardised features.
    """

    __slots__ = ("_scalars", "mean", "var", "w")

    def __init__(self, n_features: int) -> None:
        self.mean = np.zeros(n_features)
        self.var = np.zeros(n_features)
        self.w = np.zeros(n_features)
        self._scalars = np.zeros(2)  # count, intercept

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.mean, self.var, self.w, self._scalars)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.mean, self.var, self.w, self._scalars = state

    @property
    def count(self) -> int:
        """Rows learned."""
        return int(self._scalars[0])

    @property
    def intercept(self) -> float:
        """The intercept (bias) of the logit."""
        return float(self._scalars[1])

    def learn(
        self,
        X: FloatArray,
        y: NDArray[np.bool_],
        *,
        lr: float,
        l2: float,
        min_spread: float = 0.0,
    ) -> None:
        """Learn the finite rows of ``X`` with labels ``y``, in order (one compiled call)."""
        if X.shape[0] == 0:
            return
        sgd_logreg_learn(
            np.ascontiguousarray(X, dtype=np.float64),
            np.ascontiguousarray(y, dtype=np.bool_),
            self.mean,
            self.var,
            self.w,
            self._scalars,
            float(lr),
            float(l2),
            CLIP_GRADIENT,
            float(min_spread),
        )

    def scores(self, X: FloatArray, min_spread: float = 0.0) -> FloatArray:
        """P(True) per row (one compiled call); rows with a non-finite value score 0.

        Per row the result does not depend on the other rows of the call.
        """
        out = np.empty(X.shape[0])
        if X.shape[0]:
            logreg_scores(
                np.ascontiguousarray(X, dtype=np.float64),
                self.mean,
                self.var,
                self.w,
                float(self._scalars[1]),
                MAX_ABS,
                float(min_spread),
                out,
            )
        return out

    def contributions(self, row: FloatArray, min_spread: float = 0.0) -> FloatArray:
        """Each feature's term of the logit for one row (they sum to logit - intercept)."""
        out = np.empty(row.shape[0])
        logreg_contributions(
            np.ascontiguousarray(row, dtype=np.float64),
            self.mean,
            self.var,
            self.w,
            MAX_ABS,
            float(min_spread),
            out,
        )
        return out

    def to_river(self, names: Sequence[str], lr: float, l2: float, min_spread: float = 0.0) -> Any:
        """The equivalent River pipeline (a new object; learning it leaves this state alone)."""
        count = self.count
        scaler = SpreadScaler(min_spread) if min_spread > 0 else preprocessing.StandardScaler()
        if count:
            for i, name in enumerate(names):
                scaler.counts[name] = count
                scaler.means[name] = float(self.mean[i])
                scaler.vars[name] = float(self.var[i])
        opt = optim.SGD(lr)
        opt.n_iterations = count
        model = linear_model.LogisticRegression(optimizer=opt, l2=l2, intercept_lr=lr)
        if count:
            model._weights = utils.VectorDict(
                {name: float(self.w[i]) for i, name in enumerate(names)}
            )
        model.intercept = self.intercept
        return scaler | model

    @classmethod
    def from_river(cls, pipeline: Any, names: Sequence[str]) -> LinearState:
        """The state of a River ``StandardScaler | LogisticRegression`` pipeline.

        The scaler may be a :class:`SpreadScaler` (its ``min_spread`` is not
        part of the state: the model's configuration holds it).
        """
        scaler = next(iter(pipeline.steps.values()))
        model = pipeline["LogisticRegression"]
        state = cls(len(names))
        weights = model.weights
        state.mean[:] = [scaler.means.get(n, 0.0) for n in names]
        state.var[:] = [scaler.vars.get(n, 0.0) for n in names]
        state.w[:] = [weights.get(n, 0.0) for n in names]
        state._scalars[0] = max((scaler.counts.get(n, 0) for n in names), default=0)
        state._scalars[1] = float(model.intercept)
        return state

"""The online intent model: a River estimator behind a small batch interface.

:class:`IntentModel` wraps (never subclasses) a River pipeline built from a
:class:`ModelConfig`. It scores whole batches, learns from labelled rows in
order, validates progressively (score, then learn) and explains scores as
reason codes. All state lives on the instance and pickles with it.

>>> import numpy as np
>>> model = IntentModel(ModelConfig(warmup_labels=4))
>>> names = ("pricing_views", "emails_opened")
>>> model.score_batch(np.array([[3.0, 1.0]]), names)  # cold: no evidence yet
array([0.])
>>> X = np.array([[5.0, 1.0], [0.0, 2.0], [6.0, 0.0], [1.0, 1.0]])
>>> model.learn_batch(X, np.array([True, False, True, False]), names)
4
>>> model.version
'logreg-...-n4'
>>> bool(model.score_batch(np.array([[6.0, 1.0]]), names)[0] > 0.5)
True
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypedDict

import numpy as np
from numpy.typing import NDArray
from river import forest, linear_model, optim, preprocessing, tree

from intentflow.errors import SnapshotMismatchError
from intentflow.online_models._validate import InvalidFieldError, build_dataclass
from intentflow.online_models.linear import MAX_ABS as LINEAR_MAX_ABS
from intentflow.online_models.linear import LinearState, SpreadScaler, top_abs

__all__ = [
    "CALIBRATIONS",
    "COLD_SCORE",
    "DRIFT_ACTIONS",
    "DRIFT_DETECTORS",
    "KINDS",
    "MAX_ABS",
    "PROMOTE_METRICS",
    "IntentModel",
    "Learned",
    "ModelConfig",
    "Reason",
    "build_estimator",
    "names_hash",
    "rank_auc",
    "window_metric",
]

#: Model kinds :func:`build_estimator` knows.
KINDS: Final[tuple[str, ...]] = ("logreg", "hoeffding", "arf")

#: Score calibrations: none, or online Platt scaling of the estimator's logit.
CALIBRATIONS: Final[tuple[str, ...]] = ("none", "platt")

#: Finite feature values are clipped to +-MAX_ABS before they reach the
#: estimator, so that a running variance never overflows.
MAX_ABS: Final[float] = LINEAR_MAX_ABS

# Platt scaling works on logit(p) with p clipped away from 0 and 1.
_P_EPS: Final[float] = 1e-6
# The log loss clips probabilities to [eps, 1 - eps], as River's LogLoss does.
_LOSS_EPS: Final[float] = 1e-15

#: The score of every row while the model is cold (see :attr:`IntentModel.ready`).
COLD_SCORE: Final[float] = 0.0

#: Drift detectors on the progressive log loss.
DRIFT_DETECTORS: Final[tuple[str, ...]] = ("adwin", "none")
#: What a detected drift does: a log line and a count, a fresh champion, or a challenger.
DRIFT_ACTIONS: Final[tuple[str, ...]] = ("log", "reset", "challenger")
#: Progressive metrics a challenger can be promoted on.
PROMOTE_METRICS: Final[tuple[str, ...]] = ("auc", "log_loss", "brier")

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class ModelConfig:
    """How the intent model is built, when it may alert and how it reports.

    ``kind``: ``logreg`` (``StandardScaler | LogisticRegression(SGD(lr))``),
    ``hoeffding`` (Hoeffding adaptive tree) or ``arf`` (adaptive random forest
    of ``n_models`` trees). ``lr``, ``l2`` and ``min_spread`` apply to
    ``logreg`` only: a feature counts (standardises to a non-zero value) only
    once its running standard deviation reaches ``min_spread × (|mean| + 1)``
    (0: once its variance is not 0, as River's ``StandardScaler``), so that a
    feature that barely varied while the scaler learned it cannot swing every
    score when it starts to move (River: :class:`SpreadScaler`).
    ``threshold`` is the alert threshold on the score, ``reason_top_k`` the
    number of reason codes per alert. The model stays cold (scores
    :data:`COLD_SCORE`) until it has learned ``warmup_labels`` rows including
    a positive and a negative. Metrics roll over the last ``metrics_window``
    labels.

    ``calibration = "platt"`` maps the estimator's score through an online
    Platt scaler fitted on progressive (score-before-learning) pairs.
    ``score_types`` limits the events that are scored, become decision points
    and can alert (empty: every type but ``outcome``).
    ``learn_fraction`` < 1 learns only that share of the labelled rows (every
    row is still validated), a deterministic thinning for the costly tree
    kinds. ``learn = false`` freezes the model (it still validates).

    The remaining keys configure :class:`~intentflow.online_models.champion.ModelSet`:
    drift detection on the progressive loss (``drift``, ``drift_delta``,
    ``on_drift``) and a shadow ``challenger`` promoted when it beats the
    champion on ``promote_metric`` by ``promote_margin`` over
    ``promote_min_labels`` shared labels.
    """

    kind: str = "logreg"
    lr: float = 0.005
    l2: float = 0.0
    min_spread: float = 0.01
    seed: int = 42
    threshold: float = 0.7
    reason_top_k: int = 3
    warmup_labels: int = 50
    metrics_window: int = 1000
    n_models: int = 3
    calibration: str = "none"
    learn_fraction: float = 1.0
    learn: bool = True
    drift: str = "adwin"
    drift_delta: float = 1e-5
    on_drift: str = "log"
    challenger: str = ""
    promote_metric: str = "log_loss"
    promote_margin: float = 0.01
    promote_min_labels: int = 500
    score_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidFieldError("kind", f"{self.kind!r} is not one of {', '.join(KINDS)}")
        if self.calibration not in CALIBRATIONS:
            raise InvalidFieldError(
                "calibration", f"{self.calibration!r} is not one of {', '.join(CALIBRATIONS)}"
            )
        if not (math.isfinite(self.min_spread) and self.min_spread >= 0.0):
            raise InvalidFieldError(
                "min_spread", f"must be a finite number >= 0 (0: off), got {self.min_spread!r}"
            )
        if not 0.0 < self.learn_fraction <= 1.0:
            raise InvalidFieldError(
                "learn_fraction", f"must be in (0, 1], got {self.learn_fraction!r}"
            )
        if self.drift not in DRIFT_DETECTORS:
            raise InvalidFieldError(
                "drift", f"{self.drift!r} is not one of {', '.join(DRIFT_DETECTORS)}"
            )
        if not 0.0 < self.drift_delta < 1.0:
            raise InvalidFieldError("drift_delta", f"must be in (0, 1), got {self.drift_delta!r}")
        if self.on_drift not in DRIFT_ACTIONS:
            raise InvalidFieldError(
                "on_drift", f"{self.on_drift!r} is not one of {', '.join(DRIFT_ACTIONS)}"
            )
        if self.challenger and self.challenger not in KINDS:
            raise InvalidFieldError(
                "challenger",
                f"{self.challenger!r} is not one of {', '.join(KINDS)} (or empty for none)",
            )
        if self.promote_metric not in PROMOTE_METRICS:
            raise InvalidFieldError(
                "promote_metric",
                f"{self.promote_metric!r} is not one of {', '.join(PROMOTE_METRICS)}",
            )
        if self.promote_margin < 0:
            raise InvalidFieldError("promote_margin", f"must be >= 0, got {self.promote_margin!r}")
        if self.promote_min_labels < 1:
            raise InvalidFieldError(
                "promote_min_labels", f"must be >= 1, got {self.promote_min_labels!r}"
            )
        challenged = bool(self.challenger) or self.on_drift == "challenger"
        if challenged and self.promote_min_labels > self.metrics_window:
            raise InvalidFieldError(
                "promote_min_labels",
                f"must be <= metrics_window ({self.metrics_window}), the size of the comparison "
                f"window, got {self.promote_min_labels!r}",
            )
        if not self.learn and (self.on_drift != "log" or self.challenger):
            raise InvalidFieldError(
                "learn",
                "a frozen model (learn = false) cannot be reset or challenged: "
                'use on_drift = "log" and no challenger',
            )
        if "outcome" in self.score_types:
            raise InvalidFieldError("score_types", "outcome events are feedback, never scored")
        if not self.lr > 0:
            raise InvalidFieldError("lr", f"must be > 0, got {self.lr!r}")
        if self.l2 < 0:
            raise InvalidFieldError("l2", f"must be >= 0, got {self.l2!r}")
        if not 0.0 < self.threshold <= 1.0:
            raise InvalidFieldError("threshold", f"must be in (0, 1], got {self.threshold!r}")
        for key in ("reason_top_k", "warmup_labels"):
            if getattr(self, key) < 0:
                raise InvalidFieldError(key, f"must be >= 0, got {getattr(self, key)!r}")
        for key in ("metrics_window", "n_models"):
            if getattr(self, key) < 1:
                raise InvalidFieldError(key, f"must be >= 1, got {getattr(self, key)!r}")

    @property
    def scored_types(self) -> frozenset[str] | None:
        """The event types that are scored, or None for every type but ``outcome``."""
        return frozenset(self.score_types) if self.score_types else None

    def is_scored(self, event_type: str) -> bool:
        """Whether an event of this type is scored (outcomes never are)."""
        if event_type == "outcome":
            return False
        return not self.score_types or event_type in self.score_types

    @classmethod
    def from_dict(cls, data: object, where: str = "model") -> ModelConfig:
        """Build from a TOML table; a :class:`ConfigError` names the bad key."""
        return build_dataclass(cls, data, where)


def build_estimator(config: ModelConfig) -> Any:
    """A fresh River estimator for ``config`` (the model factory)."""
    if config.kind == "logreg":
        model = linear_model.LogisticRegression(
            optimizer=optim.SGD(config.lr), l2=config.l2, intercept_lr=config.lr
        )
        if config.min_spread > 0:
            return SpreadScaler(config.min_spread) | model
        return preprocessing.StandardScaler() | model
    if config.kind == "hoeffding":
        return tree.HoeffdingAdaptiveTreeClassifier(seed=config.seed)
    return forest.ARFClassifier(n_models=config.n_models, seed=config.seed)


def rank_auc(y: NDArray[np.bool_], p: FloatArray) -> float:
    """Exact ROC AUC (ties count one half); NaN unless both classes are present.

    >>> rank_auc(np.array([True, False, True]), np.array([0.9, 0.2, 0.2]))
    0.75
    """
    n_pos = int(y.sum())
    n_neg = int(y.shape[0] - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(p, kind="mergesort")
    sp = p[order]
    ranks = np.empty(p.shape[0])
    # Average ranks over ties (1-based).
    starts = np.flatnonzero(np.r_[True, sp[1:] != sp[:-1]])
    ends = np.r_[starts[1:], sp.shape[0]]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def window_metric(name: str, y: NDArray[np.bool_], p: FloatArray) -> float:
    """``auc``, ``brier`` or ``log_loss`` of scores ``p`` against labels ``y``.

    >>> window_metric("brier", np.array([True, False]), np.array([0.5, 0.5]))
    0.25
    """
    if name == "auc":
        return rank_auc(y, p)
    if name == "brier":
        return float(np.mean((p - y) ** 2))
    q = np.clip(p, _LOSS_EPS, 1.0 - _LOSS_EPS)
    return float(np.mean(np.where(y, -np.log(q), -np.log(1.0 - q))))


class Reason(TypedDict):
    """One reason code: a feature, its plain-words label, value and contribution."""

    feature: str
    label: str
    value: float
    contribution: float


class _Moments:
    """Running count, mean and population variance per column (batch updates)."""

    def __init__(self, n_features: int) -> None:
        self.count = 0
        self.mean = np.zeros(n_features)
        self.m2 = np.zeros(n_features)

    def update(self, X: FloatArray) -> None:
        n = X.shape[0]
        if n == 0:
            return
        batch_mean = X.mean(axis=0)
        batch_m2 = ((X - batch_mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta**2 * (self.count * n / total)
        self.count = total

    def var(self) -> FloatArray:
        if self.count == 0:
            return np.zeros_like(self.mean)
        return self.m2 / self.count


def _standardize(X: FloatArray, mean: FloatArray, var: FloatArray) -> FloatArray:
    """``(x - mean) / std`` per column; 0 where the variance is 0 (as River does)."""
    std = np.sqrt(var)
    out = np.zeros_like(X)
    np.divide(X - mean, std, out=out, where=var != 0)
    return out


def _sigmoid(z: FloatArray) -> FloatArray:
    """River's sigmoid: exactly 0 below -30, 1 above 30."""
    inner = 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))
    return np.where(z < -30.0, 0.0, np.where(z > 30.0, 1.0, inner))


def _finite_rows(X: FloatArray) -> NDArray[np.bool_]:
    """Rows whose values are all finite."""
    return np.asarray(np.isfinite(X).all(axis=1), dtype=bool)


def _logit(p: FloatArray) -> FloatArray:
    q = np.clip(p, _P_EPS, 1.0 - _P_EPS)
    result: FloatArray = np.log(q / (1.0 - q))
    return result


@dataclass(frozen=True, slots=True)
class Learned:
    """What one :meth:`IntentModel.learn_scored` call did.

    ``scores`` are the served scores of the accepted rows *before* the model
    learned them (``None`` when the model had learned nothing yet, so there
    was nothing to validate); ``labels`` are those rows' labels.
    """

    n_learned: int
    scores: FloatArray | None
    labels: NDArray[np.bool_]


def names_hash(names: Sequence[str]) -> str:
    """A stable hash of an ordered feature-name list (32 hex digits)."""
    blob = "\x1f".join(names).encode("utf-8")
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


class IntentModel:
    """A picklable online classifier of "converts within the label horizon".

    Scoring (:meth:`score_batch`, :meth:`explain`) only reads state: the
    scaler and the weights change only in :meth:`learn_batch`. The model binds
    to the first feature names it sees; other names later raise
    :class:`~intentflow.errors.SnapshotMismatchError`.
    """

    SCHEMA_VERSION: ClassVar[int] = 2

    def __init__(
        self,
        config: ModelConfig | None = None,
        spec_hash: str | None = None,
        generation: int = 0,
    ) -> None:
        self.config = config if config is not None else ModelConfig()
        # ``logreg`` learns through compiled arrays (bound with the names), the
        # other kinds through their River estimator.
        self._linear = self.config.kind == "logreg"
        self._estimator: Any = None if self._linear else build_estimator(self.config)
        self._lin: LinearState | None = None
        self._names: tuple[str, ...] | None = None
        self._hash = spec_hash or ""
        self._moments: _Moments | None = None
        self.generation = generation
        self.n_learned = 0
        self.n_positive = 0
        self.n_refused = 0
        self.n_validated = 0
        self.n_offered = 0  # labelled finite rows offered to learning (for learn_fraction)
        # Platt scaling: served = sigmoid(a * logit(raw) + b), starting at the identity.
        self._platt: FloatArray | None = (
            np.array([1.0, 0.0]) if self.config.calibration == "platt" else None
        )
        self._reset_metrics()

    # -- identity ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The model kind, e.g. ``"logreg"``."""
        return self.config.kind

    @property
    def feature_names(self) -> tuple[str, ...] | None:
        """The bound feature names, or ``None`` before the first batch."""
        return self._names

    @property
    def feature_spec_hash(self) -> str:
        """The feature spec hash given at construction, else :func:`names_hash` of the
        bound names ("" while unbound)."""
        return self._hash

    @property
    def version(self) -> str:
        """``{kind}-{spec_hash[:8]}-n{n_learned}``: changes with every learned row.

        A model created later in a shard's life (after a drift reset or as a
        challenger) has ``generation`` > 0 and the version
        ``{kind}-{spec_hash[:8]}-g{generation}-n{n_learned}``.
        """
        spec = self._hash[:8] if self._hash else "unbound"
        gen = f"-g{self.generation}" if self.generation else ""
        return f"{self.name}-{spec}{gen}-n{self.n_learned}"

    @property
    def ready(self) -> bool:
        """True once ``warmup_labels`` rows, a positive and a negative were learned."""
        return (
            self.n_learned >= self.config.warmup_labels
            and self.n_positive > 0
            and self.n_learned > self.n_positive
        )

    def retune(self, config: ModelConfig) -> None:
        """Adopt ``config``'s settings for a model of the same kind (a warm start).

        The learned state is kept. A new ``metrics_window`` restarts the
        rolling metrics; switching calibration on starts the Platt scaler at
        the identity, switching it off drops it.
        """
        if config.kind != self.config.kind:
            raise ValueError(f"config.kind: {config.kind!r} cannot retune a {self.name!r} model")
        old = self.config
        self.config = config
        if config.calibration == "none":
            self._platt = None
        elif self._platt is None:
            self._platt = np.array([1.0, 0.0])
        if config.metrics_window != old.metrics_window:
            self._reset_metrics()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Read this version's pickles and older ones (River-held ``logreg``, River metrics)."""
        linear = state["config"].kind == "logreg"
        state.setdefault("_linear", linear)
        state.pop("_auc", None)
        state.pop("_log_loss", None)
        if linear and "_lin" not in state:  # written by a version that learned through River
            names = state.get("_names")
            pipeline = state.pop("_estimator")
            state["_estimator"] = None
            state["_lin"] = None if names is None else LinearState.from_river(pipeline, names)
        self.__dict__.update(state)

    def _reset_metrics(self) -> None:
        window = self.config.metrics_window
        self._ring_y = np.zeros(window, dtype=bool)
        self._ring_p = np.zeros(window)
        self._ring_next = 0
        self._ring_size = 0

    @property
    def estimator(self) -> Any:
        """The River estimator, for inspection only: do not mutate it.

        ``logreg`` learns through compiled arrays; this is a River pipeline
        built from them (a copy: learning it leaves the model alone).
        """
        if not self._linear:
            return self._estimator
        if self._lin is None or self._names is None:
            return build_estimator(self.config)
        return self._lin.to_river(
            self._names, self.config.lr, self.config.l2, self.config.min_spread
        )

    def _bind(self, names: Sequence[str]) -> tuple[str, ...]:
        if self._names is not None:
            if names is self._names or tuple(names) == self._names:
                return self._names
            raise SnapshotMismatchError(
                f"model {self.version} was built for features {list(self._names)}, "
                f"got {list(names)}: start from a fresh model when the feature spec changes"
            )
        bound = tuple(str(n) for n in names)
        if len(set(bound)) != len(bound):
            raise ValueError(f"names: feature names must be unique, got {list(bound)}")
        self._names = bound
        if not self._hash:
            self._hash = names_hash(bound)
        if self._linear:
            self._lin = LinearState(len(bound))
        else:
            self._moments = _Moments(len(bound))
        return bound

    def _shaped(self, X: object, names: Sequence[str]) -> FloatArray:
        arr = np.asarray(X, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != len(names):
            raise ValueError(f"X: expected shape (n, {len(names)}) to match names, got {arr.shape}")
        return arr

    def _check(self, X: object, names: Sequence[str]) -> tuple[FloatArray, tuple[str, ...]]:
        arr = self._shaped(X, names)
        if arr.size and float(np.nanmax(np.abs(arr), initial=0.0)) > MAX_ABS:
            arr = np.clip(arr, -MAX_ABS, MAX_ABS)  # inf stays out: clip maps it to MAX_ABS
            arr[~np.isfinite(np.asarray(X, dtype=np.float64))] = np.nan
        return arr, self._bind(names)

    # -- scoring ----------------------------------------------------------------------------
    def _raw_scores(self, X: FloatArray, names: tuple[str, ...]) -> FloatArray:
        """The estimator's P(True) for finite rows (non-finite rows score 0)."""
        if self._linear:  # one compiled call, values clipped to +-MAX_ABS
            if self._lin is None:  # nothing learned, nothing bound
                return np.zeros(X.shape[0])
            return self._lin.scores(X, self.config.min_spread)
        out = np.zeros(X.shape[0])
        finite = np.isfinite(X).all(axis=1)
        if finite.any():
            for i in np.flatnonzero(finite):
                proba = self._estimator.predict_proba_one(
                    dict(zip(names, X[i].tolist(), strict=True))
                )
                total = sum(proba.values())
                out[i] = proba.get(True, 0.0) / total if total > 0 else 0.0
        out[~np.isfinite(out)] = 0.0
        np.clip(out, 0.0, 1.0, out=out)
        return out

    def _served(self, X: FloatArray, names: tuple[str, ...]) -> FloatArray:
        """The served score: the estimator's, through the Platt scaler if configured."""
        raw = self._raw_scores(X, names)
        if self._platt is None:
            return raw
        return self._calibrate(raw, _finite_rows(X))

    def _calibrate(self, raw: FloatArray, finite: NDArray[np.bool_]) -> FloatArray:
        assert self._platt is not None
        a, b = float(self._platt[0]), float(self._platt[1])
        out = _sigmoid(a * _logit(raw) + b)
        out[~finite] = 0.0
        return out

    def _fit_platt(self, raw: FloatArray, labels: NDArray[np.bool_]) -> None:
        """One SGD step per row on the log loss of the Platt scaler (a kept >= 0)."""
        assert self._platt is not None
        a, b = float(self._platt[0]), float(self._platt[1])
        lr = self.config.lr
        for z, y in zip(_logit(raw).tolist(), labels.tolist(), strict=True):
            zz = min(max(a * z + b, -30.0), 30.0)
            g = 1.0 / (1.0 + math.exp(-zz)) - (1.0 if y else 0.0)
            a = max(0.0, a - lr * g * z)
            b -= lr * g
        self._platt = np.array([a, b])

    @property
    def calibration(self) -> tuple[float, float] | None:
        """The Platt scaler's ``(a, b)``, or None without calibration."""
        if self._platt is None:
            return None
        return float(self._platt[0]), float(self._platt[1])

    def score_batch(self, X: FloatArray, names: Sequence[str]) -> FloatArray:
        """P(conversion within the horizon) per row, in [0, 1] and finite.

        A cold model (see :attr:`ready`) scores :data:`COLD_SCORE` (0.0) for
        every row, so it never reaches an alert threshold; a row with a
        non-finite value also scores 0.0. Reads state only.
        """
        if self._linear:  # the scoring kernel clips and checks finiteness itself
            arr, bound = self._shaped(X, names), self._bind(names)
        else:
            arr, bound = self._check(X, names)
        if not self.ready:
            return np.full(arr.shape[0], COLD_SCORE)
        return self._served(arr, bound)

    # -- learning ---------------------------------------------------------------------------
    def learn_batch(self, X: FloatArray, y: NDArray[np.bool_], names: Sequence[str]) -> int:
        """Validate progressively, then learn the rows in order; returns rows learned.

        Rows with a non-finite value are refused and counted in ``n_refused``.
        Before learning, every accepted row is scored with the current model
        (if it has learned anything) and the rolling metrics are updated.
        """
        return self.learn_scored(X, y, names).n_learned

    def learn_scored(self, X: FloatArray, y: NDArray[np.bool_], names: Sequence[str]) -> Learned:
        """:meth:`learn_batch`, also returning the progressive scores (see :class:`Learned`).

        The served score of each accepted row is computed before anything
        learns; then the metrics are updated, the Platt scaler (if any) takes
        one step per row on the raw score, and the estimator learns the rows
        (every row, or the ``learn_fraction`` share; none with ``learn = false``).
        """
        arr, bound = self._check(X, names)
        labels = np.asarray(y, dtype=bool).reshape(-1)
        if labels.shape[0] != arr.shape[0]:
            raise ValueError(f"y: expected {arr.shape[0]} labels, got {labels.shape[0]}")
        finite = _finite_rows(arr)
        self.n_refused += int(arr.shape[0] - finite.sum())
        rows, labels = arr[finite], labels[finite]
        if rows.shape[0] == 0:
            return Learned(0, None, labels)
        served: FloatArray | None = None
        if self.n_learned > 0:
            raw = self._raw_scores(rows, bound)
            served = raw if self._platt is None else self._calibrate(raw, np.ones(len(raw), bool))
            self._update_metrics(labels, served)
            self.n_validated += rows.shape[0]
            if self._platt is not None and self.config.learn:
                self._fit_platt(raw, labels)
        if not self.config.learn:
            return Learned(0, served, labels)
        keep = self._sample(rows.shape[0])
        if keep is not None:
            rows, learn_labels = rows[keep], labels[keep]
        else:
            learn_labels = labels
        if self._lin is not None:
            cfg = self.config
            self._lin.learn(rows, learn_labels, lr=cfg.lr, l2=cfg.l2, min_spread=cfg.min_spread)
        else:
            learn_one = self._estimator.learn_one
            for row, label in zip(rows.tolist(), learn_labels.tolist(), strict=True):
                learn_one(dict(zip(bound, row, strict=True)), label)
        if self._moments is not None:
            self._moments.update(rows)
        self.n_learned += rows.shape[0]
        self.n_positive += int(learn_labels.sum())
        return Learned(int(rows.shape[0]), served, labels)

    def _sample(self, n: int) -> NDArray[np.bool_] | None:
        """Which of the next ``n`` offered rows to learn under ``learn_fraction``.

        Row ``i`` (counted over the model's life) is learned when
        ``floor((i + 1) f) > floor(i f)``: exactly the share ``f``, evenly
        spread, and independent of how rows are grouped into batches.
        """
        start = self.n_offered
        self.n_offered += n
        f = self.config.learn_fraction
        if f >= 1.0:
            return None
        i = np.arange(start, start + n, dtype=np.float64)
        keep: NDArray[np.bool_] = np.floor((i + 1.0) * f) > np.floor(i * f)
        return keep

    def _update_metrics(self, labels: NDArray[np.bool_], scores: FloatArray) -> None:
        """Append (label, score) pairs to the ring of the last ``metrics_window`` pairs."""
        window = self._ring_y.shape[0]
        n = labels.shape[0]
        start = self._ring_next
        if n > window:  # only the last ``window`` pairs stay
            start = (start + n - window) % window
            labels, scores = labels[-window:], scores[-window:]
        idx = (start + np.arange(labels.shape[0])) % window
        self._ring_y[idx] = labels
        self._ring_p[idx] = scores
        self._ring_next = (self._ring_next + n) % window
        self._ring_size = min(window, self._ring_size + n)

    def metrics(self) -> dict[str, float]:
        """Progressive-validation metrics over the last ``metrics_window`` labels.

        ``auc`` (exact, ties count one half), ``log_loss`` (probabilities
        clipped to [1e-15, 1 - 1e-15], as River's ``LogLoss``), ``brier``
        (mean squared error of the probability) are NaN until defined;
        ``window`` counts the labels they cover. ``labels`` (learned rows),
        ``positives``, ``refused`` and ``validated`` (rows scored before
        learning) count since the model was created.
        """
        size = self._ring_size
        y = self._ring_y[:size]
        p = self._ring_p[:size]
        nan = math.nan
        both = size > 0 and bool(y.any()) and not bool(y.all())
        return {
            "auc": rank_auc(y, p) if both else nan,
            "log_loss": window_metric("log_loss", y, p) if size else nan,
            "brier": window_metric("brier", y, p) if size else nan,
            "window": float(size),
            "labels": float(self.n_learned),
            "positives": float(self.n_positive),
            "refused": float(self.n_refused),
            "validated": float(self.n_validated),
        }

    # -- reason codes -----------------------------------------------------------------------
    def contributions(self, x_row: FloatArray, names: Sequence[str]) -> FloatArray:
        """Per-feature contribution to the score of one row (see :meth:`explain`)."""
        arr = self._shaped(np.asarray(x_row, dtype=np.float64).reshape(1, -1), names)
        self._bind(names)
        if self._lin is not None:  # logreg: one compiled call
            return self._lin.contributions(arr[0], self.config.min_spread)
        arr, _ = self._check(arr, names)
        finite = np.isfinite(arr)
        clean = np.where(finite, arr, 0.0)
        assert self._moments is not None
        contrib = _standardize(clean, self._moments.mean, self._moments.var())[0]
        result: FloatArray = np.where(finite[0], contrib, 0.0)
        return result

    def explain(
        self,
        x_row: FloatArray,
        names: Sequence[str],
        descriptions: Sequence[str],
        top_k: int | None = None,
    ) -> list[Reason]:
        """The ``top_k`` reason codes of one row, largest ``|contribution|`` first.

        ``logreg``: contribution = standardized value x weight, so the
        contributions of all features plus the intercept sum to the logit.
        Trees: the standardized deviation of the value from the mean of the
        learned rows (how unusual it is, not its direction of effect).
        Ties keep feature order; non-finite values contribute 0.
        """
        if len(descriptions) != len(names):
            raise ValueError(
                f"descriptions: expected {len(names)} entries, got {len(descriptions)}"
            )
        k = self.config.reason_top_k if top_k is None else top_k
        row = np.asarray(x_row, dtype=np.float64).reshape(-1)
        contrib = self.contributions(row, names)
        order = np.empty(min(max(k, 0), contrib.shape[0]), dtype=np.int64)
        top_abs(contrib, order)  # argsort(-|contrib|), stable, first k
        return [
            Reason(
                feature=str(names[i]),
                label=str(descriptions[i]),
                value=float(row[i]),
                contribution=float(contrib[i]),
            )
            for i in order.tolist()
        ]

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
from river import forest, linear_model, metrics, optim, preprocessing, tree, utils

from intentflow.errors import SnapshotMismatchError
from intentflow.online_models._validate import InvalidFieldError, build_dataclass

__all__ = [
    "COLD_SCORE",
    "KINDS",
    "IntentModel",
    "ModelConfig",
    "Reason",
    "build_estimator",
    "names_hash",
]

#: Model kinds :func:`build_estimator` knows.
KINDS: Final[tuple[str, ...]] = ("logreg", "hoeffding", "arf")

#: The score of every row while the model is cold (see :attr:`IntentModel.ready`).
COLD_SCORE: Final[float] = 0.0

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class ModelConfig:
    """How the intent model is built, when it may alert and how it reports.

    ``kind``: ``logreg`` (``StandardScaler | LogisticRegression(SGD(lr))``),
    ``hoeffding`` (Hoeffding adaptive tree) or ``arf`` (adaptive random forest
    of ``n_models`` trees). ``lr`` and ``l2`` apply to ``logreg`` only.
    ``threshold`` is the alert threshold on the score, ``reason_top_k`` the
    number of reason codes per alert. The model stays cold (scores
    :data:`COLD_SCORE`) until it has learned ``warmup_labels`` rows including
    a positive and a negative. Metrics roll over the last ``metrics_window``
    labels.
    """

    kind: str = "logreg"
    lr: float = 0.05
    l2: float = 0.0
    seed: int = 42
    threshold: float = 0.7
    reason_top_k: int = 3
    warmup_labels: int = 50
    metrics_window: int = 1000
    n_models: int = 3

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidFieldError("kind", f"{self.kind!r} is not one of {', '.join(KINDS)}")
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

    @classmethod
    def from_dict(cls, data: object, where: str = "model") -> ModelConfig:
        """Build from a TOML table; a :class:`ConfigError` names the bad key."""
        return build_dataclass(cls, data, where)


def build_estimator(config: ModelConfig) -> Any:
    """A fresh River estimator for ``config`` (the model factory)."""
    if config.kind == "logreg":
        return preprocessing.StandardScaler() | linear_model.LogisticRegression(
            optimizer=optim.SGD(config.lr), l2=config.l2, intercept_lr=config.lr
        )
    if config.kind == "hoeffding":
        return tree.HoeffdingAdaptiveTreeClassifier(seed=config.seed)
    return forest.ARFClassifier(n_models=config.n_models, seed=config.seed)


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

    SCHEMA_VERSION: ClassVar[int] = 1

    def __init__(self, config: ModelConfig | None = None, spec_hash: str | None = None) -> None:
        self.config = config if config is not None else ModelConfig()
        self._estimator = build_estimator(self.config)
        self._names: tuple[str, ...] | None = None
        self._hash = spec_hash or ""
        self._moments: _Moments | None = None
        self.n_learned = 0
        self.n_positive = 0
        self.n_refused = 0
        window = self.config.metrics_window
        self._auc: Any = metrics.RollingROCAUC(window_size=window)  # type: ignore[no-untyped-call]
        self._log_loss: Any = utils.Rolling(metrics.LogLoss, window_size=window)
        self._ring_y = np.zeros(window, dtype=bool)
        self._ring_p = np.zeros(window)
        self._ring_next = 0
        self._ring_size = 0

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
        """``{kind}-{spec_hash[:8]}-n{n_learned}``: changes with every learned row."""
        spec = self._hash[:8] if self._hash else "unbound"
        return f"{self.name}-{spec}-n{self.n_learned}"

    @property
    def ready(self) -> bool:
        """True once ``warmup_labels`` rows, a positive and a negative were learned."""
        return (
            self.n_learned >= self.config.warmup_labels
            and self.n_positive > 0
            and self.n_learned > self.n_positive
        )

    @property
    def estimator(self) -> Any:
        """The wrapped River estimator, for inspection only: do not mutate it."""
        return self._estimator

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
        if self.config.kind != "logreg":
            self._moments = _Moments(len(bound))
        return bound

    def _check(self, X: object, names: Sequence[str]) -> tuple[FloatArray, tuple[str, ...]]:
        arr = np.asarray(X, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != len(names):
            raise ValueError(f"X: expected shape (n, {len(names)}) to match names, got {arr.shape}")
        return arr, self._bind(names)

    # -- scoring ----------------------------------------------------------------------------
    def _raw_scores(self, X: FloatArray, names: tuple[str, ...]) -> FloatArray:
        """The estimator's P(True) for finite rows (non-finite rows score 0)."""
        out = np.zeros(X.shape[0])
        finite = np.isfinite(X).all(axis=1)
        if not finite.any():
            return out
        if self.config.kind == "logreg":
            out[finite] = _sigmoid(self._logits(X[finite], names))
        else:
            for i in np.flatnonzero(finite):
                proba = self._estimator.predict_proba_one(
                    dict(zip(names, X[i].tolist(), strict=True))
                )
                total = sum(proba.values())
                out[i] = proba.get(True, 0.0) / total if total > 0 else 0.0
        np.clip(out, 0.0, 1.0, out=out)
        return out

    def _linear_parts(self, names: tuple[str, ...]) -> tuple[FloatArray, FloatArray, FloatArray]:
        scaler = self._estimator["StandardScaler"]
        weights = self._estimator["LogisticRegression"].weights
        mean = np.array([scaler.means.get(n, 0.0) for n in names], dtype=np.float64)
        var = np.array([scaler.vars.get(n, 0.0) for n in names], dtype=np.float64)
        w = np.array([weights.get(n, 0.0) for n in names], dtype=np.float64)
        return mean, var, w

    def _logits(self, X: FloatArray, names: tuple[str, ...]) -> FloatArray:
        mean, var, w = self._linear_parts(names)
        intercept = float(self._estimator["LogisticRegression"].intercept)
        result: FloatArray = _standardize(X, mean, var) @ w + intercept
        return result

    def score_batch(self, X: FloatArray, names: Sequence[str]) -> FloatArray:
        """P(conversion within the horizon) per row, in [0, 1] and finite.

        A cold model (see :attr:`ready`) scores :data:`COLD_SCORE` (0.0) for
        every row, so it never reaches an alert threshold; a row with a
        non-finite value also scores 0.0. Reads state only.
        """
        arr, bound = self._check(X, names)
        if not self.ready:
            return np.full(arr.shape[0], COLD_SCORE)
        return self._raw_scores(arr, bound)

    # -- learning ---------------------------------------------------------------------------
    def learn_batch(self, X: FloatArray, y: NDArray[np.bool_], names: Sequence[str]) -> int:
        """Validate progressively, then learn the rows in order; returns rows learned.

        Rows with a non-finite value are refused and counted in ``n_refused``.
        Before learning, every accepted row is scored with the current model
        (if it has learned anything) and the rolling metrics are updated.
        """
        arr, bound = self._check(X, names)
        labels = np.asarray(y, dtype=bool).reshape(-1)
        if labels.shape[0] != arr.shape[0]:
            raise ValueError(f"y: expected {arr.shape[0]} labels, got {labels.shape[0]}")
        finite = np.isfinite(arr).all(axis=1)
        self.n_refused += int(arr.shape[0] - finite.sum())
        rows, labels = arr[finite], labels[finite]
        if rows.shape[0] == 0:
            return 0
        if self.n_learned > 0:
            self._update_metrics(labels, self._raw_scores(rows, bound))
        learn_one = self._estimator.learn_one
        for row, label in zip(rows.tolist(), labels.tolist(), strict=True):
            learn_one(dict(zip(bound, row, strict=True)), label)
        if self._moments is not None:
            self._moments.update(rows)
        self.n_learned += rows.shape[0]
        self.n_positive += int(labels.sum())
        return int(rows.shape[0])

    def _update_metrics(self, labels: NDArray[np.bool_], scores: FloatArray) -> None:
        window = self._ring_y.shape[0]
        for label, p in zip(labels.tolist(), scores.tolist(), strict=True):
            self._auc.update(label, p)
            self._log_loss.update(label, p)
            self._ring_y[self._ring_next] = label
            self._ring_p[self._ring_next] = p
            self._ring_next = (self._ring_next + 1) % window
        self._ring_size = min(window, self._ring_size + labels.shape[0])
        self._auc.get()  # moves River's pending updates into its bounded window

    def metrics(self) -> dict[str, float]:
        """Progressive-validation metrics over the last ``metrics_window`` labels.

        ``auc`` (exact, River ``RollingROCAUC``), ``log_loss`` (River
        ``LogLoss``), ``brier`` (mean squared error of the probability) are
        NaN until defined; ``window`` counts the labels they cover. ``labels``,
        ``positives`` and ``refused`` count since the model was created.
        """
        size = self._ring_size
        y = self._ring_y[:size]
        p = self._ring_p[:size]
        nan = math.nan
        both = size > 0 and bool(y.any()) and not bool(y.all())
        return {
            "auc": float(self._auc.get()) if both else nan,
            "log_loss": float(self._log_loss.get()) if size else nan,
            "brier": float(np.mean((p - y) ** 2)) if size else nan,
            "window": float(size),
            "labels": float(self.n_learned),
            "positives": float(self.n_positive),
            "refused": float(self.n_refused),
        }

    # -- reason codes -----------------------------------------------------------------------
    def contributions(self, x_row: FloatArray, names: Sequence[str]) -> FloatArray:
        """Per-feature contribution to the score of one row (see :meth:`explain`)."""
        arr, bound = self._check(np.asarray(x_row, dtype=np.float64).reshape(1, -1), names)
        finite = np.isfinite(arr)
        clean = np.where(finite, arr, 0.0)
        if self.config.kind == "logreg":
            mean, var, w = self._linear_parts(bound)
            contrib = _standardize(clean, mean, var)[0] * w
        else:
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
        order = np.argsort(-np.abs(contrib), kind="stable")[: max(k, 0)]
        return [
            Reason(
                feature=str(names[i]),
                label=str(descriptions[i]),
                value=float(row[i]),
                contribution=float(contrib[i]),
            )
            for i in order.tolist()
        ]

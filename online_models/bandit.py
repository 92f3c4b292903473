"""A contextual bandit per action that learns acceptance from ``outcome`` feedback.

Each action has a Bayesian linear regression of the reward (1 for an
accepted or converted alert, 0 otherwise) on a small context: a bias, the
intent score, the customer flag and any configured feature (as
``log1p(max(x, 0))``). It is the reward model of River's
``bandit.LinUCBDisjoint`` (``linear_model.BayesianLinearRegression``, Bishop
eq. 3.50-3.51), kept in closed form (rank-one updates of the posterior
covariance) so that a decision over all actions costs microseconds; the
tests check it against River's model. From its posterior the policy gets an
*acceptance* estimate per eligible action:

- ``linucb``: the upper confidence bound ``mean + ucb_alpha * std`` of the
  expected reward (deterministic);
- ``thompson``: one draw from the posterior of the expected reward (random);
- ``none``: 1.0 for every action (no learning; priority is score x value x lever).

Estimates are clipped to [``MIN_ACCEPTANCE``, 1]. Before any feedback every
action has the same estimate, so the policy starts value-greedy.

Randomness never comes from a global or a stateful generator: every random
number of a decision is derived from ``blake2b(seed, decision key)`` (the key
is the alert id), so a replay, or the same events in other batches, makes
the same choice (:func:`decision_rng`).

>>> bandit = ActionBandit(BanditConfig())
>>> ctx = bandit.context(0.8, False, np.zeros(0), ())
>>> ctx
(1.0, 0.8, 0.0)
>>> est = bandit.estimates(("call", "mail"), ctx)
>>> bool(est[0] == est[1])
True
>>> for _ in range(50):
...     bandit.update("call", ctx, 0.0)
>>> est = bandit.estimates(("call", "mail"), ctx)
>>> bool(est[0] < est[1])
True
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from operator import mul
from typing import Any, ClassVar, Final

import numpy as np
from numpy.typing import NDArray

from intentflow.online_models._validate import InvalidFieldError, build_dataclass

__all__ = [
    "BANDIT_KINDS",
    "MIN_ACCEPTANCE",
    "ActionBandit",
    "BanditConfig",
    "decision_rng",
    "decision_uniforms",
]

#: Scale of a 53-bit integer to a float in [0, 1).
_TWO_POW_M53: Final = 2.0**-53

#: Bandit kinds.
BANDIT_KINDS: Final[tuple[str, ...]] = ("linucb", "thompson", "none")
#: Acceptance estimates are clipped to at least this, so value still orders hopeless actions.
MIN_ACCEPTANCE: Final[float] = 1e-3
_BASE_CONTEXT: Final[tuple[str, ...]] = ("bias", "score", "customer")


@dataclass(frozen=True)
class BanditConfig:
    """How the policy learns from feedback and explores (the ``[bandit]`` table).

    ``exploration`` is the probability that an alert's action is drawn
    uniformly among the eligible actions instead of the highest priority.
    ``ucb_alpha`` scales the confidence bonus of ``linucb``. The reward model
    is River's ``BayesianLinearRegression(alpha=prior_precision,
    beta=noise_precision)``. ``context_features`` are feature-spec names added
    to the context. ``thompson_draws`` posterior draws give ``thompson`` its
    choice and the probability of that choice. ``reward_results`` are the
    outcome results that count as a reward of 1. A decision waits at most
    ``feedback_ttl_s`` (event time) for its outcome, and at most
    ``max_pending_feedback`` decisions wait per shard.
    """

    kind: str = "linucb"
    exploration: float = 0.0
    seed: int = 0
    ucb_alpha: float = 1.0
    prior_precision: float = 1.0
    noise_precision: float = 4.0
    context_features: tuple[str, ...] = ()
    thompson_draws: int = 256
    reward_results: tuple[str, ...] = ("accepted", "converted")
    feedback_ttl_s: float = 7 * 86_400.0
    max_pending_feedback: int = 100_000

    def __post_init__(self) -> None:
        if self.kind not in BANDIT_KINDS:
            raise InvalidFieldError(
                "kind", f"{self.kind!r} is not one of {', '.join(BANDIT_KINDS)}"
            )
        if not 0.0 <= self.exploration <= 1.0:
            raise InvalidFieldError("exploration", f"must be in [0, 1], got {self.exploration!r}")
        for key in ("ucb_alpha", "feedback_ttl_s"):
            if getattr(self, key) < 0:
                raise InvalidFieldError(key, f"must be >= 0, got {getattr(self, key)!r}")
        for key in ("prior_precision", "noise_precision"):
            if not getattr(self, key) > 0:
                raise InvalidFieldError(key, f"must be > 0, got {getattr(self, key)!r}")
        for key in ("thompson_draws", "max_pending_feedback"):
            if getattr(self, key) < 1:
                raise InvalidFieldError(key, f"must be >= 1, got {getattr(self, key)!r}")
        if len(set(self.context_features)) != len(self.context_features):
            raise InvalidFieldError("context_features", "names must be unique")

    @classmethod
    def from_dict(cls, data: object, where: str = "actions.bandit") -> BanditConfig:
        """Build from a TOML table; a :class:`ConfigError` names the bad key."""
        return build_dataclass(cls, data, where)

    @property
    def feedback_ttl_ms(self) -> int:
        return round(self.feedback_ttl_s * 1000.0)


def decision_rng(
    seed: int, key: str, reuse: np.random.Generator | None = None
) -> np.random.Generator:
    """The random generator of one decision: PCG64 whose state is ``blake2b(seed, key)``.

    The same seed and key always give the same numbers. ``reuse`` is a
    generator whose state is overwritten (cheaper than building one).

    >>> a = decision_rng(1, "alert-1").random()
    >>> a == decision_rng(1, "alert-1").random() != decision_rng(2, "alert-1").random()
    True
    """
    digest = hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=32).digest()
    gen = reuse if reuse is not None else np.random.Generator(np.random.PCG64(0))
    gen.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {
            "state": int.from_bytes(digest[:16], "little"),
            "inc": int.from_bytes(digest[16:], "little") | 1,
        },
        "has_uint32": 0,
        "uinteger": 0,
    }
    return gen


def decision_uniforms(seed: int, key: str) -> tuple[float, float]:
    """Two uniform numbers in [0, 1) of one decision, from ``blake2b(seed, key)``.

    What an ε-greedy decision draws (explore or not, then which action):
    the 53 high bits of each half of a 16-byte digest, so the same seed and
    key always give the same pair, without a generator to reseed.

    >>> a = decision_uniforms(1, "alert-1")
    >>> a == decision_uniforms(1, "alert-1") != decision_uniforms(2, "alert-1")
    True
    >>> all(0.0 <= u < 1.0 for u in a)
    True
    """
    digest = hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=16).digest()
    return (
        (int.from_bytes(digest[:8], "little") >> 11) * _TWO_POW_M53,
        (int.from_bytes(digest[8:], "little") >> 11) * _TWO_POW_M53,
    )


class _Posterior:
    """Gaussian posterior of one action's reward weights (prior N(0, I / alpha)).

    The mean and covariance are also kept as Python lists: contexts have a
    handful of values, for which plain floats are faster than numpy calls.
    """

    __slots__ = ("cov", "cov_rows", "eta", "mean", "mean_list")

    def __init__(self, dim: int, alpha: float) -> None:
        self.cov = np.eye(dim) / alpha
        self.eta = np.zeros(dim)
        self.mean = np.zeros(dim)
        self.mean_list: list[float] = []
        self.cov_rows: list[list[float]] = []
        self._lists()

    def _lists(self) -> None:
        self.mean_list = self.mean.tolist()
        self.cov_rows = self.cov.tolist()

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.cov, self.eta, self.mean)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.cov, self.eta, self.mean = state
        self._lists()

    def learn(self, x: NDArray[np.float64], y: float, beta: float) -> None:
        """One observation: Sherman-Morrison update of the covariance, then the mean."""
        cx = self.cov @ x
        self.cov = self.cov - np.outer(cx, cx) * (beta / (1.0 + beta * float(x @ cx)))
        self.eta = self.eta + beta * y * x
        self.mean = self.cov @ self.eta
        self._lists()

    def predict(self, x: Sequence[float]) -> tuple[float, float]:
        """Mean and variance of the expected reward at ``x``."""
        if len(x) != len(self.mean_list):
            raise ValueError(f"context: expected {len(self.mean_list)} values, got {len(x)}")
        # the same sums in the same order as with generators, at half the cost
        mean = sum(map(mul, self.mean_list, x))
        var = sum(map(mul, x, [sum(map(mul, row, x)) for row in self.cov_rows]))
        return mean, var


class ActionBandit:
    """Per-action Bayesian linear reward models, picklable, with no randomness of its own."""

    SCHEMA_VERSION: ClassVar[int] = 2

    def __init__(self, config: BanditConfig | None = None) -> None:
        self.config = config if config is not None else BanditConfig()
        self._posts: dict[str, _Posterior] = {}
        self.updates: dict[str, int] = {}
        self.rewards: dict[str, float] = {}
        self._names: tuple[str, ...] | None = None
        self._cols: list[int] = []

    @property
    def context_names(self) -> tuple[str, ...]:
        """Names of the context values: bias, score, customer, then the configured features."""
        return _BASE_CONTEXT + self.config.context_features

    def context(
        self, score: float, customer: bool, row: NDArray[np.float64], names: Sequence[str]
    ) -> tuple[float, ...]:
        """The context of a decision (finite floats)."""
        feats = self.config.context_features
        base = (1.0, round(float(score), 6), 1.0 if customer else 0.0)
        if not feats:
            return base
        if self._names is None or tuple(names) != self._names:
            self._names = tuple(names)
            missing = [f for f in feats if f not in self._names]
            if missing:
                raise ValueError(f"bandit.context_features: {missing} are not in the feature spec")
            self._cols = [self._names.index(f) for f in feats]
        extra = []
        for col in self._cols:
            v = float(row[col])
            extra.append(math.log1p(v) if math.isfinite(v) and v > 0 else 0.0)
        return base + tuple(extra)

    def posterior(
        self, action_ids: Sequence[str], context: Sequence[float]
    ) -> tuple[list[float], list[float]]:
        """Mean and standard deviation of each action's expected reward (noise excluded)."""
        prior_var = sum(v * v for v in context) / self.config.prior_precision
        means: list[float] = []
        stds: list[float] = []
        for a in action_ids:
            post = self._posts.get(a)
            mean, var = (0.0, prior_var) if post is None else post.predict(context)
            means.append(mean if math.isfinite(mean) else 0.0)
            stds.append(math.sqrt(var) if math.isfinite(var) and var > 0 else 0.0)
        return means, stds

    def estimates(self, action_ids: Sequence[str], context: Sequence[float]) -> list[float]:
        """Deterministic acceptance estimates for ``action_ids``, clipped to [MIN_ACCEPTANCE, 1].

        ``linucb``: the upper confidence bound; ``thompson``: the posterior
        mean (its choices use :meth:`thompson_draws`); ``none``: 1.0.
        """
        kind = self.config.kind
        if kind == "none":
            return [1.0] * len(action_ids)
        means, stds = self.posterior(action_ids, context)
        alpha = self.config.ucb_alpha if kind == "linucb" else 0.0
        return [
            min(1.0, max(MIN_ACCEPTANCE, m + alpha * sd)) for m, sd in zip(means, stds, strict=True)
        ]

    def thompson_draws(
        self, action_ids: Sequence[str], context: Sequence[float], rng: np.random.Generator
    ) -> NDArray[np.float64]:
        """``thompson_draws`` posterior draws of every action's acceptance, shape ``(n, k)``."""
        means, stds = self.posterior(action_ids, context)
        n = self.config.thompson_draws
        draws = np.asarray(means) + np.asarray(stds) * rng.standard_normal((n, len(action_ids)))
        clipped: NDArray[np.float64] = np.clip(draws, MIN_ACCEPTANCE, 1.0)
        return clipped

    def update(self, action_id: str, context: Sequence[float], reward: float) -> None:
        """Learn one reward of ``action_id`` in ``context``."""
        if len(context) != len(self.context_names):
            raise ValueError(
                f"context: expected {len(self.context_names)} values, got {len(context)}"
            )
        post = self._posts.get(action_id)
        if post is None:
            post = _Posterior(len(self.context_names), self.config.prior_precision)
            self._posts[action_id] = post
        post.learn(
            np.asarray(context, dtype=np.float64), float(reward), self.config.noise_precision
        )
        self.updates[action_id] = self.updates.get(action_id, 0) + 1
        self.rewards[action_id] = self.rewards.get(action_id, 0.0) + float(reward)

    def acceptance_rate(self, action_id: str) -> float:
        """Observed mean reward of ``action_id`` (NaN before its first feedback)."""
        n = self.updates.get(action_id, 0)
        return self.rewards.get(action_id, 0.0) / n if n else math.nan

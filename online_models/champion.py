"""Champion, shadow challenger and drift detection around :class:`IntentModel`.

A :class:`ModelSet` is what a shard scores with. It serves the *champion*;
an optional *challenger* learns the same labels in shadow and is promoted
when it beats the champion on the progressive metric by a margin. The
champion's progressive loss (the Brier score of each labelled row) feeds a
drift detector (River ``ADWIN``);
a drift is counted and logged, and, by configuration, starts a fresh
champion (``on_drift = "reset"``) or a challenger (``"challenger"``).

Everything happens in :meth:`ModelSet.learn_batch`, which the shard calls
only at its event-time learning ticks, so the served model, promotions and
resets depend on event times alone, never on batch boundaries.

>>> import numpy as np
>>> models = ModelSet(ModelConfig(warmup_labels=4, challenger="hoeffding"))
>>> X = np.array([[5.0, 1.0], [0.0, 2.0], [6.0, 0.0], [1.0, 1.0]])
>>> models.learn_batch(X, np.array([True, False, True, False]), ("a", "b"))
4
>>> models.version, models.challenger_version
('logreg-...-n4', 'hoeffding-...-g1-n4')
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar, Final

import numpy as np
from numpy.typing import NDArray
from river import drift

from intentflow.errors import SnapshotMismatchError
from intentflow.online_models.model import (
    FloatArray,
    IntentModel,
    ModelConfig,
    Reason,
    rank_auc,
    window_metric,
)

__all__ = ["HISTORY", "ModelSet", "rank_auc"]

log = logging.getLogger(__name__)

#: Drift, reset and promotion records kept in :attr:`ModelSet.history`.
HISTORY: Final[int] = 50


class ModelSet:
    """The champion that scores, an optional shadow challenger, and drift detection.

    It has the scoring interface of :class:`IntentModel` (``score_batch``,
    ``learn_batch``, ``ready``, ``version``, ``name``, ``explain``,
    ``metrics``), always answered by the champion. ``initial`` warm-starts
    the champion from a copy of an exported model (see
    :mod:`intentflow.online_models.modelfile`); it must be of the configured
    kind, and it takes the configuration's learning settings.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    def __init__(
        self,
        config: ModelConfig | None = None,
        spec_hash: str | None = None,
        initial: IntentModel | None = None,
    ) -> None:
        self.config = config if config is not None else ModelConfig()
        self._spec_hash = spec_hash
        self._generations = 0
        if initial is not None:
            if initial.config.kind != self.config.kind:
                raise SnapshotMismatchError(
                    f"the model file holds a {initial.config.kind!r} model, the configuration "
                    f"asks for {self.config.kind!r}: set model.kind = {initial.config.kind!r} "
                    "or start without the model file"
                )
            if spec_hash and initial.feature_spec_hash and initial.feature_spec_hash != spec_hash:
                raise SnapshotMismatchError(
                    f"the model file was trained on feature spec {initial.feature_spec_hash}, "
                    f"the configuration has {spec_hash}: export a model trained with this "
                    "feature spec, or start without the model file"
                )
            self.champion = copy.deepcopy(initial)
            self.champion.retune(self.config)
            self._generations = self.champion.generation
        else:
            self.champion = IntentModel(self.config, spec_hash)
        self.counts: dict[str, int] = dict.fromkeys(
            ("drifts", "improvements", "resets", "challengers", "promotions"), 0
        )
        self.history: list[dict[str, Any]] = []
        self.challenger: IntentModel | None = None
        if self.config.challenger:
            self.challenger = self._new_model(self.config.challenger)
            self.counts["challengers"] += 1
        self._detector: Any = self._new_detector()
        window = self.config.metrics_window
        self._pair_y = np.zeros(window, dtype=bool)
        self._pair_champion = np.zeros(window)
        self._pair_challenger = np.zeros(window)
        self._pair_next = 0
        self._pair_size = 0
        self._pair_total = 0

    # -- building blocks --------------------------------------------------------------------
    def _new_model(self, kind: str) -> IntentModel:
        self._generations += 1
        cfg = replace(self.config, kind=kind)
        model = IntentModel(cfg, self._spec_hash or self.champion.feature_spec_hash or None)
        model.generation = self._generations
        return model

    def _new_detector(self) -> Any:
        if self.config.drift == "adwin":
            return drift.ADWIN(delta=self.config.drift_delta)  # type: ignore[no-untyped-call]
        return None

    def _reset_pairs(self) -> None:
        self._pair_next = 0
        self._pair_size = 0
        self._pair_total = 0

    def _record(self, kind: str, **fields: Any) -> None:
        self.history.append({"event": kind, **fields})
        del self.history[:-HISTORY]

    # -- scoring interface (the champion) ---------------------------------------------------
    @property
    def name(self) -> str:
        """The champion's kind."""
        return self.champion.name

    @property
    def version(self) -> str:
        """The champion's version: the model that scores (and names every alert)."""
        return self.champion.version

    @property
    def challenger_version(self) -> str | None:
        """The shadow challenger's version, or None when no challenger runs."""
        return None if self.challenger is None else self.challenger.version

    @property
    def ready(self) -> bool:
        """Whether the champion has warmed up."""
        return self.champion.ready

    @property
    def feature_spec_hash(self) -> str:
        return self.champion.feature_spec_hash

    @property
    def feature_names(self) -> tuple[str, ...] | None:
        return self.champion.feature_names

    @property
    def n_learned(self) -> int:
        """Rows the champion has learned."""
        return self.champion.n_learned

    def score_batch(self, X: FloatArray, names: Sequence[str]) -> FloatArray:
        """The champion's scores (see :meth:`IntentModel.score_batch`)."""
        return self.champion.score_batch(X, names)

    def explain(
        self,
        x_row: FloatArray,
        names: Sequence[str],
        descriptions: Sequence[str],
        top_k: int | None = None,
    ) -> list[Reason]:
        """The champion's reason codes (see :meth:`IntentModel.explain`)."""
        return self.champion.explain(x_row, names, descriptions, top_k)

    # -- learning ---------------------------------------------------------------------------
    def learn_batch(self, X: FloatArray, y: NDArray[np.bool_], names: Sequence[str]) -> int:
        """Validate and learn with every model, then check for drift and promotion.

        Returns the rows the champion learned (before any reset or promotion
        that this batch caused).
        """
        done = self.champion.learn_scored(X, y, names)
        shadow = None if self.challenger is None else self.challenger.learn_scored(X, y, names)
        if done.scores is not None and shadow is not None and shadow.scores is not None:
            self._add_pairs(done.labels, done.scores, shadow.scores)
        drifted = False
        detector = self._detector
        if detector is not None and done.scores is not None and self.champion.ready:
            # The Brier loss of each row: bounded in [0, 1], as ADWIN's bound assumes
            # (the log loss of rare positives is heavy-tailed and raises false alarms).
            losses = (done.scores - done.labels) ** 2
            for loss in losses.tolist():
                before = float(detector.estimation)
                detector.update(loss)
                if detector.drift_detected:
                    # ADWIN flags any change of the mean; only a higher loss is a drift.
                    if float(detector.estimation) > before:
                        drifted = True
                    else:
                        self.counts["improvements"] += 1
        if drifted:
            self._on_drift()
        self._maybe_promote()
        return done.n_learned

    def _add_pairs(self, y: NDArray[np.bool_], champ: FloatArray, chal: FloatArray) -> None:
        window = self._pair_y.shape[0]
        for label, a, b in zip(y.tolist(), champ.tolist(), chal.tolist(), strict=True):
            i = self._pair_next
            self._pair_y[i], self._pair_champion[i], self._pair_challenger[i] = label, a, b
            self._pair_next = (i + 1) % window
        self._pair_size = min(window, self._pair_size + y.shape[0])
        self._pair_total += y.shape[0]

    def _on_drift(self) -> None:
        self.counts["drifts"] += 1
        action = self.config.on_drift
        version = self.champion.version
        self._record("drift", model=version, action=action, labels=self.champion.n_learned)
        log.warning(
            "drift: the progressive loss of model %s rose (%d labels learned); action: %s",
            version,
            self.champion.n_learned,
            action,
        )
        if action == "reset":
            self.champion = self._new_model(self.config.kind)
            self.counts["resets"] += 1
            self._detector = self._new_detector()
            self._reset_pairs()
            self._record("reset", model=self.champion.version, replaces=version)
        elif action == "challenger" and self.challenger is None:
            self.challenger = self._new_model(self.config.challenger or self.config.kind)
            self.counts["challengers"] += 1
            self._reset_pairs()
            self._record("challenger", model=self.challenger.version)

    def comparison(self) -> dict[str, float]:
        """Champion and challenger on the labels both have scored since the challenger started.

        Keys ``champion_{metric}``, ``challenger_{metric}`` for auc, log_loss
        and brier, and ``shared`` (labels in the comparison window).
        """
        size = self._pair_size
        y = self._pair_y[:size]
        out: dict[str, float] = {"shared": float(size)}
        roles = (("champion", self._pair_champion), ("challenger", self._pair_challenger))
        for metric in ("auc", "log_loss", "brier"):
            for role, p in roles:
                out[f"{role}_{metric}"] = window_metric(metric, y, p[:size]) if size else math.nan
        return out

    def _maybe_promote(self) -> None:
        chal = self.challenger
        cfg = self.config
        if chal is None or not chal.ready or self._pair_size < cfg.promote_min_labels:
            return
        cmp = self.comparison()
        metric = cfg.promote_metric
        champ_value, chal_value = cmp[f"champion_{metric}"], cmp[f"challenger_{metric}"]
        if not (math.isfinite(champ_value) and math.isfinite(chal_value)):
            return
        gain = chal_value - champ_value if metric == "auc" else champ_value - chal_value
        if gain < cfg.promote_margin:
            return
        old = self.champion.version
        self.champion, self.challenger = chal, None
        self.counts["promotions"] += 1
        self._detector = self._new_detector()
        self._reset_pairs()
        self._record(
            "promotion",
            model=self.champion.version,
            replaces=old,
            metric=metric,
            champion=champ_value,
            challenger=chal_value,
        )
        log.warning(
            "challenger %s promoted over %s: %s %.4f vs %.4f",
            self.champion.version,
            old,
            metric,
            chal_value,
            champ_value,
        )

    # -- reporting --------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """The champion's progressive metrics, the drift and promotion counts, and the
        champion/challenger comparison (``challenger_*`` NaN without a challenger)."""
        out = self.champion.metrics()
        for key, value in self.counts.items():
            out[key] = float(value)
        if self.challenger is None:
            out.update({f"challenger_{m}": math.nan for m in ("auc", "log_loss", "brier")})
            out["shared"] = 0.0
        else:
            cmp = self.comparison()
            out.update({k: v for k, v in cmp.items() if not k.startswith("champion_")})
        return out

"""Further label definitions that run side by side with the primary one.

The primary definition (``[labels]``) teaches the model that scores and
alerts. Each ``[[labels.extra]]`` definition, for example "accepts a call
within 1 h" or "buys within 14 d", gets its own :class:`LabelBook` and its
own :class:`IntentModel` of the configured kind (no challenger, no drift
handling). They see the same decision points (every scored event, with their
own decimation), learn at the same event-time ticks, and their scores are
reported next to the primary score in each alert (``scores``).

>>> import numpy as np
>>> from intentflow.events import Event
>>> primary = LabelConfig.from_dict(
...     {"extra": [{"name": "accepts_1h", "horizon_ms": 3_600_000, "conversion_types": [],
...                 "conversion_outcome_results": ["accepted"]}]}
... )
>>> side = SideTargets(primary, ModelConfig(warmup_labels=1))
>>> side.names
('accepts_1h',)
>>> events = [Event("e1", 1_000, "c-1", "page_view"),
...           Event("e2", 2_000, "c-1", "outcome", props={"result": "accepted"})]
>>> side.process_segment(events, np.zeros((2, 1)), 0, 2, ("x",))
>>> side.books[0].stats()["positives"]
1
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from intentflow.events import Event
from intentflow.online_models.labels import LabelBook, LabelConfig, Labels, labels_list
from intentflow.online_models.model import FloatArray, IntentModel, ModelConfig

__all__ = ["SideTargets"]


class SideTargets:
    """The ``extra`` label definitions of a :class:`LabelConfig`, each with a book and a model.

    Picklable; empty (and free) when there are no extra definitions.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    def __init__(
        self, labels: LabelConfig, model: ModelConfig, spec_hash: str | None = None
    ) -> None:
        cfg = replace(model, challenger="", drift="none", on_drift="log")
        self.configs: tuple[LabelConfig, ...] = labels.extra
        self.books = [LabelBook(c) for c in labels.extra]
        self.models = [IntentModel(cfg, spec_hash) for _ in labels.extra]
        self._matured: list[list[Labels]] = [[] for _ in labels.extra]

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)  # a snapshot before labels were columnar holds Matured
        self._matured = [labels_list(m, 0) for m in self._matured]

    @property
    def names(self) -> tuple[str, ...]:
        """The definitions' names, in configuration order."""
        return tuple(c.name for c in self.configs)

    def __bool__(self) -> bool:
        return bool(self.books)

    def process_segment(
        self,
        events: Sequence[Event],
        feats: FloatArray,
        a: int,
        b: int,
        names: Sequence[str],
        only: frozenset[str] | None = None,
    ) -> None:
        """Events ``a:b`` in order: conversions resolve points, scored events are observed.

        Outcome events are never decision points, nor are events whose type
        is not in ``only`` (when given). One scoring call per definition for
        the segment (the models change only at ticks).
        """
        if not self.books or a >= b:
            return
        for k, (cfg, book, model) in enumerate(
            zip(self.configs, self.books, self.models, strict=True)
        ):
            scores = model.score_batch(feats[a:b], names).tolist()
            matured = self._matured[k]
            is_conversion = cfg.is_conversion
            start = a  # events start:j are recorded in one call before a conversion
            for j in range(a, b):
                ev = events[j]
                if is_conversion(ev):
                    self._observe(book, events, feats, start, j, a, scores, only)
                    start = j
                    positives = book.on_conversion(ev.entity_id, ev.ts_ms)
                    if len(positives):
                        matured.append(positives)
            self._observe(book, events, feats, start, b, a, scores, only)

    @staticmethod
    def _observe(
        book: LabelBook,
        events: Sequence[Event],
        feats: FloatArray,
        start: int,
        stop: int,
        a: int,
        scores: list[float],
        only: frozenset[str] | None,
    ) -> None:
        """Record events ``start:stop`` that are decision points (``scores`` start at ``a``)."""
        rows = [
            j
            for j in range(start, stop)
            if events[j].type != "outcome" and (only is None or events[j].type in only)
        ]
        if rows:
            book.observe_many(
                [events[j].entity_id for j in rows],
                [events[j].ts_ms for j in rows],
                feats,
                rows,
                [scores[j - a] for j in rows],
            )

    def tick(self, watermark_ms: int, names: Sequence[str]) -> int:
        """Expire negatives and learn every matured label; returns labels learned."""
        learned = 0
        for k, (book, model) in enumerate(zip(self.books, self.models, strict=True)):
            matured = Labels.concat([*self._matured[k], book.expire(watermark_ms)], len(names))
            if not len(matured):
                continue
            self._matured[k] = []
            learned += model.learn_batch(matured.X, matured.y, names)
        return learned

    def score_row(self, row: FloatArray, names: Sequence[str]) -> dict[str, float]:
        """Each definition's score of one feature row (for an alert)."""
        x = np.asarray(row, dtype=np.float64).reshape(1, -1)
        return {
            cfg.name: round(float(model.score_batch(x, names)[0]), 6)
            for cfg, model in zip(self.configs, self.models, strict=True)
        }

    def evict_entity(self, entity_id: str) -> int:
        """Forget an entity's pending points in every book."""
        return sum(book.evict_entity(entity_id) for book in self.books)

    def metrics(self) -> dict[str, dict[str, float]]:
        """Per definition: its model's progressive metrics and its label delays."""
        out: dict[str, dict[str, float]] = {}
        for cfg, book, model in zip(self.configs, self.books, self.models, strict=True):
            m = model.metrics()
            delays = book.delay_stats()
            m["label_delay_mean_ms"] = delays["mean_ms"]
            m["pending"] = float(book.n_pending)
            out[cfg.name] = {k: (v if math.isfinite(v) else math.nan) for k, v in m.items()}
        return out

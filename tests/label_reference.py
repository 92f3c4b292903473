"""The label book as it was before its points moved into arrays, used only by tests.

One Python tuple per pending point, a heap for expiry, one :class:`Matured`
per label: slow, and simple enough to read at a glance. Its ``__dict__`` is
the state a schema 3 book pickled, so it also writes "old snapshots" for the
migration tests.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from intentflow.online_models.labels import DELAY_WINDOW, LabelConfig, Matured

FloatArray = NDArray[np.float64]

# (seq, decision ts, feature row, score): one pending decision point.
_Point = tuple[int, int, FloatArray, float]
# (decision ts, seq, positive): a positive held until its horizon has passed.
_Held = tuple[int, int, Matured]


class ReferenceLabelBook:
    """Pending decision points of one shard, bounded and picklable (schema 3).

    The clock is the *watermark*: the largest event time passed to
    :meth:`observe`, :meth:`on_conversion` or :meth:`expire`. It never moves
    back. Points expire (become negatives) when ``ts + horizon_ms <
    watermark``; a point whose horizon already ended when it arrives is
    refused as late.

    With ``hold_first_horizon`` (the default), positives of points from the
    first horizon after the book's first point are returned by
    :meth:`expire` once the point's own horizon has passed, in decision
    order with the negatives, instead of by :meth:`on_conversion`.
    """

    SCHEMA_VERSION: ClassVar[int] = 3

    def __init__(self, config: LabelConfig | None = None) -> None:
        self.config = config if config is not None else LabelConfig()
        self._pending: dict[str, list[_Point]] = {}
        self._heap: list[tuple[int, int, str]] = []  # (ts, seq, entity); stale entries skipped
        self._seq = 0
        self._n_pending = 0
        self._n_features: int | None = None
        self.watermark_ms: int | None = None
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "observed",
                "decimated",
                "bounded",
                "late",
                "positives",
                "negatives",
                "evicted",
                "late_conversions",
                "held",
            ),
            0,
        )
        self._delays = np.zeros(DELAY_WINDOW, dtype=np.int64)
        self._delay_next = 0
        self._delay_size = 0
        # points with a smaller decision time have their positives held (None: none)
        self._hold_until: int | None = None
        self._held: list[_Held] = []  # a heap

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "_held" not in state:  # schema 2: written before positives could be held
            self._hold_until = None
            self._held = []
            self.counts.setdefault("held", 0)

    @property
    def n_pending(self) -> int:
        """Decision points waiting for a label."""
        return self._n_pending

    @property
    def n_held(self) -> int:
        """Positives held until their horizon has passed (``hold_first_horizon``)."""
        return len(self._held)

    @property
    def n_entities(self) -> int:
        """Entities with at least one pending point."""
        return len(self._pending)

    def pending(self, entity_id: str) -> int:
        """Pending points of one entity."""
        return len(self._pending.get(entity_id, ()))

    def _advance(self, ts_ms: int) -> None:
        if self.watermark_ms is None or ts_ms > self.watermark_ms:
            self.watermark_ms = ts_ms

    def observe(self, entity_id: str, ts_ms: int, features_row: FloatArray, score: float) -> bool:
        """Record a decision point; False when decimated, late or over a bound.

        Decimated: the entity has a pending point less than ``min_gap_ms``
        away. Bounded: ``max_pending_per_entity`` or ``max_pending_total``
        reached (the new point is refused, older ones keep their place).
        """
        ts = int(ts_ms)
        cfg = self.config
        watermark = self.watermark_ms
        if watermark is None or ts > watermark:
            self.watermark_ms = watermark = ts
        elif ts + cfg.horizon_ms < watermark:
            self.counts["late"] += 1
            return False
        points = self._pending.get(entity_id)
        if points is not None:
            gap = cfg.min_gap_ms
            for p in points:
                if abs(ts - p[1]) < gap:
                    self.counts["decimated"] += 1
                    return False
            if len(points) >= cfg.max_pending_per_entity:
                self.counts["bounded"] += 1
                return False
        if self._n_pending >= cfg.max_pending_total:
            self.counts["bounded"] += 1
            return False
        if type(features_row) is np.ndarray and features_row.ndim == 1:
            row = features_row.astype(np.float64)  # always a copy
        else:
            row = np.array(features_row, dtype=np.float64, copy=True).reshape(-1)
        if self._n_features is None:
            self._n_features = row.shape[0]
        elif row.shape[0] != self._n_features:
            raise ValueError(
                f"features_row: expected {self._n_features} values, got {row.shape[0]}"
            )
        seq = self._seq
        if seq == 0 and cfg.hold_first_horizon:  # the book's first point
            self._hold_until = watermark + cfg.horizon_ms  # from the new watermark
        self._seq += 1
        self._pending.setdefault(entity_id, []).append((seq, ts, row, float(score)))
        heapq.heappush(self._heap, (ts, seq, entity_id))
        self._n_pending += 1
        self.counts["observed"] += 1
        return True

    def on_conversion(self, entity_id: str, ts_ms: int) -> list[Matured]:
        """Positives: the entity's pending points with ts in ``[ts - horizon, ts)``."""
        ts = int(ts_ms)
        if self.watermark_ms is not None and ts < self.watermark_ms:
            self.counts["late_conversions"] += 1
        self._advance(ts)
        points = self._pending.get(entity_id)
        if not points:
            return []
        low = ts - self.config.horizon_ms
        hit = [p for p in points if low <= p[1] < ts]
        if not hit:
            return []
        keep = [p for p in points if not low <= p[1] < ts]
        if keep:
            self._pending[entity_id] = keep
        else:
            del self._pending[entity_id]
        self._n_pending -= len(hit)
        self.counts["positives"] += len(hit)
        hit.sort(key=lambda p: (p[1], p[0]))
        for p in hit:
            self._delays[self._delay_next] = ts - p[1]
            self._delay_next = (self._delay_next + 1) % DELAY_WINDOW
        self._delay_size = min(DELAY_WINDOW, self._delay_size + len(hit))
        until = self._hold_until
        if until is None or hit[0][1] >= until:
            return [Matured(entity_id, p[1], ts, p[2], p[3], True) for p in hit]
        out: list[Matured] = []
        for p in hit:
            m = Matured(entity_id, p[1], ts, p[2], p[3], True)
            if p[1] < until:
                heapq.heappush(self._held, (p[1], p[0], m))
                self.counts["held"] += 1
            else:
                out.append(m)
        return out

    def delay_stats(self) -> dict[str, float]:
        """Label delay of the last :data:`DELAY_WINDOW` positives (conversion minus
        decision time, ms): ``mean_ms``, ``p50_ms``, ``p90_ms`` (NaN before the
        first positive) and ``window``. A negative's delay is always the horizon."""
        size = self._delay_size
        if size == 0:
            return {"mean_ms": math.nan, "p50_ms": math.nan, "p90_ms": math.nan, "window": 0.0}
        d = self._delays[:size]
        return {
            "mean_ms": float(d.mean()),
            "p50_ms": float(np.percentile(d, 50)),
            "p90_ms": float(np.percentile(d, 90)),
            "window": float(size),
        }

    def _live(self, seq: int, entity_id: str) -> _Point | None:
        for p in self._pending.get(entity_id, ()):
            if p[0] == seq:
                return p
        return None

    def _drop_stale_top(self) -> None:
        heap = self._heap
        while heap and self._live(heap[0][1], heap[0][2]) is None:
            heapq.heappop(heap)

    def expire(self, now_ms: int) -> list[Matured]:
        """Negatives: points with ``ts + horizon < watermark``, oldest first.

        ``now_ms`` is the shard's latest event time; it advances the watermark.
        Held positives whose horizon has passed come with them, in decision
        order (ties: the order the points were observed).
        """
        self._advance(int(now_ms))
        watermark = self.watermark_ms
        assert watermark is not None
        horizon = self.config.horizon_ms
        out: list[Matured] = []
        seqs: list[int] = []
        heap = self._heap
        while heap and heap[0][0] + horizon < watermark:
            ts, seq, entity_id = heapq.heappop(heap)
            point = self._live(seq, entity_id)
            if point is None:
                continue
            points = self._pending[entity_id]
            points.remove(point)
            if not points:
                del self._pending[entity_id]
            out.append(Matured(entity_id, ts, ts + horizon, point[2], point[3], False))
            seqs.append(seq)
        self._n_pending -= len(out)
        self.counts["negatives"] += len(out)
        self._compact()
        if self._hold_until is not None:
            out = self._release(out, seqs, watermark - horizon, self._hold_until)
        return out

    def _release(
        self, negatives: list[Matured], seqs: list[int], before: int, until: int
    ) -> list[Matured]:
        """``negatives`` and the held positives with decision time below ``before``,
        in decision order (ties: observation order)."""
        held = self._held
        if held and held[0][0] < before:
            released: list[_Held] = []
            while held and held[0][0] < before:
                released.append(heapq.heappop(held))
            keyed = zip([m.decision_ts_ms for m in negatives], seqs, negatives, strict=True)
            merged = heapq.merge(keyed, released, key=lambda x: (x[0], x[1]))
            negatives = [m for _, _, m in merged]
        if not held and before >= until:  # every point of the first horizon is labelled
            self._hold_until = None
        return negatives

    def next_deadline_ms(self) -> int | None:
        """The smallest watermark at which :meth:`expire` matures something."""
        self._drop_stale_top()
        tops = [q[0][0] for q in (self._heap, self._held) if q]
        if not tops:
            return None
        return min(tops) + self.config.horizon_ms + 1

    def evict_entity(self, entity_id: str) -> int:
        """Forget an entity's pending points (unlabelled); returns how many."""
        points = self._pending.pop(entity_id, None)
        if not points:
            return 0
        self._n_pending -= len(points)
        self.counts["evicted"] += len(points)
        self._compact()
        return len(points)

    def _compact(self) -> None:
        """Rebuild the heap when stale entries outnumber live ones."""
        if len(self._heap) > 2 * self._n_pending + 1024:
            self._heap = [(p[1], p[0], e) for e, pts in self._pending.items() for p in pts]
            heapq.heapify(self._heap)

    def stats(self) -> dict[str, int]:
        """Counters since creation plus the current ``pending``, ``entities`` and
        ``holding`` (positives held, see ``hold_first_horizon``)."""
        return {
            **self.counts,
            "pending": self._n_pending,
            "entities": len(self._pending),
            "holding": len(self._held),
        }

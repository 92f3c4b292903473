"""Delayed labels: decision points wait for a conversion or for the horizon.

A *decision point* is a moment at which an entity was scored (and could have
been alerted). It becomes a positive when the entity converts within
``horizon_ms`` of event time after it, and a negative once the shard's
watermark (the latest event time it has seen) passes that horizon without a
conversion. Matured points are the training rows of the model.

>>> import numpy as np
>>> book = LabelBook(LabelConfig(horizon_ms=1_000, min_gap_ms=100))
>>> book.observe("c-1", 0, np.array([1.0, 2.0]), 0.3)
True
>>> book.observe("c-1", 50, np.array([1.0, 2.0]), 0.3)  # within min_gap: decimated
False
>>> book.observe("c-2", 10, np.array([0.0, 0.0]), 0.1)
True
>>> len(book.on_conversion("c-1", 400))  # a positive of the first horizon: held
0
>>> book.next_deadline_ms()
1001
>>> [(m.entity_id, m.label, m.delay_ms) for m in book.expire(1_011)]
[('c-1', True, 400), ('c-2', False, 1000)]
>>> book.observe("c-3", 1_100, np.array([0.5, 0.5]), 0.6)
True
>>> [(m.entity_id, m.label, m.delay_ms) for m in book.on_conversion("c-3", 1_300)]
[('c-3', True, 200)]
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Final, cast

import numpy as np
from numpy.typing import NDArray

from intentflow.errors import ConfigError
from intentflow.events import Event
from intentflow.online_models._validate import InvalidFieldError, build_dataclass, require_table

__all__ = ["LabelBook", "LabelConfig", "Labels", "Matured", "labels_list"]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

#: Positive label delays kept for :meth:`LabelBook.delay_stats`.
DELAY_WINDOW: Final[int] = 1000


@dataclass(frozen=True)
class LabelConfig:
    """How decision points are recorded and labelled (all times are event time, ms).

    ``horizon_ms`` defaults to 30 minutes: three times the ~10-minute
    journeys of the synthetic generator, so a purchase at the end of a
    journey still labels its early decision points, while negatives mature
    soon enough to be learned during a short run.

    ``hold_first_horizon``: a positive whose decision point falls in the
    book's first horizon (from its first decision point) is held back until
    that point's horizon has passed, when the negatives of its time mature
    too. Without it, a fresh shard learns only positives for one horizon
    (negatives cannot mature earlier), and its model scores nearly every
    entity above the threshold once it becomes ready.

    ``name`` names the definition (the model's target). ``conversion_actions``
    restricts outcome conversions to outcomes of these actions (empty: any).
    ``extra`` holds further definitions that run side by side, each with
    its own pending points and model (``[[labels.extra]]`` tables; see
    :class:`~intentflow.online_models.targets.SideTargets`).
    """

    horizon_ms: int = 30 * 60 * 1000
    conversion_types: tuple[str, ...] = ("purchase",)
    conversion_outcome_results: tuple[str, ...] = ("converted",)
    max_pending_per_entity: int = 4
    max_pending_total: int = 200_000
    min_gap_ms: int = 60_000
    name: str = "converts"
    conversion_actions: tuple[str, ...] = ()
    hold_first_horizon: bool = True
    extra: tuple[LabelConfig, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise InvalidFieldError(
                "name", f"must be letters, digits and underscores, got {self.name!r}"
            )
        if not self.conversion_types and not self.conversion_outcome_results:
            raise InvalidFieldError(
                "conversion_types",
                "give conversion_types or conversion_outcome_results: nothing would convert",
            )
        if self.horizon_ms < 1:
            raise InvalidFieldError("horizon_ms", f"must be >= 1, got {self.horizon_ms!r}")
        if self.min_gap_ms < 0:
            raise InvalidFieldError("min_gap_ms", f"must be >= 0, got {self.min_gap_ms!r}")
        for key in ("max_pending_per_entity", "max_pending_total"):
            if getattr(self, key) < 1:
                raise InvalidFieldError(key, f"must be >= 1, got {getattr(self, key)!r}")

    @classmethod
    def from_dict(cls, data: object, where: str = "labels") -> LabelConfig:
        """Build from a TOML table; a :class:`ConfigError` names the bad key.

        ``extra`` (a list of tables, ``[[labels.extra]]``) holds further
        definitions; each needs its own ``name``, and names are unique.
        """
        table: Mapping[str, Any] = require_table(data, where)
        extra_raw = table.get("extra", [])
        base = build_dataclass(cls, {k: v for k, v in table.items() if k != "extra"}, where)
        if not isinstance(extra_raw, list):
            raise ConfigError(f"{where}.extra: expected a list of tables ([[{where}.extra]])")
        extra: list[LabelConfig] = []
        names = [base.name]
        for i, entry in enumerate(extra_raw):
            at = f"{where}.extra[{i}]"
            entry_table = require_table(entry, at)
            if "extra" in entry_table:
                raise ConfigError(f"{at}.extra: extra definitions cannot nest")
            if "name" not in entry_table:
                raise ConfigError(f"{at}.name: every extra label definition needs a name")
            item = build_dataclass(cls, entry_table, at)
            if item.name in names:
                raise ConfigError(f"{at}.name: duplicate label name {item.name!r}")
            names.append(item.name)
            extra.append(item)
        if not extra:
            return base
        return replace(base, extra=tuple(extra))

    def is_conversion(self, event: Event) -> bool:
        """A conversion: a ``conversion_types`` event, or an ``outcome`` whose
        ``props.result`` is in ``conversion_outcome_results`` (and, when
        ``conversion_actions`` is given, whose ``props.action`` is one of them)."""
        if event.type in self.conversion_types:
            return True
        if event.type != "outcome":
            return False
        props = event.props
        if props.get("result") not in self.conversion_outcome_results:
            return False
        return not self.conversion_actions or props.get("action") in self.conversion_actions


@dataclass(slots=True)
class Matured:
    """One decision point whose label is known (a value: never modify one).

    ``label_ts_ms`` is when the label became known in event time: the
    conversion for a positive, ``decision_ts_ms + horizon_ms`` for a negative.
    The book returns matured points column by column (:class:`Labels`);
    iterating over a :class:`Labels` gives them one by one as this class.
    Snapshots written before that held lists of it, and still load: it
    pickles as the frozen dataclass it once was (the field values in order).
    """

    entity_id: str
    decision_ts_ms: int
    label_ts_ms: int
    features: FloatArray
    score: float
    label: bool

    def __getstate__(self) -> list[Any]:
        return [getattr(self, f) for f in self.__slots__]

    def __setstate__(self, state: Sequence[Any]) -> None:
        for f, value in zip(self.__slots__, state, strict=True):
            setattr(self, f, value)

    @property
    def delay_ms(self) -> int:
        """Label delay: conversion time (or horizon end) minus decision time."""
        return self.label_ts_ms - self.decision_ts_ms


@dataclass(frozen=True, eq=False)
class Labels:
    """Matured decision points, column by column, in the order they matured.

    ``X`` (one feature row per point) and ``y`` (the labels) are what
    :meth:`IntentModel.learn_batch` takes. A value: never modify one.

    >>> import numpy as np
    >>> book = LabelBook(LabelConfig(horizon_ms=1_000, min_gap_ms=0, hold_first_horizon=False))
    >>> X = np.array([[1.0, 2.0], [3.0, 4.0]])
    >>> book.observe_many(["a", "b"], [0, 5], X, [0, 1], [0.2, 0.7])
    2
    >>> got = Labels.concat([book.on_conversion("b", 500), book.expire(1_001)], n_features=2)
    >>> got.entity_ids, got.y.tolist(), got.delay_ms.tolist(), got.X.tolist()
    (('b', 'a'), [True, False], [495, 1000], [[3.0, 4.0], [1.0, 2.0]])
    """

    entity_ids: tuple[str, ...]
    decision_ts_ms: IntArray
    label_ts_ms: IntArray
    X: FloatArray
    scores: FloatArray
    y: BoolArray

    def __len__(self) -> int:
        return len(self.entity_ids)

    def __iter__(self) -> Iterator[Matured]:
        d, t, s, y = (
            a.tolist() for a in (self.decision_ts_ms, self.label_ts_ms, self.scores, self.y)
        )
        for i, entity_id in enumerate(self.entity_ids):
            yield Matured(entity_id, d[i], t[i], self.X[i].copy(), s[i], y[i])

    @property
    def delay_ms(self) -> IntArray:
        """Label delays: conversion time (or horizon end) minus decision time."""
        return self.label_ts_ms - self.decision_ts_ms

    @classmethod
    def empty(cls, n_features: int) -> Labels:
        """No points, with rows of ``n_features`` values (one shared, read-only value)."""
        return _empty_labels(n_features)

    @classmethod
    def concat(cls, parts: Sequence[Labels], n_features: int) -> Labels:
        """The points of ``parts``, in order (empty parts may have any row length)."""
        full = [p for p in parts if len(p)]
        if not full:
            return cls.empty(n_features)
        if len(full) == 1:
            return full[0]
        return cls(
            tuple(e for p in full for e in p.entity_ids),
            np.concatenate([p.decision_ts_ms for p in full]),
            np.concatenate([p.label_ts_ms for p in full]),
            np.concatenate([p.X for p in full]),
            np.concatenate([p.scores for p in full]),
            np.concatenate([p.y for p in full]),
        )

    @classmethod
    def from_matured(cls, items: Sequence[Matured], n_features: int) -> Labels:
        """Stack :class:`Matured` points (snapshots of earlier versions hold lists of them)."""
        if not items:
            return cls.empty(n_features)
        return cls(
            tuple(m.entity_id for m in items),
            np.array([m.decision_ts_ms for m in items], dtype=np.int64),
            np.array([m.label_ts_ms for m in items], dtype=np.int64),
            np.array([np.asarray(m.features, dtype=np.float64) for m in items]).reshape(
                len(items), -1
            ),
            np.array([m.score for m in items], dtype=np.float64),
            np.array([m.label for m in items], dtype=np.bool_),
        )

    def take(self, idx: NDArray[np.intp]) -> Labels:
        """The points at ``idx``, in that order."""
        ids = self.entity_ids
        return Labels(
            tuple(ids[i] for i in idx.tolist()),
            self.decision_ts_ms[idx],
            self.label_ts_ms[idx],
            self.X[idx],
            self.scores[idx],
            self.y[idx],
        )


@functools.lru_cache(maxsize=8)
def _empty_labels(n_features: int) -> Labels:
    arrays = (
        np.empty(0, np.int64),
        np.empty(0, np.int64),
        np.empty((0, n_features), np.float64),
        np.empty(0, np.float64),
        np.empty(0, np.bool_),
    )
    for a in arrays:
        a.flags.writeable = False
    return Labels((), *arrays)


def labels_list(held: Sequence[Labels | Matured], n_features: int) -> list[Labels]:
    """Matured labels kept in a snapshot, as :class:`Labels`: snapshots written
    before labels were columnar (``LabelBook`` schema 3) hold :class:`Matured`."""
    if held and isinstance(held[0], Matured):  # a snapshot holds one form only
        return [Labels.from_matured(cast(Sequence[Matured], held), n_features)]
    return list(cast(Sequence[Labels], held))


#: A freed slot's decision time: later than any real one, so never due.
_FREE_TS: Final[int] = np.iinfo(np.int64).max
_NO_SEQS: Final = np.empty(0, np.int64)
_NO_SEQS.flags.writeable = False
#: Up to this many points recorded by one call are written element by element:
#: building index arrays costs more than that.
_ELEMENT_WRITES: Final[int] = 8
#: Slots allocated at first; the arrays double when full, up to ``max_pending_total``.
_MIN_SLOTS: Final[int] = 64

#: Attributes that hold the pending points: pickled compacted, as ``pending``.
_POINT_STATE: Final = frozenset(
    (
        "_points",
        "_owner",
        "_free",
        "_n_pending",
        "_min_ts",
        "_ts",
        "_seqs",
        "_scores",
        "_X",
    )
)

# (decision ts, seq, slot): one pending point of an entity; an entity's list is sorted.
_Point = tuple[int, int, int]


class LabelBook:
    """Pending decision points of one shard, bounded and picklable.

    The clock is the *watermark*: the largest event time passed to
    :meth:`observe_many`, :meth:`on_conversion` or :meth:`expire`. It never
    moves back. Points expire (become negatives) when ``ts + horizon_ms <
    watermark``; a point whose horizon already ended when it arrives is
    refused as late.

    With ``hold_first_horizon`` (the default), positives of points from the
    first horizon after the book's first point are returned by
    :meth:`expire` once the point's own horizon has passed, in decision
    order with the negatives, instead of by :meth:`on_conversion`.

    Pending points live in slots of parallel arrays (decision time, order
    of observation, score, feature row), so a batch of points is recorded,
    and a tick's negatives are found and stacked, with a few array
    operations; per entity, a short list of its points' slots, sorted by
    decision time, serves decimation and conversions.
    """

    SCHEMA_VERSION: ClassVar[int] = 4

    def __init__(self, config: LabelConfig | None = None) -> None:
        self.config = config if config is not None else LabelConfig()
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
        self._seq = 0  # points observed so far: the next point's order of observation
        # points with a smaller decision time have their positives held (None: none)
        self._hold_until: int | None = None
        self._n_features: int | None = None
        self._clear_points(0)
        self._held = Labels.empty(0)
        self._held_seq = np.empty(0, np.int64)

    def _clear_points(self, n_features: int) -> None:
        self._points: dict[str, list[_Point]] = {}
        self._owner: list[str | None] = []  # slot -> entity, for every slot ever allocated
        self._free: list[int] = []  # allocated slots that hold no point
        self._n_pending = 0
        self._min_ts = _FREE_TS  # no pending point has a smaller decision time
        self._ts = np.full(0, _FREE_TS, np.int64)
        self._seqs = np.empty(0, np.int64)
        self._scores = np.empty(0, np.float64)
        self._X = np.empty((0, n_features), np.float64)

    # --- pickling: only live points, compacted -------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in _POINT_STATE}
        # the slots holding a point, in order: a free slot's time is _FREE_TS
        slots = np.flatnonzero(self._ts[: len(self._owner)] != _FREE_TS)
        state["schema"] = self.SCHEMA_VERSION
        state["pending"] = (
            [self._owner[s] for s in slots.tolist()],
            self._ts[slots],
            self._seqs[slots],
            self._scores[slots],
            self._X[slots],
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "schema" not in state:
            state = _from_schema_3(state)
        state = dict(state)
        del state["schema"]
        owners, ts, seqs, scores, X = state.pop("pending")
        self.__dict__.update(state)
        self._clear_points(X.shape[1])
        self._add(list(owners), ts, seqs, scores, X)

    def _add(
        self,
        owners: Sequence[str],
        ts: IntArray,
        seqs: IntArray,
        scores: FloatArray,
        X: FloatArray,
    ) -> None:
        """Put points into the slots of a cleared book (a restore: no checks, no counts)."""
        n = len(owners)
        slots = list(range(n))
        self._owner = list(owners)
        self._reserve(n)
        self._write(slots, ts, seqs, scores, X)
        for owner, t, q, s in zip(owners, ts.tolist(), seqs.tolist(), slots, strict=True):
            bisect.insort(self._points.setdefault(owner, []), (t, q, s))
        self._n_pending += len(owners)

    # --- sizes -----------------------------------------------------------------------------

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
        return len(self._points)

    def pending(self, entity_id: str) -> int:
        """Pending points of one entity."""
        return len(self._points.get(entity_id, ()))

    # --- slots -----------------------------------------------------------------------------

    def _reserve(self, size: int) -> None:
        cap = self._ts.shape[0]
        if size <= cap:
            return
        # doubling, but never past the bound: no more points can be pending
        new = max(size, min(max(2 * cap, _MIN_SLOTS), self.config.max_pending_total))
        grow = new - cap
        self._ts = np.concatenate([self._ts, np.full(grow, _FREE_TS, np.int64)])
        self._seqs = np.concatenate([self._seqs, np.zeros(grow, np.int64)])
        self._scores = np.concatenate([self._scores, np.zeros(grow, np.float64)])
        if self._X.shape[0] < new:
            # The feature rows, 8 bytes per feature and point, are allocated for the bound
            # at once: zeroed by the operating system, a page takes memory when a point
            # first lands on it, and they are never copied to grow (docs/capacity.md).
            X = np.zeros((max(new, self.config.max_pending_total), self._X.shape[1]), np.float64)
            X[:cap] = self._X[:cap]
            self._X = X

    def _write(
        self, slots: Sequence[int], ts: IntArray, seqs: IntArray, scores: FloatArray, X: FloatArray
    ) -> None:
        if not len(slots):
            return
        idx = np.asarray(slots, dtype=np.intp)
        self._ts[idx] = ts
        self._seqs[idx] = seqs
        self._scores[idx] = scores
        self._X[idx] = X
        self._min_ts = min(self._min_ts, int(ts.min()))

    def _release_slots(self, slots: Sequence[int]) -> None:
        """Free slots whose points were labelled or evicted."""
        owner = self._owner
        for s in slots:
            owner[s] = None
        self._ts[np.asarray(slots, dtype=np.intp)] = _FREE_TS
        self._free.extend(slots)
        self._n_pending -= len(slots)

    def _matured(self, entity_ids: tuple[str, ...], slots: Sequence[int], label_ts: IntArray,
                 label: bool) -> Labels:  # fmt: skip
        idx = np.asarray(slots, dtype=np.intp)
        return Labels(
            entity_ids,
            self._ts[idx],
            label_ts,
            self._X[idx],
            self._scores[idx],
            np.full(len(slots), label, np.bool_),
        )

    # --- recording and labelling -------------------------------------------------------------

    def _advance(self, ts_ms: int) -> None:
        if self.watermark_ms is None or ts_ms > self.watermark_ms:
            self.watermark_ms = ts_ms

    def observe(self, entity_id: str, ts_ms: int, features_row: FloatArray, score: float) -> bool:
        """Record one decision point; False when decimated, late or over a bound.

        The same as :meth:`observe_many` with one point.
        """
        row = np.asarray(features_row, dtype=np.float64).reshape(1, -1)
        return self.observe_many([entity_id], [int(ts_ms)], row, [0], [float(score)]) == 1

    def observe_many(
        self,
        entity_ids: Sequence[str],
        ts_ms: Sequence[int],
        X: FloatArray,
        rows: Sequence[int],
        scores: Sequence[float],
    ) -> int:
        """Record decision points in order; returns how many were recorded.

        Point ``k`` is entity ``entity_ids[k]`` at ``ts_ms[k]`` with feature
        row ``X[rows[k]]`` and score ``scores[k]``. The result is the same as
        recording them one at a time. A point is refused when late (its
        horizon already ended), decimated (the entity has a pending point
        less than ``min_gap_ms`` away) or bounded (``max_pending_per_entity``
        or ``max_pending_total`` reached: older points keep their place).
        The rows are copied. ``X`` must have the rows' length of the book's
        earlier points (a ``ValueError`` before anything is recorded).
        """
        n = len(entity_ids)
        if n == 0:
            return 0
        if X.ndim != 2 or (self._n_features is not None and X.shape[1] != self._n_features):
            raise ValueError(
                f"features: expected rows of {self._n_features} values, got shape {X.shape}"
            )
        cfg = self.config
        horizon, gap = cfg.horizon_ms, cfg.min_gap_ms
        per_entity, total = cfg.max_pending_per_entity, cfg.max_pending_total
        points, owner = self._points, self._owner
        watermark = self.watermark_ms
        n_pending = self._n_pending
        late = decimated = bounded = 0
        taken: list[int] = []  # k of each recorded point
        slots: list[int] = []
        seq0 = self._seq
        for k in range(n):
            ts = ts_ms[k]
            if watermark is None or ts > watermark:
                watermark = ts
            elif ts + horizon < watermark:
                late += 1
                continue
            entity_id = entity_ids[k]
            pts = points.get(entity_id)
            if pts is not None:
                newest = pts[-1][0]
                if ts >= newest:  # the usual case: the nearest point is the newest
                    if ts - newest < gap:
                        decimated += 1
                        continue
                elif any(abs(ts - p[0]) < gap for p in pts):
                    decimated += 1
                    continue
                if len(pts) >= per_entity:
                    bounded += 1
                    continue
            if n_pending >= total:
                bounded += 1
                continue
            seq = seq0 + len(taken)
            if seq == 0 and cfg.hold_first_horizon:  # the book's first point
                self._hold_until = watermark + horizon  # from the new watermark
            slot = self._free.pop() if self._free else self._new_slot()
            point = (ts, seq, slot)
            if pts is None:
                points[entity_id] = [point]
            elif ts >= pts[-1][0]:
                pts.append(point)
            else:
                bisect.insort(pts, point)
            owner[slot] = entity_id
            taken.append(k)
            slots.append(slot)
            n_pending += 1
        self.watermark_ms = watermark
        counts = self.counts
        counts["late"] += late
        counts["decimated"] += decimated
        counts["bounded"] += bounded
        if taken:
            if self._n_features is None:
                self._n_features = X.shape[1]
                self._X = np.zeros((self._ts.shape[0], X.shape[1]), np.float64)
                self._held = Labels.empty(X.shape[1])
            self._reserve(len(owner))
        if 0 < len(taken) <= _ELEMENT_WRITES:  # a few points: element writes cost less
            for seq, (k, slot) in enumerate(zip(taken, slots, strict=True), seq0):
                ts = ts_ms[k]
                self._ts[slot] = ts
                self._seqs[slot] = seq
                self._scores[slot] = scores[k]
                self._X[slot] = X[rows[k]]
                if ts < self._min_ts:
                    self._min_ts = int(ts)
        elif taken:
            ts_arr = np.asarray(ts_ms, dtype=np.int64)
            k_arr = np.asarray(taken, dtype=np.intp)
            self._write(
                slots,
                ts_arr[k_arr],
                np.arange(seq0, seq0 + len(taken), dtype=np.int64),
                np.asarray(scores, dtype=np.float64)[k_arr],
                X[np.asarray(rows, dtype=np.intp)[k_arr]],
            )
        self._seq += len(taken)
        self._n_pending = n_pending
        counts["observed"] += len(taken)
        return len(taken)

    def _new_slot(self) -> int:
        self._owner.append(None)
        return len(self._owner) - 1

    def on_conversion(self, entity_id: str, ts_ms: int) -> Labels:
        """Positives: the entity's pending points with ts in ``[ts - horizon, ts)``."""
        ts = int(ts_ms)
        if self.watermark_ms is not None and ts < self.watermark_ms:
            self.counts["late_conversions"] += 1
        self._advance(ts)
        n_features = self._n_features or 0
        pts = self._points.get(entity_id)
        if not pts:
            return Labels.empty(n_features)
        low = ts - self.config.horizon_ms
        hit = [p for p in pts if low <= p[0] < ts]  # sorted: decision order
        if not hit:
            return Labels.empty(n_features)
        keep = [p for p in pts if not low <= p[0] < ts]
        if keep:
            self._points[entity_id] = keep
        else:
            del self._points[entity_id]
        slots = [p[2] for p in hit]
        self.counts["positives"] += len(hit)
        for p in hit:
            self._delays[self._delay_next] = ts - p[0]
            self._delay_next = (self._delay_next + 1) % DELAY_WINDOW
        self._delay_size = min(DELAY_WINDOW, self._delay_size + len(hit))
        out = self._matured((entity_id,) * len(hit), slots, np.full(len(hit), ts, np.int64), True)
        seqs = self._seqs[np.asarray(slots, dtype=np.intp)]
        self._release_slots(slots)
        until = self._hold_until
        if until is None or hit[0][0] >= until:
            return out
        held = out.decision_ts_ms < until
        self._held = Labels.concat([self._held, out.take(np.flatnonzero(held))], n_features)
        self._held_seq = np.concatenate([self._held_seq, seqs[held]])
        self.counts["held"] += int(held.sum())
        return out.take(np.flatnonzero(~held))

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

    def expire(self, now_ms: int) -> Labels:
        """Negatives: points with ``ts + horizon < watermark``, oldest first.

        ``now_ms`` is the shard's latest event time; it advances the watermark.
        Held positives whose horizon has passed come with them, in decision
        order (ties: the order the points were observed).
        """
        self._advance(int(now_ms))
        watermark = self.watermark_ms
        assert watermark is not None
        horizon = self.config.horizon_ms
        cutoff = watermark - horizon  # due: ts < cutoff
        n_features = self._n_features or 0
        out = Labels.empty(n_features)
        seqs = _NO_SEQS
        if self._min_ts < cutoff:
            ts = self._ts[: len(self._owner)]
            due = np.flatnonzero(ts < cutoff)
            if due.size:
                due = due[np.lexsort((self._seqs[due], ts[due]))]
                slots = due.tolist()
                owner, points = self._owner, self._points
                ids = []
                for s in slots:  # oldest first: each is the first point of its entity
                    entity_id = owner[s]
                    assert entity_id is not None
                    ids.append(entity_id)
                    pts = points[entity_id]
                    del pts[0]
                    if not pts:
                        del points[entity_id]
                decision = ts[due]
                out = self._matured(tuple(ids), slots, decision + horizon, False)
                seqs = self._seqs[due]
                self._release_slots(slots)
                self.counts["negatives"] += len(slots)
            self._min_ts = int(ts.min()) if self._n_pending else _FREE_TS
        if self._hold_until is not None:
            out = self._release(out, seqs, cutoff, self._hold_until)
        return out

    def _release(self, negatives: Labels, seqs: IntArray, before: int, until: int) -> Labels:
        """``negatives`` and the held positives with decision time below ``before``,
        in decision order (ties: observation order)."""
        held = self._held
        if len(held) and int(held.decision_ts_ms.min()) < before:
            go = held.decision_ts_ms < before
            released = held.take(np.flatnonzero(go))
            self._held = held.take(np.flatnonzero(~go))
            both = Labels.concat([negatives, released], negatives.X.shape[1])
            order_seq = np.concatenate([seqs, self._held_seq[go]])
            self._held_seq = self._held_seq[~go]
            negatives = both.take(np.lexsort((order_seq, both.decision_ts_ms)))
        if not len(self._held) and before >= until:  # every point of the first horizon is labelled
            self._hold_until = None
        return negatives

    def next_deadline_ms(self) -> int | None:
        """The smallest watermark at which :meth:`expire` matures something."""
        tops = []
        if self._n_pending:
            tops.append(int(self._ts[: len(self._owner)].min()))
        if len(self._held):
            tops.append(int(self._held.decision_ts_ms.min()))
        if not tops:
            return None
        return min(tops) + self.config.horizon_ms + 1

    def evict_entity(self, entity_id: str) -> int:
        """Forget an entity's pending points (unlabelled); returns how many."""
        pts = self._points.pop(entity_id, None)
        if not pts:
            return 0
        self._release_slots([p[2] for p in pts])
        self.counts["evicted"] += len(pts)
        return len(pts)

    def stats(self) -> dict[str, int]:
        """Counters since creation plus the current ``pending``, ``entities`` and
        ``holding`` (positives held, see ``hold_first_horizon``)."""
        return {
            **self.counts,
            "pending": self._n_pending,
            "entities": len(self._points),
            "holding": len(self._held),
        }


def _from_schema_3(old: dict[str, Any]) -> dict[str, Any]:
    """The state of a book pickled by schema 3 (or 2: before positives were held),
    with pending points as per-entity lists of ``(seq, ts, row, score)`` and held
    positives as a heap of ``(ts, seq, Matured)``, in this version's form."""
    points = sorted(
        ((seq, ts, entity_id, row, score) for entity_id, pts in old["_pending"].items()
         for seq, ts, row, score in pts),
        key=lambda p: p[0],
    )  # fmt: skip
    n_features = old.get("_n_features") or 0
    held = sorted(old.get("_held", []), key=lambda h: (h[0], h[1]))
    counts = dict(old["counts"])
    counts.setdefault("held", 0)
    return {
        "schema": LabelBook.SCHEMA_VERSION,
        "config": old["config"],
        "watermark_ms": old["watermark_ms"],
        "counts": counts,
        "_delays": old["_delays"],
        "_delay_next": old["_delay_next"],
        "_delay_size": old["_delay_size"],
        "_seq": old["_seq"],
        "_hold_until": old.get("_hold_until"),
        "_n_features": old.get("_n_features"),
        "_held": Labels.from_matured([h[2] for h in held], n_features),
        "_held_seq": np.array([h[1] for h in held], dtype=np.int64),
        "pending": (
            [p[2] for p in points],
            np.array([p[1] for p in points], dtype=np.int64),
            np.array([p[0] for p in points], dtype=np.int64),
            np.array([p[4] for p in points], dtype=np.float64),
            np.array([p[3] for p in points], dtype=np.float64).reshape(len(points), n_features),
        ),
    }

"""Compile a :class:`FeatureSpec` into the arrays the kernels read and the event matchers.

Done once at start-up: per key kind ("entity", "account") one
:class:`TableProgram` with the ring/decay/distinct layout, the output program
and the filter groups of each event type.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from intentflow.features import kernels as kern
from intentflow.features.filters import Conds, Group, Route, compile_conditions
from intentflow.features.spec import HOUR, FeatureSpec, ring_slots

__all__ = ["TableProgram", "compile_program"]

_KIND: Final = {
    "count": kern.K_COUNT,
    "sum": kern.K_SUM,
    "mean": kern.K_MEAN,
    "min": kern.K_MIN,
    "max": kern.K_MAX,
    "last": kern.K_LAST,
    "recency": kern.K_RECENCY,
    "decayed_sum": kern.K_DSUM,
    "decayed_rate": kern.K_DRATE,
    "velocity": kern.K_VELOCITY,
    "distinct": kern.K_DISTINCT,
}
_STATS: Final = {
    "count": ("cnt",),
    "sum": ("sum",),
    "mean": ("cnt", "sum"),
    "min": ("min",),
    "max": ("max",),
    "velocity": ("cnt",),
}
_STAT_ORDER: Final = ("cnt", "sum", "min", "max")


@dataclass(frozen=True)
class TableProgram:
    """Layout, output program and filter groups of one key kind."""

    key: str
    widths: Mapping[str, int]  # columns per state array
    tiers: npt.NDArray[np.int64]
    rings: npt.NDArray[np.int64]
    col_ring_ptr: npt.NDArray[np.int64]
    col_lts: npt.NDArray[np.int64]
    col_lval: npt.NDArray[np.int64]
    col_dec_ptr: npt.NDArray[np.int64]
    dec_hl: npt.NDArray[np.float64]
    dtabs: npt.NDArray[np.int64]
    ring_wq_ptr: npt.NDArray[np.int64]
    wq: npt.NDArray[np.int64]
    outs: npt.NDArray[np.int64]
    outx: npt.NDArray[np.float64]
    by_type: Mapping[str, tuple[Group, ...]]  # event type -> filter groups
    any_type: tuple[Group, ...]  # groups of types not listed in by_type

    @property
    def n_outputs(self) -> int:
        """Output columns this table writes."""
        return int(self.outs.shape[0])


def compile_program(spec: FeatureSpec, key: str) -> TableProgram:
    """Build the table program of the features of ``spec`` keyed by ``key``."""
    # Signal columns (features with a non-distinct aggregation) and distinct tables.
    feats = [i for i, d in enumerate(spec.features) if d.key == key]
    signal = [i for i in feats if set(spec.features[i].aggregations) - {"distinct"}]
    col_of = {i: c for c, i in enumerate(signal)}
    tab_of = {i: t for t, i in enumerate(i for i in feats if spec.features[i].distinct)}
    # Rings: (column, bucket size) -> slots needed and statistics kept.
    ring_need: dict[tuple[int, int], tuple[int, set[str]]] = {}
    queries: dict[tuple[int, int, int], None] = {}  # (column, size, window) in first-use order
    decays: dict[tuple[int, int], None] = {}
    lts_cols: set[int] = set()
    lval_cols: set[int] = set()
    for o in spec.outputs:
        if o.feature not in col_of or o.aggregation == "distinct":
            continue
        c = col_of[o.feature]
        windows = {"velocity": (o.window_ms, o.window2_ms)}.get(o.aggregation, (o.window_ms,))
        if o.aggregation in _STATS:
            for w in windows:
                size = spec.resolution_ms(w)
                slots, stats = ring_need.get((c, size), (0, set()))
                ring_need[(c, size)] = (max(slots, ring_slots(w, size)), stats)
                stats.update(_STATS[o.aggregation])
                queries[(c, size, w)] = None
        elif o.aggregation in ("decayed_sum", "decayed_rate"):
            decays[(c, o.half_life_ms)] = None
        elif o.aggregation in ("last", "recency"):
            lts_cols.add(c)
            if o.aggregation == "last":
                lval_cols.add(c)
    # Ring layout: offsets of each ring's slots in the per-statistic arrays.
    ring_keys = sorted(ring_need)  # grouped by column, finest first
    ring_id = {rk: r for r, rk in enumerate(ring_keys)}
    tiers = sorted({size for _, size in ring_keys})
    offsets = dict.fromkeys(_STAT_ORDER, 0)
    rings = np.full((len(ring_keys), 6), -1, dtype=np.int64)
    for r, (c, size) in enumerate(ring_keys):
        slots, stats = ring_need[(c, size)]
        rings[r, 0], rings[r, 1] = tiers.index(size), slots
        for s_i, stat in enumerate(_STAT_ORDER):
            if stat in stats:
                rings[r, 2 + s_i] = offsets[stat]
                offsets[stat] += slots
    n_cols = len(col_of)
    col_ring_ptr = np.zeros(n_cols + 1, dtype=np.int64)
    for c, _ in ring_keys:
        col_ring_ptr[c + 1] += 1
    col_ring_ptr = np.cumsum(col_ring_ptr)
    # Decayed sums, latest timestamps/values and distinct tables, per column.
    dec_keys = sorted(decays)
    dec_id = {dk: d for d, dk in enumerate(dec_keys)}
    col_dec_ptr = np.cumsum(np.bincount([c + 1 for c, _ in dec_keys], minlength=n_cols + 1))
    col_lts = np.full(n_cols, -1, dtype=np.int64)
    col_lval = np.full(n_cols, -1, dtype=np.int64)
    for k, c in enumerate(sorted(lts_cols)):
        col_lts[c] = k
    for k, c in enumerate(sorted(lval_cols)):
        col_lval[c] = k
    dtabs = np.zeros((len(tab_of), 2), dtype=np.int64)
    dist_off = 0
    for i, t in tab_of.items():
        dtabs[t] = (dist_off, spec.features[i].max_distinct)
        dist_off += spec.features[i].max_distinct
    # Window queries, grouped by ring; those on rings with counts get a running total.
    qlist = sorted(queries, key=lambda qk: (ring_id[(qk[0], qk[1])], qk[2]))
    query_id = {qk: j for j, qk in enumerate(qlist)}
    wq = np.full((len(qlist), 4), -1, dtype=np.int64)
    ring_wq_ptr = np.zeros(len(ring_keys) + 1, dtype=np.int64)
    n_run = 0
    for j, (c, size, w) in enumerate(qlist):
        r = ring_id[(c, size)]
        wq[j, :3] = (r, (w - 1) // size, (w - 1) % size)
        if rings[r, 2] >= 0:
            wq[j, 3] = n_run
            n_run += 1
        ring_wq_ptr[r + 1] += 1
    ring_wq_ptr = np.cumsum(ring_wq_ptr)
    # Output program: (kind, a, b, output column, s, l) and a float parameter each;
    # s and l are a velocity's short and long windows in ms (0 for other kinds).
    outs: list[tuple[int, int, int, int, int, int]] = []
    outx: list[float] = []
    for col, o in enumerate(spec.outputs):
        if spec.features[o.feature].key != key:
            continue
        kind = _KIND[o.aggregation]
        a = b = s = long = 0
        x = 0.0
        if o.aggregation == "distinct":
            a, b = tab_of[o.feature], o.window_ms
        else:
            c = col_of[o.feature]
            if o.aggregation in _STATS:
                a = query_id[(c, spec.resolution_ms(o.window_ms), o.window_ms)]
            if o.aggregation == "velocity":
                b = query_id[(c, spec.resolution_ms(o.window2_ms), o.window2_ms)]
                x = o.window2_ms / o.window_ms
                s, long = o.window_ms, o.window2_ms
            elif o.aggregation in ("decayed_sum", "decayed_rate"):
                a = dec_id[(c, o.half_life_ms)]
                x = math.log(2.0) * HOUR / o.half_life_ms
            elif o.aggregation == "recency":
                a = int(col_lts[c])
            elif o.aggregation == "last":
                a, b = int(col_lval[c]), int(col_lts[c])
        outs.append((kind, a, b, col, s, long))
        outx.append(x)
    by_type, any_type = _groups(spec, col_of, tab_of)
    return TableProgram(
        key=key,
        widths={
            "cnt": offsets["cnt"],
            "sum": offsets["sum"],
            "min": offsets["min"],
            "max": offsets["max"],
            "lts": len(lts_cols),
            "lval": len(lval_cols),
            "dec": len(dec_keys),
            "dist": dist_off,
            "run": n_run,
        },
        tiers=np.array(tiers, dtype=np.int64),
        rings=rings,
        col_ring_ptr=col_ring_ptr.astype(np.int64),
        col_lts=col_lts,
        col_lval=col_lval,
        col_dec_ptr=col_dec_ptr.astype(np.int64),
        dec_hl=np.array([float(h) for _, h in dec_keys], dtype=np.float64),
        dtabs=dtabs,
        ring_wq_ptr=ring_wq_ptr.astype(np.int64),
        wq=wq,
        outs=np.array(outs, dtype=np.int64).reshape(-1, 6),
        outx=np.array(outx, dtype=np.float64),
        by_type=by_type,
        any_type=any_type,
    )


def _groups(
    spec: FeatureSpec, col_of: Mapping[int, int], tab_of: Mapping[int, int]
) -> tuple[dict[str, tuple[Group, ...]], tuple[Group, ...]]:
    """Event type -> filter groups, and the groups for event types no feature names."""
    feats = sorted(set(col_of) | set(tab_of))
    named = dict.fromkeys(t for i in feats for t in spec.features[i].types)

    def build(etype: str | None) -> tuple[Group, ...]:
        by_conds: dict[Conds, tuple[list[tuple[int, str | None]], list[tuple[int, str]]]] = {}
        for i in feats:
            d = spec.features[i]
            if d.types and etype not in d.types:
                continue
            sig, dist = by_conds.setdefault(compile_conditions(d.where), ([], []))
            if i in col_of:
                sig.append((col_of[i], d.value))
            if i in tab_of:
                src = d.distinct or ""
                dist.append((tab_of[i], src.removeprefix("props.")))
        groups = []
        for conds, (sig, dist) in by_conds.items():
            units = tuple(c for c, vp in sig if vp is None)
            valued = tuple((c, vp) for c, vp in sig if vp is not None)
            route = Route(units, (1.0,) * len(units), valued, tuple(dist))
            groups.append(Group(conds, route))
        return tuple(groups)

    return {t: build(t) for t in named}, build(None)

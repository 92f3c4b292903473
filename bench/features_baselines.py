"""Baselines for ``bench features``: the same feature spec computed without the engine.

:class:`DequeFeatures` is a plain Python implementation of a
:class:`~intentflow.features.spec.FeatureSpec` with one deque of
``(time, value)`` per key, feature and window, a running sum per deque, and
the definitions of docs/features.md (the same sawtooth window edges, clock,
lateness policy, recency cap, decayed sums and capped distinct counts), so
its rows equal the engine's up to floating-point rounding.

:func:`windowing_flow` computes the spec's aggregates the way a Bytewax user
would: ``fold_window`` over ``SlidingWindower`` windows with an
``EventClock``, one windowed step per key kind and window length. Its
differences from the engine's definitions are listed in
:data:`WINDOWING_DIFFERENCES`.
"""

from __future__ import annotations

import math
from bisect import insort
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, SlidingWindower, fold_window
from bytewax.testing import TestingSink, TestingSource

from intentflow.events import Event
from intentflow.features.spec import (
    MAX_WINDOW_MS,
    VALUE_LIMIT,
    Condition,
    FeatureDef,
    FeatureSpec,
    OutputDef,
)

__all__ = [
    "WINDOWING_DIFFERENCES",
    "DequeFeatures",
    "WindowRow",
    "WindowingPlan",
    "contribution",
    "windowing_flow",
]

HOUR_MS: Final = 3_600_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

#: How the Bytewax windowing flow differs from the engine's definitions.
WINDOWING_DIFFERENCES: Final = (
    "windowed operators emit one row per key and window when the window closes "
    "(watermark past its end), not one row per event that includes the event",
    "count, sum, mean, min, max, distinct: exact over [close - W, close), the engine's "
    "window at clock close - 1 ms (sliding windows advance by the engine's bucket size); "
    "distinct is exact in the window and then capped at max_distinct",
    "velocity: both counts at the window's end, the short one from per-slot counts kept "
    "in the long window (exact at close - 1 ms), over the full window lengths (the engine "
    "divides by at most the span of event time its table has seen)",
    "recency and last: from the matching events inside the longest window of the key "
    "kind (the engine looks back without limit; recency is capped either way)",
    "decayed_sum and decayed_rate: over the matching events inside the longest window "
    "(the engine sums over all events; the terms left out weigh at most 2^-(W/H))",
    "lateness: EventClock waits allowed_lateness of event time per key; later items go "
    "to the late stream (the engine applies or drops them by the same bound)",
)


# --- filters and values (docs/features.md: Filters, Values) ---------------------------------


def _same_value(x: Any, allowed: Any) -> bool:
    """Strings equal strings, booleans equal booleans, numbers equal numbers by value."""
    if isinstance(x, bool) or isinstance(allowed, bool):
        return isinstance(x, bool) and isinstance(allowed, bool) and x == allowed
    if isinstance(x, str) or isinstance(allowed, str):
        return isinstance(x, str) and isinstance(allowed, str) and x == allowed
    if isinstance(x, int | float) and isinstance(allowed, int | float):
        return bool(x == allowed)
    return False


def _holds(cond: Condition, props: dict[str, Any]) -> bool:
    if cond.prop not in props:
        return False
    x = props[cond.prop]
    if cond.op == "in":
        return any(_same_value(x, a) for a in cond.values)
    if isinstance(x, bool) or not isinstance(x, int | float) or x != x:
        return False
    t = float(cond.values[0])
    if cond.op == "<":
        return bool(x < t)
    if cond.op == "<=":
        return bool(x <= t)
    if cond.op == ">":
        return bool(x > t)
    return bool(x >= t)


def _distinct_key(d: FeatureDef, ev: Event) -> Hashable | None:
    if d.distinct == "entity_id":
        return ev.entity_id
    if d.distinct == "account_id":
        return ev.account_id
    x = ev.props.get((d.distinct or "")[len("props.") :])
    if isinstance(x, bool):
        return ("b", x)
    if isinstance(x, str):
        return ("s", x)
    if isinstance(x, int | float):
        try:
            f = float(x)
        except OverflowError:
            return None
        return ("n", f) if math.isfinite(f) else None
    return None


def _number(raw: object) -> float | None:
    """A finite number (not a boolean), clamped to the value limit; else None."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    if isinstance(raw, float) and not math.isfinite(raw):
        return None
    if raw > VALUE_LIMIT:  # before float(): a huge int would not convert
        return VALUE_LIMIT
    return -VALUE_LIMIT if raw < -VALUE_LIMIT else float(raw)


def contribution(d: FeatureDef, ev: Event) -> tuple[float | None, Hashable | None] | None:
    """What ``ev`` gives ``d``: ``(value, distinct key)``, each None if nothing; None if neither.

    Without ``value`` every matching event counts 1.0.
    """
    if d.types and ev.type not in d.types:
        return None
    props = ev.props
    for cond in d.where:
        if not _holds(cond, props):
            return None
    key = None if d.distinct is None else _distinct_key(d, ev)
    value: float | None = 1.0
    if d.value is not None:
        value = _number(props.get(d.value))
    if value is None and key is None:
        return None
    return (value, key)


# --- the per-key deque implementation -------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """One feature of one key kind: its windows and how to compute its output columns."""

    index: int
    feature: FeatureDef
    windows: tuple[tuple[int, int], ...]  # (W, bucket size) of every deque it keeps
    half_lives: tuple[int, ...]
    #: (column, aggregation, deque or half-life index, second deque index, window or half-life)
    outputs: tuple[tuple[int, str, int, int, int], ...]
    longest: int  # longest distinct window: older values never count again


class _FeatState:
    __slots__ = ("dec", "dist", "dqs", "lts", "lval", "sums")

    def __init__(self, plan: _Plan) -> None:
        self.dqs: list[deque[tuple[int, float]]] = [deque() for _ in plan.windows]
        self.sums = [0.0] * len(plan.windows)
        self.lts: int | None = None
        self.lval = 0.0
        self.dec = [[0.0, 0] for _ in plan.half_lives]
        self.dist: dict[Hashable, int] = {}


class _KeyState:
    __slots__ = ("clock", "feats")

    def __init__(self, clock: int, n: int) -> None:
        self.clock = clock
        self.feats: list[_FeatState | None] = [None] * n


def _ts_of(entry: tuple[int, float]) -> int:
    return entry[0]


class DequeFeatures:
    """A pure-Python implementation of a feature spec: per-key deques, no buckets.

    ``update(events)`` returns one row per event (the spec's outputs in order,
    evaluated at the key's clock after applying the event), as the engine's
    :meth:`~intentflow.features.state.FeatureState.update` does.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self._cap_ms = spec.recency_cap_ms
        self._lateness = spec.allowed_lateness_ms
        self._clamp = spec.late_policy == "clamp"
        self._defaults = [
            spec.recency_cap_ms / 1000.0 if o.aggregation == "recency" else 0.0
            for o in spec.outputs
        ]
        self._plans: dict[str, list[_Plan]] = {"entity": [], "account": []}
        for i, d in enumerate(spec.features):
            deques = {"count", "sum", "mean", "min", "max"}.intersection(d.aggregations)
            lengths = list(d.windows) if deques else []
            for short, long in d.velocity:
                lengths += [w for w in (short, long) if w not in lengths]
            cols: list[tuple[int, str, int, int, int]] = []
            for c, o in enumerate(spec.outputs):
                if o.feature != i:
                    continue
                agg = o.aggregation
                if agg in ("decayed_sum", "decayed_rate"):
                    h = o.half_life_ms
                    cols.append((c, agg, d.half_lives.index(h), -1, h))
                elif agg == "velocity":
                    pair = (lengths.index(o.window_ms), lengths.index(o.window2_ms))
                    cols.append((c, agg, *pair, 0))
                elif agg in deques:
                    cols.append((c, agg, lengths.index(o.window_ms), -1, o.window_ms))
                else:  # last, recency, distinct
                    cols.append((c, agg, -1, -1, o.window_ms))
            plans = self._plans[d.key]
            plans.append(
                _Plan(
                    index=len(plans),
                    feature=d,
                    windows=tuple((w, spec.resolution_ms(w)) for w in lengths),
                    half_lives=d.half_lives,
                    outputs=tuple(cols),
                    longest=max(d.windows, default=0),
                )
            )
        self._by_type: dict[str, dict[str, list[_Plan]]] = {"entity": {}, "account": {}}
        self._tables: dict[str, dict[str, _KeyState]] = {"entity": {}, "account": {}}
        self._has_accounts = bool(self._plans["account"])
        #: per table: the earliest event time applied (a velocity's reach)
        self._start: dict[str, int] = {}

    @property
    def n_entities(self) -> int:
        """Entities held."""
        return len(self._tables["entity"])

    def _candidates(self, kind: str, typ: str) -> list[_Plan]:
        by_type = self._by_type[kind]
        got = by_type.get(typ)
        if got is None:
            got = by_type[typ] = [
                p for p in self._plans[kind] if not p.feature.types or typ in p.feature.types
            ]
        return got

    def update(self, events: Sequence[Event]) -> list[list[float]]:
        """Apply ``events`` in order; row ``i`` includes ``events[i]`` and all before it."""
        rows: list[list[float]] = []
        for ev in events:
            row = self._defaults.copy()
            self._apply("entity", ev.entity_id, ev, row)
            if self._has_accounts and ev.account_id:
                self._apply("account", ev.account_id, ev, row)
            rows.append(row)
        return rows

    def _apply(self, kind: str, key: str, ev: Event, row: list[float]) -> None:
        plans = self._plans[kind]
        table = self._tables[kind]
        ts = ev.ts_ms
        ks = table.get(key)
        applied: int | None = ts
        if ks is None:
            ks = table[key] = _KeyState(ts, len(plans))
        elif ts >= ks.clock:
            ks.clock = ts
        elif ts < ks.clock - self._lateness:
            applied = ks.clock - self._lateness if self._clamp else None
        q = ks.clock
        if applied is not None:
            start = self._start.get(kind)
            if start is None or applied < start:
                self._start[kind] = applied
            for plan in self._candidates(kind, ev.type):
                got = contribution(plan.feature, ev)
                if got is not None:
                    st = ks.feats[plan.index]
                    if st is None:
                        st = ks.feats[plan.index] = _FeatState(plan)
                    self._add(plan, st, q, applied, got[0], got[1])
        span = q - self._start[kind] if kind in self._start else 0
        for plan, st in zip(plans, ks.feats, strict=True):
            if st is not None:
                self._emit(plan, st, q, span, row)

    @staticmethod
    def _add(
        plan: _Plan, st: _FeatState, q: int, ts: int, v: float | None, dk: Hashable | None
    ) -> None:
        if v is not None:
            DequeFeatures._add_value(plan, st, q, ts, v)
        if dk is not None:
            DequeFeatures._add_distinct(plan, st, q, ts, dk)

    @staticmethod
    def _add_value(plan: _Plan, st: _FeatState, q: int, ts: int, v: float) -> None:
        for i, (w, size) in enumerate(plan.windows):
            if ts >= (q - w + 1) // size * size:  # inside the window now (it only moves on)
                dq = st.dqs[i]
                if not dq or ts >= dq[-1][0]:
                    dq.append((ts, v))
                else:
                    insort(dq, (ts, v), key=_ts_of)
                st.sums[i] += v
        if st.lts is None or ts >= st.lts:
            st.lts, st.lval = ts, v
        for pair, h in zip(st.dec, plan.half_lives, strict=True):
            if ts >= pair[1]:
                pair[0] = pair[0] * 2.0 ** (-(ts - pair[1]) / h) + v
                pair[1] = ts
            else:
                pair[0] += v * 2.0 ** (-(pair[1] - ts) / h)

    @staticmethod
    def _add_distinct(plan: _Plan, st: _FeatState, q: int, ts: int, dk: Hashable) -> None:
        """Latest time of each value, the dict kept in time order (oldest first)."""
        dist = st.dist
        old = dist.get(dk)
        if old is None or ts > old:
            newest = next(reversed(dist.values())) if dist else ts
            dist.pop(dk, None)
            dist[dk] = ts
            if ts < newest:  # out of order: restore the time order
                items = sorted(dist.items(), key=lambda kv: kv[1])
                dist.clear()
                dist.update(items)
        horizon = q - plan.longest  # values this old never count again
        while dist:
            first = next(iter(dist))
            if dist[first] > horizon:
                break
            del dist[first]

    def _emit(self, plan: _Plan, st: _FeatState, q: int, span: int, row: list[float]) -> None:
        for i, (w, size) in enumerate(plan.windows):
            lo = (q - w + 1) // size * size
            dq = st.dqs[i]
            if dq and dq[0][0] < lo:
                while dq and dq[0][0] < lo:
                    st.sums[i] -= dq.popleft()[1]
                if not dq:
                    st.sums[i] = 0.0
        for col, agg, i, j, param in plan.outputs:
            if agg == "count":
                row[col] = float(len(st.dqs[i]))
            elif agg == "sum":
                row[col] = st.sums[i]
            elif agg == "mean":
                n = len(st.dqs[i])
                row[col] = st.sums[i] / n if n else 0.0
            elif agg in ("min", "max"):
                vals = [v for _, v in st.dqs[i]]
                row[col] = (min(vals) if agg == "min" else max(vals)) if vals else 0.0
            elif agg == "velocity":
                n_short, n_long = len(st.dqs[i]), len(st.dqs[j])
                short, long = plan.windows[i][0], plan.windows[j][0]
                if not n_long:
                    row[col] = 0.0
                elif span < short:  # the table has seen less than the short window
                    row[col] = n_short / n_long
                else:  # the long window reaches back at most as far as the table has seen
                    row[col] = (n_short / short) / (n_long / min(long, span))
            elif agg == "last":
                row[col] = st.lval
            elif agg == "recency":
                if st.lts is not None:
                    row[col] = min(q - st.lts, self._cap_ms) / 1000.0
            elif agg == "distinct":
                n, lo_excl = 0, q - param
                for seen in reversed(st.dist.values()):
                    if seen <= lo_excl or n >= plan.feature.max_distinct:
                        break
                    n += 1
                row[col] = float(n)
            else:  # decayed_sum, decayed_rate
                pair = st.dec[i]
                value = pair[0] * 2.0 ** (-(q - pair[1]) / param)
                if agg == "decayed_rate":
                    value *= math.log(2.0) * HOUR_MS / param
                row[col] = value


# --- the Bytewax windowing flow -------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """One windowed step: a key kind, a window length and slide, and what it accumulates."""

    kind: str
    length_ms: int
    slide_ms: int
    terms: tuple[tuple[str, int, int], ...]  # (term kind, feature index, parameter)
    #: (column, output, term index, second term: the sum of a mean, the slots of a velocity)
    outputs: tuple[tuple[int, OutputDef, int, int], ...]


@dataclass(frozen=True)
class WindowRow:
    """One closed window of one key: the outputs of its group."""

    kind: str
    key: str
    length_ms: int
    open_ms: int
    close_ms: int
    values: tuple[tuple[int, float], ...]  # (output column, value)


@dataclass(frozen=True)
class WindowingPlan:
    """The windowed steps of :func:`windowing_flow` and where their results go."""

    groups: tuple[_Group, ...]
    rows: list[WindowRow]
    late: list[int]

    @property
    def windows_per_event(self) -> dict[str, int]:
        """Windows an event of a key kind is folded into at most (length / slide, summed)."""
        out: dict[str, int] = {}
        for g in self.groups:
            out[g.kind] = out.get(g.kind, 0) + g.length_ms // g.slide_ms
        return out


def _term(terms: list[tuple[str, int, int]], t: tuple[str, int, int]) -> int:
    """Index of term ``t`` in ``terms``, appended when new."""
    if t not in terms:
        terms.append(t)
    return terms.index(t)


def _plan_groups(spec: FeatureSpec, *, tumbling: bool) -> tuple[_Group, ...]:
    groups: list[_Group] = []
    for kind in ("entity", "account"):
        feats = [i for i, d in enumerate(spec.features) if d.key == kind]
        if not feats:
            continue
        lengths: list[int] = []
        for i in feats:
            d = spec.features[i]
            lengths += [w for w in d.windows if w not in lengths]
            lengths += [long for _, long in d.velocity if long not in lengths]
        longest = max(lengths, default=MAX_WINDOW_MS)
        if longest not in lengths:
            lengths.append(longest)
        terms: dict[int, list[tuple[str, int, int]]] = {w: [] for w in lengths}
        outs: dict[int, list[tuple[int, OutputDef, int, int]]] = {w: [] for w in lengths}
        slide = {w: w if tumbling else spec.resolution_ms(w) for w in lengths}

        for col, o in enumerate(spec.outputs):
            d = spec.features[o.feature]
            if d.key != kind:
                continue
            f, agg = o.feature, o.aggregation
            if agg in ("count", "sum", "mean", "min", "max", "distinct"):
                w = o.window_ms
                kind_of = {"count": "n", "mean": "n", "min": "lo", "max": "hi", "distinct": "d"}
                t = _term(terms[w], (kind_of.get(agg, "s"), f, 0))
                t2 = _term(terms[w], ("s", f, 0)) if agg == "mean" else -1
                outs[w].append((col, o, t, t2))
            elif agg == "velocity":
                w = o.window2_ms
                t = _term(terms[w], ("n", f, 0))
                t2 = _term(terms[w], ("slots", f, math.gcd(o.window_ms, slide[w])))
                outs[w].append((col, o, t, t2))
            elif agg in ("last", "recency"):
                outs[longest].append((col, o, _term(terms[longest], ("last", f, 0)), -1))
            else:  # decayed_sum, decayed_rate
                t = _term(terms[longest], ("dec", f, o.half_life_ms))
                outs[longest].append((col, o, t, -1))
        for w in lengths:
            if terms[w]:
                groups.append(_Group(kind, w, slide[w], tuple(terms[w]), tuple(outs[w])))
    return tuple(groups)


#: An event prepared once for every windowed step: (time, ts_ms, values, distinct keys),
#: the last two with one entry per feature (None: nothing for that feature).
_Item = tuple[datetime, int, tuple[float | None, ...], tuple[Hashable | None, ...]]


def _folder(group: _Group) -> Callable[[list[Any], _Item], list[Any]]:
    """The group's fold: one loop per term kind, only over the terms of that kind."""
    by_kind: dict[str, list[tuple[int, int, int]]] = {}
    for i, (kind, f, param) in enumerate(group.terms):
        by_kind.setdefault(kind, []).append((i, f, param))
    counts = [(i, f) for i, f, _ in by_kind.get("n", [])]
    sums = [(i, f) for i, f, _ in by_kind.get("s", [])]
    lows = [(i, f) for i, f, _ in by_kind.get("lo", [])]
    highs = [(i, f) for i, f, _ in by_kind.get("hi", [])]
    dists = [(i, f) for i, f, _ in by_kind.get("d", [])]
    slots = by_kind.get("slots", [])
    lasts = [(i, f) for i, f, _ in by_kind.get("last", [])]
    decs = by_kind.get("dec", [])

    def fold(acc: list[Any], item: _Item) -> list[Any]:
        ts, values, keys = item[1], item[2], item[3]
        for i, f in counts:
            if values[f] is not None:
                acc[i] += 1
        for i, f in sums:
            v = values[f]
            if v is not None:
                acc[i] += v
        for i, f in lows:
            v = values[f]
            if v is not None and v < acc[i]:
                acc[i] = v
        for i, f in highs:
            v = values[f]
            if v is not None and v > acc[i]:
                acc[i] = v
        for i, f in dists:
            k = keys[f]
            if k is not None:
                if acc[i] is None:
                    acc[i] = set()
                acc[i].add(k)
        for i, f, size in slots:
            if values[f] is not None:
                if acc[i] is None:
                    acc[i] = {}
                slot = ts // size
                acc[i][slot] = acc[i].get(slot, 0) + 1
        for i, f in lasts:
            v = values[f]
            if v is not None and (acc[i] is None or ts >= acc[i][0]):
                acc[i] = (ts, v)
        for i, f, h in decs:
            v = values[f]
            if v is not None:
                if acc[i] is None:
                    acc[i] = (v, ts)
                else:
                    total, ref = acc[i]
                    if ts >= ref:
                        acc[i] = (total * 2.0 ** (-(ts - ref) / h) + v, ts)
                    else:
                        acc[i] = (total + v * 2.0 ** (-(ref - ts) / h), ref)
        return acc

    return fold


def _builder(group: _Group) -> Callable[[], list[Any]]:
    """Empty accumulator: counts 0, sums 0.0, min inf, max -inf, the rest None until used."""
    first = {"n": 0, "s": 0.0, "lo": math.inf, "hi": -math.inf}
    template: list[Any] = [first.get(kind) for kind, _, _ in group.terms]

    def build() -> list[Any]:
        return template.copy()

    return build


def _merge(a: list[Any], b: list[Any]) -> list[Any]:  # sliding windows never merge
    raise AssertionError("sliding windows do not merge")


_Finish = Callable[[list[Any], int], float]


def _output_fn(group: _Group, o: OutputDef, t: int, t2: int, spec: FeatureSpec) -> _Finish:
    """Value of one output from a closed window's accumulator and its close time."""
    agg, cap = o.aggregation, spec.recency_cap_ms
    if agg in ("count", "sum"):
        return lambda acc, close: float(acc[t])
    if agg == "mean":
        return lambda acc, close: acc[t2] / acc[t] if acc[t] else 0.0
    if agg in ("min", "max"):
        return lambda acc, close: float(acc[t]) if math.isfinite(acc[t]) else 0.0
    if agg == "distinct":
        top = spec.features[o.feature].max_distinct
        return lambda acc, close: 0.0 if acc[t] is None else float(min(len(acc[t]), top))
    if agg == "velocity":
        size, short_ms, long_ms = group.terms[t2][2], o.window_ms, o.window2_ms

        def velocity(acc: list[Any], close: int) -> float:
            n_long = int(acc[t])
            if not n_long:
                return 0.0
            first = (close - short_ms) // size
            n_short = int(sum(n for slot, n in acc[t2].items() if slot >= first))
            return (n_short / short_ms) / (n_long / long_ms)

        return velocity
    if agg == "last":
        return lambda acc, close: 0.0 if acc[t] is None else float(acc[t][1])
    if agg == "recency":
        return lambda acc, close: (
            cap / 1000.0 if acc[t] is None else min(close - 1 - acc[t][0], cap) / 1000.0
        )
    h = o.half_life_ms
    factor = math.log(2.0) * HOUR_MS / h if agg == "decayed_rate" else 1.0

    def decayed(acc: list[Any], close: int) -> float:
        if acc[t] is None:
            return 0.0
        total, ref = acc[t]
        return float(total * 2.0 ** (-(close - 1 - ref) / h) * factor)

    return decayed


def _finisher(
    group: _Group, spec: FeatureSpec
) -> Callable[[tuple[str, tuple[int, list[Any]]]], WindowRow]:
    """Closed window -> :class:`WindowRow`, evaluated at its last instant (close - 1 ms)."""
    fns = [(col, _output_fn(group, o, t, t2, spec)) for col, o, t, t2 in group.outputs]
    kind, length, slide = group.kind, group.length_ms, group.slide_ms

    def finish(key_wid_acc: tuple[str, tuple[int, list[Any]]]) -> WindowRow:
        key, (wid, acc) = key_wid_acc
        open_ms = wid * slide  # windows are aligned to the epoch
        close = open_ms + length
        return WindowRow(
            kind, key, length, open_ms, close, tuple((c, fn(acc, close)) for c, fn in fns)
        )

    return finish


def _no_wake_up(_: datetime) -> datetime | None:
    return None


def windowing_flow(
    spec: FeatureSpec, events: Sequence[Event], *, batch_size: int = 1000, tumbling: bool = False
) -> tuple[Dataflow, WindowingPlan]:
    """A dataflow computing ``spec`` with Bytewax's windowing operators over ``events``.

    One ``fold_window`` step per key kind and window length (a
    ``SlidingWindower`` advancing by the engine's bucket size, aligned to the
    epoch, and an ``EventClock`` on event time that waits
    ``allowed_lateness``); every event's contributions are computed once
    upstream, and only events that contribute to a step enter it.
    ``tumbling=True`` makes every window advance by its own length (one
    window per event and step: cheaper, coarser). Closed windows go to
    ``plan.rows``, late items are counted in ``plan.late``. Run it with
    ``bytewax.testing.run_main``.
    """
    groups = _plan_groups(spec, tumbling=tumbling)
    plan = WindowingPlan(groups=groups, rows=[], late=[])
    feats = spec.features

    def prepare(ev: Event) -> tuple[str, str | None, _Item]:
        got = [contribution(d, ev) for d in feats]
        values = tuple(None if c is None else c[0] for c in got)
        keys = tuple(None if c is None else c[1] for c in got)
        when = _EPOCH + timedelta(milliseconds=ev.ts_ms)
        return ev.entity_id, ev.account_id, (when, ev.ts_ms, values, keys)

    def item_time(item: _Item) -> datetime:
        return item[0]

    clock = EventClock(
        ts_getter=item_time,
        wait_for_system_duration=timedelta(milliseconds=spec.allowed_lateness_ms),
        # past event times: no wake-ups (the default wakes every key with open windows
        # again and again on a replay, which is slower); windows close on later items
        # and at EOF
        to_system_utc=_no_wake_up,
    )
    flow = Dataflow("features_windowing")
    inp = op.input("events", flow, TestingSource(list(events), batch_size=batch_size))
    prepared = op.map("prepare", inp, prepare)
    keyed = {
        "entity": op.map("by_entity", prepared, lambda x: (x[0], x[2])),
        "account": op.filter_map("by_account", prepared, lambda x: (x[1], x[2]) if x[1] else None),
    }
    for g in groups:
        name = f"{g.kind}_{g.length_ms // 60_000}m"
        used = sorted({f for _, f, _ in g.terms})

        def relevant(item: _Item, used: list[int] = used) -> bool:
            values, keys = item[2], item[3]
            return any(values[f] is not None or keys[f] is not None for f in used)

        # only events that contribute to the group open its windows
        stream = op.filter_value(f"{name}_relevant", keyed[g.kind], relevant)
        windower = SlidingWindower(
            length=timedelta(milliseconds=g.length_ms),
            offset=timedelta(milliseconds=g.slide_ms),
            align_to=_EPOCH,
        )
        out = fold_window(name, stream, clock, windower, _builder(g), _folder(g), _merge)
        op.output(
            f"{name}_rows",
            op.map(f"{name}_finish", out.down, _finisher(g, spec)),
            TestingSink(plan.rows),
        )
        op.output(
            f"{name}_late", op.map(f"{name}_late_n", out.late, lambda _: 1), TestingSink(plan.late)
        )
    return flow, plan

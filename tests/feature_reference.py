"""A slow, obviously-correct model of the feature engine, used only by tests.

It keeps, per key, the plain list of applied events and recomputes every
feature from that list with the definitions in docs/features.md: no
buckets, no rings, no incremental state. It reads only the validated
:class:`FeatureSpec` (definitions and the documented window resolution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from intentflow.events import Event
from intentflow.features.spec import VALUE_LIMIT, FeatureDef, FeatureSpec, OutputDef

HOUR_MS = 3_600_000


def _same_value(x: Any, allowed: Any) -> bool:
    """Strings equal strings, booleans equal booleans, numbers equal numbers by value."""
    if isinstance(x, bool) or isinstance(allowed, bool):
        return isinstance(x, bool) and isinstance(allowed, bool) and x == allowed
    if isinstance(x, str) or isinstance(allowed, str):
        return isinstance(x, str) and isinstance(allowed, str) and x == allowed
    if isinstance(x, int | float) and isinstance(allowed, int | float):
        return x == allowed
    return False


def _compares(x: Any, op: str, threshold: float) -> bool:
    if isinstance(x, bool) or not isinstance(x, int | float) or x != x:
        return False
    return {"<": x < threshold, "<=": x <= threshold, ">": x > threshold, ">=": x >= threshold}[op]


def matches(d: FeatureDef, ev: Event) -> bool:
    if d.types and ev.type not in d.types:
        return False
    for cond in d.where:
        if cond.prop not in ev.props:
            return False
        x = ev.props[cond.prop]
        if cond.op == "in":
            if not any(_same_value(x, a) for a in cond.values):
                return False
        elif not _compares(x, cond.op, float(cond.values[0])):
            return False
    return True


def value_of(d: FeatureDef, ev: Event) -> float | None:
    """The value an event contributes to ``d``, or None if it contributes nothing."""
    if not matches(d, ev):
        return None
    if d.value is None:
        return 1.0
    raw = ev.props.get(d.value)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    if isinstance(raw, float) and not math.isfinite(raw):
        return None
    if raw > VALUE_LIMIT:
        return VALUE_LIMIT
    if raw < -VALUE_LIMIT:
        return -VALUE_LIMIT
    return float(raw)


def distinct_key(d: FeatureDef, ev: Event) -> Any:
    if not matches(d, ev):
        return None
    if d.distinct == "entity_id":
        x: Any = ev.entity_id
    elif d.distinct == "account_id":
        x = ev.account_id
    else:
        assert d.distinct is not None
        x = ev.props.get(d.distinct[len("props.") :])
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


@dataclass
class _History:
    clock: int
    applied: list[tuple[int, Event]] = field(default_factory=list)


class Reference:
    """Recomputes every feature from the full per-key history."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.keys: dict[tuple[str, str], _History] = {}
        self.has_accounts = any(d.key == "account" for d in spec.features)
        self.late_dropped = 0
        self.late_accepted = 0
        self.late_clamped = 0
        self.late_dropped_account = 0
        #: per table ("entity", "account"): the earliest time applied, ever
        self.start: dict[str, int] = {}

    def _apply(self, kind: str, key: str, ev: Event) -> str:
        status, ts = self._place(kind, key, ev)
        if status != "dropped":
            self.start[kind] = min(ts, self.start.get(kind, ts))
        return status

    def _place(self, kind: str, key: str, ev: Event) -> tuple[str, int]:
        h = self.keys.get((kind, key))
        lateness = self.spec.allowed_lateness_ms
        if h is None:
            self.keys[(kind, key)] = _History(ev.ts_ms, [(ev.ts_ms, ev)])
            return "on_time", ev.ts_ms
        if ev.ts_ms >= h.clock:
            h.clock = ev.ts_ms
            h.applied.append((ev.ts_ms, ev))
            return "on_time", ev.ts_ms
        if ev.ts_ms >= h.clock - lateness:
            h.applied.append((ev.ts_ms, ev))
            return "late", ev.ts_ms
        if self.spec.late_policy == "clamp":
            h.applied.append((h.clock - lateness, ev))
            return "clamped", h.clock - lateness
        return "dropped", ev.ts_ms

    def update(
        self, events: list[Event]
    ) -> tuple[list[list[float]], list[bool], list[list[float]]]:
        """Feature rows, accepted flags and per-value tolerances (0: exact)."""
        rows: list[list[float]] = []
        accepted: list[bool] = []
        tols: list[list[float]] = []
        for ev in events:
            status = {"entity": self._apply("entity", ev.entity_id, ev)}
            if self.has_accounts and ev.account_id:
                status["account"] = self._apply("account", ev.account_id, ev)
            ok = "dropped" not in status.values()
            accepted.append(ok)
            if not ok:
                self.late_dropped += 1
                if status["entity"] != "dropped":
                    self.late_dropped_account += 1
            elif {"late", "clamped"} & set(status.values()):
                self.late_accepted += 1
                if "clamped" in status.values():
                    self.late_clamped += 1
            row, tol = [], []
            for o in self.spec.outputs:
                d = self.spec.features[o.feature]
                key = ev.entity_id if d.key == "entity" else ev.account_id
                h = self.keys.get((d.key, key)) if key else None
                value, scale = self._feature(o, d, h, self.start.get(d.key))
                row.append(value)
                tol.append(scale)
            rows.append(row)
            tols.append(tol)
        return rows, accepted, tols

    def evict(self, now_ms: int) -> int:
        cutoff = now_ms - self.spec.entity_ttl_ms
        old = [k for k, h in self.keys.items() if h.clock < cutoff]
        for k in old:
            del self.keys[k]
        return len(old)

    def _window(self, h: _History, d: FeatureDef, window: int) -> list[float]:
        """Values in the window: lo <= ts <= q with lo = (q - W + 1) rounded down to the grid."""
        return [v for _, v in self._window_items(h, d, window)]

    def _window_items(self, h: _History, d: FeatureDef, window: int) -> list[tuple[int, float]]:
        size = self.spec.resolution_ms(window)
        lo = (h.clock - window + 1) // size * size
        items = []
        for ts, ev in h.applied:
            v = value_of(d, ev)
            if v is not None and lo <= ts <= h.clock:
                items.append((ts, v))
        return items

    def _window_sum(self, h: _History, d: FeatureDef, window: int) -> float:
        """A window sum in the documented order: per bucket as applied, oldest bucket first."""
        size = self.spec.resolution_ms(window)
        buckets: dict[int, float] = {}
        for ts, v in self._window_items(h, d, window):
            buckets[ts // size] = buckets.get(ts // size, 0.0) + v
        total = 0.0
        for b in sorted(buckets):
            total += buckets[b]
        return total

    def _feature(
        self, o: OutputDef, d: FeatureDef, h: _History | None, start: int | None
    ) -> tuple[float, float]:
        """Value and tolerance; ``start`` is the earliest time the key's table applied."""
        cap_s = self.spec.recency_cap_ms / 1000.0
        if h is None:
            return (cap_s if o.aggregation == "recency" else 0.0), 0.0
        q = h.clock
        agg = o.aggregation
        if agg in ("count", "sum", "mean", "min", "max"):
            vals = self._window(h, d, o.window_ms)
            if agg == "count":
                return float(len(vals)), 0.0
            if agg == "sum":
                return self._window_sum(h, d, o.window_ms), 0.0
            if agg == "mean":
                return (self._window_sum(h, d, o.window_ms) / len(vals) if vals else 0.0), 0.0
            if not vals:
                return 0.0, 0.0
            return (min(vals) if agg == "min" else max(vals)), 0.0
        if agg == "velocity":
            short = len(self._window(h, d, o.window_ms))
            long = len(self._window(h, d, o.window2_ms))
            if long == 0:
                return 0.0, 0.0
            assert start is not None  # the key has events, so its table has a start
            span = q - start  # the event time the table has seen: the windows' reach
            if span < o.window_ms:  # S' = L' = span (0 on the table's first event)
                value = short / long
            else:
                value = (short / o.window_ms) / (long / min(o.window2_ms, span))
            return value, 1e-12 * value
        if agg == "distinct":
            latest: dict[Any, int] = {}
            for ts, ev in h.applied:
                k = distinct_key(d, ev)
                if k is not None:
                    latest[k] = max(ts, latest.get(k, ts))
            n = sum(1 for ts in latest.values() if q - o.window_ms < ts <= q)
            return float(min(n, d.max_distinct)), 0.0
        matched = [(ts, v) for ts, ev in h.applied if (v := value_of(d, ev)) is not None]
        if agg in ("last", "recency"):
            if not matched:
                return (cap_s if agg == "recency" else 0.0), 0.0
            best = max(ts for ts, _ in matched)
            if agg == "recency":
                return min(q - best, self.spec.recency_cap_ms) / 1000.0, 0.0
            return [v for ts, v in matched if ts == best][-1], 0.0
        # decayed_sum / decayed_rate
        hl = o.half_life_ms
        total = sum(v * 2.0 ** (-(q - ts) / hl) for ts, v in matched)
        scale = sum(abs(v) * 2.0 ** (-(q - ts) / hl) for ts, v in matched)
        if agg == "decayed_rate":
            factor = math.log(2.0) * HOUR_MS / hl
            total, scale = total * factor, scale * factor
        return total, 1e-9 * scale + 1e-12

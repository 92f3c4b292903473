"""The declarative feature spec: parsing, validation, output names, hash.

A spec is a TOML table (``[features]`` in the config file). Scalar keys are
engine settings; every sub-table defines one feature::

    [features]
    allowed_lateness = "10m"
    entity_ttl = "35d"

    [features.pricing_dwell_s]
    description = "seconds on pricing pages"
    types = ["page_view"]
    where = ['props.category == "pricing"']
    value = "props.duration_s"
    aggregations = ["sum", "max"]
    windows = ["1h", "7d"]

Every error names the offending key path, e.g.
``features.pricing_dwell_s.windows[1]: '7x' is not a duration``. The
semantics are in docs/features.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from intentflow.errors import ConfigError
from intentflow.events import KNOWN_TYPES

__all__ = [
    "AGGREGATIONS",
    "COMPARISONS",
    "MAX_WINDOW_MS",
    "MIN_WINDOW_MS",
    "TIER_SIZES_MS",
    "VALUE_LIMIT",
    "Condition",
    "FeatureDef",
    "FeatureSpec",
    "OutputDef",
    "format_duration",
    "parse_duration",
    "resolution_ms",
    "ring_slots",
]

SECOND: Final = 1_000
MINUTE: Final = 60 * SECOND
HOUR: Final = 60 * MINUTE
DAY: Final = 24 * HOUR
_UNITS: Final = {"s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY}
_UNIT_WORDS: Final = (("d", DAY, "day"), ("h", HOUR, "hour"), ("m", MINUTE, "minute"))

#: Bucket sizes a window may get; a window of length W gets the largest size
#: s with W >= buckets_per_window * s (the finest size if none qualifies).
#: Neighbouring sizes differ by at most 6x, so no window keeps more than
#: about 6 * buckets_per_window buckets (a 30-day window: 11 three-day buckets).
TIER_SIZES_MS: Final = (
    10 * SECOND,
    30 * SECOND,
    MINUTE,
    5 * MINUTE,
    15 * MINUTE,
    HOUR,
    4 * HOUR,
    DAY,
    3 * DAY,
)
MIN_WINDOW_MS: Final = MINUTE
MAX_WINDOW_MS: Final = 30 * DAY
#: Numeric prop values are clamped to [-VALUE_LIMIT, VALUE_LIMIT].
VALUE_LIMIT: Final = 1e15

WINDOWED: Final = frozenset({"count", "sum", "mean", "min", "max", "distinct"})
NEEDS_VALUE: Final = frozenset({"sum", "mean", "min", "max", "last"})
AGGREGATIONS: Final = (
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "last",
    "distinct",
    "decayed_sum",
    "decayed_rate",
    "recency",
    "velocity",
)
LATE_POLICIES: Final = ("drop", "clamp")
KEYS: Final = ("entity", "account")
_SETTINGS: Final = {
    "allowed_lateness": "10m",
    "entity_ttl": "35d",
    "late_policy": "drop",
    "recency_cap": "30d",
    "buckets_per_window": 6,
}
_FEATURE_KEYS: Final = (
    "description",
    "key",
    "types",
    "where",
    "value",
    "aggregations",
    "windows",
    "half_lives",
    "velocity",
    "distinct",
    "max_distinct",
)
_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_PROP_RE: Final = re.compile(r"^props\.([A-Za-z_][A-Za-z0-9_]*)$")
_WHERE_RE: Final = re.compile(
    r"^\s*props\.([A-Za-z_][A-Za-z0-9_]*)\s*(==|<=|>=|<|>|\bin\b)\s*(.+?)\s*$"
)
#: Comparison operators of ``where`` conditions (numbers only).
COMPARISONS: Final = ("<", "<=", ">", ">=")
_DURATION_RE: Final = re.compile(r"^([0-9]{1,9})([smhd])$")
_WHERE_HINT: Final = (
    "use 'props.NAME == VALUE', 'props.NAME in [VALUE, ...]' with JSON values, "
    'e.g. props.category in ["pricing", "product"], or props.NAME < NUMBER (also <=, >, >=)'
)

Scalar = str | int | float | bool


def parse_duration(value: object, where: str) -> int:
    """Milliseconds of a duration string such as ``"30s"``, ``"5m"``, ``"1h"``, ``"7d"``.

    >>> parse_duration("90m", "x")
    5400000
    """
    if isinstance(value, str):
        match = _DURATION_RE.match(value.strip())
        if match:
            return int(match.group(1)) * _UNITS[match.group(2)]
    raise ConfigError(f"{where}: {value!r} is not a duration (use 30s, 5m, 1h, 7d)")


def format_duration(ms: int) -> str:
    """Canonical text of a duration: the largest unit that divides it (a day is 24h).

    >>> format_duration(3_600_000), format_duration(DAY), format_duration(90_000)
    ('1h', '24h', '90s')
    """
    for unit, size in (("d", DAY), ("h", HOUR), ("m", MINUTE)):
        if ms and ms % size == 0 and not (unit == "d" and ms == DAY):
            return f"{ms // size}{unit}"
    return f"{ms // SECOND}s"


def _words(ms: int) -> str:
    """'the last hour', 'the last 24 hours', 'the last 90 seconds'."""
    for unit, size, word in _UNIT_WORDS:
        if ms % size == 0 and not (unit == "d" and ms == DAY):
            n = ms // size
            return f"the last {word}" if n == 1 else f"the last {n} {word}s"
    n = ms // SECOND
    return "the last second" if n == 1 else f"the last {n} seconds"


def resolution_ms(window_ms: int, buckets_per_window: int) -> int:
    """Bucket size of a window: the largest tier size s with window >= buckets * s.

    >>> resolution_ms(3_600_000, 6) // 60_000   # 1h -> 5-minute buckets
    5
    """
    best = TIER_SIZES_MS[0]
    for size in TIER_SIZES_MS:
        if window_ms >= buckets_per_window * size:
            best = size
    return best


def ring_slots(window_ms: int, size_ms: int) -> int:
    """Buckets that the ms interval [t - window + 1, t] can touch on a grid of size_ms.

    >>> ring_slots(3_600_000, 300_000)
    13
    """
    return (window_ms + size_ms - 2) // size_ms + 1


@dataclass(frozen=True, slots=True)
class Condition:
    """A filter on ``props.<prop>``.

    ``op`` "in": the prop equals one of ``values`` (see docs/features.md for
    equality); a comparison ("<", "<=", ">", ">="): the prop is a number and
    compares so with ``values[0]``.
    """

    prop: str
    op: str
    values: tuple[Scalar, ...]

    def __str__(self) -> str:
        if self.op != "in":
            return f"props.{self.prop} {self.op} {json.dumps(self.values[0])}"
        if len(self.values) == 1:
            return f"props.{self.prop} == {json.dumps(self.values[0])}"
        return f"props.{self.prop} in {json.dumps(list(self.values))}"


@dataclass(frozen=True, slots=True)
class FeatureDef:
    """One validated feature definition (durations in milliseconds)."""

    name: str
    description: str
    key: str
    types: tuple[str, ...]  # empty: every event type
    where: tuple[Condition, ...]
    value: str | None  # prop name of the numeric value; None: each event counts 1
    aggregations: tuple[str, ...]
    windows: tuple[int, ...]
    half_lives: tuple[int, ...]
    velocity: tuple[tuple[int, int], ...]
    distinct: str | None  # "entity_id", "account_id" or "props.NAME"
    max_distinct: int


@dataclass(frozen=True, slots=True)
class OutputDef:
    """One output column: ``features[feature]`` aggregated by ``aggregation``.

    ``window_ms`` is the window (windowed aggregations, the short window of
    velocity), ``window2_ms`` the long window of velocity, ``half_life_ms``
    the half-life of decayed aggregations; unused fields are 0.
    """

    name: str
    description: str
    feature: int
    aggregation: str
    window_ms: int = 0
    window2_ms: int = 0
    half_life_ms: int = 0


@dataclass(frozen=True)
class FeatureSpec:
    """A validated feature spec. Build it with :meth:`from_dict` or :meth:`default`."""

    features: tuple[FeatureDef, ...]
    outputs: tuple[OutputDef, ...]
    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    spec_hash: str
    allowed_lateness_ms: int
    entity_ttl_ms: int
    late_policy: str
    recency_cap_ms: int
    buckets_per_window: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "features") -> FeatureSpec:
        """Validate a ``[features]`` table; :class:`ConfigError` names the bad key."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
        settings = dict(_SETTINGS)
        defs: list[FeatureDef] = []
        for key, value in data.items():
            path = f"{where}.{key}"
            if key in _SETTINGS:
                settings[key] = value
            elif isinstance(value, Mapping):
                defs.append(_parse_feature(str(key), value, path))
            else:
                raise ConfigError(
                    f"{path}: unknown setting (settings are {', '.join(sorted(_SETTINGS))}; "
                    "a feature is a table such as [features.my_feature])"
                )
        if not defs:
            raise ConfigError(f"{where}: defines no feature")
        lateness = parse_duration(settings["allowed_lateness"], f"{where}.allowed_lateness")
        if lateness > 7 * DAY:
            raise ConfigError(f"{where}.allowed_lateness: at most 7d, got {lateness // DAY}d+")
        policy = settings["late_policy"]
        if policy not in LATE_POLICIES:
            raise ConfigError(
                f"{where}.late_policy: {policy!r} is not one of {', '.join(LATE_POLICIES)}"
            )
        cap = parse_duration(settings["recency_cap"], f"{where}.recency_cap")
        if not SECOND <= cap <= 365 * DAY:
            raise ConfigError(f"{where}.recency_cap: must be between 1s and 365d")
        buckets = settings["buckets_per_window"]
        if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= 60:
            raise ConfigError(f"{where}.buckets_per_window: an integer 1..60, got {buckets!r}")
        ttl = parse_duration(settings["entity_ttl"], f"{where}.entity_ttl")
        longest = max(w for d in defs for w in (*d.windows, *(p[1] for p in d.velocity), 0))
        if ttl < longest + lateness or ttl == 0:
            raise ConfigError(
                f"{where}.entity_ttl: {format_duration(ttl)} is shorter than the longest window "
                f"({format_duration(longest)}) plus allowed_lateness "
                f"({format_duration(lateness)}); idle state would be forgotten while a window "
                "still needs it"
            )
        outputs = tuple(o for i, d in enumerate(defs) for o in _outputs(i, d))
        norm = {
            "settings": [lateness, ttl, policy, cap, buckets],
            "features": [_normalised(d) for d in defs],
        }
        digest = hashlib.sha256(json.dumps(norm, sort_keys=True).encode()).hexdigest()
        return cls(
            features=tuple(defs),
            outputs=outputs,
            names=tuple(o.name for o in outputs),
            descriptions=tuple(o.description for o in outputs),
            spec_hash=digest,
            allowed_lateness_ms=lateness,
            entity_ttl_ms=ttl,
            late_policy=policy,
            recency_cap_ms=cap,
            buckets_per_window=buckets,
        )

    @classmethod
    def default(cls) -> FeatureSpec:
        """The default spec shipped as ``intentflow/defaults/features.toml``."""
        text = resources.files("intentflow").joinpath("defaults", "features.toml").read_text()
        return cls.from_dict(tomllib.loads(text)["features"], where="features")

    def resolution_ms(self, window_ms: int) -> int:
        """Bucket size of a window under this spec."""
        return resolution_ms(window_ms, self.buckets_per_window)


def _normalised(d: FeatureDef) -> dict[str, Any]:
    """Everything that shapes state or values (descriptions excluded)."""
    return {
        "name": d.name,
        "key": d.key,
        "types": list(d.types),
        "where": [[c.prop, c.op, [[type(v).__name__, v] for v in c.values]] for c in d.where],
        "value": d.value,
        "aggregations": list(d.aggregations),
        "windows": list(d.windows),
        "half_lives": list(d.half_lives),
        "velocity": [list(p) for p in d.velocity],
        "distinct": d.distinct,
        "max_distinct": d.max_distinct,
    }


def _str_list(value: object, path: str, *, allow_str: bool = False) -> list[str]:
    if allow_str and isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}: expected a non-empty list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(f"{path}[{i}]: expected a string, got {item!r}")
        if value.index(item) != i:
            raise ConfigError(f"{path}[{i}]: {item!r} is listed twice")
    return list(value)


def _durations(value: object, path: str, lo: int, hi: int) -> tuple[int, ...]:
    items = _str_list(value, path)
    out: list[int] = []
    for i, item in enumerate(items):
        ms = parse_duration(item, f"{path}[{i}]")
        if not lo <= ms <= hi:
            raise ConfigError(
                f"{path}[{i}]: {item!r} is outside {format_duration(lo)}..{format_duration(hi)}"
            )
        if ms in out:
            raise ConfigError(f"{path}[{i}]: {item!r} repeats {format_duration(ms)}")
        out.append(ms)
    return tuple(out)


def _parse_where(value: object, path: str) -> tuple[Condition, ...]:
    conds: list[Condition] = []
    for i, text in enumerate(_str_list(value, path, allow_str=True)):
        p = f"{path}[{i}]"
        match = _WHERE_RE.match(text)
        if not match:
            raise ConfigError(f"{p}: cannot read {text!r} ({_WHERE_HINT})")
        prop, op, rhs = match.groups()
        try:
            parsed = json.loads(rhs)
        except ValueError as exc:
            raise ConfigError(f"{p}: {rhs!r} is not a JSON value ({_WHERE_HINT})") from exc
        if op in COMPARISONS:
            if isinstance(parsed, bool) or not isinstance(parsed, int | float):
                raise ConfigError(f"{p}: {op!r} needs a number, got {rhs!r}")
            if not math.isfinite(parsed):
                raise ConfigError(f"{p}: {rhs!r} is not a finite number")
            cond = Condition(prop, op, (parsed,))
        else:
            values = [parsed] if op == "==" else parsed
            if op == "in" and (not isinstance(parsed, list) or not parsed):
                raise ConfigError(f"{p}: 'in' needs a non-empty JSON list ({_WHERE_HINT})")
            for v in values:
                if not isinstance(v, str | int | float) or (
                    isinstance(v, float) and not math.isfinite(v)
                ):
                    raise ConfigError(f"{p}: {v!r} is not a string, number or boolean")
            if any(c.prop == prop and c.op == "in" for c in conds):
                raise ConfigError(f"{p}: props.{prop} already has an == or in condition")
            cond = Condition(prop, "in", tuple(values))
        if cond in conds:
            raise ConfigError(f"{p}: the same condition is listed twice")
        conds.append(cond)
    return tuple(conds)


def _prop(value: object, path: str, *, allowed: tuple[str, ...] = ()) -> str:
    if isinstance(value, str) and (value in allowed or _PROP_RE.match(value)):
        return value
    extra = "".join(f", {a!r}" for a in allowed)
    raise ConfigError(f"{path}: {value!r} is not a prop reference (use 'props.NAME'{extra})")


def _parse_feature(name: str, table: Mapping[str, Any], path: str) -> FeatureDef:
    if not _NAME_RE.match(name) or "__" in name:
        raise ConfigError(
            f"{path}: feature names are lower_snake_case, start with a letter, "
            "at most 64 characters, no '__'"
        )
    for key in table:
        if key not in _FEATURE_KEYS:
            raise ConfigError(f"{path}.{key}: unknown key (allowed: {', '.join(_FEATURE_KEYS)})")
    description = table.get("description", name.replace("_", " "))
    if not isinstance(description, str) or not description.strip():
        raise ConfigError(f"{path}.description: expected a non-empty string")
    key = table.get("key", "entity")
    if key not in KEYS:
        raise ConfigError(f"{path}.key: {key!r} is not one of {', '.join(KEYS)}")
    if "types" not in table:
        raise ConfigError(f'{path}.types: missing (list event types, or ["*"] for all)')
    types = _str_list(table["types"], f"{path}.types")
    for i, t in enumerate(types):
        if t not in KNOWN_TYPES and not (t == "*" and len(types) == 1):
            raise ConfigError(
                f"{path}.types[{i}]: unknown event type {t!r} "
                f'(known: {", ".join(sorted(KNOWN_TYPES))}; or ["*"] alone for all)'
            )
    where = _parse_where(table["where"], f"{path}.where") if "where" in table else ()
    value = None
    if "value" in table:
        value = _prop(table["value"], f"{path}.value")[len("props.") :]
    aggs = _str_list(table.get("aggregations"), f"{path}.aggregations")
    for i, agg in enumerate(aggs):
        if agg not in AGGREGATIONS:
            raise ConfigError(
                f"{path}.aggregations[{i}]: unknown aggregation {agg!r} "
                f"(known: {', '.join(AGGREGATIONS)})"
            )
        if agg in NEEDS_VALUE and value is None:
            raise ConfigError(
                f"{path}.aggregations[{i}]: {agg!r} needs 'value = \"props.NAME\"' "
                "(without a value every event counts 1: use count)"
            )
    needs = {
        "windows": bool(WINDOWED.intersection(aggs)),
        "half_lives": bool({"decayed_sum", "decayed_rate"}.intersection(aggs)),
        "velocity": "velocity" in aggs,
        "distinct": "distinct" in aggs,
    }
    for key_name, needed in needs.items():
        if needed and key_name not in table:
            raise ConfigError(f"{path}.{key_name}: missing (required by the aggregations)")
        if not needed and key_name in table:
            raise ConfigError(f"{path}.{key_name}: set, but no aggregation uses it")
    windows = (
        _durations(table["windows"], f"{path}.windows", MIN_WINDOW_MS, MAX_WINDOW_MS)
        if needs["windows"]
        else ()
    )
    half_lives = (
        _durations(table["half_lives"], f"{path}.half_lives", MINUTE, MAX_WINDOW_MS)
        if needs["half_lives"]
        else ()
    )
    velocity = _parse_velocity(table["velocity"], f"{path}.velocity") if needs["velocity"] else ()
    distinct = None
    if needs["distinct"]:
        distinct = _prop(table["distinct"], f"{path}.distinct", allowed=("entity_id", "account_id"))
    max_distinct = table.get("max_distinct", 32)
    if "max_distinct" in table and not needs["distinct"]:
        raise ConfigError(f"{path}.max_distinct: set, but no aggregation uses it")
    if isinstance(max_distinct, bool) or not isinstance(max_distinct, int):
        raise ConfigError(f"{path}.max_distinct: expected an integer, got {max_distinct!r}")
    if not 1 <= max_distinct <= 256:
        raise ConfigError(f"{path}.max_distinct: must be 1..256, got {max_distinct}")
    return FeatureDef(
        name=name,
        description=description.strip(),
        key=key,
        types=() if types == ["*"] else tuple(types),
        where=where,
        value=value,
        aggregations=tuple(aggs),
        windows=windows,
        half_lives=half_lives,
        velocity=velocity,
        distinct=distinct,
        max_distinct=max_distinct if needs["distinct"] else 0,
    )


def _parse_velocity(value: object, path: str) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f'{path}: expected a list of [short, long] pairs, e.g. [["5m", "24h"]]')
    pairs: list[tuple[int, int]] = []
    for i, pair in enumerate(value):
        p = f"{path}[{i}]"
        if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
            raise ConfigError(f'{p}: expected a [short, long] pair, e.g. ["5m", "24h"]')
        short, long = _durations(list(pair), p, MIN_WINDOW_MS, MAX_WINDOW_MS)
        if short >= long:
            raise ConfigError(f"{p}: the short window must be shorter than the long one")
        if (short, long) in pairs:
            raise ConfigError(f"{p}: pair listed twice")
        pairs.append((short, long))
    return tuple(pairs)


def _outputs(index: int, d: FeatureDef) -> list[OutputDef]:
    """Output columns of one feature, in aggregation order then window order."""
    desc = d.description
    out: list[OutputDef] = []
    for agg in d.aggregations:
        if agg in WINDOWED:
            for w in d.windows:
                span = _words(w)
                text = {
                    "count": f"number of {desc} in {span}",
                    "sum": f"total {desc} in {span}",
                    "mean": f"average {desc} in {span}",
                    "min": f"smallest {desc} in {span}",
                    "max": f"largest {desc} in {span}",
                    "distinct": f"distinct {_distinct_noun(d)} with {desc} in {span}",
                }[agg]
                name = f"{d.name}__{agg}__{format_duration(w)}"
                out.append(OutputDef(name, text, index, agg, window_ms=w))
        elif agg in ("decayed_sum", "decayed_rate"):
            for h in d.half_lives:
                hl = format_duration(h)
                text = (
                    f"{desc}, decayed with a {hl} half-life"
                    if agg == "decayed_sum"
                    else f"{desc} per hour, decayed with a {hl} half-life"
                )
                out.append(OutputDef(f"{d.name}__{agg}__{hl}", text, index, agg, half_life_ms=h))
        elif agg == "velocity":
            for short, long in d.velocity:
                text = f"rate of {desc} in {_words(short)} relative to {_words(long)}"
                name = f"{d.name}__velocity__{format_duration(short)}_{format_duration(long)}"
                out.append(OutputDef(name, text, index, agg, window_ms=short, window2_ms=long))
        elif agg == "last":
            out.append(OutputDef(f"{d.name}__last", f"latest {desc}", index, agg))
        else:  # recency
            text = f"seconds since the most recent of the {desc}"
            out.append(OutputDef(f"{d.name}__recency_s", text, index, agg))
    return out


def _distinct_noun(d: FeatureDef) -> str:
    if d.distinct == "entity_id":
        return "contacts"
    if d.distinct == "account_id":
        return "accounts"
    return f"values of {d.distinct}"

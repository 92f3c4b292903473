"""The rules file: schema, parsing and validation (compilation is in :mod:`.compile`).

A rules document is TOML (a file, or the text of a Redis key)::

    format = 1

    [[rules]]
    id = "product_dwell"
    types = ["page_view"]
    when = 'props.category == "product" && props.duration_s > 120'
    cooldown = "24h"

    [rules.alert]
    action = "call_now"
    target = "owner"
    deadline = "1h"

Every error is a :class:`RulesError` that names the offending key path, e.g.
``rules[2] (id 'x').alert.deadline: '1x' is not a duration (use 30s, 5m, 1h, 7d)``.
The semantics are in docs/rules.md.

>>> doc = parse_rules_text('''
... [[rules]]
... id = "long_dwell"
... types = ["page_view"]
... when = "props.duration_s > 120"
... [rules.alert]
... action = "call_now"
... ''')
>>> rule = doc.rules[0]
>>> rule.id, rule.types, rule.alert.deadline_ms, rule.scope
('long_dwell', ('page_view',), 86400000, 'entity')
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from intentflow.errors import ConfigError
from intentflow.features.spec import parse_duration

__all__ = [
    "FORMAT",
    "MAX_RULES",
    "AbsenceSpec",
    "AdjustSpec",
    "AlertSpec",
    "CountSpec",
    "RuleDef",
    "RulesDoc",
    "RulesError",
    "parse_rules",
    "parse_rules_text",
]

#: The only rules-file format so far.
FORMAT: Final = 1
MAX_RULES: Final = 1000
MAX_EXPRESSION_CHARS: Final = 4096
MAX_KEYWORDS: Final = 2000
MAX_KEYWORD_CHARS: Final = 200
MAX_COUNT: Final = 1000
SECOND: Final = 1000
DAY: Final = 86_400 * SECOND

_ID_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_PROP_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_TEAM_RE: Final = re.compile(r"^team:([A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")
_TYPE_MAX: Final = 64

_TOP_KEYS: Final = ("format", "rules", "lookups")
_RULE_KEYS: Final = (
    "id",
    "description",
    "enabled",
    "types",
    "when",
    "keywords",
    "keyword_fields",
    "whole_words",
    "scope",
    "cooldown",
    "count",
    "absence",
    "alert",
    "adjust",
)
_ALERT_KEYS: Final = ("action", "priority", "target", "fallback", "deadline", "details")
_ADJUST_KEYS: Final = ("boost", "suppress")
_COUNT_KEYS: Final = ("at_least", "within", "gap", "reset_types", "reset_when")
_ABSENCE_KEYS: Final = ("after", "watch")
_SCOPES: Final = ("entity", "account")


class RulesError(ConfigError):
    """A rules document is invalid; the message names the key path."""


@dataclass(frozen=True, slots=True)
class AlertSpec:
    """What a firing rule sends: a catalog action, a priority, a target and a deadline.

    ``action`` is ``None`` only for absence rules (they then repeat the
    awaited alert's action); ``priority`` ``None`` means the action's value.
    ``target`` is ``"owner"`` or ``"team:NAME"``; ``fallback`` (``"team:NAME"``)
    is used when the owner is unknown. ``details`` are CEL expressions
    evaluated when the rule fires, their results shown in the alert.
    """

    action: str | None
    priority: float | None
    target: str
    fallback: str | None
    deadline_ms: int
    details: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class AdjustSpec:
    """A change of the model-driven decision: multiply the score, or suppress it."""

    boost: float = 1.0
    suppress: bool = False


@dataclass(frozen=True, slots=True)
class CountSpec:
    """Fire on the ``at_least``-th matching event within ``within``, unless reset.

    Matching events closer than ``gap`` to the last counted one count once
    (a visit of several page views). An event of a type in ``reset_types``
    (and, if given, satisfying ``reset_when``) clears the count.
    """

    at_least: int
    within_ms: int
    gap_ms: int
    reset_types: tuple[str, ...]
    reset_when: str | None


@dataclass(frozen=True, slots=True)
class AbsenceSpec:
    """Fire when an awaited alert gets no ``outcome`` within ``after``.

    ``watch`` lists trigger ids (``model:intent``, ``rule:ID``) whose alerts
    are awaited; ``*`` is every alert except those of absence rules.
    """

    after_ms: int
    watch: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RuleDef:
    """One validated rule (durations in milliseconds)."""

    id: str
    description: str
    enabled: bool
    types: tuple[str, ...]  # empty: every event type (event rules)
    when: str | None
    keywords: tuple[str, ...]
    keyword_fields: tuple[str, ...]
    whole_words: bool
    scope: str
    cooldown_ms: int
    count: CountSpec | None
    absence: AbsenceSpec | None
    alert: AlertSpec | None
    adjust: AdjustSpec | None
    canonical: str  # the rule's table as canonical JSON (for diffs)

    @property
    def trigger_id(self) -> str:
        """The trigger id of the rule's alerts: ``rule:ID``."""
        return f"rule:{self.id}"


@dataclass(frozen=True)
class RulesDoc:
    """A validated rules document and its content hash (comments and layout excluded)."""

    rules: tuple[RuleDef, ...]
    lookups: Mapping[str, Mapping[str, Any]]
    content_hash: str

    @classmethod
    def empty(cls) -> RulesDoc:
        """No rules at all."""
        return parse_rules({})

    def get(self, rule_id: str) -> RuleDef | None:
        """The rule with this id, or ``None``."""
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        return None


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def parse_rules_text(text: str, *, source: str = "rules") -> RulesDoc:
    """Parse TOML text into a validated :class:`RulesDoc`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RulesError(f"{source}: not valid TOML: {err}") from err
    return parse_rules(data, where=source)


def parse_rules(data: Mapping[str, Any], *, where: str = "rules") -> RulesDoc:
    """Validate a parsed rules document; :class:`RulesError` names the bad key."""
    if not isinstance(data, Mapping):
        raise RulesError(f"{where}: expected a table, got {type(data).__name__}")
    for key in data:
        if key not in _TOP_KEYS:
            raise RulesError(
                f"{where}: unknown key {key!r} (known: {', '.join(_TOP_KEYS)}; "
                "each rule is a [[rules]] table)"
            )
    fmt = data.get("format", FORMAT)
    if fmt != FORMAT or isinstance(fmt, bool):
        raise RulesError(f"{where}.format: {fmt!r} is not a known format (use {FORMAT})")
    lookups = _lookups(data.get("lookups", {}), f"{where}.lookups")
    raw = data.get("rules", [])
    if not isinstance(raw, list):
        raise RulesError(f"{where}.rules: expected an array of tables ([[rules]])")
    if len(raw) > MAX_RULES:
        raise RulesError(f"{where}.rules: {len(raw)} rules, at most {MAX_RULES}")
    rules: list[RuleDef] = []
    seen: dict[str, int] = {}
    for i, table in enumerate(raw):
        path = f"{where}.rules[{i}]"
        if not isinstance(table, Mapping):
            raise RulesError(f"{path}: expected a table")
        rule_id = table.get("id")
        if isinstance(rule_id, str) and _ID_RE.match(rule_id):
            path = f"{path} (id {rule_id!r})"
        rule = _rule(table, path)
        if rule.id in seen:
            raise RulesError(f"{path}.id: {rule.id!r} is already the id of rules[{seen[rule.id]}]")
        seen[rule.id] = i
        rules.append(rule)
    ids = set(seen)
    for i, rule in enumerate(rules):
        if rule.absence is None:
            continue
        for j, trig in enumerate(rule.absence.watch):
            p = f"{where}.rules[{i}] (id {rule.id!r}).absence.watch[{j}]"
            if trig == rule.trigger_id:
                raise RulesError(f"{p}: an absence rule cannot await its own alerts")
            if trig.startswith("rule:") and trig[5:] not in ids:
                raise RulesError(f"{p}: no rule has the id {trig[5:]!r}")
    digest = hashlib.sha256(_canonical({"format": fmt, "rules": raw, "lookups": lookups}))
    return RulesDoc(rules=tuple(rules), lookups=lookups, content_hash=digest.hexdigest())


def _lookups(value: object, path: str) -> dict[str, dict[str, Any]]:
    if not isinstance(value, Mapping):
        raise RulesError(f"{path}: expected a table of tables")
    out: dict[str, dict[str, Any]] = {}
    for name, table in value.items():
        if not _NAME_RE.match(name):
            raise RulesError(f"{path}.{name}: lookup names are identifiers (letters, digits, _)")
        if not isinstance(table, Mapping):
            raise RulesError(f"{path}.{name}: expected a table of key = value")
        for key, item in table.items():
            if not isinstance(item, str | int | float | bool) or (
                isinstance(item, float) and not math.isfinite(item)
            ):
                raise RulesError(f"{path}.{name}.{key}: expected a string, number or boolean")
        out[str(name)] = dict(table)
    return out


def _check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in table:
        if key not in allowed:
            raise RulesError(f"{path}.{key}: unknown key (allowed: {', '.join(allowed)})")


def _str(table: Mapping[str, Any], key: str, path: str, default: str | None = None) -> str | None:
    value = table.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise RulesError(f"{path}.{key}: expected a non-empty string, got {value!r}")
    return value


def _bool(table: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise RulesError(f"{path}.{key}: expected true or false, got {value!r}")
    return value


def _number(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RulesError(f"{path}: expected a finite number, got {value!r}")
    return float(value)


def _duration(value: object, path: str, lo: int, hi: int) -> int:
    try:
        ms = parse_duration(value, path)
    except ConfigError as err:
        raise RulesError(str(err)) from err
    if not lo <= ms <= hi:
        raise RulesError(f"{path}: {value!r} is outside {lo // SECOND}s..{hi // DAY}d")
    return ms


def _strings(value: object, path: str, *, what: str = "strings") -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise RulesError(f"{path}: expected a non-empty list of {what}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise RulesError(f"{path}[{i}]: expected a non-empty string, got {item!r}")
        if value.index(item) != i:
            raise RulesError(f"{path}[{i}]: {item!r} is listed twice")
    return tuple(value)


def _types(value: object, path: str) -> tuple[str, ...]:
    types = _strings(value, path, what='event types (or ["*"])')
    if "*" in types:
        if len(types) != 1:
            raise RulesError(f'{path}: "*" (every type) must stand alone')
        return ()
    for i, t in enumerate(types):
        if len(t) > _TYPE_MAX:
            raise RulesError(f"{path}[{i}]: event types have at most {_TYPE_MAX} characters")
        if t == "outcome":
            raise RulesError(
                f"{path}[{i}]: outcome events are feedback, not triggers "
                "(use an absence rule to act on missing outcomes)"
            )
    return types


def _expression(table: Mapping[str, Any], key: str, path: str) -> str | None:
    text = _str(table, key, path)
    if text is not None and len(text) > MAX_EXPRESSION_CHARS:
        raise RulesError(f"{path}.{key}: longer than {MAX_EXPRESSION_CHARS} characters")
    return text


def _target(value: object, path: str, *, allow_owner: bool) -> str:
    if not isinstance(value, str) or not (
        (allow_owner and value == "owner") or _TEAM_RE.match(value)
    ):
        allowed = '"owner" or "team:NAME"' if allow_owner else '"team:NAME"'
        raise RulesError(f"{path}: {value!r} is not a target (use {allowed})")
    return value


def _alert(value: object, path: str, *, absence: bool) -> AlertSpec:
    if not isinstance(value, Mapping):
        raise RulesError(f"{path}: expected a table ([rules.alert])")
    _check_keys(value, _ALERT_KEYS, path)
    action = _str(value, "action", path)
    if action is None and not absence:
        raise RulesError(f"{path}.action: missing (an action id of the action catalog)")
    priority = None
    if "priority" in value:
        priority = _number(value["priority"], f"{path}.priority")
        if priority < 0:
            raise RulesError(f"{path}.priority: must be >= 0, got {priority:g}")
    target = _target(value.get("target", "owner"), f"{path}.target", allow_owner=True)
    fallback = None
    if "fallback" in value:
        fallback = _target(value["fallback"], f"{path}.fallback", allow_owner=False)
        if target != "owner":
            raise RulesError(f'{path}.fallback: only used with target = "owner"')
    deadline = _duration(value.get("deadline", "24h"), f"{path}.deadline", SECOND, 365 * DAY)
    details_raw = value.get("details", {})
    if not isinstance(details_raw, Mapping):
        raise RulesError(f"{path}.details: expected a table of name = 'CEL expression'")
    details: list[tuple[str, str]] = []
    for name in details_raw:
        if not _NAME_RE.match(name):
            raise RulesError(f"{path}.details.{name}: names are identifiers (letters, digits, _)")
        text = _expression(details_raw, name, f"{path}.details")
        assert text is not None
        details.append((str(name), text))
    return AlertSpec(action, priority, target, fallback, deadline, tuple(details))


def _adjust(value: object, path: str) -> AdjustSpec:
    if not isinstance(value, Mapping):
        raise RulesError(f"{path}: expected a table ([rules.adjust])")
    _check_keys(value, _ADJUST_KEYS, path)
    if not value:
        raise RulesError(f"{path}: set boost = FACTOR or suppress = true")
    boost = _number(value.get("boost", 1.0), f"{path}.boost")
    if not 0.0 < boost <= 100.0:
        raise RulesError(f"{path}.boost: must be in (0, 100], got {boost:g}")
    suppress = _bool(value, "suppress", path, False)
    if suppress and "boost" in value:
        raise RulesError(f"{path}: give boost or suppress, not both")
    return AdjustSpec(boost, suppress)


def _count(value: object, path: str, types: tuple[str, ...]) -> CountSpec:
    if not isinstance(value, Mapping):
        raise RulesError(f"{path}: expected a table ([rules.count])")
    _check_keys(value, _COUNT_KEYS, path)
    at_least = value.get("at_least")
    if (
        isinstance(at_least, bool)
        or not isinstance(at_least, int)
        or not 2 <= at_least <= MAX_COUNT
    ):
        raise RulesError(f"{path}.at_least: an integer 2..{MAX_COUNT}, got {at_least!r}")
    if "within" not in value:
        raise RulesError(f'{path}.within: missing (e.g. within = "14d")')
    within = _duration(value["within"], f"{path}.within", SECOND, 365 * DAY)
    gap = _duration(value.get("gap", "0s"), f"{path}.gap", 0, 365 * DAY)
    if gap >= within:
        raise RulesError(f"{path}.gap: must be shorter than within")
    reset_types: tuple[str, ...] = ()
    if "reset_types" in value:
        reset_types = _types(value["reset_types"], f"{path}.reset_types")
        if not reset_types:
            raise RulesError(f'{path}.reset_types: "*" would reset on every event')
        both = set(reset_types) & set(types) if types else set(reset_types)
        if both:
            raise RulesError(
                f"{path}.reset_types: {sorted(both)} also counted by the rule's types; "
                "an event type either counts or resets"
            )
    reset_when = _expression(value, "reset_when", path)
    if reset_when is not None and not reset_types:
        raise RulesError(f"{path}.reset_when: needs reset_types")
    return CountSpec(at_least, within, gap, reset_types, reset_when)


def _absence(value: object, path: str) -> AbsenceSpec:
    if not isinstance(value, Mapping):
        raise RulesError(f"{path}: expected a table ([rules.absence])")
    _check_keys(value, _ABSENCE_KEYS, path)
    if "after" not in value:
        raise RulesError(f'{path}.after: missing (e.g. after = "4h")')
    after = _duration(value["after"], f"{path}.after", SECOND, 90 * DAY)
    watch = _strings(value.get("watch", ["*"]), f"{path}.watch", what="trigger ids")
    for i, trig in enumerate(watch):
        ok = (
            trig == "*"
            or (trig.startswith("rule:") and bool(_ID_RE.match(trig[5:])))
            or (trig.startswith("model:") and len(trig) > len("model:"))
        )
        if not ok:
            raise RulesError(
                f'{path}.watch[{i}]: {trig!r} is not a trigger id ("model:intent", '
                '"rule:ID" or "*")'
            )
    if "*" in watch and len(watch) != 1:
        raise RulesError(f'{path}.watch: "*" must stand alone')
    return AbsenceSpec(after, watch)


def _rule(table: Mapping[str, Any], path: str) -> RuleDef:
    _check_keys(table, _RULE_KEYS, path)
    rule_id = table.get("id")
    if not isinstance(rule_id, str) or not _ID_RE.match(rule_id):
        raise RulesError(
            f"{path}.id: {rule_id!r} is not a rule id (lower case letters, digits, '_', '-', "
            "'.', at most 64 characters, starting with a letter or digit)"
        )
    description = _str(table, "description", path, rule_id.replace("_", " "))
    assert description is not None
    enabled = _bool(table, "enabled", path, True)
    absence = _absence(table["absence"], f"{path}.absence") if "absence" in table else None
    has_alert, has_adjust = "alert" in table, "adjust" in table
    if has_alert == has_adjust:
        raise RulesError(f"{path}: give exactly one outcome, [rules.alert] or [rules.adjust]")
    if absence is not None:
        for key in ("types", "keywords", "keyword_fields", "whole_words", "count", "scope"):
            if key in table:
                raise RulesError(
                    f"{path}.{key}: not used by absence rules (they react to alerts, not events)"
                )
        if has_adjust:
            raise RulesError(f"{path}.adjust: an absence rule can only alert")
        types: tuple[str, ...] = ()
    else:
        if "types" not in table:
            raise RulesError(f'{path}.types: missing (list event types, or ["*"] for all)')
        types = _types(table["types"], f"{path}.types")
    when = _expression(table, "when", path)
    keywords: tuple[str, ...] = ()
    if "keywords" in table:
        keywords = _strings(table["keywords"], f"{path}.keywords", what="keywords")
        if len(keywords) > MAX_KEYWORDS:
            raise RulesError(f"{path}.keywords: {len(keywords)} keywords, at most {MAX_KEYWORDS}")
        for i, kw in enumerate(keywords):
            if len(kw) > MAX_KEYWORD_CHARS:
                raise RulesError(f"{path}.keywords[{i}]: longer than {MAX_KEYWORD_CHARS}")
    fields: tuple[str, ...] = ("text",)
    if "keyword_fields" in table:
        if not keywords:
            raise RulesError(f"{path}.keyword_fields: set, but the rule has no keywords")
        fields = _strings(table["keyword_fields"], f"{path}.keyword_fields", what="prop names")
        for i, name in enumerate(fields):
            if not _PROP_RE.match(name):
                raise RulesError(f"{path}.keyword_fields[{i}]: {name!r} is not a prop name")
    whole_words = _bool(table, "whole_words", path, False)
    scope = table.get("scope", "entity")
    if scope not in _SCOPES:
        raise RulesError(f"{path}.scope: {scope!r} is not one of {', '.join(_SCOPES)}")
    cooldown = _duration(table.get("cooldown", "0s"), f"{path}.cooldown", 0, 365 * DAY)
    count = _count(table["count"], f"{path}.count", types) if "count" in table else None
    if count is not None and has_adjust:
        raise RulesError(f"{path}.count: a counting rule can only alert")
    alert = (
        _alert(table["alert"], f"{path}.alert", absence=absence is not None) if has_alert else None
    )
    adjust = _adjust(table["adjust"], f"{path}.adjust") if has_adjust else None
    if adjust is not None and "cooldown" in table:
        raise RulesError(f"{path}.cooldown: adjustments apply to every matching event")
    return RuleDef(
        id=rule_id,
        description=description.strip(),
        enabled=enabled,
        types=types,
        when=when,
        keywords=keywords,
        keyword_fields=fields if keywords else (),
        whole_words=whole_words,
        scope=str(scope),
        cooldown_ms=cooldown,
        count=count,
        absence=absence,
        alert=alert,
        adjust=adjust,
        canonical=_canonical(dict(table)).decode(),
    )

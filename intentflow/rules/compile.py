"""Compile a validated rules document once per rules version.

Conditions are CEL (``common-expression-language``): each expression is
compiled once and its references checked (variables, feature names, event
fields, lookups, regular-expression literals). Then, for speed:

- rules are indexed by event type (their explicit ``types``);
- top-level conjuncts of simple forms (``props.x == "a"``, ``props.d > 120``,
  ``features.f >= 3.0``, ``score > 0.8``, ``has(props.x)``) become native
  *guards* with CEL's outcome (:func:`compile_guards`); one guard per rule
  indexes it (a hash of string values, or thresholds sorted for bisection),
  and a condition made only of guards never runs CEL at all;
- evaluating CEL costs little, but converting Python values into CEL costs
  microseconds per value, so the engine builds one CEL context per event
  holding only what the remaining programs read (a :class:`Plan`).

>>> from intentflow.features.spec import FeatureSpec
>>> from intentflow.online_models.catalog import ActionCatalog
>>> from intentflow.rules.model import parse_rules_text
>>> doc = parse_rules_text('''
... [[rules]]
... id = "dwell"
... types = ["page_view"]
... when = 'props.category == "product" && props.page.startsWith("/product/")'
... [rules.alert]
... action = "call_now"
... ''')
>>> rs = compile_rules(doc, FeatureSpec.default(), ActionCatalog.default(), number=3)
>>> rs.version[:2], [r.id for r in rs.for_type("page_view")], rs.for_type("chat_message")
('3-', ['dwell'], ())
>>> rs.rules[0].index_guard.value, rs.plan_for("page_view").props
(frozenset({'product'}), ('category', 'page'))
"""

from __future__ import annotations

import bisect
import copy
import difflib
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import cel
import numpy as np
from numpy.typing import NDArray

from intentflow.events import Event
from intentflow.features.spec import FeatureSpec
from intentflow.online_models.catalog import ActionCatalog
from intentflow.rules.keywords import KeywordMatcher
from intentflow.rules.model import RuleDef, RulesDoc, RulesError

__all__ = [
    "ABSENCE_VARIABLES",
    "EVENT_FIELDS",
    "EVENT_VARIABLES",
    "CompiledRule",
    "Guard",
    "GuardSpec",
    "Plan",
    "RangeGroup",
    "References",
    "RuleSet",
    "TypeIndex",
    "compile_guards",
    "compile_rules",
    "index_key",
    "references",
]

#: Variables of event-rule expressions.
EVENT_VARIABLES: Final = ("event", "props", "features", "score", "lookups")
#: Variables of absence-rule conditions (evaluated on each awaited alert).
ABSENCE_VARIABLES: Final = ("alert", "lookups")
#: Fields of the ``event`` variable and the :class:`Event` attributes they come from.
EVENT_FIELDS: Final[Mapping[str, str]] = {
    "id": "event_id",
    "type": "type",
    "entity_id": "entity_id",
    "account_id": "account_id",
    "ts": "ts_ms",
    "source": "source",
}
_ROOTS: Final = ("event", "props", "features", "lookups", "alert")
#: A native test of one conjunct: ``guard(props, feature_row, score) -> bool``.
Guard = Callable[[Mapping[str, Any], "NDArray[np.float64] | None", float], bool]

_TOKEN: Final = re.compile(
    r"""(?P<str>[rRbB]{0,2}(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))"""
    r"""|(?P<comment>//[^\n]*)"""
)
_ROOT_REF: Final = re.compile(
    r"(?<![\w.])(" + "|".join(_ROOTS) + r")\b(?:\s*\.\s*([A-Za-z_]\w*)\b(?!\s*\())?"
)
_BOUND: Final = re.compile(
    r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,"
    r"(?:\s*([A-Za-z_]\w*)\s*,)?"
)
_STRING_LIT: Final = r"""(?:[rR]?(?:"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))"""
_MATCHES: Final = re.compile(r"matches\s*\(\s*(?:[^,()]*,\s*)?(" + _STRING_LIT + r")\s*\)")


@dataclass(frozen=True)
class References:
    """What one expression reads: fields per root variable (``None``: the whole map)."""

    roots: Mapping[str, frozenset[str] | None]
    variables: frozenset[str]

    def fields(self, root: str) -> frozenset[str] | None:
        """Fields of ``root`` read (empty: not used; ``None``: the whole map)."""
        return self.roots.get(root, frozenset())

    def uses(self, root: str) -> bool:
        return root in self.roots or root in self.variables


def _strip(expr: str) -> str:
    """The expression with string literals emptied and comments removed."""
    return _TOKEN.sub(lambda m: '""' if m.group("str") else " ", expr)


def references(expr: str) -> References:
    """Static references of a CEL expression to the root variables.

    ``props.x`` reads the field ``x``; any other use of a root (``props["x"]``,
    ``props.exists(...)``, ``size(props)``) reads the whole map.

    >>> refs = references('props.category == "a.props.b" && has(props.duration_s)')
    >>> sorted(refs.fields("props"))
    ['category', 'duration_s']
    >>> print(references('"x" in props').fields("props"))
    None
    """
    text = _strip(expr)
    roots: dict[str, set[str] | None] = {}
    for m in _ROOT_REF.finditer(text):
        root, name = m.group(1), m.group(2)
        current = roots.setdefault(root, set())
        if current is None:
            continue
        if name is None:
            roots[root] = None
        else:
            current.add(name)
    frozen = {k: (None if v is None else frozenset(v)) for k, v in roots.items()}
    return References(frozen, frozenset())


def _bound_names(expr: str) -> set[str]:
    names: set[str] = set()
    for m in _BOUND.finditer(_strip(expr)):
        names.update(g for g in m.groups() if g)
    return names


@dataclass(frozen=True)
class Plan:
    """What the CEL context of an event holds: only what its rules read.

    ``props``/``features`` ``None`` means the whole map; ``features`` pairs
    a name with its column in the feature row.
    """

    uses_props: bool = False
    props: tuple[str, ...] | None = ()
    event: tuple[tuple[str, str], ...] = ()
    uses_features: bool = False
    features: tuple[tuple[str, int], ...] = ()
    score: bool = False
    lookups: bool = False

    def context(
        self,
        ev: Event,
        score: float,
        row: NDArray[np.float64] | None,
        lookups: Mapping[str, Any],
    ) -> cel.Context:
        """One CEL context for ``ev`` (values are converted once, here)."""
        env: dict[str, Any] = {}
        if self.uses_props:
            p = ev.props
            env["props"] = p if self.props is None else {k: p[k] for k in self.props if k in p}
        if self.event:
            env["event"] = {name: getattr(ev, attr) for name, attr in self.event}
        if self.uses_features:
            env["features"] = (
                {} if row is None else {name: float(row[i]) for name, i in self.features}
            )
        if self.score:
            env["score"] = float(score)
        if self.lookups:
            env["lookups"] = lookups
        return cel.Context(env)

    @property
    def empty(self) -> bool:
        return not (self.uses_props or self.event or self.uses_features or self.score) and not (
            self.lookups
        )


def _plan(refs: Iterable[References], columns: Mapping[str, int]) -> Plan:
    props: set[str] | None = set()
    feats: set[str] | None = set()
    event: set[str] = set()
    uses_props = uses_features = score = lookups = False
    for r in refs:
        if r.uses("props"):
            uses_props = True
            f = r.fields("props")
            props = None if f is None or props is None else props | f
        if r.uses("features"):
            uses_features = True
            f = r.fields("features")
            feats = None if f is None or feats is None else feats | f
        if r.uses("event"):
            f = r.fields("event")
            event |= set(EVENT_FIELDS) if f is None else set(f)
        score = score or "score" in r.variables
        lookups = lookups or r.uses("lookups")
    feature_cols = tuple(
        (name, columns[name]) for name in (sorted(columns) if feats is None else sorted(feats))
    )
    return Plan(
        uses_props=uses_props,
        props=None if props is None else tuple(sorted(props)),
        event=tuple((name, EVENT_FIELDS[name]) for name in sorted(event)),
        uses_features=uses_features,
        features=feature_cols,
        score=score,
        lookups=lookups,
    )


class CompiledRule:
    """A rule ready to run: compiled programs, keyword ids, catalog action, index key.

    The attributes read on every event are plain slots (``id``, ``scope_entity``,
    ``cooldown_ms``, ...); the validated definition is ``defn``. Native tests of
    top-level conjuncts (:func:`compile_guards`): one of them, ``index_guard``,
    places the rule in its :class:`TypeIndex` (an event that fails it never sees
    the rule); ``guards`` are the others. ``when`` is ``None`` when the guards
    are the whole condition.
    """

    __slots__ = (
        "adjust",
        "alert",
        "channel",
        "cooldown_ms",
        "count",
        "defn",
        "detail_plan",
        "details",
        "guards",
        "id",
        "index_guard",
        "keyword_fields",
        "keyword_ids",
        "position",
        "priority",
        "reasons",
        "reset_refs",
        "reset_when",
        "scope_entity",
        "trigger_id",
        "when",
        "when_refs",
        "whole_words",
    )

    def __init__(
        self,
        defn: RuleDef,
        position: int,
        *,
        when: cel.Program | None = None,
        when_refs: References | None = None,
        reset_when: cel.Program | None = None,
        reset_refs: References | None = None,
        details: tuple[tuple[str, cel.Program], ...] = (),
        detail_plan: Plan | None = None,
        channel: str = "",
        priority: float = 0.0,
        reasons: tuple[tuple[str, str, int], ...] = (),
        guards: tuple[GuardSpec, ...] = (),
    ) -> None:
        self.defn = defn
        self.position = position
        self.id = defn.id
        self.trigger_id = defn.trigger_id
        self.scope_entity = defn.scope == "entity"
        self.cooldown_ms = defn.cooldown_ms
        self.count = defn.count
        self.adjust = defn.adjust
        self.alert = defn.alert
        self.when = when
        self.when_refs = when_refs
        self.reset_when = reset_when
        self.reset_refs = reset_refs
        self.details = details
        self.detail_plan = detail_plan if detail_plan is not None else Plan()
        self.keyword_ids: frozenset[int] = frozenset()
        self.keyword_fields = defn.keyword_fields
        self.whole_words = defn.whole_words
        self.channel = channel
        self.priority = priority
        self.reasons = reasons
        # The index guard selects the rule through its TypeIndex; the others run per event.
        self.index_guard = _index_guard(guards)
        self.guards: tuple[Guard, ...] = tuple(g.test for g in guards if g is not self.index_guard)

    def __repr__(self) -> str:
        return f"CompiledRule({self.id!r}, position={self.position})"


@dataclass(frozen=True)
class RangeGroup:
    """Rules whose index guard compares one value with a threshold, sorted by threshold."""

    kind: str  # "prop", "feature" or "score"
    name: str
    col: int
    op: str
    thresholds: tuple[float, ...]
    rules: tuple[CompiledRule, ...]

    def passing(
        self, props: Mapping[str, Any], row: NDArray[np.float64] | None, score: float
    ) -> Sequence[CompiledRule]:
        """The rules whose comparison holds for this event (one bisection)."""
        if self.kind == "feature":
            if row is None:
                return ()
            value = float(row[self.col])
        elif self.kind == "score":
            value = float(score)
        else:
            raw = props.get(self.name)
            if not (type(raw) is int or type(raw) is float):
                return ()
            value = float(raw)
        if value != value:  # NaN compares false
            return ()
        op = self.op
        if op == ">=":
            return self.rules[: bisect.bisect_right(self.thresholds, value)]
        if op == ">":
            return self.rules[: bisect.bisect_left(self.thresholds, value)]
        if op == "<=":
            return self.rules[bisect.bisect_left(self.thresholds, value) :]
        return self.rules[bisect.bisect_right(self.thresholds, value) :]


@dataclass(frozen=True)
class TypeIndex:
    """The event rules of one event type, indexed by their index guards.

    ``plain`` rules have no index guard; ``by_prop`` maps a prop name to
    {value: rules whose ``props.NAME == "text"`` guard accepts it} (merged
    with ``plain`` beforehand when there is a single such prop); each
    :class:`RangeGroup` holds rules whose index guard is a comparison.
    """

    rules: tuple[CompiledRule, ...] = ()
    plain: tuple[CompiledRule, ...] = ()
    by_prop: tuple[tuple[str, Mapping[str, tuple[CompiledRule, ...]]], ...] = ()
    ranges: tuple[RangeGroup, ...] = ()

    @classmethod
    def of(cls, rules: Sequence[CompiledRule]) -> TypeIndex:
        plain: list[CompiledRule] = []
        tables: dict[str, dict[str, list[CompiledRule]]] = {}
        groups: dict[tuple[str, str, int, str], list[tuple[float, int, CompiledRule]]] = {}
        for r in rules:
            g = r.index_guard
            if g is None:
                plain.append(r)
            elif g.kind == "eq":
                table = tables.setdefault(g.name, {})
                assert isinstance(g.value, frozenset)
                for value in sorted(g.value):
                    table.setdefault(value, []).append(r)
            else:
                assert isinstance(g.value, float)
                groups.setdefault((g.kind, g.name, g.col, g.op), []).append(
                    (g.value, r.position, r)
                )
        # With one prop table, its entries are merged with the plain rules beforehand.
        by_prop = tuple(
            (
                prop,
                {
                    v: tuple(sorted((*plain, *rs), key=_position))
                    if len(tables) == 1
                    else tuple(rs)
                    for v, rs in table.items()
                },
            )
            for prop, table in tables.items()
        )
        ranges = []
        for (kind, name, col, op), items in groups.items():
            items.sort(key=lambda item: (item[0], item[1]))
            ranges.append(
                RangeGroup(
                    kind, name, col, op, tuple(i[0] for i in items), tuple(i[2] for i in items)
                )
            )
        return cls(tuple(rules), tuple(plain), by_prop, tuple(ranges))

    def candidates(
        self,
        props: Mapping[str, Any],
        row: NDArray[np.float64] | None = None,
        score: float = 0.0,
    ) -> Sequence[CompiledRule]:
        """The rules worth trying on this event, in file order."""
        base: Sequence[CompiledRule] = self.plain
        extra: list[CompiledRule] = []
        by_prop = self.by_prop
        if len(by_prop) == 1:  # entries already hold the plain rules
            prop, table = by_prop[0]
            value = props.get(prop)
            if type(value) is str:
                base = table.get(value, base)
        else:
            for prop, table in by_prop:
                value = props.get(prop)
                if type(value) is str:
                    found = table.get(value)
                    if found:
                        extra.extend(found)
        for group in self.ranges:
            extra.extend(group.passing(props, row, score))
        if not extra:
            return base
        return sorted((*base, *extra), key=_position)


def _position(rule: CompiledRule) -> int:
    return rule.position


@dataclass(eq=False)
class RuleSet:
    """One compiled version of the rules, shared read-only by every shard of a process.

    ``plan_cache`` maps the programs an event needs (by rule position) to its
    context plan; it is a bounded memo, not state.
    """

    doc: RulesDoc
    rules: tuple[CompiledRule, ...]
    number: int = 0
    source: str = ""
    text: str = ""
    matcher: KeywordMatcher | None = None
    index: dict[str, TypeIndex] = field(default_factory=dict)
    any_index: TypeIndex = field(default_factory=TypeIndex)
    resets: dict[str, tuple[CompiledRule, ...]] = field(default_factory=dict)
    absence: tuple[CompiledRule, ...] = ()
    by_id: dict[str, CompiledRule] = field(default_factory=dict)
    track_owners: bool = False
    columns: Mapping[str, int] = field(default_factory=dict)
    plan_cache: dict[tuple[int, ...], Plan] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        return self.doc.content_hash

    @property
    def version(self) -> str:
        """``{number}-{first 12 hex digits of the content hash}``."""
        return f"{self.number}-{self.doc.content_hash[:12]}"

    @property
    def lookups(self) -> Mapping[str, Any]:
        return self.doc.lookups

    @property
    def empty(self) -> bool:
        """No enabled rule."""
        return not self.rules

    def for_type(self, event_type: str) -> tuple[CompiledRule, ...]:
        """The event rules that can fire on an event of this type."""
        return self.index.get(event_type, self.any_index).rules

    def plan_for(self, event_type: str) -> Plan:
        """The context plan of every program that can run on an event of this type."""
        rules = self.for_type(event_type)
        refs = [r.when_refs for r in rules if r.when_refs is not None]
        refs += [r.reset_refs for r in self.resets.get(event_type, ()) if r.reset_refs is not None]
        return _plan(refs, self.columns)

    def plan_of(self, key: tuple[int, ...]) -> Plan:
        """The plan for the programs in ``key``: ``2 × position`` (condition) or ``+ 1`` (reset)."""
        plan = self.plan_cache.get(key)
        if plan is None:
            refs: list[References] = []
            for k in key:
                rule = self.rules[k >> 1]
                r = rule.reset_refs if k & 1 else rule.when_refs
                if r is not None:
                    refs.append(r)
            plan = _plan(refs, self.columns)
            if len(self.plan_cache) >= 4096:
                self.plan_cache.clear()
            self.plan_cache[key] = plan
        return plan

    def with_number(self, number: int) -> RuleSet:
        """The same rules under another version number."""
        clone = copy.copy(self)
        clone.number = number
        return clone

    @classmethod
    def empty_set(cls) -> RuleSet:
        """No rules (version number 0)."""
        return cls(doc=RulesDoc.empty(), rules=())


def _first_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _program(
    expr: str,
    path: str,
    allowed: Sequence[str],
    spec: FeatureSpec,
    lookups: Mapping[str, Any],
) -> tuple[cel.Program, References]:
    try:
        program = cel.compile(expr)
    except (ValueError, RuntimeError, TypeError) as err:
        raise RulesError(f"{path}: {_first_line(err)}") from err
    refs = references(expr)
    variables = frozenset(program.variables()) - _bound_names(expr)
    unknown = sorted(variables - set(allowed))
    if unknown:
        raise RulesError(
            f"{path}: unknown variable {unknown[0]!r} (expressions here can use "
            f"{', '.join(allowed)})"
        )
    feats = refs.fields("features")
    if feats:
        names = set(spec.names)
        for name in sorted(feats):
            if name not in names:
                close = difflib.get_close_matches(name, spec.names, n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise RulesError(
                    f"{path}: features.{name} is not a feature of the feature spec "
                    f"(spec {spec.spec_hash[:8]}, {len(spec.names)} features{hint})"
                )
    fields = refs.fields("event")
    for name in sorted(fields or ()):
        if name not in EVENT_FIELDS:
            raise RulesError(
                f"{path}: event.{name} is not an event field (known: {', '.join(EVENT_FIELDS)})"
            )
    for name in sorted(refs.fields("lookups") or ()):
        if name not in lookups:
            raise RulesError(f"{path}: lookups.{name} is not defined in [lookups]")
    for m in _MATCHES.finditer(expr):
        try:
            cel.evaluate(f'"".matches({m.group(1)})')
        except (ValueError, RuntimeError, TypeError) as err:
            raise RulesError(f"{path}: bad regular expression: {_first_line(err)}") from err
    return program, References(refs.roots, variables)


def _conjuncts(expr: str) -> list[str] | None:
    """The top-level ``&&`` terms of an expression, or ``None`` if it is not a conjunction."""
    terms: list[str] = []
    depth = 0
    start = 0
    i = 0
    n = len(expr)
    while i < n:
        m = _TOKEN.match(expr, i)
        if m is not None:
            i = m.end()
            continue
        ch = expr[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and (ch == "?" or expr.startswith("||", i)):
            return None
        elif depth == 0 and expr.startswith("&&", i):
            terms.append(expr[start:i])
            start = i + 2
            i += 2
            continue
        i += 1
    terms.append(expr[start:])
    return [_unwrap(t) for t in terms]


def _unwrap(term: str) -> str:
    """A term without white space and redundant outer parentheses."""
    term = term.strip()
    while term.startswith("(") and term.endswith(")"):
        depth = 0
        for i, ch in enumerate(term):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(term) - 1:
                return term
        term = term[1:-1].strip()
    return term


_PLAIN_STR: Final = r'"[^"\\\n]*"'
_EQ_LEFT: Final = re.compile(r"^props\s*\.\s*([A-Za-z_]\w*)\s*==\s*(" + _PLAIN_STR + r")$")
_EQ_RIGHT: Final = re.compile(r"^(" + _PLAIN_STR + r")\s*==\s*props\s*\.\s*([A-Za-z_]\w*)$")
_EQ_IN: Final = re.compile(
    r"^props\s*\.\s*([A-Za-z_]\w*)\s+in\s*\[\s*("
    + _PLAIN_STR
    + r"(?:\s*,\s*"
    + _PLAIN_STR
    + r")*)\s*,?\s*\]$"
)
_PLAIN_STR_RE: Final = re.compile(_PLAIN_STR)


def index_key(expr: str) -> tuple[str, frozenset[str]] | None:
    """A ``props.NAME == "text"`` (or ``in [...]``) conjunct that the condition requires.

    >>> index_key('has(props.x) && props.category == "product" && score > 0.5')
    ('category', frozenset({'product'}))
    >>> sorted(index_key('(props.form in ["demo", "trial"]) && true')[1])
    ['demo', 'trial']
    >>> print(index_key('props.category == "a" || score > 0.9'))
    None
    """
    terms = _conjuncts(expr)
    if terms is None:
        return None
    for term in terms:
        m = _EQ_LEFT.match(term)
        if m:
            return m.group(1), frozenset({m.group(2)[1:-1]})
        m = _EQ_RIGHT.match(term)
        if m:
            return m.group(2), frozenset({m.group(1)[1:-1]})
        m = _EQ_IN.match(term)
        if m:
            values = frozenset(v[1:-1] for v in _PLAIN_STR_RE.findall(m.group(2)))
            return m.group(1), values
    return None


_NUMBER: Final = r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_ORDER: Final = r"(>=|<=|>|<)"
_CMP: Final = r"(>=|<=|==|>|<)"
_G_PROP_ORDER: Final = re.compile(
    r"^props\s*\.\s*([A-Za-z_]\w*)\s*" + _ORDER + r"\s*(" + _NUMBER + r")$"
)
_G_FEATURE: Final = re.compile(
    r"^features\s*\.\s*([A-Za-z_]\w*)\s*" + _CMP + r"\s*(" + _NUMBER + r")$"
)
_G_SCORE: Final = re.compile(r"^score\s*" + _CMP + r"\s*(" + _NUMBER + r")$")
_G_HAS: Final = re.compile(r"^has\s*\(\s*props\s*\.\s*([A-Za-z_]\w*)\s*\)$")
_OPS: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
}


class GuardSpec(NamedTuple):
    """A guard and what it tests (for indexing): ``kind`` is ``eq``, ``has``, ``prop``,
    ``feature`` or ``score``; ``value`` the accepted strings (``eq``) or the number."""

    kind: str
    name: str
    col: int
    op: str
    value: float | frozenset[str]
    test: Guard


def _index_guard(guards: Sequence[GuardSpec]) -> GuardSpec | None:
    """The guard that indexes a rule: a string equality, else an ordering comparison."""
    for g in guards:
        if g.kind == "eq":
            return g
    for g in guards:
        if g.kind in ("prop", "feature", "score") and g.op != "==":
            return g
    return None


def _guard(term: str, columns: Mapping[str, int]) -> GuardSpec | None:
    """The native test of one conjunct, exact for "is it true?", or ``None``."""
    m = _EQ_LEFT.match(term) or _EQ_RIGHT.match(term) or _EQ_IN.match(term)
    if m is not None:
        key = index_key(term)
        assert key is not None
        prop, values = key

        def eq_guard(props: Mapping[str, Any], row: Any, score: float) -> bool:
            v = props.get(prop)
            return type(v) is str and v in values

        return GuardSpec("eq", prop, -1, "==", values, eq_guard)
    m = _G_HAS.match(term)
    if m is not None:
        name = m.group(1)
        return GuardSpec("has", name, -1, "", 0.0, lambda props, row, score: name in props)
    m = _G_PROP_ORDER.match(term)
    if m is not None:
        name, op, number = m.group(1), _OPS[m.group(2)], float(m.group(3))

        def prop_guard(props: Mapping[str, Any], row: Any, score: float) -> bool:
            v = props.get(name)
            return (type(v) is int or type(v) is float) and bool(op(v, number))

        return GuardSpec("prop", name, -1, m.group(2), number, prop_guard)
    m = _G_FEATURE.match(term)
    if m is not None and m.group(1) in columns:
        col, op, number = columns[m.group(1)], _OPS[m.group(2)], float(m.group(3))

        def feature_guard(props: Mapping[str, Any], row: Any, score: float) -> bool:
            return row is not None and bool(op(float(row[col]), number))

        return GuardSpec("feature", m.group(1), col, m.group(2), number, feature_guard)
    m = _G_SCORE.match(term)
    if m is not None:
        op, number = _OPS[m.group(1)], float(m.group(2))

        def score_guard(props: Mapping[str, Any], row: Any, score: float) -> bool:
            return bool(op(float(score), number))

        return GuardSpec("score", "", -1, m.group(1), number, score_guard)
    return None


def compile_guards(expr: str, columns: Mapping[str, int]) -> tuple[tuple[GuardSpec, ...], bool]:
    """Native tests of a condition's top-level conjuncts, and whether they are all of it.

    A condition ``A && B && ...`` can only be true when every conjunct is.
    Conjuncts of the forms ``props.NAME == "text"``, ``props.NAME in ["a", "b"]``,
    ``has(props.NAME)``, ``props.NAME < NUMBER`` (``<=``, ``>``, ``>=``),
    ``features.NAME <op> NUMBER`` and ``score <op> NUMBER`` (``<op>`` also
    ``==``) are tested in Python first, with CEL's outcome: a prop that is
    absent or of another type makes the CEL term false or an error, and the
    guard false. When every conjunct has a guard, CEL is not run at all.

    >>> guards, complete = compile_guards('has(props.d) && props.d > 120', {})
    >>> tests = [g.test for g in guards]
    >>> complete, [t({"d": 150}, None, 0.0) for t in tests], tests[1]({"d": "150"}, None, 0.0)
    (True, [True, True], False)
    >>> compile_guards('props.page.startsWith("/p") && score >= 0.5', {})[1]
    False
    """
    terms = _conjuncts(expr)
    if terms is None:
        return (), False
    guards: list[GuardSpec] = []
    complete = True
    for term in terms:
        g = _guard(term, columns)
        if g is None:
            complete = False
        else:
            guards.append(g)
    return tuple(guards), complete


def compile_rules(
    doc: RulesDoc,
    spec: FeatureSpec,
    catalog: ActionCatalog,
    *,
    number: int = 0,
    source: str = "rules",
    text: str = "",
) -> RuleSet:
    """Compile and index ``doc`` against a feature spec and an action catalog.

    Every rule is checked, enabled or not; only enabled rules are indexed.
    Raises :class:`RulesError` naming the rule and key.
    """
    columns = {name: i for i, name in enumerate(spec.names)}
    descriptions = dict(zip(spec.names, spec.descriptions, strict=True))
    actions = {a.id: a for a in catalog.actions}
    all_keywords = [kw for rule in doc.rules if rule.enabled for kw in rule.keywords]
    matcher = None
    if all_keywords:
        try:
            matcher = KeywordMatcher(all_keywords)
        except ValueError as err:
            raise RulesError(f"{source}: {err}") from err
    compiled: list[CompiledRule] = []
    for pos, rule in enumerate(doc.rules):
        path = f"{source}: rules[{pos}] (id {rule.id!r})"
        allowed = ABSENCE_VARIABLES if rule.absence is not None else EVENT_VARIABLES
        when = when_refs = reset = reset_refs = None
        if rule.when is not None:
            when, when_refs = _program(rule.when, f"{path}.when", allowed, spec, doc.lookups)
        if rule.count is not None and rule.count.reset_when is not None:
            reset, reset_refs = _program(
                rule.count.reset_when, f"{path}.count.reset_when", allowed, spec, doc.lookups
            )
        details: list[tuple[str, cel.Program]] = []
        detail_refs: list[References] = []
        channel, priority = "", 0.0
        if rule.alert is not None:
            for name, expr in rule.alert.details:
                prog, refs = _program(
                    expr, f"{path}.alert.details.{name}", allowed, spec, doc.lookups
                )
                details.append((name, prog))
                detail_refs.append(refs)
            if rule.alert.action is not None:
                action = actions.get(rule.alert.action)
                if action is None:
                    raise RulesError(
                        f"{path}.alert.action: {rule.alert.action!r} is not in the action "
                        f"catalog (known: {', '.join(actions)})"
                    )
                channel = action.channel
                priority = action.value if rule.alert.priority is None else rule.alert.priority
            elif rule.alert.priority is not None:
                priority = rule.alert.priority
        reasons: tuple[tuple[str, str, int], ...] = ()
        if when_refs is not None and rule.absence is None:
            feats = when_refs.fields("features")
            reasons = tuple(
                (name, descriptions[name], columns[name]) for name in sorted(feats or ())
            )
        if not rule.enabled:
            continue
        guards: tuple[GuardSpec, ...] = ()
        if rule.when is not None and rule.absence is None:
            guards, complete = compile_guards(rule.when, columns)
            if complete:  # every conjunct runs natively: no CEL on the hot path
                when = when_refs = None
        c = CompiledRule(
            rule,
            len(compiled),
            when=when,
            when_refs=when_refs,
            reset_when=reset,
            reset_refs=reset_refs,
            details=tuple(details),
            detail_plan=_plan(detail_refs, columns),
            channel=channel,
            priority=priority,
            reasons=reasons,
            guards=guards,
        )
        if matcher is not None and rule.keywords:
            c.keyword_ids = frozenset(matcher.index(k) for k in rule.keywords)
        compiled.append(c)
    event_rules = [c for c in compiled if c.defn.absence is None]
    resets: dict[str, tuple[CompiledRule, ...]] = {}
    for c in event_rules:
        if c.count is not None:
            for t in c.count.reset_types:
                resets[t] = (*resets.get(t, ()), c)
    named_types = sorted({t for c in event_rules for t in c.defn.types} | set(resets))
    any_type = [c for c in event_rules if not c.defn.types]
    index = {
        t: TypeIndex.of([c for c in event_rules if not c.defn.types or t in c.defn.types])
        for t in named_types
    }
    track_owners = any(c.alert is not None and c.alert.target == "owner" for c in compiled)
    return RuleSet(
        doc=doc,
        rules=tuple(compiled),
        number=number,
        source=source,
        text=text,
        matcher=matcher,
        index=index,
        any_index=TypeIndex.of(any_type),
        resets=resets,
        absence=tuple(c for c in compiled if c.defn.absence is not None),
        by_id={c.id: c for c in compiled},
        track_owners=track_owners,
        columns=columns,
    )

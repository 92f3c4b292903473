"""Compile a validated rules document once per rules version.

Conditions are CEL (``common-expression-language``): each expression is
compiled once, its references checked (variables, feature names, event
fields, lookups, regular-expression literals), and the rules are indexed by
event type. Evaluating CEL costs little; converting Python values into CEL
costs a few microseconds per value, so for every event type a :class:`Plan`
lists exactly the props, event fields and features that the rules of that
type read, and the engine builds one CEL context per event with only those.

>>> from intentflow.features.spec import FeatureSpec
>>> from intentflow.online_models.catalog import ActionCatalog
>>> from intentflow.rules.model import parse_rules_text
>>> doc = parse_rules_text('''
... [[rules]]
... id = "dwell"
... types = ["page_view"]
... when = 'props.category == "product" && features.product_views__count__24h >= 2.0'
... [rules.alert]
... action = "call_now"
... ''')
>>> rs = compile_rules(doc, FeatureSpec.default(), ActionCatalog.default(), number=3)
>>> rs.version[:2], [r.id for r in rs.for_type("page_view")], rs.for_type("chat_message")
('3-', ['dwell'], ())
>>> plan = rs.plan_for("page_view")
>>> plan.props, [name for name, _ in plan.features]
(('category',), ['product_views__count__24h'])
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

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
    "Plan",
    "References",
    "RuleSet",
    "compile_rules",
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
    ``cooldown_ms``, ...); the validated definition is ``defn``. ``eq_prop`` and
    ``eq_values``: a top-level conjunct ``props.NAME == "text"`` (or ``in [...]``)
    of the condition; the rule is only tried on events whose prop has one of
    those values (any other event makes the condition false or an error).
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
        "eq_prop",
        "eq_values",
        "id",
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
        eq: tuple[str, frozenset[str]] | None = None,
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
        self.eq_prop: str | None = eq[0] if eq else None
        self.eq_values: frozenset[str] = eq[1] if eq else frozenset()

    def __repr__(self) -> str:
        return f"CompiledRule({self.id!r}, position={self.position})"


@dataclass(frozen=True)
class TypeIndex:
    """The event rules of one event type: all of them, and split by index key.

    ``plain`` rules have no ``props.NAME == "text"`` conjunct; ``by_prop``
    maps a prop name to {value: rules whose conjunct accepts it}.
    """

    rules: tuple[CompiledRule, ...] = ()
    plain: tuple[CompiledRule, ...] = ()
    by_prop: tuple[tuple[str, Mapping[str, tuple[CompiledRule, ...]]], ...] = ()

    @classmethod
    def of(cls, rules: Sequence[CompiledRule]) -> TypeIndex:
        plain = tuple(r for r in rules if r.eq_prop is None)
        tables: dict[str, dict[str, list[CompiledRule]]] = {}
        for r in rules:
            if r.eq_prop is not None:
                table = tables.setdefault(r.eq_prop, {})
                for value in sorted(r.eq_values):
                    table.setdefault(value, []).append(r)
        by_prop = tuple(
            (prop, {v: tuple(rs) for v, rs in table.items()}) for prop, table in tables.items()
        )
        return cls(tuple(rules), plain, by_prop)

    def candidates(self, props: Mapping[str, Any]) -> Sequence[CompiledRule]:
        """The rules worth trying on an event with these props, in file order."""
        if not self.by_prop:
            return self.plain
        extra: list[CompiledRule] = []
        for prop, table in self.by_prop:
            value = props.get(prop)
            if isinstance(value, str):
                found = table.get(value)
                if found:
                    extra.extend(found)
        if not extra:
            return self.plain
        if not self.plain and len(self.by_prop) == 1:
            return extra
        return sorted((*self.plain, *extra), key=_position)


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
        elif depth == 0 and expr.startswith("||", i):
            return None
        elif depth == 0 and ch == "?":
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
        eq = index_key(rule.when) if rule.when is not None and rule.absence is None else None
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
            eq=eq,
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

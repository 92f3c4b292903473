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


@dataclass(frozen=True, eq=False)
class CompiledRule:
    """A rule ready to run: compiled programs, keyword ids, catalog action."""

    defn: RuleDef
    position: int
    when: cel.Program | None
    when_refs: References | None
    reset_when: cel.Program | None
    reset_refs: References | None
    details: tuple[tuple[str, cel.Program], ...]
    detail_plan: Plan
    keyword_ids: frozenset[int]
    channel: str
    priority: float
    reasons: tuple[tuple[str, str, int], ...]  # (feature, description, column)

    @property
    def id(self) -> str:
        return self.defn.id

    @property
    def trigger_id(self) -> str:
        return self.defn.trigger_id


@dataclass(eq=False)
class RuleSet:
    """One compiled version of the rules, shared read-only by every shard of a process."""

    doc: RulesDoc
    rules: tuple[CompiledRule, ...]
    number: int = 0
    source: str = ""
    text: str = ""
    matcher: KeywordMatcher | None = None
    by_type: dict[str, tuple[CompiledRule, ...]] = field(default_factory=dict)
    any_type: tuple[CompiledRule, ...] = ()
    resets: dict[str, tuple[CompiledRule, ...]] = field(default_factory=dict)
    plans: dict[str, Plan] = field(default_factory=dict)
    any_plan: Plan = field(default_factory=Plan)
    absence: tuple[CompiledRule, ...] = ()
    by_id: dict[str, CompiledRule] = field(default_factory=dict)
    track_owners: bool = False

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
        return self.by_type.get(event_type, self.any_type)

    def plan_for(self, event_type: str) -> Plan:
        """The CEL context plan of an event of this type."""
        return self.plans.get(event_type, self.any_plan)

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
        compiled.append(
            CompiledRule(
                defn=rule,
                position=pos,
                when=when,
                when_refs=when_refs,
                reset_when=reset,
                reset_refs=reset_refs,
                details=tuple(details),
                detail_plan=_plan(detail_refs, columns),
                keyword_ids=frozenset(),
                channel=channel,
                priority=priority,
                reasons=reasons,
            )
        )
    enabled = [c for c in compiled if c.defn.enabled]
    all_keywords = [kw for c in enabled for kw in c.defn.keywords]
    matcher = None
    if all_keywords:
        try:
            matcher = KeywordMatcher(all_keywords)
        except ValueError as err:
            raise RulesError(f"{source}: {err}") from err
        enabled = [
            c
            if not c.defn.keywords
            else _with_keywords(c, frozenset(matcher.index(k) for k in c.defn.keywords))
            for c in enabled
        ]
    event_rules = [c for c in enabled if c.defn.absence is None]
    named_types = sorted({t for c in event_rules for t in c.defn.types})
    any_type = tuple(c for c in event_rules if not c.defn.types)
    by_type = {
        t: tuple(c for c in event_rules if not c.defn.types or t in c.defn.types)
        for t in named_types
    }
    resets: dict[str, tuple[CompiledRule, ...]] = {}
    for c in event_rules:
        if c.defn.count is not None:
            for t in c.defn.count.reset_types:
                resets[t] = (*resets.get(t, ()), c)

    def plan_of(rules: Iterable[CompiledRule], resetters: Iterable[CompiledRule]) -> Plan:
        refs = [c.when_refs for c in rules if c.when_refs is not None]
        refs += [c.reset_refs for c in resetters if c.reset_refs is not None]
        return _plan(refs, columns)

    plans = {t: plan_of(by_type.get(t, any_type), resets.get(t, ())) for t in {*by_type, *resets}}
    for t in resets:
        by_type.setdefault(t, any_type)
    track_owners = any(c.defn.alert is not None and c.defn.alert.target == "owner" for c in enabled)
    return RuleSet(
        doc=doc,
        rules=tuple(enabled),
        number=number,
        source=source,
        text=text,
        matcher=matcher,
        by_type=by_type,
        any_type=any_type,
        resets=resets,
        plans=plans,
        any_plan=plan_of(any_type, ()),
        absence=tuple(c for c in enabled if c.defn.absence is not None),
        by_id={c.id: c for c in enabled},
        track_owners=track_owners,
    )


def _with_keywords(rule: CompiledRule, ids: frozenset[int]) -> CompiledRule:
    clone = copy.copy(rule)
    object.__setattr__(clone, "keyword_ids", ids)
    return clone

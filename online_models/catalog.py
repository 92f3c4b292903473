"""The next-best-action catalog: actions and their eligibility, as data.

The defaults live in ``intentflow/defaults/actions.toml``; the engine
configuration's ``[actions]`` table (same format) replaces them, or points at
another file with ``path = "..."``. Eligibility is data first (the event
types an action applies to, the customer flag, one required event prop),
plus an optional CEL expression ``eligible_if`` over the event, the
features, the score and the customer flag, compiled once at load and
evaluated only for actions that pass everything else. The ``[bandit]`` table
configures how the policy learns from feedback
(:class:`~intentflow.online_models.bandit.BanditConfig`).

>>> catalog = ActionCatalog.default()
>>> [a.id for a in catalog.actions][:3]
['call_now', 'retention_call', 'book_demo']
>>> catalog.get("book_demo").channel
'meeting'
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Final

import cel

from intentflow.errors import ConfigError
from intentflow.online_models._validate import InvalidFieldError, build_dataclass, require_table
from intentflow.online_models.bandit import BanditConfig

__all__ = [
    "CHANNELS",
    "ELIGIBILITY_VARIABLES",
    "Action",
    "ActionCatalog",
    "compile_eligibility",
    "load_catalog",
]

#: Channels an action can use.
CHANNELS: Final[tuple[str, ...]] = ("phone", "email", "meeting", "in_app")

#: Variables an ``eligible_if`` expression can use.
ELIGIBILITY_VARIABLES: Final[tuple[str, ...]] = ("event", "features", "score", "customer")

DAY_MS: Final[int] = 86_400_000


def compile_eligibility(source: str, where: str = "eligible_if") -> Any:
    """Compile a CEL eligibility expression; a :class:`ConfigError` names ``where``.

    >>> compile_eligibility('event.type == "page_view" && !customer').source
    'event.type == "page_view" && !customer'
    >>> compile_eligibility("visits > 3", where="x.eligible_if")
    Traceback (most recent call last):
    ...
    intentflow.errors.ConfigError: x.eligible_if: unknown variable(s) ['visits'] ...
    """
    try:
        program = cel.compile(source)
    except ValueError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"{where}: not a valid CEL expression: {first}") from err
    unknown = sorted(set(program.variables()) - set(ELIGIBILITY_VARIABLES))
    if unknown:
        raise ConfigError(
            f"{where}: unknown variable(s) {unknown} (use {', '.join(ELIGIBILITY_VARIABLES)}, "
            "e.g. features.pricing_views__count__1h or event.props.owner)"
        )
    return program


@dataclass(frozen=True)
class Action:
    """One action the engine can recommend.

    ``value`` is the business value of the action succeeding and ``lever``
    a business multiplier of its priority; ``cooldown_s`` the event time
    during which the same entity does not get it again, and
    ``account_cooldown_s`` the same for any contact of the account;
    ``daily_cap`` the most alerts of this action per entity per UTC day of
    event time, ``owner_daily_capacity`` per owner (``props.owner`` of the
    triggering event) per day (0: no limit). ``suppress_after_rejections``
    rejections of this action by an entity within ``suppress_days`` pause it
    for that entity for ``suppress_days`` (0: never). ``min_score`` is its
    own score floor (on top of the global threshold). Eligibility: ``types``
    (event types it applies to; empty = all), ``exclude_if_customer`` /
    ``only_if_customer``, ``requires_prop`` (an event prop that must be
    present and non-empty) and ``eligible_if`` (a CEL expression).
    """

    id: str
    description: str
    channel: str
    value: float
    cooldown_s: float = 86_400.0
    min_score: float = 0.0
    types: tuple[str, ...] = ()
    exclude_if_customer: bool = False
    only_if_customer: bool = False
    requires_prop: str | None = None
    lever: float = 1.0
    account_cooldown_s: float = 0.0
    daily_cap: int = 0
    owner_daily_capacity: int = 0
    suppress_after_rejections: int = 0
    suppress_days: float = 30.0
    eligible_if: str | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise InvalidFieldError("id", "must not be empty")
        if self.channel not in CHANNELS:
            raise InvalidFieldError(
                "channel", f"{self.channel!r} is not one of {', '.join(CHANNELS)}"
            )
        if self.value < 0:
            raise InvalidFieldError("value", f"must be >= 0, got {self.value!r}")
        if self.cooldown_s < 0:
            raise InvalidFieldError("cooldown_s", f"must be >= 0, got {self.cooldown_s!r}")
        if not 0.0 <= self.min_score <= 1.0:
            raise InvalidFieldError("min_score", f"must be in [0, 1], got {self.min_score!r}")
        if self.exclude_if_customer and self.only_if_customer:
            raise InvalidFieldError(
                "only_if_customer", "cannot be true together with exclude_if_customer"
            )
        if self.requires_prop == "":
            raise InvalidFieldError("requires_prop", "must be a prop name or absent")
        if self.lever < 0:
            raise InvalidFieldError("lever", f"must be >= 0, got {self.lever!r}")
        for key in ("account_cooldown_s", "suppress_days"):
            if getattr(self, key) < 0:
                raise InvalidFieldError(key, f"must be >= 0, got {getattr(self, key)!r}")
        for key in ("daily_cap", "owner_daily_capacity", "suppress_after_rejections"):
            if getattr(self, key) < 0:
                raise InvalidFieldError(
                    key, f"must be >= 0 (0: no limit), got {getattr(self, key)!r}"
                )
        if self.eligible_if is not None:
            if not self.eligible_if.strip():
                raise InvalidFieldError("eligible_if", "must be a CEL expression or absent")
            try:
                compile_eligibility(self.eligible_if)
            except ConfigError as err:
                raise InvalidFieldError("eligible_if", str(err).partition(": ")[2]) from err

    @cached_property  # read at every decision: computed once
    def cooldown_ms(self) -> int:
        """The cooldown in milliseconds of event time."""
        return round(self.cooldown_s * 1000.0)

    @cached_property  # read at every decision: computed once
    def account_cooldown_ms(self) -> int:
        """The account cooldown in milliseconds of event time."""
        return round(self.account_cooldown_s * 1000.0)

    @cached_property  # read at every decision: computed once
    def suppress_ms(self) -> int:
        """The rejection window and pause in milliseconds of event time."""
        return round(self.suppress_days * DAY_MS)

    def ineligible_because(self, event_type: str, props: Mapping[str, Any], customer: bool) -> str:
        """Why the action does not apply, or ``""`` when it does."""
        return self.excluded_because(event_type, customer) or self.missing_prop(props)

    def missing_prop(self, props: Mapping[str, Any]) -> str:
        """``"needs {requires_prop}"`` when the event lacks the required prop, else ``""``."""
        if self.requires_prop is not None and props.get(self.requires_prop) in (None, "", False):
            return f"needs {self.requires_prop}"
        return ""

    def excluded_because(self, event_type: str, customer: bool) -> str:
        """Why ``types`` or the customer rules exclude the action, or ``""``: the part of
        :meth:`ineligible_because` that does not depend on the event's props."""
        if self.types and event_type not in self.types:
            return f"not for {event_type} events"
        if customer and self.exclude_if_customer:
            return "not for customers"
        if not customer and self.only_if_customer:
            return "customers only"
        return ""


@dataclass(frozen=True)
class ActionCatalog:
    """The actions, in tie-break order, and how to tell a customer.

    An entity is a customer when the event's ``customer_prop`` is true or the
    feature ``customer_feature`` (if the spec has it) is at least 0.5.
    """

    actions: tuple[Action, ...]
    customer_prop: str = "is_customer"
    customer_feature: str = "is_customer"
    bandit: BanditConfig = field(default_factory=BanditConfig)

    def __post_init__(self) -> None:
        if not self.actions:
            raise ConfigError("actions.catalog: at least one action is needed")
        seen: set[str] = set()
        for i, action in enumerate(self.actions):
            if action.id in seen:
                raise ConfigError(f"actions.catalog[{i}].id: duplicate action id {action.id!r}")
            seen.add(action.id)

    def get(self, action_id: str) -> Action:
        """The action with this id (``KeyError`` if unknown)."""
        for action in self.actions:
            if action.id == action_id:
                return action
        raise KeyError(action_id)

    def check_features(self, names: Sequence[str], where: str = "actions") -> None:
        """Check that the bandit's ``context_features`` are features of the spec."""
        missing = [f for f in self.bandit.context_features if f not in names]
        if missing:
            raise ConfigError(
                f"{where}.bandit.context_features: {missing} are not features of the "
                "feature spec (see the output names in docs/features.md)"
            )

    @property
    def max_cooldown_ms(self) -> int:
        """The longest cooldown in the catalog."""
        return max(a.cooldown_ms for a in self.actions)

    @property
    def max_memory_ms(self) -> int:
        """The longest any per-entity or per-account state of the policy matters."""
        return max(
            max(a.cooldown_ms, a.account_cooldown_ms, a.suppress_ms, DAY_MS) for a in self.actions
        )

    @classmethod
    def from_dict(cls, data: object, where: str = "actions") -> ActionCatalog:
        """Build from a table ``{customer_prop?, customer_feature?, bandit?, catalog = [...]}``."""
        table = require_table(data, where)
        known = {"catalog", "customer_prop", "customer_feature", "bandit"}
        for key in table:
            if key not in known:
                raise ConfigError(
                    f"{where}: unknown key {key!r} (known keys: {', '.join(sorted(known))})"
                )
        entries = table.get("catalog")
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"{where}.catalog: expected a non-empty list of action tables")
        actions = tuple(
            build_dataclass(Action, entry, f"{where}.catalog[{i}]")
            for i, entry in enumerate(entries)
        )
        ids = [a.id for a in actions]
        for i, action_id in enumerate(ids):
            if action_id in ids[:i]:
                raise ConfigError(f"{where}.catalog[{i}].id: duplicate action id {action_id!r}")
        kwargs: dict[str, str] = {}
        for key in ("customer_prop", "customer_feature"):
            if key in table:
                value = table[key]
                if not isinstance(value, str) or not value:
                    raise ConfigError(f"{where}.{key}: expected a non-empty string, got {value!r}")
                kwargs[key] = value
        bandit = BanditConfig.from_dict(table.get("bandit", {}), where=f"{where}.bandit")
        return cls(actions=actions, bandit=bandit, **kwargs)

    @classmethod
    def load(cls, path: str | Path) -> ActionCatalog:
        """Read a catalog TOML file."""
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ConfigError(f"actions.path: catalog file {p} does not exist") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"actions.path: catalog file {p}: {err}") from err
        return cls.from_dict(data, where=f"actions ({p})")

    @classmethod
    def default(cls) -> ActionCatalog:
        """The catalog shipped in ``intentflow/defaults/actions.toml``."""
        text = resources.files("intentflow").joinpath("defaults/actions.toml").read_text("utf-8")
        return cls.from_dict(tomllib.loads(text), where="actions (defaults/actions.toml)")


def load_catalog(section: Mapping[str, Any] | None = None) -> ActionCatalog:
    """The catalog for the engine configuration's ``[actions]`` table.

    Empty or absent: the defaults. ``path = "file.toml"`` alone: that file.
    Otherwise the table itself is the catalog.
    """
    if not section:
        return ActionCatalog.default()
    table = require_table(section, "actions")
    if "path" in table:
        if len(table) != 1:
            raise ConfigError("actions.path: give either path or an inline catalog, not both")
        path = table["path"]
        if not isinstance(path, str) or not path:
            raise ConfigError(f"actions.path: expected a file name, got {path!r}")
        return ActionCatalog.load(path)
    return ActionCatalog.from_dict(table, where="actions")

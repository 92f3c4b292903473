"""The next-best-action catalog: actions and their eligibility, as data.

The defaults live in ``intentflow/defaults/actions.toml``; the engine
configuration's ``[actions]`` table (same format) replaces them, or points at
another file with ``path = "..."``. Eligibility is data only: the event
types an action applies to, the customer flag and one required event prop.

>>> catalog = ActionCatalog.default()
>>> [a.id for a in catalog.actions][:3]
['call_now', 'retention_call', 'book_demo']
>>> catalog.get("book_demo").channel
'meeting'
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

from intentflow.errors import ConfigError
from intentflow.online_models._validate import InvalidFieldError, build_dataclass, require_table

__all__ = ["CHANNELS", "Action", "ActionCatalog", "load_catalog"]

#: Channels an action can use.
CHANNELS: Final[tuple[str, ...]] = ("phone", "email", "meeting", "in_app")


@dataclass(frozen=True)
class Action:
    """One action the engine can recommend.

    ``value`` is the business value of the action succeeding; ``cooldown_s``
    the event time during which the same entity does not get it again;
    ``min_score`` its own score floor (on top of the global threshold).
    Eligibility: ``types`` (event types it applies to; empty = all),
    ``exclude_if_customer`` / ``only_if_customer`` and ``requires_prop`` (an
    event prop that must be present and non-empty).
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

    @property
    def cooldown_ms(self) -> int:
        """The cooldown in milliseconds of event time."""
        return round(self.cooldown_s * 1000.0)

    def ineligible_because(self, event_type: str, props: Mapping[str, Any], customer: bool) -> str:
        """Why the action does not apply, or ``""`` when it does."""
        if self.types and event_type not in self.types:
            return f"not for {event_type} events"
        if customer and self.exclude_if_customer:
            return "not for customers"
        if not customer and self.only_if_customer:
            return "customers only"
        if self.requires_prop is not None and props.get(self.requires_prop) in (None, "", False):
            return f"needs {self.requires_prop}"
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

    @property
    def max_cooldown_ms(self) -> int:
        """The longest cooldown in the catalog."""
        return max(a.cooldown_ms for a in self.actions)

    @classmethod
    def from_dict(cls, data: object, where: str = "actions") -> ActionCatalog:
        """Build from a table ``{customer_prop?, customer_feature?, catalog = [...]}``."""
        table = require_table(data, where)
        known = {"catalog", "customer_prop", "customer_feature"}
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
        return cls(actions=actions, **kwargs)

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

"""The first next-best-action policy: deterministic, value-greedy, with cooldowns.

For an event whose score reaches the threshold, :class:`Policy` picks, among
the catalog's actions that are eligible and not in cooldown for the entity,
the one with the highest priority ``score x value x lever`` (lever 1.0 for
now; ties go to the action listed first), explains the choice in plain words
and starts that action's cooldown for the entity.

>>> from intentflow.events import Event
>>> policy = Policy(ActionCatalog.default(), threshold=0.7)
>>> ev = Event("e-1", 1_767_225_600_000, "c-1", "page_view", props={"page": "/pricing"})
>>> d = policy.decide(ev, 0.8, np.zeros(0), ())
>>> d.action_id, d.channel, d.priority, d.probability
('book_demo', 'meeting', 240.0, 1.0)
>>> print(d.why)  # doctest: +NORMALIZE_WHITESPACE
score 0.80 ≥ 0.70; highest priority among eligible: book_demo (value 300);
skipped: call_now (score below its 0.90), retention_call (customers only)
>>> policy.decide(ev, 0.8, np.zeros(0), ()).action_id  # book_demo is in cooldown now
'offer_discount'
>>> alert_id("c-1", "model:intent", "e-1")
'...'
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import numpy as np
from numpy.typing import NDArray

from intentflow.events import OUTCOME_RESULTS, Event
from intentflow.online_models.catalog import Action, ActionCatalog

__all__ = ["LEVER", "Decision", "Policy", "alert_id"]

#: The multiplier of every action's priority until levers are learned.
LEVER: Final[float] = 1.0


def alert_id(entity_id: str, trigger_id: str, event_id: str) -> str:
    """Deterministic alert id: BLAKE2b (16-byte digest, hex) of the fields joined by U+001F.

    The same entity, trigger and triggering event always give the same id,
    so a replayed alert is recognised as a duplicate downstream.

    >>> alert_id("c-1", "model:intent", "e-1") == alert_id("c-1", "model:intent", "e-1")
    True
    >>> len(alert_id("c-1", "model:intent", "e-1"))
    32
    """
    blob = "\x1f".join((entity_id, trigger_id, event_id)).encode("utf-8")
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Decision:
    """The recommended action for one event.

    ``probability`` is the probability with which the policy chose this
    action (1.0: the policy is deterministic), kept for off-policy evaluation.
    """

    action_id: str
    channel: str
    priority: float
    why: str
    probability: float = 1.0


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in {"true", "yes", "1"}
    return False


class Policy:
    """Picks the next best action and remembers cooldowns per (entity, action).

    Cooldowns run in event time. The cooldown memory is bounded by
    ``max_entities``: expired cooldowns are pruned first, then the entities
    alerted longest ago are forgotten (counted in ``counts["forgotten"]``).
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    def __init__(
        self,
        catalog: ActionCatalog | None = None,
        threshold: float = 0.7,
        max_entities: int = 100_000,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold: must be in (0, 1], got {threshold!r}")
        if max_entities < 1:
            raise ValueError(f"max_entities: must be >= 1, got {max_entities!r}")
        self.catalog = catalog if catalog is not None else ActionCatalog.default()
        self.threshold = float(threshold)
        self.max_entities = max_entities
        self._last: dict[str, dict[str, int]] = {}  # entity -> action -> last alert ts
        self._names: tuple[str, ...] | None = None
        self._customer_col: int | None = None
        self.counts: dict[str, int] = dict.fromkeys(
            ("decisions", "below_threshold", "none_eligible", "forgotten", "feedback_unknown"), 0
        )
        self.outcomes: dict[str, dict[str, int]] = {}

    @property
    def n_entities(self) -> int:
        """Entities with a remembered cooldown."""
        return len(self._last)

    def is_customer(
        self, event: Event, features_row: NDArray[np.float64], names: Sequence[str]
    ) -> bool:
        """The catalog's customer test (event prop, then feature)."""
        if _truthy(event.props.get(self.catalog.customer_prop)):
            return True
        if self._names is None or (names is not self._names and tuple(names) != self._names):
            self._names = tuple(names)
            feature = self.catalog.customer_feature
            self._customer_col = self._names.index(feature) if feature in self._names else None
        if self._customer_col is None:
            return False
        return bool(features_row[self._customer_col] >= 0.5)

    def cooldown_left_ms(self, entity_id: str, action: Action, ts_ms: int) -> int:
        """Event time left in the entity's cooldown for ``action`` (0 = none)."""
        last = self._last.get(entity_id, {}).get(action.id)
        if last is None:
            return 0
        return max(0, last + action.cooldown_ms - ts_ms)

    def decide(
        self,
        event: Event,
        score: float,
        features_row: NDArray[np.float64],
        names: Sequence[str],
    ) -> Decision | None:
        """The action for this event, or ``None``; a decision starts its cooldown."""
        score = float(score)
        if not math.isfinite(score) or score < self.threshold:
            self.counts["below_threshold"] += 1
            return None
        customer = self.is_customer(event, features_row, names)
        best: Action | None = None
        best_priority = -math.inf
        skipped: list[tuple[Action, str]] = []
        for action in self.catalog.actions:
            reason = action.ineligible_because(event.type, event.props, customer)
            if not reason and score < action.min_score:
                reason = f"score below its {action.min_score:.2f}"
            if not reason and self.cooldown_left_ms(event.entity_id, action, event.ts_ms) > 0:
                reason = "in cooldown"
            if reason:
                skipped.append((action, reason))
                continue
            priority = score * action.value * LEVER
            if priority > best_priority:
                best, best_priority = action, priority
        if best is None:
            self.counts["none_eligible"] += 1
            return None
        why = (
            f"score {score:.2f} ≥ {self.threshold:.2f}; highest priority among eligible: "
            f"{best.id} (value {best.value:g})"
        )
        higher = [f"{a.id} ({reason})" for a, reason in skipped if a.value > best.value]
        if higher:
            why += "; skipped: " + ", ".join(higher)
        self._remember(event.entity_id, best.id, event.ts_ms)
        self.counts["decisions"] += 1
        return Decision(best.id, best.channel, best_priority, why, 1.0)

    def _remember(self, entity_id: str, action_id: str, ts_ms: int) -> None:
        entry = self._last.pop(entity_id, {})
        entry[action_id] = max(ts_ms, entry.get(action_id, ts_ms))
        self._last[entity_id] = entry  # most recently alerted last
        if len(self._last) > self.max_entities:
            self.prune(ts_ms)
            while len(self._last) > self.max_entities:
                del self._last[next(iter(self._last))]
                self.counts["forgotten"] += 1

    def prune(self, now_ms: int) -> int:
        """Forget cooldowns that have ended by ``now_ms``; returns entities dropped."""
        actions = {a.id: a for a in self.catalog.actions}
        dropped = 0
        for entity_id in list(self._last):
            entry = self._last[entity_id]
            for action_id in list(entry):
                action = actions.get(action_id)
                if action is None or entry[action_id] + action.cooldown_ms <= now_ms:
                    del entry[action_id]
            if not entry:
                del self._last[entity_id]
                dropped += 1
        return dropped

    def evict_entity(self, entity_id: str) -> bool:
        """Forget an entity's cooldowns; True if it had any."""
        return self._last.pop(entity_id, None) is not None

    def feedback(self, event: Event) -> None:
        """Count an ``outcome`` event per action and result (input for later levers)."""
        action_id = event.props.get("action")
        result = event.props.get("result")
        known = {a.id for a in self.catalog.actions}
        if action_id not in known or result not in OUTCOME_RESULTS:
            self.counts["feedback_unknown"] += 1
            return
        per_action = self.outcomes.setdefault(str(action_id), {})
        per_action[str(result)] = per_action.get(str(result), 0) + 1

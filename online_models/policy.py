"""The next-best-action policy: eligibility, limits, arbitration, exploration, feedback.

For an event whose score reaches the threshold, :class:`Policy` keeps the
catalog's actions that are eligible (event type, customer flag, required
prop, own score floor), not blocked (entity and account cooldowns, daily
cap per entity, capacity per owner, pause after repeated rejections) and,
last, whose ``eligible_if`` expression holds. Among these it ranks by

    priority = propensity x value x lever,  propensity = score x acceptance

where *acceptance* is the action's contextual bandit estimate
(:mod:`~intentflow.online_models.bandit`; 1.0 before any feedback, so the
policy starts value-greedy). With probability ``bandit.exploration`` it
explores: the action is drawn uniformly among the eligible ones. Every
decision records the probability with which its action was chosen, for
off-policy evaluation, and that randomness comes from a hash of the seed
and the alert id, so a replay chooses the same.

>>> from intentflow.events import Event
>>> policy = Policy(ActionCatalog.default(), threshold=0.7)
>>> ev = Event("e-1", 1_767_225_600_000, "c-1", "page_view", props={"page": "/pricing"})
>>> d = policy.decide(ev, 0.8, np.zeros(0), ())
>>> d.action_id, d.channel, d.priority, d.acceptance
('book_demo', 'meeting', 240.0, 1.0)
>>> print(d.why)  # doctest: +NORMALIZE_WHITESPACE
score 0.80 ≥ 0.70; highest priority among eligible: book_demo (value 300, acceptance 1.00);
skipped: call_now (score below its 0.90), retention_call (customers only)
>>> policy.decide(ev, 0.8, np.zeros(0), ()).action_id  # book_demo is in cooldown now
'offer_discount'
>>> alert_id("c-1", "model:intent", "e-1")
'...'
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import numpy as np
from numpy.typing import NDArray

from intentflow.events import OUTCOME_RESULTS, Event
from intentflow.online_models.bandit import ActionBandit, decision_rng, decision_uniforms
from intentflow.online_models.catalog import DAY_MS, Action, ActionCatalog, compile_eligibility

__all__ = ["DEFAULT_TRIGGER", "LEVER", "Decision", "Policy", "alert_id"]

#: The default lever of an action (its ``lever`` in the catalog).
LEVER: Final[float] = 1.0
#: The trigger id of model alerts; part of every alert id.
DEFAULT_TRIGGER: Final[str] = "model:intent"
#: (event type, customer) pairs whose static eligibility a policy memoises.
_STATIC_LIMIT: Final = 1024
#: Stale entries a due-queue may hold beyond twice the keys held before it is rebuilt.
_COMPACT_SLACK: Final = 1024


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
    action given the eligible set (exploration included), kept for
    off-policy evaluation. ``acceptance`` is the bandit's estimate used in
    the priority, ``explored`` whether the exploration draw chose it, and
    ``alert_id`` the id of the alert the decision belongs to.
    """

    action_id: str
    channel: str
    priority: float
    why: str
    probability: float = 1.0
    acceptance: float = 1.0
    explored: bool = False
    alert_id: str = ""


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in {"true", "yes", "1"}
    return False


class _Env:
    """The variables of ``eligible_if`` for one decision, built once and only as needed.

    CEL converts every value it is given, so an expression gets only the
    variables it references (``features`` is the costly one).
    """

    __slots__ = ("_features", "customer", "event", "names", "row", "score")

    def __init__(
        self,
        event: Event,
        score: float,
        customer: bool,
        row: NDArray[np.float64],
        names: Sequence[str],
    ) -> None:
        self.event = {
            "type": event.type,
            "entity_id": event.entity_id,
            "account_id": event.account_id,
            "props": event.props,
        }
        self.score = score
        self.customer = customer
        self.row = row
        self.names = names
        self._features: dict[str, float] | None = None

    def for_variables(self, variables: frozenset[str] | None) -> dict[str, Any]:
        env: dict[str, Any] = {}
        if variables is None or "event" in variables:
            env["event"] = self.event
        if variables is None or "score" in variables:
            env["score"] = self.score
        if variables is None or "customer" in variables:
            env["customer"] = self.customer
        if variables is None or "features" in variables:
            if self._features is None:
                values = np.asarray(self.row).tolist()
                self._features = dict(zip(self.names, values, strict=True))
            env["features"] = self._features
        return env


class _EntityState:
    """What the policy remembers about one entity."""

    __slots__ = ("day", "last", "rejections", "suppressed", "today")

    def __init__(self) -> None:
        self.last: dict[str, int] = {}  # action -> event time of its last alert
        self.day = -1  # UTC day (event time) that ``today`` counts
        self.today: dict[str, int] = {}  # action -> alerts on ``day``
        self.rejections: dict[str, list[int]] = {}  # action -> recent rejection times
        self.suppressed: dict[str, int] = {}  # action -> paused until (event time)

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.last, self.day, self.today, self.rejections, self.suppressed)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.last, self.day, self.today, self.rejections, self.suppressed = state

    def empty(self) -> bool:
        return not (self.last or self.today or self.rejections or self.suppressed)


class Policy:
    """Picks the next best action and remembers what limits later choices.

    Everything runs in event time. Per entity, account and owner memory is
    bounded by ``max_entities``: ended cooldowns, pauses and past days are
    pruned first, then the entities touched longest ago are forgotten
    (``counts["forgotten"]``). Decisions wait for their ``outcome`` in a
    bounded table (``bandit.max_pending_feedback``, ``bandit.feedback_ttl_s``).
    """

    SCHEMA_VERSION: ClassVar[int] = 2

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
        self.bandit = ActionBandit(self.catalog.bandit)
        self._ent: dict[str, _EntityState] = {}  # least recently touched first
        self._acct: dict[str, dict[str, int]] = {}  # account -> action -> last alert ts
        self._owner: dict[str, tuple[int, dict[str, int]]] = {}  # owner -> (day, counts)
        self._pending: dict[str, tuple[int, str, tuple[float, ...]]] = {}  # alert id -> ...
        # (event time something may end, key): prune visits only what is due
        self._ent_due: list[tuple[int, str]] = []
        self._acct_due: list[tuple[int, str]] = []
        self._pending_due: list[tuple[int, str]] = []
        self._names: tuple[str, ...] | None = None
        self._customer_col: int | None = None
        self._programs: dict[str, Any] = {}  # compiled eligible_if, rebuilt after unpickling
        # (event type, customer) -> each action with why its type and customer rules
        # exclude it ("" when they do not): derived from the catalog, rebuilt on demand
        self._static: dict[tuple[str, bool], tuple[tuple[Action, str], ...]] = {}
        self._rng: np.random.Generator | None = None  # reseeded for every decision
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "decisions",
                "below_threshold",
                "none_eligible",
                "explored",
                "forgotten",
                "feedback_unknown",
                "feedback_learned",
                "feedback_unmatched",
                "feedback_expired",
                "suppressions",
                "eligibility_errors",
            ),
            0,
        )
        self.outcomes: dict[str, dict[str, int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_programs"] = {}  # compiled CEL programs do not pickle
        state["_static"] = {}  # derived from the catalog
        state["_rng"] = None  # reseeded from the alert id before every use
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._static = {}
        if "_ent_due" not in state:  # written before prune was incremental: all due now
            self._ent_due = [(0, e) for e in self._ent]
            self._acct_due = [(0, a) for a in self._acct]
            self._pending_due = [(0, k) for k in self._pending]

    # -- state -------------------------------------------------------------------------------
    @property
    def n_entities(self) -> int:
        """Entities the policy remembers something about."""
        return len(self._ent)

    @property
    def n_pending_feedback(self) -> int:
        """Decisions waiting for their outcome."""
        return len(self._pending)

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
        state = self._ent.get(entity_id)
        last = None if state is None else state.last.get(action.id)
        if last is None:
            return 0
        return max(0, last + action.cooldown_ms - ts_ms)

    def suppressed_until(self, entity_id: str, action_id: str) -> int | None:
        """Event time until which rejections pause ``action_id`` for the entity, or None."""
        state = self._ent.get(entity_id)
        return None if state is None else state.suppressed.get(action_id)

    def _touch(self, entity_id: str, now_ms: int) -> _EntityState:
        state = self._ent.pop(entity_id, None)
        if state is None:
            state = _EntityState()
            if len(self._ent) >= self.max_entities:
                self.prune(now_ms)
                while len(self._ent) >= self.max_entities:
                    del self._ent[next(iter(self._ent))]
                    self.counts["forgotten"] += 1
        self._ent[entity_id] = state  # most recently touched last
        return state

    # -- eligibility -------------------------------------------------------------------------
    def _blocked(
        self,
        action: Action,
        state: _EntityState | None,
        account: dict[str, int] | None,
        owner: str | None,
        owner_counts: dict[str, int] | None,
        ts: int,
        day: int,
    ) -> str:
        """Why limits block ``action`` now, or ``""``."""
        aid = action.id
        if state is not None:
            until = state.suppressed.get(aid)
            if until is not None and ts < until:
                return f"paused after {action.suppress_after_rejections} rejections"
            last = state.last.get(aid)
            if last is not None and ts < last + action.cooldown_ms:
                return "in cooldown"
            if (
                action.daily_cap
                and state.day == day
                and state.today.get(aid, 0) >= action.daily_cap
            ):
                return f"daily cap of {action.daily_cap} reached"
        if account is not None and action.account_cooldown_ms:
            last = account.get(aid)
            if last is not None and ts < last + action.account_cooldown_ms:
                return "account in cooldown"
        if (
            action.owner_daily_capacity
            and owner_counts is not None
            and owner_counts.get(aid, 0) >= action.owner_daily_capacity
        ):
            return f"{owner} at capacity ({action.owner_daily_capacity} a day)"
        return ""

    def _expression_blocks(self, action: Action, env: _Env) -> str:
        entry = self._programs.get(action.id)
        if entry is None:
            assert action.eligible_if is not None
            program = compile_eligibility(action.eligible_if, f"{action.id}.eligible_if")
            entry = (program, frozenset(program.variables()))
            self._programs[action.id] = entry
        program, variables = entry
        try:
            result = program.execute(env.for_variables(variables))
        except Exception as err:  # any evaluation error makes the action ineligible
            self.counts["eligibility_errors"] += 1
            return f"eligible_if failed ({type(err).__name__})"
        if result is True:
            return ""
        if result is False:
            return "eligible_if is false"
        self.counts["eligibility_errors"] += 1
        return "eligible_if gave no true/false"

    @staticmethod
    def expression_env(
        event: Event,
        score: float,
        customer: bool,
        features_row: NDArray[np.float64],
        names: Sequence[str],
    ) -> dict[str, Any]:
        """The variables of an ``eligible_if`` expression."""
        return _Env(event, score, customer, features_row, names).for_variables(None)

    # -- deciding ----------------------------------------------------------------------------
    def decide(
        self,
        event: Event,
        score: float,
        features_row: NDArray[np.float64],
        names: Sequence[str],
        *,
        trigger_id: str = DEFAULT_TRIGGER,
    ) -> Decision | None:
        """The action for this event, or ``None``; a decision starts its limits."""
        score = float(score)
        if not math.isfinite(score) or score < self.threshold:
            self.counts["below_threshold"] += 1
            return None
        customer = self.is_customer(event, features_row, names)
        ts = event.ts_ms
        day = ts // DAY_MS
        entity_id = event.entity_id
        state = self._ent.get(entity_id)
        account = self._acct.get(event.account_id) if event.account_id else None
        raw_owner = event.props.get("owner")
        owner = raw_owner if isinstance(raw_owner, str) and raw_owner else None
        owner_counts = None
        if owner is not None:
            entry = self._owner.get(owner)
            owner_counts = entry[1] if entry is not None and entry[0] == day else None
        candidates: list[Action] = []
        skipped: list[tuple[Action, str]] = []
        env: _Env | None = None
        props = event.props
        for action, reason in self._static_reasons(event.type, customer):
            if not reason and action.requires_prop is not None:
                reason = action.missing_prop(props)
            if not reason and score < action.min_score:
                reason = f"score below its {action.min_score:.2f}"
            if not reason:
                reason = self._blocked(action, state, account, owner, owner_counts, ts, day)
            if not reason and action.eligible_if is not None:
                if env is None:
                    env = _Env(event, score, customer, features_row, names)
                reason = self._expression_blocks(action, env)
            if reason:
                skipped.append((action, reason))
            else:
                candidates.append(action)
        if not candidates:
            self.counts["none_eligible"] += 1
            return None

        key = alert_id(entity_id, trigger_id, event.event_id)
        choice, priority, acceptance, probability, explored, context = self._arbitrate(
            candidates, score, customer, features_row, names, key
        )
        best = candidates[choice]
        self._record(best, event, day, owner, key, context)
        self.counts["decisions"] += 1
        why = self._why(best, score, acceptance, explored, len(candidates), skipped)
        return Decision(
            best.id,
            best.channel,
            priority,
            why,
            round(probability, 6),
            round(acceptance, 6),
            explored,
            key,
        )

    def _static_reasons(self, event_type: str, customer: bool) -> tuple[tuple[Action, str], ...]:
        """Each action, in catalog order, with why its event types or customer rule exclude it.

        :meth:`Action.excluded_because`, computed once per event type and
        customer flag (``requires_prop`` is checked per event).
        """
        key = (event_type, customer)
        found = self._static.get(key)
        if found is None:
            if len(self._static) >= _STATIC_LIMIT:  # event types are input: keep it bounded
                self._static.clear()
            found = tuple(
                (a, a.excluded_because(event_type, customer)) for a in self.catalog.actions
            )
            self._static[key] = found
        return found

    def _arbitrate(
        self,
        candidates: list[Action],
        score: float,
        customer: bool,
        row: NDArray[np.float64],
        names: Sequence[str],
        key: str,
    ) -> tuple[int, float, float, float, bool, tuple[float, ...]]:
        """(choice, priority, acceptance, probability, explored, context) among candidates."""
        bandit = self.bandit
        cfg = bandit.config
        k = len(candidates)
        ids = [a.id for a in candidates]
        context = bandit.context(score, customer, row, names)
        base = [score * a.value * a.lever for a in candidates]
        eps = cfg.exploration if k > 1 else 0.0
        rng = None
        if cfg.kind == "thompson":
            if self._rng is None:
                self._rng = np.random.Generator(np.random.PCG64(0))
            rng = decision_rng(cfg.seed, key, self._rng)
            draws = bandit.thompson_draws(ids, context, rng)
            winners = np.argmax(draws * np.asarray(base), axis=1)  # first max: catalog order
            greedy_share = np.bincount(winners, minlength=k) / winners.shape[0]
            j = int(rng.integers(draws.shape[0]))
            greedy = int(winners[j])
            acceptance = draws[j].tolist()
            share = greedy_share.tolist()
        else:
            acceptance = bandit.estimates(ids, context)
            priorities = [b * acc for b, acc in zip(base, acceptance, strict=True)]
            greedy = max(range(k), key=priorities.__getitem__)  # first max: catalog order
            share = [0.0] * k
            share[greedy] = 1.0
        choice, explored = greedy, False
        if eps > 0:
            if rng is not None:  # thompson: its generator goes on
                if rng.random() < eps:
                    choice, explored = int(rng.integers(k)), True
            else:
                explore, pick = decision_uniforms(cfg.seed, key)
                if explore < eps:
                    choice, explored = min(int(pick * k), k - 1), True
        probability = (1.0 - eps) * share[choice] + eps / k
        if explored:
            self.counts["explored"] += 1
        acc = float(acceptance[choice])
        return choice, base[choice] * acc, acc, probability, explored, context

    def _record(
        self,
        action: Action,
        event: Event,
        day: int,
        owner: str | None,
        key: str,
        context: tuple[float, ...],
    ) -> None:
        ts = event.ts_ms
        entity_id = event.entity_id
        state = self._touch(entity_id, ts)
        state.last[action.id] = max(ts, state.last.get(action.id, ts))
        heapq.heappush(self._ent_due, (ts + action.cooldown_ms, entity_id))
        if action.daily_cap:
            if state.day != day:
                state.day, state.today = day, {}
            state.today[action.id] = state.today.get(action.id, 0) + 1
            heapq.heappush(self._ent_due, ((day + 1) * DAY_MS, entity_id))
        if event.account_id and action.account_cooldown_ms:
            acct = self._acct.pop(event.account_id, {})
            acct[action.id] = max(ts, acct.get(action.id, ts))
            self._acct[event.account_id] = acct
            heapq.heappush(self._acct_due, (ts + action.account_cooldown_ms, event.account_id))
            while len(self._acct) > self.max_entities:
                del self._acct[next(iter(self._acct))]
        if owner is not None and action.owner_daily_capacity:
            entry = self._owner.get(owner)
            counts = entry[1] if entry is not None and entry[0] == day else {}
            counts[action.id] = counts.get(action.id, 0) + 1
            self._owner[owner] = (day, counts)
        self._pending[key] = (ts, action.id, context)
        heapq.heappush(self._pending_due, (ts + self.bandit.config.feedback_ttl_ms, key))
        while len(self._pending) > self.bandit.config.max_pending_feedback:
            del self._pending[next(iter(self._pending))]
            self.counts["feedback_expired"] += 1

    def _why(
        self,
        best: Action,
        score: float,
        acceptance: float,
        explored: bool,
        k: int,
        skipped: list[tuple[Action, str]],
    ) -> str:
        details = f"value {best.value:g}"
        if best.lever != LEVER:
            details += f", lever {best.lever:g}"
        if self.bandit.config.kind != "none":
            details += f", acceptance {acceptance:.2f}"
        head = f"score {score:.2f} ≥ {self.threshold:.2f}; "
        if explored:
            eps = self.bandit.config.exploration
            why = f"{head}explored (rate {eps:g}): {best.id} drawn among {k} eligible ({details})"
        else:
            why = f"{head}highest priority among eligible: {best.id} ({details})"
        higher = [f"{a.id} ({reason})" for a, reason in skipped if a.value > best.value]
        if higher:
            why += "; skipped: " + ", ".join(higher)
        return why

    # -- feedback ----------------------------------------------------------------------------
    def feedback(self, event: Event) -> None:
        """Learn from an ``outcome`` event: counts, rejection pauses and the bandit.

        ``props.action`` and ``props.result`` are required; ``props.alert_id``
        ties the outcome to the decision (and its context) the bandit learns
        from. Only the first outcome of a decision teaches the bandit.
        """
        props = event.props
        action_id = props.get("action")
        result = props.get("result")
        if not isinstance(action_id, str) or result not in OUTCOME_RESULTS:
            self.counts["feedback_unknown"] += 1
            return
        try:
            action = self.catalog.get(action_id)
        except KeyError:
            self.counts["feedback_unknown"] += 1
            return
        result = str(result)
        per_action = self.outcomes.setdefault(action_id, {})
        per_action[result] = per_action.get(result, 0) + 1
        ts = event.ts_ms
        if result == "rejected" and action.suppress_after_rejections > 0:
            state = self._touch(event.entity_id, ts)
            window = action.suppress_ms
            recent = [t for t in state.rejections.get(action_id, []) if t > ts - window]
            recent.append(ts)
            heapq.heappush(self._ent_due, (ts + window, event.entity_id))
            if len(recent) >= action.suppress_after_rejections:
                state.suppressed[action_id] = max(ts + window, state.suppressed.get(action_id, 0))
                self.counts["suppressions"] += 1
                recent = []
            if recent:
                state.rejections[action_id] = recent
            else:
                state.rejections.pop(action_id, None)
        elif result in ("accepted", "converted"):
            state_or_none = self._ent.get(event.entity_id)
            if state_or_none is not None:
                state_or_none.rejections.pop(action_id, None)
                if state_or_none.empty():  # nothing left to end: forget it now
                    del self._ent[event.entity_id]
        key = props.get("alert_id")
        pending = self._pending.get(key) if isinstance(key, str) else None
        if pending is None or pending[1] != action_id:
            self.counts["feedback_unmatched"] += 1
            return
        del self._pending[str(key)]
        reward = 1.0 if result in self.bandit.config.reward_results else 0.0
        self.bandit.update(action_id, pending[2], reward)
        self.counts["feedback_learned"] += 1

    # -- memory ------------------------------------------------------------------------------
    def prune(self, now_ms: int) -> int:
        """Forget limits that have ended by ``now_ms``; returns entities dropped.

        Only entities, accounts and decisions with something due by
        ``now_ms`` are visited (each limit queues the event time it ends), so
        a prune costs what ends, not what is held.
        """
        actions = {a.id: a for a in self.catalog.actions}
        today = now_ms // DAY_MS
        dropped = 0
        for entity_id in _due(self._ent_due, now_ms):
            state = self._ent.get(entity_id)
            if state is None:
                continue
            for aid in list(state.last):
                action = actions.get(aid)
                if action is None or state.last[aid] + action.cooldown_ms <= now_ms:
                    del state.last[aid]
            if state.day < today:
                state.today = {}
            for aid in list(state.suppressed):
                if state.suppressed[aid] <= now_ms:
                    del state.suppressed[aid]
            for aid in list(state.rejections):
                action = actions.get(aid)
                window = 0 if action is None else action.suppress_ms
                recent = [t for t in state.rejections[aid] if t > now_ms - window]
                if recent:
                    state.rejections[aid] = recent
                else:
                    del state.rejections[aid]
            if state.empty():
                del self._ent[entity_id]
                dropped += 1
            else:  # what remains ends later (also when the catalog's limits changed)
                heapq.heappush(self._ent_due, (_next_end(state, actions, now_ms), entity_id))
        for account_id in _due(self._acct_due, now_ms):
            entry = self._acct.get(account_id)
            if entry is None:
                continue
            ends = []
            for aid in list(entry):
                action = actions.get(aid)
                end = entry[aid] + (0 if action is None else action.account_cooldown_ms)
                if end <= now_ms:
                    del entry[aid]
                else:
                    ends.append(end)
            if not entry:
                del self._acct[account_id]
            else:
                heapq.heappush(self._acct_due, (min(ends), account_id))
        for owner in [o for o, (day, _) in self._owner.items() if day < today]:
            del self._owner[owner]
        ttl = self.bandit.config.feedback_ttl_ms
        for key in _due(self._pending_due, now_ms):
            p = self._pending.get(key)
            if p is not None and p[0] + ttl < now_ms:
                del self._pending[key]
                self.counts["feedback_expired"] += 1
            elif p is not None:
                heapq.heappush(self._pending_due, (p[0] + ttl, key))
        # entries of forgotten, answered or overwritten keys wait in the queues until
        # due; when they outnumber what is held, requeue what is held (visited once)
        for heap, held in (
            (self._ent_due, self._ent),
            (self._acct_due, self._acct),
            (self._pending_due, self._pending),
        ):
            _compact(heap, held)
        return dropped

    def evict_entity(self, entity_id: str) -> bool:
        """Forget an entity's limits; True if it had any."""
        return self._ent.pop(entity_id, None) is not None


def _due(heap: list[tuple[int, str]], now_ms: int) -> list[str]:
    """Pop the keys due by ``now_ms`` (each once, in order of first due time)."""
    keys: dict[str, None] = {}
    while heap and heap[0][0] <= now_ms:
        keys[heapq.heappop(heap)[1]] = None
    return list(keys)


def _compact(heap: list[tuple[int, str]], held: Mapping[str, object]) -> None:
    """Replace ``heap`` by one entry due at once per held key when stale entries dominate."""
    if len(heap) > 2 * len(held) + _COMPACT_SLACK:
        heap[:] = [(0, key) for key in held]
        heapq.heapify(heap)


def _next_end(state: _EntityState, actions: dict[str, Action], now_ms: int) -> int:
    """The earliest event time after ``now_ms`` at which one of ``state``'s limits ends."""
    ends = []
    for aid, last in state.last.items():
        action = actions.get(aid)
        ends.append(last + (0 if action is None else action.cooldown_ms))
    ends.extend(state.suppressed.values())
    for aid, times in state.rejections.items():
        action = actions.get(aid)
        ends.append(min(times) + (0 if action is None else action.suppress_ms))
    if state.today:
        ends.append((state.day + 1) * DAY_MS)
    return max(now_ms + 1, min(ends, default=now_ms + 1))

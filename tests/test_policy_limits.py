"""Policy limits: account cooldowns, daily caps, owner capacity, rejection pauses,
levers and CEL eligibility."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intentflow.errors import ConfigError
from intentflow.events import Event
from intentflow.online_models.bandit import BanditConfig
from intentflow.online_models.catalog import DAY_MS, Action, ActionCatalog
from intentflow.online_models.policy import Policy

NO_FEATURES = np.zeros(0)
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a UTC day boundary
GREEDY = BanditConfig(kind="none")


def act(id_: str, value: float, **kw: Any) -> Action:
    return Action(id=id_, description=f"do {id_}", channel="phone", value=value, **kw)


def policy(*actions: Action, **kw: Any) -> Policy:
    return Policy(ActionCatalog(actions=actions, bandit=GREEDY), threshold=0.5, **kw)


_n = [0]


def ev(
    entity: str, ts: int, account: str | None = None, type_: str = "page_view", **props: Any
) -> Event:
    _n[0] += 1
    return Event(f"{entity}-{ts}-{_n[0]}", ts, entity, type_, account, props)


def chosen(
    p: Policy,
    event: Event,
    score: float = 0.9,
    row: np.ndarray = NO_FEATURES,
    names: tuple[str, ...] = (),
) -> str | None:
    d = p.decide(event, score, row, names)
    return None if d is None else d.action_id


def reject(p: Policy, entity: str, action: str, ts: int, result: str = "rejected") -> None:
    p.feedback(
        Event(
            f"o-{entity}-{ts}",
            ts,
            entity,
            "outcome",
            props={"action": action, "result": result, "alert_id": "x"},
        )
    )


def test_account_cooldown_blocks_other_contacts_of_the_account() -> None:
    p = policy(act("call", 100.0, cooldown_s=0.0, account_cooldown_s=60.0), act("mail", 1.0))
    assert chosen(p, ev("c1", T0, "a1")) == "call"
    d = p.decide(ev("c2", T0 + 59_999, "a1"), 0.9, NO_FEATURES, ())
    assert d is not None
    assert d.action_id == "mail"
    assert "call (account in cooldown)" in d.why
    assert chosen(p, ev("c3", T0 + 1, "a2")) == "call"  # another account
    assert chosen(p, ev("c4", T0 + 1)) == "call"  # no account
    assert chosen(p, ev("c2", T0 + 60_000, "a1")) == "call"


def test_daily_cap_per_entity_resets_at_the_utc_day() -> None:
    p = policy(act("ping", 10.0, cooldown_s=0.0, daily_cap=2), act("fallback", 1.0))
    assert chosen(p, ev("c", T0 + 1)) == "ping"
    assert chosen(p, ev("c", T0 + 2)) == "ping"
    d = p.decide(ev("c", T0 + DAY_MS - 1), 0.9, NO_FEATURES, ())
    assert d is not None
    assert d.action_id == "fallback"
    assert "ping (daily cap of 2 reached)" in d.why
    assert chosen(p, ev("other", T0 + 3)) == "ping"
    assert chosen(p, ev("c", T0 + DAY_MS)) == "ping"  # a new UTC day


def test_owner_capacity_per_day() -> None:
    p = policy(act("call", 100.0, cooldown_s=0.0, owner_daily_capacity=3), act("mail", 1.0))
    for i in range(3):
        assert chosen(p, ev(f"c{i}", T0 + i, owner="rep-1")) == "call"
    d = p.decide(ev("c9", T0 + 10, owner="rep-1"), 0.9, NO_FEATURES, ())
    assert d is not None
    assert d.action_id == "mail"
    assert "call (rep-1 at capacity (3 a day))" in d.why
    assert chosen(p, ev("c9", T0 + 11, owner="rep-2")) == "call"
    assert chosen(p, ev("c9", T0 + 12)) == "call"  # no owner: no capacity applies
    assert chosen(p, ev("c8", T0 + DAY_MS, owner="rep-1")) == "call"


def test_rejections_pause_the_action_for_the_entity() -> None:
    p = policy(
        act("demo", 100.0, cooldown_s=0.0, suppress_after_rejections=2, suppress_days=3.0),
        act("mail", 1.0),
    )
    t = T0
    assert chosen(p, ev("c", t)) == "demo"
    reject(p, "c", "demo", t + 1)
    assert chosen(p, ev("c", t + 2)) == "demo"  # one rejection: not yet
    reject(p, "c", "demo", t + 3)
    d = p.decide(ev("c", t + 4), 0.9, NO_FEATURES, ())
    assert d is not None
    assert d.action_id == "mail"
    assert "demo (paused after 2 rejections)" in d.why
    assert p.suppressed_until("c", "demo") == t + 3 + 3 * DAY_MS
    assert chosen(p, ev("other", t + 5)) == "demo"  # per entity
    assert chosen(p, ev("c", t + 3 + 3 * DAY_MS - 1)) == "mail"
    assert chosen(p, ev("c", t + 3 + 3 * DAY_MS)) == "demo"  # the pause ended
    assert p.counts["suppressions"] == 1


def test_rejections_count_only_within_the_window_and_acceptance_resets() -> None:
    p = policy(act("demo", 100.0, cooldown_s=0.0, suppress_after_rejections=2, suppress_days=1.0))
    reject(p, "c", "demo", T0)
    reject(p, "c", "demo", T0 + DAY_MS + 1)  # the first one is older than the window
    assert chosen(p, ev("c", T0 + DAY_MS + 2)) == "demo"
    reject(p, "c", "demo", T0 + DAY_MS + 3, result="accepted")
    reject(p, "c", "demo", T0 + DAY_MS + 4)
    assert chosen(p, ev("c", T0 + DAY_MS + 5)) == "demo"
    reject(p, "c", "demo", T0 + DAY_MS + 6)
    assert chosen(p, ev("c", T0 + DAY_MS + 7)) is None


def test_lever_multiplies_the_priority() -> None:
    p = policy(act("big", 100.0), act("boosted", 60.0, lever=2.0))
    d = p.decide(ev("c", T0), 0.5, NO_FEATURES, ())
    assert d is not None
    assert d.action_id == "boosted"
    assert d.priority == pytest.approx(0.5 * 60.0 * 2.0)
    assert "lever 2" in d.why


def test_cel_eligibility_over_event_features_score_and_customer() -> None:
    consent = act("mail", 100.0, eligible_if="has(event.props.consent) && event.props.consent")
    hot = act("call", 50.0, eligible_if="features.visits > 3.0 && score > 0.8 && !customer")
    p = policy(consent, hot, act("nothing", 1.0))
    names = ("visits", "is_customer")
    assert chosen(p, ev("a", T0, consent=True), row=np.array([0.0, 0.0]), names=names) == "mail"
    d = p.decide(ev("b", T0), 0.9, np.array([5.0, 0.0]), names)
    assert d is not None
    assert d.action_id == "call"
    assert "mail (eligible_if is false)" in d.why
    assert chosen(p, ev("c", T0), score=0.7, row=np.array([5.0, 0.0]), names=names) == "nothing"
    assert chosen(p, ev("d", T0), row=np.array([5.0, 1.0]), names=names) == "nothing"
    assert p.counts["eligibility_errors"] == 0


def test_cel_runs_only_for_otherwise_eligible_actions_and_errors_make_it_ineligible() -> None:
    # Evaluating this on an event without props.x is a runtime error.
    fragile = act("fragile", 100.0, types=("form_submit",), eligible_if="event.props.x == 1")
    p = policy(fragile, act("mail", 1.0))
    assert chosen(p, ev("a", T0)) == "mail"  # not a form: the expression never ran
    assert p.counts["eligibility_errors"] == 0
    assert chosen(p, ev("b", T0, type_="form_submit")) == "mail"
    assert p.counts["eligibility_errors"] == 1
    assert chosen(p, ev("c", T0, type_="form_submit", x=1)) == "fragile"
    assert chosen(p, ev("d", T0), score=0.4) is None  # below the threshold: nothing runs
    assert p.counts["eligibility_errors"] == 1


def test_a_policy_with_compiled_expressions_pickles() -> None:
    p = policy(act("mail", 100.0, cooldown_s=10.0, eligible_if="score > 0.6"))
    assert chosen(p, ev("a", T0)) == "mail"
    restored = pickle.loads(pickle.dumps(p))
    assert chosen(restored, ev("a", T0 + 5_000)) is None  # cooldown kept
    assert chosen(restored, ev("b", T0)) == "mail"
    assert chosen(restored, ev("c", T0), score=0.55) is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"eligible_if": "event.type =="}, r"catalog\[0\]\.eligible_if: not a valid CEL"),
        ({"eligible_if": "visits > 3"}, r"catalog\[0\]\.eligible_if: unknown variable"),
        ({"eligible_if": "  "}, r"catalog\[0\]\.eligible_if"),
        ({"daily_cap": -1}, r"catalog\[0\]\.daily_cap"),
        ({"lever": -2.0}, r"catalog\[0\]\.lever"),
        ({"account_cooldown_s": -1.0}, r"catalog\[0\]\.account_cooldown_s"),
        ({"suppress_after_rejections": 1.5}, r"catalog\[0\]\.suppress_after_rejections"),
    ],
)
def test_catalog_errors_name_the_key(entry: dict[str, Any], message: str) -> None:
    base = {"id": "x", "description": "d", "channel": "phone", "value": 1.0}
    with pytest.raises(ConfigError, match=message):
        ActionCatalog.from_dict({"catalog": [{**base, **entry}]})


def test_memory_stays_bounded_and_prunes() -> None:
    p = policy(
        act(
            "a",
            1.0,
            cooldown_s=60.0,
            account_cooldown_s=60.0,
            owner_daily_capacity=1000,
            suppress_after_rejections=5,
            daily_cap=10,
        ),
        max_entities=50,
    )
    for i in range(500):
        p.decide(ev(f"c{i}", T0 + i, f"a{i}", owner=f"rep{i % 7}"), 0.9, NO_FEATURES, ())
        reject(p, f"c{i}", "a", T0 + i)
    assert p.n_entities <= 50
    assert p.counts["forgotten"] > 0
    p.prune(T0 + 31 * DAY_MS)  # past the 30-day rejection window
    assert p.n_entities == 0
    assert p.n_pending_feedback == 0


def test_the_default_catalog_validates_and_decides() -> None:
    cat = ActionCatalog.default()
    assert cat.bandit.kind == "linucb"
    assert cat.get("send_case_study").eligible_if is not None
    p = Policy(cat, threshold=0.7)
    opted_out = ev("c", T0, type_="email_open", email_opt_out=True)
    d = p.decide(opted_out, 0.95, NO_FEATURES, ())
    assert d is not None
    assert d.action_id == "nurture_email"
    assert "send_case_study (eligible_if is false)" in d.why
    d = p.decide(ev("c2", T0, type_="email_open"), 0.95, NO_FEATURES, ())
    assert d is not None
    assert d.action_id in {"send_case_study", "nurture_email"}


def _ended(p: Policy, now: int) -> list[str]:
    """What a full scan would still find ended by ``now`` (the old, O(all) prune)."""
    actions = {a.id: a for a in p.catalog.actions}
    found = []
    for entity_id, state in p._ent.items():
        if any(last + actions[a].cooldown_ms <= now for a, last in state.last.items()):
            found.append(f"cooldown {entity_id}")
        if state.today and state.day < now // DAY_MS:
            found.append(f"day {entity_id}")
        if any(until <= now for until in state.suppressed.values()):
            found.append(f"pause {entity_id}")
        for a, times in state.rejections.items():
            if any(t <= now - actions[a].suppress_ms for t in times):
                found.append(f"rejection {entity_id}")
        if state.empty():
            found.append(f"empty {entity_id}")
    for account_id, entry in p._acct.items():
        if any(t + actions[a].account_cooldown_ms <= now for a, t in entry.items()):
            found.append(f"account {account_id}")
    ttl = p.bandit.config.feedback_ttl_ms
    found += [f"pending {k}" for k, v in p._pending.items() if v[0] + ttl < now]
    return found


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["decide", "reject", "prune", "pickle"]),
            st.integers(0, 5),  # entity
            st.integers(1, 4 * 3_600_000),  # time step
        ),
        max_size=60,
    )
)
def test_incremental_prune_leaves_nothing_ended(ops: list[tuple[str, int, int]]) -> None:
    catalog = ActionCatalog(
        actions=(
            act("call", 100.0, cooldown_s=1800.0, account_cooldown_s=3600.0, daily_cap=3),
            act("mail", 10.0, cooldown_s=600.0, suppress_after_rejections=2, suppress_days=0.1),
            act("note", 1.0, cooldown_s=0.0),
        ),
        bandit=BanditConfig(kind="none", feedback_ttl_s=5400.0),
    )
    p = Policy(catalog, threshold=0.5)
    now = T0
    for op, entity, step in ops:
        now += step
        name = f"c{entity}"
        if op == "decide":
            p.decide(ev(name, now, f"a{entity % 2}"), 0.9, NO_FEATURES, ())
        elif op == "reject":
            reject(p, name, "mail", now)
        elif op == "pickle":
            p = pickle.loads(pickle.dumps(p))
        else:
            p.prune(now)
            assert _ended(p, now) == []
    p.prune(now + 40 * DAY_MS)
    assert (p.n_entities, len(p._acct), p.n_pending_feedback) == (0, 0, 0)


def test_due_queues_stay_bounded_by_what_is_held() -> None:
    catalog = ActionCatalog(
        actions=(act("call", 100.0, cooldown_s=60.0),),
        bandit=BanditConfig(kind="none", max_pending_feedback=10),
    )
    p = Policy(catalog, threshold=0.5, max_entities=10)
    for i in range(5_000):  # forgotten entities and overflowing decisions leave stale entries
        p.decide(ev(f"c{i}", T0 + i), 0.9, NO_FEATURES, ())
        if i % 500 == 0:
            p.prune(T0 + i)
    p.prune(T0 + 5_000)
    assert p.n_entities <= 10
    assert p.n_pending_feedback <= 10
    assert len(p._ent_due) <= 2 * 10 + 1024
    assert len(p._pending_due) <= 2 * 10 + 1024
    assert _ended(p, T0 + 5_000) == []

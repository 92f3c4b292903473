"""The action catalog and the first next-best-action policy."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from intentflow.errors import ConfigError
from intentflow.events import Event
from intentflow.online_models.catalog import Action, ActionCatalog, load_catalog
from intentflow.online_models.policy import Decision, Policy, alert_id

NO_FEATURES = np.zeros(0)


def ev(entity: str = "c-1", ts: int = 0, type_: str = "page_view", **props: Any) -> Event:
    return Event(f"{entity}-{ts}", ts, entity, type_, props=props)


def catalog(*actions: Action, **kw: str) -> ActionCatalog:
    return ActionCatalog(actions=actions, **kw)


def chosen(
    policy: Policy,
    event: Event,
    score: float = 0.9,
    row: np.ndarray = NO_FEATURES,
    names: tuple[str, ...] = (),
) -> str | None:
    d = policy.decide(event, score, row, names)
    return None if d is None else d.action_id


def act(id_: str, value: float, **kw: Any) -> Action:
    return Action(id=id_, description=f"do {id_}", channel="email", value=value, **kw)


# --- catalog --------------------------------------------------------------------------------


def test_default_catalog_has_the_documented_actions() -> None:
    cat = ActionCatalog.default()
    ids = {a.id for a in cat.actions}
    assert ids == {
        "call_now",
        "book_demo",
        "send_case_study",
        "offer_discount",
        "retention_call",
        "nurture_email",
    }
    assert {a.channel for a in cat.actions} <= {"phone", "email", "meeting", "in_app"}
    assert cat.get("retention_call").only_if_customer
    assert cat.get("call_now").exclude_if_customer
    assert load_catalog({}) == cat
    assert load_catalog(None) == cat


def test_catalog_from_file_and_inline(tmp_path: Path) -> None:
    text = """
customer_prop = "client"
[[catalog]]
id = "ping"
description = "Ping them"
channel = "in_app"
value = 3
types = ["click"]
"""
    path = tmp_path / "actions.toml"
    path.write_text(text, encoding="utf-8")
    from_file = load_catalog({"path": str(path)})
    assert from_file.customer_prop == "client"
    assert from_file.get("ping").types == ("click",)
    assert from_file.get("ping").value == 3.0
    inline = load_catalog(
        {"catalog": [{"id": "x", "description": "d", "channel": "phone", "value": 1}]}
    )
    assert inline.get("x").cooldown_s == 86_400.0


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({"channel": "fax"}, r"actions\.catalog\[0\]\.channel"),
        ({"value": -1}, r"actions\.catalog\[0\]\.value"),
        ({"min_score": 2}, r"actions\.catalog\[0\]\.min_score"),
        ({"types": "page_view"}, r"actions\.catalog\[0\]\.types"),
        ({"exclude_if_customer": True, "only_if_customer": True}, r"only_if_customer"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_catalog_errors_name_the_key(entry: dict[str, Any], key: str) -> None:
    base = {"id": "x", "description": "d", "channel": "phone", "value": 1.0}
    with pytest.raises(ConfigError, match=key):
        ActionCatalog.from_dict({"catalog": [{**base, **entry}]})


def test_catalog_structure_errors(tmp_path: Path) -> None:
    a = {"id": "x", "description": "d", "channel": "phone", "value": 1.0}
    with pytest.raises(ConfigError, match=r"actions\.catalog\[1\]\.id: duplicate"):
        ActionCatalog.from_dict({"catalog": [a, a]})
    with pytest.raises(ConfigError, match=r"actions\.catalog: expected a non-empty list"):
        ActionCatalog.from_dict({"catalog": []})
    with pytest.raises(ConfigError, match=r"actions\.path"):
        load_catalog({"path": str(tmp_path / "missing.toml")})
    with pytest.raises(ConfigError, match=r"actions\.path: give either"):
        load_catalog({"path": "x.toml", "catalog": [a]})


# --- threshold, priority, eligibility -------------------------------------------------------


def test_threshold_gates_every_decision() -> None:
    policy = Policy(catalog(act("a", 10.0)), threshold=0.7)
    assert policy.decide(ev(), 0.69, NO_FEATURES, ()) is None
    assert policy.decide(ev(), float("nan"), NO_FEATURES, ()) is None
    d = policy.decide(ev(), 0.7, NO_FEATURES, ())
    assert isinstance(d, Decision)
    assert d.action_id == "a"
    assert policy.counts["below_threshold"] == 2
    assert policy.counts["decisions"] == 1


def test_highest_priority_wins_and_ties_go_to_the_first_listed() -> None:
    cat = catalog(act("low", 10.0), act("high", 300.0), act("also_high", 300.0))
    d = Policy(cat, threshold=0.5).decide(ev(), 0.8, NO_FEATURES, ())
    assert d is not None
    assert (d.action_id, d.channel, d.probability) == ("high", "email", 1.0)
    assert d.priority == pytest.approx(0.8 * 300.0)
    assert d.why.startswith(
        "score 0.80 ≥ 0.50; highest priority among eligible: high (value 300, acceptance 1.00)"
    )


def test_min_score_of_an_action() -> None:
    cat = catalog(act("big", 500.0, min_score=0.9), act("small", 50.0))
    policy = Policy(cat, threshold=0.5)
    d = policy.decide(ev("x"), 0.85, NO_FEATURES, ())
    assert d is not None
    assert d.action_id == "small"
    assert "big (score below its 0.90)" in d.why
    d = policy.decide(ev("y"), 0.95, NO_FEATURES, ())
    assert d is not None
    assert d.action_id == "big"


def test_eligibility_by_event_type_and_required_prop() -> None:
    cat = catalog(
        act("cart", 100.0, types=("cart_add",)),
        act("phone", 90.0, requires_prop="phone"),
        act("any", 1.0),
    )
    policy = Policy(cat, threshold=0.5)
    assert chosen(policy, ev("a", type_="cart_add")) == "cart"
    assert chosen(policy, ev("b", type_="page_view")) == "any"
    d = policy.decide(ev("c", phone="+33 1 23"), 0.9, NO_FEATURES, ())
    assert d is not None
    assert d.action_id == "phone"
    d = policy.decide(ev("d", phone=""), 0.9, NO_FEATURES, ())
    assert d is not None
    assert d.action_id == "any"
    assert "cart (not for page_view events)" in d.why
    assert "phone (needs phone)" in d.why


def test_customer_flag_from_prop_and_from_feature() -> None:
    cat = catalog(
        act("prospect", 100.0, exclude_if_customer=True),
        act("customer", 50.0, only_if_customer=True),
    )
    policy = Policy(cat, threshold=0.5)
    names = ("visits", "is_customer")
    prospect_row = np.array([3.0, 0.0])
    customer_row = np.array([3.0, 1.0])
    assert chosen(policy, ev("a"), row=prospect_row, names=names) == "prospect"
    assert chosen(policy, ev("b"), row=customer_row, names=names) == "customer"
    assert chosen(policy, ev("c", is_customer=True), row=prospect_row, names=names) == "customer"
    assert chosen(policy, ev("d", is_customer="yes")) == "customer"
    assert chosen(policy, ev("e", is_customer="no")) == "prospect"


def test_nothing_eligible_gives_none() -> None:
    policy = Policy(catalog(act("cart", 100.0, types=("cart_add",))), threshold=0.5)
    assert policy.decide(ev(type_="ticket"), 0.99, NO_FEATURES, ()) is None
    assert policy.counts["none_eligible"] == 1


# --- cooldowns ------------------------------------------------------------------------------


def test_cooldown_holds_then_expires_per_entity_and_action() -> None:
    cat = catalog(act("best", 100.0, cooldown_s=60.0), act("next", 10.0, cooldown_s=600.0))
    policy = Policy(cat, threshold=0.5)
    t0 = 1_000_000
    assert chosen(policy, ev("x", t0)) == "best"
    d = policy.decide(ev("x", t0 + 59_999), 0.9, NO_FEATURES, ())
    assert d is not None
    assert d.action_id == "next"
    assert "best (in cooldown)" in d.why
    assert policy.decide(ev("x", t0 + 30_000), 0.9, NO_FEATURES, ()) is None  # both cooling
    assert chosen(policy, ev("y", t0 + 1)) == "best"
    assert chosen(policy, ev("x", t0 + 60_000)) == "best"
    assert policy.cooldown_left_ms("x", cat.get("next"), t0 + 60_000) == 600_000 - 1


def test_cooldowns_survive_pickling() -> None:
    policy = Policy(catalog(act("only", 1.0, cooldown_s=10.0)), threshold=0.5)
    policy.decide(ev("x", 0), 0.9, NO_FEATURES, ())
    restored = pickle.loads(pickle.dumps(policy))
    assert restored.decide(ev("x", 9_999), 0.9, NO_FEATURES, ()) is None
    assert restored.decide(ev("x", 10_000), 0.9, NO_FEATURES, ()) is not None


def test_cooldown_memory_is_bounded() -> None:
    policy = Policy(catalog(act("a", 1.0, cooldown_s=100.0)), threshold=0.5, max_entities=10)
    for i in range(25):
        policy.decide(ev(f"e{i}", i), 0.9, NO_FEATURES, ())
    assert policy.n_entities == 10
    assert policy.counts["forgotten"] == 15
    # Once cooldowns end, pruning makes room without forgetting live ones.
    for i in range(10):
        policy.decide(ev(f"late{i}", 200_000 + i), 0.9, NO_FEATURES, ())
    assert policy.n_entities == 10
    assert policy.counts["forgotten"] == 15
    assert policy.prune(10**9) == 10
    assert policy.n_entities == 0
    policy.decide(ev("z", 0), 0.9, NO_FEATURES, ())
    assert policy.evict_entity("z")
    assert not policy.evict_entity("z")


# --- feedback and alert ids -----------------------------------------------------------------


def test_feedback_counts_outcomes_per_action() -> None:
    policy = Policy(catalog(act("a", 1.0)), threshold=0.5)
    policy.feedback(ev(type_="outcome", action="a", result="accepted", alert_id="x"))
    policy.feedback(ev(type_="outcome", action="a", result="accepted", alert_id="y"))
    policy.feedback(ev(type_="outcome", action="zzz", result="accepted", alert_id="z"))
    assert policy.outcomes == {"a": {"accepted": 2}}
    assert policy.counts["feedback_unknown"] == 1


def test_alert_ids_are_deterministic_blake2b() -> None:
    expected = hashlib.blake2b(b"c-1\x1fmodel:intent\x1fe-9", digest_size=16).hexdigest()
    assert alert_id("c-1", "model:intent", "e-9") == expected
    assert alert_id("c-1", "model:intent", "e-9") == alert_id("c-1", "model:intent", "e-9")
    assert alert_id("c-1", "model:intent", "e-8") != expected
    assert alert_id("a", "b c", "d") != alert_id("a b", "c", "d")
    assert len(expected) == 32
    assert set(expected) <= set("0123456789abcdef")

"""The policy's contextual bandit: learning from feedback, exploration, logged probabilities."""

from __future__ import annotations

import pickle
from collections import Counter
from typing import Any

import numpy as np
import pytest

from intentflow.errors import ConfigError
from intentflow.events import Event
from intentflow.online_models.bandit import ActionBandit, BanditConfig, decision_rng
from intentflow.online_models.catalog import Action, ActionCatalog
from intentflow.online_models.policy import Decision, Policy

NO_FEATURES = np.zeros(0)
ACCEPT = {"good": 0.6, "poor": 0.2}


def catalog(**bandit: Any) -> ActionCatalog:
    actions = tuple(
        Action(id=a, description=a, channel="email", value=100.0, cooldown_s=0.0)
        for a in ("poor", "good")  # the poor action is listed first: it wins ties
    )
    return ActionCatalog(actions=actions, bandit=BanditConfig(**bandit))


def ev(i: int, entity: str | None = None, **props: Any) -> Event:
    return Event(f"e{i}", 1_000_000 + i * 1000, entity or f"c{i}", "page_view", props=props)


def outcome(i: int, d: Decision, entity: str, accepted: bool) -> Event:
    result = "accepted" if accepted else "rejected"
    props = {"alert_id": d.alert_id, "action": d.action_id, "result": result}
    return Event(f"o{i}", 1_000_000 + i * 1000 + 500, entity, "outcome", props=props)


def loop(policy: Policy, n: int, seed: int) -> list[Decision]:
    """Decide, then feed back the simulated customer's answer (fixed seed)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        d = policy.decide(ev(i), 0.9, NO_FEATURES, ())
        assert d is not None
        out.append(d)
        accepted = bool(rng.random() < ACCEPT[d.action_id])
        policy.feedback(outcome(i, d, f"c{i}", accepted))
    return out


@pytest.mark.parametrize("kind", ["linucb", "thompson"])
def test_the_bandit_comes_to_prefer_the_action_accepted_more_often(kind: str) -> None:
    policy = Policy(catalog(kind=kind, exploration=0.1, seed=3), threshold=0.5)
    decisions = loop(policy, 600, seed=11)
    late = Counter(d.action_id for d in decisions[-200:])
    assert late["good"] >= 150, late
    est = policy.bandit.estimates(
        ("poor", "good"), policy.bandit.context(0.9, False, NO_FEATURES, ())
    )
    assert est[1] > est[0]
    assert policy.counts["feedback_learned"] == 600
    assert policy.bandit.acceptance_rate("good") == pytest.approx(0.6, abs=0.1)


def test_without_learning_the_first_listed_action_keeps_winning() -> None:
    policy = Policy(catalog(kind="none"), threshold=0.5)
    decisions = loop(policy, 100, seed=11)
    assert {d.action_id for d in decisions} == {"poor"}
    assert all(d.probability == 1.0 and not d.explored for d in decisions)


def test_recorded_probabilities_match_the_choice_frequencies() -> None:
    """For a fixed bandit state, choices over many alert ids follow the logged probabilities."""
    for kind in ("linucb", "thompson"):
        policy = Policy(catalog(kind=kind, exploration=0.2, seed=5), threshold=0.5)
        loop(policy, 60, seed=2)  # some feedback, so Thompson's posterior is not flat
        frozen = pickle.dumps(policy)
        counts: Counter[str] = Counter()
        probs: dict[str, list[float]] = {"poor": [], "good": []}
        n = 3000
        for i in range(n):
            p = pickle.loads(frozen)  # the same state for every draw
            d = p.decide(ev(10_000 + i), 0.9, NO_FEATURES, ())
            assert d is not None
            counts[d.action_id] += 1
            probs[d.action_id].append(d.probability)
        for action in ("poor", "good"):
            logged = float(np.mean(probs[action])) if probs[action] else 0.0
            assert counts[action] / n == pytest.approx(logged, abs=0.03), (kind, action)


def test_epsilon_greedy_probabilities_are_exact() -> None:
    policy = Policy(catalog(kind="linucb", exploration=0.3, seed=1), threshold=0.5)
    seen = set()
    for i in range(200):
        d = policy.decide(ev(i), 0.9, NO_FEATURES, ())
        assert d is not None
        expected = 0.3 / 2 if d.explored and d.action_id == "good" else None
        if d.action_id == "poor":  # the greedy choice (a tie, listed first)
            expected = 0.7 + 0.3 / 2
        assert expected is not None
        assert d.probability == pytest.approx(expected)
        seen.add((d.action_id, d.explored))
    assert ("good", True) in seen
    assert ("poor", True) in seen  # the draw can land on the greedy action too
    assert policy.counts["explored"] > 30


def test_choices_replay_identically_and_survive_pickling() -> None:
    def run(policy: Policy, lo: int, hi: int) -> list[tuple[str, float, bool]]:
        out = []
        for i in range(lo, hi):
            d = policy.decide(ev(i), 0.9, NO_FEATURES, ())
            assert d is not None
            out.append((d.action_id, d.probability, d.explored))
            u = np.random.default_rng(i).random()  # the customer's answer to alert i
            policy.feedback(outcome(i, d, f"c{i}", bool(u < ACCEPT[d.action_id])))
        return out

    a = Policy(catalog(kind="thompson", exploration=0.1, seed=9), threshold=0.5)
    whole = run(a, 0, 300)
    b = Policy(catalog(kind="thompson", exploration=0.1, seed=9), threshold=0.5)
    first = run(b, 0, 150)
    restored = pickle.loads(pickle.dumps(b))
    assert first + run(restored, 150, 300) == whole
    other_seed = Policy(catalog(kind="thompson", exploration=0.1, seed=10), threshold=0.5)
    assert run(other_seed, 0, 300) != whole


def test_feedback_needs_the_decision() -> None:
    policy = Policy(catalog(kind="linucb"), threshold=0.5)
    d = policy.decide(ev(1), 0.9, NO_FEATURES, ())
    assert d is not None
    wrong = Event(
        "o",
        2,
        "c1",
        "outcome",
        props={"alert_id": "nope", "action": d.action_id, "result": "accepted"},
    )
    policy.feedback(wrong)
    assert policy.counts["feedback_unmatched"] == 1
    assert policy.bandit.updates == {}
    policy.feedback(outcome(1, d, "c1", True))
    policy.feedback(outcome(1, d, "c1", False))  # a second outcome of the same alert
    assert policy.bandit.updates == {d.action_id: 1}
    assert policy.bandit.rewards == {d.action_id: 1.0}
    assert policy.n_pending_feedback == 0


def test_pending_feedback_is_bounded_and_expires() -> None:
    policy = Policy(catalog(max_pending_feedback=10, feedback_ttl_s=5.0), threshold=0.5)
    for i in range(25):
        policy.decide(ev(i), 0.9, NO_FEATURES, ())
    assert policy.n_pending_feedback == 10
    assert policy.counts["feedback_expired"] == 15
    policy.prune(1_000_000 + 24 * 1000 + 5001)
    assert policy.n_pending_feedback < 10


def test_context_features_enter_the_context() -> None:
    bandit = ActionBandit(BanditConfig(context_features=("visits",)))
    row = np.array([2.0, np.e - 1.0])
    ctx = bandit.context(0.7, True, row, ("other", "visits"))
    assert ctx == pytest.approx((1.0, 0.7, 1.0, 1.0))
    assert bandit.context(0.7, False, np.array([2.0, -5.0]), ("other", "visits"))[3] == 0.0
    with pytest.raises(ValueError, match="not in the feature spec"):
        bandit.context(0.7, False, row, ("other", "clicks"))
    cat = ActionCatalog(
        actions=(Action(id="a", description="a", channel="email", value=1.0),),
        bandit=BanditConfig(context_features=("clicks",)),
    )
    with pytest.raises(ConfigError, match=r"actions\.bandit\.context_features"):
        cat.check_features(("visits",))


def test_decision_randomness_comes_from_the_seed_and_key_only() -> None:
    a = decision_rng(1, "k").random(4)
    assert np.array_equal(a, decision_rng(1, "k").random(4))
    assert not np.array_equal(a, decision_rng(1, "k2").random(4))
    assert not np.array_equal(a, decision_rng(2, "k").random(4))


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"kind": "greedy"}, "kind"),
        ({"exploration": 1.5}, "exploration"),
        ({"noise_precision": 0}, "noise_precision"),
        ({"thompson_draws": 0}, "thompson_draws"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bandit_config_errors_name_the_key(table: dict[str, Any], key: str) -> None:
    base = {"id": "x", "description": "d", "channel": "phone", "value": 1.0}
    with pytest.raises(ConfigError, match=rf"actions\.bandit.*{key}"):
        ActionCatalog.from_dict({"catalog": [base], "bandit": table})


def test_the_reward_model_is_rivers_bayesian_linear_regression() -> None:
    """The closed-form posterior equals River's BayesianLinearRegression (LinUCBDisjoint's)."""
    from river import linear_model

    cfg = BanditConfig(prior_precision=1.0, noise_precision=4.0, context_features=("x",))
    bandit = ActionBandit(cfg)
    river = linear_model.BayesianLinearRegression(alpha=1.0, beta=4.0)
    rng = np.random.default_rng(8)
    names = bandit.context_names
    for _ in range(300):
        ctx = (1.0, float(rng.random()), float(rng.random() < 0.3), float(rng.exponential()))
        reward = float(rng.random() < 0.2 + 0.5 * ctx[1])
        bandit.update("a", ctx, reward)
        river.learn_one(dict(zip(names, ctx, strict=True)), reward)
    for _ in range(20):
        ctx = (1.0, float(rng.random()), float(rng.random() < 0.5), float(rng.exponential()))
        (mean,), (std,) = bandit.posterior(("a",), ctx)
        dist = river.predict_one(dict(zip(names, ctx, strict=True)), with_dist=True)
        assert mean == pytest.approx(dist.mu, abs=1e-9)
        assert std == pytest.approx(np.sqrt(dist.sigma**2 - 1.0 / 4.0), abs=1e-9)

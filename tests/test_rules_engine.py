"""The rules inside a shard: the five example rules on crafted events, state, time, reloads."""

from __future__ import annotations

import json
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from flowkit import demo_config

from intentflow.dataflows.flow import engine_parts
from intentflow.dataflows.logic import EngineParts, ShardLogic
from intentflow.events import Event
from intentflow.online_models.policy import alert_id
from intentflow.rules import RuleEngine, RulesProvider, compile_rules, parse_rules_text
from intentflow.sinks.base import AlertOut, Output

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = (ROOT / "examples" / "rules.toml").read_text(encoding="utf-8")
#: The example file without its absence rule (no escalations in the way).
EVENT_RULES = EXAMPLES.split("# 5.")[0]
assert "no_follow_up" not in EVENT_RULES
ALERTS = jsonschema.Draft202012Validator(
    json.loads(resources.files("intentflow").joinpath("schemas/alert.schema.json").read_text())
)
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR


@pytest.fixture(scope="module")
def parts() -> EngineParts:
    return engine_parts(demo_config())


class Shard:
    """One ShardLogic with a rules file it reloads on every batch."""

    def __init__(self, parts: EngineParts, path: Path, text: str = EVENT_RULES) -> None:
        self.path = path
        path.write_text(text, encoding="utf-8")
        self.provider = RulesProvider(
            parts.spec, parts.catalog, path=path, redis_key=None, reload_interval_s=0.0
        )
        self.provider.load_initial()
        self.logic = ShardLogic(parts, None, None, self.provider)
        self.n = 0

    def feed(self, *events: Event) -> list[dict[str, Any]]:
        """Process ``events`` as one batch; the rule alerts it produced."""
        out, _ = self.logic.on_batch(list(events))
        return rule_alerts(out)


def rule_alerts(out: Any) -> list[dict[str, Any]]:
    found = [o.alert for o in out if isinstance(o, AlertOut)]
    for a in found:
        ALERTS.validate(a)
    return [a for a in found if a["trigger"]["kind"] == "rule"]


_seq = iter(range(10**9))


def ev(ts: int, entity: str, etype: str, account: str | None = None, **props: Any) -> Event:
    return Event(f"e{next(_seq)}", ts, entity, etype, account, props)


def product_view(ts: int, entity: str = "c-1", account: str = "a-1", **props: Any) -> Event:
    base = {"page": "/product/security", "category": "product", "duration_s": 150}
    return ev(ts, entity, "page_view", account, **{**base, **props})


def fired(alerts: list[dict[str, Any]]) -> list[str]:
    return [a["trigger"]["rule_id"] for a in alerts]


# --- 1. product page dwell -----------------------------------------------------------------


def test_product_dwell_alerts_the_owner_with_the_case_study(
    parts: EngineParts, tmp_path: Path
) -> None:
    shard = Shard(parts, tmp_path / "rules.toml")
    assert shard.feed(ev(T0, "c-1", "email_click", "a-1", owner="rep-7")) == []
    view = product_view(T0 + MIN)
    [alert] = shard.feed(view)
    assert alert["alert_id"] == alert_id("c-1", "rule:product_page_dwell", view.event_id)
    assert alert["trigger"] == {
        "kind": "rule",
        "id": "rule:product_page_dwell",
        "rule_id": "product_page_dwell",
        "rules_version": shard.provider.current().version,
    }
    action = alert["action"]
    assert (action["id"], action["channel"], action["priority"]) == ("call_now", "phone", 800.0)
    assert action["target"] == {"kind": "owner", "id": "rep-7"}  # remembered from the email
    assert action["deadline_ts"] == T0 + MIN + HOUR
    assert action["details"] == {
        "product_page": "/product/security",
        "case_study": "/case-studies/umbrella-health",
    }
    assert alert["owner"] == "rep-7"
    assert alert["trace"]["event_ids"] == [view.event_id]


@pytest.mark.parametrize(
    "props",
    [
        {"duration_s": 120},
        {"duration_s": "150"},
        {"category": "pricing"},
        {"duration_s": None},
    ],
)
def test_product_dwell_does_not_fire_otherwise(
    parts: EngineParts, tmp_path: Path, props: dict[str, Any]
) -> None:
    shard = Shard(parts, tmp_path / "rules.toml")
    assert shard.feed(product_view(T0, **props)) == []
    no_duration = product_view(T0 + MIN)
    del no_duration.props["duration_s"]
    assert shard.feed(no_duration) == []


def test_product_dwell_cools_down_for_a_day_and_falls_back_to_a_team(
    parts: EngineParts, tmp_path: Path
) -> None:
    shard = Shard(parts, tmp_path / "rules.toml")
    [first] = shard.feed(product_view(T0, page="/product/api"))
    assert first["action"]["target"] == {"kind": "team", "id": "inside-sales"}
    assert first["action"]["details"]["case_study"] == "/case-studies/initech-saas"
    # (These page views are also visits of account a-1: the third one is a stalled account.)
    assert fired(shard.feed(product_view(T0 + HOUR))) == []
    assert fired(shard.feed(product_view(T0 + 23 * HOUR))) == ["stalled_account"]
    assert fired(shard.feed(product_view(T0 + DAY))) == ["product_page_dwell"]
    # Another contact is not in that cooldown.
    assert fired(shard.feed(product_view(T0 + DAY + 1, entity="c-2"))) == ["product_page_dwell"]
    unknown = product_view(T0 + DAY + 2, entity="c-3", page="/product/unknown")
    assert shard.feed(unknown)[0]["action"]["details"]["case_study"] == "/case-studies"


# --- 2. objection keywords --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("etype", "text", "matched"),
    [
        ("chat_message", "ＴＯＯ　EXPENSIVE!!", ["too expensive"]),
        ("chat_message", "有没有替代方案？太贵了", ["替代", "太贵"]),
        ("mention", "Found a vulnerability in their SSO", ["vulnerability"]),
        ("mention", "发现漏洞", ["漏洞"]),
        ("chat_message", "we are evaluating an Alternative vendor", ["alternative"]),
    ],
)
def test_objection_keywords_fire_on_chats_and_mentions(
    parts: EngineParts, tmp_path: Path, etype: str, text: str, matched: list[str]
) -> None:
    shard = Shard(parts, tmp_path / "rules.toml")
    [alert] = shard.feed(ev(T0, "c-1", etype, "a-1", text=text, owner="rep-2"))
    assert alert["trigger"]["rule_id"] == "objection_keywords"
    assert alert["trigger"]["matched"] == matched
    assert alert["action"]["target"] == {"kind": "owner", "id": "rep-2"}
    assert alert["action"]["deadline_ts"] == T0 + 2 * HOUR


def test_objection_keywords_do_not_fire_otherwise(parts: EngineParts, tmp_path: Path) -> None:
    shard = Shard(parts, tmp_path / "rules.toml")
    assert shard.feed(ev(T0, "c-1", "chat_message", "a-1", text="the price is fine")) == []
    assert shard.feed(ev(T0 + 1, "c-1", "chat_message", "a-1", text="太 贵")) == []
    assert shard.feed(ev(T0 + 2, "c-1", "ticket", "a-1", text="too expensive")) == []
    assert shard.feed(ev(T0 + 3, "c-1", "chat_message", "a-1", text=42)) == []
    assert shard.feed(ev(T0 + 4, "c-1", "chat_message", "a-1")) == []
    [alert] = shard.feed(ev(T0 + 5, "c-1", "chat_message", "a-1", text="太贵"))
    assert alert["action"]["target"] == {"kind": "team", "id": "account-management"}
    # Two hours of cooldown per contact.
    assert shard.feed(ev(T0 + HOUR, "c-1", "chat_message", "a-1", text="太贵")) == []
    later = ev(T0 + 2 * HOUR + 5, "c-1", "chat_message", "a-1", text="太贵")
    assert fired(shard.feed(later)) == ["objection_keywords"]


# --- 3. stalled account -----------------------------------------------------------------------


def visit(ts: int, entity: str = "c-1") -> Event:
    return ev(ts, entity, "page_view", "a-2", page="/docs/sso", category="docs", duration_s=20)


def test_stalled_account_fires_on_the_third_visit_in_14_days(
    parts: EngineParts, tmp_path: Path
) -> None:
    shard = Shard(parts, tmp_path / "rules.toml")
    assert shard.feed(visit(T0), visit(T0 + 10 * MIN), visit(T0 + 25 * MIN, "c-2")) == []
    assert shard.feed(visit(T0 + 2 * HOUR, "c-2")) == []  # the second visit
    third = visit(T0 + 3 * DAY)
    [alert] = shard.feed(third)
    assert alert["trigger"]["rule_id"] == "stalled_account"
    assert alert["trace"]["event_ids"] == [third.event_id]
    assert alert["action"]["id"] == "book_demo"
    assert alert["action"]["target"] == {"kind": "team", "id": "presales"}
    # Fires once per account in 14 days, however many visits follow.
    for day in (4, 5, 6, 7, 9, 11):
        assert shard.feed(visit(T0 + day * DAY)) == []


def test_stalled_account_is_reset_by_progress(parts: EngineParts, tmp_path: Path) -> None:
    shard = Shard(parts, tmp_path / "rules.toml")
    shard.feed(visit(T0), visit(T0 + DAY))
    # A newsletter sign-up is not progress; a demo request is.
    assert shard.feed(ev(T0 + DAY + HOUR, "c-3", "form_submit", "a-2", form="newsletter")) == []
    assert shard.feed(ev(T0 + DAY + 2 * HOUR, "c-3", "form_submit", "a-2", form="demo")) == []
    assert shard.feed(visit(T0 + 2 * DAY)) == []  # the count started again: 1
    assert shard.feed(visit(T0 + 3 * DAY)) == []  # 2
    # A reply (a chat message) is progress too.
    assert shard.feed(ev(T0 + 3 * DAY + HOUR, "c-1", "chat_message", "a-2", text="hi")) == []
    assert shard.feed(visit(T0 + 4 * DAY), visit(T0 + 5 * DAY)) == []
    assert fired(shard.feed(visit(T0 + 6 * DAY))) == ["stalled_account"]


def test_stalled_account_needs_the_visits_within_14_days(
    parts: EngineParts, tmp_path: Path
) -> None:
    shard = Shard(parts, tmp_path / "rules.toml")
    assert shard.feed(visit(T0), visit(T0 + 8 * DAY)) == []
    assert shard.feed(visit(T0 + 16 * DAY)) == []  # the first visit is out of the window
    assert fired(shard.feed(visit(T0 + 17 * DAY))) == ["stalled_account"]
    # Another account counts on its own.
    other = ev(T0 + 17 * DAY, "c-9", "page_view", "a-3", category="docs", duration_s=3)
    assert shard.feed(other) == []


# --- 4. falling purchases while a payment is overdue -----------------------------------------


def purchase(ts: int, entity: str = "c-5") -> Event:
    return ev(ts, entity, "purchase", "a-5", item_id="plan-team", amount=6000.0)


def payment(ts: int, status: str = "overdue", entity: str = "c-5") -> Event:
    return ev(ts, entity, "payment", "a-5", status=status, amount=500.0)


def test_falling_purchases_with_an_overdue_payment_fire(parts: EngineParts, tmp_path: Path) -> None:
    shard = Shard(parts, tmp_path / "rules.toml")
    shard.feed(purchase(T0), purchase(T0 + 10 * DAY))
    now = T0 + 20 * DAY
    [alert] = shard.feed(payment(now))
    assert alert["trigger"]["rule_id"] == "falling_purchases_overdue"
    assert alert["action"]["id"] == "retention_call"
    assert alert["action"]["target"] == {"kind": "team", "id": "customer-success"}
    reasons = {r["feature"]: r["value"] for r in alert["reasons"]}
    assert reasons == {"purchases__count__30d": 2.0, "purchases__recency_s": 10 * 86_400.0}


@pytest.mark.parametrize(
    ("purchases", "status"),
    [
        ((-20, -3), "overdue"),  # bought 3 days ago: not falling
        ((-20,), "overdue"),  # a single purchase: no frequency to fall
        ((-40, -35), "overdue"),  # nothing in the last 30 days
        ((-20, -10), "paid"),  # nothing overdue
    ],
)
def test_falling_purchases_do_not_fire_otherwise(
    parts: EngineParts, tmp_path: Path, purchases: tuple[int, ...], status: str
) -> None:
    shard = Shard(parts, tmp_path / "rules.toml")
    now = T0 + 60 * DAY
    shard.feed(*[purchase(now + d * DAY) for d in purchases])
    assert shard.feed(payment(now, status)) == []


# --- 5. no follow-up -------------------------------------------------------------------------


def test_an_alert_without_outcome_is_escalated_after_4_hours(
    parts: EngineParts, tmp_path: Path
) -> None:
    shard = Shard(parts, tmp_path / "rules.toml", EXAMPLES)
    [answered] = shard.feed(product_view(T0, entity="c-1", owner="rep-1"))
    [ignored] = shard.feed(product_view(T0 + MIN, entity="c-2", owner="rep-2"))
    outcome = ev(
        T0 + HOUR,
        "c-1",
        "outcome",
        "a-1",
        alert_id=answered["alert_id"],
        action="call_now",
        result="accepted",
    )
    assert shard.feed(outcome) == []
    # Exactly at the deadline nothing is late yet; one millisecond later it is.
    assert shard.feed(ev(T0 + MIN + 4 * HOUR, "c-8", "click", "a-8")) == []
    [late] = shard.feed(ev(T0 + MIN + 4 * HOUR + 1, "c-8", "click", "a-8"))
    assert late["alert_id"] == alert_id("c-2", "rule:no_follow_up", ignored["alert_id"])
    assert late["trigger"]["rule_id"] == "no_follow_up"
    assert late["trigger"]["awaited_alert_id"] == ignored["alert_id"]
    assert late["trigger"]["awaited_trigger"] == "rule:product_page_dwell"
    assert late["event_ts"] == T0 + MIN + 4 * HOUR
    assert late["action"]["id"] == "call_now"  # the awaited alert's action
    assert late["action"]["target"] == {"kind": "team", "id": "sales-managers"}
    assert late["action"]["priority"] == 1000.0
    assert late["owner"] == "rep-2"
    # The escalation is not itself awaited, and the answered alert never escalates.
    assert shard.feed(ev(T0 + 30 * HOUR, "c-8", "click", "a-8")) == []


def test_idle_shards_fire_deadlines_by_the_wall_clock(parts: EngineParts, tmp_path: Path) -> None:
    shard = Shard(parts, tmp_path / "rules.toml", EXAMPLES)
    [alert] = shard.feed(product_view(T0))
    engine = shard.logic.rule_engine
    wall = 1_900_000_000_000.0
    wake = engine.notify_at(now_ms=wall)
    assert isinstance(wake, datetime)
    assert wake.tzinfo is not None
    assert wake.timestamp() * 1000 == pytest.approx(wall + 4 * HOUR + 1, abs=1.0)
    out: list[Output] = []
    rules = shard.provider.current()
    assert engine.on_notify(rules, shard.logic.model, out, now_ms=wall + 4 * HOUR - 1) == 0
    assert engine.on_notify(rules, shard.logic.model, out, now_ms=wall + 4 * HOUR + 2) == 1
    [late] = rule_alerts(out)
    assert late["trigger"]["awaited_alert_id"] == alert["alert_id"]
    assert shard.logic.notify_at() is None  # nothing left to wait for


# --- state, snapshots, reloads ------------------------------------------------------------------


def test_rule_state_survives_a_snapshot(parts: EngineParts, tmp_path: Path) -> None:
    shard = Shard(parts, tmp_path / "rules.toml", EXAMPLES)
    [alert] = shard.feed(product_view(T0), visit(T0 + MIN), visit(T0 + 2 * HOUR))
    snap = shard.logic.snapshot()
    restored = ShardLogic(parts, snap, None, shard.provider)
    assert restored.rule_engine.state == shard.logic.rule_engine.state
    again = Shard.__new__(Shard)
    again.provider, again.logic = shard.provider, restored
    assert again.feed(product_view(T0 + 3 * HOUR)) == []  # still cooling down
    # The third visit (counted across the snapshot) comes after the alert's deadline.
    late, stalled = again.feed(visit(T0 + 2 * DAY))
    assert late["trigger"]["awaited_alert_id"] == alert["alert_id"]
    assert stalled["trigger"]["rule_id"] == "stalled_account"


def test_a_changed_file_applies_at_the_next_batch_and_a_bad_one_is_refused(
    parts: EngineParts, tmp_path: Path
) -> None:
    shard = Shard(parts, tmp_path / "rules.toml")
    first = shard.provider.current().version
    assert first.startswith("1-")
    cancel = '[[rules]]\nid = "cancel_words"\ntypes = ["ticket"]\nkeywords = ["cancel"]\n'
    cancel += '[rules.alert]\naction = "retention_call"\ntarget = "team:support"\n'
    assert shard.feed(ev(T0, "c-1", "ticket", "a-1", text="I want to CANCEL")) == []
    shard.path.write_text(EVENT_RULES + "\n" + cancel, encoding="utf-8")
    [alert] = shard.feed(ev(T0 + 1, "c-1", "ticket", "a-1", text="I want to CANCEL"))
    assert alert["trigger"]["rule_id"] == "cancel_words"
    assert alert["trigger"]["rules_version"].startswith("2-")
    applied = shard.provider.history[-1]
    assert applied["event"] == "applied"
    assert applied["diff"]["added"] == ["cancel_words"]
    # A bad change is refused; the running rules stay.
    bad = EVENT_RULES + "\n" + cancel.replace("ticket", "outcome")
    shard.path.write_text(bad, encoding="utf-8")
    [again] = shard.feed(ev(T0 + 2, "c-2", "ticket", "a-1", text="cancel now"))
    assert again["trigger"]["rules_version"] == alert["trigger"]["rules_version"]
    rejected = shard.provider.history[-1]
    assert rejected["event"] == "rejected"
    assert "outcome events are feedback" in rejected["error"]
    assert shard.provider.last_error == rejected["error"]


def test_adjustments_multiply_or_suppress(parts: EngineParts) -> None:
    text = "\n".join(
        [
            '[[rules]]\nid = "b1"\ntypes = ["page_view"]\nwhen = "props.duration_s > 60"\n'
            "[rules.adjust]\nboost = 1.5\n",
            '[[rules]]\nid = "b2"\ntypes = ["page_view"]\nwhen = \'props.category == "pricing"\'\n'
            "[rules.adjust]\nboost = 2.0\n",
            '[[rules]]\nid = "s1"\ntypes = ["page_view"]\nwhen = \'has(props.do_not_call)\'\n'
            "[rules.adjust]\nsuppress = true\n",
        ]
    )
    rs = compile_rules(parse_rules_text(text), parts.spec, parts.catalog, number=4)
    engine = RuleEngine()
    out: list[Output] = []

    class Model:
        name, version = "m", "m-1"

    def adjust(**props: Any) -> Any:
        return engine.on_event(
            rs, ev(T0, "c-1", "page_view", None, **props), 0.4, None, Model(), 0.0, out
        )

    both = adjust(duration_s=90, category="pricing")
    assert (both.factor, both.suppress) == (3.0, False)
    assert both.score(0.4) == pytest.approx(1.0)
    assert both.score(0.2) == pytest.approx(0.6)
    assert [a["rule_id"] for a in both.applied] == ["b1", "b2"]
    assert both.applied[0] == {
        "rule_id": "b1",
        "rules_version": rs.version,
        "effect": "boost",
        "factor": 1.5,
    }
    assert adjust(duration_s=10, category="blog") is None
    assert adjust(duration_s=10, do_not_call=True).suppress
    assert out == []  # adjustments never alert by themselves


def test_rule_state_is_bounded(parts: EngineParts) -> None:
    text = (
        '[[rules]]\nid = "every"\ntypes = ["click"]\ncooldown = "1h"\n'
        '[rules.alert]\naction = "nurture_email"\n'
        '[[rules]]\nid = "late"\n[rules.absence]\nafter = "1h"\n'
        '[rules.alert]\ntarget = "team:x"\n'
    )
    rs = compile_rules(parse_rules_text(text), parts.spec, parts.catalog)
    engine = RuleEngine(max_keys=3, max_timers=2)

    class Model:
        name, version = "m", "m-1"

    out: list[Output] = []
    for i in range(10):
        engine.on_event(rs, ev(T0 + i, f"c-{i}", "click", f"a-{i}"), 0.1, None, Model(), 0.0, out)
        assert len(engine.state.cooldowns) <= 3
    assert len(out) == 10
    assert engine.state.n_pending == 2
    assert engine.state.counts["rule_timers_dropped"] == 8


def test_evaluation_errors_are_counted_not_raised(parts: EngineParts, tmp_path: Path) -> None:
    text = '[[rules]]\nid = "odd"\ntypes = ["click"]\nwhen = "props.n * 2 > 3"\n'
    text += '[rules.alert]\naction = "nurture_email"\n'
    shard = Shard(parts, tmp_path / "rules.toml", text)
    assert shard.feed(ev(T0, "c-1", "click", None, n=2.5)) == []  # int * double: no overload
    assert fired(shard.feed(ev(T0 + 1, "c-1", "click", None, n=2))) == ["odd"]
    counts = shard.logic.rule_engine.state.counts
    assert counts["rule_errors:odd"] == 1
    assert counts["fired:odd"] == 1

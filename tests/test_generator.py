"""Tests of the synthetic buyer-journey generator.

The event contract is checked here with the test's own rules (required
fields, types, finite numbers, ts range), independent of the engine's parser.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import re
import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intentflow.errors import ConfigError, SnapshotMismatchError
from intentflow.generator import (
    GENERATED_MAX_BYTES,
    BuyerJourneyGenerator,
    GeneratorConfig,
    GeneratorSnapshot,
    iter_events,
)

START = 1767225600000  # 2026-01-01T00:00:00Z
KNOWN = {
    "page_view",
    "click",
    "email_open",
    "email_click",
    "chat_message",
    "form_submit",
    "crm_activity",
    "cart_add",
    "purchase",
    "payment",
    "ticket",
    "mention",
}
CATEGORIES = {"pricing", "product", "blog", "docs", "case_study", "careers", "home"}
FORMS = {"demo_request", "contact_sales", "newsletter", "trial_signup"}
# Phrases of a buying chat, written out here rather than taken from the module.
BUYING_CHAT = (
    "quote for",
    "enterprise plan cost",
    "start a pilot",
    "send over the contract",
    "annual billing",
    "talk to about pricing",
    "报价",
    "开始试用",
    "发合同",
)
SMALL = GeneratorConfig(entities=300)
MESSY = GeneratorConfig(
    entities=300,
    out_of_order_fraction=0.02,
    max_disorder_ms=3000,
    duplicate_fraction=0.03,
    poison_fraction=0.05,
)
HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def contract_violation(ev: Any, lo: int, hi: int) -> str | None:
    """Why ``ev`` breaks the event contract, or None when it is valid."""
    if not isinstance(ev, dict):
        return "not an object"
    if set(ev) != {"event_id", "ts", "entity_id", "account_id", "type", "props"}:
        return f"fields {sorted(ev)}"
    for key in ("event_id", "entity_id", "account_id", "type"):
        if not isinstance(ev[key], str) or not ev[key]:
            return f"{key} not a non-empty string"
    ts = ev["ts"]
    if not isinstance(ts, int) or isinstance(ts, bool) or not lo <= ts <= hi:
        return f"ts {ts!r} outside [{lo}, {hi}]"
    if not isinstance(ev["props"], dict):
        return "props not an object"
    for key, value in ev["props"].items():
        if isinstance(value, bool) or value is None:
            return f"props.{key} is {value!r}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"props.{key} not finite"
        if not isinstance(value, str | int | float):
            return f"props.{key} has type {type(value).__name__}"
    return None


def payload_violation(raw: bytes, lo: int, hi: int) -> str | None:
    try:
        ev = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        return f"not JSON: {err}"
    return contract_violation(ev, lo, hi)


def split_run(cfg: GeneratorConfig, mode: str, batches: list[int]) -> list[Any]:
    gen = BuyerJourneyGenerator(cfg)
    out: list[Any] = []
    for n in batches:
        out.extend(take(gen, mode, n))
    return out


def take(gen: BuyerJourneyGenerator, mode: str, n: int) -> list[Any]:
    """The next ``n`` items: valid events (``events``), all items as bytes or decoded."""
    if mode == "events":
        return gen.next_events(n)
    return gen.next_payloads(n) if mode == "payloads" else gen.next_decoded(n)


# ------------------------------------------------------------------ determinism
def test_same_config_gives_identical_bytes_and_other_seed_differs() -> None:
    a = BuyerJourneyGenerator(MESSY).next_payloads(5000)
    b = BuyerJourneyGenerator(MESSY).next_payloads(5000)
    c = BuyerJourneyGenerator(dataclasses.replace(MESSY, seed=8)).next_payloads(5000)
    assert a == b
    assert a != c


@HYP
@given(
    batches=st.lists(st.integers(1, 2500), min_size=1, max_size=6),
    mode=st.sampled_from(["events", "payloads", "decoded"]),
)
def test_batch_sizes_do_not_change_the_sequence(batches: list[int], mode: str) -> None:
    total = sum(batches)
    assert split_run(MESSY, mode, batches) == split_run(MESSY, mode, [total])


@HYP
@given(
    calls=st.lists(
        st.tuples(st.sampled_from(["payloads", "decoded"]), st.integers(1, 1500)),
        min_size=1,
        max_size=6,
    )
)
def test_decoded_items_are_the_payloads_decoded(calls: list[tuple[str, int]]) -> None:
    gen = BuyerJourneyGenerator(MESSY)
    got: list[Any] = []
    for mode, n in calls:
        got.extend(take(gen, mode, n))
    want = BuyerJourneyGenerator(MESSY).next_payloads(len(got))
    decoded = [x if isinstance(x, bytes) else orjson.dumps(x) for x in got]
    assert decoded == want  # poison stays bytes; each event is its JSON, decoded
    assert sum(isinstance(x, bytes) for x in got) > 0


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    entities=st.sampled_from([1, 7, 300, 100_000]),
    unknown=st.floats(0.0, 0.5),
)
def test_every_valid_event_is_smaller_than_the_decoded_size_bound(
    seed: int, entities: int, unknown: float
) -> None:
    config = GeneratorConfig(seed=seed, entities=entities, unknown_type_fraction=unknown)
    sizes = [len(orjson.dumps(e)) for e in BuyerJourneyGenerator(config).next_events(6000)]
    assert max(sizes) < GENERATED_MAX_BYTES


def test_iter_events_matches_next_events() -> None:
    assert list(iter_events(SMALL, 3000)) == BuyerJourneyGenerator(SMALL).next_events(3000)


@HYP
@given(
    calls=st.lists(
        st.tuples(st.sampled_from(["events", "payloads"]), st.integers(1, 1500)),
        min_size=1,
        max_size=6,
    )
)
def test_mixing_calls_keeps_the_valid_event_sequence(calls: list[tuple[str, int]]) -> None:
    gen = BuyerJourneyGenerator(MESSY)
    valid: list[dict[str, Any]] = []
    emitted = 0
    for mode, n in calls:
        if mode == "events":
            valid.extend(gen.next_events(n))
        else:
            for raw in gen.next_payloads(n):
                if payload_violation(raw, START - 10_000, START + 3_600_000) is None:
                    valid.append(orjson.loads(raw))
        emitted += n
    assert gen.position == emitted
    assert valid == BuyerJourneyGenerator(MESSY).next_events(len(valid))


# ------------------------------------------------------------- snapshot/restore
@HYP
@given(
    split=st.integers(0, 6000),
    batches=st.lists(st.integers(1, 1800), min_size=1, max_size=4),
    mode=st.sampled_from(["events", "payloads", "decoded"]),
)
def test_restore_continues_exactly_like_an_uninterrupted_run(
    split: int, batches: list[int], mode: str
) -> None:
    whole = split_run(MESSY, mode, [split, *batches]) if split else split_run(MESSY, mode, batches)
    first = BuyerJourneyGenerator(MESSY)
    head = take(first, mode, split)
    snap = pickle.loads(pickle.dumps(first.snapshot()))
    conv_at_split = first.conversions()
    resumed = BuyerJourneyGenerator.restore(MESSY, snap)
    assert resumed.position == split
    assert resumed.conversions() == conv_at_split
    tail: list[Any] = []
    for n in batches:
        tail.extend(take(resumed, mode, n))
    assert head + tail == whole
    first_rest = [take(first, mode, n) for n in batches]
    assert resumed.conversions() == first.conversions()
    assert [x for part in first_rest for x in part] == tail


def test_snapshot_is_small_and_does_not_grow_with_events() -> None:
    gen = BuyerJourneyGenerator(GeneratorConfig(entities=2000))
    sizes = []
    for _ in range(4):
        gen.next_events(25_000)
        sizes.append(len(pickle.dumps(gen.snapshot())))
    # 6 bytes per contact plus 12 bytes per converted contact, bounded by entities.
    assert max(sizes) <= 2000 * 18 + 4096
    assert isinstance(gen.snapshot(), GeneratorSnapshot)


def test_snapshot_does_not_disturb_the_stream() -> None:
    plain = BuyerJourneyGenerator(MESSY)
    probed = BuyerJourneyGenerator(MESSY)
    a, b = [], []
    for n in (700, 1300, 333, 2000):
        a.extend(plain.next_payloads(n))
        probed.snapshot()
        b.extend(probed.next_payloads(n))
    assert a == b


def test_consumers_may_mutate_what_they_receive() -> None:
    plain = BuyerJourneyGenerator(MESSY)
    abused = BuyerJourneyGenerator(MESSY)
    expected = plain.next_events(1500) and plain.next_payloads(3000)
    for e in abused.next_events(1500):
        e["props"]["junk"] = object()
        e["ts"] = None
    assert abused.next_payloads(3000) == expected


def test_restore_refuses_another_config() -> None:
    snap = BuyerJourneyGenerator(SMALL).snapshot()
    with pytest.raises(SnapshotMismatchError, match="config"):
        BuyerJourneyGenerator.restore(GeneratorConfig(entities=301), snap)


def test_live_start_uses_wall_time_and_survives_restore() -> None:
    cfg = GeneratorConfig(entities=100, start_ms=None)
    before = int(time.time() * 1000)
    gen = BuyerJourneyGenerator(cfg)
    first = gen.next_events(10)
    assert before <= first[0]["ts"] <= int(time.time() * 1000) + 1000
    snap = gen.snapshot()
    later = gen.next_events(50)
    assert BuyerJourneyGenerator.restore(cfg, snap).next_events(50) == later


# -------------------------------------------------------------------- contract
def test_every_valid_event_follows_the_contract() -> None:
    cfg = GeneratorConfig(entities=500, out_of_order_fraction=0.01, max_disorder_ms=2000)
    events = BuyerJourneyGenerator(cfg).next_events(20_000)
    hi = START + 3_600_000
    bad = [(e, why) for e in events if (why := contract_violation(e, START - 2000, hi))]
    assert not bad, bad[:3]
    assert len({e["event_id"] for e in events}) == len(events)
    types = Counter(e["type"] for e in events)
    assert set(types) >= KNOWN
    unknown = {t for t in types if t not in KNOWN}
    assert unknown
    assert all(re.fullmatch(r"[a-z_]+", t) for t in unknown)
    for e in events:
        assert re.fullmatch(r"c-\d{6}", e["entity_id"])
        assert re.fullmatch(r"a-\d{5}", e["account_id"])
        p = e["props"]
        if e["type"] == "page_view":
            assert p["category"] in CATEGORIES
            assert p["page"].startswith("/")
            assert isinstance(p["duration_s"], float)
            assert p["duration_s"] >= 0
        elif e["type"] == "form_submit":
            assert p["form"] in FORMS
        elif e["type"] == "purchase":
            assert isinstance(p["item_id"], str)
            assert p["amount"] > 0
        elif e["type"] == "cart_add":
            assert isinstance(p["item_id"], str)
            assert p["price"] > 0
        elif e["type"] == "payment":
            assert p["status"] in ("paid", "overdue")
            assert p["amount"] > 0
        if "owner" in p:
            assert re.fullmatch(r"rep-\d{2}", p["owner"])
    assert any("owner" in e["props"] for e in events)
    chats = [e["props"]["text"] for e in events if e["type"] == "chat_message"]
    assert any(re.search(r"[\u4e00-\u9fff]", t) for t in chats)
    assert any("too expensive" in t or "太贵了" in t for t in chats)
    assert orjson.dumps(events[0]) == BuyerJourneyGenerator(cfg).next_payloads(1)[0]


def test_contacts_keep_their_account_and_accounts_default_to_a_quarter() -> None:
    events = BuyerJourneyGenerator(GeneratorConfig(entities=400)).next_events(30_000)
    account_of: dict[str, set[str]] = defaultdict(set)
    for e in events:
        account_of[e["entity_id"]].add(e["account_id"])
    assert all(len(a) == 1 for a in account_of.values())
    accounts = {a for s in account_of.values() for a in s}
    assert 80 <= len(accounts) <= 100  # 100 accounts, nearly all active in 30 s
    assert len(account_of) > 350


def test_ts_never_decreases_without_disorder_or_duplicates() -> None:
    ts = np.array([e["ts"] for e in iter_events(SMALL, 30_000)])
    assert np.all(np.diff(ts) >= 0)
    span_s = (ts[-1] - ts[0]) / 1000
    assert 25 < span_s < 35  # 30,000 events at 1,000 events per second of event time


def test_out_of_order_fraction_and_bound() -> None:
    cfg = GeneratorConfig(entities=300, out_of_order_fraction=0.05, max_disorder_ms=5000)
    ts = np.array([e["ts"] for e in iter_events(cfg, 40_000)])
    running_max = np.maximum.accumulate(ts)
    late = ts < running_max
    assert 0.04 < late.mean() < 0.06
    assert (running_max - ts).max() <= 5000 + 5  # jitter plus the few ms between events


def test_duplicate_fraction_repeats_already_emitted_events() -> None:
    cfg = GeneratorConfig(entities=300, duplicate_fraction=0.04)
    events = BuyerJourneyGenerator(cfg).next_events(40_000)
    first: dict[str, dict[str, Any]] = {}
    dups = 0
    for e in events:
        if e["event_id"] in first:
            dups += 1
            assert e == first[e["event_id"]]
            assert e is not first[e["event_id"]]
        else:
            first[e["event_id"]] = e
    assert 0.035 < dups / len(events) < 0.045


def test_poison_is_invalid_and_as_frequent_as_configured() -> None:
    cfg = GeneratorConfig(entities=300, poison_fraction=0.1)
    payloads = BuyerJourneyGenerator(cfg).next_payloads(30_000)
    lo, hi = START - 1000, START + 3_600_000
    verdicts = [payload_violation(p, lo, hi) for p in payloads]
    poison = [p for p, v in zip(payloads, verdicts, strict=True) if v is not None]
    assert 0.09 < len(poison) / len(payloads) < 0.11
    reasons = Counter(v.split(":")[0].split(" ")[0] for v in verdicts if v is not None)
    assert {"not", "fields", "ts", "props", "entity_id", "event_id"} <= set(reasons)
    assert any(b"NaN" in p for p in poison)
    assert any(b"Infinity" in p for p in poison)
    valid = [orjson.loads(p) for p, v in zip(payloads, verdicts, strict=True) if v is None]
    # next_events ignores poison: it yields exactly the valid items, in order.
    assert valid == BuyerJourneyGenerator(cfg).next_events(len(valid))


# ----------------------------------------------------------------- ground truth
@pytest.fixture(scope="module")
def journey() -> tuple[list[dict[str, Any]], dict[str, int]]:
    gen = BuyerJourneyGenerator(GeneratorConfig(entities=1000))
    events = gen.next_events(150_000)
    return events, gen.conversions()


def is_signal(e: dict[str, Any]) -> bool:
    p = e["props"]
    if e["type"] == "page_view":
        return bool(p["category"] == "pricing")
    if e["type"] == "form_submit":
        return p["form"] in {"demo_request", "contact_sales", "trial_signup"}
    if e["type"] == "chat_message":
        text: str = p["text"]
        return text == "价格" or any(b in text for b in BUYING_CHAT)
    return bool(e["type"] == "cart_add")


def test_conversions_are_the_first_emitted_purchases(
    journey: tuple[list[dict[str, Any]], dict[str, int]],
) -> None:
    events, conversions = journey
    expected: dict[str, int] = {}
    for e in events:
        if e["type"] == "purchase":
            expected.setdefault(e["entity_id"], e["ts"])
    assert conversions == expected
    gen = BuyerJourneyGenerator(GeneratorConfig(entities=1000))
    part = gen.next_events(77_777)  # ends inside an internal block
    expected_part: dict[str, int] = {}
    for e in part:
        if e["type"] == "purchase":
            expected_part.setdefault(e["entity_id"], e["ts"])
    assert gen.conversions() == expected_part
    assert len(expected_part) < len(expected)


def test_converters_show_stronger_signals_than_non_converters(
    journey: tuple[list[dict[str, Any]], dict[str, int]],
) -> None:
    events, conversions = journey
    assert 50 < len(conversions) < 800
    # Group "before": converters' events before their first purchase; "never": non-converters.
    dwell: dict[str, list[float]] = {"before": [], "never": []}
    asked: dict[str, set[str]] = {"before": set(), "never": set()}
    seen: dict[str, set[str]] = {"before": set(), "never": set()}
    for e in events:
        ent = e["entity_id"]
        if ent not in conversions:
            group = "never"
        elif e["ts"] < conversions[ent]:
            group = "before"
        else:
            continue
        seen[group].add(ent)
        p = e["props"]
        if e["type"] == "page_view" and p["category"] == "pricing":
            dwell[group].append(p["duration_s"])
        if e["type"] == "form_submit" and p["form"] in ("demo_request", "contact_sales"):
            asked[group].add(ent)
    assert np.median(dwell["before"]) > 1.3 * np.median(dwell["never"])
    share_before = len(asked["before"]) / len(seen["before"])
    share_never = len(asked["never"]) / len(seen["never"])
    assert share_before > 1.6 * share_never


def test_every_purchase_follows_a_buying_signal_after_a_delay(
    journey: tuple[list[dict[str, Any]], dict[str, int]],
) -> None:
    events, _ = journey
    first_signal: dict[str, int] = {}
    delays = []
    for e in events:
        ent = e["entity_id"]
        if e["type"] == "purchase":
            assert ent in first_signal, f"purchase {e['event_id']} without an earlier signal"
            delays.append(e["ts"] - first_signal.pop(ent))
        elif is_signal(e):
            first_signal.setdefault(ent, e["ts"])
    assert len(delays) > 50
    assert min(delays) > 0
    assert np.median(delays) > 5_000  # typically tens of seconds of event time


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    """Mann-Whitney AUC from average ranks (ties count one half)."""
    _values, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = avg_rank[inverse]
    n_pos = int(label.sum())
    n_neg = label.size - n_pos
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_recent_signals_predict_a_purchase_within_the_horizon(
    journey: tuple[list[dict[str, Any]], dict[str, int]],
) -> None:
    events, _ = journey
    horizon, tau = 60_000, 120_000.0
    purchases: dict[str, list[int]] = defaultdict(list)
    for e in events:
        if e["type"] == "purchase":
            purchases[e["entity_id"]].append(e["ts"])
    score_of: dict[str, tuple[float, int]] = {}
    scores, labels = [], []
    end = events[-1]["ts"] - horizon
    for i, e in enumerate(events):
        s, last = score_of.get(e["entity_id"], (0.0, e["ts"]))
        s *= math.exp(-(e["ts"] - last) / tau)
        if is_signal(e):
            s += 1.0
        if e["type"] in ("ticket", "payment"):
            s -= 1.0
        score_of[e["entity_id"]] = (s, e["ts"])
        if e["ts"] <= end and i % 7 == 0:
            scores.append(s)
            labels.append(any(e["ts"] < t <= e["ts"] + horizon for t in purchases[e["entity_id"]]))
    label = np.array(labels)
    assert 0.02 < label.mean() < 0.3
    assert _auc(np.array(scores), label) > 0.65


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("entities", 0),
        ("accounts", 0),
        ("events_per_second", 0.0),
        ("journey_scale_s", float("nan")),
        ("duplicate_fraction", 0.7),
        ("poison_fraction", -0.1),
        ("out_of_order_fraction", 0.1),  # needs max_disorder_ms >= 1
        ("start_ms", -5),
        ("seed", -1),
    ],
)
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field if field != "out_of_order_fraction" else "max_"):
        GeneratorConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("ahead_ms", [0, 2 * 86_400_000])
def test_the_source_hands_over_decoded_events_that_parse_like_their_json(ahead_ms: int) -> None:
    from intentflow.contracts import Limits
    from intentflow.dataflows.flow import make_parser
    from intentflow.dataflows.sources import GeneratorSource
    from intentflow.events import Event

    # ahead_ms: events two days ahead of the clock are refused (ts_in_future) either way
    config = dataclasses.replace(MESSY, start_ms=int(time.time() * 1000) + ahead_ms)
    parse = make_parser(Limits())

    def read(decoded: bool) -> list[Any]:
        source = GeneratorSource(config, batch_size=700, count=5000, decoded=decoded)
        part = source.build_part("input", "generator", None)
        out: list[Any] = []
        while True:
            try:
                items = part.next_batch()
            except StopIteration:
                return out
            for x in parse(items):  # without the read times, which differ between runs
                if isinstance(x, Event):
                    out.append(dataclasses.replace(x, ingest_ts=0.0, produced_ts=None))
                else:
                    out.append({k: v for k, v in x.record.items() if k != "received_ts"})

    decoded, encoded = read(True), read(False)
    assert decoded == encoded
    events = sum(isinstance(x, Event) for x in decoded)
    assert len(decoded) == 5000
    assert (events > 4000) if ahead_ms == 0 else (events == 0)

"""Delayed labels: decision points, horizon, decimation, bounds, watermark."""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from label_reference import ReferenceLabelBook

from intentflow.errors import ConfigError
from intentflow.events import Event
from intentflow.online_models.labels import LabelBook, LabelConfig, Labels, Matured
from intentflow.online_models.model import IntentModel, ModelConfig

H = 10_000  # horizon used by most tests
ROW = np.array([1.0, 2.0])


def book(**kw: Any) -> LabelBook:
    """A book whose positives come at their conversion, from the first point on
    (``hold_first_horizon`` off: its tests are at the end of this module)."""
    cfg = {"horizon_ms": H, "min_gap_ms": 100, "hold_first_horizon": False, **kw}
    return LabelBook(LabelConfig(**cfg))


def summary(matured: Iterable[Matured]) -> list[tuple[str, int, bool, int]]:
    return [(m.entity_id, m.decision_ts_ms, m.label, m.delay_ms) for m in matured]


# --- config ---------------------------------------------------------------------------------


def test_config_defaults_and_errors() -> None:
    cfg = LabelConfig()
    assert cfg.horizon_ms == 30 * 60 * 1000
    assert cfg.min_gap_ms == 60_000
    assert cfg.max_pending_per_entity == 4
    assert cfg.conversion_types == ("purchase",)
    assert LabelConfig.from_dict(
        {"conversion_types": ["purchase", "payment"]}
    ).conversion_types == (
        "purchase",
        "payment",
    )
    with pytest.raises(ConfigError, match=r"labels\.horizon_ms"):
        LabelConfig.from_dict({"horizon_ms": 0})
    with pytest.raises(ConfigError, match=r"labels\.conversion_types"):
        LabelConfig.from_dict({"conversion_types": "purchase"})
    with pytest.raises(ConfigError, match="horizon"):
        LabelConfig.from_dict({"horizon": 5})


def test_is_conversion() -> None:
    cfg = LabelConfig()
    assert cfg.is_conversion(Event("e", 0, "c", "purchase"))
    assert cfg.is_conversion(Event("e", 0, "c", "outcome", props={"result": "converted"}))
    assert not cfg.is_conversion(Event("e", 0, "c", "outcome", props={"result": "rejected"}))
    assert not cfg.is_conversion(Event("e", 0, "c", "page_view"))


# --- positives and negatives ----------------------------------------------------------------


def test_conversion_labels_points_within_the_horizon() -> None:
    b = book(min_gap_ms=0)
    c = 50_000
    for ts in (c - H - 1, c - H, c - 1, c):
        assert b.observe("x", ts, ROW, 0.2)
    assert b.observe("y", c - 5, ROW, 0.2)  # other entity: untouched
    got = b.on_conversion("x", c)
    # [c - H, c): the boundary point is in, the point at c itself is not.
    assert summary(got) == [("x", c - H, True, H), ("x", c - 1, True, 1)]
    assert b.n_pending == 3
    assert b.pending("x") == 2
    assert len(b.on_conversion("x", c)) == 0  # nothing left in range: no double labelling


def test_points_expire_as_negatives_after_the_horizon() -> None:
    b = book()
    b.observe("x", 1_000, ROW, 0.4)
    b.observe("y", 2_000, ROW, 0.1)
    assert len(b.expire(1_000 + H)) == 0  # ts + H == watermark: not yet
    got = b.expire(1_000 + H + 1)
    assert summary(got) == [("x", 1_000, False, H)]
    assert got.label_ts_ms.tolist() == [1_000 + H]
    assert got.scores.tolist() == [0.4]
    assert summary(b.expire(10**9)) == [("y", 2_000, False, H)]
    assert b.n_pending == 0
    assert b.n_entities == 0
    assert b.stats()["negatives"] == 2


def test_a_conversion_after_the_horizon_does_not_make_a_positive() -> None:
    b = book()
    b.observe("x", 0, ROW, 0.5)
    assert len(b.on_conversion("x", H + 1)) == 0
    assert summary(b.expire(H + 1)) == [("x", 0, False, H)]


def test_feature_row_is_copied() -> None:
    b = book()
    row = np.array([1.0, 2.0])
    b.observe("x", 0, row, 0.5)
    row[0] = 99.0
    (m,) = b.on_conversion("x", 5)
    assert m.features.tolist() == [1.0, 2.0]


# --- decimation, bounds, lateness -----------------------------------------------------------


def test_decimation_keeps_one_point_per_entity_per_gap() -> None:
    b = book(min_gap_ms=1_000)
    assert b.observe("x", 0, ROW, 0.1)
    assert not b.observe("x", 999, ROW, 0.1)
    assert b.observe("y", 500, ROW, 0.1)
    assert b.observe("x", 1_000, ROW, 0.1)
    assert b.stats()["decimated"] == 1
    b.on_conversion("x", 1_500)
    assert b.observe("x", 1_600, ROW, 0.1)  # nothing pending any more


def test_bounds_per_entity_and_total() -> None:
    b = book(max_pending_per_entity=2, max_pending_total=3)
    assert b.observe("x", 0, ROW, 0.1)
    assert b.observe("x", 200, ROW, 0.1)
    assert not b.observe("x", 400, ROW, 0.1)  # per-entity bound
    assert b.observe("y", 0, ROW, 0.1)
    assert not b.observe("z", 0, ROW, 0.1)  # total bound
    assert b.n_pending == 3
    assert b.stats()["bounded"] == 2
    assert b.evict_entity("x") == 2
    assert b.evict_entity("x") == 0
    assert b.observe("z", 0, ROW, 0.1)
    assert b.stats()["evicted"] == 2


def test_feature_rows_are_allocated_for_the_bound_and_never_copied() -> None:
    """Pending points' feature rows take the bound's size at the first point; growing
    the book never copies them (a copy pauses the shard: docs/capacity.md)."""
    b = book(max_pending_per_entity=1, max_pending_total=5000, min_gap_ms=0)
    assert b.observe("e0", 0, ROW * 0, 0.5)
    rows = b._X
    assert rows.shape == (5000, 2)
    for i in range(1, 4000):
        assert b.observe(f"e{i}", i, ROW * i, 0.5)
    assert b._X is rows
    assert b.n_pending == 4000
    again = pickle.loads(pickle.dumps(b))
    assert again._X.shape == (5000, 2)
    got = again.expire(10**9)
    assert sorted(got.X[:, 0].tolist()) == [float(i) for i in range(4000)]


def test_a_pickle_holds_exactly_the_pending_points_in_slot_order() -> None:
    """Slots freed by conversions, expiry and eviction are left out of the snapshot."""
    b = book(max_pending_per_entity=30, min_gap_ms=0)
    for i in range(60):
        assert b.observe(f"e{i % 7}", 100 * i, ROW * i, i / 60)
    b.on_conversion("e3", 100 * 40)  # labels e3's points in the horizon before it
    b.evict_entity("e5")
    b.expire(100 * 25 + H)  # points decided before 2500 are past their horizon
    state = b.__getstate__()
    owners, ts, _, _, X = state["pending"]
    want = sorted(p[2] for pts in b._points.values() for p in pts)
    assert len(owners) == b.n_pending == len(want) > 0
    assert owners == [b._owner[s] for s in want]
    assert ts.tolist() == b._ts[want].tolist()
    assert X.tolist() == b._X[want].tolist()
    again = pickle.loads(pickle.dumps(b))
    assert again.n_pending == b.n_pending
    assert summary(again.expire(10**9)) == summary(b.expire(10**9))


def test_late_points_are_refused_and_watermark_never_moves_back() -> None:
    b = book()
    b.expire(5 * H)
    assert not b.observe("x", 5 * H - H - 1, ROW, 0.1)
    assert b.observe("x", 5 * H - H, ROW, 0.1)
    b.expire(0)
    assert b.watermark_ms == 5 * H
    assert b.stats()["late"] == 1


def test_row_length_must_not_change() -> None:
    b = book()
    b.observe("x", 0, ROW, 0.1)
    with pytest.raises(ValueError, match="expected rows of 2 values"):
        b.observe("y", 0, np.zeros(3), 0.1)
    assert b.n_pending == 1


# --- deadlines and pickling -----------------------------------------------------------------


def test_next_deadline_follows_the_oldest_live_point() -> None:
    b = book()
    assert b.next_deadline_ms() is None
    b.observe("x", 100, ROW, 0.1)
    b.observe("y", 300, ROW, 0.1)
    assert b.next_deadline_ms() == 100 + H + 1
    b.on_conversion("x", 200)
    assert b.next_deadline_ms() == 300 + H + 1
    b.evict_entity("y")
    assert b.next_deadline_ms() is None
    b.observe("z", 400, ROW, 0.1)
    deadline = b.next_deadline_ms()
    assert deadline is not None
    assert len(b.expire(deadline - 1)) == 0
    assert len(b.expire(deadline)) == 1


@pytest.mark.parametrize("hold", [False, True])
def test_pickle_mid_stream_continues_identically(hold: bool) -> None:
    rng = np.random.default_rng(0)
    ops = []
    for ts in range(0, 60_000, 37):
        entity = f"e{rng.integers(20)}"
        kind = "conv" if rng.random() < 0.05 else "obs"
        ops.append((kind, entity, ts, rng.normal(size=2), float(rng.random())))

    Op = tuple[str, str, int, np.ndarray, float]

    def run(b: LabelBook, part: list[Op]) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for kind, entity, ts, row, score in part:
            if kind == "conv":
                got = b.on_conversion(entity, ts)
            else:
                b.observe(entity, ts, row, score)
                got = b.expire(ts)
            out += [
                (*s, m.features.tolist(), m.score) for s, m in zip(summary(got), got, strict=True)
            ]
        return out

    whole = book(hold_first_horizon=hold)
    expected = run(whole, ops)
    half = book(hold_first_horizon=hold)
    first = run(half, ops[:250])  # with hold: mid first horizon, positives held
    assert half.n_held > 0 if hold else half.n_held == 0
    restored = pickle.loads(pickle.dumps(half))
    assert first + run(restored, ops[250:]) == expected
    assert restored.stats() == whole.stats()
    assert any(e[2] for e in expected)
    assert not all(e[2] for e in expected)


# --- the labelling rule against a slow twin -------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["obs", "conv"]),
            st.sampled_from(["a", "b", "c"]),
            st.integers(0, 3 * H),
        ),
        max_size=60,
    ),
    st.booleans(),
)
def test_every_point_is_labelled_once_by_the_horizon_rule(
    ops: list[tuple[str, str, int]], hold: bool
) -> None:
    """In event-time order: positive iff the entity converts in (ts, ts + H].

    With ``hold_first_horizon``, a positive of a point from the first horizon
    (decision time below the first point's + H) comes from ``expire`` once the
    watermark is past its decision time + H, in decision order with that
    call's negatives; every other positive comes from its conversion.
    """
    ops = sorted(ops, key=lambda op: op[2])
    cfg = LabelConfig(
        horizon_ms=H, min_gap_ms=0, max_pending_per_entity=1000, hold_first_horizon=hold
    )
    b = LabelBook(cfg)
    accepted: list[tuple[str, int]] = []
    matured: list[tuple[Matured, str, int]] = []  # (label, returned by, watermark then)
    for kind, entity, ts in ops:
        if kind == "conv":
            matured += [(m, "conv", ts) for m in b.on_conversion(entity, ts)]
        elif b.observe(entity, ts, ROW, 0.0):
            accepted.append((entity, ts))
        expired = b.expire(ts)
        assert [m.decision_ts_ms for m in expired] == sorted(m.decision_ts_ms for m in expired)
        matured += [(m, "expire", ts) for m in expired]
    matured += [(m, "expire", 10 * H) for m in b.expire(10 * H)]
    assert b.n_pending == 0
    assert b.n_held == 0
    assert sorted((m.entity_id, m.decision_ts_ms) for m, _, _ in matured) == sorted(accepted)
    conversions = [(e, ts) for kind, e, ts in ops if kind == "conv"]
    until = accepted[0][1] + H if accepted else 0
    for m, by, watermark in matured:
        later = [c for e, c in conversions if e == m.entity_id and m.decision_ts_ms < c]
        within = [c for c in later if c <= m.decision_ts_ms + H]
        assert m.label == bool(within)
        assert m.label_ts_ms == (min(within) if within else m.decision_ts_ms + H)
        if not m.label:
            assert by == "expire"
        elif hold and m.decision_ts_ms < until:
            assert by == "expire"
            assert watermark > m.decision_ts_ms + H
        else:
            assert by == "conv"


# --- learning from delayed labels -----------------------------------------------------------


def _journeys(seed: int, n: int) -> list[tuple[int, str, str, np.ndarray]]:
    """Decision events; entities with high A convert H/2 later (event time order)."""
    rng = np.random.default_rng(seed)
    events: list[tuple[int, str, str, np.ndarray]] = []
    for i in range(n):
        ts = i * 200
        a = rng.normal()
        row = np.array([a, rng.normal()])
        entity = f"c{i}"
        events.append((ts, "decide", entity, row))
        if a > 0.3:
            events.append((ts + H // 2, "convert", entity, row))
    events.sort(key=lambda e: (e[0], e[1]))
    return events


def _stream(model: IntentModel, book_: LabelBook | None, seed: int) -> None:
    names = ("A", "B")
    for ts, kind, entity, row in _journeys(seed, 1500):
        if book_ is None:
            model.score_batch(row.reshape(1, -1), names)
            continue
        parts = [book_.on_conversion(entity, ts)] if kind == "convert" else []
        matured = Labels.concat([*parts, book_.expire(ts)], n_features=2)
        if len(matured):
            model.learn_batch(matured.X, matured.y, names)
        if kind == "decide":
            score = model.score_batch(row.reshape(1, -1), names)[0]
            book_.observe(entity, ts, row, score)


def test_delayed_labels_teach_the_model() -> None:
    names = ("A", "B")
    rng = np.random.default_rng(42)
    probe = rng.normal(size=(400, 2))
    truth = probe[:, 0] > 0.3

    with_labels = IntentModel(ModelConfig(warmup_labels=20))
    labels = LabelBook(LabelConfig(horizon_ms=H, min_gap_ms=60_000))
    _stream(with_labels, labels, seed=1)
    assert with_labels.ready
    assert with_labels.n_learned > 1000
    assert with_labels.metrics()["auc"] > 0.9
    scores = with_labels.score_batch(probe, names)
    pos, neg = scores[truth], scores[~truth]
    assert (pos[:, None] > neg[None, :]).mean() > 0.95

    without = IntentModel(ModelConfig(warmup_labels=20))
    _stream(without, None, seed=1)
    assert without.n_learned == 0
    assert not without.ready
    assert np.all(without.score_batch(probe, names) == 0.0)


def test_labels_stack_in_order() -> None:
    b = book()
    b.observe("x", 0, np.array([1.0, 2.0]), 0.1)
    b.observe("y", 0, np.array([3.0, 4.0]), 0.1)
    matured = Labels.concat([b.on_conversion("y", 10), b.expire(H + 1)], n_features=2)
    assert matured.X.tolist() == [[3.0, 4.0], [1.0, 2.0]]
    assert matured.y.tolist() == [True, False]
    assert matured.entity_ids == ("y", "x")
    assert matured.delay_ms.tolist() == [10, H]
    assert summary(matured) == [("y", 0, True, 10), ("x", 0, False, H)]
    again = Labels.from_matured(list(matured), n_features=2)
    assert _rows(again) == _rows(matured)
    empty = Labels.concat([Labels.empty(0), b.expire(2 * H)], n_features=2)
    assert (empty.X.shape, empty.y.shape) == ((0, 2), (0,))
    assert Labels.from_matured([], n_features=2).X.shape == (0, 2)


def test_matured_pickles_as_the_frozen_dataclass_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshots hold pending matured labels: ones written by the frozen class still load."""
    import dataclasses

    from intentflow.online_models import labels as labels_mod

    @dataclasses.dataclass(frozen=True, slots=True)
    class Matured:  # the class as earlier versions defined it
        entity_id: str
        decision_ts_ms: int
        label_ts_ms: int
        features: np.ndarray
        score: float
        label: bool

    Matured.__module__ = labels_mod.__name__
    Matured.__qualname__ = "Matured"
    current = labels_mod.Matured
    monkeypatch.setattr(labels_mod, "Matured", Matured)
    old_bytes = pickle.dumps(Matured("c-1", 5, 9, np.array([1.0, 2.0]), 0.25, True))
    monkeypatch.setattr(labels_mod, "Matured", current)
    restored = pickle.loads(old_bytes)
    assert type(restored) is current
    assert (restored.entity_id, restored.delay_ms, restored.score, restored.label) == (
        "c-1",
        4,
        0.25,
        True,
    )
    assert restored.features.tolist() == [1.0, 2.0]
    again = pickle.loads(pickle.dumps(restored))
    assert again.entity_id == "c-1"
    assert again.features.tolist() == [1.0, 2.0]


# --- the first horizon: positives wait for the negatives of their time ----------------------


def test_a_fresh_book_holds_first_horizon_positives_until_their_horizon_passes() -> None:
    b = LabelBook(LabelConfig(horizon_ms=H, min_gap_ms=0))  # hold_first_horizon: the default
    assert b.observe("x", 1_000, ROW, 0.9)
    assert b.observe("y", 2_000, ROW, 0.1)
    assert len(b.on_conversion("x", 3_000)) == 0  # labelled, but held
    assert (b.n_pending, b.n_held, b.stats()["holding"], b.stats()["held"]) == (1, 1, 1, 1)
    assert b.next_deadline_ms() == 1_000 + H + 1
    assert len(b.expire(1_000 + H)) == 0
    got = b.expire(2_000 + H + 1)  # both horizons passed: in decision order
    assert summary(got) == [("x", 1_000, True, 2_000), ("y", 2_000, False, H)]
    assert b.n_held == 0
    # a point after the first horizon: its positive comes at the conversion
    assert b.observe("z", 1_000 + H, ROW, 0.5)
    assert summary(b.on_conversion("z", 2_000 + H)) == [("z", 1_000 + H, True, 1_000)]


def test_without_the_hold_a_fresh_book_returns_positives_long_before_any_negative() -> None:
    """Why the hold exists: the first labels a fresh shard learns are all positive."""

    def first_labels(hold: bool) -> list[bool]:
        b = book(min_gap_ms=0, hold_first_horizon=hold)
        out: list[Matured] = []
        for i in range(200):  # a point every 100 ms; one in ten converts 1 s later
            ts = i * 100
            b.observe(f"c{i}", ts, ROW, 0.5)
            if i >= 10 and (i - 10) % 10 == 0:
                out += b.on_conversion(f"c{i - 10}", ts)
            out += b.expire(ts)
        return [m.label for m in out]

    unheld = first_labels(hold=False)
    assert len(unheld) > 10
    assert all(unheld[:10])  # the first ten labels: positives only
    held = first_labels(hold=True)
    assert 0 < sum(held) < len(held)  # both classes from the first label on ...
    assert sum(held[:20]) <= 3  # ... at the stream's rate (one in ten)


def test_a_book_pickled_before_the_hold_existed_holds_nothing() -> None:
    b = ReferenceLabelBook(LabelConfig(horizon_ms=H, min_gap_ms=100, hold_first_horizon=True))
    assert b.observe("x", 0, ROW, 0.5)
    state = dict(b.__dict__)  # schema 3; schema 2 had no held positives
    for key in ("_hold_until", "_held"):
        del state[key]
    state["counts"] = {k: v for k, v in state["counts"].items() if k != "held"}
    old = LabelBook.__new__(LabelBook)
    old.__setstate__(state)
    assert summary(old.on_conversion("x", 10)) == [("x", 0, True, 10)]
    assert old.stats()["held"] == 0


def test_the_short_run_test_config_is_the_demo_config_without_the_hold() -> None:
    """tests/short-run.toml (tests that need alerts early) may differ in that key only."""
    import tomllib
    from importlib import resources

    from flowkit import SHORT_RUN_TOML

    demo = tomllib.loads(resources.files("intentflow").joinpath("defaults/demo.toml").read_text())
    with open(SHORT_RUN_TOML, "rb") as f:
        short = tomllib.load(f)
    assert short == {**demo, "labels": {**demo["labels"], "hold_first_horizon": False}}
    assert LabelConfig.from_dict(short["labels"]).hold_first_horizon is False


# --- the columnar book against the per-point reference ---------------------------------------


def _rows(labels: Any) -> list[tuple[Any, ...]]:
    return [
        (m.entity_id, m.decision_ts_ms, m.label_ts_ms, m.label, m.score, m.features.tolist())
        for m in labels
    ]


ENTITIES = "abcdefghij"
_point = st.tuples(st.sampled_from(ENTITIES), st.integers(0, 4 * H), st.integers(0, 99))
_op = st.one_of(
    st.tuples(
        st.just("observe"),
        st.one_of(  # calls that record more than 8 points write them in bulk
            st.lists(_point, max_size=6),
            st.lists(_point, min_size=20, max_size=40).map(
                lambda points: sorted(points, key=lambda p: p[1])  # in order: few are late
            ),
        ),
    ),
    st.tuples(st.just("convert"), st.sampled_from(ENTITIES), st.integers(0, 4 * H)),
    st.tuples(st.just("expire"), st.integers(0, 5 * H)),
    st.tuples(st.just("deadline"), st.sampled_from([-1, 0])),  # just before / at the deadline
    st.tuples(st.just("evict"), st.sampled_from(ENTITIES)),
    st.tuples(st.just("pickle")),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_op, max_size=40),
    st.booleans(),
    st.sampled_from([0, 1, 700, 3 * H]),
    st.integers(1, 4),
    st.sampled_from([1, 3, 12, 40]),
)
def test_the_book_equals_the_per_point_reference(
    ops: list[tuple[Any, ...]], hold: bool, gap: int, per_entity: int, total: int
) -> None:
    """Any interleaving of batches (out of order, late, decimated, bounded),
    conversions, expiry, eviction and pickling: the same labels in the same
    order, the same counts and the same pending points as the reference."""
    cfg = LabelConfig(
        horizon_ms=H,
        min_gap_ms=gap,
        max_pending_per_entity=per_entity,
        max_pending_total=total,
        hold_first_horizon=hold,
    )
    new, ref = LabelBook(cfg), ReferenceLabelBook(cfg)
    X = np.arange(200.0).reshape(100, 2)
    for op in ops:
        if op[0] == "observe":
            points = op[1]
            ids, ts, rows = [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]
            scores = [r / 100 for r in rows]
            taken = [
                ref.observe(e, t, X[r], s) for e, t, r, s in zip(ids, ts, rows, scores, strict=True)
            ]
            assert new.observe_many(ids, ts, X, rows, scores) == sum(taken)
        elif op[0] == "convert":
            assert _rows(new.on_conversion(op[1], op[2])) == _rows(ref.on_conversion(op[1], op[2]))
        elif op[0] == "expire":
            assert _rows(new.expire(op[1])) == _rows(ref.expire(op[1]))
        elif op[0] == "deadline":
            deadline = ref.next_deadline_ms()
            if deadline is not None:
                got, want = new.expire(deadline + op[1]), ref.expire(deadline + op[1])
                assert _rows(got) == _rows(want)
        elif op[0] == "evict":
            assert new.evict_entity(op[1]) == ref.evict_entity(op[1])
        else:
            new = pickle.loads(pickle.dumps(new))
        assert new.stats() == ref.stats()
        assert new.watermark_ms == ref.watermark_ms
        assert new.next_deadline_ms() == ref.next_deadline_ms()
        assert [new.pending(e) for e in ENTITIES] == [ref.pending(e) for e in ENTITIES]
        assert (new.n_held, new.n_entities) == (ref.n_held, ref.n_entities)
        assert len(new._ts) <= total  # the arrays never outgrow the bound
    assert new.delay_stats() == pytest.approx(ref.delay_stats(), nan_ok=True)
    assert _rows(new.expire(10 * H)) == _rows(ref.expire(10 * H))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["obs", "conv"]), st.sampled_from("abc"), st.integers(0, 3 * H)),
        max_size=40,
    ),
    st.integers(0, 40),
    st.booleans(),
)
def test_a_schema_3_book_resumes_as_it_would_have_continued(
    ops: list[tuple[str, str, int]], cut: int, hold: bool
) -> None:
    """A book pickled by the per-point version (schema 3, the reference's state)
    loads into this one, which then labels exactly as the old one would have."""
    cfg = LabelConfig(horizon_ms=H, min_gap_ms=500, hold_first_horizon=hold)
    old = ReferenceLabelBook(cfg)
    X = np.array([[1.0, 2.0], [3.0, 4.0]])

    def step(b: Any, op: tuple[str, str, int]) -> list[tuple[Any, ...]]:
        kind, entity, ts = op
        if kind == "conv":
            return _rows(b.on_conversion(entity, ts))
        b.observe(entity, ts, X[ts % 2], ts / H)
        return _rows(b.expire(ts))

    for op in ops[:cut]:
        step(old, op)
    migrated = LabelBook.__new__(LabelBook)
    migrated.__setstate__(pickle.loads(pickle.dumps(dict(old.__dict__))))
    assert migrated.stats() == old.stats()
    for op in ops[cut:]:
        assert step(migrated, op) == step(old, op)
        assert migrated.stats() == old.stats()
    assert _rows(migrated.expire(10 * H)) == _rows(old.expire(10 * H))

"""The feature spec: defaults, names, descriptions, hash, and errors that name the key."""

from __future__ import annotations

import copy
import tomllib
from importlib import resources
from typing import Any

import pytest

from intentflow.errors import ConfigError
from intentflow.features.spec import (
    DAY,
    HOUR,
    MINUTE,
    FeatureSpec,
    format_duration,
    parse_duration,
    resolution_ms,
    ring_slots,
)


def _dwell(**over: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "description": "seconds on pricing pages",
        "types": ["page_view"],
        "where": ['props.category == "pricing"'],
        "value": "props.duration_s",
        "aggregations": ["sum", "max"],
        "windows": ["1h", "7d"],
    }
    table.update(over)
    return {"pricing_dwell": table}


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        FeatureSpec.from_dict(data)
    return str(info.value)


def test_bad_window_names_the_key_path() -> None:
    msg = _error(_dwell(windows=["1h", "7x"]))
    assert msg == (
        "features.pricing_dwell.windows[1]: '7x' is not a duration (use 30s, 5m, 1h, 7d)"
    )


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (_dwell(windows=["1h", "60m"]), "features.pricing_dwell.windows[1]: '60m' repeats 1h"),
        (_dwell(windows=["30s"]), "features.pricing_dwell.windows[0]: '30s' is outside 1m..30d"),
        (_dwell(windows=["31d"]), "windows[0]: '31d' is outside"),
        (_dwell(aggregations=["sum", "median"]), "aggregations[1]: unknown aggregation 'median'"),
        (_dwell(colour="red"), "features.pricing_dwell.colour: unknown key"),
        (_dwell(types=["page_veiw"]), "types[0]: unknown event type 'page_veiw'"),
        (_dwell(types=["*", "page_view"]), "types[0]: unknown event type '*'"),
        (_dwell(types=[]), "features.pricing_dwell.types: expected a non-empty list"),
        (_dwell(where=["props.category = pricing"]), "where[0]: cannot read"),
        (_dwell(where=["props.category in pricing"]), "where[0]: 'pricing' is not a JSON value"),
        (_dwell(where=['props.category in "pricing"']), "where[0]: 'in' needs a non-empty"),
        (_dwell(where=["props.category == null"]), "where[0]: None is not a string"),
        (
            _dwell(where=['props.category == "a"', 'props.category == "b"']),
            "where[1]: props.category already has an == or in condition",
        ),
        (_dwell(where=['props.duration_s < "10"']), "where[0]: '<' needs a number, got '\"10\"'"),
        (_dwell(where=["props.duration_s >= true"]), "where[0]: '>=' needs a number"),
        (
            _dwell(where=["props.duration_s > 1", "props.duration_s  >  1.0"]),
            "where[1]: the same condition is listed twice",
        ),
        (_dwell(value="duration_s"), "value: 'duration_s' is not a prop reference"),
        (_dwell(key="team"), "features.pricing_dwell.key: 'team' is not one of entity, account"),
        (_dwell(half_lives=["1h"]), "half_lives: set, but no aggregation uses it"),
        (
            _dwell(aggregations=["decayed_sum"], half_lives=["1h"]),
            "features.pricing_dwell.windows: set, but no aggregation uses it",
        ),
        (_dwell(aggregations=["velocity"], windows=None), "pricing_dwell.velocity: missing"),
        (_dwell(aggregations=["distinct"]), "features.pricing_dwell.distinct: missing"),
        (
            _dwell(aggregations=["velocity"], windows=None, velocity=[["24h", "5m"]]),
            "velocity[0]: the short window must be shorter",
        ),
        (
            _dwell(aggregations=["velocity"], windows=None, velocity=["5m"]),
            "velocity[0]: expected a [short, long] pair",
        ),
        (
            _dwell(aggregations=["distinct"], distinct="props.url", max_distinct=0),
            "max_distinct: must be 1..256",
        ),
        (_dwell(max_distinct=4), "max_distinct: set, but no aggregation uses it"),
        ({**_dwell(), "allowed_lateness": "soon"}, "features.allowed_lateness: 'soon' is not"),
        ({**_dwell(), "late_policy": "ignore"}, "features.late_policy: 'ignore' is not one of"),
        ({**_dwell(), "buckets_per_window": 0}, "features.buckets_per_window: an integer 1..60"),
        ({**_dwell(), "recency_cap": "0s"}, "features.recency_cap: must be between"),
        ({**_dwell(), "entity_ttl": "7d"}, "features.entity_ttl: 7d is shorter than the longest"),
        ({**_dwell(), "colour": "red"}, "features.colour: unknown setting"),
        ({"Bad-Name": _dwell()["pricing_dwell"]}, "features.Bad-Name: feature names are"),
        ({"a__b": _dwell()["pricing_dwell"]}, "features.a__b: feature names are"),
        ({}, "features: defines no feature"),
    ],
)
def test_errors_point_at_the_offending_key(data: dict[str, Any], fragment: str) -> None:
    for table in data.values():
        if isinstance(table, dict):
            for k in [k for k, v in table.items() if v is None]:
                del table[k]
    assert fragment in _error(data)


@pytest.mark.parametrize("agg", ["sum", "mean", "min", "max", "last"])
def test_value_aggregations_need_a_value(agg: str) -> None:
    data = _dwell(aggregations=[agg])
    del data["pricing_dwell"]["value"]
    if agg == "last":
        del data["pricing_dwell"]["windows"]
    assert f"aggregations[0]: {agg!r} needs 'value" in _error(data)


def test_where_conditions_parse() -> None:
    spec = FeatureSpec.from_dict(
        _dwell(
            where=[
                'props.category in ["pricing", 1, true]',
                "props.duration_s >= 2.5",
                "props.duration_s < 600",
            ]
        )
    )
    where = spec.features[0].where
    assert [(c.prop, c.op, c.values) for c in where] == [
        ("category", "in", ("pricing", 1, True)),
        ("duration_s", ">=", (2.5,)),
        ("duration_s", "<", (600,)),
    ]
    assert [str(c) for c in where] == [
        'props.category in ["pricing", 1, true]',
        "props.duration_s >= 2.5",
        "props.duration_s < 600",
    ]


def test_where_prefix_option_names_the_path() -> None:
    with pytest.raises(ConfigError, match=r"^cfg\.features\.pricing_dwell\.windows\[1\]"):
        FeatureSpec.from_dict(_dwell(windows=["1h", "x"]), where="cfg.features")


def test_names_and_descriptions_follow_aggregation_then_window_order() -> None:
    spec = FeatureSpec.from_dict(_dwell())
    assert spec.names == (
        "pricing_dwell__sum__1h",
        "pricing_dwell__sum__7d",
        "pricing_dwell__max__1h",
        "pricing_dwell__max__7d",
    )
    assert spec.descriptions[0] == "total seconds on pricing pages in the last hour"
    assert spec.descriptions[3] == "largest seconds on pricing pages in the last 7 days"


def test_every_aggregation_has_a_name_and_description() -> None:
    data = {
        "recency_cap": "7d",
        "x": {
            "description": "purchase amount",
            "types": ["purchase"],
            "value": "props.amount",
            "aggregations": [
                "count", "sum", "mean", "min", "max", "last", "recency",
                "decayed_sum", "decayed_rate", "velocity", "distinct",
            ],
            "windows": ["24h"],
            "half_lives": ["90m"],
            "velocity": [["5m", "24h"]],
            "distinct": "props.sku",
        },
    }  # fmt: skip
    spec = FeatureSpec.from_dict(data)
    assert spec.names == (
        "x__count__24h",
        "x__sum__24h",
        "x__mean__24h",
        "x__min__24h",
        "x__max__24h",
        "x__last",
        "x__recency_s",
        "x__decayed_sum__90m",
        "x__decayed_rate__90m",
        "x__velocity__5m_24h",
        "x__distinct__24h",
    )
    assert spec.descriptions[0] == "number of purchase amount in the last 24 hours"
    assert spec.descriptions[5] == "latest purchase amount"
    assert spec.descriptions[6] == "seconds since the most recent of the purchase amount"
    assert spec.descriptions[8] == "purchase amount per hour, decayed with a 90m half-life"
    assert spec.descriptions[9] == (
        "rate of purchase amount in the last 5 minutes relative to the last 24 hours"
    )
    assert spec.descriptions[10] == (
        "distinct values of props.sku with purchase amount in the last 24 hours"
    )
    assert spec.recency_cap_ms == 7 * DAY


def test_settings_default_and_parse() -> None:
    spec = FeatureSpec.from_dict(_dwell())
    assert (spec.allowed_lateness_ms, spec.entity_ttl_ms) == (10 * MINUTE, 35 * DAY)
    assert (spec.late_policy, spec.buckets_per_window) == ("drop", 6)
    spec = FeatureSpec.from_dict(
        {**_dwell(), "allowed_lateness": "0s", "late_policy": "clamp", "entity_ttl": "8d"}
    )
    assert (spec.allowed_lateness_ms, spec.late_policy, spec.entity_ttl_ms) == (0, "clamp", 8 * DAY)


def test_hash_is_stable_ignores_descriptions_and_sees_every_semantic_change() -> None:
    base = FeatureSpec.from_dict(_dwell())
    assert FeatureSpec.from_dict(_dwell()).spec_hash == base.spec_hash
    assert FeatureSpec.from_dict(_dwell(description="dwell")).spec_hash == base.spec_hash
    # 60m and 1h are the same window
    assert FeatureSpec.from_dict(_dwell(windows=["60m", "7d"])).spec_hash == base.spec_hash
    changed = [
        _dwell(windows=["1h", "6d"]),
        _dwell(windows=["7d", "1h"]),
        _dwell(where=['props.category == "product"']),
        _dwell(where=['props.category in ["pricing", 1]']),
        _dwell(where=["props.category == 1"]),
        _dwell(where=["props.category == true"]),
        _dwell(where=['props.category == "pricing"', "props.duration_s > 5"]),
        _dwell(where=['props.category == "pricing"', "props.duration_s >= 5"]),
        _dwell(value="props.seconds"),
        _dwell(aggregations=["max", "sum"]),
        _dwell(types=["page_view", "click"]),
        {**_dwell(), "allowed_lateness": "5m"},
        {**_dwell(), "late_policy": "clamp"},
        {**_dwell(), "buckets_per_window": 12},
        {**_dwell(), "entity_ttl": "40d"},
        {**_dwell(), "recency_cap": "1d"},
    ]
    hashes = {FeatureSpec.from_dict(d).spec_hash for d in changed}
    assert base.spec_hash not in hashes
    assert len(hashes) == len(changed)


def test_from_dict_does_not_mutate_its_input() -> None:
    data = _dwell()
    before = copy.deepcopy(data)
    FeatureSpec.from_dict(data)
    assert data == before


def test_default_spec_loads_and_covers_the_sales_signals() -> None:
    spec = FeatureSpec.default()
    text = resources.files("intentflow").joinpath("defaults", "features.toml").read_text()
    assert FeatureSpec.from_dict(tomllib.loads(text)["features"]) == spec
    assert len(set(spec.names)) == len(spec.names)
    assert all(d.strip() for d in spec.descriptions)
    names = {d.name for d in spec.features}
    for signal in [
        "page_views", "pricing_dwell_s", "product_dwell_s", "demo_requests", "form_submits",
        "email_engagement", "chat_messages", "cart_adds", "purchases", "overdue_payments",
        "support_tickets", "negative_mentions", "account_contacts",
    ]:  # fmt: skip
        assert signal in names
    aggs = {a for d in spec.features for a in d.aggregations}
    assert {"recency", "velocity", "distinct", "decayed_sum", "sum", "count"} <= aggs
    assert any(d.key == "account" for d in spec.features)


@pytest.mark.parametrize(
    ("text", "ms"),
    [("30s", 30_000), ("5m", 5 * MINUTE), ("1h", HOUR), ("7d", 7 * DAY), (" 2h ", 2 * HOUR)],
)
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration(text, "x") == ms


@pytest.mark.parametrize("bad", ["", "5", "1w", "-1h", "1.5h", "h", 5, None, "1h30m"])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^k\.w: .* is not a duration"):
        parse_duration(bad, "k.w")


def test_format_duration_round_trips() -> None:
    for ms in (10_000, 90_000, MINUTE, 90 * MINUTE, HOUR, DAY, 2 * DAY, 30 * DAY):
        assert parse_duration(format_duration(ms), "x") == ms
    assert format_duration(DAY) == "24h"


def test_resolution_and_ring_slots() -> None:
    # largest tier size s with window >= buckets * s
    assert resolution_ms(HOUR, 6) == 5 * MINUTE
    assert resolution_ms(HOUR, 12) == 5 * MINUTE
    assert resolution_ms(HOUR, 13) == MINUTE
    assert resolution_ms(HOUR, 1) == HOUR
    assert resolution_ms(30 * DAY, 1) == 3 * DAY  # the coarsest tier
    assert resolution_ms(30 * DAY, 10) == 3 * DAY
    assert resolution_ms(30 * DAY, 11) == DAY
    assert resolution_ms(MINUTE, 60) == 10_000  # the finest tier when none qualifies
    # slots: buckets an interval of W ms can touch
    assert ring_slots(HOUR, 5 * MINUTE) == 13
    assert ring_slots(DAY, DAY) == 2
    assert ring_slots(90 * MINUTE, HOUR) == 3

"""Rules files: validation with clear errors, CEL compilation, keywords, native guards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cel
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intentflow.features.spec import FeatureSpec
from intentflow.online_models.catalog import ActionCatalog
from intentflow.rules import (
    KeywordMatcher,
    RulesError,
    compile_rules,
    load_rules_file,
    normalize,
    parse_rules_text,
    rules_diff,
)
from intentflow.rules.compile import TypeIndex, compile_guards, index_key, references

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "rules.toml"
SPEC = FeatureSpec.default()
CATALOG = ActionCatalog.default()

ALERT = '[rules.alert]\naction = "call_now"\n'


def compile_text(text: str) -> Any:
    return compile_rules(parse_rules_text(text, source="t"), SPEC, CATALOG, source="t")


def rule(body: str, outcome: str = ALERT) -> str:
    return f'[[rules]]\nid = "r1"\n{body}\n{outcome}'


def test_the_example_file_is_valid_and_names_five_rules() -> None:
    rs = load_rules_file(EXAMPLES, SPEC, CATALOG)
    assert [r.id for r in rs.rules] == [
        "product_page_dwell",
        "objection_keywords",
        "stalled_account",
        "falling_purchases_overdue",
        "no_follow_up",
    ]
    assert rs.version.startswith("1-")
    assert len(rs.content_hash) == 64
    assert [r.id for r in rs.for_type("page_view")] == ["product_page_dwell", "stalled_account"]
    assert [r.id for r in rs.for_type("mention")] == ["objection_keywords"]
    assert [r.id for r in rs.absence] == ["no_follow_up"]
    assert {t: [r.id for r in rules] for t, rules in rs.resets.items()}["form_submit"] == [
        "stalled_account"
    ]


def test_comments_and_layout_do_not_change_the_content_hash() -> None:
    text = EXAMPLES.read_text(encoding="utf-8")
    a = parse_rules_text(text)
    b = parse_rules_text("# another comment\n\n" + text.replace("\n\n", "\n\n\n"))
    assert a.content_hash == b.content_hash
    c = parse_rules_text(text.replace('cooldown = "2h"', 'cooldown = "3h"'))
    assert c.content_hash != a.content_hash
    assert rules_diff(a, c) == {
        "added": [],
        "removed": [],
        "changed": ["objection_keywords"],
        "lookups_changed": False,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[rules]]\nid = 1\n", "rules[0].id: 1 is not a rule id"),
        (rule('types = ["page_view"]\ncooldown = "1x"'), "rules[0] (id 'r1').cooldown: '1x'"),
        (rule('types = ["page_view"]\ncolor = "red"'), "rules[0] (id 'r1').color: unknown key"),
        (rule(""), "rules[0] (id 'r1').types: missing"),
        (rule('types = ["outcome"]'), "outcome events are feedback"),
        (rule('types = ["*", "click"]'), '"*" (every type) must stand alone'),
        (rule('types = ["click"]', ""), "exactly one outcome"),
        (
            rule('types = ["click"]', ALERT + "[rules.adjust]\nboost = 2.0\n"),
            "exactly one outcome",
        ),
        (rule('types = ["click"]', '[rules.alert]\ntarget = "owner"\n'), "alert.action: missing"),
        (
            rule('types = ["click"]', '[rules.alert]\naction = "call_now"\ntarget = "boss"\n'),
            "alert.target: 'boss' is not a target",
        ),
        (rule('types = ["click"]', "[rules.adjust]\nboost = 0.0\n"), "adjust.boost: must be in"),
        (
            rule('types = ["page_view"]\n[rules.count]\nat_least = 1\nwithin = "1d"'),
            "count.at_least: an integer 2..",
        ),
        (
            rule(
                'types = ["page_view"]\n[rules.count]\nat_least = 3\nwithin = "1d"\n'
                'reset_types = ["page_view"]'
            ),
            "an event type either counts or resets",
        ),
        (
            rule('[rules.absence]\nafter = "1h"\nwatch = ["rule:nope"]'),
            "no rule has the id 'nope'",
        ),
        (rule('[rules.absence]\nafter = "1h"\nwatch = ["rule:r1"]'), "its own alerts"),
        (
            rule('types = ["click"]') + "\n" + rule('types = ["click"]'),
            "'r1' is already the id of rules[0]",
        ),
        ("format = 2\n", "format: 2 is not a known format"),
        ("[[rules]\n", "not valid TOML"),
        ("colour = 1\n", "unknown key 'colour'"),
    ],
)
def test_invalid_documents_are_rejected_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(RulesError) as err:
        compile_text(text)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("props.duration_s >", "when: Failed to parse"),
        ("features.pricing_dwel_s__sum__1h > 3.0", "did you mean pricing_dwell_s__sum__1h"),
        ("prop.x == 1", "unknown variable 'prop'"),
        ("event.colour == 'red'", "event.colour is not an event field"),
        ("lookups.nope['x'] == 1", "lookups.nope is not defined"),
        ("props.text.matches('(unclosed')", "bad regular expression"),
    ],
)
def test_bad_conditions_are_rejected_at_load_time(when: str, message: str) -> None:
    text = rule(f'types = ["page_view"]\nwhen = "{when}"'.replace("'", '\\"'))
    with pytest.raises(RulesError) as err:
        compile_text(text)
    assert message in str(err.value)
    assert "rules[0] (id 'r1').when" in str(err.value)


def test_unknown_actions_are_rejected_with_the_known_ones() -> None:
    with pytest.raises(RulesError, match=r"'fax' is not in the action catalog \(known: call_now"):
        compile_text(rule('types = ["click"]', '[rules.alert]\naction = "fax"\n'))


def test_comprehension_variables_are_not_unknown() -> None:
    rs = compile_text(rule('types = ["click"]\nwhen = "[1, 2].exists(x, x > 1)"'))
    assert rs.rules[0].when is not None


def test_disabled_rules_are_checked_but_not_run() -> None:
    with pytest.raises(RulesError):
        compile_text(rule('types = ["click"]\nenabled = false\nwhen = "nope > 1"'))
    rs = compile_text(rule('types = ["click"]\nenabled = false\nwhen = "score > 0.5"'))
    assert rs.empty
    assert rs.for_type("click") == ()


def test_references_name_the_fields_each_expression_reads() -> None:
    refs = references('props.a == "props.b" && has(props.c) // props.d\n&& features.x > 1.0')
    assert refs.fields("props") == frozenset({"a", "c"})
    assert refs.fields("features") == frozenset({"x"})
    assert references("size(props) > 2").fields("props") is None
    assert references('props["a"] == 1').fields("props") is None
    assert references("props.exists(k, k == 'a')").fields("props") is None
    assert references("x.props.y > 1").fields("props") == frozenset()


# --- keywords -----------------------------------------------------------------------------


def test_normalisation_folds_case_width_and_space() -> None:
    assert normalize("ＡＬＴＥＲＮＡＴＩＶＥ") == "alternative"
    assert normalize("Too\u3000  Expensive？") == "too expensive?"
    assert normalize("太贵了！") == "太贵了!"


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("有没有替代方案", {"替代"}),
        ("这个价格太贵了", {"太贵"}),
        ("发现一个安全漏洞", {"漏洞"}),
        ("We are looking at an ALTERNATIVE", {"alternative"}),
        ("ｔｏｏ　ｅｘｐｅｎｓｉｖｅ for us", {"too expensive"}),
        ("too\n  expensive", {"too expensive"}),
        ("a Vulnerability and an alternative, 太贵", {"vulnerability", "alternative", "太贵"}),
        ("the price is fine", set()),
        ("太 贵", set()),
    ],
)
def test_keywords_match_chinese_and_english(text: str, found: set[str]) -> None:
    m = KeywordMatcher(["替代", "漏洞", "太贵", "alternative", "vulnerability", "too expensive"])
    anywhere, _ = m.find(text)
    assert {m.keywords[i] for i in anywhere} == found


def test_whole_words_respect_latin_boundaries_only() -> None:
    m = KeywordMatcher(["cost", "太贵", "sso"])
    anywhere, whole = m.find("costly sso, 太贵了")
    assert {m.keywords[i] for i in anywhere} == {"cost", "sso", "太贵"}
    assert {m.keywords[i] for i in whole} == {"sso", "太贵"}


def test_many_keywords_are_found_in_one_pass() -> None:
    words = [f"kw{i:04d}x" for i in range(2000)]
    m = KeywordMatcher(words)
    text = " ".join(words[::97])
    assert {m.keywords[i] for i in m.find(text)[0]} == set(words[::97])


# --- native guards --------------------------------------------------------------------------

CONJUNCTS = [
    'props.a == "x"',
    '"y" == props.a',
    'props.a in ["x", "z"]',
    "has(props.a)",
    "has(props.b)",
    "props.b > 3",
    "props.b <= 2.5",
    "props.b >= -1",
    "features.f >= 1.5",
    "features.f == 2.0",
    "features.f < 0.0",
    "score < 0.5",
    "score >= 0.25",
    'props.a.startsWith("x")',
    "props.b * 2 > 3",
]
PROP_VALUES = st.one_of(
    st.integers(-5, 5),
    st.floats(-5, 5, allow_nan=False),
    st.sampled_from(["x", "y", "z", ""]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 2), max_size=2),
)


def cel_fires(expr: str, props: dict[str, Any], f: float, score: float) -> bool:
    ctx = cel.Context({"props": props, "features": {"f": f}, "score": score})
    try:
        return cel.compile(expr).execute(ctx) is True
    except Exception:
        return False


@settings(max_examples=400, deadline=None)
@given(
    terms=st.lists(st.sampled_from(CONJUNCTS), min_size=1, max_size=3),
    props=st.dictionaries(st.sampled_from(["a", "b"]), PROP_VALUES),
    f=st.floats(-3, 3, allow_nan=False),
    score=st.floats(0, 1),
)
def test_guards_and_cel_agree_on_when_a_condition_fires(
    terms: list[str], props: dict[str, Any], f: float, score: float
) -> None:
    expr = " && ".join(f"({t})" if i % 2 else t for i, t in enumerate(terms))
    guards, complete = compile_guards(expr, {"f": 0})
    row = np.array([f])
    native = all(g.test(props, row, score) for g in guards)
    expected = cel_fires(expr, props, f, score)
    if complete:
        assert native == expected
    else:
        assert native or not expected  # a guard only ever rules out what CEL rejects
        assert len(guards) < len(terms)


def test_disjunctions_and_ternaries_have_no_guards() -> None:
    assert compile_guards('props.a == "x" || score > 0.5', {}) == ((), False)
    assert compile_guards('props.a == "x" ? true : false', {}) == ((), False)
    assert index_key('props.a == "a||b" && score > 0.5') == ("a", frozenset({"a||b"}))


@settings(max_examples=200, deadline=None)
@given(
    props=st.dictionaries(st.sampled_from(["category", "d"]), PROP_VALUES),
    f=st.floats(-3, 3, allow_nan=False),
    score=st.floats(0, 1),
)
def test_the_type_index_offers_exactly_the_rules_whose_index_guard_holds(
    props: dict[str, Any], f: float, score: float
) -> None:
    conditions = [
        'props.category == "x"',
        'props.category in ["x", "y"]',
        "props.d > 1",
        "props.d <= 0",
        "features.activity__count__24h >= 1.0",
        "features.activity__count__24h > 1.0",
        "features.activity__count__24h < 0.5",
        "score >= 0.5",
        "score < 0.3",
        "has(props.d)",
        "true",
    ]
    text = "\n".join(
        f'[[rules]]\nid = "r{i}"\ntypes = ["click"]\nwhen = \'{c}\'\n{ALERT}'
        for i, c in enumerate(conditions)
    )
    rs = compile_text(text)
    index = rs.index["click"]
    assert isinstance(index, TypeIndex)
    row = np.zeros(len(SPEC.names))
    row[SPEC.names.index("activity__count__24h")] = f
    offered = [r.id for r in index.candidates(props, row, score)]
    expected = [
        r.id for r in rs.rules if r.index_guard is None or r.index_guard.test(props, row, score)
    ]
    assert offered == expected

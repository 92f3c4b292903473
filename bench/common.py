"""Shared pieces of the benchmark scenarios.

Run-unique Redis key names (:class:`Keys`), the engine as a child process
(:class:`Engine`), percentile figures, the ``machine`` block of every JSON
document, and the :class:`Context`/:class:`Result` pair through which a
scenario talks to the harness in :mod:`bench.__main__`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import IO, Any, Final, Protocol

import orjson
import redis
from rich.console import Console

from intentflow.display import percentile
from intentflow.errors import IntentflowError

__all__ = [
    "DEMO_CONFIG",
    "PACKAGES",
    "BenchError",
    "Context",
    "Engine",
    "Keys",
    "Result",
    "Scenario",
    "latency_figures",
    "machine_info",
    "process_cpu_seconds",
    "redis_cpu_seconds",
    "sentinel_payload",
    "wait_until",
    "write_json",
]

#: The packaged demo settings (one-minute label horizon): labels and model of every scenario.
DEMO_CONFIG: Final[str] = str(resources.files("intentflow").joinpath("defaults/demo.toml"))
#: Packages whose versions go into the ``machine`` block.
PACKAGES: Final[tuple[str, ...]] = (
    "intentflow",
    "bytewax",
    "river",
    "numba",
    "numpy",
    "redis",
    "hiredis",
    "orjson",
)


class BenchError(IntentflowError):
    """A benchmark could not run (the engine failed, a wait timed out)."""


@dataclass
class Context:
    """What the harness hands to a scenario."""

    url: str  # Redis URL (REDIS_URL or the embedded server's unix socket)
    embedded: bool  # whether ``url`` is a server started for this run
    quick: bool  # reduced sizes for smoke tests
    workdir: Path  # a private temporary directory, removed after the run
    console: Console


@dataclass
class Result:
    """What a scenario hands back: JSON figures, table rows and warnings."""

    figures: dict[str, Any]
    rows: list[tuple[str, str]]
    warnings: list[str] = field(default_factory=list)


class Scenario(Protocol):
    """What a scenario module ``bench.<name>`` defines."""

    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the scenario's own options."""

    def run(self, args: argparse.Namespace, ctx: Context) -> Result:
        """Run the benchmark; raise :class:`BenchError` when it cannot."""


# --- Redis keys ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """Run-unique key names, so that a shared Redis never mixes runs.

    >>> keys = Keys("bench:x:")
    >>> keys.events_prefix, keys.score_key("c-1")
    ('bench:x:events:', 'bench:x:score:c-1')
    """

    namespace: str

    @classmethod
    def unique(cls, scenario: str) -> Keys:
        """A namespace from the scenario name, the process id and the time."""
        return cls(f"bench:{scenario}:{os.getpid()}-{time.time_ns() // 1_000_000}:")

    @property
    def events_prefix(self) -> str:
        return f"{self.namespace}events:"

    @property
    def staging_prefix(self) -> str:
        return f"{self.namespace}staging:"

    @property
    def alerts(self) -> str:
        return f"{self.namespace}alerts"

    @property
    def dlq(self) -> str:
        return f"{self.namespace}dlq"

    @property
    def score_prefix(self) -> str:
        return f"{self.namespace}score:"

    @property
    def seen_prefix(self) -> str:
        return f"{self.namespace}seen:"

    def score_key(self, entity_id: str) -> str:
        return f"{self.score_prefix}{entity_id}"

    def engine_env(self) -> dict[str, str]:
        """Environment overrides pointing the engine's outputs into the namespace."""
        return {
            "INTENTFLOW__OUTPUT__DLQ_STREAM": self.dlq,
            "INTENTFLOW__OUTPUT__SCORE_KEY_PREFIX": self.score_prefix,
            "INTENTFLOW__OUTPUT__SEEN_KEY_PREFIX": self.seen_prefix,
        }

    def cleanup(self, client: redis.Redis) -> int:
        """Delete every key of the namespace; returns how many."""
        deleted = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{self.namespace}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(client.unlink(*batch))
        return deleted


def sentinel_payload(tag: str, ts_ms: int) -> bytes:
    """A valid event of an entity of its own: its score key marks "processed up to here"."""
    return orjson.dumps(
        {
            "event_id": f"bench-{tag}",
            "ts": ts_ms,
            "entity_id": f"bench-{tag}",
            "type": "page_view",
            "props": {"page": "/bench", "category": "home", "duration_s": 1},
        }
    )


# --- the engine process ---------------------------------------------------------------------


def wait_until(
    cond: Callable[[], bool],
    *,
    timeout_s: float,
    what: str,
    poll_s: float = 0.005,
    alive: Callable[[], None] | None = None,
) -> float:
    """Poll ``cond`` until it holds; returns the monotonic time it was seen to hold.

    ``alive`` is called on every poll and should raise when waiting is pointless.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if cond():
            return time.monotonic()
        if alive is not None:
            try:
                alive()
            except BenchError:
                if cond():  # it held just before the end: not a failure
                    return time.monotonic()
                raise
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


class Engine:
    """``python -m intentflow.cli run --source redis`` as a child process.

    Its input streams, alert stream, dead letters and score keys live in
    ``keys``' namespace; output goes to ``log_path``. Use as a context manager:
    on exit a still-running engine is stopped with SIGINT (then SIGKILL).
    ``source = "generator"`` runs the configuration's synthetic generator
    instead of reading Redis streams (outputs still go to Redis).
    """

    def __init__(
        self,
        url: str,
        keys: Keys,
        log_path: Path,
        *,
        count: int = 0,
        config: str = DEMO_CONFIG,
        extra_args: Sequence[str] = (),
        source: str = "redis",
    ) -> None:
        self.url = url
        self.source = source
        self.keys = keys
        self.log_path = log_path
        self.count = count
        self.config = config
        self.extra_args = tuple(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        """The engine's command line (one input partition)."""
        cmd = [
            sys.executable,
            "-m",
            "intentflow.cli",
            "run",
            "--redis-url",
            self.url,
            "--source",
            self.source,
            "--partitions",
            "1",
            "--events-prefix",
            self.keys.events_prefix,
            "--alerts-stream",
            self.keys.alerts,
            "--config",
            self.config,
        ]
        if self.count > 0:
            cmd += ["--count", str(self.count)]
        return cmd + list(self.extra_args)

    def start(self) -> Engine:
        """Start the process; returns ``self``."""
        self._log = self.log_path.open("ab")
        env = {**os.environ, **self.keys.engine_env()}
        self._proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, env=env
        )
        return self

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise BenchError("the engine has not been started")
        return self._proc

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def check_alive(self) -> None:
        """Raise :class:`BenchError` with the log's tail if the engine has exited."""
        code = self.proc.poll()
        if code is not None:
            raise BenchError(f"the engine exited with code {code}:\n{self.log_tail()}")

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the engine process has used (Linux), else ``None``."""
        return process_cpu_seconds(self.proc.pid)

    def wait_exit(self, timeout_s: float) -> int:
        """Wait for the engine to exit by itself; returns its exit code."""
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as err:
            raise BenchError(
                f"the engine did not exit within {timeout_s:.0f} s after its input ended"
            ) from err

    def stop(self) -> None:
        """Stop the engine (SIGINT, then SIGKILL after 15 s) and close the log."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` from ``/proc`` (Linux), else ``None``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) start at field 3.
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def redis_cpu_seconds(client: redis.Redis) -> float | None:
    """User + system CPU seconds of the Redis server (``INFO cpu``), else ``None``."""
    try:
        info: Any = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    except (redis.RedisError, KeyError, TypeError, ValueError):
        return None


# --- figures --------------------------------------------------------------------------------


def latency_figures(values: Sequence[float], prefix: str = "") -> dict[str, float]:
    """p50, p99, p99.9 and max (nearest rank) of ``values`` in ms; NaN when empty.

    >>> latency_figures([float(v) for v in range(1, 1001)])
    {'p50_ms': 500.0, 'p99_ms': 990.0, 'p999_ms': 999.0, 'max_ms': 1000.0}
    """
    return {
        f"{prefix}p50_ms": percentile(values, 50),
        f"{prefix}p99_ms": percentile(values, 99),
        f"{prefix}p999_ms": percentile(values, 99.9),
        f"{prefix}max_ms": max(values, default=math.nan),
    }


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike[str], doc: dict[str, Any]) -> None:
    """Write ``doc`` as indented JSON; NaN (no samples) becomes ``null``."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    data = orjson.dumps(clean(doc), option=orjson.OPT_INDENT_2, default=_json_default)
    Path(path).write_bytes(data + b"\n")


# --- the machine ----------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in {"model name", "Processor", "cpu model"} and value.strip():
                return value.strip()
    return platform.processor() or "unknown"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(client: redis.Redis | None = None) -> dict[str, Any]:
    """CPU, cores, load, Python, package versions and the redis-server version."""
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "redis_server": None,
    }
    if client is not None:
        with contextlib.suppress(redis.RedisError):
            server: Any = client.info("server")
            info["redis_server"] = str(server.get("redis_version"))
    return info

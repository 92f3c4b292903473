"""Running the dataflow on several processes: partition affinity and local clusters.

Bytewax sends every item of a stateful step to the worker that owns its key,
``siphash13(key) % workers`` (:func:`bytewax_route`). An item read by one
process for a key owned by another crosses the network alone, which costs
tens of microseconds per event. intentflow avoids that with *partition
affinity* (``engine.affinity``):

* there is one input partition per shard (``engine.shards ==
  input.partitions``) and producers route an account to partition
  ``crc32(account_id or entity_id) % partitions``
  (:func:`intentflow.dataflows.sources.partition_for`), the very function that
  picks its shard, so partition ``i`` holds exactly the events of shard ``i``;
* shard ``i``'s Bytewax key (:func:`affinity_keys`) is chosen so that
  Bytewax routes it to worker ``i % workers`` for every worker count that
  divides 840 (1-8, 10, 12, 14, 15, 20, 24, ...);
* each process lists only the input partitions whose shard it owns
  (:class:`AffinitySource`), so the worker that reads partition ``i`` is the
  worker that owns shard ``i`` and no event crosses a process boundary.

The keys depend on the shard count alone, so a recovery directory written by
one process resumes on N processes and back. :func:`run_local_cluster` runs
``intentflow run --processes N``: N child processes on loopback ports,
supervised together. See ``docs/scaling.md``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import pickle
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import numpy as np
from bytewax.inputs import FixedPartitionedSource, Source, StatefulSourcePartition
from bytewax.recovery import RecoveryConfig

from intentflow.config import Config
from intentflow.errors import ConfigError, IntentflowError, RecoveryError

__all__ = [
    "AFFINITY_MODULUS",
    "ENGINE_STEP",
    "AffinitySource",
    "Placement",
    "affine_source",
    "affinity_keys",
    "bytewax_route",
    "check_shard_keys",
    "free_ports",
    "parse_addresses",
    "plain_keys",
    "prepare_placement_recovery",
    "run_local_cluster",
    "shard_index",
]

log = logging.getLogger("intentflow.cluster")  # also when run as __main__ (a child)

#: Affinity keys route shard ``i`` to worker ``i % W`` for every ``W`` dividing this (lcm 1..8).
AFFINITY_MODULUS: Final = 840
#: The Bytewax step id of the engine (``flow_id`` + ``.engine``), whose state keys are shards.
ENGINE_STEP: Final = "intentflow.engine"

_M64: Final = (1 << 64) - 1
_X = TypeVar("_X")
_S = TypeVar("_S")


# --- Bytewax's key routing -----------------------------------------------------------------


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def _siphash13(data: bytes) -> int:
    """SipHash-1-3 with a zero key: Rust's ``DefaultHasher::new()``."""
    v0, v1, v2, v3 = 0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573

    def rnd(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
        v0 = (v0 + v1) & _M64
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _M64
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _M64
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _M64
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)
        return v0, v1, v2, v3

    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = rnd(v0, v1, v2, v3)
        v0 ^= m
    last = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= last
    v0, v1, v2, v3 = rnd(v0, v1, v2, v3)
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = rnd(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def bytewax_route(key: str, workers: int) -> int:
    """The worker Bytewax 0.21 sends items of state key ``key`` to, out of ``workers``.

    Bytewax hashes the key (a Rust ``String``: its bytes and a 0xFF
    terminator) with ``DefaultHasher`` and takes it modulo the worker count.
    The tests check this against a running Bytewax.

    >>> [bytewax_route("s0", 2), bytewax_route("s0", 1)]
    [1, 0]
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return _siphash13(key.encode() + b"\xff") % workers


def shard_index(routing_key: str, shards: int) -> int:
    """The shard (and, with affinity, the input partition) of an account or entity.

    The same function as :func:`intentflow.dataflows.logic.shard_key` and
    :func:`intentflow.dataflows.sources.partition_for`.

    >>> shard_index("a-00042", 4)
    3
    """
    return zlib.crc32(routing_key.encode()) % shards


def _siphash13_many(raw: np.ndarray) -> np.ndarray:
    """:func:`_siphash13` of each row of a uint8 matrix at once (NumPy, wrapping uint64)."""
    rows, n = raw.shape
    end = n - n % 8
    tail = np.zeros((rows, 8), dtype=np.uint8)
    tail[:, : n - end] = raw[:, end:]
    tail[:, 7] = n & 0xFF
    words = [*np.ascontiguousarray(raw[:, :end]).view("<u8").T, tail.view("<u8")[:, 0]]
    u = np.uint64
    v0 = np.full(rows, 0x736F6D6570736575, dtype=u)
    v1 = np.full(rows, 0x646F72616E646F6D, dtype=u)
    v2 = np.full(rows, 0x6C7967656E657261, dtype=u)
    v3 = np.full(rows, 0x7465646279746573, dtype=u)

    def rotl(x: np.ndarray, b: int) -> np.ndarray:
        return (x << u(b)) | (x >> u(64 - b))

    def rnd() -> None:
        nonlocal v0, v1, v2, v3
        v0 = v0 + v1
        v1 = rotl(v1, 13) ^ v0
        v0 = rotl(v0, 32)
        v2 = v2 + v3
        v3 = rotl(v3, 16) ^ v2
        v0 = v0 + v3
        v3 = rotl(v3, 21) ^ v0
        v2 = v2 + v1
        v1 = rotl(v1, 17) ^ v2
        v2 = rotl(v2, 32)

    for m in words:
        m = m.astype(u)
        v3 = v3 ^ m
        rnd()
        v0 = v0 ^ m
    v2 = v2 ^ u(0xFF)
    for _ in range(3):
        rnd()
    return v0 ^ v1 ^ v2 ^ v3


@functools.lru_cache(maxsize=8)
def affinity_keys(shards: int) -> tuple[str, ...]:
    """The Bytewax state key of each shard under partition affinity.

    Key ``i`` is ``s{i}`` when Bytewax already routes it to worker ``i % W``
    for every ``W`` dividing :data:`AFFINITY_MODULUS`, else ``s{i}~{n}`` with
    the smallest ``n`` that does. The keys depend on ``shards`` alone.

    >>> keys = affinity_keys(4)
    >>> [bytewax_route(k, 2) for k in keys], [bytewax_route(k, 3) for k in keys]
    ([0, 1, 0, 1], [0, 1, 2, 0])
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    keys = []
    for i in range(shards):
        want = i % AFFINITY_MODULUS
        if bytewax_route(f"s{i}", AFFINITY_MODULUS) == want:
            keys.append(f"s{i}")
            continue
        prefix = np.frombuffer(f"s{i}~".encode(), dtype=np.uint8)
        lo, width = 0, 1
        while True:  # the candidates n in [lo, 10**width) all have `width` digits
            hi = 10**width
            n = np.arange(lo, hi, dtype=np.int64)
            raw = np.empty((n.size, prefix.size + width + 1), dtype=np.uint8)
            raw[:, : prefix.size] = prefix
            raw[:, prefix.size : -1] = n[:, None] // 10 ** np.arange(width - 1, -1, -1) % 10 + 48
            raw[:, -1] = 0xFF  # Rust's str hashing terminator
            hits = np.flatnonzero(_siphash13_many(raw) % np.uint64(AFFINITY_MODULUS) == want)
            if hits.size:
                keys.append(f"s{i}~{lo + int(hits[0])}")
                break
            lo, width = hi, width + 1
    return tuple(keys)


# --- placement -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where this process sits in a cluster of ``processes`` processes.

    ``addresses`` are the ``host:port`` of every process (empty for a single
    process). ``shared_recovery``: every process sees the whole recovery
    directory (a local cluster); otherwise each process keeps its own
    recovery partition ``part-{process_id}`` (one volume per pod).
    ``recovery_lock``: a file the processes of a local cluster lock while one
    of them creates or checks the shared directory.
    """

    processes: int = 1
    process_id: int = 0
    workers_per_process: int = 1
    addresses: tuple[str, ...] = ()
    shared_recovery: bool = True
    recovery_lock: str = ""

    def __post_init__(self) -> None:
        if self.processes < 1 or self.workers_per_process < 1:
            raise ConfigError("processes and workers per process must be >= 1")
        if not 0 <= self.process_id < self.processes:
            raise ConfigError(
                f"--process-id {self.process_id} is not in 0..{self.processes - 1} "
                f"(one per address in --addresses)"
            )
        if self.processes > 1 and len(self.addresses) != self.processes:
            raise ConfigError(
                f"{self.processes} processes need {self.processes} addresses, got "
                f"{len(self.addresses)}"
            )

    @property
    def workers(self) -> int:
        """Workers in the whole cluster."""
        return self.processes * self.workers_per_process

    @property
    def clustered(self) -> bool:
        """Whether this process is one of several."""
        return self.processes > 1

    def owner(self, key: str) -> int:
        """The process whose worker owns state key ``key``."""
        return bytewax_route(key, self.workers) // self.workers_per_process

    def owned(self, keys: Sequence[str]) -> list[int]:
        """Indexes of the ``keys`` this process owns."""
        return [i for i, key in enumerate(keys) if self.owner(key) == self.process_id]


def parse_addresses(text: str) -> tuple[str, ...]:
    """``host:port`` addresses separated by ``;`` or ``,`` (Bytewax's ``-a`` uses ``;``).

    >>> parse_addresses("a-0.svc:2101;a-1.svc:2101")
    ('a-0.svc:2101', 'a-1.svc:2101')
    """
    parts = tuple(p.strip() for p in text.replace(",", ";").split(";") if p.strip())
    for p in parts:
        host, _, port = p.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--addresses: {p!r} is not host:port")
    return parts


class AffinitySource(FixedPartitionedSource[_X, _S]):
    """Lists only the partitions whose shard this process owns; reads them with ``inner``.

    ``inner.list_parts()`` must list partition ``i`` at position ``i``, one
    partition per key in ``keys``.
    """

    def __init__(
        self, inner: FixedPartitionedSource[_X, _S], keys: Sequence[str], placement: Placement
    ) -> None:
        self.inner = inner
        self.keys = tuple(keys)
        self.placement = placement

    def list_parts(self) -> list[str]:
        """This process's partitions (Bytewax gives each to one of its workers)."""
        parts = self.inner.list_parts()
        if len(parts) != len(self.keys):
            raise ConfigError(
                f"partition affinity needs one input partition per shard: the source has "
                f"{len(parts)} partition(s), engine.shards = {len(self.keys)}"
            )
        return [parts[i] for i in self.placement.owned(self.keys)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: _S | None
    ) -> StatefulSourcePartition[_X, _S]:
        """Delegate to the wrapped source."""
        return self.inner.build_part(step_id, for_part, resume_state)


def affine_source(
    config: Config, source: Source[_X], placement: Placement | None
) -> AffinitySource[_X, Any]:
    """``source`` restricted to this process's partitions; checks the layout first."""
    placement = placement or Placement()
    if not isinstance(source, FixedPartitionedSource):
        raise ConfigError(
            f"partition affinity needs a partitioned source, not {type(source).__name__}"
        )
    shards = config.engine.shards
    if placement.processes > shards:
        raise ConfigError(
            f"{placement.processes} processes but only {shards} shard(s)/input partition(s): "
            f"every process needs at least one (raise input.partitions and engine.shards)"
        )
    affine = AffinitySource(source, affinity_keys(shards), placement)
    affine.list_parts()  # a layout error now, not inside the running dataflow
    return affine


# --- recovery ------------------------------------------------------------------------------


def _part_file(directory: Path, index: int) -> Path:
    return directory / f"part-{index}.sqlite3"


def _part_header(path: Path) -> tuple[int, int]:
    """``(part_index, part_count)`` of a recovery partition file."""
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            row = con.execute("SELECT part_index, part_count FROM parts").fetchone()
            check = con.execute("PRAGMA quick_check").fetchone()
    except sqlite3.DatabaseError as err:
        raise RecoveryError(f"recovery partition {path} is damaged ({err})") from err
    if row is None or check is None or check[0] != "ok":
        raise RecoveryError(f"recovery partition {path} is damaged (no partition record)")
    return int(row[0]), int(row[1])


def _process_recovery(config: Config, *, init: bool, placement: Placement) -> RecoveryConfig:
    """This process's own recovery partition ``part-{process_id}`` of ``processes``."""
    from datetime import timedelta

    from bytewax.recovery import init_db_dir

    path = Path(config.recovery.dir)
    mine = _part_file(path, placement.process_id)
    if not mine.exists():
        if not init:
            raise RecoveryError(
                f"recovery directory {path} holds no partition {mine.name} for process "
                f"{placement.process_id}; pass --init-recovery to create it (this starts "
                "from an empty state), or mount this process's recovery volume there"
            )
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        with tempfile.TemporaryDirectory(dir=path, prefix=".init-") as tmp:
            init_db_dir(Path(tmp), placement.processes)  # type: ignore[no-untyped-call]
            made = _part_file(Path(tmp), placement.process_id)
            for suffix in ("-wal", "-shm", ""):  # the database last: it marks success
                if Path(f"{made}{suffix}").exists():
                    os.replace(f"{made}{suffix}", f"{mine}{suffix}")
        log.info("initialised recovery partition %s of %d", mine, placement.processes)
    index, count = _part_header(mine)
    if index != placement.process_id or count != placement.processes:
        raise RecoveryError(
            f"recovery partition {mine} is partition {index} of {count}, but this is process "
            f"{placement.process_id} of {placement.processes}; the process count of a "
            "deployment with one recovery volume per process is fixed (docs/scaling.md)"
        )
    backup = timedelta(seconds=config.recovery.backup_interval_s)
    return RecoveryConfig(path, backup_interval=backup)  # type: ignore[no-untyped-call]


def check_shard_keys(directory: Path, keys: Sequence[str]) -> None:
    """Refuse a recovery directory whose engine state is held under other shard keys.

    The shard keys follow from ``engine.shards`` and ``engine.affinity``;
    state under any other key would never see an event again.
    """
    want = set(keys)
    found: set[str] = set()
    for part in sorted(directory.glob("part-*.sqlite3")):
        try:
            with closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True)) as con:
                rows = con.execute(
                    "SELECT DISTINCT state_key FROM snaps WHERE step_id = ?", (ENGINE_STEP,)
                )
                found.update(str(r[0]) for r in rows)
        except sqlite3.DatabaseError as err:
            raise RecoveryError(f"recovery partition {part} is damaged ({err})") from err
    stray = sorted(found - want)
    if stray:
        raise RecoveryError(
            f"recovery directory {directory} holds engine state under shard key(s) "
            f"{', '.join(stray[:8])}, which this configuration does not use (it uses "
            f"{', '.join(sorted(want)[:8])}{', ...' if len(want) > 8 else ''}); "
            "engine.shards and engine.affinity are fixed for the life of a recovery "
            "directory: restore them, or start a new directory"
        )


def prepare_placement_recovery(
    config: Config, *, init: bool, placement: Placement | None, workers: int
) -> RecoveryConfig | None:
    """The recovery configuration of this process; checks the directory first.

    One process or a local cluster shares one directory
    (:func:`intentflow.runtime.prepare_recovery`); a process of a multi-host
    cluster keeps its own partition ``part-{process_id}``. A new shared
    directory gets one partition per worker of the cluster.
    """
    from intentflow.runtime import prepare_recovery

    if not config.recovery.dir:
        return None
    recovery: RecoveryConfig | None
    if placement is not None and not placement.shared_recovery:
        recovery = _process_recovery(config, init=init, placement=placement)
    else:
        partitions = placement.workers if placement is not None else max(1, workers)
        with contextlib.ExitStack() as stack:
            if placement is not None and placement.recovery_lock:
                lock = stack.enter_context(open(placement.recovery_lock, "a+b"))
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            recovery = prepare_recovery(config, init=init, partitions=partitions)
    if recovery is not None:
        shards = config.engine.shards
        keys = affinity_keys(shards) if config.engine.affinity else plain_keys(shards)
        check_shard_keys(Path(config.recovery.dir), keys)
    return recovery


def plain_keys(shards: int) -> tuple[str, ...]:
    """The shard keys without affinity: ``s0 .. s{shards-1}``."""
    return tuple(f"s{i}" for i in range(shards))


# --- local clusters ------------------------------------------------------------------------


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that were free on ``host`` a moment ago."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class _ChildSpec:
    """What a child process of a local cluster needs (pickled into a private file)."""

    config: Config
    placement: Placement
    metrics_host: str | None
    metrics_port: int | None
    verbose: bool
    log_json: bool
    parent_pid: int
    init_recovery: bool
    metrics_optional: bool  # the default port: when it is taken, run without the endpoint


def _metrics_port(base: int | None, i: int) -> int | None:
    from intentflow.health import DEFAULT_METRICS_PORT

    if base == 0:
        return 0
    return (DEFAULT_METRICS_PORT if base is None else base) + i


def run_local_cluster(
    config: Config,
    *,
    processes: int,
    workers_per_process: int = 1,
    init_recovery: bool = False,
    metrics_host: str | None = None,
    metrics_port: int | None = None,
    verbose: bool = False,
    log_json: bool = False,
    stop_timeout_s: float = 15.0,
) -> int:
    """Run ``processes`` engine processes on loopback as one Bytewax cluster; their exit code.

    The children share the recovery directory; the first to lock it creates
    it (with ``init_recovery``) or checks it, the others then check it.
    Process ``i`` serves metrics on ``metrics_port + i`` (default port + i;
    0: free ports, logged). When a child fails, the others are stopped and
    its exit code is returned; SIGINT/SIGTERM are passed on to the children.
    """
    if processes < 2:
        raise ConfigError("a local cluster needs --processes >= 2")
    if config.engine.affinity and processes > config.engine.shards:
        raise ConfigError(
            f"{processes} processes but only {config.engine.shards} shard(s)/input partition(s): "
            "every process needs at least one (raise input.partitions and engine.shards)"
        )
    if not config.engine.affinity:
        log.warning("no partition affinity: events cross processes one by one (docs/scaling.md)")
    addresses = tuple(f"127.0.0.1:{p}" for p in free_ports(processes))
    tmp = tempfile.mkdtemp(prefix="intentflow-cluster-")
    children: list[subprocess.Popen[bytes]] = []
    previous: dict[int, Any] = {}
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        for child in children:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)

    try:
        for i in range(processes):
            spec = _ChildSpec(
                config=config,
                placement=Placement(
                    processes, i, workers_per_process, addresses, True, f"{tmp}/recovery.lock"
                ),
                init_recovery=init_recovery,
                metrics_host=metrics_host,
                metrics_port=_metrics_port(metrics_port, i),
                metrics_optional=metrics_port is None,
                verbose=verbose,
                log_json=log_json,
                parent_pid=os.getpid(),
            )
            path = Path(tmp) / f"process-{i}.pickle"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                pickle.dump(spec, f, protocol=pickle.HIGHEST_PROTOCOL)
            cmd = [sys.executable, "-m", "intentflow.cluster", str(path)]
            children.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))
            log.info("started process %d of %d (pid %d)", i, processes, children[-1].pid)
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, forward)
        return _supervise(children, stop_timeout_s, received)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _stop_all(children, stop_timeout_s)
        shutil.rmtree(tmp, ignore_errors=True)


def _supervise(
    children: list[subprocess.Popen[bytes]], stop_timeout_s: float, received: list[int]
) -> int:
    """Wait for every child; on the first failure stop the rest and return its code."""
    while True:
        codes = [c.poll() for c in children]
        failed = [(i, code) for i, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            i, code = failed[0]
            assert code is not None
            if not received:
                log.error("process %d exited with code %d; stopping the others", i, code)
            _stop_all(children, stop_timeout_s)
            return 130 if received and code in (-signal.SIGINT, 130) else (code if code > 0 else 1)
        if all(code == 0 for code in codes):
            return 0
        time.sleep(0.05)


def _stop_all(children: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """SIGTERM every live child, then SIGKILL what is left after ``timeout_s``."""
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
    deadline = time.monotonic() + timeout_s
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _interrupt(signum: int, _frame: object) -> None:
    """SIGTERM handler of a child: stop like Ctrl-C."""
    raise KeyboardInterrupt


def _metrics_address(spec: _ChildSpec) -> tuple[str | None, int | None] | None:
    """Where this child serves metrics; ``None`` when its default port is taken."""
    from intentflow.health import DEFAULT_METRICS_HOST

    if spec.metrics_optional and spec.metrics_port:
        with socket.socket() as s:
            try:
                s.bind((spec.metrics_host or DEFAULT_METRICS_HOST, spec.metrics_port))
            except OSError:
                log.warning(
                    "metrics port %d is taken; process %d runs without the metrics endpoint",
                    spec.metrics_port,
                    spec.placement.process_id,
                )
                return None
    return spec.metrics_host, spec.metrics_port


def _die_with_parent(parent_pid: int) -> None:
    """Have Linux send SIGTERM to this process when its supervisor dies (no-op elsewhere)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # it died before that took effect
        raise SystemExit(1)


def _child_main(argv: Sequence[str]) -> int:
    """Entry point of one child of :func:`run_local_cluster`."""
    from intentflow.commands.run import run_config
    from intentflow.logs import setup_logging

    path = Path(argv[0])
    with path.open("rb") as f:
        spec: _ChildSpec = pickle.load(f)
    path.unlink(missing_ok=True)
    setup_logging(verbose=spec.verbose, json_lines=spec.log_json)
    signal.signal(signal.SIGTERM, _interrupt)
    _die_with_parent(spec.parent_pid)
    try:
        run_config(
            spec.config,
            workers=spec.placement.workers_per_process,
            init_recovery=spec.init_recovery,
            metrics_address=_metrics_address(spec),
            placement=spec.placement,
        )
    except IntentflowError as err:
        print(f"intentflow: error (process {spec.placement.process_id}): {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))

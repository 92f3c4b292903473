"""The engine as a real process, started fast, and its state read back from recovery.

:class:`Engine` runs ``intentflow run …`` (the CLI's own ``main``) in a child
process forked from a ``multiprocessing`` fork server that has imported the
engine and loaded its compiled kernels once. Each start therefore costs a
fork instead of a fresh interpreter, which lets the fault-injection tests
crash and restart the engine many times within their time budget. The child
is a separate process with its own pid: ``SIGKILL`` is a real ``kill -9``.

:func:`shard_states` reads the newest shard snapshots of a recovery
directory (the same rows a resume would load), so tests can compare the
engine's feature and model state with an uninterrupted in-memory run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.context
import os
import pickle
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis

from intentflow.commands.model import _newest_snapshots
from intentflow.errors import RecoveryError

#: tests/short-run.toml (flowkit.SHORT_RUN_TOML): the runs must alert early
DEMO_TOML = str(Path(__file__).resolve().parents[1] / "short-run.toml")

#: Modules the fork server imports once; every engine child inherits them.
PRELOAD = [
    "intentflow.cli",
    "intentflow.commands.run",
    "intentflow.runtime",
    "intentflow.health",
    "intentflow.dataflows.flow",
    "enginewarm",
]


def fork_context() -> multiprocessing.context.ForkServerContext:
    """The fork-server context with :data:`PRELOAD` (call before the first start)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _engine_main(argv: list[str], log_path: str, env: dict[str, str]) -> None:
    """Child entry point: ``env`` added, output to ``log_path``, then the CLI's ``main``."""
    os.environ.update(env)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from intentflow.cli import main

    code = 1
    try:
        code = main(argv)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def engine_args(
    url: str,
    *,
    recovery: Path | None = None,
    init: bool = False,
    partitions: int = 2,
    snapshot_s: float = 0.2,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """``run`` arguments: Redis input, the demo settings, a free metrics port.

    One shard per input partition (docs/scaling.md): a shard then reads one
    partition in order, so a resumed run can equal the in-memory reference.
    """
    argv = [
        "run",
        "--redis-url",
        url,
        "--source",
        "redis",
        "--config",
        DEMO_TOML,
        "--partitions",
        str(partitions),
        "--shards",
        str(partitions),
        "--metrics-port",
        "0",
    ]
    if recovery is not None:
        argv += ["--recovery-dir", str(recovery), "--snapshot-interval", str(snapshot_s)]
        if init:
            argv.append("--init-recovery")
    return argv + list(extra)


class Engine:
    """One engine process; ``log`` collects its stdout and stderr."""

    def __init__(
        self,
        ctx: multiprocessing.context.ForkServerContext,
        argv: list[str],
        log: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = argv
        self.log = log
        self._proc = ctx.Process(
            target=_engine_main, args=(argv, str(log), dict(env or {})), daemon=True
        )

    def start(self) -> Engine:
        self._proc.start()
        return self

    @property
    def pid(self) -> int:
        assert self._proc.pid is not None
        return self._proc.pid

    @property
    def exitcode(self) -> int | None:
        return self._proc.exitcode

    def alive(self) -> bool:
        return self._proc.is_alive()

    def kill9(self) -> None:
        """``kill -9``: no shutdown work at all."""
        if self._proc.is_alive():
            os.kill(self.pid, signal.SIGKILL)
        self._proc.join(10)

    def interrupt(self, timeout_s: float = 20.0) -> int | None:
        """SIGINT, then SIGKILL if it has not exited within ``timeout_s``."""
        if self._proc.is_alive():
            os.kill(self.pid, signal.SIGINT)
            self._proc.join(timeout_s)
            if self._proc.is_alive():
                self.kill9()
        return self._proc.exitcode

    def wait(self, timeout_s: float) -> int | None:
        self._proc.join(timeout_s)
        return self._proc.exitcode

    def rss_kb(self) -> int:
        """Resident set size from ``/proc/PID/status`` (0 when it has exited)."""
        return rss_kb(self.pid)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def health_url(self, timeout_s: float = 30.0) -> str:
        """The base URL of the engine's health endpoint, from its log."""
        found: list[str] = []

        def logged() -> bool:
            m = re.search(r"metrics and health on (http://127\.0\.0\.1:\d+)", self.text())
            if m:
                found.append(m.group(1))
            return bool(m)

        wait_for(logged, timeout_s, "the health endpoint", self)
        return found[0]


def rss_kb(pid: int | str = "self") -> int:
    """``VmRSS`` of a process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def wait_for(
    cond: Callable[[], bool], timeout_s: float, what: str, engine: Engine | None = None
) -> None:
    """Poll ``cond`` every 50 ms; fail with the engine's log if it exits or time runs out."""
    import pytest

    deadline = time.monotonic() + timeout_s
    while not cond():
        if engine is not None and not engine.alive():
            pytest.fail(
                f"engine exited with {engine.exitcode} while waiting for {what}:\n"
                + engine.text()[-3000:]
            )
        if time.monotonic() > deadline:
            tail = engine.text()[-3000:] if engine is not None else ""
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{tail}")
        time.sleep(0.05)


# --- state in a recovery directory ------------------------------------------------------


def shard_states(recovery_dir: Path) -> dict[str, dict[str, Any]]:
    """``shard key -> unpickled state`` of the newest engine snapshots ({} if none yet)."""
    try:
        newest = _newest_snapshots(recovery_dir)
    except RecoveryError:
        return {}
    out = {}
    for key, (_epoch, blob) in newest.items():
        snap = pickle.loads(blob)
        out[key] = pickle.loads(snap.state)
    return out


def counters(states: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per shard: the engine's event counters."""
    return {k: dict(s["counters"]) for k, s in states.items()}


def _table(table: Any) -> dict[str, tuple[int, tuple[bytes, ...]]]:
    rows = {}
    for i, key in enumerate(table.keys):
        rows[key] = (
            int(table.clock[i]),
            tuple(np.ascontiguousarray(arr[i]).tobytes() for _name, arr in table.arrays),
        )
    return rows


def comparable(states: dict[str, dict[str, Any]], probe: np.ndarray) -> dict[str, Any]:
    """What must be equal after a resume: features, model, de-duplication, clocks.

    Feature rows are compared byte for byte per key; the model by its version
    (which counts labels learned) and its scores on ``probe`` rows.
    """
    out: dict[str, Any] = {}
    for key, st in sorted(states.items()):
        feats = st["features"]
        model = st["model"]
        out[key] = {
            "entities": _table(feats.entities),
            "accounts": _table(feats.accounts),
            "feature_counters": feats.counters,
            "model_version": model.version,
            "model_scores": probe_scores(model, probe).tolist(),
            "seen": st["seen"].items(),
            "watermark": st["watermark"],
            "counters": dict(st["counters"]),
            "pending_labels": st["labels"].n_pending,
        }
    return out


def probe_scores(model: Any, probe: np.ndarray) -> np.ndarray:
    """A shard model's scores on the first columns of ``probe`` (one per feature)."""
    from intentflow.features.spec import FeatureSpec

    names = FeatureSpec.default().names
    scored: np.ndarray = model.score_batch(probe[:, : len(names)], names)
    return scored


def recovery_bytes(recovery_dir: Path) -> int:
    """Bytes on disk of a recovery directory (sqlite files and their journals)."""
    return sum(p.stat().st_size for p in recovery_dir.iterdir() if p.is_file())


def holds_sqlite_write_lock(db: Path) -> bool:
    """Whether another process holds the WAL write lock of the SQLite file ``db``.

    SQLite's unix VFS takes a POSIX lock on byte 120 of ``db-shm`` for the
    whole of a write transaction; ``F_GETLK`` reports it without taking it.
    """
    import fcntl
    import struct

    shm = Path(f"{db}-shm")
    try:
        fd = os.open(shm, os.O_RDWR)
    except OSError:
        return False
    try:
        fmt = "hhqqi4x"  # struct flock on Linux x86-64 / aarch64
        query = struct.pack(fmt, fcntl.F_WRLCK, os.SEEK_SET, 120, 1, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
        return bool(struct.unpack(fmt, answer)[0] != fcntl.F_UNLCK)
    finally:
        os.close(fd)


#: What :func:`kill_during_write` returns when the kill landed inside a write.
IN_WRITE = "in a write"


def kill_during_write(engine: Engine, db: Path, timeout_s: float = 30.0) -> str:
    """``kill -9`` the engine while it is inside a write transaction of ``db``.

    The engine is frozen with SIGSTOP before each look, so a lock seen held
    is still held when SIGKILL lands. Returns :data:`IN_WRITE` when a write
    was caught; otherwise why not (the engine exited by itself, with its
    code, or no write came within ``timeout_s``), and the engine is then
    killed anyway.
    """
    deadline = time.monotonic() + timeout_s
    looks = 0
    while time.monotonic() < deadline and engine.alive():
        os.kill(engine.pid, signal.SIGSTOP)
        looks += 1
        if holds_sqlite_write_lock(db):
            engine.kill9()
            return IN_WRITE
        os.kill(engine.pid, signal.SIGCONT)
        time.sleep(0.002)
    if not engine.alive():
        engine.kill9()  # reaps it
        return f"exited by itself with code {engine.exitcode} after {looks} looks"
    engine.kill9()
    return f"no write in {timeout_s:g} s ({looks} looks)"


# --- the uninterrupted reference run and the end-of-test comparison ----------------------

#: Input size of the comparison runs: enough for the model to learn and alert.
N_EVENTS = 5000
#: Shards of an engine run by :func:`engine_args` with its default two partitions (one
#: per partition), and of the in-memory reference run.
SHARDS = 2
#: Feature rows the models of both runs score (same model, same scores).
PROBE = np.random.default_rng(0).normal(size=(64, 64))


@dataclass(frozen=True)
class Reference:
    """What an uninterrupted in-memory run over ``payloads`` produced."""

    payloads: list[bytes]
    decisions: list[tuple[str, str, float]]
    scores: dict[str, tuple[float, str]]  # entity -> (score, model version)
    counters: dict[str, dict[str, int]]
    state: dict[str, Any]
    recovery_bytes: int
    dead_letter_reasons: list[str]


def build_reference(rec: Path) -> Reference:
    """Run the flow in memory over the standard input, snapshotting into ``rec``."""
    from flowkit import (
        dead_letters,
        decisions,
        demo_config,
        gen_payloads,
        items_of,
        run_memory,
        scores,
    )

    payloads = gen_payloads(N_EVENTS, seed=21, poison_fraction=0.005, duplicate_fraction=0.01)
    cfg = demo_config(short_run=True)
    cfg = replace(cfg, engine=replace(cfg.engine, shards=SHARDS))
    out = run_memory(cfg, items_of(payloads), recovery_dir=rec)
    last = {s.entity_id: (float(s.score), s.model) for s in scores(out)}
    states = shard_states(rec)
    return Reference(
        payloads,
        decisions(out),
        last,
        counters(states),
        comparable(states, PROBE),
        recovery_bytes(rec),
        sorted(r["reason"] for r in dead_letters(out)),
    )


def produce(client: redis.Redis, payloads: list[bytes]) -> None:
    """Send payloads to two input streams, routed by account as producers should."""
    from intentflow.commands.produce import Producer

    Producer(client, "intentflow:events:", 2).send(payloads)


def produce_gradually(
    client: redis.Redis, payloads: list[bytes], chunk: int = 100, pause_s: float = 0.15
) -> threading.Thread:
    """:func:`produce` in chunks with pauses, in a thread (started; join it).

    An engine then cannot read the whole input at once, however fast it is:
    a kill at a share of the alerts lands mid-stream.
    """
    from intentflow.commands.produce import Producer

    producer = Producer(client, "intentflow:events:", 2)

    def send() -> None:
        for i in range(0, len(payloads), chunk):
            producer.send(payloads[i : i + chunk])
            time.sleep(pause_s)

    thread = threading.Thread(target=send, name="produce-gradually", daemon=True)
    thread.start()
    return thread


def alert_stream(client: redis.Redis) -> list[tuple[str, str, float]]:
    """(alert_id, action, score) of every entry of the alert stream, in stream order."""
    entries: Any = client.xrange("intentflow:alerts")
    docs = [orjson.loads(f[b"alert"]) for _id, f in entries]
    return [(d["alert_id"], d["action"]["id"], d["score"]) for d in docs]


def run_to_end(engine: Engine, rec: Path, ref: Reference, client: redis.Redis) -> None:
    """Wait until the engine's snapshots cover the whole input and all alerts are out."""
    wait_for(lambda: counters(shard_states(rec)) == ref.counters, 90, "all input", engine)
    wait_for(lambda: client.xlen("intentflow:alerts") >= len(ref.decisions), 30, "alerts", engine)


def check_equal(client: redis.Redis, rec: Path, ref: Reference) -> None:
    """No alert lost or doubled; same latest scores and final state as the reference."""
    stream = alert_stream(client)
    ids = [a[0] for a in stream]
    assert len(ids) == len(set(ids)), "an alert_id is in the stream twice"
    missing = sorted(set(ref.decisions) - set(stream))
    extra = sorted(set(stream) - set(ref.decisions))
    assert not missing, f"{len(missing)} alerts lost, e.g. {missing[:3]}"
    assert not extra, f"{len(extra)} alerts the reference did not raise, e.g. {extra[:3]}"
    assert sorted(stream) == ref.decisions
    pipe = client.pipeline(transaction=False)
    entities = sorted(ref.scores)
    for entity in entities:
        pipe.hmget(f"intentflow:score:{entity}", "score", "model")
    replies = zip(entities, pipe.execute(), strict=True)
    got = {e: (float(s), m.decode()) for e, (s, m) in replies}  # the exact float64 back
    assert got == ref.scores
    assert comparable(shard_states(rec), PROBE) == ref.state


def http_status(url: str) -> int:
    """The HTTP status of a GET (0 when nothing answers within 2 s)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0

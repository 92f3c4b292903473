"""``kill -9`` at random points, crashes during start-up and snapshots, crash loops.

The engine runs as a real process against a real redis-server, reading two
input streams, with a recovery directory. After every crash it is restarted
on the same directory; at the end, the alert stream (each ``alert_id`` once,
same action and score), the latest score hashes and the final feature and
model state (read from the recovery directory) must equal an uninterrupted
in-memory run over the same input. The engine is deterministic and
batch-invariant, so any difference is a lost, skipped or doubled event.

The single ``kill -9`` mid-stream against the engine started from the
command line is in ``tests/test_e2e_redis.py``; this module adds random
kill points, state equality, start-up and snapshot crashes and crash loops.
"""

from __future__ import annotations

import contextlib
import multiprocessing.context
import os
import random
import signal
import sqlite3
import stat
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
import redis
from enginekit import (
    IN_WRITE,
    Engine,
    Reference,
    check_equal,
    engine_args,
    kill_during_write,
    produce,
    produce_gradually,
    recovery_bytes,
    run_to_end,
    shard_states,
    wait_for,
)

Fork = multiprocessing.context.ForkServerContext


def alerts_reach(client: redis.Redis, n: float) -> Callable[[], bool]:
    return lambda: bool(client.xlen("intentflow:alerts") >= n)


def finish(
    forkserver: Fork, url: str, rec: Path, log: Path, ref: Reference, client: redis.Redis
) -> None:
    """Run the engine on ``rec`` until its snapshots cover the whole input, then kill it."""
    engine = Engine(forkserver, engine_args(url, recovery=rec), log).start()
    try:
        run_to_end(engine, rec, ref, client)
    finally:
        engine.kill9()


@pytest.mark.parametrize("seed", [3, 17, 101])
def test_kill_9_at_random_points_then_resume_equals_an_uninterrupted_run(
    seed: int,
    forkserver: Fork,
    redis_url: str,
    redis_client: redis.Redis,
    reference: Reference,
    tmp_path: Path,
) -> None:
    rng = random.Random(seed)
    producer = produce_gradually(redis_client, reference.payloads)
    rec, log = tmp_path / "recovery", tmp_path / "engine.log"
    total = len(reference.decisions)
    # Three kills, each once the alert stream holds a random share of all alerts,
    # plus a random delay: the engine dies mid-batch, mid-write or mid-snapshot.
    # Small reads make many batches, epochs and sink writes: the whole input
    # would otherwise pass in a few batches, before the first poll sees an alert.
    marks = sorted(rng.uniform(0.05, 0.75) for _ in range(3))
    seen_at_kill = []
    for i, share in enumerate(marks):
        engine = Engine(
            forkserver,
            engine_args(redis_url, recovery=rec, init=i == 0),
            log,
            env={"INTENTFLOW__INPUT__BATCH_SIZE": "20"},
        )
        engine.start()
        try:
            wait_for(
                alerts_reach(redis_client, share * total),
                60,
                f"{share:.0%} of the alerts",
                engine,
            )
            time.sleep(rng.uniform(0.0, 0.05))
        finally:
            engine.kill9()
        seen_at_kill.append(redis_client.xlen("intentflow:alerts"))
    producer.join()
    assert any(0 < n < total for n in seen_at_kill), f"no kill mid-stream: {seen_at_kill}"
    finish(forkserver, redis_url, rec, log, reference, redis_client)
    check_equal(redis_client, rec, reference)


def test_crash_after_init_before_the_first_snapshot_resumes_from_the_start(
    forkserver: Fork,
    redis_url: str,
    redis_client: redis.Redis,
    reference: Reference,
    tmp_path: Path,
) -> None:
    produce(redis_client, reference.payloads)
    rec, log = tmp_path / "recovery", tmp_path / "engine.log"
    engine = Engine(
        forkserver, engine_args(redis_url, recovery=rec, init=True, snapshot_s=30.0), log
    )
    engine.start()
    try:
        wait_for(lambda: any(rec.glob("part-*.sqlite3")), 30, "the recovery directory", engine)
    finally:
        engine.kill9()
    assert shard_states(rec) == {}, "killed after its first snapshot: nothing to test"
    # Restarted without --init-recovery: the directory exists, holds no snapshot, so
    # the engine starts from the beginning of the input (nothing was committed yet).
    finish(forkserver, redis_url, rec, log, reference, redis_client)
    check_equal(redis_client, rec, reference)


def test_crash_loop_during_start_up_and_snapshots_stays_exact_and_bounded(
    forkserver: Fork,
    redis_url: str,
    redis_client: redis.Redis,
    reference: Reference,
    tmp_path: Path,
) -> None:
    """Ten crashes: during start-up (resume), and inside snapshot write transactions.

    The input arrives in ten parts, one per start, so that every run has state
    to change and therefore snapshots to write.
    """
    rng = random.Random(2024)
    rec, log = tmp_path / "recovery", tmp_path / "engine.log"
    db = rec / "part-0.sqlite3"
    part = len(reference.payloads) // 10 + 1
    missed: list[str] = []
    for i in range(10):
        produce(redis_client, reference.payloads[i * part : (i + 1) * part])
        args = engine_args(redis_url, recovery=rec, init=i == 0, snapshot_s=0.05)
        engine = Engine(forkserver, args, log).start()
        if i % 2 == 0:
            # Start-up: within the first half second (loading state, first epochs).
            time.sleep(rng.uniform(0.05, 0.5))
            engine.kill9()
        else:
            time.sleep(rng.uniform(0.0, 0.2))
            outcome = kill_during_write(engine, db, timeout_s=20.0)
            if outcome != IN_WRITE:
                missed.append(f"start {i}: {outcome}")
        assert engine.exitcode != 0, "the engine must not have finished on its own"
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.exists() else ""
    assert len(missed) <= 2, (
        f"only {5 - len(missed)} of 5 kills landed inside a snapshot write: "
        f"{'; '.join(missed)}\nengine log (last 40 lines):\n{tail}"
    )
    finish(forkserver, redis_url, rec, log, reference, redis_client)
    check_equal(redis_client, rec, reference)
    # Bounded: old snapshots are collected; each execution adds a row, not a state.
    with closing(sqlite3.connect(db)) as con:
        per_key = con.execute(
            "SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM snaps GROUP BY step_id, state_key)"
        ).fetchone()[0]
        executions = con.execute("SELECT COUNT(*) FROM exs").fetchone()[0]
    assert executions <= 11  # a start killed early may not have registered itself
    assert per_key <= 3, f"{per_key} snapshots kept per state key"
    assert recovery_bytes(rec) <= 4 * reference.recovery_bytes + (1 << 20)


def test_a_crash_while_initialising_leaves_no_directory_or_a_whole_one(
    forkserver: Fork, tmp_path: Path
) -> None:
    """``--init-recovery`` killed at random moments: never a half-initialised directory."""
    from intentflow.runtime import _init_recovery_dir, check_recovery_partitions

    rng = random.Random(7)
    spans = []
    for name in ("warm", "timed"):  # the first start may also start the fork server
        t0 = time.monotonic()
        whole = forkserver.Process(target=_init_recovery_dir, args=(tmp_path / name, 2))
        whole.start()
        whole.join(30)
        spans.append(time.monotonic() - t0)
    took = min(spans)  # kills are spread over this span, from start to finish
    outcomes = {"absent": 0, "whole": 0}
    for i in range(20):
        rec = tmp_path / f"r{i}" / "recovery"
        child = forkserver.Process(target=_init_recovery_dir, args=(rec, 2), daemon=True)
        child.start()
        time.sleep(rng.uniform(0.0, 1.2 * took))
        if child.pid is not None and child.is_alive():
            with contextlib.suppress(ProcessLookupError):  # it may finish just before
                os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        if not rec.exists():
            outcomes["absent"] += 1
            continue
        check_recovery_partitions(sorted(rec.glob("part-*.sqlite3")))  # raises if damaged
        assert stat.S_IMODE(rec.stat().st_mode) == 0o700
        outcomes["whole"] += 1
    assert outcomes["absent"] + outcomes["whole"] == 20, outcomes

"""A damaged, missing, empty or incomplete recovery directory stops the engine.

The engine must exit non-zero (code 2) with a one-line message that names
the problem and the way out, before it reads any input: it never starts over
silently and never resumes from state it cannot trust.
"""

from __future__ import annotations

import multiprocessing.context
import pickle
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
import redis
from bytewax.recovery import init_db_dir
from enginekit import Engine, engine_args
from flowkit import demo_config, gen_payloads, items_of, run_memory

from intentflow.commands.produce import Producer


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recovery directory written by a real run (snapshots of every step)."""
    rec = tmp_path_factory.mktemp("good")
    run_memory(demo_config(), items_of(gen_payloads(1500, seed=4)), recovery_dir=rec)
    return rec


def _sql(rec: Path, statement: str, *args: object) -> None:
    with closing(sqlite3.connect(rec / "part-0.sqlite3")) as con:
        con.execute(statement, args)
        con.commit()


def _engine_row(rec: Path) -> tuple[int, bytes]:
    with closing(sqlite3.connect(rec / "part-0.sqlite3")) as con:
        row = con.execute(
            "SELECT rowid, ser_change FROM snaps WHERE step_id LIKE '%.engine' "
            "ORDER BY snap_epoch DESC LIMIT 1"
        ).fetchone()
    return int(row[0]), bytes(row[1])


def empty(rec: Path) -> None:
    shutil.rmtree(rec)
    rec.mkdir(mode=0o700)


def missing(rec: Path) -> None:
    shutil.rmtree(rec)


def unrelated_files(rec: Path) -> None:
    empty(rec)
    (rec / "notes.txt").write_text("not a recovery partition")


def garbage(rec: Path) -> None:
    (rec / "part-0.sqlite3").write_bytes(b"\x13\x37" * 4096)


def truncated(rec: Path) -> None:
    db = rec / "part-0.sqlite3"
    db.write_bytes(db.read_bytes()[:6000])


def zero_length(rec: Path) -> None:
    (rec / "part-0.sqlite3").write_bytes(b"")


def dropped_table(rec: Path) -> None:
    _sql(rec, "DROP TABLE snaps")


def unpicklable_snapshot(rec: Path) -> None:
    rowid, blob = _engine_row(rec)
    _sql(rec, "UPDATE snaps SET ser_change = ? WHERE rowid = ?", b"\x80\x05garbage" + blob, rowid)


def flipped_state_bytes(rec: Path) -> None:
    rowid, blob = _engine_row(rec)
    damaged = bytearray(blob)
    mid = len(damaged) // 2
    for i in range(mid, mid + 16):
        damaged[i] ^= 0x5A  # inside the shard state: the outer pickle still loads
    assert pickle.loads(bytes(damaged)).damaged()
    _sql(rec, "UPDATE snaps SET ser_change = ? WHERE rowid = ?", bytes(damaged), rowid)


def missing_partition(rec: Path) -> None:
    empty(rec)
    init_db_dir(rec, 2)
    (rec / "part-1.sqlite3").unlink()


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (missing, "does not exist; pass --init-recovery"),
    "empty": (empty, "holds no recovery partitions; pass --init-recovery"),
    "unrelated files": (unrelated_files, "holds no recovery partitions"),
    "garbage": (garbage, "is damaged (file is not a database)"),
    "truncated": (truncated, "is damaged"),
    "zero length": (zero_length, "is damaged (missing table(s)"),
    "dropped table": (dropped_table, "is damaged (missing table(s) snaps)"),
    "unpicklable snapshot": (unpicklable_snapshot, "holds an unreadable snapshot of"),
    "flipped state bytes": (flipped_state_bytes, "damaged snapshot of intentflow.engine"),
    "missing partition": (missing_partition, "is incomplete (partition(s) [1] of 2 missing"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_recovery_directory_stops_the_engine_with_a_clear_message(
    case: str,
    good_dir: Path,
    forkserver: multiprocessing.context.ForkServerContext,
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    damage, message = CASES[case]
    rec = tmp_path / "recovery"
    shutil.copytree(good_dir, rec)
    damage(rec)
    Producer(redis_client, "intentflow:events:", 2).send(gen_payloads(200, seed=5))
    engine = Engine(forkserver, engine_args(redis_url, recovery=rec), tmp_path / "log")
    code = engine.start().wait(60)
    text = engine.text()
    assert code == 2, text[-2000:]
    last = text.strip().splitlines()[-1]
    assert last.startswith("intentflow: error: ")
    assert message in last
    assert "Traceback" not in text
    assert redis_client.exists("intentflow:alerts", "intentflow:dlq") == 0, "it read input"
    assert not list(redis_client.scan_iter("intentflow:score:*", count=1000)), "it read input"


def test_init_refuses_a_directory_of_unknown_files(
    forkserver: multiprocessing.context.ForkServerContext, redis_url: str, tmp_path: Path
) -> None:
    rec = tmp_path / "recovery"
    rec.mkdir()
    (rec / "notes.txt").write_text("not a recovery partition")
    engine = Engine(forkserver, engine_args(redis_url, recovery=rec, init=True), tmp_path / "log")
    assert engine.start().wait(60) == 2
    assert "is not empty but holds no recovery partitions" in engine.text()
    assert sorted(p.name for p in rec.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--partitions", "1"), "holds input positions of intentflow:events:1, which"),
        (("--events-prefix", "other:"), "this configuration does not read"),
    ],
    ids=["fewer partitions", "another prefix"],
)
def test_a_directory_of_other_input_partitions_is_refused(
    flags: tuple[str, ...],
    message: str,
    engine_recovery: Path,
    forkserver: multiprocessing.context.ForkServerContext,
    redis_url: str,
    tmp_path: Path,
) -> None:
    rec = tmp_path / "recovery"
    shutil.copytree(engine_recovery, rec)
    argv = [*engine_args(redis_url, recovery=rec), *flags]
    engine = Engine(forkserver, argv, tmp_path / "log")
    assert engine.start().wait(60) == 2
    last = engine.text().strip().splitlines()[-1]
    assert message in last
    assert "--init-recovery" in last

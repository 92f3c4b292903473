"""Model files, ``intentflow model export/import`` and warm starts with ``--model-file``."""

from __future__ import annotations

import hashlib
import pickle
import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from flowkit import alerts, demo_config, gen_payloads, items_of, run_memory

from intentflow.cli import build_parser, main
from intentflow.commands.common import config_from_args
from intentflow.commands.model import read_shard_models
from intentflow.config import Config
from intentflow.dataflows.flow import build_flow, engine_parts
from intentflow.dataflows.logic import ShardLogic, ShardSnapshot
from intentflow.errors import ConfigError, RecoveryError, SnapshotMismatchError
from intentflow.online_models.model import IntentModel, ModelConfig
from intentflow.online_models.modelfile import (
    FORMAT_VERSION,
    MAGIC,
    load_model_file,
    read_header,
    write_model_file,
)
from intentflow.sinks.base import Output

SPEC = "5e" * 32
NAMES = ("a", "b")


def model(kind: str = "logreg", n: int = 200) -> IntentModel:
    m = IntentModel(ModelConfig(kind=kind, warmup_labels=10), spec_hash=SPEC)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 2))
    m.learn_batch(X, X[:, 0] > 0, NAMES)
    return m


def test_round_trip_keeps_predictions_and_header(tmp_path: Path) -> None:
    m = model()
    path = tmp_path / "m.model"
    header = write_model_file(path, m, source="unit test")
    assert path.read_bytes().startswith(MAGIC)
    assert read_header(path) == header
    assert (header.format, header.kind, header.spec_hash) == (FORMAT_VERSION, "logreg", SPEC)
    assert header.feature_names == NAMES
    assert header.n_learned == 200
    back = load_model_file(path, spec_hash=SPEC, config=ModelConfig())
    probe = np.random.default_rng(1).normal(size=(50, 2))
    assert np.array_equal(back.score_batch(probe, NAMES), m.score_batch(probe, NAMES))
    assert back.version == m.version


def test_mismatches_are_refused_with_clear_messages(tmp_path: Path) -> None:
    path = tmp_path / "m.model"
    write_model_file(path, model(), source="unit test")
    with pytest.raises(
        SnapshotMismatchError, match=r"trained on feature spec 5e5e.*has feature spec"
    ):
        load_model_file(path, spec_hash="00" * 32)
    with pytest.raises(SnapshotMismatchError, match=r"holds a 'logreg' model.*asks for 'arf'"):
        load_model_file(path, spec_hash=SPEC, config=ModelConfig(kind="arf"))


def test_damaged_and_foreign_files_are_refused_before_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "m.model"
    write_model_file(path, model(), source="unit test")
    blob = path.read_bytes()
    damaged = tmp_path / "damaged.model"
    damaged.write_bytes(blob[:-10] + b"0123456789")
    with pytest.raises(ConfigError, match="damaged"):
        load_model_file(damaged, spec_hash=SPEC)
    foreign = tmp_path / "foreign.model"
    foreign.write_bytes(pickle.dumps(model()))
    with pytest.raises(ConfigError, match="not an intentflow model file"):
        load_model_file(foreign, spec_hash=SPEC)
    future = tmp_path / "future.model"
    head, _, rest = blob[len(MAGIC) :].partition(b"\n")
    doc = orjson.loads(head)
    doc["format"] = FORMAT_VERSION + 1
    future.write_bytes(MAGIC + orjson.dumps(doc) + b"\n" + rest)
    with pytest.raises(SnapshotMismatchError, match="format 2"):
        load_model_file(future, spec_hash=SPEC)
    with pytest.raises(ConfigError, match="does not exist"):
        load_model_file(tmp_path / "missing.model", spec_hash=SPEC)
    # The checksum in the header is the payload's SHA-256.
    assert doc["payload_sha256"] == hashlib.sha256(rest).hexdigest()


def four_shards() -> Config:
    """The demo settings with four shards: a recovery directory holding several models."""
    cfg = demo_config()
    return replace(cfg, engine=replace(cfg.engine, shards=4))


def test_export_from_a_recovery_directory_and_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = tmp_path / "recovery"
    rec.mkdir()
    run_memory(four_shards(), items_of(gen_payloads(5000, seed=8)), recovery_dir=rec)
    shards = read_shard_models(rec)
    assert [s.shard for s in shards] == ["s0", "s1", "s2", "s3"]
    best = max(shards, key=lambda s: s.model.n_learned)
    assert best.model.n_learned > 0
    out = tmp_path / "best.model"
    assert main(["model", "export", str(out), "--recovery-dir", str(rec)]) == 0
    header = read_header(out)
    assert header.version == best.model.version
    assert header.spec_hash == engine_parts(demo_config()).spec.spec_hash
    assert main(["model", "export", str(tmp_path / "s2.model"), "--recovery-dir", str(rec),
                 "--shard", "s2"]) == 0  # fmt: skip
    assert read_header(tmp_path / "s2.model").version == shards[2].model.version
    assert main(["model", "import", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"intentflow run --model-file {out}" in printed
    assert main(["model", "export", str(out), "--recovery-dir", str(rec), "--shard", "s9"]) == 2
    assert main(["model", "export", str(out), "--recovery-dir", str(tmp_path)]) == 2
    with pytest.raises(RecoveryError, match="no recovery partitions"):
        read_shard_models(tmp_path)


def _set_snapshot_schema(rec: Path, version: int) -> None:
    """Rewrite every engine snapshot of ``rec`` as if written with schema ``version``."""
    for part in rec.glob("part-*.sqlite3"):
        with closing(sqlite3.connect(part)) as con, con:
            rows = con.execute("SELECT rowid, ser_change FROM snaps WHERE ser_change IS NOT NULL")
            for rowid, blob in rows.fetchall():
                snap = pickle.loads(blob)
                if isinstance(snap, ShardSnapshot):
                    new = pickle.dumps(replace(snap, schema_version=version))
                    con.execute("UPDATE snaps SET ser_change = ? WHERE rowid = ?", (new, rowid))


def test_export_reads_the_previous_snapshot_schema_and_refuses_older(tmp_path: Path) -> None:
    """An upgrade across shard schema 3 keeps the model: the old directory still exports."""
    rec = tmp_path / "recovery"
    rec.mkdir()
    run_memory(demo_config(), items_of(gen_payloads(3000, seed=9)), recovery_dir=rec)
    learned = sorted(s.model.n_learned for s in read_shard_models(rec))
    _set_snapshot_schema(rec, 2)
    assert sorted(s.model.n_learned for s in read_shard_models(rec)) == learned
    out = tmp_path / "old.model"
    assert main(["model", "export", str(out), "--recovery-dir", str(rec)]) == 0
    assert read_header(out).spec_hash == engine_parts(demo_config()).spec.spec_hash
    _set_snapshot_schema(rec, 1)
    with pytest.raises(SnapshotMismatchError, match="snapshot schema 1, this version exports"):
        read_shard_models(rec)


def test_import_refuses_another_feature_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.model"
    write_model_file(path, model(), source="unit test")
    assert main(["model", "import", str(path)]) == 2
    assert "trained on feature spec" in capsys.readouterr().err


def test_model_file_warm_starts_fresh_shards(tmp_path: Path) -> None:
    cfg = four_shards()
    parts = engine_parts(cfg)
    rec = tmp_path / "recovery"
    rec.mkdir()
    run_memory(cfg, items_of(gen_payloads(6000, seed=8)), recovery_dir=rec)
    donor = max(read_shard_models(rec), key=lambda s: s.model.n_learned).model
    assert donor.ready
    path = tmp_path / "warm.model"
    write_model_file(path, donor, source="test")
    loaded = load_model_file(path, spec_hash=parts.spec.spec_hash, config=parts.model)
    fresh = ShardLogic(replace(parts, initial_model=loaded), None)
    assert fresh.model.version == donor.version
    assert fresh.model.ready
    # A later stream: the warm model alerts from its first events, a cold one cannot.
    later = items_of(gen_payloads(1500, seed=21))
    cold_alerts = alerts(run_memory(cfg, later))
    warm: list[Output] = []
    flow = build_flow(
        cfg,
        TestingSource(later, batch_size=500),
        TestingSink(warm),
        parts=replace(parts, initial_model=loaded),
    )
    run_main(flow)
    assert cold_alerts == []
    assert alerts(warm)
    n_donor = donor.n_learned
    assert all(int(a["model"]["version"].rsplit("-n", 1)[1]) >= n_donor for a in alerts(warm))


def test_run_flags_reach_the_configuration() -> None:
    args = build_parser().parse_args(
        ["run", "--score-log", "redis:scores", "--model-file", "/tmp/m.model"]
    )
    cfg = config_from_args(args)
    assert cfg.output.score_log == "redis:scores"
    assert cfg.engine.model_file == "/tmp/m.model"

"""``intentflow model export`` and ``intentflow model import``: warm starts.

``export PATH --recovery-dir DIR`` reads the newest snapshot of every engine
shard from a Bytewax recovery directory (the ``snaps`` table of each
``part-*.sqlite3``, step ``<flow>.engine``), picks the shard whose champion
model has learned the most labels (or ``--shard KEY``) and writes it as a
model file (:mod:`intentflow.online_models.modelfile`).

``import PATH`` checks a model file against the configuration (feature-spec
hash, model kind, checksum, that it unpickles into a model) and says how to
use it: ``intentflow run --model-file PATH`` starts every *fresh* shard (one
without state in the recovery directory) from a copy of that model. A shard
restored from a recovery directory keeps its own model.
"""

from __future__ import annotations

import argparse
import math
import pickle
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intentflow.commands.common import config_from_args
from intentflow.errors import RecoveryError, SnapshotMismatchError
from intentflow.online_models.model import IntentModel
from intentflow.online_models.modelfile import load_model_file, read_header, write_model_file

__all__ = ["ShardModel", "cmd_export", "cmd_import", "read_shard_models"]

_ENGINE_STEP_SUFFIX = ".engine"


@dataclass(frozen=True)
class ShardModel:
    """The champion model of one shard, as found in a recovery directory."""

    shard: str
    epoch: int
    spec_hash: str
    model: IntentModel


def _resume_epoch(con: sqlite3.Connection) -> int | None:
    """The epoch a resume would start from (the last execution's lowest frontier)."""
    row = con.execute(
        "SELECT MIN(worker_frontier) FROM fronts WHERE ex_num = (SELECT MAX(ex_num) FROM fronts)"
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _newest_snapshots(recovery_dir: Path) -> dict[str, tuple[int, bytes]]:
    """``state_key -> (epoch, pickled ShardSnapshot)``: the newest engine snapshots."""
    parts = sorted(recovery_dir.glob("part-*.sqlite3"))
    if not parts:
        raise RecoveryError(f"{recovery_dir} holds no recovery partitions (part-*.sqlite3)")
    found: dict[str, tuple[int, bytes]] = {}
    resume: list[int] = []
    rows: list[tuple[str, str, int, bytes | None]] = []
    for part in parts:
        try:
            with closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True)) as con:
                epoch = _resume_epoch(con)
                if epoch is not None:
                    resume.append(epoch)
                rows += con.execute(
                    "SELECT step_id, state_key, snap_epoch, ser_change FROM snaps"
                ).fetchall()
        except sqlite3.DatabaseError as err:
            raise RecoveryError(f"{part} is not a readable recovery partition: {err}") from err
    limit = min(resume) if resume else None
    for step_id, key, epoch, blob in rows:
        if not step_id.endswith(_ENGINE_STEP_SUFFIX):
            continue
        if limit is not None and epoch >= limit:
            continue  # written after the last completed epoch: a resume would not use it
        if key not in found or epoch > found[key][0]:
            found[key] = (epoch, blob or b"")
    return {k: v for k, v in found.items() if v[1]}  # an empty change: the state was dropped


def read_shard_models(recovery_dir: str | Path) -> list[ShardModel]:
    """The champion model of every shard in ``recovery_dir``, sorted by shard key.

    The snapshots are pickles: read only recovery directories you trust.
    """
    from intentflow.dataflows.logic import READABLE_SNAPSHOT_SCHEMAS

    # Schema 3 changed only the de-duplication window and the feature rings: the
    # model of a schema-2 directory still exports, so an upgrade keeps what it learned.
    readable = (2, *READABLE_SNAPSHOT_SCHEMAS)
    out: list[ShardModel] = []
    for key, (epoch, blob) in sorted(_newest_snapshots(Path(recovery_dir)).items()):
        snap: Any = pickle.loads(blob)
        if getattr(snap, "schema_version", None) not in readable:
            raise SnapshotMismatchError(
                f"shard {key} in {recovery_dir} has snapshot schema "
                f"{getattr(snap, 'schema_version', '?')}, this version exports models "
                f"from schemas {', '.join(map(str, readable))}"
            )
        state = pickle.loads(snap.state)
        holder = state["model"]
        model = getattr(holder, "champion", holder)
        if not isinstance(model, IntentModel):
            raise RecoveryError(f"shard {key} in {recovery_dir} holds no intent model")
        out.append(ShardModel(key, int(epoch), snap.spec_hash, model))
    if not out:
        raise RecoveryError(
            f"{recovery_dir} holds no engine snapshot yet: let the engine run past its "
            "first snapshot (--snapshot-interval) and try again"
        )
    return out


def _fmt(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "-"


def cmd_export(args: argparse.Namespace) -> int:
    """Write the best (or the chosen) shard's model to a model file."""
    shards = read_shard_models(args.recovery_dir)
    if args.shard:
        chosen = [s for s in shards if s.shard == args.shard]
        if not chosen:
            known = ", ".join(s.shard for s in shards)
            raise RecoveryError(f"--shard {args.shard}: no such shard (found: {known})")
        best = chosen[0]
    else:
        best = max(shards, key=lambda s: (s.model.n_learned, s.shard))
    for s in shards:
        m = s.model.metrics()
        mark = "*" if s is best else " "
        print(
            f"{mark} shard {s.shard}: {s.model.version}  labels {s.model.n_learned}  "
            f"auc {_fmt(m['auc'])}  log loss {_fmt(m['log_loss'])}"
        )
    header = write_model_file(
        args.path,
        best.model,
        source=f"{args.recovery_dir} shard {best.shard} epoch {best.epoch}",
    )
    print(f"exported {header.version} (feature spec {header.spec_hash[:8]}) to {args.path}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Check that a model file fits the configuration, and say how to start from it."""
    from intentflow.dataflows.flow import engine_parts

    header = read_header(args.path)
    config = config_from_args(args)
    parts = engine_parts(config)
    model = load_model_file(args.path, spec_hash=parts.spec.spec_hash, config=parts.model)
    m = model.metrics()
    print(
        f"{args.path}: {model.version}, {model.n_learned} labels, auc {_fmt(m['auc'])}, "
        f"exported {header.exported_at} from {header.source}"
    )
    print("it fits this configuration (feature spec and model kind).")
    print(
        f"start from it with: intentflow run --model-file {args.path}"
        " (fresh shards only; shards restored from a recovery directory keep their model)"
    )
    return 0

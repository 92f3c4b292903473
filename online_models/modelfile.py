"""Model files: a trained intent model, exported to warm-start other runs.

A model file is versioned and self-describing::

    INTENTFLOW-MODEL\\n
    {"format": 1, "kind": "logreg", "spec_hash": "...", ...}\\n   (one JSON line)
    <pickle of the IntentModel>

The JSON header is read and checked *before* anything is unpickled: the
format version, the model kind, the feature-spec hash (a model trained on
other features is refused with a clear message) and the SHA-256 of the
payload. Only then is the payload unpickled. A model file is a pickle: load
only files you trust, as for a recovery directory.

>>> import tempfile, numpy as np
>>> model = IntentModel(ModelConfig(warmup_labels=2), spec_hash="ab" * 16)
>>> _ = model.learn_batch(np.array([[1.0], [0.0]]), np.array([True, False]), ("x",))
>>> path = Path(tempfile.mkdtemp()) / "m.intentflow-model"
>>> write_model_file(path, model, source="doctest").kind
'logreg'
>>> load_model_file(path, spec_hash="ab" * 16).version == model.version
True
>>> load_model_file(path, spec_hash="cd" * 16)
Traceback (most recent call last):
...
intentflow.errors.SnapshotMismatchError: model file ... was trained on feature spec abab...
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from intentflow import __version__
from intentflow.errors import ConfigError, SnapshotMismatchError
from intentflow.online_models.model import IntentModel, ModelConfig

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "ModelFileHeader",
    "load_model_file",
    "read_header",
    "write_model_file",
]

#: First line of every model file.
MAGIC: Final[bytes] = b"INTENTFLOW-MODEL\n"
#: Version of the file layout and header; a reader refuses other versions.
FORMAT_VERSION: Final[int] = 1
_MAX_HEADER: Final[int] = 1 << 20


@dataclass(frozen=True)
class ModelFileHeader:
    """The JSON header of a model file."""

    format: int
    kind: str
    version: str
    spec_hash: str
    feature_names: tuple[str, ...]
    n_learned: int
    metrics: dict[str, float | None]
    exported_at: str
    source: str
    intentflow: str
    payload_sha256: str


def write_model_file(
    path: str | os.PathLike[str], model: IntentModel, *, source: str
) -> ModelFileHeader:
    """Write ``model`` to ``path`` (atomically: a temporary file, then a rename)."""
    if not model.feature_spec_hash or model.feature_names is None:
        raise ConfigError("the model has never seen a feature row: there is nothing to export")
    payload = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    metrics = {k: (v if math.isfinite(v) else None) for k, v in model.metrics().items()}
    header = ModelFileHeader(
        format=FORMAT_VERSION,
        kind=model.config.kind,
        version=model.version,
        spec_hash=model.feature_spec_hash,
        feature_names=model.feature_names,
        n_learned=model.n_learned,
        metrics=metrics,
        exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
        source=source,
        intentflow=__version__,
        payload_sha256=hashlib.sha256(payload).hexdigest(),
    )
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(MAGIC)
        fh.write(orjson.dumps(asdict(header)))
        fh.write(b"\n")
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return header


def _split(path: Path) -> tuple[ModelFileHeader, bytes]:
    try:
        blob = path.read_bytes()
    except FileNotFoundError as err:
        raise ConfigError(f"model file {path} does not exist") from err
    if not blob.startswith(MAGIC):
        raise ConfigError(
            f"{path} is not an intentflow model file (it does not start with {MAGIC!r})"
        )
    end = blob.find(b"\n", len(MAGIC), len(MAGIC) + _MAX_HEADER)
    if end < 0:
        raise ConfigError(f"model file {path}: the header line is missing or too long")
    try:
        raw: Any = orjson.loads(blob[len(MAGIC) : end])
    except orjson.JSONDecodeError as err:
        raise ConfigError(f"model file {path}: the header is not JSON ({err})") from err
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise SnapshotMismatchError(
            f"model file {path} has format {found!r}; this version reads format "
            f"{FORMAT_VERSION}: export the model again with this version"
        )
    try:
        raw["feature_names"] = tuple(raw["feature_names"])
        header = ModelFileHeader(**raw)
    except (TypeError, KeyError) as err:
        raise ConfigError(f"model file {path}: the header is incomplete ({err})") from err
    return header, blob[end + 1 :]


def read_header(path: str | os.PathLike[str]) -> ModelFileHeader:
    """The header of a model file (nothing is unpickled)."""
    return _split(Path(path))[0]


def load_model_file(
    path: str | os.PathLike[str], *, spec_hash: str, config: ModelConfig | None = None
) -> IntentModel:
    """Load the model of ``path`` after checking it fits ``spec_hash`` (and ``config.kind``).

    Raises :class:`~intentflow.errors.SnapshotMismatchError` on a feature-spec
    or kind mismatch, :class:`~intentflow.errors.ConfigError` on a damaged file.
    """
    p = Path(path)
    header, payload = _split(p)
    if header.spec_hash != spec_hash:
        raise SnapshotMismatchError(
            f"model file {p} was trained on feature spec {header.spec_hash}, the configuration "
            f"has feature spec {spec_hash}: export a model trained with the current [features], "
            "or run with the features the model was trained on"
        )
    if config is not None and header.kind != config.kind:
        raise SnapshotMismatchError(
            f"model file {p} holds a {header.kind!r} model, the configuration asks for "
            f"{config.kind!r}: set model.kind = {header.kind!r} or export a {config.kind!r} model"
        )
    if hashlib.sha256(payload).hexdigest() != header.payload_sha256:
        raise ConfigError(f"model file {p} is damaged: its payload does not match its checksum")
    model = pickle.loads(payload)
    if not isinstance(model, IntentModel):
        raise ConfigError(f"model file {p} does not hold an intent model")
    if model.feature_spec_hash != header.spec_hash:
        raise ConfigError(f"model file {p}: the header and the model disagree on the feature spec")
    return model

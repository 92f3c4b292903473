"""Memory per active entity and resident memory at 1 million entities.

The measurement runs in a child process (``python -m bench.memory``), so that
nothing the benchmark process holds (its Redis clients, the figures of other
phases) is counted. The child builds one engine shard
(:class:`~intentflow.dataflows.logic.ShardLogic`, the demo settings) and

1. warms it up with :data:`WARMUP_ENTITIES` entities of its own (the Numba
   kernels are loaded, the arrays exist), collects garbage and reads its
   resident set (``VmRSS`` in ``/proc/self/status``): the baseline;
2. feeds it ``entities`` distinct entities, one event each, in batches of
   ``batch`` events, through :meth:`ShardLogic.on_batch` (de-duplication,
   features, labels, scoring, decisions: all the state an entity brings);
3. collects garbage and reads ``VmRSS`` (and the peak, ``VmHWM``) again.

``bytes_per_entity`` = (RSS at the end − baseline) / entities;
``rss_mb`` is the child's whole resident set at the end (interpreter,
libraries and the state of every entity), in MiB (2^20 bytes).

The events are synthetic: entity ``m-0000042`` of account ``ma-000010``
(four contacts per account, as in the buyer-journey generator), cycling
through page views of pricing and product pages, email opens, cart adds
and form submissions, 1 ms of event time apart (1M entities span about 17
minutes of event time: every event id stays in the de-duplication window,
and the decision points of the last label horizon are pending). The model
is frozen (``model.learn = false``): learning would take minutes at 1M
rows without changing the state an entity adds (the model's size does not
depend on the number of entities).
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import orjson

from bench.common import DEMO_CONFIG, BenchError
from intentflow.config import load_config
from intentflow.dataflows.flow import engine_parts
from intentflow.dataflows.logic import ShardLogic
from intentflow.events import Event

__all__ = [
    "WARMUP_ENTITIES",
    "MemoryChild",
    "MemoryFigures",
    "measure_memory",
    "rss_bytes",
    "synthetic_events",
]

#: Entities processed before the baseline is read.
WARMUP_ENTITIES: Final = 2_000
ROOT: Final = Path(__file__).resolve().parents[1]
_START_MS: Final = 1_767_225_600_000  # 2026-01-01T00:00:00Z
_KINDS: Final[tuple[tuple[str, dict[str, Any]], ...]] = (
    ("page_view", {"page": "/pricing", "category": "pricing", "duration_s": 95}),
    ("page_view", {"page": "/product/a", "category": "product", "duration_s": 40}),
    ("email_open", {"campaign": "q4"}),
    ("cart_add", {"sku": "plan-pro", "price": 490.0}),
    ("form_submit", {"form": "demo_request"}),
)


def rss_bytes(field: str = "VmRSS") -> int:
    """A memory figure of this process from ``/proc/self/status`` (bytes; Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"{field} not found in /proc/self/status")


def synthetic_events(first: int, n: int, prefix: str = "m") -> list[Event]:
    """Events of entities ``first .. first + n - 1``, one each, 1 ms of event time apart.

    >>> [(e.entity_id, e.account_id, e.type) for e in synthetic_events(4, 2)]
    [('m-0000004', 'ma-000001', 'form_submit'), ('m-0000005', 'ma-000001', 'page_view')]
    """
    out = []
    for i in range(first, first + n):
        etype, props = _KINDS[i % len(_KINDS)]
        out.append(
            Event(
                event_id=f"{prefix}{i}",
                ts_ms=_START_MS + i,
                entity_id=f"{prefix}-{i:07d}",
                type=etype,
                account_id=f"{prefix}a-{i // 4:06d}",
                props=dict(props),
            )
        )
    return out


def _child(entities: int, batch: int) -> dict[str, Any]:
    """The measurement itself (runs in the child process)."""
    cfg = load_config(DEMO_CONFIG, env={})
    parts = engine_parts(cfg)
    parts = replace(parts, model=replace(parts.model, learn=False))
    logic = ShardLogic(parts, None)
    for i in range(0, WARMUP_ENTITIES, batch):
        logic.on_batch(synthetic_events(i, min(batch, WARMUP_ENTITIES - i), prefix="w"))
    gc.collect()
    base = rss_bytes()
    t0 = time.perf_counter()
    for i in range(0, entities, batch):
        logic.on_batch(synthetic_events(i, min(batch, entities - i)))
    seconds = time.perf_counter() - t0
    gc.collect()
    end = rss_bytes()
    feats = logic.features
    return {
        "entities": entities,
        "batch": batch,
        "rss_base_mb": base / 2**20,
        "rss_mb": end / 2**20,
        "rss_peak_mb": rss_bytes("VmHWM") / 2**20,
        "bytes_per_entity": (end - base) / entities,
        "feature_row_bytes": feats.bytes_per_entity,
        "feature_bytes_per_entity": feats.nbytes / max(1, feats.n_entities),
        "entities_held": feats.n_entities,
        "accounts_held": feats.n_accounts,
        "dedup_ids": len(logic.seen),
        "pending_labels": logic.labels.n_pending,
        "seconds": seconds,
    }


@dataclass(frozen=True)
class MemoryFigures:
    """What the child measured (see the module docstring); ``extrapolated`` for < 1M."""

    figures: dict[str, Any]

    @property
    def bytes_per_entity(self) -> float:
        return float(self.figures["bytes_per_entity"])

    @property
    def rss_1m_entities_mb(self) -> float:
        """RSS at 1M entities: measured when ``entities`` >= 1M, else extrapolated."""
        f = self.figures
        if f["entities"] >= 1_000_000:
            return float(f["rss_mb"])
        return float(f["rss_base_mb"]) + 1_000_000 * self.bytes_per_entity / 2**20

    @property
    def extrapolated(self) -> bool:
        return int(self.figures["entities"]) < 1_000_000


class MemoryChild:
    """``python -m bench.memory`` as a child process: :meth:`start`, then :meth:`result`."""

    def __init__(self, entities: int, *, batch: int = 10_000) -> None:
        if entities < 1 or batch < 1:
            raise BenchError("memory: entities and batch must be positive")
        self.entities = entities
        self.batch = batch
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MemoryChild:
        cmd = [sys.executable, "-m", "bench.memory", "--entities", str(self.entities)]
        cmd += ["--batch", str(self.batch)]
        self._proc = subprocess.Popen(
            cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        return self

    def result(self, timeout_s: float = 900.0) -> MemoryFigures:
        """Wait for the child and return its figures."""
        proc = self._proc if self._proc is not None else self.start()._proc
        assert proc is not None
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.communicate()
            raise BenchError(f"memory: the child took longer than {timeout_s:.0f} s") from exc
        if proc.returncode != 0:
            tail = err.decode(errors="replace")[-2000:]
            raise BenchError(f"memory: the child exited with code {proc.returncode}:\n{tail}")
        return MemoryFigures(orjson.loads(out.strip().splitlines()[-1]))

    def stop(self) -> None:
        """Kill the child if it is still running (the benchmark failed elsewhere)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()


def measure_memory(
    entities: int, *, batch: int = 10_000, timeout_s: float = 900.0
) -> MemoryFigures:
    """Run the child process to its end and return its figures."""
    return MemoryChild(entities, batch=batch).start().result(timeout_s)


def main(argv: list[str] | None = None) -> int:
    """Child entry point: print the figures as one JSON line."""
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    p.add_argument("--entities", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=10_000)
    args = p.parse_args(argv)
    sys.stdout.write(orjson.dumps(_child(args.entities, args.batch)).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Output records of the dataflow and the interface of the writers that deliver them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from bytewax.outputs import Sink

__all__ = [
    "AlertOut",
    "DeadLetterOut",
    "Output",
    "OutputSink",
    "OutputWriter",
    "Record",
    "ScoreOut",
    "ScoresOut",
    "records",
]


@dataclass(slots=True)
class AlertOut:
    """An alert document.

    ``alert["alert_id"]`` is a deterministic string id (the same alert
    recomputed after a replay has the same id); ``alert["entity_id"]`` is a
    string. The rest of the document is JSON-able.
    """

    alert: dict[str, Any]


@dataclass(slots=True)
class ScoreOut:
    """The latest intent score of an entity (event time ``ts_ms``, epoch ms)."""

    entity_id: str
    score: float
    ts_ms: int
    model: str


@dataclass(slots=True)
class ScoresOut:
    """The latest intent scores of many entities: ``latest[entity_id] = (score, ts_ms, model)``.

    What a shard emits for a batch: one record, not one object per entity.
    Iterating gives the same scores as :class:`ScoreOut` records, in order.

    >>> [s.entity_id for s in ScoresOut({"c-1": (0.5, 1, "v1"), "c-2": (0.75, 2, "v1")})]
    ['c-1', 'c-2']
    """

    latest: dict[str, tuple[float, int, str]]

    def __iter__(self) -> Iterator[ScoreOut]:
        return (ScoreOut(e, s, t, m) for e, (s, t, m) in self.latest.items())

    def __len__(self) -> int:
        return len(self.latest)


@dataclass(slots=True)
class DeadLetterOut:
    """A dead-letter record: a JSON-able dict describing an input that was rejected."""

    record: dict[str, Any]


Output: TypeAlias = AlertOut | ScoreOut | ScoresOut | DeadLetterOut
#: What the flow's output step accepts: a sink of outputs, or a partitioned sink of
#: ``(key, output)`` pairs (the flow keys its outputs for it).
OutputSink: TypeAlias = "Sink[Output] | Sink[tuple[str, Output]]"
#: One output record: an :data:`Output` with every :class:`ScoresOut` taken apart.
Record: TypeAlias = AlertOut | ScoreOut | DeadLetterOut


def records(items: Iterable[Output]) -> list[Record]:
    """``items`` in order, each :class:`ScoresOut` replaced by its :class:`ScoreOut` records.

    >>> records([ScoresOut({"c-1": (0.5, 1, "v1")}), DeadLetterOut({})])
    [ScoreOut(entity_id='c-1', score=0.5, ts_ms=1, model='v1'), DeadLetterOut(record={})]
    """
    out: list[Record] = []
    for item in items:
        if isinstance(item, ScoresOut):
            out.extend(item)
        else:
            out.append(item)
    return out


class OutputWriter(ABC):
    """Delivers batches of :data:`Output` records to one destination.

    Implementations must accept the same batch more than once (the dataflow's
    output is at-least-once) and should make such replays harmless.
    """

    @abstractmethod
    def write_batch(self, items: list[Output]) -> None:
        """Write ``items`` in order; raise :class:`~intentflow.errors.SinkError` on failure."""

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release connections and files; the writer is not used afterwards."""

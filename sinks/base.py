"""Output records of the dataflow and the interface of the writers that deliver them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = ["AlertOut", "DeadLetterOut", "Output", "OutputWriter", "ScoreOut"]


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
class DeadLetterOut:
    """A dead-letter record: a JSON-able dict describing an input that was rejected."""

    record: dict[str, Any]


Output: TypeAlias = AlertOut | ScoreOut | DeadLetterOut


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

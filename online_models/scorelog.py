"""The score log: every scored event with its score and model version, for offline evaluation.

Optional (``intentflow run --score-log PATH``, ``output.score_log``). The
engine emits one :class:`ScoreLogBatch` per scoring segment (never one record
per event), and a sink writes one entry per event::

    {"event_id": "e-17", "entity_id": "c-000123", "ts": 1767225612345,
     "score": 0.8123, "model": "logreg-1a2b3c4d-n1520"}

to a JSONL file (``PATH``; with several workers ``PATH.{worker}``) or to a
Redis stream (``redis:STREAM``, field ``score``, approximate ``MAXLEN``).
Output is at-least-once, like every output: after a recovery replay an
entry can appear twice; ``event_id`` identifies it.

>>> batch = ScoreLogBatch("logreg-x-n1", ["e1"], ["c-1"], [5], [0.25])
>>> list(batch.lines())
[b'{"event_id":"e1","entity_id":"c-1","ts":5,"score":0.25,"model":"logreg-x-n1"}']
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from numpy.typing import NDArray

from intentflow.errors import ConfigError
from intentflow.events import Event
from intentflow.online_models.model import ModelConfig

__all__ = [
    "REDIS_PREFIX",
    "JsonlScoreLog",
    "RedisScoreLog",
    "ScoreLogBatch",
    "make_score_log",
]

#: A score log target starting with this is a Redis stream key.
REDIS_PREFIX: Final[str] = "redis:"


def _not_outcome(event_type: str) -> bool:
    return event_type != "outcome"


@dataclass(slots=True)
class ScoreLogBatch:
    """The scores of one segment of one shard (all scored by ``model``)."""

    model: str
    event_ids: list[str]
    entity_ids: list[str]
    ts_ms: list[int]
    scores: list[float]

    @classmethod
    def of(
        cls,
        events: Sequence[Event],
        a: int,
        b: int,
        scores: NDArray[np.float64],
        model: str,
        config: ModelConfig | None = None,
    ) -> ScoreLogBatch:
        """The batch of events ``a:b`` scored ``scores``: the scored types only (see
        ``ModelConfig.score_types``; outcome events are never scored)."""
        seg = events[a:b]
        is_scored = config.is_scored if config is not None else _not_outcome
        keep = [j for j, ev in enumerate(seg) if is_scored(ev.type)]
        values = np.round(np.asarray(scores, dtype=np.float64)[keep], 6).tolist()
        return cls(
            model,
            [seg[j].event_id for j in keep],
            [seg[j].entity_id for j in keep],
            [seg[j].ts_ms for j in keep],
            values,
        )

    def lines(self) -> Iterator[bytes]:
        """One JSON document per scored event."""
        model = self.model
        for eid, ent, ts, score in zip(
            self.event_ids, self.entity_ids, self.ts_ms, self.scores, strict=True
        ):
            yield orjson.dumps(
                {"event_id": eid, "entity_id": ent, "ts": ts, "score": score, "model": model}
            )


class _JsonlPartition(StatelessSinkPartition[ScoreLogBatch]):
    def __init__(self, path: Path) -> None:
        self._fh: IO[bytes] = path.open("ab")

    def write_batch(self, items: list[ScoreLogBatch]) -> None:
        fh = self._fh
        for batch in items:
            for line in batch.lines():
                fh.write(line)
                fh.write(b"\n")
        fh.flush()

    def close(self) -> None:
        self._fh.close()


class JsonlScoreLog(DynamicSink[ScoreLogBatch]):
    """Append score log entries to a JSONL file (``PATH``, or ``PATH.{worker}``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ConfigError(f"output.score_log: directory {self.path.parent} does not exist")

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _JsonlPartition:
        path = self.path if worker_count == 1 else Path(f"{self.path}.{worker_index}")
        return _JsonlPartition(path)


class _RedisPartition(StatelessSinkPartition[ScoreLogBatch]):
    def __init__(self, url: str, stream: str, maxlen: int) -> None:
        from intentflow.redisutil import connect

        self._client = connect(url)
        self._stream = stream
        self._maxlen = maxlen

    def write_batch(self, items: list[ScoreLogBatch]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for batch in items:
            for line in batch.lines():
                pipe.xadd(self._stream, {"score": line}, maxlen=self._maxlen, approximate=True)
        pipe.execute()

    def close(self) -> None:
        self._client.close()


class RedisScoreLog(DynamicSink[ScoreLogBatch]):
    """Add score log entries to a Redis stream (field ``score``)."""

    def __init__(self, url: str, stream: str, maxlen: int = 10_000_000) -> None:
        if not stream:
            raise ConfigError("output.score_log: give a stream name after 'redis:'")
        self.url = url
        self.stream = stream
        self.maxlen = maxlen

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        return _RedisPartition(self.url, self.stream, self.maxlen)


def make_score_log(target: str, redis_url: str) -> DynamicSink[Any]:
    """The score log sink for ``target``: ``redis:STREAM`` or a file path."""
    if target.startswith(REDIS_PREFIX):
        return RedisScoreLog(redis_url, target[len(REDIS_PREFIX) :])
    return JsonlScoreLog(target)

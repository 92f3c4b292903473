"""The Kafka alert sink: alerts, latest scores and dead letters as Kafka records.

Every record's delivery report is checked: :meth:`KafkaOutputWriter.write_batch`
returns only when the brokers acknowledged every record of the batch
(``acks=all``, idempotent producer, so librdkafka's own retries neither
duplicate nor reorder). A record that is not acknowledged within
``delivery_timeout_s`` (librdkafka retries until then) makes the batch fail
with a :class:`~intentflow.errors.SinkError`, which stops the flow; a restart
resumes from the last snapshot and writes the batch again. Delivery is
therefore at-least-once: consumers drop repeats by ``alert_id`` (also in the
record's ``alert_id`` header).

Records (see ``docs/scaling.md``):

* alerts: topic ``alerts_topic``, key = ``entity_id`` (an entity's alerts stay
  in order on one partition), value = the alert JSON;
* latest scores: topic ``scores_topic`` (meant to be compacted), key =
  ``entity_id``, value = ``{"entity_id", "score", "ts", "model"}``; only the
  last score of an entity in a batch is sent; empty topic name: not sent;
* dead letters: topic ``dlq_topic``, no key, value = the dead-letter JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Producer

from intentflow.config import Config
from intentflow.errors import SinkError
from intentflow.metrics import EngineMetrics, SinkObserver
from intentflow.sinks import base
from intentflow.sinks.base import AlertOut, DeadLetterOut, Output, OutputWriter, ScoreOut

__all__ = [
    "KafkaOutputWriter",
    "KafkaSink",
    "KafkaSinkConfig",
    "KafkaSinkPartition",
    "make_kafka_sink",
]

# One prepared record: (kind, topic, key, value, headers).
_Record = tuple[str, str, bytes | None, bytes, list[tuple[str, str | bytes | None]]]


@dataclass(frozen=True)
class KafkaSinkConfig:
    """Where and how the Kafka sink writes."""

    brokers: str
    alerts_topic: str = "intentflow-alerts"
    scores_topic: str = "intentflow-scores"
    dlq_topic: str = "intentflow-dlq"
    delivery_timeout_s: float = 30.0
    properties: Mapping[str, str] = field(default_factory=dict, repr=False)

    def producer_config(self) -> dict[str, Any]:
        """librdkafka settings: idempotent, ``acks=all``, bounded delivery time."""
        return {
            "bootstrap.servers": self.brokers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": max(1, int(self.delivery_timeout_s * 1000)),
            **self.properties,
        }


class KafkaOutputWriter(OutputWriter):
    """Writes :data:`~intentflow.sinks.base.Output` batches to Kafka and checks every delivery.

    Counters (plain attributes, as for the Redis writer): ``alerts_written``,
    ``alerts_duplicate`` (always 0: Kafka cannot tell), ``scores_written``,
    ``dead_letters_written``, ``delivery_failures`` (records not
    acknowledged), ``retries`` (0: librdkafka retries inside the delivery
    timeout), ``batches``, ``last_batch_latency_s``, ``backoff_s`` and
    ``connected`` (``None`` before the first batch, then whether the last
    batch was acknowledged).
    """

    def __init__(
        self,
        config: KafkaSinkConfig,
        *,
        producer_factory: Callable[[dict[str, Any]], Producer] = Producer,
    ) -> None:
        self.config = config
        self._factory = producer_factory
        self._producer: Producer | None = None
        self.alerts_written = 0
        self.alerts_duplicate = 0
        self.scores_written = 0
        self.dead_letters_written = 0
        self.delivery_failures = 0
        self.retries = 0
        self.batches = 0
        self.last_batch_latency_s = 0.0
        self.backoff_s = 0.0
        self.connected: bool | None = None

    def _prepare(self, batch: list[Output]) -> list[_Record]:
        cfg = self.config
        items = base.records(batch)  # one message per score
        last_score_at = {
            item.entity_id: i for i, item in enumerate(items) if isinstance(item, ScoreOut)
        }
        records: list[_Record] = []
        for i, item in enumerate(items):
            if isinstance(item, AlertOut):
                alert_id = item.alert.get("alert_id")
                if not isinstance(alert_id, str) or not alert_id:
                    raise ValueError(f"alert without a non-empty string alert_id: {item.alert!r}")
                entity = str(item.alert.get("entity_id", "")).encode() or None
                headers: list[tuple[str, str | bytes | None]] = [("alert_id", alert_id.encode())]
                value = orjson.dumps(item.alert)
                records.append(("alert", cfg.alerts_topic, entity, value, headers))
            elif isinstance(item, ScoreOut):
                if not cfg.scores_topic or last_score_at[item.entity_id] != i:
                    continue
                value = orjson.dumps(
                    {
                        "entity_id": item.entity_id,
                        "score": float(item.score),
                        "ts": int(item.ts_ms),
                        "model": item.model,
                    }
                )
                records.append(("score", cfg.scores_topic, item.entity_id.encode(), value, []))
            elif isinstance(item, DeadLetterOut):
                records.append(("dlq", cfg.dlq_topic, None, orjson.dumps(item.record), []))
            else:
                raise TypeError(f"not an output record: {type(item).__name__}")
        return records

    def write_batch(self, items: list[Output]) -> None:
        """Produce ``items`` and wait until Kafka acknowledged each of them.

        Raises :class:`~intentflow.errors.SinkError` naming the first failed
        delivery (or the producer error) when any record was not acknowledged.
        """
        if not items:
            return
        started = time.perf_counter()
        records = self._prepare(items)
        if self._producer is None:
            self._producer = self._factory(self.config.producer_config())
        producer = self._producer
        failed: list[KafkaError] = []
        acked = {"alert": 0, "score": 0, "dlq": 0}

        def report(kind: str) -> Callable[[KafkaError | None, Any], None]:
            def on_delivery(err: KafkaError | None, _msg: Any) -> None:
                if err is None:
                    acked[kind] += 1
                else:
                    failed.append(err)

            return on_delivery

        callbacks = {kind: report(kind) for kind in acked}
        for kind, topic, key, value, headers in records:
            while True:
                try:
                    producer.produce(
                        topic, value=value, key=key, headers=headers, on_delivery=callbacks[kind]
                    )
                    break
                except BufferError:
                    producer.poll(0.05)  # the local queue is full: serve delivery reports
                except KafkaException as exc:
                    self.connected = False
                    raise SinkError(
                        f"Kafka producer refused a {kind} record for topic {topic!r}: {exc}"
                    ) from exc
            producer.poll(0)
        left = producer.flush(self.config.delivery_timeout_s + 5.0)
        self.alerts_written += acked["alert"]
        self.scores_written += acked["score"]
        self.dead_letters_written += acked["dlq"]
        if failed or left:
            self.delivery_failures += len(failed) + left
            self.connected = False
            first = failed[0].str() if failed else "no delivery report in time"
            raise SinkError(
                f"Kafka did not acknowledge {len(failed) + left} of {len(records)} records of a "
                f"batch at {self.config.brokers} (first error: {first}); the flow stops so "
                "that a restart writes the batch again from the last snapshot"
            )
        self.connected = True
        self.batches += 1
        self.last_batch_latency_s = time.perf_counter() - started

    def close(self) -> None:
        """Deliver what is still queued (bounded by the delivery timeout)."""
        if self._producer is not None:
            self._producer.flush(self.config.delivery_timeout_s)
            self._producer = None

    def __repr__(self) -> str:
        return (
            f"KafkaOutputWriter({self.config.brokers}, batches={self.batches},"
            f" alerts_written={self.alerts_written}, failures={self.delivery_failures})"
        )


class KafkaSinkPartition(StatelessSinkPartition[Output]):
    """The per-worker partition of :class:`KafkaSink`; ``writer`` exposes the counters."""

    def __init__(self, writer: KafkaOutputWriter, observer: SinkObserver | None = None) -> None:
        self.writer = writer
        self.observer = observer or SinkObserver()

    def write_batch(self, items: list[Output]) -> None:
        """Deliver one Bytewax batch through the writer."""
        try:
            self.writer.write_batch(items)
        except Exception:
            self.observer.failed(self.writer)
            raise
        self.observer.delivered(items, self.writer)

    def close(self) -> None:
        """Flush the producer."""
        self.writer.close()


class KafkaSink(DynamicSink[Output]):
    """Bytewax sink writing alerts, scores and dead letters to Kafka from every worker."""

    def __init__(self, config: KafkaSinkConfig, metrics: EngineMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or EngineMetrics()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> KafkaSinkPartition:
        """A partition with its own producer (created on the first batch)."""
        return KafkaSinkPartition(KafkaOutputWriter(self.config), self.metrics.sink())


def make_kafka_sink(config: Config, metrics: EngineMetrics | None = None) -> KafkaSink:
    """The Kafka sink of ``config`` (``[kafka]``)."""
    from intentflow.dataflows.kafka import brokers_of, read_properties

    k = config.kafka
    return KafkaSink(
        KafkaSinkConfig(
            brokers=",".join(brokers_of(config)),
            alerts_topic=k.alerts_topic,
            scores_topic=k.scores_topic,
            dlq_topic=k.dlq_topic,
            delivery_timeout_s=k.delivery_timeout_s,
            properties=read_properties(k.properties) if k.properties else {},
        ),
        metrics,
    )

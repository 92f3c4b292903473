"""Kafka input: topic partitions as Bytewax partitions, offsets in recovery state.

:class:`KafkaEventSource` reads one topic through Bytewax's Kafka connector
(``bytewax.connectors.kafka``, confluent-kafka/librdkafka): partition ``i``
of the topic is Bytewax input partition ``i``, read with ``assign`` (no
consumer group), and the offset to read next is the partition's Bytewax
state, so a resumed run reads exactly what its snapshot had not covered. Its
records become the engine's :class:`~intentflow.dataflows.sources.RawItem`.

Producers route an account (else an entity) to partition
``partition_for(key, partitions)``, the function that also picks its shard;
:class:`KafkaEventProducer` does that. See ``docs/scaling.md``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from bytewax.connectors.kafka import KafkaSource, KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from intentflow.config import Config
from intentflow.dataflows.sources import RawItem, partition_for
from intentflow.errors import ConfigError, IntentflowError

__all__ = [
    "KafkaEventProducer",
    "KafkaEventSource",
    "brokers_of",
    "kafka_source",
    "read_properties",
    "route_payload",
]

log = logging.getLogger(__name__)

#: librdkafka timestamp type of a producer-set (create) time.
_CREATE_TIME = 1


def read_properties(path: str | Path) -> dict[str, str]:
    """A Kafka client properties file: ``key=value`` lines, ``#`` comments.

    Keeps security settings (``security.protocol``, ``sasl.*``, ``ssl.*``)
    and their secrets out of the configuration file.
    """
    props: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"kafka.properties: cannot read {path}: {err}") from err
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"kafka.properties: {path}:{n}: expected key=value")
        props[key.strip()] = value.strip()
    return props


def brokers_of(config: Config) -> list[str]:
    """``kafka.brokers`` as a list; a clear error when it is empty."""
    brokers = [b.strip() for b in config.kafka.brokers.split(",") if b.strip()]
    if not brokers:
        raise ConfigError("kafka.brokers: required for Kafka input or output (host:port,...)")
    return brokers


class _KafkaEventPartition(StatefulSourcePartition[RawItem, int | None]):
    """One topic partition: Bytewax's partition reader, its records as RawItems."""

    def __init__(
        self,
        inner: StatefulSourcePartition[Any, int | None],
        label: str,
        count: int,
        duration_s: float,
    ) -> None:
        self._inner = inner
        self._label = label
        self._remaining = count if count > 0 else None
        self._deadline = time.monotonic() + duration_s if duration_s > 0 else None

    def next_batch(self) -> list[RawItem]:
        if self._remaining is not None and self._remaining <= 0:
            raise StopIteration
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise StopIteration
        msgs: Any = self._inner.next_batch()
        now = time.time() * 1000.0
        label = self._label
        items = [RawItem(label, str(m.offset), m.value, now, _produced_ts(m)) for m in msgs]
        if self._remaining is not None:
            self._remaining -= len(items)  # whole batches: nothing read is ever dropped
        return items

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()

    def snapshot(self) -> int | None:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


def _produced_ts(msg: KafkaSourceMessage[bytes | None, bytes | None]) -> float | None:
    """The producer's send time (epoch ms): a ``produced_ts`` header, else a create time."""
    for key, value in msg.headers or ():
        if key == "produced_ts" and value is not None:
            try:
                return float(value)
            except ValueError:
                break
    if msg.timestamp is not None and msg.timestamp[0] == _CREATE_TIME and msg.timestamp[1] > 0:
        return float(msg.timestamp[1])
    return None


class KafkaEventSource(FixedPartitionedSource[RawItem, int | None]):
    """Read ``topic``, one Bytewax partition per topic partition, in partition order.

    ``partitions`` is the number of partitions the topic must have (one per
    shard with affinity). ``tail=False`` stops at the end of every partition
    (replays, tests); ``count`` stops a partition after at least that many
    records (whole batches) and ``duration_s`` after that many seconds.
    A consumer error stops the flow (resume from the last snapshot) rather
    than skipping records.
    """

    def __init__(
        self,
        brokers: Sequence[str],
        topic: str,
        *,
        partitions: int,
        batch_size: int = 1000,
        tail: bool = True,
        properties: Mapping[str, str] | None = None,
        count: int = 0,
        duration_s: float = 0.0,
        metadata_timeout_s: float = 10.0,
    ) -> None:
        self.brokers = list(brokers)
        self.topic = topic
        self.partitions = partitions
        self.properties = dict(properties or {})
        self.count = count
        self.duration_s = duration_s
        self.metadata_timeout_s = metadata_timeout_s
        self._connector = KafkaSource(
            self.brokers,
            [topic],
            tail=tail,
            add_config=dict(self.properties),
            batch_size=batch_size,
            raise_on_errors=True,
        )

    def topic_partitions(self) -> int:
        """The topic's partition count from the brokers' metadata (bounded wait)."""
        admin = AdminClient({"bootstrap.servers": ",".join(self.brokers), **self.properties})
        try:
            meta = admin.list_topics(self.topic, timeout=self.metadata_timeout_s)
        except KafkaException as err:
            raise IntentflowError(
                f"cannot read the metadata of Kafka topic {self.topic!r} from "
                f"{','.join(self.brokers)} ({err}); check kafka.brokers and that they are up"
            ) from err
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None:
            what = topic.error.str() if topic is not None and topic.error else "not found"
            raise ConfigError(f"kafka.events_topic: topic {self.topic!r}: {what}")
        return len(topic.partitions)

    def check(self) -> None:
        """Refuse a topic whose partition count is not ``partitions``."""
        found = self.topic_partitions()
        if found != self.partitions:
            raise ConfigError(
                f"input.partitions = {self.partitions}, but Kafka topic {self.topic!r} has "
                f"{found} partition(s); they must be equal (producers route by partition)"
            )

    def list_parts(self) -> list[str]:
        """``"{i}-{topic}"`` for i in 0..partitions-1: position i is partition i."""
        return [f"{i}-{self.topic}" for i in range(self.partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _KafkaEventPartition:
        """Bytewax's partition reader for ``for_part``, from its stored offset."""
        inner = self._connector.build_part(step_id, for_part, resume_state)
        index = for_part.split("-", 1)[0]
        return _KafkaEventPartition(
            inner, f"kafka:{self.topic}:{index}", self.count, self.duration_s
        )


def kafka_source(config: Config) -> KafkaEventSource:
    """The Kafka source of ``config`` (``[kafka]`` and ``[input]``); checks the topic."""
    k, inp = config.kafka, config.input
    source = KafkaEventSource(
        brokers_of(config),
        k.events_topic,
        partitions=inp.partitions,
        batch_size=inp.batch,
        tail=k.tail,
        properties=read_properties(k.properties) if k.properties else None,
        count=inp.count,
        duration_s=inp.duration_s,
    )
    source.check()
    return source


def route_payload(payload: bytes, partitions: int, fallback: int = 0) -> int:
    """The partition of an event payload: by account, else entity; ``fallback`` if neither.

    >>> route_payload(b'{"account_id": "a-1", "entity_id": "c-9"}', 4) == partition_for("a-1", 4)
    True
    """
    try:
        obj = orjson.loads(payload)
        key = obj.get("account_id") or obj.get("entity_id")
        if isinstance(key, str) and key:
            return partition_for(key, partitions)
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return fallback % partitions


class KafkaEventProducer:
    """Sends event payloads to ``topic``, routed like the Redis producer; raises on failures.

    Each record carries the send time (epoch ms) in a ``produced_ts`` header.
    :meth:`send` waits until every record is acknowledged, else raises
    :class:`~intentflow.errors.IntentflowError` naming the first error.
    """

    def __init__(
        self,
        brokers: Sequence[str],
        topic: str,
        partitions: int,
        *,
        properties: Mapping[str, str] | None = None,
        delivery_timeout_s: float = 30.0,
    ) -> None:
        self.topic = topic
        self.partitions = partitions
        self.delivery_timeout_s = delivery_timeout_s
        self.sent = 0
        self._rr = 0
        self._producer = Producer(
            {
                "bootstrap.servers": ",".join(brokers),
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": int(delivery_timeout_s * 1000),
                **(properties or {}),
            }
        )

    def send(self, payloads: Sequence[bytes]) -> None:
        """Produce ``payloads`` and wait for their acknowledgements."""
        errors: list[KafkaError] = []

        def report(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                errors.append(err)

        now = repr(time.time() * 1000.0).encode()
        for p in payloads:
            self._rr += 1
            part = route_payload(p, self.partitions, self._rr)
            while True:
                try:
                    self._producer.produce(
                        self.topic,
                        value=p,
                        partition=part,
                        headers=[("produced_ts", now)],
                        on_delivery=report,
                    )
                    break
                except BufferError:
                    self._producer.poll(0.05)  # the local queue is full: let deliveries drain
        left = self._producer.flush(self.delivery_timeout_s + 5.0)
        if errors or left:
            first = errors[0].str() if errors else "no acknowledgement in time"
            raise IntentflowError(
                f"Kafka did not take {len(errors) + left} of {len(payloads)} events for topic "
                f"{self.topic!r} ({first})"
            )
        self.sent += len(payloads)

    def close(self) -> None:
        """Deliver what is queued."""
        self._producer.flush(self.delivery_timeout_s)

"""Kafka input and alert sink against librdkafka's mock cluster (the real protocol on loopback).

A client configured with ``test.mock.num.brokers`` starts an in-process mock
cluster of that many brokers listening on 127.0.0.1; every other client here
connects to it over TCP like to any Kafka. The mock creates a topic on first
use with 4 partitions.
"""

from __future__ import annotations

import gc
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, run_main
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from flowkit import decisions, demo_config, gen_payloads, items_of, run_memory

from intentflow.cluster import AffinitySource, Placement, affinity_keys
from intentflow.config import Config
from intentflow.dataflows.flow import build_flow
from intentflow.dataflows.kafka import (
    KafkaEventProducer,
    KafkaEventSource,
    read_properties,
    route_payload,
)
from intentflow.dataflows.sources import RawItem, partition_for
from intentflow.errors import ConfigError, IntentflowError, SinkError
from intentflow.runtime import make_output, make_source
from intentflow.sinks.base import AlertOut, DeadLetterOut, Output, ScoreOut
from intentflow.sinks.kafka_sink import KafkaOutputWriter, KafkaSink, KafkaSinkConfig

PARTITIONS = 4  # what the mock cluster gives an auto-created topic
QUIET = {"log_level": 0}


def _mock_cluster() -> tuple[Producer, str]:
    holder = Producer({"test.mock.num.brokers": 3, **QUIET})
    brokers = holder.list_topics(timeout=10).brokers.values()
    return holder, ",".join(f"{b.host}:{b.port}" for b in brokers)


@pytest.fixture(scope="module")
def brokers() -> Iterator[str]:
    holder, bootstrap = _mock_cluster()
    yield bootstrap
    del holder
    gc.collect()


def _topic() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def consume_all(brokers: str, topic: str) -> dict[int, list[Any]]:
    """Every record of every partition of ``topic``, per partition, in order."""
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "test-reader",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
            **QUIET,
        }
    )
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    parts = sorted(meta.partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out: dict[int, list[Any]] = {p: [] for p in parts}
    open_parts = set(parts)
    deadline = time.monotonic() + 30
    while open_parts and time.monotonic() < deadline:
        for msg in consumer.consume(500, 0.5):
            err = msg.error()
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                open_parts.discard(msg.partition())
            elif err is None:
                out[msg.partition()].append(msg)
    consumer.close()
    assert not open_parts, f"partitions {open_parts} of {topic} did not reach their end"
    return out


def kafka_cfg(shards: int = PARTITIONS) -> Config:
    cfg = demo_config(short_run=True)
    return replace(cfg, engine=replace(cfg.engine, shards=shards, affinity=True))


# --- input ----------------------------------------------------------------------------------


def test_events_arrive_as_raw_items_in_partition_order(brokers: str) -> None:
    topic = _topic()
    payloads = gen_payloads(400, seed=2)
    producer = KafkaEventProducer(brokers.split(","), topic, PARTITIONS, properties=QUIET)
    t0 = time.time() * 1000
    producer.send(payloads)
    source = KafkaEventSource(brokers.split(","), topic, partitions=PARTITIONS, tail=False)
    source.check()
    assert source.list_parts() == [f"{i}-{topic}" for i in range(PARTITIONS)]
    for i, part_key in enumerate(source.list_parts()):
        part = source.build_part("in", part_key, None)
        got: list[RawItem] = []
        try:
            while True:
                got += part.next_batch()
        except StopIteration:
            pass
        finally:
            part.close()
        want = [p for p in payloads if route_payload(p, PARTITIONS) == i]
        assert [item.payload for item in got] == want  # routed by account, order kept
        assert [item.offset for item in got] == [str(n) for n in range(len(want))]
        assert {item.source for item in got} <= {f"kafka:{topic}:{i}"}
        assert all(item.produced_ts is not None and item.produced_ts >= t0 - 1 for item in got)


def test_kafka_in_and_out_decides_like_the_engine_in_memory(brokers: str) -> None:
    topic, alerts_topic = _topic(), _topic()
    payloads = gen_payloads(4000, seed=8)
    expected = decisions(run_memory(kafka_cfg(), items_of(payloads)))
    assert len(expected) > 20
    KafkaEventProducer(brokers.split(","), topic, PARTITIONS, properties=QUIET).send(payloads)
    source = KafkaEventSource(brokers.split(","), topic, partitions=PARTITIONS, tail=False)
    sink = KafkaSink(
        KafkaSinkConfig(brokers, alerts_topic=alerts_topic, scores_topic="", properties=QUIET)
    )
    cfg = kafka_cfg()
    flow = build_flow(cfg, AffinitySource(source, affinity_keys(PARTITIONS), Placement()), sink)
    run_main(flow)
    records = [m for msgs in consume_all(brokers, alerts_topic).values() for m in msgs]
    docs = [orjson.loads(m.value()) for m in records]
    assert sorted((d["alert_id"], d["action"]["id"], d["score"]) for d in docs) == expected
    for m, d in zip(records, docs, strict=True):  # keyed by entity, alert_id in a header
        assert m.key() == d["entity_id"].encode()
        assert dict(m.headers())["alert_id"] == d["alert_id"].encode()


class _Counting(FixedPartitionedSource[RawItem, Any]):
    """Wraps a source and counts the items each run reads."""

    def __init__(self, inner: KafkaEventSource) -> None:
        self.inner = inner
        self.read: list[int] = []

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(
        self, step_id: str, for_part: str, resume: Any
    ) -> StatefulSourcePartition[RawItem, Any]:
        part = self.inner.build_part(step_id, for_part, resume)
        read = self.read

        class Part(StatefulSourcePartition[RawItem, Any]):
            def next_batch(self) -> list[RawItem]:
                batch = part.next_batch()
                read.append(len(batch))
                return batch

            def snapshot(self) -> Any:
                return part.snapshot()

            def close(self) -> None:
                part.close()

        return Part()


def test_offsets_are_recovery_state_so_a_resume_reads_only_new_records(
    brokers: str, tmp_path: Path
) -> None:
    topic = _topic()
    payloads = gen_payloads(3000, seed=12)
    expected = decisions(run_memory(kafka_cfg(), items_of(payloads)))
    producer = KafkaEventProducer(brokers.split(","), topic, PARTITIONS, properties=QUIET)
    rec = tmp_path / "rec"
    rec.mkdir()
    init_db_dir(rec, 1)
    out: list[Output] = []
    cfg = kafka_cfg()

    def run_once() -> int:
        src = _Counting(
            KafkaEventSource(brokers.split(","), topic, partitions=PARTITIONS, tail=False)
        )
        flow = build_flow(cfg, src, TestingSink(out))
        run_main(
            flow, epoch_interval=timedelta(milliseconds=50), recovery_config=RecoveryConfig(rec)
        )
        return sum(src.read)

    producer.send(payloads[:1700])
    assert run_once() == 1700
    producer.send(payloads[1700:])
    assert run_once() == 1300  # the stored offsets: nothing is read twice
    got = sorted(
        {
            (a.alert["alert_id"], a.alert["action"]["id"], a.alert["score"])
            for a in out
            if isinstance(a, AlertOut)
        }
    )
    assert got == expected


def test_a_topic_with_another_partition_count_is_refused(brokers: str) -> None:
    topic = _topic()
    KafkaEventProducer(brokers.split(","), topic, PARTITIONS, properties=QUIET).send(
        gen_payloads(10, seed=1)
    )
    with pytest.raises(ConfigError, match=f"has {PARTITIONS} partition"):
        KafkaEventSource(brokers.split(","), topic, partitions=2).check()


def test_unreachable_brokers_fail_clearly() -> None:
    source = KafkaEventSource(
        [_closed_port()], "t", partitions=1, properties=QUIET, metadata_timeout_s=1.0
    )
    with pytest.raises(IntentflowError, match="cannot read the metadata"):
        source.check()


def test_config_builds_the_kafka_source_and_sink(brokers: str, tmp_path: Path) -> None:
    topic = _topic()
    KafkaEventProducer(brokers.split(","), topic, PARTITIONS, properties=QUIET).send(
        gen_payloads(10, seed=1)
    )
    props = tmp_path / "client.properties"
    props.write_text("# security settings live here\nclient.id = intentflow-test\n\nlog_level=0\n")
    assert read_properties(props) == {"client.id": "intentflow-test", "log_level": "0"}
    cfg = kafka_cfg().with_overrides(
        {
            "input.source": "kafka",
            "input.partitions": PARTITIONS,
            "kafka.brokers": brokers,
            "kafka.events_topic": topic,
            "kafka.properties": str(props),
            "output.sink": "kafka",
        }
    )
    source = make_source(cfg)
    assert isinstance(source, KafkaEventSource)
    assert source.topic == topic
    assert source.properties["client.id"] == "intentflow-test"
    sink = make_output(cfg)
    assert isinstance(sink, KafkaSink)
    assert sink.config.brokers == brokers
    assert sink.config.alerts_topic == "intentflow-alerts"
    with pytest.raises(ConfigError, match=r"kafka\.brokers"):
        make_output(cfg.with_overrides({"kafka.brokers": ""}))
    bad = tmp_path / "bad.properties"
    bad.write_text("no equals sign here\n")
    with pytest.raises(ConfigError, match="key=value"):
        read_properties(bad)


# --- output ---------------------------------------------------------------------------------


def _alert(i: int, entity: str) -> AlertOut:
    return AlertOut({"alert_id": f"al-{i}", "entity_id": entity, "score": 0.5 + i / 100})


def test_sink_writes_alerts_latest_scores_and_dead_letters(brokers: str) -> None:
    names = {"alerts_topic": _topic(), "scores_topic": _topic(), "dlq_topic": _topic()}
    writer = KafkaOutputWriter(KafkaSinkConfig(brokers, properties=QUIET, **names))
    batch: list[Output] = [
        _alert(1, "c-1"),
        ScoreOut("c-1", 0.25, 1000, "m1"),
        ScoreOut("c-2", 0.5, 1001, "m1"),
        ScoreOut("c-1", 0.75, 1002, "m1"),  # the later score of c-1 wins
        DeadLetterOut({"reason": "malformed_json", "offset": "7"}),
        _alert(2, "c-2"),
    ]
    writer.write_batch(batch)
    assert (writer.alerts_written, writer.scores_written, writer.dead_letters_written) == (2, 2, 1)
    assert writer.connected is True
    assert writer.delivery_failures == 0

    alerts = [m for ms in consume_all(brokers, names["alerts_topic"]).values() for m in ms]
    assert sorted(orjson.loads(m.value())["alert_id"] for m in alerts) == ["al-1", "al-2"]
    assert {m.key() for m in alerts} == {b"c-1", b"c-2"}
    scores = {
        m.key(): orjson.loads(m.value())
        for ms in consume_all(brokers, names["scores_topic"]).values()
        for m in ms
    }
    assert scores == {
        b"c-1": {"entity_id": "c-1", "score": 0.75, "ts": 1002, "model": "m1"},
        b"c-2": {"entity_id": "c-2", "score": 0.5, "ts": 1001, "model": "m1"},
    }
    dlq = [m for ms in consume_all(brokers, names["dlq_topic"]).values() for m in ms]
    assert [orjson.loads(m.value()) for m in dlq] == [{"reason": "malformed_json", "offset": "7"}]
    writer.close()


def test_sink_refuses_malformed_records_before_sending(brokers: str) -> None:
    writer = KafkaOutputWriter(KafkaSinkConfig(brokers, properties=QUIET))
    with pytest.raises(ValueError, match="alert_id"):
        writer.write_batch([AlertOut({"entity_id": "c-1"})])
    with pytest.raises(TypeError):
        writer.write_batch(["not a record"])  # type: ignore[list-item]
    assert writer.batches == 0


def test_undelivered_records_fail_the_batch_instead_of_being_lost() -> None:
    writer = KafkaOutputWriter(
        KafkaSinkConfig(_closed_port(), delivery_timeout_s=1.0, properties=QUIET)
    )
    with pytest.raises(SinkError, match="did not acknowledge 3 of 3"):
        writer.write_batch([_alert(1, "c-1"), _alert(2, "c-2"), ScoreOut("c-1", 0.1, 1, "m")])
    assert writer.delivery_failures == 3
    assert writer.alerts_written == 0
    assert writer.connected is False


def test_a_cluster_that_goes_away_fails_the_next_batch() -> None:
    holder, bootstrap = _mock_cluster()
    writer = KafkaOutputWriter(KafkaSinkConfig(bootstrap, delivery_timeout_s=2.0, properties=QUIET))
    writer.write_batch([_alert(1, "c-1")])
    assert writer.alerts_written == 1
    del holder  # the mock brokers shut down with their owner
    gc.collect()
    with pytest.raises(SinkError, match="did not acknowledge"):
        writer.write_batch([_alert(2, "c-2")])
    assert writer.alerts_written == 1


def test_route_payload_follows_the_account() -> None:
    p = orjson.dumps({"account_id": "a-7", "entity_id": "c-1"})
    assert route_payload(p, 8) == partition_for("a-7", 8)
    assert route_payload(orjson.dumps({"entity_id": "c-1"}), 8) == partition_for("c-1", 8)
    assert route_payload(b"{not json", 8, fallback=11) == 3

"""The Redis sink sending batches ahead: ``send_batch``/``confirm`` and the one-worker sink."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import bytewax.operators as op
import pytest
import redis
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from intentflow.config import Config, OutputSection
from intentflow.dataflows.sources import GeneratorSource, RedisStreamSource
from intentflow.errors import SinkError
from intentflow.generator import GeneratorConfig
from intentflow.metrics import SinkCounters, SinkObserver
from intentflow.redisutil import EmbeddedRedis, connect
from intentflow.runtime import connect_read_ahead, make_sink
from intentflow.sinks.base import DeadLetterOut, Output, ScoreOut
from intentflow.sinks.redis_sink import (
    PIPELINED_PART,
    PipelinedRedisSink,
    PipelinedRedisSinkPartition,
    RedisOutputWriter,
    RedisSink,
    RedisSinkConfig,
)
from tests.test_redis_sink import ALERTS, DLQ, alert, contents, mixed_batch, stream_alerts


@pytest.fixture
def writer(redis_url: str, redis_client: redis.Redis) -> Iterator[RedisOutputWriter]:
    w = RedisOutputWriter(RedisSinkConfig(url=redis_url), seed=1)
    yield w
    w.close()


def wait_for(check: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.005)
    return False


def test_a_batch_sent_ahead_runs_before_it_is_confirmed(
    writer: RedisOutputWriter, redis_client: redis.Redis
) -> None:
    writer.send_batch([alert("s1"), ScoreOut("e1", 0.5, 7, "m"), DeadLetterOut({"n": 1})])
    assert writer.in_flight
    assert wait_for(lambda: redis_client.xlen(ALERTS) == 1)  # Redis ran it on arrival
    assert redis_client.hget("intentflow:score:e1", "score") == b"0.5"
    assert (writer.batches, writer.alerts_written, writer.scores_written) == (0, 0, 0)
    writer.confirm()
    assert not writer.in_flight
    assert (writer.batches, writer.alerts_written, writer.scores_written) == (1, 1, 1)
    assert writer.dead_letters_written == 1
    assert writer.last_batch_latency_s > 0
    writer.confirm()  # nothing in flight: nothing happens
    assert writer.batches == 1


def test_the_batch_before_is_confirmed_when_the_next_is_sent(writer: RedisOutputWriter) -> None:
    writer.send_batch([alert("n1")])
    writer.send_batch([alert("n2"), alert("n3")])
    assert writer.in_flight
    assert (writer.batches, writer.alerts_written) == (1, 1)
    writer.send_batch([])  # an empty batch confirms and sends nothing
    assert not writer.in_flight
    assert (writer.batches, writer.alerts_written) == (2, 3)


def test_write_batch_and_close_confirm_the_batch_in_flight(
    redis_url: str, redis_client: redis.Redis
) -> None:
    w = RedisOutputWriter(RedisSinkConfig(url=redis_url), seed=2)
    w.send_batch([alert("w1")])
    w.write_batch([alert("w2")])
    assert (w.batches, w.alerts_written, w.in_flight) == (2, 2, False)
    w.send_batch([alert("w3"), alert("w1")])
    w.close()
    assert (w.batches, w.alerts_written, w.alerts_duplicate) == (3, 3, 1)
    assert [a["alert_id"] for a in stream_alerts(redis_client)] == ["w1", "w2", "w3"]


def test_batches_sent_ahead_write_what_batches_written_at_once_write(
    redis_url: str, redis_client: redis.Redis
) -> None:
    def config(prefix: str) -> RedisSinkConfig:
        return RedisSinkConfig(
            url=redis_url,
            alerts_stream=f"{prefix}alerts",
            dlq_stream=f"{prefix}dlq",
            score_key_prefix=f"{prefix}score:",
            seen_key_prefix=f"{prefix}seen:",
        )

    batches = [mixed_batch(40, 5, "x"), mixed_batch(300, 60, "y"), mixed_batch(10, 2, "x")]
    at_once = RedisOutputWriter(config("now:"), seed=3)
    ahead = RedisOutputWriter(config("ahead:"), seed=3)
    for batch in batches:
        at_once.write_batch(batch)
        ahead.send_batch(batch)
    ahead.confirm()
    assert contents(redis_client, "ahead:") == contents(redis_client, "now:")
    counters = ("batches", "alerts_written", "alerts_duplicate", "scores_written")
    assert [getattr(ahead, c) for c in counters] == [getattr(at_once, c) for c in counters]
    at_once.close()
    ahead.close()


def test_a_connection_lost_before_the_replies_sends_the_batch_again(
    writer: RedisOutputWriter, redis_client: redis.Redis
) -> None:
    writer.write_batch([alert("k0")])  # connected, scripts loaded
    redis_client.client_pause(10_000, all=False)  # writes wait: no reply comes back
    try:
        writer.send_batch([alert("k1"), alert("k2"), DeadLetterOut({"n": 1})])
        time.sleep(0.05)
        # Drop the writer's connection (not ours) while its writes wait.
        assert redis_client.client_kill_filter(_type="normal", skipme=True) == 1
    finally:
        redis_client.client_unpause()
    writer.confirm()
    assert writer.retries == 1
    assert [a["alert_id"] for a in stream_alerts(redis_client)] == ["k0", "k1", "k2"]
    assert (writer.batches, writer.alerts_written, writer.alerts_duplicate) == (2, 3, 0)
    assert redis_client.xlen(DLQ) == 1
    writer.send_batch([alert("k3")])  # the writer carries on, on its new connection
    writer.confirm()
    assert [a["alert_id"] for a in stream_alerts(redis_client)][-1] == "k3"
    assert writer.retries == 1


def test_an_error_reply_is_raised_when_the_batch_is_confirmed(
    writer: RedisOutputWriter, redis_client: redis.Redis
) -> None:
    redis_client.set(ALERTS, "not a stream")
    writer.send_batch([alert("e1")])  # sent: the error is in a reply not read yet
    with pytest.raises(SinkError, match="WRONGTYPE"):
        writer.confirm()
    assert redis_client.exists("intentflow:alert-seen:e1") == 0
    redis_client.delete(ALERTS)
    writer.send_batch([alert("e1")])  # the connection stayed in step
    writer.confirm()
    assert [a["alert_id"] for a in stream_alerts(redis_client)] == ["e1"]


def test_a_batch_that_cannot_be_sent_is_written_with_retries() -> None:
    with EmbeddedRedis() as server:
        cfg = RedisSinkConfig(
            url=server.url, max_retries=40, backoff_base_s=0.02, backoff_max_s=0.1
        )
        w = RedisOutputWriter(cfg, seed=4)
        w.send_batch([alert("before")])
        w.confirm()
        server.stop()
        restarter = threading.Timer(0.3, server.start)
        restarter.start()
        try:
            w.send_batch([alert("during"), ScoreOut("e1", 0.5, 1, "m")])
        finally:
            restarter.join()
        assert not w.in_flight  # written before send_batch returned
        client = connect(server.url)
        assert [a["alert_id"] for a in stream_alerts(client)] == ["during"]  # no persistence
        assert w.retries >= 1
        assert w.batches == 2
        w.close()
        client.close()


class PerCommandWriter(RedisOutputWriter):
    """A writer of one command per write (as on a cluster): it never sends ahead."""

    _pipelines = False

    def _write_once(self, batch: Any) -> tuple[int, int, int, int]:
        return self._write_pipelined(self._redis(), batch)


def test_a_writer_that_does_not_pipeline_writes_at_once(
    redis_url: str, redis_client: redis.Redis
) -> None:
    w = PerCommandWriter(RedisSinkConfig(url=redis_url), seed=5)
    w.send_batch([alert("c1"), ScoreOut("e1", 0.25, 1, "m")])
    assert not w.in_flight
    assert (w.batches, w.alerts_written, w.scores_written) == (1, 1, 1)
    assert [a["alert_id"] for a in stream_alerts(redis_client)] == ["c1"]
    w.close()


class Recorder(SinkObserver):
    def __init__(self) -> None:
        self.delivered_calls: list[tuple[list[Output], int, float | None]] = []
        self.failures = 0

    def delivered(
        self, items: Sequence[Output], writer: SinkCounters, sent_ms: float | None = None
    ) -> None:
        self.delivered_calls.append((list(items), writer.alerts_written, sent_ms))

    def failed(self, writer: SinkCounters) -> None:
        self.failures += 1


def test_the_partition_confirms_at_every_snapshot_and_at_close(
    redis_url: str, redis_client: redis.Redis
) -> None:
    recorder = Recorder()
    part = PipelinedRedisSinkPartition(
        RedisOutputWriter(RedisSinkConfig(url=redis_url), seed=6), recorder
    )
    before = time.time() * 1000.0
    part.write_batch([alert("p1")])
    assert recorder.delivered_calls == []
    assert part.snapshot() is None
    assert not part.writer.in_flight  # the epoch's output is in Redis before it commits
    [(items, written, sent_ms)] = recorder.delivered_calls
    assert (items, written) == ([alert("p1")], 1)
    assert sent_ms is not None
    assert before <= sent_ms <= time.time() * 1000.0
    part.write_batch([alert("p2")])
    part.write_batch([alert("p3")])  # confirms p2
    assert [c[1] for c in recorder.delivered_calls] == [1, 2]
    part.close()
    assert [c[1] for c in recorder.delivered_calls] == [1, 2, 3]
    assert [a["alert_id"] for a in stream_alerts(redis_client)] == ["p1", "p2", "p3"]


def test_the_partition_calls_before_send_after_confirming_and_before_sending(
    redis_url: str, redis_client: redis.Redis
) -> None:
    seen: list[tuple[int, bool, int]] = []  # (batches confirmed, in flight, alerts in Redis)
    writer = RedisOutputWriter(RedisSinkConfig(url=redis_url), seed=8)

    def before_send() -> None:
        seen.append((writer.batches, writer.in_flight, len(stream_alerts(redis_client))))

    part = PipelinedRedisSinkPartition(writer, before_send=before_send)
    part.write_batch([alert("s1")])
    part.write_batch([alert("s2")])
    part.close()
    # before each send: the batch before is confirmed, this one is not sent yet
    assert seen == [(0, False, 0), (1, False, 1)]
    assert [a["alert_id"] for a in stream_alerts(redis_client)] == ["s1", "s2"]


def test_the_partition_reports_a_failed_confirmation(
    redis_url: str, redis_client: redis.Redis
) -> None:
    recorder = Recorder()
    part = PipelinedRedisSinkPartition(
        RedisOutputWriter(RedisSinkConfig(url=redis_url), seed=7), recorder
    )
    redis_client.set(ALERTS, "not a stream")
    part.write_batch([alert("f1")])
    with pytest.raises(SinkError, match="WRONGTYPE"):
        part.snapshot()
    assert recorder.failures == 1
    assert recorder.delivered_calls == []


def test_a_one_worker_dataflow_writes_every_output_through_the_pipelined_sink(
    redis_url: str, redis_client: redis.Redis
) -> None:
    items: list[Output] = [
        alert("b1"),
        ScoreOut("e1", 0.3, 10, "m"),
        alert("b2", "e2"),
        DeadLetterOut({"reason": "x"}),
        alert("b1"),
        alert("b3"),
    ]

    def run() -> None:
        flow = Dataflow("pipelined_sink_test")
        stream = op.input("inp", flow, TestingSource(items, batch_size=2))
        keyed = op.map("key", stream, lambda x: ("k", x))
        op.output("out", keyed, PipelinedRedisSink(RedisSinkConfig(url=redis_url)))
        run_main(flow)

    run()
    run()  # a full replay, as after a crash without recovery
    assert [a["alert_id"] for a in stream_alerts(redis_client)] == ["b1", "b2", "b3"]
    assert redis_client.hget("intentflow:score:e1", "score") == b"0.3"
    assert redis_client.xlen(DLQ) == 2


@pytest.mark.parametrize(
    ("workers", "pipelined", "kind"),
    [
        (1, True, PipelinedRedisSink),
        (2, True, RedisSink),
        (None, True, RedisSink),  # bytewax.run: the worker count is not known
        (1, False, RedisSink),
    ],
)
def test_the_engine_sends_ahead_only_with_one_worker_in_all(
    workers: int | None, pipelined: bool, kind: type
) -> None:
    config = Config(output=OutputSection(pipelined=pipelined))
    assert type(make_sink(config, workers=workers)) is kind


def test_only_a_pipelined_sink_receives_the_redis_inputs_reads_ahead() -> None:
    def redis_source() -> RedisStreamSource:
        return RedisStreamSource(url="redis://localhost:1")

    sink = PipelinedRedisSink(RedisSinkConfig(url="redis://localhost:1"))
    source = redis_source()
    assert connect_read_ahead(source, sink)
    assert source.read_ahead is not None
    assert sink.before_send == source.read_ahead.before_send
    assert sink.build_part("out", PIPELINED_PART, None).before_send == source.read_ahead.before_send
    waits = RedisSink(
        RedisSinkConfig(url="redis://localhost:1")
    )  # several workers: each writes and waits
    assert not connect_read_ahead(other := redis_source(), waits)
    assert other.read_ahead is None
    gen = GeneratorSource(GeneratorConfig(seed=1, entities=5))
    assert not connect_read_ahead(
        gen, PipelinedRedisSink(RedisSinkConfig(url="redis://localhost:1"))
    )


class Snapshots(PipelinedRedisSinkPartition):
    """Records, at each of Bytewax's snapshots, the batches written and confirmed so far."""

    log: list[tuple[int, int, bool]] = []  # (write_batch calls, batches confirmed, in flight)

    def __init__(self, writer: RedisOutputWriter) -> None:
        super().__init__(writer)
        self.calls = 0

    def write_batch(self, values: list[Output]) -> None:
        self.calls += 1
        super().write_batch(values)

    def snapshot(self) -> None:
        super().snapshot()
        self.log.append((self.calls, self.writer.batches, self.writer.in_flight))


class SnapshotsSink(PipelinedRedisSink):
    def build_part(self, step_id: str, for_part: str, resume_state: None) -> Snapshots:
        return Snapshots(RedisOutputWriter(self.config))


def test_bytewax_snapshots_the_sink_at_every_epoch_after_confirming_it(
    redis_url: str, redis_client: redis.Redis
) -> None:
    from datetime import timedelta

    Snapshots.log = []
    items: list[Output] = [alert(f"e{i}") for i in range(12)]
    flow = Dataflow("pipelined_sink_epochs")
    stream = op.input("inp", flow, TestingSource(items, batch_size=2))
    keyed = op.map("key", stream, lambda x: ("k", x))
    op.output("out", keyed, SnapshotsSink(RedisSinkConfig(url=redis_url)))
    run_main(flow, epoch_interval=timedelta(0))  # an epoch per input batch
    log = Snapshots.log
    assert len(log) >= 3  # asked at epoch ends, without a recovery directory too
    assert all(calls == confirmed and not in_flight for calls, confirmed, in_flight in log)
    assert log[-1][0] >= 1
    assert [a["alert_id"] for a in stream_alerts(redis_client)] == [f"e{i}" for i in range(12)]

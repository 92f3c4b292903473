"""``intentflow produce``: send synthetic or JSONL events to the input streams."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import redis
from rich.console import Console

from intentflow.commands.common import config_from_args
from intentflow.config import Config
from intentflow.dataflows.sources import partition_for
from intentflow.errors import ConfigError
from intentflow.generator import BuyerJourneyGenerator, GeneratorConfig
from intentflow.redisutil import connect, ping_or_fail
from intentflow.runtime import generator_config

__all__ = ["Producer", "cmd_produce"]

log = logging.getLogger("intentflow.produce")


class Producer:
    """Pipelined XADD of events to ``{prefix}{i}``, routed by account (else entity).

    Each entry carries the payload in ``event`` and the send time (epoch ms)
    in ``produced_ts``, from which end-to-end latency is measured.
    """

    def __init__(self, client: redis.Redis, prefix: str, partitions: int) -> None:
        self.client = client
        self.keys = [f"{prefix}{i}".encode() for i in range(partitions)]
        self.partitions = partitions
        self.sent = 0
        self._rr = 0

    def _route(self, payload: bytes) -> int:
        try:
            obj = orjson.loads(payload)
            key = obj.get("account_id") or obj.get("entity_id")
            if isinstance(key, str) and key:
                return partition_for(key, self.partitions)
        except (orjson.JSONDecodeError, AttributeError):
            pass
        self._rr = (self._rr + 1) % self.partitions
        return self._rr

    def send(self, payloads: list[bytes]) -> None:
        """XADD a batch in one pipeline round trip."""
        pipe = self.client.pipeline(transaction=False)
        now = repr(time.time() * 1000.0).encode()
        for p in payloads:
            pipe.xadd(self.keys[self._route(p)], {b"event": p, b"produced_ts": now})
        pipe.execute()
        self.sent += len(payloads)


def _file_batches(path: str, size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    with Path(path).open("rb") as f:
        for line in f:
            line = line.rstrip(b"\r\n")
            if line.strip():
                batch.append(line)
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


def produce(
    config: Config,
    *,
    gen: BuyerJourneyGenerator | None,
    file: str | None,
    rate: float,
    count: int,
    duration: float,
    batch: int = 200,
) -> int:
    """Send events until ``count``, ``duration`` or the end of ``file``; returns the number sent."""
    client = connect(config.redis.url)
    ping_or_fail(client, config.redis.url)
    producer = Producer(client, config.input.events_prefix, config.input.partitions)
    start = time.monotonic()
    deadline = start + duration if duration > 0 else None
    batches = _file_batches(file, batch) if file else None
    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        want = batch if count <= 0 else min(batch, count - producer.sent)
        if want <= 0:
            break
        if rate > 0:
            due = int((now - start) * rate) - producer.sent
            if due <= 0:
                time.sleep(min(0.005, 1.0 / rate))
                continue
            want = min(want, due)
        if batches is not None:
            payloads = next(batches, None)
            if payloads is None:
                break
        else:
            assert gen is not None
            payloads = gen.next_payloads(want)
        producer.send(payloads)
    client.close()
    return producer.sent


def live_generator(
    cfg: GeneratorConfig, rate: float, time_scale: float = 1.0
) -> BuyerJourneyGenerator:
    """A generator whose event time starts now and runs ``time_scale`` times
    faster than the wall clock when sent at ``rate`` events/s."""
    from dataclasses import replace

    per_s = (rate if rate > 0 else cfg.events_per_second) / time_scale
    return BuyerJourneyGenerator(
        replace(cfg, start_ms=int(time.time() * 1000), events_per_second=per_s)
    )


def cmd_produce(args: argparse.Namespace) -> int:
    """Send events and print how many went where."""
    config = config_from_args(args)
    if not config.redis.url:
        raise ConfigError("produce needs --redis-url or REDIS_URL (the engine's Redis)")
    gen = None
    if not args.file:
        cfg = generator_config(
            config.generator, seed=args.seed, entities=args.entities, poison_fraction=args.poison
        )
        gen = live_generator(cfg, args.rate) if args.live else BuyerJourneyGenerator(cfg)
    t0 = time.perf_counter()
    sent = produce(
        config, gen=gen, file=args.file, rate=args.rate, count=args.count, duration=args.duration
    )
    elapsed = time.perf_counter() - t0
    Console(stderr=True).print(
        f"sent {sent:,} events to {config.input.partitions} stream(s) "
        f"{config.input.events_prefix}* in {elapsed:.2f} s ({sent / max(elapsed, 1e-9):,.0f}/s)"
    )
    return 0

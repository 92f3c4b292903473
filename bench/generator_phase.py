"""Throughput with the built-in generator as the source: ``generator_eps`` of ``bench e2e``.

The engine runs ``--source generator`` (the synthetic journeys of the Redis
rounds: same seed, contacts and event-time density, written into a copy of
the demo configuration) with ``--count W + R·N + tail``, so it reads as fast as
it can and exits at the end of its input (the tail, a fifth of a round, keeps
it running past the last round's end while it is observed). Outputs (scores, alerts) still go to
Redis. The benchmark reads the engine's own counter of processed events,
``intentflow_events_processed_total`` on its ``/metrics`` endpoint, every
``poll_s`` seconds; round ``r`` is the span in which the counter went from
``W + r·N`` to ``W + (r+1)·N`` (crossing times interpolated between polls),
so start-up, kernel loading and the warm-up are never timed, exactly as in
the Redis rounds.
"""

from __future__ import annotations

import http.client
import math
import re
import socket
import statistics
import time
import urllib.request
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Final

import numpy as np
import redis

from bench.common import DEMO_CONFIG, BenchError, Context, Engine, Keys

__all__ = ["GeneratorRun", "crossing_times", "measure_generator", "processed_total", "scrape"]

_PROCESSED: Final = re.compile(rb"^intentflow_events_processed_total\{[^}]*\} (\S+)$", re.M)
_READY_TIMEOUT_S: Final = 300.0


@dataclass(frozen=True)
class GeneratorRun:
    """Figures of the generator-source phase."""

    eps: float  # median over rounds
    eps_rounds: list[float]
    seconds_rounds: list[float]
    engine_cpu: list[float]  # CPU seconds of the engine per round / round seconds
    startup_s: float  # start until the counter passed the warm-up (not timed)
    polls: int
    poll_s: float
    exit_code: int


def processed_total(body: bytes) -> float:
    """The sum over shards of ``intentflow_events_processed_total`` in a ``/metrics`` page.

    >>> processed_total(b'intentflow_events_processed_total{shard="s0"} 3.0\\n'
    ...                 b'intentflow_events_processed_total{shard="s1"} 4.0\\n')
    7.0
    """
    return sum(float(x) for x in _PROCESSED.findall(body))


def crossing_times(samples: list[tuple[float, float]], marks: list[float]) -> list[float]:
    """When a non-decreasing counter sampled as ``(time, value)`` reached each mark.

    Linear between the two samples around the crossing.

    >>> crossing_times([(0.0, 0.0), (1.0, 10.0), (2.0, 30.0)], [5.0, 20.0, 30.0])
    [0.5, 1.5, 2.0]
    """
    out: list[float] = []
    i = 0
    for mark in marks:
        while i < len(samples) and samples[i][1] < mark:
            i += 1
        if i == len(samples):
            raise BenchError(f"generator phase: the counter never reached {mark:,.0f}")
        t1, v1 = samples[i]
        if i == 0 or v1 == mark:
            out.append(t1)
            continue
        t0, v0 = samples[i - 1]
        out.append(t0 + (t1 - t0) * (mark - v0) / (v1 - v0))
    return out


def scrape(url: str, timeout: float = 2.0) -> bytes | None:
    """The body at ``url``, or None when there is none to read: no server, or a
    reply cut short (an engine exiting at the end of its input, mid-reply)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return bytes(reply.read())
    except (OSError, http.client.HTTPException):
        return None


def _tail(events: int, eps: float = 0.0, poll_s: float = 0.0) -> int:
    """Events read after the timed rounds: a fifth of a round, at least 2000, and at
    least four polls' worth at ``eps`` (so that a poll sees the last round end while
    the engine still runs, whatever the round size).

    >>> _tail(100_000), _tail(20_000), _tail(20_000, eps=40_000.0, poll_s=0.25)
    (20000, 4000, 40000)
    """
    return max(2000, events // 5, math.ceil(4 * eps * poll_s))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(ctx: Context, entities: int, seed: int, event_time_rate: float) -> Path:
    """The demo configuration with a ``[generator]`` section for the benchmark's journeys."""
    path = ctx.workdir / "generator-source.toml"
    extra = (
        f"\n[generator]\nseed = {seed}\nentities = {entities}\n"
        f"events_per_second = {event_time_rate!r}\n"
    )
    path.write_text(Path(DEMO_CONFIG).read_text() + extra)
    return path


def measure_generator(
    ctx: Context,
    client: redis.Redis,
    *,
    warmup: int,
    events: int,
    rounds: int,
    entities: int,
    seed: int,
    event_time_rate: float,
    extra_args: list[str],
    poll_s: float = 0.1,
    expected_eps: float = 0.0,
) -> GeneratorRun:
    """R rounds of N events from the engine's own generator source (module docstring)."""
    keys = Keys.unique("e2e-gen")
    port = _free_port()
    engine = Engine(
        ctx.url,
        keys,
        ctx.workdir / "engine-generator.log",
        # a tail beyond the last round, so that its end is seen while the engine still runs
        count=warmup + rounds * events + _tail(events, expected_eps, poll_s),
        config=str(_config(ctx, entities, seed, event_time_rate)),
        source="generator",
        extra_args=["--metrics-host", "127.0.0.1", "--metrics-port", str(port), *extra_args],
    )
    url = f"http://127.0.0.1:{port}/metrics"
    samples: list[tuple[float, float]] = []
    cpu: list[tuple[float, float]] = []
    ctx.console.print(
        f"throughput (generator source): starting the engine, warm-up of {warmup:,} events ..."
    )
    t_start = time.monotonic()
    try:
        engine.start()
        while True:
            code = engine.proc.poll()
            body = scrape(url)
            if body is None:
                if code is not None:
                    break
                if not samples and time.monotonic() - t_start > _READY_TIMEOUT_S:
                    raise BenchError(
                        f"generator phase: no /metrics after {_READY_TIMEOUT_S:.0f} s"
                    ) from None
                time.sleep(poll_s)
                continue
            now = time.monotonic()
            samples.append((now, processed_total(body)))
            seconds = engine.cpu_seconds()
            if seconds is not None:
                cpu.append((now, seconds))
            if code is not None:
                break
            time.sleep(poll_s)
        code = engine.wait_exit(60.0)
        if code != 0:
            raise BenchError(f"the engine exited with code {code}:\n{engine.log_tail()}")
    finally:
        engine.stop()
        keys.cleanup(client)
    marks = [float(warmup + r * events) for r in range(rounds + 1)]
    at = crossing_times(samples, marks)
    seconds = [b - a for a, b in pairwise(at)]
    if any(s <= 0 for s in seconds):
        raise BenchError("generator phase: a round took no measurable time (poll more often)")
    eps_rounds = [events / s for s in seconds]
    engine_cpu: list[float] = []
    if len(cpu) >= 2:  # the engine's CPU seconds at the rounds' ends (linear, clamped)
        used = np.interp(at, [t for t, _ in cpu], [c for _, c in cpu]).tolist()
        engine_cpu = [(u1 - u0) / s for (u0, u1), s in zip(pairwise(used), seconds, strict=True)]
    return GeneratorRun(
        eps=statistics.median(eps_rounds),
        eps_rounds=eps_rounds,
        seconds_rounds=seconds,
        engine_cpu=engine_cpu,
        startup_s=at[0] - t_start,
        polls=len(samples),
        poll_s=poll_s,
        exit_code=code,
    )

"""Shared fixtures.

``redis_url`` is a real Redis for the whole session: ``$REDIS_URL`` if set
(it must point at a disposable server: tests FLUSHALL it), otherwise an
embedded redis-server on a unix socket. ``redis_client`` gives each test an
empty database on it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from intentflow.redisutil import EmbeddedRedis, connect


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis shared by the session."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client (bytes responses) on :func:`redis_url`, after FLUSHALL."""
    client = connect(redis_url)
    client.flushall()
    try:
        yield client
    finally:
        client.close()

"""The alert sink on a Redis Cluster: hash-tagged alert keys, cluster-aware pipelines.

The alert script (:data:`~intentflow.sinks.lua.ALERT_ONCE`) touches two keys,
the alert's seen key and the alerts stream; on a Redis Cluster a script may
only touch keys of one hash slot. Both names therefore carry the same hash
tag: the stream is ``intentflow:{alerts}`` and the seen keys are
``intentflow:{alerts}:seen:<alert_id>`` (:func:`cluster_key_names`), so every
alert write runs on the node owning that slot. Latest-score hashes
(``intentflow:score:<entity_id>``) and the dead-letter stream keep their names
and spread over the cluster. One batch is one cluster pipeline (one round
trip per node); the guarantees are those of
:mod:`intentflow.sinks.redis_sink`. Key names: ``docs/scaling.md``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Final

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    RedisClusterException,
    TryAgainError,
)

from intentflow.config import Config
from intentflow.errors import ConfigError, SinkError
from intentflow.metrics import EngineMetrics
from intentflow.redisutil import CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S, redact_url
from intentflow.sinks.lua import ALERT_ONCE_SHA
from intentflow.sinks.redis_sink import (
    RedisOutputWriter,
    RedisSink,
    RedisSinkConfig,
    RedisSinkPartition,
    _Prepared,
)

__all__ = [
    "DEFAULT_CLUSTER_STREAM",
    "RedisClusterOutputWriter",
    "RedisClusterSink",
    "cluster_key_names",
    "hash_tag",
    "make_cluster_sink",
    "slot_of",
]

#: The alerts stream on a cluster when ``output.alerts_stream`` is left at its default.
DEFAULT_CLUSTER_STREAM: Final = "intentflow:{alerts}"
_DEFAULT_STREAM: Final = "intentflow:alerts"
#: Cluster states in which a retry of the whole batch can succeed.
_TRANSIENT: Final = (ClusterDownError, TryAgainError, MovedError, AskError)


def hash_tag(key: str) -> str | None:
    """The hash tag of ``key`` (what Redis Cluster hashes), or ``None`` without one.

    >>> hash_tag("intentflow:{alerts}:seen:a-1"), hash_tag("intentflow:alerts")
    ('alerts', None)
    """
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


def slot_of(key: str) -> int:
    """The cluster hash slot of ``key`` (0..16383)."""
    return int(key_slot(key.encode()))


def cluster_key_names(alerts_stream: str) -> tuple[str, str]:
    """``(alerts stream, seen-key prefix)`` for a cluster, both in one hash slot.

    The default stream ``intentflow:alerts`` becomes ``intentflow:{alerts}``;
    another name must carry a hash tag itself.

    >>> cluster_key_names("intentflow:alerts")
    ('intentflow:{alerts}', 'intentflow:{alerts}:seen:')
    """
    stream = DEFAULT_CLUSTER_STREAM if alerts_stream == _DEFAULT_STREAM else alerts_stream
    if hash_tag(stream) is None:
        raise ConfigError(
            f"output.alerts_stream: {alerts_stream!r} has no hash tag; on a Redis Cluster the "
            "alert script needs the stream and its seen keys in one slot: name it like "
            "'app:{alerts}'"
        )
    return stream, f"{stream}:seen:"


class RedisClusterOutputWriter(RedisOutputWriter):
    """:class:`RedisOutputWriter` for a Redis Cluster (any node's URL in ``config.url``).

    ``config.seen_key_prefix`` and ``config.alerts_stream`` must hash to one
    slot (:func:`cluster_key_names` makes such names). It never sends ahead:
    :meth:`send_batch` writes at once.
    """

    _pipelines = False  # keys span slots: one command per write, through the cluster client

    def __init__(
        self,
        config: RedisSinkConfig,
        *,
        client: RedisCluster | None = None,
        seed: int | None = None,
    ) -> None:
        if slot_of(config.seen_key_prefix + "x") != slot_of(config.alerts_stream):
            raise ConfigError(
                f"on a Redis Cluster the seen keys ({config.seen_key_prefix}<alert_id>) and the "
                f"alerts stream ({config.alerts_stream}) must share a hash tag"
            )
        super().__init__(config, seed=seed)
        self._cluster: RedisCluster | None = client
        self._owns_client = client is None

    def _redis(self) -> Any:
        if self._cluster is None:
            try:
                self._cluster = RedisCluster.from_url(
                    self.config.url,
                    socket_connect_timeout=CONNECT_TIMEOUT_S,
                    socket_timeout=SOCKET_TIMEOUT_S,
                )
            except RedisClusterException as exc:
                raise SinkError(
                    f"{redact_url(self.config.url)} is not a reachable Redis Cluster ({exc}); "
                    "check output.cluster_url"
                ) from exc
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise redis.ConnectionError(str(exc)) from exc
            self._owns_client = True
        return self._cluster

    def _queue_alert(self, pipe: Any, seen_key: str, payload: bytes) -> None:
        # A cluster pipeline refuses .evalsha(); the raw command is routed by its keys.
        cfg = self.config
        pipe.execute_command(
            "EVALSHA",
            ALERT_ONCE_SHA,
            2,
            seen_key,
            cfg.alerts_stream,
            cfg.seen_ttl_s,
            cfg.alerts_maxlen,
            payload,
        )

    def _write_once(self, batch: _Prepared) -> tuple[int, int, int, int]:
        try:  # keys span hash slots: one command per write, routed by its key
            return self._write_pipelined(self._redis(), batch)
        except _TRANSIENT as exc:  # a failover or resharding in progress: retry the batch
            raise redis.ConnectionError(f"cluster not ready: {exc}") from exc
        except (ClusterError, RedisClusterException) as exc:
            if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
                raise
            raise SinkError(
                f"Redis Cluster at {redact_url(self.config.url)} failed a sink write: {exc}"
            ) from exc

    def _check(self, result: Any) -> None:
        if isinstance(result, _TRANSIENT):
            raise redis.ConnectionError(f"cluster not ready: {result}") from result
        super()._check(result)

    def close(self) -> None:
        """Close the cluster client if the writer created it."""
        if self._cluster is not None and self._owns_client:
            self._cluster.close()
            self._cluster = None


class RedisClusterSink(RedisSink):
    """:class:`~intentflow.sinks.redis_sink.RedisSink` writing to a Redis Cluster."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> RedisSinkPartition:
        """A partition with its own cluster client (connects lazily)."""
        return RedisSinkPartition(RedisClusterOutputWriter(self.config), self.metrics.sink())


def make_cluster_sink(config: Config, metrics: EngineMetrics | None = None) -> RedisClusterSink:
    """The sink for ``output.sink = "redis-cluster"`` at ``output.cluster_url``."""
    from intentflow.runtime import make_sink

    out = config.output
    if not out.cluster_url:
        raise ConfigError(
            "output.cluster_url: required with output.sink = 'redis-cluster' (a node's URL)"
        )
    stream, seen = cluster_key_names(out.alerts_stream)
    base = make_sink(config.with_overrides({"output.sink": "redis"}), metrics).config
    cfg = replace(base, url=out.cluster_url, alerts_stream=stream, seen_key_prefix=seen)
    return RedisClusterSink(cfg, metrics)

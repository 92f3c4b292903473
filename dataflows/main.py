"""Entry point for teams that deploy with Bytewax directly.

``python -m bytewax.run intentflow.dataflows.main:get_flow`` (or, from the
repository root, ``dataflows.main:get_flow``), configured from the
environment: ``INTENTFLOW_CONFIG`` (a TOML file), ``REDIS_URL`` and
``INTENTFLOW__SECTION__KEY`` overrides. Recovery flags are Bytewax's own
(``-r DIR -s SECONDS``). A Redis URL is required here: the embedded server is
only for ``intentflow run`` and ``intentflow demo``. The worker count is
``bytewax.run``'s, unknown when the flow is built, so the Redis sink writes
from every worker and waits for each batch (docs/sinks.md, "Pipelined
writes").
"""

from __future__ import annotations

import os

from bytewax.dataflow import Dataflow

from intentflow.config import load_config
from intentflow.errors import ConfigError
from intentflow.runtime import make_flow

__all__ = ["get_flow"]


def get_flow() -> Dataflow:
    """Build the production dataflow from the environment."""
    config = load_config(os.environ.get("INTENTFLOW_CONFIG") or None)
    if not config.redis.url:
        raise ConfigError(
            "set REDIS_URL (or redis.url in INTENTFLOW_CONFIG) to run under bytewax.run"
        )
    # bytewax.run picks the worker count (-w, -i/-a): a sink that suits any count
    return make_flow(config, workers=None)

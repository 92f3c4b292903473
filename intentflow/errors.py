"""The root of every error intentflow raises on purpose.

Messages say what went wrong, where, and how to fix it; causes are chained.
"""

from __future__ import annotations

__all__ = ["ConfigError", "IntentflowError", "RecoveryError", "SinkError", "SnapshotMismatchError"]


class IntentflowError(Exception):
    """Base class of all intentflow errors."""


class ConfigError(IntentflowError):
    """A configuration value is missing or invalid; the message names the key."""


class SinkError(IntentflowError):
    """A sink could not deliver a batch within its retry budget."""


class RecoveryError(IntentflowError):
    """The recovery directory is missing, empty or damaged."""


class SnapshotMismatchError(IntentflowError):
    """A snapshot was written by an incompatible schema, spec or model version."""

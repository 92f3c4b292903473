"""Implementations of the ``intentflow`` subcommands (imported lazily by the CLI)."""

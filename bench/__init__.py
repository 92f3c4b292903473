"""Benchmarks of intentflow: ``python -m bench SCENARIO [--json PATH] [--quick]``.

Run from the repository root (this package is not installed). Every scenario
is a module ``bench.<name>`` listed in :data:`SCENARIOS` that defines
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args, context) ->
Result`` (see :mod:`bench.common`); the harness in :mod:`bench.__main__`
adds ``--json``/``--quick``, provides Redis and a work directory, prints the
table and writes the JSON document. See ``bench/README.md``.
"""

from __future__ import annotations

from typing import Final

__all__ = ["SCENARIOS"]

#: Scenario names; each is the module ``bench.<name>``. Add a scenario here.
SCENARIOS: Final[tuple[str, ...]] = ("e2e", "rules", "learning", "poison", "scale", "features")

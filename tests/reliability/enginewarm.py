"""Imported by the engine fork server: loads the compiled feature kernels once.

Every engine child forked afterwards finds them loaded, so a restart costs
only the engine's own start-up (recovery, connections), as in production
where the process image is warm.
"""

from __future__ import annotations

from intentflow.events import Event
from intentflow.features.spec import FeatureSpec
from intentflow.features.state import FeatureState


def warm() -> None:
    """Run one small batch through a throw-away feature state."""
    state = FeatureState(FeatureSpec.default())
    events = [
        Event(f"w{i}", 1_767_225_600_000 + i, f"c{i % 3}", "page_view", account_id="a")
        for i in range(8)
    ]
    state.update(events)
    state.evict_idle(1_767_225_600_000 + 10**12)


warm()

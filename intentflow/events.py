"""The event record that flows through the engine after validation.

Parsing and validation of raw payloads lives in :mod:`intentflow.contracts`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["KNOWN_TYPES", "OUTCOME_RESULTS", "Event"]

#: Event types the engine knows. Any other type is accepted and counted.
KNOWN_TYPES: Final[frozenset[str]] = frozenset(
    {
        "page_view",
        "click",
        "email_open",
        "email_click",
        "chat_message",
        "form_submit",
        "crm_activity",
        "cart_add",
        "purchase",
        "payment",
        "ticket",
        "mention",
        "outcome",
    }
)

#: Allowed values of ``props.result`` on an ``outcome`` event.
OUTCOME_RESULTS: Final[frozenset[str]] = frozenset(
    {"accepted", "rejected", "ignored", "converted", "lost"}
)


@dataclass(slots=True)
class Event:
    """One validated event.

    ``ts_ms`` is event time in epoch milliseconds. ``ingest_ts`` is the wall
    time (epoch milliseconds, fractional) at which a source read the event,
    ``produced_ts`` the producer's own send time when it gave one. ``source``
    and ``offset`` locate the event in its input (stream and entry id, file
    and line, generator and sequence number).
    """

    event_id: str
    ts_ms: int
    entity_id: str
    type: str
    account_id: str | None = None
    props: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    offset: str = ""
    ingest_ts: float = 0.0
    produced_ts: float | None = None

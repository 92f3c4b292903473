"""Terminal rendering of alerts and summaries (rich)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

__all__ = ["alert_latency_ms", "alert_line", "percentile", "summary_table"]


def alert_latency_ms(alert: dict[str, Any], read_ts_ms: float) -> float | None:
    """Event-to-alert latency: reader's XREAD time minus the producer's XADD time.

    Falls back to the engine's ingest time when the producer gave no send time.
    """
    trace = alert.get("trace") or {}
    start = trace.get("produced_ts") or alert.get("ingest_ts")
    if not isinstance(start, int | float):
        return None
    return read_ts_ms - float(start)


def alert_line(alert: dict[str, Any], latency_ms: float | None) -> Text:
    """One line per alert: entity, action, score, top reasons, latency."""
    action = (alert.get("action") or {}).get("id", "?")
    reasons = "; ".join(
        f"{r.get('label') or r.get('feature')}: {r.get('value'):g}"
        for r in (alert.get("reasons") or [])[:2]
        if isinstance(r.get("value"), int | float)
    )
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(f"{alert.get('entity_id', '?'):<10} ", style="bold")
    line.append(f"{action:<16} ", style="cyan")
    line.append(f"score {alert.get('score', 0):.2f}  ", style="yellow")
    if latency_ms is not None:
        line.append(f"{latency_ms:6.1f} ms  ", style="green")
    line.append(reasons, style="dim")
    return line


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]); NaN for no values.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.0
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


def summary_table(title: str, rows: Sequence[tuple[str, str]]) -> Table:
    """A two-column table of figures."""
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in rows:
        table.add_row(k, v)
    return table

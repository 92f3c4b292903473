"""``intentflow status``: the key figures of a running engine, read from its metrics.

Scrapes ``/metrics`` twice, ``--interval`` seconds apart: rates (events/s,
alerts/s) are the counter increase between the two scrapes divided by the
time between them; latency percentiles are computed from the histogram
buckets that filled between the scrapes (or, when no alert arrived in
between, from the buckets since the engine started, and marked so); gauges
(lag, backlog, model AUC) are the second scrape's values.
"""

from __future__ import annotations

import argparse
import math
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from intentflow.errors import IntentflowError

__all__ = [
    "Scrape",
    "StatusFigures",
    "cmd_status",
    "fetch",
    "histogram_quantile",
    "parse_scrape",
    "summarize",
]

Labels = dict[str, str]
QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True)
class Scrape:
    """One scrape: monotonic time and the samples by sample name."""

    at: float
    samples: Mapping[str, Sequence[tuple[Labels, float]]]

    def total(self, name: str, **match: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``match``."""
        return sum(
            v
            for labels, v in self.samples.get(name, ())
            if all(labels.get(k) == want for k, want in match.items()) and not math.isnan(v)
        )

    def by(self, name: str, label: str) -> dict[str, float]:
        """Samples called ``name`` summed by the value of ``label``."""
        out: dict[str, float] = defaultdict(float)
        for labels, v in self.samples.get(name, ()):
            if label in labels and not math.isnan(v):
                out[labels[label]] += v
        return dict(out)

    def values(self, name: str) -> list[float]:
        """Every non-NaN value of the samples called ``name``."""
        return [v for _, v in self.samples.get(name, ()) if not math.isnan(v)]

    def buckets(self, name: str) -> list[tuple[float, float]]:
        """``(le, cumulative count)`` of histogram ``name``, summed over other labels."""
        acc: dict[float, float] = defaultdict(float)
        for labels, v in self.samples.get(f"{name}_bucket", ()):
            acc[float(labels["le"])] += v
        return sorted(acc.items())


def parse_scrape(text: str, at: float) -> Scrape:
    """Parse the Prometheus text format into a :class:`Scrape`."""
    samples: dict[str, list[tuple[Labels, float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name].append((dict(s.labels), float(s.value)))
    return Scrape(at, dict(samples))


def fetch(url: str, timeout_s: float = 5.0) -> Scrape:
    """Scrape ``url``; an unreachable endpoint is an :class:`IntentflowError`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            text = resp.read().decode("utf-8")
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise IntentflowError(
            f"cannot read metrics at {url} ({err}); is the engine running "
            "(intentflow run --metrics-port PORT), and is --metrics-url right?"
        ) from err
    scrape = parse_scrape(text, time.monotonic())
    if "intentflow_build_info" not in scrape.samples:
        raise IntentflowError(f"{url} is not the metrics endpoint of an intentflow engine")
    return scrape


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """The ``q`` quantile of cumulative ``buckets``, interpolated as Prometheus does.

    >>> histogram_quantile(0.5, [(1.0, 2.0), (2.0, 4.0), (math.inf, 4.0)])
    1.0
    >>> math.isnan(histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]))
    True
    """
    if not buckets or not math.isinf(buckets[-1][0]):
        return math.nan
    total = buckets[-1][1]
    if total <= 0:
        return math.nan
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for i, (le, count) in enumerate(buckets):
        if count >= rank:
            if math.isinf(le):
                return buckets[i - 1][0] if i > 0 else math.nan
            in_bucket = count - prev_count
            if in_bucket <= 0:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / in_bucket
        prev_le, prev_count = le, count
    return math.nan  # pragma: no cover - the +Inf bucket always holds the total


@dataclass
class StatusFigures:
    """What ``intentflow status`` prints."""

    interval_s: float
    version: str
    config_hash: str
    events_per_s: float
    invalid_per_s: float
    duplicates_per_s: float
    alerts_per_s: float
    events_total: float
    alerts_total: float
    event_time_lag_s: dict[str, float]
    backlog_entries: float | None
    latency_s: dict[str, float]  # event-to-alert: "p50", "p95", "p99"
    processing_s: dict[str, float]  # ingest-to-alert
    latency_window: str  # "interval" or "since start"
    alerts_by_action: dict[str, dict[str, float]]  # action -> {"total", "per_s"}
    model_auc: float | None
    model_auc_min: float | None
    model_log_loss: float | None
    snapshot_age_s: float | None
    progress_age_s: float | None
    redis_connected: dict[str, bool] = field(default_factory=dict)
    sink_retries_per_s: float = 0.0
    sink_errors_total: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able figures (NaN becomes ``None``)."""
        doc: dict[str, Any] = _clean(asdict(self))
        return doc


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def _rate(a: Scrape, b: Scrape, name: str, dt: float) -> float:
    return max(0.0, b.total(name) - a.total(name)) / dt if dt > 0 else math.nan


def _percentiles(
    a: Scrape, b: Scrape, name: str, window: str | None
) -> tuple[dict[str, float], str]:
    after = b.buckets(name)
    before = dict(a.buckets(name))
    delta = [(le, c - before.get(le, 0.0)) for le, c in after]
    use = delta if (window != "since start" and delta and delta[-1][1] > 0) else after
    used = "interval" if use is delta else "since start"
    return {f"p{round(q * 100)}": histogram_quantile(q, use) for q in QUANTILES}, used


def summarize(a: Scrape, b: Scrape) -> StatusFigures:
    """The figures between scrape ``a`` and the later scrape ``b``."""
    dt = b.at - a.at
    info = b.samples.get("intentflow_build_info", [({}, 1.0)])[0][0]
    latency, window = _percentiles(a, b, "intentflow_event_to_alert_latency_seconds", None)
    processing, _ = _percentiles(a, b, "intentflow_ingest_to_alert_seconds", window)
    before = a.by("intentflow_alerts_total", "action")
    actions = {
        action: {
            "total": total,
            "per_s": max(0.0, total - before.get(action, 0.0)) / dt if dt > 0 else math.nan,
        }
        for action, total in sorted(
            b.by("intentflow_alerts_total", "action").items(), key=lambda kv: -kv[1]
        )
    }
    aucs = b.values("intentflow_model_auc")
    losses = b.values("intentflow_model_log_loss")
    ages = b.values("intentflow_snapshot_age_seconds")
    progress = b.values("intentflow_progress_age_seconds")
    backlog = b.values("intentflow_source_backlog_entries")
    return StatusFigures(
        interval_s=dt,
        version=info.get("version", ""),
        config_hash=info.get("config_hash", ""),
        events_per_s=_rate(a, b, "intentflow_events_total", dt),
        invalid_per_s=_rate(a, b, "intentflow_events_invalid_total", dt),
        duplicates_per_s=_rate(a, b, "intentflow_events_duplicate_total", dt),
        alerts_per_s=_rate(a, b, "intentflow_alerts_total", dt),
        events_total=b.total("intentflow_events_total"),
        alerts_total=b.total("intentflow_alerts_total"),
        event_time_lag_s=b.by("intentflow_source_event_time_lag_seconds", "source"),
        backlog_entries=sum(backlog) if backlog else None,
        latency_s=latency,
        processing_s=processing,
        latency_window=window,
        alerts_by_action=actions,
        model_auc=sum(aucs) / len(aucs) if aucs else None,
        model_auc_min=min(aucs) if aucs else None,
        model_log_loss=sum(losses) / len(losses) if losses else None,
        snapshot_age_s=max(ages) if ages else None,
        progress_age_s=progress[0] if progress else None,
        redis_connected={
            client: v == 1.0 for client, v in b.by("intentflow_redis_connected", "client").items()
        },
        sink_retries_per_s=_rate(a, b, "intentflow_sink_retries_total", dt),
        sink_errors_total=b.total("intentflow_sink_errors_total"),
    )


def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v * 1000:.2f} ms"


def _opt(v: float | None, fmt: str) -> str:
    return "-" if v is None or math.isnan(v) else format(v, fmt)


def render(fig: StatusFigures, url: str) -> Any:
    """A rich renderable of the figures."""
    from rich.console import Group
    from rich.table import Table

    main = Table(title=f"intentflow {fig.version} at {url} (config {fig.config_hash})")
    main.add_column("figure")
    main.add_column("value", justify="right")
    main.add_row("events in", f"{fig.events_per_s:,.1f}/s  ({fig.events_total:,.0f} total)")
    main.add_row("invalid (dead letters)", f"{fig.invalid_per_s:,.1f}/s")
    main.add_row("duplicates suppressed", f"{fig.duplicates_per_s:,.1f}/s")
    main.add_row("alerts", f"{fig.alerts_per_s:,.1f}/s  ({fig.alerts_total:,.0f} total)")
    for src, lag in sorted(fig.event_time_lag_s.items()):
        main.add_row(f"event-time lag ({src})", f"{lag:,.1f} s")
    main.add_row("stream backlog", _opt(fig.backlog_entries, ",.0f") + " entries")
    suffix = "" if fig.latency_window == "interval" else " (since start)"
    for key in ("p50", "p95", "p99"):
        main.add_row(f"event→alert {key}{suffix}", _ms(fig.latency_s[key]))
    main.add_row(f"ingest→alert p99{suffix}", _ms(fig.processing_s["p99"]))
    auc = _opt(fig.model_auc, ".3f")
    if fig.model_auc_min is not None and fig.model_auc_min != fig.model_auc:
        auc += f" (min {fig.model_auc_min:.3f})"
    main.add_row("model AUC", auc)
    main.add_row("model log loss", _opt(fig.model_log_loss, ".4f"))
    main.add_row("snapshot age", _opt(fig.snapshot_age_s, ".1f") + " s")
    main.add_row("last progress", _opt(fig.progress_age_s, ".1f") + " s ago")
    for client, ok in sorted(fig.redis_connected.items()):
        main.add_row(f"redis ({client})", "connected" if ok else "DOWN")
    main.add_row("sink retries", f"{fig.sink_retries_per_s:,.2f}/s")
    main.add_row("sink errors", f"{fig.sink_errors_total:,.0f}")
    actions = Table(title="alerts per action")
    actions.add_column("action")
    actions.add_column("total", justify="right")
    actions.add_column("per second", justify="right")
    for action, row in fig.alerts_by_action.items():
        actions.add_row(action, f"{row['total']:,.0f}", f"{row['per_s']:,.2f}")
    return Group(main, actions) if fig.alerts_by_action else main


def cmd_status(args: argparse.Namespace) -> int:
    """Print the key figures of the engine behind ``--metrics-url``."""
    url: str = args.metrics_url
    first = fetch(url)
    time.sleep(max(0.0, args.interval))
    second = fetch(url)
    fig = summarize(first, second)
    if args.json:
        print(orjson.dumps(fig.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        from rich.console import Console

        Console().print(render(fig, url))
    return 0

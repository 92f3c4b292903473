"""PNG plots of ``python -m bench e2e``: latency against load, throughput against the naive flow.

Drawn with matplotlib's object interface (``Figure``, Agg canvas), so no
global pyplot state is touched.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from matplotlib.figure import Figure

__all__ = ["PERCENTILES", "latency_plot", "throughput_plot", "write_plots"]

#: (JSON key, legend label) of the latency curves.
PERCENTILES: Final = (
    ("p50_ms", "p50"),
    ("p99_ms", "p99"),
    ("p999_ms", "p99.9"),
    ("max_ms", "max"),
)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _load_label(load: str, row: Mapping[str, Any]) -> str:
    rate = row.get("offered_rate")
    per_s = f"{rate:,.0f}/s" if _finite(rate) else "-"
    label = f"{load} %\n{per_s}, n={row.get('latency_samples', 0):,}"
    backlog = row.get("backlog_s")
    if isinstance(backlog, int | float) and backlog > 1.0:  # fell behind: mostly queueing
        label += f"\nbacklog {backlog:.0f} s"
    return label


def latency_plot(by_load: Mapping[str, Mapping[str, Any]], eps: float, path: Path) -> Path:
    """Event-to-alert latency percentiles (log scale) against the offered load."""
    loads = sorted(by_load, key=float)
    fig = Figure(figsize=(7.0, 4.5), dpi=110)
    ax = fig.subplots()
    for key, label in PERCENTILES:
        xs = [float(x) for x in loads if _finite(by_load[x].get(key))]
        ys = [float(by_load[x][key]) for x in loads if _finite(by_load[x].get(key))]
        if xs:
            ax.plot(xs, ys, marker="o", label=label)
    if any(ax.get_lines()):
        ax.set_yscale("log")
    ax.set_xticks([float(x) for x in loads])
    ax.set_xticklabels([_load_label(x, by_load[x]) for x in loads], fontsize=8)
    ax.set_xlabel(f"offered load, share of the measured maximum ({eps:,.0f} events/s)")
    ax.set_ylabel("event-to-alert latency (ms)")
    ax.set_title("Latency against load (one engine process, real Redis)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    return path


def throughput_plot(
    eps_rounds: Sequence[float],
    naive_rounds: Sequence[float],
    per_cpu: tuple[float, float],
    path: Path,
) -> Path:
    """Engine and naive flow: events/s by round (median bars) and events per CPU-second."""
    fig = Figure(figsize=(9.0, 4.5), dpi=110)
    left, right = fig.subplots(1, 2)
    names = ["intentflow", "naive Bytewax\n+ River"]
    colors = ["#2b6cb0", "#a0aec0"]
    medians = [_median(eps_rounds), _median(naive_rounds)]
    left.bar(names, [m if _finite(m) else 0.0 for m in medians], color=colors)
    for i, rounds in enumerate((eps_rounds, naive_rounds)):
        left.scatter([i] * len(rounds), list(rounds), color="black", s=14, zorder=3)
    ratio = medians[0] / medians[1] if _finite(medians[1]) and medians[1] > 0 else math.nan
    left.set_title(f"events/s through Redis (ratio {ratio:.2f}x)", fontsize=10)
    left.set_ylabel("events/s (bars: median; dots: rounds)")
    right.bar(names, [c if _finite(c) else 0.0 for c in per_cpu], color=colors)
    cpu_ratio = per_cpu[0] / per_cpu[1] if _finite(per_cpu[1]) and per_cpu[1] > 0 else math.nan
    right.set_title(f"events per CPU-second of the process ({cpu_ratio:.2f}x)", fontsize=10)
    for ax, values in ((left, medians), (right, list(per_cpu))):
        for i, v in enumerate(values):
            if _finite(v):
                ax.annotate(f"{v:,.0f}", (i, v), ha="center", va="bottom", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Throughput: same events, same Redis, one process each")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def write_plots(figures: Mapping[str, Any], directory: Path, stem: str = "e2e") -> dict[str, str]:
    """Both plots from the e2e figures into ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    latency = latency_plot(figures["by_load"], figures["eps"], directory / f"{stem}-latency.png")
    throughput = throughput_plot(
        figures["eps_rounds"],
        figures["naive_eps_rounds"],
        (figures["eps_per_engine_cpu_s"], figures["naive_eps_per_cpu_s"]),
        directory / f"{stem}-throughput.png",
    )
    return {"latency": str(latency), "throughput": str(throughput)}

"""PNG plots of ``python -m bench e2e``: latency against load, throughput against the naive flow.

Drawn with matplotlib's object interface (``Figure``, Agg canvas), so no
global pyplot state is touched.
"""

from __future__ import annotations

import math
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
    for x in loads:
        row = by_load[x]
        rate = row.get("offered_rate")
        samples = row.get("latency_samples", 0)
        note = f"{rate:,.0f}/s\nn={samples:,}" if _finite(rate) else f"n={samples:,}"
        ax.annotate(note, (float(x), 0.02), xycoords=("data", "axes fraction"), ha="center",
                    fontsize=8, color="0.35")  # fmt: skip
    if any(ax.get_lines()):
        ax.set_yscale("log")
    ax.set_xticks([float(x) for x in loads])
    ax.set_xticklabels([f"{x} %" for x in loads])
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
    eps: float,
    naive_eps: float,
    path: Path,
) -> Path:
    """Events/s of the engine and of the naive flow: median bars and every round."""
    fig = Figure(figsize=(6.0, 4.5), dpi=110)
    ax = fig.subplots()
    names = ["intentflow", "naive Bytewax + River"]
    medians = [eps, naive_eps]
    ax.bar(names, [m if _finite(m) else 0.0 for m in medians], color=["#2b6cb0", "#a0aec0"])
    for i, rounds in enumerate((eps_rounds, naive_rounds)):
        ax.scatter([i] * len(rounds), list(rounds), color="black", s=14, zorder=3)
    for i, m in enumerate(medians):
        if _finite(m):
            ax.annotate(f"{m:,.0f}/s", (i, m), ha="center", va="bottom", fontsize=9)
    ratio = eps / naive_eps if _finite(naive_eps) and naive_eps > 0 else math.nan
    ax.set_ylabel("events/s (median of rounds; dots: rounds)")
    ax.set_title(f"Throughput, same stream and Redis: ratio {ratio:.2f}x")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_plots(figures: Mapping[str, Any], directory: Path, stem: str = "e2e") -> dict[str, str]:
    """Both plots from the e2e figures into ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    latency = latency_plot(figures["by_load"], figures["eps"], directory / f"{stem}-latency.png")
    throughput = throughput_plot(
        figures["eps_rounds"],
        figures["naive_eps_rounds"],
        figures["eps"],
        figures["naive_eps"],
        directory / f"{stem}-throughput.png",
    )
    return {"latency": str(latency), "throughput": str(throughput)}

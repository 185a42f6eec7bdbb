"""wall_time.png: suite wall time against node count, serial and -n 4, with the floor."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.stats import MODE_LABELS, MODES


def plot_wall_time(results: Mapping[str, Any], path: Path) -> Path:
    """Draw the suite's wall time per node count (one line per mode, plus the pod-start floor)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    runs = sorted(results.get("runs", []), key=lambda run: run["nodes"])
    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for mode, marker in zip(MODES, ("o", "s"), strict=True):
        points = [
            (r["nodes"], r["suite"][mode]["wall_s"]) for r in runs if mode in r.get("suite", {})
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, marker=marker, label=f"suite, {MODE_LABELS[mode]}")
    floor = [(r["nodes"], r["floor_s"]) for r in runs if r.get("floor_s") is not None]
    if floor:
        xs, ys = zip(*floor, strict=True)
        axes.plot(xs, ys, marker="^", linestyle="--", label="pod-start floor (one wave)")
    axes.set_xlabel("nodes")
    axes.set_ylabel("wall time (s)")
    axes.set_title("k8s-netconform on netlab: suite wall time")
    axes.set_ylim(bottom=0)
    axes.set_xticks([r["nodes"] for r in runs])
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path

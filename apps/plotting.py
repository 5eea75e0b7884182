"""Plots of run reports: accuracy against the bytes (and the time) it cost."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  (after choosing the headless backend)


def cumulative_megabytes(report: dict[str, Any]) -> list[float]:
    """Cumulative traffic (up + down) at the end of each round, in MB."""
    total, points = 0, []
    for r in report["rounds"]:
        total += r["bytes_up"] + r["bytes_down"]
        points.append(total / 1e6)
    return points


def plot_accuracy_vs_bytes(reports: Sequence[tuple[str, dict[str, Any]]], path: Path, title: str) -> None:
    """One line per (label, report): test accuracy after each round against cumulative MB on the wire."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, report in reports:
        ax.plot(cumulative_megabytes(report), [r["accuracy"] for r in report["rounds"]], marker="o",
                markersize=3, label=label)
    ax.set_xlabel("cumulative bytes on the wire, up + down (MB)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_systems(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Side by side: total bytes on the network per row (log scale), and accuracy against elapsed round time."""
    fig, (bytes_ax, time_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [r["label"] for r in rows]
    totals = [(r["bytes_up"] + r["bytes_down"]) / 1e6 for r in rows]
    bytes_ax.barh(labels, totals)
    bytes_ax.set_xscale("log")
    bytes_ax.set_xlim(left=1)
    bytes_ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for label, total in zip(labels, totals, strict=True):
        bytes_ax.annotate(f"{total:,.1f} MB", (total, label), xytext=(3, 0), textcoords="offset points",
                          va="center", fontsize=8)
    bytes_ax.invert_yaxis()
    bytes_ax.set_xlabel("bytes on the network, up + down (MB, log scale)")
    for r in rows:
        elapsed, total = [], 0.0
        for seconds in r["round_seconds"]:
            total += seconds
            elapsed.append(total)
        time_ax.plot(elapsed, r["accuracy"], marker="o", markersize=3, label=r["label"])
    time_ax.set_xlabel("elapsed round time (s)")
    time_ax.set_ylabel("test accuracy")
    time_ax.grid(alpha=0.3)
    time_ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_quality(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """One panel per setting: each row's mean final accuracy (bars: the seeds' range) against its total
    bytes below a float32 FedAvg (log scale)."""
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig, axes = plt.subplots(1, max(1, len(settings)), figsize=(5.5 * max(1, len(settings)), 4.5), squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=False):
        for r in (r for r in rows if r["setting"] == setting):
            accuracy, ratio = r["final_accuracy"], r["total_vs_float32"]["mean"]
            ax.errorbar([ratio], [accuracy["mean"]], fmt="o",
                        yerr=[[accuracy["mean"] - accuracy["min"]], [accuracy["max"] - accuracy["mean"]]],
                        label=f"{r['variant']} ({r['seeds']} seeds)", capsize=3)
        ax.set_xscale("log")
        ax.set_xlabel("total bytes below a float32 FedAvg (x, log scale)")
        ax.set_ylabel("final test accuracy")
        ax.set_title(setting)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

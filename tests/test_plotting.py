"""The plots the benchmarks and simulate draw: real PNG files of the declared size, from report-shaped rows."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image

from fedsqueeze.apps.plotting import cumulative_megabytes, plot_accuracy_vs_bytes, plot_systems


def test_benchmark_rows_and_reports_are_drawn_as_pngs(tmp_path: Path) -> None:
    rows = [{"label": "flower", "bytes_up": 4e6, "bytes_down": 5e6, "round_seconds": [2.0, 2.5],
             "accuracy": [0.5, 0.7]},
            {"label": "fedcompress", "bytes_up": 3e5, "bytes_down": 4e5, "round_seconds": [3.0, 3.0],
             "accuracy": [0.4, 0.65]}]
    plot_systems(rows, tmp_path / "systems.png", "two systems")
    height, width, _ = matplotlib.image.imread(tmp_path / "systems.png").shape
    assert (width, height) == (1440, 540)   # 12 x 4.5 inches at 120 dpi
    report = {"rounds": [{"round": 1, "bytes_up": 1_000_000, "bytes_down": 2_000_000, "accuracy": 0.5},
                         {"round": 2, "bytes_up": 1_000_000, "bytes_down": 2_000_000, "accuracy": 0.6}]}
    assert cumulative_megabytes(report) == [3.0, 6.0]
    plot_accuracy_vs_bytes([("fedavg", report)], tmp_path / "report.png", "one run")
    assert matplotlib.image.imread(tmp_path / "report.png").ndim == 3

"""The quality table's arithmetic: per-seed deltas against that seed's baseline, means and ranges, missing cells."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import quality  # noqa: E402  (a benchmark script, importable from its folder)

SETTING = quality.Setting("IID", "iid", {"FedAvg": "--epochs 2", "Squeezed": "--epochs 1 --method fedcompress"})


def report(accuracy: float, up: int, down: int) -> dict[str, Any]:
    """A two-round run report as the server writes it (10 updates a round, a 1 MB float32 model)."""
    rounds = [{"round": n, "accuracy": accuracy, "bytes_up": up // 2, "bytes_down": down // 2, "updates": 10,
               "selected": 10, "dense_bytes_up": 10_000_000, "dense_bytes_down": 10_000_000, "metrics": {}}
              for n in (1, 2)]
    return {"final_accuracy": accuracy, "bytes_up": up, "bytes_down": down, "dense_bytes_down": 20_000_000,
            "wall_seconds": 1.0, "rounds": rounds}


def store(out: Path, seed: int, label: str, run: dict[str, Any], command: str | None = None) -> None:
    folder = SETTING.runs(seed, out) / quality.slug(label)
    folder.mkdir(parents=True)
    run["command"] = command or shlex.join(["simulate", *SETTING.common(seed), *shlex.split(SETTING.rows[label])])
    (folder / "compare.json").write_text(json.dumps(run))


def test_rows_are_measured_per_seed_against_that_seeds_baseline_and_missing_cells_are_listed(tmp_path) -> None:
    store(tmp_path, 0, "FedAvg", report(0.90, 20_000_000, 20_000_000))
    store(tmp_path, 0, "Squeezed", report(0.89, 1_000_000, 3_000_000))
    store(tmp_path, 1, "FedAvg", report(0.92, 10_000_000, 10_000_000))
    store(tmp_path, 1, "Squeezed", report(0.90, 1_000_000, 1_000_000))
    store(tmp_path, 2, "Squeezed", report(0.50, 1_000_000, 1_000_000), command="simulate --other-command")
    reports, missing = quality.collect(SETTING, tmp_path, reuse_only=True)
    assert missing == ["IID, seed 2: FedAvg", "IID, seed 2: Squeezed"]   # a different command is no reuse
    baseline, squeezed = quality.aggregate(SETTING, reports)
    assert squeezed["seeds"] == 2 and squeezed["final_accuracy"] == {"mean": 0.895, "min": 0.89, "max": 0.90}
    assert squeezed["accuracy_delta_points"]["mean"] == pytest.approx(-1.5)   # -1 against 0.90, -2 against 0.92
    assert squeezed["total_vs_baseline"] == {"mean": 10.0, "min": 10.0, "max": 10.0}
    assert squeezed["uplink_vs_baseline"]["mean"] == pytest.approx(15.0)     # 20x and 10x
    assert squeezed["total_vs_float32"]["mean"] == pytest.approx((10.0 + 20.0) / 2)
    assert baseline["total_vs_float32"] == {"mean": 1.5, "min": 1.0, "max": 2.0}
    assert "| IID | Squeezed | 2 | 0.8950 (0.8900 to 0.9000) | -1.50 (-2.00 to -1.00) |" in quality.markdown(
        [baseline, squeezed], missing)

"""A tabular federation: a small MLP on rows of a CSV file, evaluated by the clients themselves.

``fedsqueeze-tabular-csv OUT.csv`` writes scikit-learn's breast-cancer table
(569 rows, 30 numeric features, shipped inside scikit-learn's wheel: no
download) as a CSV with a ``label`` column, its features standardised as a
device would before training. ``tabular_mlp`` is the model, registered as
``tabular-mlp`` (entry point ``fedsqueeze.models``).
"""

from __future__ import annotations

import argparse
import csv
from math import prod
from pathlib import Path

from torch import nn


def tabular_mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 32) -> nn.Module:
    """Rows of ``input_shape`` features -> ``hidden`` ReLU units -> one score per class."""
    return nn.Sequential(nn.Flatten(), nn.Linear(prod(input_shape), hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def write_csv(path: Path) -> int:
    """Write the breast-cancer table, standardised, with a ``label`` column; return the rows written."""
    from sklearn.datasets import load_breast_cancer

    table = load_breast_cancer()
    x = (table.data - table.data.mean(axis=0)) / table.data.std(axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([*(name.replace(" ", "_") for name in table.feature_names), "label"])
        for row, label in zip(x, table.target):
            writer.writerow([*(f"{v:.6g}" for v in row), int(label)])
    return len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description="write scikit-learn's breast-cancer table as a CSV")
    parser.add_argument("out", type=Path, help="the CSV file to write")
    rows = write_csv(parser.parse_args().out)
    print(f"wrote {rows} rows")

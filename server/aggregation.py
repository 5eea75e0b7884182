"""The round's accumulator: a running weighted sum, never a list of updates.

Memory is one model's worth of sums however many clients report, and two
accumulators merge, so partial aggregates from several aggregators combine.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


class WeightedSum:
    """Running sum of w * x per tensor, and of w, over the updates added so far."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.weight = 0.0
        self.count = 0

    def add(self, tensors: Mapping[str, np.ndarray | torch.Tensor], weight: float) -> None:
        if not weight > 0:
            raise ValueError(f"aggregation weight must be positive, not {weight}")
        if self.sums and set(tensors) != set(self.sums):
            raise ValueError("update tensors differ from the accumulator's")
        for name, value in tensors.items():
            value = torch.as_tensor(value, dtype=torch.float32)
            if name in self.sums:
                self.sums[name].add_(value, alpha=weight)
            else:
                self.sums[name] = value * weight
        self.weight += weight
        self.count += 1

    def merge(self, other: WeightedSum) -> None:
        """Fold another accumulator's state into this one."""
        if not other.count:
            return
        if self.sums and set(other.sums) != set(self.sums):
            raise ValueError("cannot merge accumulators over different tensors")
        for name, value in other.sums.items():
            if name in self.sums:
                self.sums[name].add_(value)
            else:
                self.sums[name] = value.clone()
        self.weight += other.weight
        self.count += other.count

    def mean(self) -> dict[str, torch.Tensor]:
        if not self.count:
            raise ValueError("no updates to average")
        return {name: value / self.weight for name, value in self.sums.items()}


def add_mean_delta(model: torch.nn.Module, accumulator: WeightedSum) -> dict[str, torch.Tensor]:
    """Add the accumulator's weighted mean (of deltas) to ``model`` in place; return that mean."""
    mean_delta = accumulator.mean()
    state = model.state_dict()
    with torch.no_grad():
        for name, delta in mean_delta.items():
            state[name].add_(delta)
    return mean_delta

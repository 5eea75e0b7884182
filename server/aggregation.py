"""The round's accumulator: a running weighted sum, never a list of updates.

Memory is one model's worth of sums however many clients report, and two
accumulators merge, so partial aggregates from several aggregators combine.
The sums are exact (fixed point), so the result does not depend on the order
updates arrive in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

FRACTION_BITS = 36                  # w * x is summed as a whole multiple of 2^-36
_SCALE = float(2 ** FRACTION_BITS)
LIMIT = 2.0 ** 62                    # largest |sum| in scaled units: headroom below int64's 2^63


class WeightedSum:
    """Running sum of w * x per tensor, and of w, over the updates added so far; exact, so order-free.

    Each w * x is rounded once to a multiple of 2^-36 and summed as int64, so any order of adds and merges,
    in one aggregator or a tree of them, gives the same bits (a float32 running sum does not: rounding depends
    on arrival order). The grid is finer than a float32 ulp for every |w * x| above 2^-13. The sum of |w * x| per
    element is bounded by 2^26 (about 6.7e7; e.g. 670 clients of 1,000 examples with weights up to 100 in
    magnitude): an add that could pass it raises before it changes the sum. Weights sum exactly while they
    are whole numbers (example counts), as the server's are.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}   # int64, in units of 2^-FRACTION_BITS
        self.weight = 0.0
        self.count = 0
        self.bound = 0.0   # at least the largest |sum of w * x| of any element so far (what overflow checks)

    @classmethod
    def of(cls, sums: dict[str, torch.Tensor], weight: float, count: int, bound: float) -> WeightedSum:
        """An accumulator holding given state: int64 ``sums`` (units of 2^-FRACTION_BITS), as another sent it."""
        accumulator = cls()
        accumulator.sums, accumulator.weight, accumulator.count, accumulator.bound = sums, weight, count, bound
        return accumulator

    def add(self, tensors: Mapping[str, np.ndarray | torch.Tensor], weight: float) -> None:
        if self.sums and set(tensors) != set(self.sums):
            raise ValueError("update tensors differ from the accumulator's")
        scaled, largest = self.scale(tensors, weight)
        for name, value in scaled.items():
            if name in self.sums:
                self.sums[name].add_(value)
            else:
                self.sums[name] = value
        self.settle(largest, weight)

    def scale(self, tensors: Mapping[str, np.ndarray | torch.Tensor],
              weight: float) -> tuple[dict[str, torch.Tensor], float]:
        """Each w * x rounded onto the fixed-point grid (int64), and the largest |w * x|; refuses, changing
        nothing, a non-positive weight, a non-finite value, or an add that could overflow the sum."""
        if not weight > 0:
            raise ValueError(f"aggregation weight must be positive, not {weight}")
        scaled, largest = {}, 0.0
        for name, value in tensors.items():
            product = torch.as_tensor(value).to(torch.float64) * weight
            peak = float(product.abs().max()) if product.numel() else 0.0
            if not math.isfinite(peak):
                raise ValueError(f"tensor {name!r} holds a non-finite value")
            largest = max(largest, peak)
            scaled[name] = torch.round(product * _SCALE).to(torch.int64)
        if (self.bound + largest) * _SCALE >= LIMIT:
            raise ValueError(f"this update (|w * x| up to {largest:.3g}) could overflow the exact sum: the sum of "
                             f"|w * x| per element must stay below {LIMIT / _SCALE:.3g}")
        return scaled, largest

    def settle(self, largest: float, weight: float) -> None:
        """Count one added update: its weight, and its largest |w * x| towards the overflow bound."""
        self.bound += largest
        self.weight += weight
        self.count += 1

    def total(self, name: str) -> torch.Tensor:
        """The sum of w * x of one tensor, float64."""
        return self.sums[name].to(torch.float64) / _SCALE

    def merge(self, other: WeightedSum) -> None:
        """Fold another accumulator's state into this one (exactly: the result is the same in any order)."""
        if not other.count:
            return
        if self.sums and set(other.sums) != set(self.sums):
            raise ValueError("cannot merge accumulators over different tensors")
        if (self.bound + other.bound) * _SCALE >= LIMIT:
            raise ValueError("merging these sums could overflow the exact sum")
        for name, value in other.sums.items():
            if name in self.sums:
                self.sums[name].add_(value)
            else:
                self.sums[name] = value.clone()
        self.bound += other.bound
        self.weight += other.weight
        self.count += other.count

    def mean(self) -> dict[str, torch.Tensor]:
        """The weighted mean per tensor, float32."""
        if not self.count:
            raise ValueError("no updates to average")
        return {name: (self.total(name) / self.weight).to(torch.float32) for name in self.sums}


def add_mean_delta(model: torch.nn.Module, accumulator: WeightedSum) -> dict[str, torch.Tensor]:
    """Add the accumulator's weighted mean (of deltas) to ``model`` in place; return that mean."""
    mean_delta = accumulator.mean()
    state = model.state_dict()
    with torch.no_grad():
        for name, delta in mean_delta.items():
            state[name].add_(delta)
    return mean_delta

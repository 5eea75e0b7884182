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
_FOLD_BLOCK = 1 << 16                # elements per pass of a fold: 512 KiB of float64 scratch


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
        """Fold one update (``weight`` times each tensor) into the sums; ValueError, changing nothing, for
        tensors other than the sums', a non-positive weight, a non-finite value or a possible overflow."""
        if self.sums and set(tensors) != set(self.sums):
            raise ValueError("update tensors differ from the accumulator's")
        arrays = {name: _as_array(value) for name, value in tensors.items()}
        for name, array in arrays.items():
            if name in self.sums and tuple(array.shape) != tuple(self.sums[name].shape):
                raise ValueError(f"tensor {name!r} has shape {list(array.shape)}, the sum's is "
                                 f"{list(self.sums[name].shape)}")
        largest = self.checked_peak(arrays, weight)
        for name, array in arrays.items():
            if name not in self.sums:
                self.sums[name] = torch.zeros(array.shape, dtype=torch.int64)
            _fold(self.sums[name].numpy(), array, weight * _SCALE)
        self.settle(largest, weight)

    def scale(self, tensors: Mapping[str, np.ndarray | torch.Tensor],
              weight: float) -> tuple[dict[str, torch.Tensor], float]:
        """Each w * x rounded onto the fixed-point grid (int64, as ``add`` rounds it), and the largest |w * x|,
        for accumulators that place an update themselves; refuses what ``add`` refuses, changing nothing."""
        arrays = {name: _as_array(value) for name, value in tensors.items()}
        largest = self.checked_peak(arrays, weight)
        scaled = {}
        for name, array in arrays.items():
            scaled[name] = torch.zeros(array.shape, dtype=torch.int64)
            _fold(scaled[name].numpy(), array, weight * _SCALE)
        return scaled, largest

    def checked_peak(self, arrays: Mapping[str, np.ndarray], weight: float) -> float:
        """The largest |w * x| of an update; ValueError for a non-positive weight, a non-finite value, or an
        update that could take the sum past its overflow bound."""
        if not weight > 0:
            raise ValueError(f"aggregation weight must be positive, not {weight}")
        largest = 0.0
        for name, array in arrays.items():
            low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError(f"tensor {name!r} holds a non-finite value")
            largest = max(largest, max(-low, high) * weight)   # rounding is monotone: max |w * x| exactly
        if (self.bound + largest) * _SCALE >= LIMIT:
            raise ValueError(f"this update (|w * x| up to {largest:.3g}) could overflow the exact sum: the sum of "
                             f"|w * x| per element must stay below {LIMIT / _SCALE:.3g}")
        return largest

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
                np.add(self.sums[name].numpy(), value.numpy(), out=self.sums[name].numpy())
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


def _fold(total: np.ndarray, values: np.ndarray, factor: float) -> None:
    """``total += rint(values * factor)`` in int64, in blocks whose float64 and int64 scratch stay in cache.

    ``factor`` is w * 2^36, exact, so one multiply gives the bits of (w * x) * 2^36. Whole-array passes of
    float64 and int64 temporaries are memory-bound: at 1.86 M parameters blocking cuts a fold from about
    10 ms to 3 (numpy, one thread; torch's intra-op threads took twice the CPU again; see
    ``benchmarks/results/HISTORY.md``, "Edge aggregators").
    """
    flat_total, flat_values = total.reshape(-1), values.reshape(-1)
    product = np.empty(min(_FOLD_BLOCK, flat_values.size))
    whole = np.empty(product.size, dtype=np.int64)
    for start in range(0, flat_values.size, _FOLD_BLOCK):
        block = flat_values[start:start + _FOLD_BLOCK]
        scratch, rounded = product[:block.size], whole[:block.size]
        scratch[...] = block
        scratch *= factor
        np.rint(scratch, out=scratch)
        rounded[...] = scratch
        target = flat_total[start:start + block.size]
        target += rounded


def _as_array(value: np.ndarray | torch.Tensor) -> np.ndarray:
    """A tensor's values as a numpy array, without a copy where the tensor is on the CPU."""
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def add_mean_delta(model: torch.nn.Module, accumulator: WeightedSum) -> dict[str, torch.Tensor]:
    """Add the accumulator's weighted mean (of deltas) to ``model`` in place; return that mean."""
    mean_delta = accumulator.mean()
    state = model.state_dict()
    with torch.no_grad():
        for name, delta in mean_delta.items():
            state[name].add_(delta)
    return mean_delta

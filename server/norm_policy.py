"""The server's bound on an update's size: ``--max-update-norm`` with ``--norm-action refuse`` or ``clip``.

A bound limits how far one client can move the global model in a round (a
broken or hostile client's delta of norm 1e6 is refused or scaled down, never
averaged in). It applies only to updates that are deltas (``plan.sends_delta``);
a method that uploads something else (latents, weights) is not bounded here.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from fedsqueeze.errors import PayloadError

log = logging.getLogger(__name__)

NORM_ACTIONS = ("refuse", "clip")


@dataclass(frozen=True)
class NormPolicy:
    """An L2 bound over all of an update's tensors together; ``bound <= 0`` turns it off."""

    bound: float
    action: str = "refuse"

    def __post_init__(self) -> None:
        if self.action not in NORM_ACTIONS:
            raise ValueError(f"--norm-action must be refuse or clip, not {self.action!r}")

    def apply(self, sends_delta: bool, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``tensors`` within the bound: unchanged, scaled down (clip), or PayloadError (refuse)."""
        if not sends_delta or self.bound <= 0:
            return tensors
        # float32 dot products (BLAS): a bound check needs no float64 copy of every update
        norm = math.sqrt(sum(float(np.dot(flat, flat)) for flat in (t.reshape(-1) for t in tensors.values())))
        if norm <= self.bound:
            return tensors
        if self.action == "refuse":
            raise PayloadError(f"update norm {norm:.4g} exceeds the server's bound {self.bound:g} "
                               "(--max-update-norm)")
        log.info("clipping an update of norm %.4g to %g", norm, self.bound)
        return {name: (t * (self.bound / norm)).astype(t.dtype) for name, t in tensors.items()}

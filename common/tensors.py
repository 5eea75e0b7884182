"""Tensor specs: what the receiver expects of each tensor before it allocates anything."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import prod

import numpy as np
import torch

from fedsqueeze.v1 import federation_pb2 as pb

# Element types a tensor may declare on the wire, with their wire enum and numpy dtype.
# bfloat16 has no numpy dtype; codecs that emit it decode to float32.
DTYPES: dict[str, tuple[int, np.dtype | None]] = {
    "float32": (pb.FLOAT32, np.dtype(np.float32)),
    "float16": (pb.FLOAT16, np.dtype(np.float16)),
    "bfloat16": (pb.BFLOAT16, None),
    "float64": (pb.FLOAT64, np.dtype(np.float64)),
    "int64": (pb.INT64, np.dtype(np.int64)),   # exact partial sums (fedsqueeze.server.partial_sums) only
}
DTYPE_BY_WIRE = {wire: name for name, (wire, _) in DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and element type of one tensor of a model or update."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def dense_bytes(self) -> int:
        """Size of the tensor as raw float32: the yardstick for every compression figure."""
        return 4 * self.numel


def model_spec(tensors: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, TensorSpec]:
    """Specs of the floating-point tensors of a state dict (integer buffers never travel)."""
    specs = {}
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor) and not value.is_floating_point():
            continue
        if isinstance(value, np.ndarray) and not np.issubdtype(value.dtype, np.floating):
            continue
        specs[name] = TensorSpec(name, tuple(int(d) for d in value.shape), "float32")
    return specs


def float_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's floating-point state-dict entries, detached: what travels on the wire."""
    return {k: v.detach() for k, v in model.state_dict().items() if v.is_floating_point()}


def copy_float_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``float_state`` as copies that later training or loading of ``model`` leaves alone."""
    return {k: v.clone() for k, v in float_state(model).items()}

"""An edge aggregator's partial sum on the wire: what an edge sends for a train task, and what a root accepts.

The sums travel exactly as the edge's ``WeightedSum`` holds them: each tensor's
int64 multiples of 2^-``FRACTION_BITS`` (``fixed64(shuffle=true)|zstd``,
lossless), with the summed weight as the header's ``num_examples`` and the
count and overflow bound in its ``PartialSum``. The root merges it as it would
have added those clients' updates one by one, so one level and two give the
same bits.

An edge is trusted with its clients' updates (it applies the root's policies
to each), but what it sends is checked like any client's payload before
anything changes: the grid, a count of at least one, a weight that whole
updates of at most ``max_examples`` each could add up to, a finite bound that
every element's sum respects, and tensors of the model's shapes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from fedsqueeze.codecs import get_pipeline
from fedsqueeze.errors import PayloadError
from fedsqueeze.server.aggregation import FRACTION_BITS, LIMIT, WeightedSum
from fedsqueeze.tensors import TensorSpec
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import EncodedModel, ExpectedTensor, encode_model

PARTIAL_SUM_CODEC = "fixed64(shuffle=true)|zstd"
_SCALE = float(2 ** FRACTION_BITS)


def expected_partial(specs: Mapping[str, TensorSpec]) -> dict[str, ExpectedTensor]:
    """What a root accepts from an edge for a model of ``specs``: every tensor's int64 sum, losslessly coded."""
    pipeline = get_pipeline(PARTIAL_SUM_CODEC)
    return {name: ExpectedTensor(TensorSpec(name, spec.shape, "int64"), pipeline) for name, spec in specs.items()}


def encode_partial(accumulator: WeightedSum, specs: Mapping[str, TensorSpec]) -> EncodedModel:
    """The accumulator's sums as a tensor stream (it must hold at least one update)."""
    return encode_model({name: accumulator.sums[name].numpy() for name in specs}, expected_partial(specs))


def partial_header(accumulator: WeightedSum) -> tuple[int, pb.PartialSum]:
    """(num_examples, PartialSum) describing the accumulator; the weight must be whole (example counts)."""
    weight = int(accumulator.weight)
    if weight != accumulator.weight:
        raise ValueError(f"an edge's summed weight must be a whole number of examples, not {accumulator.weight}")
    return weight, pb.PartialSum(count=accumulator.count, bound=accumulator.bound, fraction_bits=FRACTION_BITS)


def accept_partial(header: pb.UpdateHeader, tensors: Mapping[str, np.ndarray], max_examples: int) -> WeightedSum:
    """The partial sum an edge sent, as a ``WeightedSum`` ready to merge; PayloadError (changing nothing) if any
    part of it could not have come from honest sums of whole updates."""
    partial, weight = header.partial, header.num_examples
    if partial.fraction_bits != FRACTION_BITS:
        raise PayloadError(f"partial sum on a 2^-{partial.fraction_bits} grid; this root sums on 2^-{FRACTION_BITS}")
    if partial.count < 1:
        raise PayloadError("partial sum of no updates: an edge without updates reports a failure instead")
    if not partial.count <= weight <= partial.count * max_examples:
        raise PayloadError(f"partial sum of {partial.count} updates weighs {weight}: each update weighs from 1 to "
                           f"{max_examples} (--max-examples)")
    if partial.failed > partial.selected or partial.count > partial.selected - partial.failed:
        raise PayloadError(f"partial sum counts {partial.count} updates and {partial.failed} failures of "
                           f"{partial.selected} selected clients")
    bound = partial.bound
    if not (math.isfinite(bound) and 0 <= bound and bound * _SCALE < LIMIT):
        raise PayloadError(f"partial sum's bound {bound} is not a finite number in [0, {LIMIT / _SCALE:.3g})")
    # each update's w * x was rounded to the grid once (half a unit each), and the bound summed in float64
    largest = bound * _SCALE * (1 + 1e-9) + partial.count / 2 + 1
    sums = {}
    for name, value in tensors.items():
        peak = int(np.abs(value).max()) if value.size else 0
        if peak > largest:
            raise PayloadError(f"a sum of {peak / _SCALE:.6g} exceeds the partial sum's bound {bound:.6g}", name)
        sums[name] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.int64))
    return WeightedSum.of(sums, float(weight), partial.count, bound)

"""In-place distillation: a narrower nested sub-network trained through a wider model's own weights.

Slimmable networks (Yu & Huang, 2019) train every width of one network at once:
the widest learns from the labels and each narrower width, whose channels are a
subset of the widest's, learns to match the widest's outputs on the same batch.
Here a REFT client whose tier is wider than the narrowest runs the narrowest
tier's sub-network beside its own model, so the smallest devices' model is also
trained on the data of every capable device (not only on their own, often
skewed, data) at a small extra cost (the narrowest tier's FLOPs, 7% of the full
CNN's).

The sub-network is no copy: ``NestedWidth`` gathers its tensors from the wider
model's on every call (``torch.func.functional_call`` on the pruned structure),
so its loss's gradients land in the wider model's parameters and one optimiser
step trains both. Buffers (e.g. batch-norm running statistics) are gathered too
but not written back: the sub-network normalises with its batch's statistics
while training and the wider model keeps its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from fedsqueeze.methods.reft.pruning import index_map, prune


class NestedWidth:
    """The sub-network of ``model`` that keeps ``keep``'s output channels, evaluated from ``model``'s weights."""

    def __init__(self, model: nn.Module, example: torch.Tensor, keep: Mapping[str, Sequence[int]]) -> None:
        self.structure = prune(model, example, keep)
        positions = index_map(model, example, keep)
        self.positions = {name: torch.from_numpy(flat.reshape(-1)) for name, flat in positions.items()}
        self.shapes = {name: flat.shape for name, flat in positions.items()}

    def __call__(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The sub-network's outputs on ``x``; differentiable with respect to ``model``'s parameters."""
        source = {**dict(model.named_buffers()), **dict(model.named_parameters())}
        tensors = {name: source[name].reshape(-1)[idx].reshape(self.shapes[name])
                   for name, idx in self.positions.items()}
        self.structure.train(model.training)
        return functional_call(self.structure, tensors, (x,))


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                      regression: bool) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), or the squared error for one regression
    output; the teacher's outputs are a fixed target (no gradient flows into them)."""
    teacher = teacher.detach()
    if regression:
        return F.mse_loss(student, teacher)
    return F.kl_div(F.log_softmax(student / temperature, dim=1), F.softmax(teacher / temperature, dim=1),
                    reduction="batchmean") * temperature**2

"""What training a model costs a device: parameters, FLOPs and memory per step, counted, not timed.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` over one forward
and backward pass. Memory is the bytes one training step must hold at once:
parameters, their gradients, the optimiser's state (``optimizer_slots`` tensors
per parameter: 1 for SGD with momentum, 2 for Adam) and the activations
autograd saves for the backward pass (counted with saved-tensor hooks, each
storage once). CPU torch has no allocator peak to read, and this count is what
shrinks with a sub-model's width, independent of the allocator's caching.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class TrainingCost:
    params: int
    flops_per_sample: float      # forward + backward
    memory_bytes: int            # one step at ``batch_size``


def training_cost(model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 32,
                  optimizer_slots: int = 1) -> TrainingCost:
    """Count one training step of ``model`` on a batch of zeros (the model is left unchanged)."""
    x = torch.zeros(batch_size, *input_shape)
    y = torch.zeros(batch_size, dtype=torch.long)
    params = [p for p in model.parameters() if p.requires_grad]
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    was_training = model.training
    model.train()
    counter = FlopCounterMode(display=False)
    with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
    for p in params:
        p.grad = None
    model.train(was_training)
    param_ids = {p.untyped_storage().data_ptr() for p in params}
    activations = sum(n for ptr, n in saved.items() if ptr not in param_ids)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    return TrainingCost(params=sum(p.numel() for p in params),
                        flops_per_sample=counter.get_total_flops() / batch_size,
                        memory_bytes=param_bytes * (2 + optimizer_slots) + activations)

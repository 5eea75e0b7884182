"""Weight clustering of models: each layer's weights shared among K values (weight sharing).

The weights of every convolution and linear layer are clustered, each layer
with its own K centroids (1-D k-means, k-means++ init); biases stay as they
are. While ``weight_sharing`` is active a layer's weight *is* ``centroids[index]``
(a torch parametrization), so training updates the centroids with the summed
gradients of their members and the assignment stays fixed, as in Deep
Compression and tfmot's clustering. Leaving it bakes the clustered values in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from fedsqueeze.codecs.cluster import assign, kmeans_1d

CLUSTERED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def clustered_tensors(model: nn.Module) -> list[str]:
    """State-dict names of the weights that get clustered."""
    return [f"{name}.weight" if name else "weight" for name, module in model.named_modules()
            if isinstance(module, CLUSTERED_LAYERS)]


class SharedWeight(nn.Module):
    """Parametrization: the weight is ``centroids[index]``; the trainable tensor is the (K,) centroids."""

    def __init__(self, weight: torch.Tensor, k: int, seed: int = 0) -> None:
        super().__init__()
        values = weight.detach().cpu().numpy().reshape(-1)
        self.initial = torch.from_numpy(kmeans_1d(values, k, seed=seed))
        self.register_buffer("index", torch.from_numpy(assign(values, self.initial.numpy()).astype(np.int64)))
        self.shape = weight.shape

    def forward(self, centroids: torch.Tensor) -> torch.Tensor:
        return centroids[self.index].view(self.shape)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return self.initial.to(weight.dtype)


def _layers(model: nn.Module) -> Iterator[nn.Module]:
    return (m for m in model.modules() if isinstance(m, CLUSTERED_LAYERS))


@contextmanager
def weight_sharing(model: nn.Module, k: int, seed: int = 0) -> Iterator[nn.Module]:
    """Cluster every conv/linear weight to at most ``k`` shared values for the duration of the block."""
    layers = list(_layers(model))
    for layer in layers:
        parametrize.register_parametrization(layer, "weight", SharedWeight(layer.weight, k, seed))
    try:
        yield model
    finally:
        for layer in layers:
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)


def cluster_model_(model: nn.Module, k: int, seed: int = 0) -> nn.Module:
    """Replace every conv/linear weight, in place, by its nearest of ``k`` per-layer centroids."""
    with weight_sharing(model, k, seed):
        pass
    return model


def distinct_values(model: nn.Module) -> dict[str, int]:
    """How many distinct values each clustered weight holds."""
    state = model.state_dict()
    return {name: int(torch.unique(state[name]).numel()) for name in clustered_tensors(model)}

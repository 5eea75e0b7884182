"""Nested structured sub-models: rank channels once, keep the top fraction per width, prune physically.

REFT hands each device a sub-model sized to it. A sub-model here is a real,
smaller torch model (fewer output channels / neurons, so fewer FLOPs and less
memory), cut from the global model by torch-pruning, which knows which layers
are coupled (a conv's output channels are the next conv's input channels and,
after a flatten, blocks of the next linear layer's inputs).

Every prunable layer (each Conv2d / Linear but the output head) ranks its output
channels by the L1 magnitude of everything coupled to them; a width ``w`` keeps
the ``ceil(w * n)`` best. All widths cut from the same ranking, so a smaller
width's channels are a subset of a larger one's (nested).

Layers that a residual addition couples share one group, hence one ranking:
cutting the first of them cuts the rest to the same channels.

The structure of a sub-model depends only on how many channels each layer
keeps, not which; a client therefore rebuilds it from counts (``keep_first``)
and the server alone holds the indices (``index_map``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from fedsqueeze.tensors import float_state

Keep = Mapping[str, Sequence[int]]   # prunable layer name -> sorted kept output-channel indices


def prunable_layers(model: nn.Module) -> list[str]:
    """Names of the layers whose output channels may be pruned: every Conv2d and Linear but the last layer."""
    layers = [name for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    return layers[:-1]


def _graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(model, example_inputs=example)


def _out_group(graph: tp.DependencyGraph, module: nn.Module, idxs: Sequence[int]) -> tp.dependency.Group:
    return graph.get_pruning_group(module, graph.get_pruner_of_module(module).prune_out_channels, idxs=list(idxs))


def channel_ranking(model: nn.Module, example: torch.Tensor) -> dict[str, np.ndarray]:
    """Per prunable layer, its output channels ordered from most to least important (group L1 magnitude)."""
    graph = _graph(model, example)
    importance = tp.importance.GroupMagnitudeImportance(p=1)
    modules = dict(model.named_modules())
    ranking = {}
    for name in prunable_layers(model):
        channels = graph.get_out_channels(modules[name])
        scores = importance(_out_group(graph, modules[name], range(channels)))
        ranking[name] = np.argsort(-scores.detach().numpy(), kind="stable")
    return ranking


def kept_channels(ranking: Mapping[str, np.ndarray], width: float) -> dict[str, list[int]]:
    """The channels a width keeps: the ``ceil(width * n)`` best of each layer (at least one), sorted."""
    if not 0 < width <= 1:
        raise ValueError(f"width must be in (0, 1], not {width}")
    return {name: sorted(int(i) for i in order[:max(1, math.ceil(width * len(order)))])
            for name, order in ranking.items()}


def keep_first(counts: Mapping[str, int]) -> dict[str, list[int]]:
    """A ``Keep`` with the first ``count`` channels of each layer: the same structure as any other choice."""
    return {name: list(range(count)) for name, count in counts.items()}


def prune(model: nn.Module, example: torch.Tensor, keep: Keep) -> nn.Module:
    """A physically smaller copy of ``model`` holding only the kept channels (and what is coupled to them)."""
    sub = copy.deepcopy(model)
    graph = _graph(sub, example)
    modules = dict(sub.named_modules())
    unknown = set(keep) - set(prunable_layers(sub))
    if unknown:
        raise ValueError(f"not prunable layers: {', '.join(sorted(unknown))}")
    original = {name: graph.get_out_channels(modules[name]) for name in keep}
    for name, kept in keep.items():
        channels = original[name]
        if not kept or min(kept) < 0 or max(kept) >= channels or len(set(kept)) != len(kept):
            raise ValueError(f"{name}: kept channels must be distinct indices in [0, {channels}), at least one")
        now = graph.get_out_channels(modules[name])
        if now != channels:   # coupled to a layer cut before (a residual addition): cut with it, to the same set
            if now != len(kept):
                raise ValueError(f"{name}: coupled to a layer already cut to {now} channels, but {len(kept)} asked")
            continue
        dropped = sorted(set(range(channels)) - set(kept))
        if dropped:
            _out_group(graph, modules[name], dropped).prune()
    return sub


def index_map(model: nn.Module, example: torch.Tensor, keep: Keep) -> dict[str, np.ndarray]:
    """For every float tensor of the sub-model, the flat positions of its elements in the full tensor.

    Computed by pruning a copy of the model whose every tensor holds its own
    element positions (exact in float64), so it follows torch-pruning's index
    bookkeeping, flattens included, without restating it.
    """
    positions = copy.deepcopy(model).double()
    with torch.no_grad():
        for tensor in float_state(positions).values():
            tensor.copy_(torch.arange(tensor.numel(), dtype=torch.float64).reshape(tensor.shape))
    return {name: tensor.numpy().astype(np.int64) for name, tensor in float_state(prune(positions, example.double(),
                                                                                         keep)).items()}

"""Model registry: architectures by name, built from a spec such as ``cnn(width=32)``.

Every built-in builder takes ``input_shape`` (C, H, W) and ``num_classes`` plus
its own parameters, so server and clients build the same architecture from the
``ModelSpec`` the server hands out at Join.

A model may also be a plug-in (``fedsqueeze.plugins``): an entry point of group
``fedsqueeze.models`` or an import path, ``--model "mymod:build(hidden=32)"``.
Its builder gets its spec's parameters, plus ``input_shape`` and
``num_classes`` when its signature takes them (or takes ``**kwargs``), and
returns any ``nn.Module`` that maps a batch of inputs to one score per class
(regression: ``num_classes`` is 1, the one output per example).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from math import prod
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedsqueeze.plugins import resolve
from fedsqueeze.specs import parse_spec

if TYPE_CHECKING:   # the builders import no protobuf, so the Flower comparison's venv (protobuf < 7) can use them
    from fedsqueeze.v1 import federation_pb2 as pb

ModelBuilder = Callable[..., nn.Module]
_MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def wrap(builder: ModelBuilder) -> ModelBuilder:
        _MODELS[name] = builder
        return builder
    return wrap


class Classifier(nn.Module):
    """A feature extractor followed by a linear head.

    ``features`` ends in the penultimate-layer embedding (methods that score
    representations read it); ``head`` maps it to class logits.
    """

    def __init__(self, features: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("cnn")
def cnn(input_shape: tuple[int, int, int], num_classes: int, width: int = 32, hidden: int = 128) -> nn.Module:
    """Two 3x3 conv blocks (width, 2*width channels, each ReLU + 2x2 max-pool), a hidden layer, a head.

    At the defaults on 28x28 inputs: 421,642 parameters.
    """
    channels, height, wide = input_shape
    flat = 2 * width * (height // 4) * (wide // 4)
    features = nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(),
    )
    return Classifier(features, nn.Linear(hidden, num_classes))


@register_model("mlp")
def mlp(input_shape: tuple[int, int, int], num_classes: int, hidden: int = 200, layers: int = 2) -> nn.Module:
    """``layers`` fully connected ReLU layers of ``hidden`` units and a head.

    ``mlp(hidden=4096)`` on 28x28 inputs has 20,037,642 parameters.
    """
    blocks: list[nn.Module] = [nn.Flatten()]
    width = prod(input_shape)
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return Classifier(nn.Sequential(*blocks), nn.Linear(width, num_classes))


def builtin_models() -> dict[str, ModelBuilder]:
    return dict(_MODELS)


def _accepted(builder: ModelBuilder, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` less the data's keywords (input_shape, num_classes) that ``builder`` does not take."""
    try:
        parameters = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return config
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return config
    return {k: v for k, v in config.items() if k in parameters or k not in ("input_shape", "num_classes")}


def build_model(spec: pb.ModelSpec, seed: int | None = None) -> nn.Module:
    """Build the architecture a ModelSpec names; ``seed`` makes the initial weights reproducible.

    ValueError (a PluginError for a plug-in that does not import) saying what failed."""
    builder = resolve("models", spec.name, _MODELS).target
    config: dict[str, Any] = json.loads(spec.config_json or "{}")
    config["input_shape"] = tuple(config["input_shape"])
    config.pop("regression", None)   # the task, not a builder argument
    if seed is not None:
        torch.manual_seed(seed)
    try:
        model = builder(**_accepted(builder, config))
    except Exception as exc:   # a builder's own error, whatever its type: the model cannot be built
        raise ValueError(f"model {spec.name!r} could not be built: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {spec.name!r} returned {type(model).__name__}, not a torch nn.Module")
    return model


def is_regression(spec: pb.ModelSpec) -> bool:
    """Whether the model spec is of a regression task (one output per example, squared error)."""
    return bool(json.loads(spec.config_json or "{}").get("regression", False))


def make_model_spec(model: str, input_shape: tuple[int, ...], num_classes: int) -> pb.ModelSpec:
    """A ModelSpec from a spec string such as ``cnn(width=16)`` and the data's shape (``num_classes`` 0:
    regression, built with one output)."""
    name, params = parse_spec(model)
    resolve("models", name, _MODELS)   # unknown or unimportable: refused here, before any client joins
    config = {**params, "input_shape": list(input_shape), "num_classes": num_classes or 1}
    if num_classes == 0:
        config["regression"] = True
    from fedsqueeze.v1 import federation_pb2 as pb

    return pb.ModelSpec(name=name, config_json=json.dumps(config, sort_keys=True))

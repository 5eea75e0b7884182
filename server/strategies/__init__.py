"""Server strategies by method name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from fedsqueeze.codecs import CodecError, get_plan
from fedsqueeze.config import ServerConfig
from fedsqueeze.methods import method_plugin
from fedsqueeze.plugins import PluginError
from fedsqueeze.server.strategies.autoencoder import Autoencoder
from fedsqueeze.server.strategies.base import ClientPlan, ClientUpdate, Strategy, StrategySettings
from fedsqueeze.server.strategies.fedavg import FedAvg
from fedsqueeze.server.strategies.fedcompress import FedCompress
from fedsqueeze.server.strategies.reft import Reft
from fedsqueeze.specs import parse_spec
from fedsqueeze.v1 import federation_pb2 as pb

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedAvg, FedCompress, Autoencoder, Reft)}


def strategy_class(name: str) -> type[Strategy]:
    """The server half of method ``name``: a built-in, or a ``Method`` plug-in's strategy (PluginError if neither)."""
    if name in STRATEGIES:
        return STRATEGIES[name]
    strategy = method_plugin(name).target.strategy
    if not (isinstance(strategy, type) and issubclass(strategy, Strategy)):
        raise PluginError(f"method {name!r}: its strategy {strategy!r} is not a fedsqueeze Strategy subclass")
    return strategy


def model_plans(config: ServerConfig) -> tuple[str, str]:
    """The canonical ``--uplink`` and ``--downlink`` plans; ValueError naming the flag for a plan that does not
    parse or that does not carry float32 model tensors (``fixed64`` is for edge aggregators' partial sums)."""
    plans = []
    for flag, text in (("--uplink", config.uplink), ("--downlink", config.downlink)):
        try:
            plan = get_plan(text)
            plan.require_float32()
        except (CodecError, ValueError) as exc:
            raise ValueError(f"{flag} {text!r}: {exc}") from None
        plans.append(plan.spec)
    return plans[0], plans[1]


def make_strategy(config: ServerConfig, model: nn.Module, model_spec: pb.ModelSpec,
                  evaluate: Callable[[nn.Module], tuple[float, float]] | None = None) -> Strategy:
    """The strategy ``config.method`` names (e.g. ``fedcompress(k0=8)``); codec plans are checked here."""
    name, params = parse_spec(config.method)
    cls = strategy_class(name)
    hyperparameters = pb.Hyperparameters(epochs=config.epochs, batch_size=config.batch_size,
                                         learning_rate=config.lr, optimizer=config.optimizer,
                                         momentum=config.momentum)
    data = "" if config.data == "none" else config.data   # a server without data (federated evaluation)
    uplink, downlink = model_plans(config)
    settings = StrategySettings(model_spec, data, hyperparameters, uplink, downlink, config.client_codecs,
                                config.seed, evaluate, Path(config.state_dir) if config.state_dir else None, params)
    return cls(model, settings)


__all__ = ["ClientPlan", "ClientUpdate", "STRATEGIES", "Strategy", "StrategySettings", "make_strategy",
           "model_plans", "strategy_class"]

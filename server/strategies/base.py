"""The server half of a federated method.

A strategy decides, each round, what every selected client is asked to do
(``configure``), what model each kind of client downloads (``downlink``), what
update it must send back (``expected_update``), how a verified update folds
into the round's running sum (``accumulate``) and how the sum becomes the next
global model (``aggregate``). The round loop and the transport call these and
nothing method-specific.

Threads: the coordinator calls every hook (``configure``, ``downlink``,
``expected_update``, ``new_accumulator``, ``accumulate``, ``aggregate``,
``downloaded``, ``evaluation_model``, ``state_dict``, ``load_state_dict``) on one strategy thread,
one call at a time, never on the event loop: a hook may take seconds (cut
sub-models, distil, write files) without delaying any RPC, and needs no lock
for the strategy's own state. Only ``name``, ``params`` (the method's typed
parameters), ``specs`` and ``settings`` are read elsewhere, and they do not change after ``__init__``.

Each strategy names its accumulator type (``Strategy[CoverageSum]``); an
accumulator that adds fields to ``WeightedSum`` also merges them.

Edge aggregators (``fedsqueeze edge``) run a method's rounds for clients of
their own and send the root their exact partial sum. A strategy opts in with
``relays_through_edges``: its plans must not depend on which client gets them
(beyond the codec plans clients ask for), every client must send every float
tensor of the model in its plan's uplink codec, and ``accumulate`` must be the
plain weighted add. A root refuses edges (UNIMPLEMENTED at Join) for any other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
from torch import nn

from fedsqueeze.methods import MethodParams
from fedsqueeze.server.aggregation import WeightedSum
from fedsqueeze.server.clients import ClientInfo
from fedsqueeze.tensors import TensorSpec, float_state, model_spec
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import ExpectedTensor


@dataclass(frozen=True)
class StrategySettings:
    """What every strategy is configured with."""

    model_spec: pb.ModelSpec              # the architecture (to build teachers, students, sub-models)
    data: str                             # the federation's dataset spec (public data must differ)
    hyperparameters: pb.Hyperparameters   # local training defaults sent with each task
    uplink: str                           # codec plan for updates (canonical)
    downlink: str                         # codec plan for models (canonical)
    client_codecs: bool = True            # honour the plans clients ask for
    seed: int = 0
    evaluate: Callable[[nn.Module], tuple[float, float]] | None = None   # (accuracy, loss) on the test set
    state_dir: Path | None = None         # where a strategy keeps what must outlive a restart
    params: dict[str, Any] = field(default_factory=dict)   # the method spec's own parameters


@dataclass(frozen=True)
class ClientPlan:
    """One selected client's instructions for one round."""

    profile: str                       # clients sharing a profile share one encoded download
    hyperparameters: pb.Hyperparameters
    uplink_codec: str
    downlink_codec: str
    method_config: dict[str, Any] = field(default_factory=dict)   # this round's settings for the client trainer
    error_feedback: bool = True        # False when clients send models rather than updates
    sends_delta: bool = True           # the update is a change to the model (so its norm is bounded)


@dataclass(frozen=True)
class ClientUpdate:
    """A complete, verified, decoded update."""

    client_id: str
    plan: ClientPlan
    tensors: dict[str, np.ndarray]
    num_examples: int
    metrics: dict[str, float]
    payload_bytes: dict[str, int] = field(default_factory=dict)   # encoded size of each tensor as received


Sum = TypeVar("Sum", bound=WeightedSum)


class Strategy(ABC, Generic[Sum]):
    """Server side of a method. Subclasses set ``name`` (the client trainer of the same name pairs with it)."""

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams   # the method's typed parameters, shared with its trainer
    relays_through_edges: ClassVar[bool] = False   # edge aggregators may serve its clients (see the module doc)

    def __init__(self, model: nn.Module, settings: StrategySettings) -> None:
        self.params = self.Params.from_spec(settings.params)
        self.model = model
        self.settings = settings
        self.specs: dict[str, TensorSpec] = model_spec(float_state(model))

    def codecs_for(self, client: ClientInfo) -> tuple[str, str]:
        """(uplink, downlink) codec plans for a client: its own requests if allowed, else the defaults."""
        if not self.settings.client_codecs:
            return self.settings.uplink, self.settings.downlink
        return client.uplink_codec or self.settings.uplink, client.downlink_codec or self.settings.downlink

    @abstractmethod
    def configure(self, round_number: int, clients: Sequence[ClientInfo]) -> dict[str, ClientPlan]:
        """Plans for the selected clients, by client id."""

    @abstractmethod
    def downlink(self, profile: str) -> tuple[dict[str, torch.Tensor], dict[str, ExpectedTensor]]:
        """The tensors sent to clients of ``profile``, and how each is encoded."""

    @abstractmethod
    def expected_update(self, plan: ClientPlan) -> dict[str, ExpectedTensor]:
        """The tensors (specs and codecs) a client with ``plan`` must send."""

    def evaluation_model(self) -> tuple[dict[str, torch.Tensor], str]:
        """The global model clients evaluate when the server holds no data, and the codec plan it travels in
        (default: the whole model in the server's downlink plan)."""
        return float_state(self.model), self.settings.downlink

    def state_dict(self) -> dict[str, Any]:
        """What the strategy must remember across a server restart besides the model (JSON-able; default none)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (default: nothing to restore)."""
        return None

    def downloaded(self, plan: ClientPlan, payload_bytes: int) -> None:
        """A client with ``plan`` received its download, ``payload_bytes`` of encoded tensors (default: no-op)."""
        return None

    @abstractmethod
    def new_accumulator(self) -> Sum:
        """An empty running sum for a new round."""

    def accumulate(self, accumulator: Sum, update: ClientUpdate) -> None:
        """Fold one update into the round's running sum (default: weighted by examples).

        One update at a time in commit order, before the round's ``aggregate``. Must raise before it
        changes the sum, if at all: the coordinator then refuses the update and counts nothing of it."""
        accumulator.add(update.tensors, update.num_examples)

    def merge_partial(self, accumulator: Sum, partial: WeightedSum) -> None:
        """Fold an edge aggregator's verified partial sum into the round's (strategies that relay through edges).

        Like ``accumulate``: in commit order, and raising before it changes the sum, if at all."""
        accumulator.merge(partial)

    @abstractmethod
    def aggregate(self, round_number: int, accumulator: Sum, client_metrics: dict[str, float]) -> dict[str, float]:
        """Turn the round's sum into the new ``self.model``; return strategy metrics.

        ``client_metrics`` are the committed updates' metrics, averaged weighted by examples (finite
        only). Runs after the round's folds, while no round is open. If it raises, the coordinator
        restores the model as it was before the call and plans the round again.
        """

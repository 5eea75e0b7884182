"""The client half of a federated method.

A trainer says what download it expects for a task (``expected_download``),
trains on the device's own data, and returns the update to send (``fit``). The
daemon does the networking and encoding; the trainer never sees the wire.
The plain local training inside ``fit`` is the federation's training loop
(``fedsqueeze.client.loops``), which ``train`` runs; the method's own steps
wrap it. Each task carries the method's parameters, which ``params`` reads
into the method's dataclass, the one its server strategy reads.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fedsqueeze.client.loops import LocalRound, Stopped, TrainingLoop, round_generator
from fedsqueeze.data.datasets import Dataset
from fedsqueeze.methods import MethodParams
from fedsqueeze.tensors import float_state, model_spec
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import ExpectedTensor, expect_all

__all__ = ["Stopped", "TrainResult", "Trainer", "round_generator"]


@dataclass
class TrainResult:
    update: dict[str, torch.Tensor]   # the tensors to send, encoded with the task's uplink codec
    num_examples: int                 # aggregation weight
    metrics: dict[str, float]
    feedback_applied: bool = False    # the trainer ran error feedback itself (over a composite of tensors)


class Trainer(ABC):
    """Client side of a method. Subclasses set ``method`` (the server strategy of the same name)."""

    method: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams

    def __init__(self, model: nn.Module, data: Dataset, seed: int) -> None:
        self.model = model
        self.data = data
        self.seed = seed
        self._loops: dict[str, TrainingLoop] = {}

    @staticmethod
    def config(task: pb.TrainTask) -> dict[str, Any]:
        """This round's settings the strategy planned for this client (``ClientPlan.method_config``)."""
        config = json.loads(task.method_config_json or "{}")
        if not isinstance(config, dict):
            raise ValueError("the task's method config is not a JSON object")
        return config

    def params(self, task: pb.TrainTask) -> MethodParams:
        """The method's parameters as the server set them, typed and range-checked as on the server."""
        return self.Params.from_spec(self.config(task).get("params", {}))

    def train(self, model: nn.Module, data: Dataset, task: pb.TrainTask, hyperparameters: pb.Hyperparameters,
              should_stop: Callable[[], bool],
              extra_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
              ) -> tuple[int, dict[str, float]]:
        """Run the task's training loop (``--trainer`` on the server) on ``model``: (examples, metrics).

        ``extra_loss(x, outputs)`` is the method's term of each batch's loss; a loop that never adds it is an
        error (the method would silently not happen), not a warning."""
        loop = self._loops.get(task.trainer)
        if loop is None:
            loop = self._loops[task.trainer] = TrainingLoop.from_spec(task.trainer)
        calls = 0

        def counted(x: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
            nonlocal calls
            calls += 1
            assert extra_loss is not None
            return extra_loss(x, outputs)

        result = loop(model, data, LocalRound(task.round, hyperparameters, round_generator(self.seed, task.round),
                                              should_stop, counted if extra_loss else None))
        if extra_loss and not calls:
            raise ValueError(f"training loop {loop.spec!r} never added round.extra_loss(x, outputs) to its loss, "
                             f"which {self.method} needs this round; add it, or turn the method's term off")
        return result

    def expected_download(self, task: pb.TrainTask) -> dict[str, ExpectedTensor]:
        """The tensors of this task's download (default: the whole model, in the downlink codec)."""
        return expect_all(model_spec(float_state(self.model)), task.downlink_codec)

    def state(self) -> dict[str, Any]:
        """What this trainer keeps between a device's tasks (default: nothing), as tensors, arrays, numbers,
        strings and lists or dicts of them: a simulator saves it when it pages a virtual client out."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Take back what ``state()`` returned, on a fresh trainer of the same client (default: nothing kept)."""
        del state

    def unload(self) -> None:
        """Free what this trainer holds outside itself (e.g. a registered latent model) once its state is saved."""
        return None

    @abstractmethod
    def fit(self, task: pb.TrainTask, downloaded: dict[str, np.ndarray], hyperparameters: pb.Hyperparameters,
            should_stop: Callable[[], bool]) -> TrainResult:
        """Train from the downloaded model; raise Stopped if ``should_stop()`` turns true."""

"""The client half of a federated method.

A trainer says what download it expects for a task (``expected_download``),
trains on the device's own data, and returns the update to send (``fit``). The
daemon does the networking and encoding; the trainer never sees the wire.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fedsqueeze.data.datasets import Dataset
from fedsqueeze.tensors import float_state, model_spec
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import ExpectedTensor, expect_all


class Stopped(Exception):
    """Training was interrupted because the daemon is shutting down."""


@dataclass
class TrainResult:
    update: dict[str, torch.Tensor]   # the tensors to send, encoded with the task's uplink codec
    num_examples: int                 # aggregation weight
    metrics: dict[str, float]
    feedback_applied: bool = False    # the trainer ran error feedback itself (over a composite of tensors)


class Trainer(ABC):
    """Client side of a method. Subclasses set ``method`` (the server strategy of the same name)."""

    method: ClassVar[str]

    def __init__(self, model: nn.Module, data: Dataset, seed: int) -> None:
        self.model = model
        self.data = data
        self.seed = seed

    def expected_download(self, task: pb.TrainTask) -> dict[str, ExpectedTensor]:
        """The tensors of this task's download (default: the whole model, in the downlink codec)."""
        return expect_all(model_spec(float_state(self.model)), task.downlink_codec)

    @abstractmethod
    def fit(self, task: pb.TrainTask, downloaded: dict[str, np.ndarray], hyperparameters: pb.Hyperparameters,
            should_stop: Callable[[], bool]) -> TrainResult:
        """Train from the downloaded model; raise Stopped if ``should_stop()`` turns true."""

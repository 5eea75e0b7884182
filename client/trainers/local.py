"""The FedAvg trainer, and the load-train-subtract step other methods build on."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fedsqueeze.client.trainers.base import Trainer, TrainResult
from fedsqueeze.methods import FedAvgParams
from fedsqueeze.tensors import float_state
from fedsqueeze.v1 import federation_pb2 as pb


def local_delta(trainer: Trainer, task: pb.TrainTask, downloaded: dict[str, np.ndarray], hp: pb.Hyperparameters,
                should_stop: Callable[[], bool]) -> tuple[dict[str, torch.Tensor], int, dict[str, float]]:
    """Load the downloaded global weights into the trainer's model, run the task's training loop, and return
    ``trained - global``, the examples it trained on, and its metrics."""
    start = {name: torch.from_numpy(value) for name, value in downloaded.items()}
    trainer.model.load_state_dict(start, strict=False)
    examples, metrics = trainer.train(trainer.model, trainer.data, task, hp, should_stop)
    trained = float_state(trainer.model)
    return {name: trained[name] - start[name] for name in start}, examples, metrics


class FedAvgTrainer(Trainer):
    """Load the global model, train locally, send ``trained - global``."""

    method = "fedavg"
    Params = FedAvgParams

    def fit(self, task: pb.TrainTask, downloaded: dict[str, np.ndarray], hyperparameters: pb.Hyperparameters,
            should_stop: Callable[[], bool]) -> TrainResult:
        update, examples, metrics = local_delta(self, task, downloaded, hyperparameters, should_stop)
        return TrainResult(update, examples, metrics)

"""Plain local training (SGD or Adam) and the FedAvg trainer built on it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedsqueeze.client.trainers.base import Stopped, Trainer, TrainResult
from fedsqueeze.config import OPTIMIZERS
from fedsqueeze.data.datasets import Dataset
from fedsqueeze.tensors import float_state
from fedsqueeze.v1 import federation_pb2 as pb


def make_optimizer(model: nn.Module, hp: pb.Hyperparameters) -> torch.optim.Optimizer:
    if hp.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=hp.learning_rate, momentum=hp.momentum)
    if hp.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=hp.learning_rate)
    raise ValueError(f"unknown optimizer {hp.optimizer!r}: use {' or '.join(OPTIMIZERS)}")


def train_epochs(model: nn.Module, data: Dataset, hp: pb.Hyperparameters, generator: torch.Generator,
                 should_stop: Callable[[], bool]) -> dict[str, float]:
    """Train ``hp.epochs`` passes over ``data`` in shuffled mini-batches; return mean loss and accuracy."""
    if hp.epochs < 1 or hp.batch_size < 1 or not hp.learning_rate > 0:
        raise ValueError(f"invalid hyperparameters: epochs={hp.epochs}, batch_size={hp.batch_size}, "
                         f"learning_rate={hp.learning_rate}")
    optimizer = make_optimizer(model, hp)
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for _ in range(hp.epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(order), hp.batch_size):
            if should_stop():
                raise Stopped()
            batch = order[start:start + hp.batch_size]
            x, y = data.x[batch], data.y[batch]
            optimizer.zero_grad()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(batch)
            correct += (logits.argmax(dim=1) == y).sum().item()
            seen += len(batch)
    return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen}


def round_generator(seed: int, round_number: int) -> torch.Generator:
    """The shuffling generator of one client in one round: reproducible, different per client and round."""
    return torch.Generator().manual_seed(seed * 1_000_003 + round_number)


def local_delta(model: nn.Module, data: Dataset, downloaded: dict[str, np.ndarray], hp: pb.Hyperparameters,
                seed: int, round_number: int, should_stop: Callable[[], bool]
                ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Load the downloaded global weights, train locally (shuffling seeded by client and round), and return
    ``trained - global`` with the training metrics."""
    start = {name: torch.from_numpy(value) for name, value in downloaded.items()}
    model.load_state_dict(start, strict=False)
    metrics = train_epochs(model, data, hp, round_generator(seed, round_number), should_stop)
    trained = float_state(model)
    return {name: trained[name] - start[name] for name in start}, metrics


class FedAvgTrainer(Trainer):
    """Load the global model, train locally, send ``trained - global``."""

    method = "fedavg"

    def fit(self, task: pb.TrainTask, downloaded: dict[str, np.ndarray], hyperparameters: pb.Hyperparameters,
            should_stop: Callable[[], bool]) -> TrainResult:
        update, metrics = local_delta(self.model, self.data, downloaded, hyperparameters, self.seed, task.round,
                                      should_stop)
        return TrainResult(update, len(self.data), metrics)

"""Local training loops: the built-in one, and a user's own by entry point or import path.

A method's trainer (FedAvg's, FedCompress's, REFT's, the autoencoder's) does
the method's own steps (loading the download, clustered fine-tuning, cutting
the sub-model, error feedback, encoding) and calls a *training loop* for the
plain local training in between. The server names the loop with
``--trainer`` (default ``local``: mini-batch SGD or Adam on cross-entropy) and
sends it with each task, so every client runs the same one.

A loop is any callable ``loop(model, data, round, **params)``:

- ``model``: the ``nn.Module`` to train in place (it holds the downloaded weights);
- ``data``: the device's ``Dataset`` (``x``, ``y`` tensors, ``num_classes``);
- ``round``: a ``LocalRound`` (round number, hyperparameters, a seeded shuffling generator,
  ``should_stop`` to poll between batches, ``make_optimizer``, and ``extra_loss``: when a method sets it
  (REFT's in-place distillation), the loop must add ``round.extra_loss(x, outputs)`` to each batch's loss);
- ``params``: the spec's parameters, e.g. ``mu`` of ``--trainer "mypkg.loops:fedprox(mu=0.01)"``.

It returns its metrics (``dict[str, float]``), or ``(examples, metrics)`` when the
aggregation weight is not ``len(data)``. Installed packages register loops under
the entry-point group ``fedsqueeze.trainers``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedsqueeze.config import BUILTIN_LOOPS, OPTIMIZERS
from fedsqueeze.data.datasets import Dataset
from fedsqueeze.errors import Stopped
from fedsqueeze.evaluation import task_loss
from fedsqueeze.plugins import resolve
from fedsqueeze.specs import parse_spec
from fedsqueeze.v1 import federation_pb2 as pb

MAX_LOOP_METRICS = 32


def round_generator(seed: int, round_number: int) -> torch.Generator:
    """The shuffling generator of one client in one round: reproducible, different per client and round."""
    return torch.Generator().manual_seed(seed * 1_000_003 + round_number)


@dataclass(frozen=True)
class LocalRound:
    """What a training loop gets besides the model and the data."""

    round: int
    hyperparameters: pb.Hyperparameters   # epochs, batch_size, learning_rate, optimizer, momentum
    generator: torch.Generator            # shuffling: reproducible, different per client and round
    should_stop: Callable[[], bool]       # poll between batches; raise Stopped when it turns true
    extra_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None   # method's term: (x, outputs)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(model, self.hyperparameters)

    def check_stop(self) -> None:
        if self.should_stop():
            raise Stopped()


def make_optimizer(model: nn.Module, hp: pb.Hyperparameters) -> torch.optim.Optimizer:
    if hp.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=hp.learning_rate, momentum=hp.momentum)
    if hp.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=hp.learning_rate)
    raise ValueError(f"unknown optimizer {hp.optimizer!r}: use {' or '.join(OPTIMIZERS)}")


def local(model: nn.Module, data: Dataset, round: LocalRound) -> dict[str, float]:
    """The built-in loop: ``epochs`` passes over ``data`` in shuffled mini-batches, cross-entropy (regression:
    mean squared error) plus the method's ``extra_loss``; returns the mean training loss (without that term)
    and (classification) accuracy."""
    hp = round.hyperparameters
    if hp.epochs < 1 or hp.batch_size < 1 or not hp.learning_rate > 0:
        raise ValueError(f"invalid hyperparameters: epochs={hp.epochs}, batch_size={hp.batch_size}, "
                         f"learning_rate={hp.learning_rate}")
    optimizer = round.make_optimizer(model)
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for _ in range(hp.epochs):
        order = torch.randperm(len(data), generator=round.generator)
        for start in range(0, len(order), hp.batch_size):
            round.check_stop()
            batch = order[start:start + hp.batch_size]
            x, y = data.x[batch], data.y[batch]
            optimizer.zero_grad()
            outputs = model(x)
            loss = task_loss(outputs, y, data.regression)
            total = loss if round.extra_loss is None else loss + round.extra_loss(x, outputs)
            total.backward()
            optimizer.step()
            loss_sum += loss.item() * len(batch)
            if not data.regression:
                correct += (outputs.argmax(dim=1) == y).sum().item()
            seen += len(batch)
    if data.regression:
        return {"train_loss": loss_sum / seen}
    return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen}


LOOPS: dict[str, Callable[..., Any]] = {"local": local}
assert set(LOOPS) == set(BUILTIN_LOOPS)


@dataclass(frozen=True)
class TrainingLoop:
    """A loop spec, resolved: call it to train; its result is checked."""

    spec: str
    function: Callable[..., Any]
    params: dict[str, Any]

    @classmethod
    def from_spec(cls, spec: str) -> TrainingLoop:
        """The loop ``spec`` names ("" is ``local``); PluginError naming the missing module if it does not import."""
        name, params = parse_spec(spec or "local")
        return cls(spec or "local", resolve("trainers", name, LOOPS).target, params)

    def __call__(self, model: nn.Module, data: Dataset, round: LocalRound) -> tuple[int, dict[str, float]]:
        """(examples, metrics) of one local training; ValueError when the loop returns something else."""
        result = self.function(model, data, round, **self.params)
        examples, metrics = result if isinstance(result, tuple) and len(result) == 2 else (len(data), result)
        if not isinstance(examples, int) or isinstance(examples, bool) or examples < 1:
            raise ValueError(f"training loop {self.spec!r} returned {examples!r} examples; expected an int >= 1")
        if not isinstance(metrics, dict) or len(metrics) > MAX_LOOP_METRICS or not all(
                isinstance(k, str) and isinstance(v, int | float) for k, v in metrics.items()):
            raise ValueError(f"training loop {self.spec!r} must return a dict of at most {MAX_LOOP_METRICS} "
                             f"named numbers (or (examples, that dict)), not {type(metrics).__name__}")
        return examples, {k: float(v) for k, v in metrics.items()}

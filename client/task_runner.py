"""The device side of a train task without the network: the method's trainer, local training, the encoded update.

The daemon runs it between a task's download and its upload; a simulator runs it
for virtual clients. What a device keeps between its tasks (each trainer's own
state, the error-feedback residuals) is ``state()``: a simulator that pages a
virtual client out saves it, and gives it back to ``load_state`` the next time
that client is sampled, so a virtual client behaves as a daemon that never
stopped.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedsqueeze.client.error_feedback import ErrorFeedback
from fedsqueeze.client.trainers import TRAINERS, Trainer
from fedsqueeze.codecs import get_plan
from fedsqueeze.data.datasets import Dataset
from fedsqueeze.methods import method_plugin
from fedsqueeze.tensors import model_spec
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import EncodedModel, decode_tensor, encode_model, expect_all


class TaskError(Exception):
    """A task this device cannot do: the server's method has no trainer here, or it is not a Trainer."""


@dataclass
class TaskResult:
    update: EncodedModel         # encoded with the task's uplink plan
    num_examples: int            # aggregation weight
    metrics: dict[str, float]
    train_seconds: float
    encode_seconds: float


class TaskRunner:
    """Trains and encodes one device's train tasks; one trainer per method, built on first use."""

    def __init__(self, model: torch.nn.Module, data: Dataset, client_id: str) -> None:
        self.model = model
        self.data = data
        self.client_id = client_id
        self._trainers: dict[str, Trainer] = {}
        self._feedback = ErrorFeedback()

    def trainer(self, method: str) -> Trainer:
        """The client half of ``method``: built in, or a method plug-in's (TaskError if neither)."""
        trainer = self._trainers.get(method)
        if trainer is None:
            try:
                cls = TRAINERS[method] if method in TRAINERS else method_plugin(method).target.trainer
            except ValueError as exc:
                raise TaskError(f"the server runs method {method!r}, which this client cannot load ({exc})") from None
            if not (isinstance(cls, type) and issubclass(cls, Trainer)):
                raise TaskError(f"method {method!r}: its trainer {cls!r} is not a fedsqueeze Trainer subclass")
            trainer = self._trainers[method] = cls(self.model, self.data, seed=zlib.crc32(self.client_id.encode()))
        return trainer

    def run(self, task: pb.TrainTask, downloaded: dict[str, np.ndarray], hyperparameters: pb.Hyperparameters,
            should_stop: Callable[[], bool]) -> TaskResult:
        """Train from the downloaded model and encode the update (raises Stopped if ``should_stop()`` turns true)."""
        started = time.perf_counter()
        result = self.trainer(task.method).fit(task, downloaded, hyperparameters, should_stop)
        trained = time.perf_counter()
        update = self._encode(task, result.update, result.metrics, result.feedback_applied)
        return TaskResult(update, result.num_examples, result.metrics, trained - started,
                          time.perf_counter() - trained)

    def _encode(self, task: pb.TrainTask, update: dict[str, torch.Tensor], metrics: dict[str, float],
                feedback_applied: bool) -> EncodedModel:
        """Encode with the task's uplink plan; with error feedback, carry what a lossy codec drops."""
        expected = expect_all(model_spec(update), task.uplink_codec)
        feedback = task.error_feedback and not feedback_applied and not get_plan(task.uplink_codec).lossless
        if feedback:
            update = self._feedback.compensate(update)
        encoded = encode_model(update, expected)
        if feedback:
            sent = {t.spec.name: torch.from_numpy(decode_tensor(t, expected[t.spec.name])) for t in encoded.tensors}
            self._feedback.remember(update, sent)
            metrics["error_feedback_norm"] = self._feedback.norm()
        return encoded

    # ------------------------------------------------------------- paging a device out and in

    def state(self) -> dict[str, Any]:
        """What this device keeps between tasks: residuals and each trainer's ``state()`` (tensors, numbers)."""
        return {"feedback": dict(self._feedback.residuals),
                "trainers": {method: trainer.state() for method, trainer in self._trainers.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what ``state()`` returned (trainers are rebuilt for the methods it names)."""
        self._feedback.residuals = dict(state.get("feedback", {}))
        for method, trainer_state in state.get("trainers", {}).items():
            self.trainer(method).load_state(trainer_state)

    def unload(self) -> None:
        """Free what the trainers hold outside themselves (e.g. a registered latent model)."""
        for trainer in self._trainers.values():
            trainer.unload()

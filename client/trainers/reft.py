"""REFT client: train the pruned sub-model the server sized to this device, send its delta.

The task says how many output channels each prunable layer keeps; the trainer
rebuilds that (physically smaller) structure from the global architecture,
loads the downloaded weights into it, trains it on the device's data and sends
``trained - downloaded``. Which global channels those are is the server's
business: the client never needs the indices.

When the task names the narrowest tier's channels inside this sub-model
(``inplace``: per layer, positions among this sub-model's channels), each batch
also trains that nested sub-network towards this model's outputs (in-place
distillation, ``fedsqueeze.methods.reft.nested``), so the smallest devices'
model learns from this device's data too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fedsqueeze.client.trainers.base import Trainer, TrainResult
from fedsqueeze.methods import ReftParams
from fedsqueeze.methods.reft.nested import NestedWidth, distillation_loss
from fedsqueeze.methods.reft.pruning import keep_first, prune
from fedsqueeze.tensors import float_state, model_spec
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import ExpectedTensor, expect_all


class ReftTrainer(Trainer):
    method = "reft"
    Params = ReftParams

    def sub_model(self, task: pb.TrainTask) -> nn.Module:
        """A fresh sub-model with the task's channel counts (cut from this device's copy of the architecture)."""
        channels = self.config(task)["channels"]
        if not isinstance(channels, dict) or not all(isinstance(v, int) for v in channels.values()):
            raise ValueError(f"reft task: channels must map layer names to counts, not {channels!r}")
        example = torch.zeros(1, *self.data.input_shape)
        return prune(self.model, example, keep_first(channels))

    def inplace_loss(self, task: pb.TrainTask, sub: nn.Module
                     ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """The in-place distillation term of each batch, when the task asks for one (else None)."""
        inplace = self.config(task).get("inplace")
        if not inplace:
            return None
        if not isinstance(inplace, dict) or not all(
                isinstance(v, list) and all(isinstance(i, int) for i in v) for v in inplace.values()):
            raise ValueError("reft task: inplace must map layer names to lists of channel positions")
        params = self.params(task)
        assert isinstance(params, ReftParams)
        nested = NestedWidth(sub, torch.zeros(1, *self.data.input_shape), inplace)

        def loss(x: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
            return params.inplace_kd * distillation_loss(nested(sub, x), outputs, params.temperature,
                                                         self.data.regression)
        return loss

    def expected_download(self, task: pb.TrainTask) -> dict[str, ExpectedTensor]:
        return expect_all(model_spec(float_state(self.sub_model(task))), task.downlink_codec)

    def fit(self, task: pb.TrainTask, downloaded: dict[str, np.ndarray], hyperparameters: pb.Hyperparameters,
            should_stop: Callable[[], bool]) -> TrainResult:
        sub = self.sub_model(task)
        start = {name: torch.from_numpy(value) for name, value in downloaded.items()}
        sub.load_state_dict(start, strict=False)
        examples, metrics = self.train(sub, self.data, task, hyperparameters, should_stop, self.inplace_loss(task, sub))
        trained = float_state(sub)
        metrics["width"] = float(self.config(task)["width"])
        return TrainResult({name: trained[name] - start[name] for name in start}, examples, metrics)

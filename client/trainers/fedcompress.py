"""FedCompress client: train, maybe fine-tune with weight sharing at K, report validation accuracy and score.

With ``upload=model`` (the paper's) the update is the clustered model itself
(K distinct values per conv/linear weight), which the clustered codec carries
exactly. With ``upload=delta`` it is ``trained - downloaded``, which the same
codec clusters and error feedback completes (see the server strategy). A
held-out share of the device's data gives the validation accuracy and the
representation score (the effective rank of the penultimate embeddings); only
the score travels.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import torch

from fedsqueeze.client.trainers.base import Trainer, TrainResult
from fedsqueeze.client.trainers.local import round_generator, train_epochs
from fedsqueeze.clustering import weight_sharing
from fedsqueeze.data.datasets import Dataset
from fedsqueeze.evaluation import evaluate
from fedsqueeze.representation import effective_rank, embeddings_of
from fedsqueeze.tensors import copy_float_state, float_state
from fedsqueeze.v1 import federation_pb2 as pb


class FedCompressTrainer(Trainer):
    method = "fedcompress"

    def split(self, val_fraction: float) -> tuple[Dataset, Dataset]:
        """(training part, held-out validation part) of this device's data, fixed by its seed."""
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), not {val_fraction}")
        order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(self.seed))
        held = max(1, round(val_fraction * len(self.data)))
        part = lambda idx: Dataset(self.data.x[idx], self.data.y[idx], self.data.num_classes)  # noqa: E731
        return part(order[held:]), part(order[:held])

    def fit(self, task: pb.TrainTask, downloaded: dict[str, np.ndarray], hyperparameters: pb.Hyperparameters,
            should_stop: Callable[[], bool]) -> TrainResult:
        config = json.loads(task.method_config_json)
        train, validation = self.split(float(config["val_fraction"]))
        start = {n: torch.from_numpy(v) for n, v in downloaded.items()}
        self.model.load_state_dict(start, strict=False)
        generator = round_generator(self.seed, task.round)
        metrics = train_epochs(self.model, train, hyperparameters, generator, should_stop) \
            if hyperparameters.epochs else {}
        sends_delta = config.get("upload", "model") == "delta"
        if config["cluster_epochs"] or not sends_delta:   # a model upload is clustered even without fine-tuning
            with weight_sharing(self.model, int(config["k"]), seed=self.seed):
                if config["cluster_epochs"]:
                    # Adam: a centroid's gradient sums its members', so only a scale-free optimizer fits.
                    fine_tune = pb.Hyperparameters(epochs=int(config["cluster_epochs"]),
                                                   batch_size=hyperparameters.batch_size,
                                                   learning_rate=float(config["cluster_lr"]), optimizer="adam")
                    metrics = train_epochs(self.model, train, fine_tune, generator, should_stop)
        accuracy, loss = evaluate(self.model, validation)
        metrics.update(val_accuracy=accuracy, val_loss=loss,
                       score=effective_rank(embeddings_of(self.model, validation)))
        if sends_delta:
            trained = float_state(self.model)
            update = {n: trained[n] - start[n] for n in start}
        else:
            update = copy_float_state(self.model)
        return TrainResult(update, len(train), metrics)

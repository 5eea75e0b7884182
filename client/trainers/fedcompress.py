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

from collections.abc import Callable

import numpy as np
import torch

from fedsqueeze.client.loops import LocalRound, local, round_generator
from fedsqueeze.client.trainers.base import Trainer, TrainResult
from fedsqueeze.data.datasets import Dataset
from fedsqueeze.evaluation import evaluate
from fedsqueeze.methods import FedCompressParams
from fedsqueeze.methods.fedcompress.clustering import weight_sharing
from fedsqueeze.methods.fedcompress.representation import effective_rank, embeddings_of
from fedsqueeze.tensors import copy_float_state, float_state
from fedsqueeze.v1 import federation_pb2 as pb


class FedCompressTrainer(Trainer):
    method = "fedcompress"
    Params = FedCompressParams

    def split(self, val_fraction: float) -> tuple[Dataset, Dataset]:
        """(training part, held-out validation part) of this device's data, fixed by its seed."""
        order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(self.seed))
        held = max(1, round(val_fraction * len(self.data)))
        part = lambda idx: Dataset(self.data.x[idx], self.data.y[idx], self.data.num_classes)  # noqa: E731
        return part(order[held:]), part(order[:held])

    def fit(self, task: pb.TrainTask, downloaded: dict[str, np.ndarray], hyperparameters: pb.Hyperparameters,
            should_stop: Callable[[], bool]) -> TrainResult:
        params = self.params(task)
        assert isinstance(params, FedCompressParams)
        k = int(self.config(task)["k"])
        train, validation = self.split(params.val_fraction)
        start = {n: torch.from_numpy(v) for n, v in downloaded.items()}
        self.model.load_state_dict(start, strict=False)
        examples, metrics = self.train(self.model, train, task, hyperparameters, should_stop) \
            if hyperparameters.epochs else (len(train), {})
        sends_delta = params.upload == "delta"
        if params.cluster_epochs or not sends_delta:   # a model upload is clustered even without fine-tuning
            with weight_sharing(self.model, k, seed=self.seed):
                if params.cluster_epochs:
                    # Adam: a centroid's gradient sums its members', so only a scale-free optimizer fits.
                    fine_tune = pb.Hyperparameters(epochs=params.cluster_epochs, batch_size=hyperparameters.batch_size,
                                                   learning_rate=params.cluster_lr, optimizer="adam")
                    metrics = local(self.model, train, LocalRound(task.round, fine_tune,
                                                                  round_generator(self.seed, task.round), should_stop))
        accuracy, loss = evaluate(self.model, validation)
        metrics.update(val_accuracy=accuracy, val_loss=loss,
                       score=effective_rank(embeddings_of(self.model, validation, params.embedding)))
        if sends_delta:
            trained = float_state(self.model)
            update = {n: trained[n] - start[n] for n in start}
        else:
            update = copy_float_state(self.model)
        return TrainResult(update, examples, metrics)

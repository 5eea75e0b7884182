"""Autoencoder client: local training, then its update in the phase the server plans.

Keeps its recent updates (the autoencoder's training set). ``warmup``: send the
update per tensor. ``register``: train the autoencoder, register it locally
(so this client can encode, and decode for error feedback) with its decoder
as the server will decode it (``decoder_codec`` may be lossy), and send that
decoder with the update. ``latent``: send the flattened update in parts, each
coded by its own pipeline and each coding what the previous parts left:
an optional coarse part, the latent part, an optional correction. Error
feedback wraps the whole composite, so this trainer runs it itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from fedsqueeze.client.error_feedback import ErrorFeedback
from fedsqueeze.client.trainers.base import Trainer, TrainResult
from fedsqueeze.client.trainers.local import local_delta
from fedsqueeze.codecs import LATENT_MODELS, CodecPlan, Pipeline, get_pipeline, get_plan
from fedsqueeze.data.datasets import Dataset
from fedsqueeze.methods import AutoencoderParams
from fedsqueeze.methods.autoencoder.networks import (
    COARSE,
    CORRECTION,
    DECODER_PREFIX,
    UPDATE,
    AutoencoderModel,
    AutoencoderSpec,
    ChunkAutoencoder,
    flatten,
    relative_error,
    to_chunks,
    train_autoencoder,
)
from fedsqueeze.tensors import TensorSpec, model_spec
from fedsqueeze.v1 import federation_pb2 as pb


def round_trip(pipeline: Pipeline, values: np.ndarray) -> np.ndarray:
    """What the server will decode of ``values``."""
    return pipeline.decode(pipeline.encode(values), TensorSpec("part", values.shape))


def compose(total: np.ndarray, pipelines: list[tuple[str, Pipeline]]) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                                             dict[str, float]]:
    """Code ``total`` in parts, each part coding what the ones before it left.

    Returns (the tensor to send for each part, the sum the server will decode,
    each part's relative error on what it was given).
    """
    parts, errors = {}, {}
    sent = np.zeros_like(total)
    remaining = total
    for name, pipeline in pipelines:
        received = round_trip(pipeline, remaining)
        errors[name] = float(np.linalg.norm(received - remaining) / max(float(np.linalg.norm(remaining)), 1e-30))
        parts[name] = remaining
        sent = sent + received
        remaining = remaining - received
    return parts, sent, errors


class AutoencoderTrainer(Trainer):
    method = "ae"
    Params = AutoencoderParams

    def __init__(self, model: torch.nn.Module, data: Dataset, seed: int) -> None:
        super().__init__(model, data, seed)
        self.history: deque[np.ndarray] = deque(maxlen=8)
        self.reference_error: float | None = None   # error on the first update the current decoder had not seen
        self.feedback = ErrorFeedback()               # over the latent-phase composite
        self.registered: tuple[str, int, ChunkAutoencoder] | None = None   # the autoencoder this client codes with

    def state(self) -> dict[str, Any]:
        registered = None
        if self.registered is not None:
            decoder, version, autoencoder = self.registered
            registered = {"decoder": decoder, "version": version, "spec": asdict(autoencoder.shape),
                          "weights": autoencoder.state_dict()}
        return {"history": list(self.history), "history_length": self.history.maxlen,
                "reference_error": self.reference_error, "feedback": self.feedback.residuals, "registered": registered}

    def load_state(self, state: dict[str, Any]) -> None:
        self.history = deque(state["history"], maxlen=state["history_length"])
        self.reference_error = state["reference_error"]
        self.feedback.residuals = state["feedback"]
        if state["registered"] is not None:
            saved = state["registered"]
            autoencoder = ChunkAutoencoder(AutoencoderSpec(**saved["spec"]))
            autoencoder.load_state_dict(saved["weights"])
            self.registered = (saved["decoder"], saved["version"], autoencoder)
            LATENT_MODELS.register(saved["decoder"], saved["version"], AutoencoderModel(autoencoder))

    def unload(self) -> None:
        if self.registered is not None:
            LATENT_MODELS.unregister(self.registered[0], self.registered[1])

    def fit(self, task: pb.TrainTask, downloaded: dict[str, np.ndarray], hyperparameters: pb.Hyperparameters,
            should_stop: Callable[[], bool]) -> TrainResult:
        config, params = self.config(task), self.params(task)
        assert isinstance(params, AutoencoderParams)
        delta, examples, metrics = local_delta(self, task, downloaded, hyperparameters, should_stop)
        flat = flatten(delta, model_spec(delta))
        coarse = get_pipeline(params.coarse) if params.coarse else None
        if self.history.maxlen != params.history:
            self.history = deque(self.history, maxlen=params.history)
        self.history.append(flat - round_trip(coarse, flat) if coarse else flat)   # what the autoencoder codes

        spec = AutoencoderSpec(**config["autoencoder"])
        if config["phase"] == "warmup":
            return TrainResult(delta, examples, metrics)
        if config["phase"] == "register":
            samples = np.concatenate([to_chunks(h, spec.chunk)[0] for h in self.history])
            autoencoder, error = train_autoencoder(samples, spec, params.ae_epochs, params.ae_lr, seed=self.seed)
            decoder = {DECODER_PREFIX + k: v.detach().clone() for k, v in autoencoder.decoder.state_dict().items()}
            served = self._as_served(get_plan(task.uplink_codec), decoder)
            autoencoder.decoder.load_state_dict({k[len(DECODER_PREFIX):]: v for k, v in served.items()})
            error = relative_error(autoencoder, samples)
            self.unload()
            self.registered = (config["decoder_id"], int(config["version"]), autoencoder)
            LATENT_MODELS.register(config["decoder_id"], int(config["version"]), AutoencoderModel(autoencoder))
            self.reference_error = None
            self.feedback = ErrorFeedback()
            metrics["ae_train_error"] = error
            return TrainResult({**delta, **decoder}, examples, metrics)
        return self._latent_update(task, params, flat, coarse, examples, metrics)

    @staticmethod
    def _as_served(plan: CodecPlan, decoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The decoder as the server will decode it from ``plan`` (``decoder_codec`` may be lossy: float16,
        clustered); the client codes its latents against this copy, so both ends decode the same update."""
        return {name: torch.from_numpy(round_trip(plan.for_tensor(name), value.numpy()).reshape(value.shape))
                for name, value in decoder.items()}

    def _latent_update(self, task: pb.TrainTask, params: AutoencoderParams, flat: np.ndarray, coarse: Pipeline | None,
                       examples: int, metrics: dict[str, float]) -> TrainResult:
        plan = get_plan(task.uplink_codec)
        total = self.feedback.compensate({"u": torch.from_numpy(flat)})["u"].numpy() if task.error_feedback else flat
        stages = [(COARSE, coarse), (UPDATE, plan.for_tensor(UPDATE)),
                  (CORRECTION, plan.for_tensor(CORRECTION) if params.correction else None)]
        parts, sent, errors = compose(total, [(name, p) for name, p in stages if p is not None])
        error = errors[UPDATE]
        if task.error_feedback:
            self.feedback.remember({"u": torch.from_numpy(total)}, {"u": torch.from_numpy(sent)})
            metrics["error_feedback_norm"] = self.feedback.norm()
        if self.reference_error is None:
            self.reference_error = error
        drift = params.drift
        metrics.update(ae_error=error, ae_retrain=float(drift > 0 and error > (1 + drift) * self.reference_error))
        return TrainResult({n: torch.from_numpy(v) for n, v in parts.items()}, examples, metrics,
                           feedback_applied=True)

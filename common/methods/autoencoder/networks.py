"""Chunked autoencoders for weight updates (after Chandar et al., 2021).

A flattened update is cut into chunks of ``chunk`` values; each chunk is
divided by its RMS and the MLP encoder maps it to ``latent`` codes; the
decoder maps codes back to a unit chunk. The hidden layers are linear by
default: on real updates a learned subspace reconstructs the next rounds
better than a ReLU network trained on the same few updates, and unlike it,
it represents every mix of what it learned (which error feedback needs). A client trains its own autoencoder
on its past updates and keeps both halves; the server gets only the decoder.
``AutoencoderModel`` plugs either into the ``latent`` codec stage.

The scale that travels with each chunk is not its RMS but the least-squares
gain of the decoded chunk, <x, d> / <d, d>: each chunk's reconstruction is
then a projection of the chunk, never worse than sending nothing. That keeps
error feedback stable even when the autoencoder meets updates unlike the
ones it learned from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedsqueeze.codecs.latent import LatentModel
from fedsqueeze.tensors import TensorSpec

DECODER_PREFIX = "ae.decoder."   # wire names of a decoder's tensors
# Wire names of the parts of a latent-phase update; the server sums what it decodes of each.
COARSE, UPDATE, CORRECTION = "ae.coarse", "ae.update", "ae.correction"
ACTIVATIONS = {"linear": nn.Identity, "relu": nn.ReLU}


def flatten(tensors: dict[str, np.ndarray | torch.Tensor], specs: dict[str, TensorSpec]) -> np.ndarray:
    """One float32 vector of the tensors, in the model's state-dict order (both ends use it)."""
    return np.concatenate([np.asarray(tensors[name], np.float32).reshape(-1) for name in specs])


def unflatten(flat: np.ndarray, specs: dict[str, TensorSpec]) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for name, spec in specs.items():
        out[name] = flat[start:start + spec.numel].reshape(spec.shape)
        start += spec.numel
    return out


def decoder_id(client_id: str) -> str:
    return f"ae-{client_id}"


@dataclass(frozen=True)
class AutoencoderSpec:
    """An autoencoder's architecture: what both ends must agree on."""

    chunk: int                    # values per chunk
    latent: int                   # codes per chunk
    hidden: int                   # hidden units of encoder and decoder
    activation: str = "linear"    # of the hidden layers: linear (a learned subspace) or relu

    def __post_init__(self) -> None:
        if not (1 <= self.latent < self.chunk and self.hidden >= 1):
            raise ValueError(f"need 1 <= latent < chunk and hidden >= 1, got {self}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {self.activation!r}")

    def chunks(self, numel: int) -> int:
        return -(-numel // self.chunk)

    def decoder_specs(self, prefix: str) -> dict[str, TensorSpec]:
        """The decoder's tensors as they travel: ``prefix`` + its state-dict names."""
        specs = {}
        for name, value in ChunkAutoencoder(self).decoder.state_dict().items():
            specs[prefix + name] = TensorSpec(prefix + name, tuple(value.shape))
        return specs


class ChunkAutoencoder(nn.Module):
    def __init__(self, shape: AutoencoderSpec) -> None:
        super().__init__()
        self.shape = shape
        activation = ACTIVATIONS[shape.activation]
        self.encoder = nn.Sequential(nn.Linear(shape.chunk, shape.hidden), activation(),
                                     nn.Linear(shape.hidden, shape.latent))
        self.decoder = nn.Sequential(nn.Linear(shape.latent, shape.hidden), activation(),
                                     nn.Linear(shape.hidden, shape.chunk))

    def forward(self, chunks: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(chunks))


def to_chunks(flat: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit-RMS chunks (n, chunk), their RMS scales (n,)); the last chunk is zero-padded."""
    count = -(-flat.size // chunk)
    padded = np.zeros(count * chunk, np.float32)
    padded[:flat.size] = flat
    chunks = padded.reshape(count, chunk)
    scales = np.sqrt((chunks.astype(np.float64) ** 2).mean(axis=1)).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0)
    return chunks / safe[:, None], scales


def from_chunks(chunks: np.ndarray, scales: np.ndarray, numel: int) -> np.ndarray:
    return (chunks * scales[:, None]).reshape(-1)[:numel]


def train_autoencoder(samples: np.ndarray, shape: AutoencoderSpec, epochs: int = 50, lr: float = 1e-3,
                      batch_size: int = 64, seed: int = 0) -> tuple[ChunkAutoencoder, float]:
    """Fit an autoencoder to unit-RMS chunks (rows of ``samples``); return it and its relative error."""
    torch.manual_seed(seed)
    model = ChunkAutoencoder(shape)
    data = torch.from_numpy(np.ascontiguousarray(samples, np.float32))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for i in range(0, len(order), batch_size):
            batch = data[order[i:i + batch_size]]
            optimizer.zero_grad()
            F.mse_loss(model(batch), batch).backward()
            optimizer.step()
    return model, relative_error(model, samples)


@torch.inference_mode()
def relative_error(model: ChunkAutoencoder, samples: np.ndarray) -> float:
    """||x - decode(encode(x))|| / ||x|| over unit-RMS chunks."""
    data = torch.from_numpy(np.ascontiguousarray(samples, np.float32))
    return float((model(data) - data).norm() / data.norm().clamp_min(1e-30))


class AutoencoderModel(LatentModel):
    """A latent model backed by a chunked autoencoder. The server's copy has no encoder."""

    def __init__(self, autoencoder: ChunkAutoencoder, can_encode: bool = True) -> None:
        self.autoencoder = autoencoder.eval()
        self.shape = autoencoder.shape
        self.can_encode = can_encode

    @torch.inference_mode()
    def encode(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.can_encode:
            raise RuntimeError("this copy of the autoencoder holds only the decoder")
        unit, _ = to_chunks(np.asarray(array, np.float32).reshape(-1), self.shape.chunk)
        codes = self.autoencoder.encoder(torch.from_numpy(unit)).numpy().reshape(-1)
        return codes, self.rescale(array, codes, np.zeros(0, np.float32))

    @torch.inference_mode()
    def rescale(self, array: np.ndarray, codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
        """Each chunk's least-squares gain on what ``codes`` decode to: a projection, never worse than 0."""
        count = self.shape.chunks(array.size)
        padded = np.zeros(count * self.shape.chunk, np.float64)
        padded[:array.size] = np.asarray(array, np.float64).reshape(-1)
        chunks = padded.reshape(count, self.shape.chunk)
        latent = torch.from_numpy(np.ascontiguousarray(codes, np.float32)).view(-1, self.shape.latent)
        decoded = self.autoencoder.decoder(latent).numpy().astype(np.float64)
        power = (decoded**2).sum(axis=1)
        gains = np.where(power > 0, (chunks * decoded).sum(axis=1) / np.maximum(power, 1e-300), 0.0)
        return gains.astype(np.float32)

    @torch.inference_mode()
    def decode(self, codes: np.ndarray, scales: np.ndarray, spec: TensorSpec) -> np.ndarray:
        latent = torch.from_numpy(np.ascontiguousarray(codes, np.float32)).view(-1, self.shape.latent)
        chunks = self.autoencoder.decoder(latent).numpy()
        return from_chunks(chunks, scales, spec.numel).reshape(spec.shape)

    def code_count(self, spec: TensorSpec) -> int:
        return self.shape.chunks(spec.numel) * self.shape.latent

    def scale_count(self, spec: TensorSpec) -> int:
        return self.shape.chunks(spec.numel)

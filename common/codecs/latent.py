"""``latent``: a tensor as a vector of codes, plus the id and version of the decoder that reads it.

Section: u8 id length, the decoder id (UTF-8), u32 version, u32 code count,
u32 scale count, the scales (bfloat16: float32's range in two bytes; a model
may normalise parts of the tensor and send their scales). The codes (float32)
go to the next stage, so they can be quantised and entropy-coded:
``latent(decoder=dev-7,version=2)|cluster(k=16)|zstd``.

The networks themselves live in ``LATENT_MODELS``: a client registers its
autoencoder (encoder and decoder) there; a server registers the decoders
clients upload. The stage refuses ids and versions nobody registered.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from fedsqueeze.codecs.base import ArrayStage, DecodeRest, register_stage
from fedsqueeze.codecs.binary import CodecError, Reader, uint_bytes
from fedsqueeze.codecs.dense import from_bfloat16_bits, to_bfloat16_bits
from fedsqueeze.tensors import TensorSpec

MAX_ID_BYTES = 128


class LatentModel(ABC):
    """Maps a tensor to codes and scales and back. Encoding needs the encoder half; decoding only the decoder."""

    @abstractmethod
    def encode(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1-D float32 codes, 1-D float32 scales) for ``array``."""

    @abstractmethod
    def decode(self, codes: np.ndarray, scales: np.ndarray, spec: TensorSpec) -> np.ndarray:
        """A float32 array of ``spec.shape`` from codes and scales."""

    @abstractmethod
    def code_count(self, spec: TensorSpec) -> int:
        """How many codes a tensor of ``spec`` takes (the receiver checks the payload against it)."""

    def scale_count(self, spec: TensorSpec) -> int:
        """How many scales a tensor of ``spec`` takes."""
        return 0

    def rescale(self, array: np.ndarray, codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
        """Scales that fit ``array`` best given the codes the receiver will actually decode (after
        quantisation by later stages). Default: the scales as first computed."""
        return scales


class LatentModels:
    """Registered latent models by (decoder id, version)."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, int], LatentModel] = {}

    def register(self, decoder: str, version: int, model: LatentModel) -> None:
        self._models[(decoder, version)] = model

    def unregister(self, decoder: str, version: int) -> None:
        self._models.pop((decoder, version), None)

    def get(self, decoder: str, version: int) -> LatentModel:
        model = self._models.get((decoder, version))
        if model is None:
            raise CodecError(f"no latent decoder {decoder!r} version {version} is registered")
        return model


LATENT_MODELS = LatentModels()


@register_stage
class Latent(ArrayStage):
    codec_id = "latent"
    terminal = False
    closed_loop = True

    def __init__(self, decoder: str, version: int = 1) -> None:
        if not isinstance(decoder, str) or not decoder[:1].isalpha() or len(decoder.encode()) > MAX_ID_BYTES:
            raise CodecError(f"latent: decoder id must be up to {MAX_ID_BYTES} bytes starting with a letter, "
                             f"not {decoder!r}")
        if not isinstance(version, int) or not 0 <= version < 1 << 32:
            raise CodecError(f"latent: version must be a uint32, not {version!r}")
        self.decoder, self.version = decoder, version

    @property
    def lossless(self) -> bool:
        return False

    def encode(self, array: np.ndarray) -> tuple[bytes, np.ndarray]:
        codes, scales = LATENT_MODELS.get(self.decoder, self.version).encode(array)
        codes = np.asarray(codes, np.float32).reshape(-1)
        return self._section(len(codes), np.asarray(scales, np.float32).reshape(-1)), codes

    def _section(self, code_count: int, scales: np.ndarray) -> bytes:
        name = self.decoder.encode()
        head = uint_bytes(len(name), 1) + name + uint_bytes(self.version, 4)
        return head + uint_bytes(code_count, 4) + uint_bytes(len(scales), 4) + to_bfloat16_bits(scales).tobytes()

    def refine(self, section: bytes, array: np.ndarray, received_rest: np.ndarray) -> bytes:
        """Refit the scales to the codes as the receiver will decode them (after quantisation)."""
        reader = Reader(section)
        reader.take(reader.uint(1, "decoder id length") + 8, "decoder id, version and code count")
        scales = from_bfloat16_bits(reader.array("<u2", reader.uint(4, "scale count"), "scales"))
        model = LATENT_MODELS.get(self.decoder, self.version)
        refitted = np.asarray(model.rescale(array, received_rest, scales), np.float32)
        return self._section(len(received_rest), refitted)

    def decode(self, reader: Reader, spec: TensorSpec, decode_rest: DecodeRest) -> np.ndarray:
        name = bytes(reader.take(reader.uint(1, "decoder id length"), "decoder id"))
        version = reader.uint(4, "decoder version")
        if name != self.decoder.encode() or version != self.version:
            raise CodecError(f"payload names decoder {name[:MAX_ID_BYTES]!r} v{version}, "
                             f"expected {self.decoder!r} v{self.version}")
        model = LATENT_MODELS.get(self.decoder, self.version)
        count, scale_count = reader.uint(4, "code count"), reader.uint(4, "scale count")
        if count != model.code_count(spec) or scale_count != model.scale_count(spec):
            raise CodecError(f"{count} codes and {scale_count} scales; decoder {self.decoder!r} v{self.version} "
                             f"reads {model.code_count(spec)} and {model.scale_count(spec)} "
                             f"for shape {list(spec.shape)}")
        scales = from_bfloat16_bits(reader.array("<u2", scale_count, "scales"))
        if not np.isfinite(scales).all():
            raise CodecError("non-finite scale")
        codes = decode_rest(TensorSpec(spec.name, (count,)))
        array = np.asarray(model.decode(codes, scales, spec), dtype=np.float32)
        if array.shape != spec.shape:
            raise CodecError(f"decoder produced shape {list(array.shape)}, expected {list(spec.shape)}")
        return array

    def max_section_size(self, spec: TensorSpec) -> int:
        return 13 + MAX_ID_BYTES + 2 * LATENT_MODELS.get(self.decoder, self.version).scale_count(spec)

    def rest_bound(self, spec: TensorSpec) -> TensorSpec:
        return TensorSpec(spec.name, (LATENT_MODELS.get(self.decoder, self.version).code_count(spec),))

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "decoder": self.decoder, "version": self.version}

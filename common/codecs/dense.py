"""``dense``: every element, little-endian, as float32 (lossless), float16 or bfloat16; ``fixed64``: int64 sums.

``dense(shuffle=true)`` writes the values byte plane by byte plane (every
value's first byte, then every second byte, ...), the shuffle filter of
Blosc and numcodecs. It changes no value, only the order of the bytes: the
sign-and-exponent bytes of a layer's weights are few distinct values, and
grouped together a following ``zstd`` finds them. On the CNN's float32
deltas after one epoch, zstd alone saves 12-15%; shuffled, 21-24% (weights:
8% and 15%). A transpose in numpy is not worth a dependency.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsqueeze.codecs.base import ArrayStage, DecodeRest, register_stage
from fedsqueeze.codecs.binary import CodecError, Reader
from fedsqueeze.tensors import TensorSpec

_WIRE_DTYPE = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2"}


def to_bfloat16_bits(array: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounding to nearest even."""
    bits = np.ascontiguousarray(array, dtype="<f4").view("<u4").astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype("<u4") << 16).view("<f4")


@register_stage
class Dense(ArrayStage):
    """All elements in a fixed-width float type."""

    codec_id = "dense"
    terminal = True

    def __init__(self, dtype: str = "float32", shuffle: bool = False) -> None:
        if dtype not in _WIRE_DTYPE:
            raise CodecError(f"dense: dtype must be one of {', '.join(_WIRE_DTYPE)}, not {dtype!r}")
        if not isinstance(shuffle, bool):
            raise CodecError(f"dense: shuffle must be true or false, not {shuffle!r}")
        self.dtype = dtype
        self.shuffle = shuffle
        self._width = np.dtype(_WIRE_DTYPE[dtype]).itemsize

    @property
    def lossless(self) -> bool:
        return self.dtype == "float32"

    def encode(self, array: np.ndarray) -> tuple[bytes, None]:
        flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
        values = to_bfloat16_bits(flat) if self.dtype == "bfloat16" else flat.astype(_WIRE_DTYPE[self.dtype])
        if self.shuffle:   # (n, width) bytes -> (width, n): plane i holds every value's byte i
            return np.ascontiguousarray(values.view(np.uint8).reshape(-1, self._width).T).tobytes(), None
        return values.tobytes(), None

    def decode(self, reader: Reader, spec: TensorSpec, decode_rest: DecodeRest) -> np.ndarray:
        what = f"{spec.numel} {self.dtype} values"
        if self.shuffle:
            planes = reader.array("u1", spec.numel * self._width, what).reshape(self._width, spec.numel)
            raw = np.ascontiguousarray(planes.T).view(_WIRE_DTYPE[self.dtype]).reshape(-1)
        else:
            raw = reader.array(_WIRE_DTYPE[self.dtype], spec.numel, what)
        flat = from_bfloat16_bits(raw) if self.dtype == "bfloat16" else raw
        return flat.astype(np.float32).reshape(spec.shape)

    def max_section_size(self, spec: TensorSpec) -> int:
        return spec.numel * self._width

    def get_config(self) -> dict[str, Any]:
        """``shuffle`` only when on, so the canonical spec of plain ``dense`` stays what it always was."""
        config: dict[str, Any] = {"id": self.codec_id, "dtype": self.dtype}
        if self.shuffle:
            config["shuffle"] = True
        return config


@register_stage
class Fixed64(ArrayStage):
    """Every element of an int64 array, little-endian, optionally byte-shuffled: the exact fixed-point sums an
    edge aggregator sends its root (``fedsqueeze.server.partial_sums``). Lossless; it takes and gives int64, so
    it stands alone (no transforms before it) and is no codec for model weights or updates."""

    codec_id = "fixed64"
    terminal = True
    input_dtype = np.dtype(np.int64)
    _width = 8

    def __init__(self, shuffle: bool = False) -> None:
        if not isinstance(shuffle, bool):
            raise CodecError(f"fixed64: shuffle must be true or false, not {shuffle!r}")
        self.shuffle = shuffle

    @property
    def lossless(self) -> bool:
        return True

    def encode(self, array: np.ndarray) -> tuple[bytes, None]:
        values = np.ascontiguousarray(array, dtype="<i8").reshape(-1)
        if self.shuffle:
            return np.ascontiguousarray(values.view(np.uint8).reshape(-1, self._width).T).tobytes(), None
        return values.tobytes(), None

    def decode(self, reader: Reader, spec: TensorSpec, decode_rest: DecodeRest) -> np.ndarray:
        what = f"{spec.numel} int64 values"
        if self.shuffle:
            planes = reader.array("u1", spec.numel * self._width, what).reshape(self._width, spec.numel)
            flat = np.ascontiguousarray(planes.T).view("<i8").reshape(-1)
        else:
            flat = reader.array("<i8", spec.numel, what)
        return flat.astype(np.int64).reshape(spec.shape)

    def max_section_size(self, spec: TensorSpec) -> int:
        return spec.numel * self._width

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"id": self.codec_id}
        if self.shuffle:
            config["shuffle"] = True
        return config

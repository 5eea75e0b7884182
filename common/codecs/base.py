"""Codec stages and their registry (the numcodecs pattern).

A tensor's codec is a pipeline of stages (``fedsqueeze.codecs.pipeline``):

- transform stages (``sparse``, ``channels``, ``latent``) write a section of
  their own (positions, kept channels, decoder id) and hand a smaller float32
  array to the next stage;
- one terminal stage (``dense``, ``cluster``) writes the values;
- byte stages (``zstd``, ``ans``) compress everything written before them.

Each stage has a stable ``codec_id``, a JSON-serialisable config
(``get_config`` / ``from_config``) and a canonical spec such as ``cluster(k=16)``.
Decoding is strict: sections are read through ``Reader``, which refuses any
overrun or leftover, and every count is checked against a bound derived from
the receiver's own tensor spec before it sizes an allocation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from fedsqueeze.codecs.binary import CodecError, Reader
from fedsqueeze.plugins import PluginError, is_import_path, resolve
from fedsqueeze.specs import format_spec
from fedsqueeze.tensors import TensorSpec

DecodeRest = Callable[[TensorSpec], np.ndarray]


class Stage(ABC):
    codec_id: ClassVar[str]

    @property
    def lossless(self) -> bool:
        return True

    @abstractmethod
    def get_config(self) -> dict[str, Any]:
        """Parameters as JSON-serialisable values, with ``id``."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Stage:
        params = {k: v for k, v in config.items() if k != "id"}
        try:
            return cls(**params)
        except TypeError as exc:
            raise CodecError(f"bad parameters for codec {cls.codec_id!r}: {exc}") from None

    @property
    def spec(self) -> str:
        config = self.get_config()
        return format_spec(config.pop("id"), config)


class ArrayStage(Stage):
    """Encodes a float32 array into a section of the payload, maybe leaving a rest for the next stage."""

    terminal: ClassVar[bool]
    closed_loop: ClassVar[bool] = False   # a transform that refines its section given the rest as received
    input_dtype: ClassVar[np.dtype] = np.dtype(np.float32)   # what a terminal stage takes and gives back

    def refine(self, section: bytes, array: np.ndarray, received_rest: np.ndarray) -> bytes:
        """For closed-loop transforms: rewrite ``section`` knowing what the receiver will decode of the rest
        (after the later, lossy stages), e.g. to fit scales to it."""
        return section

    @abstractmethod
    def encode(self, array: np.ndarray) -> tuple[bytes, np.ndarray | None]:
        """(this stage's section, the float32 array the next stage encodes; None for terminal stages)."""

    def encode_variants(self, array: np.ndarray) -> list[bytes]:
        """Alternative sections of a terminal stage, best first without entropy coding.

        The pipeline keeps whichever ends smallest after its byte stages.
        """
        return [self.encode(array)[0]]

    @abstractmethod
    def decode(self, reader: Reader, spec: TensorSpec, decode_rest: DecodeRest) -> np.ndarray:
        """Read this stage's section and rebuild a float32 array of ``spec.shape``."""

    @abstractmethod
    def max_section_size(self, spec: TensorSpec) -> int:
        """The largest section this stage writes for ``spec``."""

    def rest_bound(self, spec: TensorSpec) -> TensorSpec:
        """The largest rest this transform stage can hand on (terminal stages: unused)."""
        raise NotImplementedError(f"{self.codec_id} is a terminal stage")


class BytesStage(Stage):
    """Compresses bytes; decompression never produces more than the caller's bound."""

    @abstractmethod
    def compress(self, data: bytes) -> bytes: ...

    @abstractmethod
    def decompress(self, data: bytes | memoryview, max_size: int) -> bytes: ...

    @abstractmethod
    def max_compressed_size(self, size: int) -> int: ...


_STAGES: dict[str, type[Stage]] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage available by its ``codec_id``."""
    if cls.codec_id in _STAGES:
        raise ValueError(f"codec id {cls.codec_id!r} registered twice")
    _STAGES[cls.codec_id] = cls
    return cls


def stage_from_config(config: dict[str, Any]) -> Stage:
    """The stage a config names: a built-in, or one an installed package registers under the entry-point
    group ``fedsqueeze.codecs`` (its name is the stage's ``codec_id``; both ends must have it installed)."""
    codec_id = str(config.get("id"))
    cls = _STAGES.get(codec_id)
    if cls is None:
        if is_import_path(codec_id):
            raise CodecError(f"codec {codec_id!r}: codec stages are plug-ins by entry point (group fedsqueeze.codecs), "
                             "not import path: the wire names a stage by its codec_id, which both ends must find")
        try:
            found = resolve("codecs", codec_id, _STAGES, import_paths=False).target
        except PluginError as exc:
            raise CodecError(str(exc)) from None
        if not (isinstance(found, type) and issubclass(found, Stage)) or found.codec_id != codec_id:
            raise CodecError(f"entry point {codec_id!r} of fedsqueeze.codecs must be a Stage class whose codec_id "
                             f"is {codec_id!r}")
        cls = register_stage(found)
    return cls.from_config(config)


def registered_stages() -> list[str]:
    return sorted(_STAGES)

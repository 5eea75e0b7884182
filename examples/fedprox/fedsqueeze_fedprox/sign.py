"""``scaledsign``: one bit per element plus one scale per tensor (signSGD with a scale, Karimireddy et al. 2019).

An element decodes to ``+scale`` or ``-scale``, where ``scale`` is the
tensor's mean absolute value: about 32x fewer bytes than float32, lossy,
and meant for updates with error feedback (the client carries what the sign
drops into its next update), as EF-SignSGD does. A terminal array stage:
``--uplink "scaledsign"`` or ``scaledsign|zstd``. Registered by entry point
(``fedsqueeze.codecs``) under its ``codec_id``, so both ends find it by the
name the wire carries.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsqueeze.codecs import ArrayStage, CodecError, DecodeRest, Reader
from fedsqueeze.tensors import TensorSpec


class ScaledSign(ArrayStage):
    codec_id = "scaledsign"
    terminal = True

    @property
    def lossless(self) -> bool:
        return False

    def encode(self, array: np.ndarray) -> tuple[bytes, None]:
        flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
        scale = np.float32(np.abs(flat).mean()) if flat.size else np.float32(0)
        return scale.astype("<f4").tobytes() + np.packbits(flat >= 0).tobytes(), None

    def decode(self, reader: Reader, spec: TensorSpec, decode_rest: DecodeRest) -> np.ndarray:
        scale = float(reader.array("<f4", 1, "scale")[0])
        if not np.isfinite(scale) or scale < 0:
            raise CodecError(f"scaledsign: scale must be finite and >= 0, not {scale}")
        bits = np.unpackbits(reader.array("u1", (spec.numel + 7) // 8, "sign bits"))[:spec.numel]
        return np.where(bits, scale, -scale).astype(np.float32).reshape(spec.shape)

    def max_section_size(self, spec: TensorSpec) -> int:
        return 4 + (spec.numel + 7) // 8

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id}

"""Fuzzing: 10,000 mutated or random payloads per codec raise CodecError or decode to the right shape.

Nothing else may happen: no other exception, and no allocation beyond a bound
set by the receiver's own tensor spec (tracemalloc sees numpy's allocations),
so a hostile length field cannot make the decoder allocate gigabytes.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import zstandard

from fedsqueeze.codecs import LATENT_MODELS, CodecError, LatentModel, get_pipeline
from fedsqueeze.tensors import TensorSpec

from mutations import mutate

PER_CODEC = 10_000
SPEC = TensorSpec("w", (24, 17))
CODECS = [
    "dense", "dense(dtype=float16)", "dense(dtype=bfloat16)", "dense|zstd", "dense|ans",
    "dense(shuffle=true)|zstd", "dense(dtype=bfloat16,shuffle=true)",
    "cluster(k=16)", "cluster(k=7)", "cluster(k=16)|zstd", "cluster(k=200)|ans",
    "sparse(ratio=0.05)", "sparse(k=40)|cluster(k=16)|zstd", "channels(ratio=0.5)|dense(dtype=float16)|zstd",
    "latent(decoder=fuzz,version=1)|dense(dtype=float16)|zstd",
]
class Halves(LatentModel):
    """Codes are pairwise means; enough to exercise the latent stage's framing."""

    def encode(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pairs = array.reshape(-1, 2)
        return pairs.mean(axis=1), np.abs(pairs).max(axis=1)

    def decode(self, codes: np.ndarray, scales: np.ndarray, spec: TensorSpec) -> np.ndarray:
        with np.errstate(all="ignore"):   # mutated codes may overflow; the receiver refuses non-finite output
            return np.repeat(codes * scales, 2).reshape(spec.shape)

    def scale_count(self, spec: TensorSpec) -> int:
        return spec.numel // 2

    def code_count(self, spec: TensorSpec) -> int:
        return spec.numel // 2


@pytest.fixture(scope="module")
def payloads() -> dict[str, bytes]:
    LATENT_MODELS.register("fuzz", 1, Halves())
    rng = np.random.default_rng(0)
    array = rng.normal(0, 0.1, SPEC.shape).astype(np.float32)
    yield {spec: get_pipeline(spec).encode(array) for spec in CODECS}
    LATENT_MODELS.unregister("fuzz", 1)


@pytest.mark.parametrize("codec", CODECS)
def test_mutated_payloads_raise_only_codec_errors(codec: str, payloads: dict[str, bytes]) -> None:
    pipeline = get_pipeline(codec)
    rng = np.random.default_rng(abs(hash(codec)) % (1 << 32))
    others = [p for c, p in payloads.items() if c != codec]
    bomb = zstandard.ZstdCompressor().compress(bytes(64 << 20))   # declares 64 MiB of zeros
    bound = 8 * (pipeline.max_payload_size(SPEC) + 4 * SPEC.numel) + (256 << 10)
    refused, decoded, failures = 0, 0, []
    tracemalloc.start()
    try:
        for i in range(PER_CODEC):
            bad = bomb if i % 500 == 0 else mutate(rng, payloads[codec], others)
            tracemalloc.reset_peak()
            start = tracemalloc.get_traced_memory()[0]
            try:
                out = pipeline.decode(bad, SPEC)
                assert out.shape == SPEC.shape and out.dtype == np.float32, f"decoded to {out.shape} {out.dtype}"
                decoded += 1
            except CodecError:
                refused += 1
            except Exception as exc:  # noqa: BLE001  (the point: nothing else may escape)
                failures.append(f"{type(exc).__name__}: {exc} for payload {bad[:48].hex()}...")
            peak = tracemalloc.get_traced_memory()[1] - start
            if peak > bound:
                failures.append(f"allocated {peak} bytes (bound {bound}) for payload {bad[:48].hex()}...")
    finally:
        tracemalloc.stop()
    print(f"{codec}: {refused} refused, {decoded} decoded (mutations that stay valid), 0 other outcomes")
    assert not failures, f"{len(failures)} bad outcomes, first: {failures[:3]}"
    assert refused + decoded == PER_CODEC and refused > PER_CODEC // 4

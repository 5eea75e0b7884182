"""Tensor streams: round trips at any chunk size, and every malformation refused with a named reason."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsqueeze.codecs import get_pipeline
from fedsqueeze.errors import PayloadError
from fedsqueeze.limits import MAX_CHUNK_BYTES, MIN_CHUNK_BYTES
from fedsqueeze.tensors import TensorSpec
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import (
    EncodedModel,
    EncodedTensor,
    ExpectedTensor,
    StreamReceiver,
    encode_model,
    expect_all,
    receive_model,
)

SPECS = {"conv.weight": TensorSpec("conv.weight", (4, 1, 3, 3)), "conv.bias": TensorSpec("conv.bias", (4,)),
         "empty": TensorSpec("empty", (0, 3)), "fc.weight": TensorSpec("fc.weight", (10, 36)),
         "big.weight": TensorSpec("big.weight", (16, 256))}


def tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=spec.shape).astype(np.float32) for name, spec in SPECS.items()}


def chunks_of(model: EncodedModel, chunk_bytes: int = MIN_CHUNK_BYTES) -> list[pb.Chunk]:
    return list(model.chunks(chunk_bytes))


def refusal(chunks: list[pb.Chunk], expected: dict[str, ExpectedTensor] | None = None) -> str:
    with pytest.raises(PayloadError) as info:
        receive_model(chunks, expected or expect_all(SPECS, "dense"))
    return str(info.value)


@settings(max_examples=40, deadline=None)
@given(chunk_bytes=st.integers(min_value=MIN_CHUNK_BYTES, max_value=20_000), seed=st.integers(0, 2**16))
def test_round_trip_is_exact_at_any_chunk_size(chunk_bytes: int, seed: int) -> None:
    sent = tensors(seed)
    model = encode_model(sent, expect_all(SPECS, "dense"))
    got = receive_model(model.chunks(chunk_bytes), expect_all(SPECS, "dense"))
    assert set(got) == set(sent)
    for name in sent:
        assert got[name].shape == sent[name].shape
        assert np.array_equal(got[name], sent[name])


def test_chunks_respect_the_size_bound() -> None:
    big = {"w": TensorSpec("w", (3 * 1024 * 1024,))}   # 12 MiB of float32
    model = encode_model({"w": np.ones(big["w"].shape, np.float32)}, expect_all(big, "dense"))
    sizes = [len(c.data) for c in model.chunks(MAX_CHUNK_BYTES)]
    assert max(sizes) == MAX_CHUNK_BYTES and sum(sizes) == 12 * 1024 * 1024
    assert max(c.ByteSize() for c in model.chunks(MAX_CHUNK_BYTES)) < MAX_CHUNK_BYTES + 1024
    with pytest.raises(ValueError):
        next(model.chunks(MAX_CHUNK_BYTES + 1))


def test_flipped_payload_byte_fails_the_digest() -> None:
    chunks = chunks_of(encode_model(tensors(), expect_all(SPECS, "dense")))
    data = bytearray(chunks[1].data)
    data[0] ^= 0x01
    chunks[1].data = bytes(data)
    assert "digest mismatch" in refusal(chunks)


def test_missing_trailer_is_truncation() -> None:
    chunks = chunks_of(encode_model(tensors(), expect_all(SPECS, "dense")))
    assert "truncated" in refusal(chunks[:-1])


def test_payload_cut_short_before_the_next_tensor() -> None:
    chunks = chunks_of(encode_model(tensors(), expect_all(SPECS, "dense")))
    # drop the second data chunk of big.weight (16 KiB = 16 chunks)
    start = next(i for i, c in enumerate(chunks) if c.tensor.name == "big.weight")
    message = refusal(chunks[:start + 1] + chunks[start + 2:])
    assert "big.weight" in message and "truncated" in message


def test_tiny_chunks_are_refused_at_the_first() -> None:
    model = encode_model(tensors(), expect_all(SPECS, "dense"))
    receiver = StreamReceiver(expect_all({"big.weight": SPECS["big.weight"]}, "dense"))
    first = next(c for c in model.chunks(MIN_CHUNK_BYTES) if c.tensor.name == "big.weight")
    assert receiver.feed(first) is None and receiver.received == MIN_CHUNK_BYTES   # a full chunk: taken
    with pytest.raises(PayloadError, match=f"at least {MIN_CHUNK_BYTES}"):
        StreamReceiver(expect_all(SPECS, "dense")).feed(pb.Chunk(tensor=first.tensor, data=first.data[:1]))
    last = receive_model(model.chunks(MIN_CHUNK_BYTES), expect_all(SPECS, "dense"))   # short last chunks: fine
    assert set(last) == set(SPECS)
    with pytest.raises(ValueError, match="chunk_bytes must be in"):
        next(model.chunks(MIN_CHUNK_BYTES - 1))


def test_wrong_shape_is_refused_before_any_data() -> None:
    chunks = chunks_of(encode_model(tensors(), expect_all(SPECS, "dense")))
    chunks[0].tensor.shape[:] = [4, 1, 3, 4]
    message = refusal(chunks)
    assert "conv.weight" in message and "shape [4, 1, 3, 4]" in message


def test_unknown_and_duplicate_and_missing_tensors() -> None:
    chunks = chunks_of(encode_model(tensors(), expect_all(SPECS, "dense")), chunk_bytes=10_000)
    renamed = [pb.Chunk(), *chunks]
    renamed[0].CopyFrom(chunks[0])
    renamed[0].tensor.name = "intruder"
    assert "intruder" in refusal(renamed[:1])
    assert "sent twice" in refusal([chunks[0], chunks[0]])
    without_bias = [c for c in chunks if c.tensor.name != "conv.bias"]
    assert "without tensors ['conv.bias']" in refusal(without_bias)


def test_codec_dtype_and_declared_size_are_checked() -> None:
    chunks = chunks_of(encode_model(tensors(), expect_all(SPECS, "dense")), chunk_bytes=10_000)
    wrong_codec = [pb.Chunk(), *chunks[1:]]
    wrong_codec[0].CopyFrom(chunks[0])
    wrong_codec[0].tensor.codec = "dense(dtype=float16)"
    assert "is not the expected" in refusal(wrong_codec)
    wrong_dtype = [pb.Chunk()]
    wrong_dtype[0].CopyFrom(chunks[0])
    wrong_dtype[0].tensor.dtype = pb.FLOAT16
    assert "dtype float16" in refusal(wrong_dtype)
    oversized = [pb.Chunk()]
    oversized[0].CopyFrom(chunks[0])
    oversized[0].tensor.payload_size = 10**12
    assert "exceeds the codec's bound" in refusal(oversized)


def test_data_beyond_declared_length_and_after_trailer() -> None:
    chunks = chunks_of(encode_model(tensors(), expect_all(SPECS, "dense")), chunk_bytes=10_000)
    longer = [pb.Chunk(), *chunks[1:]]
    longer[0].CopyFrom(chunks[0])
    longer[0].data += b"\0\0\0\0"
    assert "longer than its declared" in refusal(longer)
    assert "after the stream's trailer" in refusal([*chunks, chunks[-1]])
    assert "empty chunk" in refusal([pb.Chunk()])
    assert "outside any tensor" in refusal([pb.Chunk(data=b"x")])


def test_oversized_chunk_is_refused() -> None:
    spec = {"w": TensorSpec("w", (1024,))}
    chunks = list(encode_model({"w": np.zeros(1024, np.float32)}, expect_all(spec, "dense")).chunks(4096))
    receiver = StreamReceiver(expect_all(spec, "dense"), max_chunk_bytes=1000)
    with pytest.raises(PayloadError, match="exceeds the 1000-byte limit"):
        receiver.feed(chunks[0])


def test_non_finite_values_are_refused_both_ways() -> None:
    sent = tensors()
    sent["fc.weight"][3, 7] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        encode_model(sent, expect_all(SPECS, "dense"))
    expected = expect_all(SPECS, "dense")
    crafted = [EncodedTensor(e.spec, e.codec.spec, np.asarray(sent[n], "<f4").tobytes()) for n, e in expected.items()]
    assert "'fc.weight': contains NaN or Inf" in refusal(chunks_of(EncodedModel(crafted)))


def test_trailer_counts_must_match() -> None:
    chunks = chunks_of(encode_model(tensors(), expect_all(SPECS, "dense")))
    chunks[-1].trailer.tensor_count += 1
    assert "trailer says" in refusal(chunks)


def test_lossy_dense_codecs_stay_within_their_precision() -> None:
    sent = tensors(3)
    for dtype, tolerance in (("float16", 2**-11), ("bfloat16", 2**-8)):
        codec = get_pipeline(f"dense(dtype={dtype})")
        expected = {n: ExpectedTensor(s, codec) for n, s in SPECS.items()}
        model = encode_model(sent, expected)
        assert model.payload_size == sum(s.numel for s in SPECS.values()) * 2
        got = receive_model(model.chunks(), expected)
        for name, value in sent.items():
            np.testing.assert_allclose(got[name], value, rtol=tolerance, atol=1e-6)

"""Tensor streams: a model or update as a sequence of bounded Chunk messages.

Sending: ``encode_model`` encodes each tensor with its codec into an
``EncodedModel``, whose ``chunks()`` yields a TensorHeader, the payload in
slices of at most ``chunk_bytes``, and a Trailer with the stream's SHA-256.

Receiving: ``StreamReceiver`` checks every field against what the receiver
expects (name, shape, dtype, codec, payload bound) before it buffers a byte,
and accepts the stream only when the trailer's digest matches. A chunk
carries at least ``MIN_CHUNK_BYTES`` of data unless it ends its tensor, so a
stream has at most one chunk per ``MIN_CHUNK_BYTES`` of payload plus one per
tensor: a million one-byte chunks are refused at the first. Both ends use
it, so a server and a client are equally strict. Violations raise
``PayloadError`` naming the tensor and the problem.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fedsqueeze.codecs import Pipeline, get_plan
from fedsqueeze.errors import PayloadError
from fedsqueeze.limits import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES
from fedsqueeze.tensors import DTYPE_BY_WIRE, DTYPES, TensorSpec
from fedsqueeze.text import shown
from fedsqueeze.v1 import federation_pb2 as pb


@dataclass(frozen=True)
class ExpectedTensor:
    """What a receiver accepts for one tensor: its spec and the codec pipeline it must be encoded with."""

    spec: TensorSpec
    codec: Pipeline


def expect_all(specs: Mapping[str, TensorSpec], plan_spec: str) -> dict[str, ExpectedTensor]:
    """Expect each tensor of ``specs`` encoded with the pipeline a codec plan picks for it."""
    plan = get_plan(plan_spec)
    return {name: ExpectedTensor(spec, plan.for_tensor(name)) for name, spec in specs.items()}


@dataclass(frozen=True)
class EncodedTensor:
    spec: TensorSpec
    codec: str       # canonical codec spec
    payload: bytes


def _digest_line(spec: TensorSpec, codec: str, payload_size: int) -> bytes:
    shape = ",".join(str(d) for d in spec.shape)
    return f"{spec.name}\0{spec.dtype}\0{shape}\0{codec}\0{payload_size}\n".encode()


class EncodedModel:
    """An encoded tensor stream, built once and sent any number of times."""

    def __init__(self, tensors: list[EncodedTensor]) -> None:
        self.tensors = tensors
        digest = hashlib.sha256()
        for t in tensors:
            digest.update(_digest_line(t.spec, t.codec, len(t.payload)))
            digest.update(t.payload)
        self.sha256 = digest.digest()
        self.payload_size = sum(len(t.payload) for t in tensors)
        self.dense_bytes = sum(t.spec.dense_bytes for t in tensors)

    def chunks(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[pb.Chunk]:
        if not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be in [{MIN_CHUNK_BYTES}, {MAX_CHUNK_BYTES}], not {chunk_bytes}")
        for t in self.tensors:
            header = pb.TensorHeader(name=t.spec.name, shape=t.spec.shape, dtype=DTYPES[t.spec.dtype][0],
                                     codec=t.codec, payload_size=len(t.payload))
            view = memoryview(t.payload)
            yield pb.Chunk(tensor=header, data=bytes(view[:chunk_bytes]))
            for start in range(chunk_bytes, len(view), chunk_bytes):
                yield pb.Chunk(data=bytes(view[start:start + chunk_bytes]))
        yield pb.Chunk(trailer=pb.Trailer(tensor_count=len(self.tensors), payload_size=self.payload_size,
                                          sha256=self.sha256))


def accepted_chunk_bytes(wanted: int, reply: pb.JoinReply) -> int:
    """The chunk size to send: ``wanted``, or less if the server that replied accepts no larger ones."""
    return min(wanted, reply.max_chunk_bytes or MAX_CHUNK_BYTES)


def encode_model(tensors: Mapping[str, np.ndarray | torch.Tensor],
                 expected: Mapping[str, ExpectedTensor]) -> EncodedModel:
    """Encode ``tensors`` (exactly the names of ``expected``) with their codecs."""
    if set(tensors) != set(expected):
        raise ValueError(f"tensors {sorted(set(tensors) ^ set(expected))} do not match the expected spec")
    encoded = []
    for name, exp in expected.items():
        value = tensors[name]
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        if tuple(array.shape) != exp.spec.shape:
            raise ValueError(f"tensor {name!r} has shape {list(array.shape)}, spec says {list(exp.spec.shape)}")
        encoded.append(EncodedTensor(exp.spec, exp.codec.spec, exp.codec.encode(array)))
    return EncodedModel(encoded)


class StreamReceiver:
    """Rebuilds a tensor stream chunk by chunk, strictly, against the expected tensors.

    ``feed`` returns each tensor as soon as its payload is complete (decode it
    then, or keep it until the digest is verified, as the server does: it then
    spends no decoding on a stream that turns out corrupted); ``finish`` checks
    the stream ended with a valid trailer.
    """

    def __init__(self, expected: Mapping[str, ExpectedTensor], max_chunk_bytes: int = MAX_CHUNK_BYTES) -> None:
        self._expected = expected
        self._max_chunk = max_chunk_bytes
        self._digest = hashlib.sha256()
        self._seen: set[str] = set()
        self._current: ExpectedTensor | None = None
        self._declared = 0
        # The current tensor's data so far. A payload that comes whole in one chunk skips it (no copy); one
        # that comes in pieces is gathered in one buffer, so many tiny chunks cost no per-piece overhead.
        self._buffer = bytearray()
        self.payload_size = 0
        self.received = 0       # payload bytes taken so far
        self.complete = False   # True once a valid trailer arrived

    def feed(self, chunk: pb.Chunk) -> EncodedTensor | None:
        """Take one chunk; return the tensor it completes, if any."""
        if self.complete:
            raise PayloadError("data after the stream's trailer")
        data = chunk.data   # read once: each read of a protobuf bytes field is a fresh copy
        if not (chunk.HasField("tensor") or data or chunk.HasField("trailer")):
            raise PayloadError("empty chunk")
        done = None
        if chunk.HasField("tensor"):
            self._begin(chunk.tensor)
            done = self._take_if_complete()
        if data:
            if self._current is None:
                raise PayloadError("chunk data outside any tensor")
            name = self._current.spec.name
            if len(data) > self._max_chunk:
                raise PayloadError(f"chunk of {len(data)} bytes exceeds the {self._max_chunk}-byte limit", name)
            if len(self._buffer) + len(data) > self._declared:
                raise PayloadError(f"payload longer than its declared {self._declared} bytes", name)
            if len(data) < MIN_CHUNK_BYTES and len(self._buffer) + len(data) < self._declared:
                raise PayloadError(f"chunk of {len(data)} bytes: every chunk but a tensor's last carries at "
                                   f"least {MIN_CHUNK_BYTES}", name)
            self.received += len(data)
            self._digest.update(data)
            if not self._buffer and len(data) == self._declared:
                done = self._complete(data)
            else:
                self._buffer += data
                done = self._take_if_complete()
        if chunk.HasField("trailer"):
            self._end(chunk.trailer)
        return done

    def finish(self) -> None:
        """Raise unless the stream ended with a verified trailer."""
        if not self.complete:
            where = f" (inside tensor {self._current.spec.name!r})" if self._current else ""
            raise PayloadError(f"stream ended without its trailer{where}: truncated")

    def _begin(self, header: pb.TensorHeader) -> None:
        if self._current is not None:
            raise PayloadError(f"payload truncated at {len(self._buffer)} of {self._declared} bytes "
                               "before the next tensor", self._current.spec.name)
        exp = self._expected.get(header.name)
        if exp is None:
            raise PayloadError("not part of the expected model", header.name)
        if header.name in self._seen:
            raise PayloadError("sent twice", header.name)
        spec = exp.spec
        if tuple(header.shape) != spec.shape:
            shape = str(list(header.shape)) if len(header.shape) <= 8 else f"of {len(header.shape)} dimensions"
            raise PayloadError(f"shape {shape} does not match the model's {list(spec.shape)}", spec.name)
        if DTYPE_BY_WIRE.get(header.dtype) != spec.dtype:
            raise PayloadError(f"dtype {DTYPE_BY_WIRE.get(header.dtype, header.dtype)} does not match "
                               f"the model's {spec.dtype}", spec.name)
        if header.codec != exp.codec.spec:
            raise PayloadError(f"codec {shown(header.codec)} is not the expected {exp.codec.spec!r}", spec.name)
        bound = exp.codec.max_payload_size(spec)
        if header.payload_size > bound:
            raise PayloadError(f"declared payload of {header.payload_size} bytes exceeds the codec's "
                               f"bound of {bound}", spec.name)
        self._seen.add(header.name)
        self._current = exp
        self._declared = header.payload_size
        self._buffer = bytearray()
        self._digest.update(_digest_line(spec, header.codec, header.payload_size))

    def _take_if_complete(self) -> EncodedTensor | None:
        if self._current is None or len(self._buffer) < self._declared:
            return None
        return self._complete(bytes(self._buffer))

    def _complete(self, payload: bytes) -> EncodedTensor:
        assert self._current is not None
        done = EncodedTensor(self._current.spec, self._current.codec.spec, payload)
        self.payload_size += len(payload)
        self._current, self._buffer = None, bytearray()
        return done

    def _end(self, trailer: pb.Trailer) -> None:
        if self._current is not None:
            raise PayloadError(f"payload truncated at {len(self._buffer)} of {self._declared} bytes "
                               "before the trailer", self._current.spec.name)
        missing = sorted(set(self._expected) - self._seen)
        if missing:
            raise PayloadError(f"stream ended without tensors {missing}")
        if trailer.tensor_count != len(self._seen) or trailer.payload_size != self.payload_size:
            raise PayloadError(f"trailer says {trailer.tensor_count} tensors / {trailer.payload_size} bytes, "
                               f"stream had {len(self._seen)} / {self.payload_size}")
        if not hmac.compare_digest(trailer.sha256, self._digest.digest()):
            raise PayloadError("stream digest mismatch: the data was altered or corrupted in transit")
        self.complete = True


def decode_tensor(encoded: EncodedTensor, expected: ExpectedTensor) -> np.ndarray:
    """Decode one received tensor; refuse non-finite values."""
    array = expected.codec.decode(encoded.payload, expected.spec)
    if not np.isfinite(array).all():
        raise PayloadError("contains NaN or Inf", expected.spec.name)
    return array


def receive_model(chunks: Iterable[pb.Chunk], expected: Mapping[str, ExpectedTensor],
                  max_chunk_bytes: int = MAX_CHUNK_BYTES) -> dict[str, np.ndarray]:
    """Receive and decode a whole tensor stream (the synchronous path, used by clients)."""
    receiver = StreamReceiver(expected, max_chunk_bytes)
    tensors = {}
    for chunk in chunks:
        done = receiver.feed(chunk)
        if done is not None:
            tensors[done.spec.name] = decode_tensor(done, expected[done.spec.name])
    receiver.finish()
    return tensors

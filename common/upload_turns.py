"""Upload turns: a client sends its update's payload only once the server is ready to read it.

The server reads a few update streams at a time (``--concurrent-uploads``); the
others wait. It tells a stream that its turn has come by sending the call's
initial metadata (key ``fedsqueeze-upload-turn``). A client sends the
UpdateHeader at once, so the server can refuse a bad header straight away, and
the chunks only after that signal.

Why: a waiting stream that has already started its payload leaves part of a
chunk inside the server's gRPC transport, which sizes its read buffers for the
whole message. With a thousand clients uploading at once, those buffers came to
most of the server's extra memory (benchmarks/scale.py); a waiting stream that
has sent only its header holds a few hundred bytes. The price is one round trip
per upload.

Clients that ignore the signal still work; they only cost the server more memory.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Generic, TypeVar

import grpc

TURN_METADATA = (("fedsqueeze-upload-turn", "now"),)

M = TypeVar("M")


class TurnTakingUpload(Generic[M]):
    """One SubmitUpdate call over the blocking gRPC API that holds its chunks back until its turn.

    ``start`` makes the call; gRPC's request thread sends the header, then waits
    in ``_messages`` for the server's initial metadata before sending the chunks.
    A call that fails or is cancelled first also ends that wait.
    """

    def __init__(self, header: M, chunks: Iterable[M]) -> None:
        self._header = header
        self._chunks = chunks
        self._started = threading.Event()
        self._call: grpc.Future | None = None

    def start(self, method: grpc.StreamUnaryMultiCallable, **call_options: object) -> grpc.Future:
        """Begin the call (``method.future``); its future, which is also its ``grpc.Call``."""
        self._call = method.future(self._messages(), **call_options)
        self._started.set()
        return self._call

    def _messages(self) -> Iterator[M]:
        yield self._header
        self._started.wait()
        assert self._call is not None
        self._call.initial_metadata()    # blocks until the server's turn signal, or the call's end
        yield from self._chunks


async def turn_taking_messages(header: M, chunks: Iterable[M], turn: asyncio.Event) -> AsyncIterator[M]:
    """The asyncio form: the header, then, once ``turn`` is set, the chunks.

    The caller sets ``turn`` after ``await call.initial_metadata()`` returns.
    """
    yield header
    await turn.wait()
    for chunk in chunks:
        yield chunk

"""Byte accounting from the serialised messages that really cross the wire.

``MeteringInterceptor`` wraps the request deserializer and response serializer
of every method of the metered service (the Federation service: the traffic
between clients and server), so the meter sees the exact bytes gRPC reads and
writes: each message counts its serialised length plus the 5-byte gRPC length
prefix. HTTP/2, TLS and TCP framing are below this layer and not included;
operator, health and reflection calls are not federation traffic and not counted.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

GRPC_FRAME_PREFIX = 5  # compressed flag (1 byte) + message length (4 bytes)


@dataclass(frozen=True)
class Traffic:
    """Bytes received (up, client -> server) and sent (down) so far."""

    up: int
    down: int

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(self.up - other.up, self.down - other.down)

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(self.up + other.up, self.down + other.down)


class ByteMeter:
    """Thread-safe byte totals, overall and per RPC method."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._up = 0
        self._down = 0
        self.by_method: Counter[str] = Counter()

    def count(self, method: str, up: int = 0, down: int = 0) -> None:
        with self._lock:
            self._up += up
            self._down += down
            self.by_method[method] += up + down

    def snapshot(self) -> Traffic:
        with self._lock:
            return Traffic(self._up, self._down)


class MeteringInterceptor(grpc.aio.ServerInterceptor):
    """Counts every message of every RPC of one service into a ByteMeter."""

    def __init__(self, meter: ByteMeter, service: str) -> None:
        self._meter = meter
        self._prefix = f"/{service}/"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler
        meter = self._meter
        deserialize = handler.request_deserializer
        serialize = handler.response_serializer

        def counted_deserialize(data: bytes) -> Any:
            meter.count(method, up=len(data) + GRPC_FRAME_PREFIX)
            return deserialize(data) if deserialize else data

        def counted_serialize(message: Any) -> bytes:
            data = serialize(message) if serialize else message
            meter.count(method, down=len(data) + GRPC_FRAME_PREFIX)
            return data

        return handler._replace(request_deserializer=counted_deserialize, response_serializer=counted_serialize)

"""Requests that are not valid protobuf: answered INVALID_ARGUMENT by the handler, not UNKNOWN by gRPC.

gRPC answers a request its deserializer cannot parse with UNKNOWN and logs a
traceback per message (~880 log bytes for a 1-byte message). Here each
generated servicer's handlers are registered with deserializers that turn a
``DecodeError`` into a ``Malformed`` value instead; the handlers refuse it
with INVALID_ARGUMENT, count it, and log it at WARNING at most once a minute
per peer host (``UndecodableLog``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import Counter

log = logging.getLogger(__name__)


class Malformed:
    """Stands in for a request message that did not parse."""

    def __init__(self, size: int) -> None:
        self.size = size


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data) if deserializer else data
        except DecodeError:
            return Malformed(len(data))
    return deserialize


class _Capture:
    """Takes the handlers a generated ``add_*Servicer_to_server`` registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}
        self.service = ""

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.handlers = service, handlers


def add_tolerant_servicer(add: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server) -> None:
    """``add(servicer, server)`` (a generated function), with every request deserializer made tolerant."""
    capture = _Capture()
    add(servicer, capture)
    handlers = {name: handler._replace(request_deserializer=tolerant(handler.request_deserializer))
                for name, handler in capture.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service, handlers),))
    server.add_registered_method_handlers(capture.service, handlers)


class UndecodableLog:
    """Counts undecodable requests in ``counter`` and logs them at WARNING, once a minute per peer host, with how
    many were not logged."""

    def __init__(self, counter: Counter, every: float = 60.0) -> None:
        self._counter = counter
        self._every = every
        self._last: dict[str, tuple[float, int]] = {}

    def note(self, peer: str, method: str) -> None:
        self._counter.inc()
        host = peer.rpartition(":")[0] or peer
        now = time.monotonic()
        last, unlogged = self._last.get(host, (-self._every, 0))
        if now - last < self._every:
            self._last[host] = (last, unlogged + 1)
            return
        if len(self._last) > 10_000:   # bounded memory under many peers
            self._last.clear()
        self._last[host] = (now, 0)
        log.warning("%s from %s: a request that is not valid protobuf%s", method, host[:64],
                    f" ({unlogged} more since the last such line)" if unlogged else "")

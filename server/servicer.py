"""gRPC servicers: translate between the wire and the coordinator.

Every error the coordinator or the stream receiver raises becomes a status
code with its message (see ``STATUS_FOR``); nothing else reaches the client,
and a failed call never touches the global model.

With enrolment (``--tokens``), every call must carry an enrolled client's token
(else UNAUTHENTICATED) and may act only as that client: Join only under its
own id, session calls only on its own session (else PERMISSION_DENIED); the
Operator service answers only the ``operator`` identity.

A request that is not valid protobuf reaches the handler as ``Malformed``
(``fedsqueeze.server.decoding``) and is refused INVALID_ARGUMENT. An upload
holds its turn only while it moves: nothing for ``--upload-stall-seconds``,
or less than ``--min-upload-rate`` on average after that long, and it is
refused DEADLINE_EXCEEDED and its task dropped from the round.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from fedsqueeze.enrolment import OPERATOR, Enrolment, ExpiredTokenError
from fedsqueeze.errors import (
    AuthenticationError,
    ConflictError,
    FedsqueezeError,
    PayloadError,
    PermissionDeniedError,
    RateLimitError,
    RoundStateError,
    SessionError,
    StallError,
    UnsupportedError,
)
from fedsqueeze.server.coordinator import Coordinator, Upload
from fedsqueeze.server.decoding import Malformed, UndecodableLog
from fedsqueeze.server.observability import ServerMetrics
from fedsqueeze.text import shown
from fedsqueeze.upload_turns import TURN_METADATA
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.v1 import federation_pb2_grpc as pb_grpc
from fedsqueeze.wire import StreamReceiver

log = logging.getLogger(__name__)

STATUS_FOR: dict[type[FedsqueezeError], grpc.StatusCode] = {
    PayloadError: grpc.StatusCode.INVALID_ARGUMENT,
    RoundStateError: grpc.StatusCode.FAILED_PRECONDITION,
    SessionError: grpc.StatusCode.UNAUTHENTICATED,
    AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    RateLimitError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ConflictError: grpc.StatusCode.ABORTED,
    StallError: grpc.StatusCode.DEADLINE_EXCEEDED,
    UnsupportedError: grpc.StatusCode.UNIMPLEMENTED,
}

R = TypeVar("R")


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: FedsqueezeError,
                 metrics: ServerMetrics) -> None:
    code = next(code for cls, code in STATUS_FOR.items() if isinstance(exc, cls))
    log.info("%s refused with %s: %s", method, code.name, exc)
    metrics.rejections.labels(method, code.name).inc()
    await context.abort(code, str(exc))


def check_decoded(message: Any, context: grpc.aio.ServicerContext, method: str, undecodable: UndecodableLog) -> None:
    """Refuse (PayloadError) a request that did not parse, counted and logged at most once a minute per peer."""
    if isinstance(message, Malformed):
        undecodable.note(context.peer(), method)
        raise PayloadError(f"a {message.size}-byte request that is not a valid protobuf message of this method")


def status_errors(method: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Map fedsqueeze errors raised by a unary-response handler to status codes; refuse undecodable requests."""
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            check_decoded(request, context, method.__name__, self._undecodable)
            return await method(self, request, context)
        except FedsqueezeError as exc:
            await _abort(context, method.__name__, exc, self._coordinator.metrics)
            raise  # unreachable: abort raises
    return wrapper


def caller(enrolment: Enrolment | None, context: grpc.aio.ServicerContext) -> str | None:
    """The enrolled identity making the call (None without enrolment); AuthenticationError if it has none."""
    if enrolment is None:
        return None
    try:
        identity = enrolment.identify(context.invocation_metadata())
    except ExpiredTokenError as exc:
        raise AuthenticationError(f"{exc}: enrol again for a new token") from None
    if identity is None:
        raise AuthenticationError("no valid enrolment token: send metadata 'authorization: Bearer <token>' "
                                  "(fedsqueeze client --token-file)")
    names = context.auth_context().get("x509_common_name", [])
    if names and identity.encode() not in names:   # a client certificate, when the call has one, is the token's
        raise PermissionDeniedError(f"the client certificate is not {identity!r}'s, whose token the call carries")
    return identity


class FederationServicer(pb_grpc.FederationServicer):
    def __init__(self, coordinator: Coordinator, chunk_bytes: int, enrolment: Enrolment | None = None,
                 concurrent_uploads: int = 8, stall_seconds: float = 30.0, min_upload_rate: float = 1024.0) -> None:
        self._coordinator = coordinator
        self._chunk_bytes = chunk_bytes
        self._enrolment = enrolment
        self._stall_seconds = stall_seconds
        self._min_upload_rate = min_upload_rate
        self._undecodable = UndecodableLog(coordinator.metrics.undecodable)
        # Uploads read and decoded at once. A stream holds its payload and its decoded tensors until it
        # commits, so memory grows with this number, not with the clients connected; streams beyond it
        # wait their turn with their payload still on the client (fedsqueeze.upload_turns).
        self._upload_slots = asyncio.Semaphore(concurrent_uploads)

    def _check_session(self, context: grpc.aio.ServicerContext, session_id: str) -> None:
        """With enrolment: the session must belong to the caller."""
        identity = caller(self._enrolment, context)
        if identity is not None and self._coordinator.clients.owner_of(session_id) != identity:
            raise PermissionDeniedError(f"this session is not {identity!r}'s: a client acts only as itself")

    @status_errors
    async def Join(self, request: pb.JoinRequest, context: grpc.aio.ServicerContext) -> pb.JoinReply:
        identity = caller(self._enrolment, context)
        if identity is not None and request.client_id != identity:
            raise PermissionDeniedError(f"the token is {identity!r}'s; it cannot join as "
                                        f"{shown(request.client_id, 64)}")
        return self._coordinator.join(request)

    @status_errors
    async def GetTask(self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext) -> pb.Task:
        self._check_session(context, request.session_id)
        return await self._coordinator.next_task(request.session_id, request.wait_ms / 1000.0)

    async def DownloadModel(self, request: pb.DownloadRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Chunk]:
        try:
            check_decoded(request, context, "DownloadModel", self._undecodable)
            self._check_session(context, request.session_id)
            download = self._coordinator.begin_download(request.session_id, request.task_id)
        except FedsqueezeError as exc:
            await _abort(context, "DownloadModel", exc, self._coordinator.metrics)
            return
        completed = False
        try:
            for chunk in download.model.chunks(self._chunk_bytes):
                yield chunk
            completed = True
        finally:
            self._coordinator.end_download(download, completed)

    @status_errors
    async def SubmitUpdate(self, request_iterator: AsyncIterator[pb.UpdateMessage],
                           context: grpc.aio.ServicerContext) -> pb.SubmitReply:
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        check_decoded(first, context, "SubmitUpdate", self._undecodable)
        if first is None or not first.HasField("header"):
            raise PayloadError("an update stream must start with an UpdateHeader")
        self._check_session(context, first.header.session_id)
        upload = self._coordinator.begin_upload(first.header)
        try:
            async with self._upload_slots:
                await context.send_initial_metadata(TURN_METADATA)
                return await self._receive(upload, messages, context)
        finally:
            upload.release()

    def _stalled(self, upload: Upload, why: str) -> None:
        self._coordinator.stalled(upload, why)
        raise StallError(f"the upload stalled ({why}): its turn went to another client and its task was dropped "
                         "from the round (--upload-stall-seconds, --min-upload-rate)")

    @status_errors
    async def ReportFailure(self, request: pb.FailureReport, context: grpc.aio.ServicerContext) -> pb.FailureReply:
        self._check_session(context, request.session_id)
        self._coordinator.report_failure(request.session_id, request.task_id, request.reason)
        return pb.FailureReply()

    @status_errors
    async def SubmitEvaluation(self, request: pb.EvaluationReport,
                               context: grpc.aio.ServicerContext) -> pb.SubmitReply:
        self._check_session(context, request.session_id)
        return self._coordinator.submit_evaluation(request)

    async def _receive(self, upload: Upload, messages: AsyncIterator[pb.UpdateMessage],
                       context: grpc.aio.ServicerContext) -> pb.SubmitReply:
        """Read an update's tensor stream and, once its digest is verified, hand it to the coordinator."""
        receiver = StreamReceiver(upload.expected, self._chunk_bytes)
        encoded = []
        turn = time.monotonic()
        while True:
            try:
                message = await asyncio.wait_for(anext(messages, None), self._stall_seconds)
            except TimeoutError:
                self._stalled(upload, f"nothing received for {self._stall_seconds:g} s")
            if message is None:
                break
            check_decoded(message, context, "SubmitUpdate", self._undecodable)
            if not upload.round.is_open:
                raise RoundStateError(f"round {upload.round.number} closed during the upload")
            kind = message.WhichOneof("kind")
            if kind != "chunk":
                raise PayloadError("UpdateHeader sent twice" if kind == "header" else "empty UpdateMessage")
            done = receiver.feed(message.chunk)
            if done is not None:
                encoded.append(done)
            held = time.monotonic() - turn
            if held > self._stall_seconds and receiver.received < self._min_upload_rate * held:
                self._stalled(upload, f"{receiver.received} bytes in {held:.0f} s, under "
                                      f"{self._min_upload_rate:g} B/s")
        receiver.finish()
        reply = await self._coordinator.commit(upload, encoded)
        reply.payload_bytes = receiver.payload_size
        return reply

    @status_errors
    async def Leave(self, request: pb.LeaveRequest, context: grpc.aio.ServicerContext) -> pb.LeaveReply:
        self._check_session(context, request.session_id)
        self._coordinator.leave(request.session_id, request.reason)
        return pb.LeaveReply()


class OperatorServicer(pb_grpc.OperatorServicer):
    def __init__(self, coordinator: Coordinator, enrolment: Enrolment | None = None) -> None:
        self._coordinator = coordinator
        self._enrolment = enrolment
        self._undecodable = UndecodableLog(coordinator.metrics.undecodable)

    @status_errors
    async def GetStatus(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.FederationStatus:
        identity = caller(self._enrolment, context)
        if identity not in (None, OPERATOR):
            raise PermissionDeniedError(f"only the {OPERATOR!r} identity may read the federation's status")
        return self._coordinator.status(request.include_history)

"""One participant's calls to a Federation server, over the blocking gRPC API, with retries and rejoining.

Both kinds of participant use it: the client daemon (``fedsqueeze.client``) and
an edge aggregator's link to its root (``fedsqueeze.server.edge``). It dials
out (participants sit behind NAT), keeps the session, and decides what a
failed call means: an unknown session (the server restarted) means Join again;
an unreachable or failing server means wait, with exponential backoff and
jitter; a refusal no retry can cure at Join raises ``FatalError``. ``stop()``
may be called from any thread: it cancels the call in flight.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import grpc

from fedsqueeze.backoff import Backoff
from fedsqueeze.errors import Stopped
from fedsqueeze.transport import open_channel
from fedsqueeze.upload_turns import TurnTakingUpload
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.v1 import federation_pb2_grpc as pb_grpc
from fedsqueeze.wire import EncodedModel, accepted_chunk_bytes

log = logging.getLogger(__name__)

POLL_WAIT_MS = 20_000
UNARY_TIMEOUT = 30.0
SUBMIT_ATTEMPTS = 5
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
             grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.CANCELLED}
# Refusals of a Join that retrying cannot cure: a bad id, a wrong token, a method that cannot serve this caller.
FATAL_AT_JOIN = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                 grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNIMPLEMENTED}


class FatalError(Exception):
    """The server refused this participant for good (bad id, incompatible data, method): retrying cannot help."""


class FederationLink:
    """The session and calls of one participant; ``session`` is None until ``join`` (and after a lost session)."""

    def __init__(self, server: str, insecure: bool, root_certificates: str | None, token_file: str | None,
                 client_cert: str | None, client_key: str | None, chunk_bytes: int, max_backoff: float) -> None:
        self.server = server
        self.session: str | None = None
        self.chunk_bytes = chunk_bytes   # lowered to what the server accepts when it joins
        self._wanted_chunk_bytes = chunk_bytes
        self._stop = threading.Event()
        self._inflight: grpc.Future | None = None
        self._backoff = Backoff(cap=max_backoff)
        self._channel = open_channel(server, insecure, root_certificates, token_file, client_cert, client_key)
        self._stub = pb_grpc.FederationStub(self._channel)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Cancel the call in flight and end every wait; safe from any thread."""
        self._stop.set()
        inflight = self._inflight
        if inflight is not None:
            inflight.cancel()

    def close(self) -> None:
        self._channel.close()

    def _call(self, future: grpc.Future):  # type: ignore[no-untyped-def]
        """Wait for a call while keeping it cancellable by ``stop()``."""
        self._inflight = future
        try:
            if self._stop.is_set():
                future.cancel()
            return future.result()
        except grpc.FutureCancelledError:
            raise Stopped() from None
        finally:
            self._inflight = None

    def join(self, request: pb.JoinRequest) -> pb.JoinReply:
        """Join (``session`` is set); FatalError for a refusal no retry can cure."""
        try:
            reply = self._call(self._stub.Join.future(request, timeout=UNARY_TIMEOUT))
        except grpc.RpcError as exc:
            if exc.code() in FATAL_AT_JOIN:
                raise FatalError(f"the server refused to let {request.client_id} join: {exc.details()}") from None
            raise
        self.session = reply.session_id
        self.chunk_bytes = accepted_chunk_bytes(self._wanted_chunk_bytes, reply)
        log.info("joined %s as %s", self.server, request.client_id)
        return reply

    def poll(self) -> pb.Task:
        """Long-poll the next task (Wait after ``POLL_WAIT_MS``)."""
        request = pb.GetTaskRequest(session_id=self.session, wait_ms=POLL_WAIT_MS)
        return self._call(self._stub.GetTask.future(request, timeout=POLL_WAIT_MS / 1000 + UNARY_TIMEOUT))

    def download(self, task_id: str) -> Iterator[pb.Chunk]:
        """A task's model as the chunks of its stream (``stop()`` cancels it)."""
        stream = self._stub.DownloadModel(pb.DownloadRequest(session_id=self.session, task_id=task_id))
        self._inflight = stream
        try:
            yield from stream
        finally:
            self._inflight = None

    def submit(self, header: pb.UpdateHeader, update: EncodedModel) -> pb.SubmitReply:
        """Stream an update after its header, in its upload turn; retry transient failures, since what it holds
        is costly to redo."""
        header.session_id = self.session or ""
        for attempt in range(1, SUBMIT_ATTEMPTS + 1):
            upload = TurnTakingUpload(pb.UpdateMessage(header=header),
                                      (pb.UpdateMessage(chunk=c) for c in update.chunks(self.chunk_bytes)))
            try:
                return self._call(upload.start(self._stub.SubmitUpdate))
            except grpc.RpcError as exc:
                if exc.code() not in TRANSIENT or attempt == SUBMIT_ATTEMPTS or self._stop.is_set():
                    raise
                delay = self._backoff.next_delay()
                log.warning("upload of round %d failed (%s: %s); retry %d in %.1f s", header.round,
                            exc.code().name, exc.details(), attempt, delay)
                if self._stop.wait(delay):
                    raise Stopped() from None
        raise AssertionError("unreachable")

    def submit_evaluation(self, report: pb.EvaluationReport) -> None:
        report.session_id = self.session or ""
        self._call(self._stub.SubmitEvaluation.future(report, timeout=UNARY_TIMEOUT))

    def report_failure(self, task_id: str, reason: str) -> None:
        """Tell the server this participant cannot do a task (``task_id``) or any task (""); best effort."""
        request = pb.FailureReport(session_id=self.session, task_id=task_id, reason=reason)
        try:
            self._stub.ReportFailure(request, timeout=UNARY_TIMEOUT)
        except grpc.RpcError as exc:
            log.warning("could not report the failure to the server (%s: %s)", exc.code().name, exc.details())

    def leave(self, reason: str) -> None:
        """Say goodbye, best effort (the server also forgets silent participants)."""
        if self.session is None:
            return
        try:
            self._stub.Leave(pb.LeaveRequest(session_id=self.session, reason=reason), timeout=2.0)
        except grpc.RpcError:
            pass
        self.session = None

    def succeeded(self) -> None:
        """A task went through: the next failure backs off from the start again."""
        self._backoff.reset()

    def recover(self, exc: grpc.RpcError) -> None:
        """Decide what a failed call means and wait accordingly (Join again after a lost session)."""
        code, details = exc.code(), exc.details()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            log.info("session no longer valid (%s); joining again", details)
            self.session = None
        elif code == grpc.StatusCode.FAILED_PRECONDITION:
            log.info("the round moved on: %s", details)
        elif code == grpc.StatusCode.INVALID_ARGUMENT:
            log.error("the server refused our data: %s", details)
        else:
            delay = self._backoff.next_delay()
            log.warning("server %s unreachable or failing (%s: %s); retry %d in %.1f s", self.server,
                        code.name, details, self._backoff.attempts, delay)
            self._stop.wait(delay)

"""A load generator: many lightweight clients that speak the real protocol to one server.

Each simulated client has its own gRPC channel (its own TCP connection), joins,
long-polls for tasks and answers every train task with a pre-made update: a
small random delta of the federation's model, encoded once per uplink codec
plan and reused by every client, so the generator spends its CPU on the wire,
not on training. It speaks plaintext gRPC (test servers, loopback). It skips
the model download (the server does not require one before an update), which
keeps the measurement on what the server ingests.
The update has the full model's shape, as FedAvg and FedCompress send it.

What it measures, from the clients' side: updates committed, errors by call
and status code, submit latency (first message sent to reply received) and,
per round, the ingest rate (updates over the time from the first train task
handed out to the last update committed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

from fedsqueeze.config import LoadConfig
from fedsqueeze.limits import MAX_CHUNK_BYTES
from fedsqueeze.models import build_model
from fedsqueeze.tensors import float_state, model_spec
from fedsqueeze.transport import client_options
from fedsqueeze.upload_turns import turn_taking_messages
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.v1 import federation_pb2_grpc as pb_grpc
from fedsqueeze.wire import accepted_chunk_bytes, encode_model, expect_all

log = logging.getLogger(__name__)

POLL_WAIT_MS = 20_000
CALL_TIMEOUT = 300.0
JOIN_ATTEMPTS = 20
UPDATE_SCALE = 1e-3   # standard deviation of the pre-made delta: far inside any sensible norm bound


@dataclass
class RoundLoad:
    """What the clients saw of one round."""

    first_task: float = float("inf")
    last_commit: float = 0.0
    updates: int = 0

    @property
    def seconds(self) -> float:
        return max(self.last_commit - self.first_task, 1e-9)


@dataclass
class LoadResult:
    clients: int
    joined: int = 0
    finished: int = 0
    updates: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)   # the first message of each kind of error
    submit_latency_p50: float = 0.0
    submit_latency_p99: float = 0.0
    submit_latency_max: float = 0.0
    updates_per_second: float = 0.0      # all updates over the sum of the rounds' ingest windows
    update_payload_bytes: int = 0
    rounds: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def count_error(self, call: str, exc: grpc.aio.AioRpcError) -> None:
        key = f"{call}:{exc.code().name}"
        self.errors[key] = self.errors.get(key, 0) + 1
        self.error_examples.setdefault(key, f"{exc.details()} ({exc.debug_error_string()})")


class PremadeUpdates:
    """One encoded random delta per uplink codec plan, made on first use and shared by all clients.

    Its chunks are kept as serialised UpdateMessages: every client sends the same bytes, so they are
    serialised once, not once per client (the server receives exactly what a real client would send).
    """

    def __init__(self, seed: int, chunk_bytes: int) -> None:
        self._seed = seed
        self._chunk_bytes = chunk_bytes
        self._delta: dict[str, np.ndarray] | None = None
        self._encoded: dict[str, asyncio.Task[list[bytes]]] = {}
        self._payload_bytes: dict[str, int] = {}

    def set_server(self, reply: pb.JoinReply) -> None:
        """Shape the update after the model a server's JoinReply names, in chunks that server accepts."""
        self._chunk_bytes = accepted_chunk_bytes(self._chunk_bytes, reply)
        spec = reply.model
        if self._delta is None:
            rng = np.random.default_rng(self._seed)
            self._delta = {name: (UPDATE_SCALE * rng.standard_normal(t.shape)).astype(np.float32)
                           for name, t in float_state(build_model(spec)).items()}

    async def messages(self, codec: str) -> list[bytes]:
        """The serialised UpdateMessages that carry the update's chunks for ``codec``."""
        if codec not in self._encoded:
            self._encoded[codec] = asyncio.create_task(asyncio.to_thread(self._encode, codec))
        return await self._encoded[codec]

    def payload_bytes(self) -> int:
        return max(self._payload_bytes.values(), default=0)

    def _encode(self, codec: str) -> list[bytes]:
        assert self._delta is not None, "set_server comes first"
        encoded = encode_model(self._delta, expect_all(model_spec(self._delta), codec))
        self._payload_bytes[codec] = encoded.payload_size
        return [pb.UpdateMessage(chunk=chunk).SerializeToString() for chunk in encoded.chunks(self._chunk_bytes)]


class LoadClient:
    """One simulated device: join, poll, answer train tasks with the pre-made update, leave when finished."""

    def __init__(self, client_id: str, target: str, updates: PremadeUpdates, result: LoadResult,
                 rounds: dict[int, RoundLoad], latencies: list[float]) -> None:
        # A local subchannel pool gives every simulated client its own TCP connection, as real devices have.
        options = [*client_options(), ("grpc.use_local_subchannel_pool", 1)]
        self._channel = grpc.aio.insecure_channel(target, options=options)
        self._stub = pb_grpc.FederationStub(self._channel)
        # SubmitUpdate without a request serialiser: the messages are serialised already (PremadeUpdates)
        self._submit_update = self._channel.stream_unary(
            "/fedsqueeze.v1.Federation/SubmitUpdate", request_serializer=None,
            response_deserializer=pb.SubmitReply.FromString)
        self._id = client_id
        self._updates = updates
        self._result = result
        self._rounds = rounds
        self._latencies = latencies

    async def run(self) -> None:
        try:
            session = await self._join()
            if session is None:
                return
            while True:
                try:
                    task = await self._stub.GetTask(pb.GetTaskRequest(session_id=session, wait_ms=POLL_WAIT_MS),
                                                    timeout=POLL_WAIT_MS / 1000 + CALL_TIMEOUT)
                except grpc.aio.AioRpcError as exc:
                    self._result.count_error("GetTask", exc)
                    return
                kind = task.WhichOneof("kind")
                if kind == "finished":
                    self._result.finished += 1
                    await self._leave(session)
                    return
                if kind == "train":
                    await self._submit(session, task.train)
        finally:
            await self._channel.close()

    async def _leave(self, session: str) -> None:
        """Best effort, as a real client's: a finished server may already be shutting down."""
        try:
            await self._stub.Leave(pb.LeaveRequest(session_id=session, reason="load test done"), timeout=5.0)
        except grpc.aio.AioRpcError:
            pass

    async def _join(self) -> str | None:
        request = pb.JoinRequest(client_id=self._id, instance_id=self._id,
                                 capabilities=pb.Capabilities(cpu_cores=1, compute_budget=1.0))
        for attempt in range(JOIN_ATTEMPTS):
            try:
                reply = await self._stub.Join(request, timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == JOIN_ATTEMPTS - 1:
                    self._result.count_error("Join", exc)
                    return None
                await asyncio.sleep(0.5)
                continue
            self._updates.set_server(reply)
            self._result.joined += 1
            return reply.session_id
        return None

    async def _submit(self, session: str, task: pb.TrainTask) -> None:
        chunks = await self._updates.messages(task.uplink_codec)
        record = self._rounds.setdefault(task.round, RoundLoad())
        record.first_task = min(record.first_task, time.monotonic())

        header = pb.UpdateMessage(header=pb.UpdateHeader(session_id=session, task_id=task.task_id,
                                                         round=task.round, num_examples=100)).SerializeToString()
        turn = asyncio.Event()
        started = time.monotonic()
        try:
            call = self._submit_update(turn_taking_messages(header, chunks, turn), timeout=CALL_TIMEOUT)
            await call.initial_metadata()
            turn.set()
            await call
        except grpc.aio.AioRpcError as exc:
            self._result.count_error("SubmitUpdate", exc)
            return
        now = time.monotonic()
        self._latencies.append(now - started)
        record.last_commit = max(record.last_commit, now)
        record.updates += 1
        self._result.updates += 1


def raise_file_limit(needed: int) -> None:
    """Each simulated client holds a socket: lift the soft open-files limit toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def run_load(config: LoadConfig) -> LoadResult:
    """Run ``config.clients`` simulated clients until the federation finishes; return what they measured."""
    if config.clients < 1:
        raise ValueError(f"--clients must be at least 1, not {config.clients}")
    if not 0 < config.chunk_bytes <= MAX_CHUNK_BYTES:
        raise ValueError(f"--chunk-bytes must be in (0, {MAX_CHUNK_BYTES}], not {config.chunk_bytes}")
    raise_file_limit(4 * config.clients + 256)
    result = LoadResult(clients=config.clients)
    rounds: dict[int, RoundLoad] = {}
    latencies: list[float] = []
    updates = PremadeUpdates(config.seed, config.chunk_bytes)
    started = time.monotonic()
    clients = [LoadClient(f"{config.id_prefix}-{i:05d}", config.server, updates, result, rounds, latencies)
               for i in range(config.clients)]
    await asyncio.gather(*(c.run() for c in clients))
    result.seconds = time.monotonic() - started
    result.update_payload_bytes = updates.payload_bytes()
    if latencies:
        p50, p99 = np.percentile(latencies, [50, 99])
        result.submit_latency_p50, result.submit_latency_p99 = float(p50), float(p99)
        result.submit_latency_max = max(latencies)
    finished = {n: r for n, r in sorted(rounds.items()) if r.updates}
    result.rounds = [{"round": n, "updates": r.updates, "seconds": r.seconds,
                      "updates_per_second": r.updates / r.seconds} for n, r in finished.items()]
    if finished:
        windows = finished.values()
        result.updates_per_second = sum(r.updates for r in windows) / sum(r.seconds for r in windows)
    return result


def main(config: LoadConfig) -> int:
    """Run the load, print the result as JSON (and write it to ``--out``); exit 1 if any call failed."""
    result = asyncio.run(run_load(config))
    text = json.dumps(asdict(result), indent=2)
    print(text)
    if config.out:
        Path(config.out).parent.mkdir(parents=True, exist_ok=True)
        Path(config.out).write_text(text + "\n")
    return 1 if result.errors or result.finished < result.clients else 0


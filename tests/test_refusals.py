"""Malformed, stale and unauthenticated updates against a live server: refused with the right code, no effect.

The test process is the one client of a real server process. It sends bad
update streams, checks each status code, then commits an all-zero update: the
next round's global model must then be bit-identical to the first, which
proves none of the refused updates reached the accumulator. Each refusal case is
its own test against one live server (module-scoped); the last test commits.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import zstandard

from fedsqueeze.errors import PayloadError
from fedsqueeze.limits import DEFAULT_CHUNK_BYTES, MAX_MESSAGE_BYTES
from fedsqueeze.models import build_model
from fedsqueeze.tensors import float_state, model_spec
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.v1 import federation_pb2_grpc as pb_grpc
from fedsqueeze.wire import (
    EncodedModel,
    EncodedTensor,
    ExpectedTensor,
    decode_tensor,
    encode_model,
    expect_all,
    receive_model,
)

from conftest import FAST_SERVER, Cluster, wait_for
from mutations import mutate

RAW_FLOAT32 = ("--uplink", "dense", "--downlink", "dense")   # the prober writes and reads raw float32 by hand


class Prober:
    """A hand-driven client: join, take a task, download, send whatever it is told to."""

    def __init__(self, channel: grpc.Channel, budget: float = 0.0, client_id: str = "prober",
                 edge: bool = False) -> None:
        self.stub = pb_grpc.FederationStub(channel)
        reply = self.stub.Join(pb.JoinRequest(client_id=client_id, edge=edge, capabilities=pb.Capabilities(
            cpu_cores=1, compute_budget=budget)))
        self.session = reply.session_id
        self.specs = model_spec(float_state(build_model(reply.model)))
        self.expected = expect_all(self.specs, "dense")

    def task(self) -> pb.TrainTask:
        task = self.stub.GetTask(pb.GetTaskRequest(session_id=self.session, wait_ms=20_000), timeout=30)
        assert task.WhichOneof("kind") == "train", task
        return task.train

    def download(self, task: pb.TrainTask) -> dict[str, np.ndarray]:
        chunks = self.stub.DownloadModel(pb.DownloadRequest(session_id=self.session, task_id=task.task_id))
        return receive_model(chunks, self.expected)

    def header(self, task: pb.TrainTask, **overrides: object) -> pb.UpdateMessage:
        fields = dict(session_id=self.session, task_id=task.task_id, round=task.round, num_examples=10)
        fields.update(overrides)
        return pb.UpdateMessage(header=pb.UpdateHeader(**fields))

    def uplink(self, task: pb.TrainTask) -> dict[str, ExpectedTensor]:
        return expect_all(self.specs, task.uplink_codec)

    def chunks(self, update: dict[str, np.ndarray] | EncodedModel,
               task: pb.TrainTask | None = None) -> list[pb.UpdateMessage]:
        encoded = update if isinstance(update, EncodedModel) else \
            encode_model(update, self.uplink(task) if task else self.expected)
        return [pb.UpdateMessage(chunk=c) for c in encoded.chunks(4096)]

    def submit(self, messages: Iterable[pb.UpdateMessage]) -> pb.SubmitReply:
        return self.stub.SubmitUpdate(iter(messages), timeout=30)

    def refused(self, messages: Iterable[pb.UpdateMessage]) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as info:
            self.submit(messages)
        return info.value.code(), info.value.details()


def zeros_like(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.zeros_like(value) for name, value in tensors.items()}


@dataclass
class LiveRound:
    """One live server in round 1 of 2 and its one client, shared by every refusal case of this module."""

    cluster: Cluster
    prober: Prober
    task: pb.TrainTask
    model_before: dict[str, np.ndarray]
    good: list[pb.UpdateMessage]   # an all-zero update's tensor stream, without its header


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRound]:
    cluster = Cluster(tmp_path_factory.mktemp("refusals"))
    cluster.server(*FAST_SERVER, *RAW_FLOAT32, "--rounds", "2", "--min-clients", "1")
    channel = cluster.channel()
    prober = Prober(channel)
    task = prober.task()
    model_before = prober.download(task)
    yield LiveRound(cluster, prober, task, model_before, prober.chunks(zeros_like(model_before)))
    channel.close()
    cluster.stop()


def _flipped(live: LiveRound) -> list[pb.UpdateMessage]:
    flipped = [pb.UpdateMessage(), *live.good[1:]]
    flipped[0].CopyFrom(live.good[0])
    flipped[0].chunk.data = bytes([flipped[0].chunk.data[0] ^ 1]) + flipped[0].chunk.data[1:]
    return flipped


def _reshaped(live: LiveRound) -> list[pb.UpdateMessage]:
    reshaped = [pb.UpdateMessage(), *live.good[1:]]
    reshaped[0].CopyFrom(live.good[0])
    reshaped[0].chunk.tensor.shape[0] += 1
    return reshaped


def _poisoned(live: LiveRound) -> list[pb.UpdateMessage]:
    name = next(iter(live.model_before))
    poisoned = EncodedModel([EncodedTensor(e.spec, e.codec.spec, np.full(e.spec.shape, np.nan, "<f4").tobytes()
                                           if n == name else np.zeros(e.spec.shape, "<f4").tobytes())
                             for n, e in live.prober.expected.items()])
    return live.prober.chunks(poisoned)


def _over_chunk(live: LiveRound) -> list[pb.UpdateMessage]:
    over = pb.UpdateMessage()
    over.CopyFrom(live.good[0])
    over.chunk.data = b"\0" * (DEFAULT_CHUNK_BYTES + 1)   # under gRPC's cap, over what the server said it takes
    return [over]


INVALID, STALE = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION
# label: (the stream, from the live round; the code; a phrase the details must hold)
CASES: dict[str, tuple[Callable[[LiveRound], list[pb.UpdateMessage]], grpc.StatusCode, str]] = {
    "chunk too big": (lambda r: [r.prober.header(r.task), *_over_chunk(r)], INVALID,
                      f"exceeds the {DEFAULT_CHUNK_BYTES}-byte limit"),
    "bad digest": (lambda r: [r.prober.header(r.task), *_flipped(r)], INVALID, "digest mismatch"),
    "truncated": (lambda r: [r.prober.header(r.task), *r.good[:-1]], INVALID, "truncated"),
    "wrong shape": (lambda r: [r.prober.header(r.task), *_reshaped(r)], INVALID, "does not match the model's"),
    "NaN": (lambda r: [r.prober.header(r.task), *_poisoned(r)], INVALID, "NaN"),
    "no header": (lambda r: r.good, INVALID, "must start with an UpdateHeader"),
    "header twice": (lambda r: [r.prober.header(r.task), r.prober.header(r.task), *r.good], INVALID, "sent twice"),
    "zero examples": (lambda r: [r.prober.header(r.task, num_examples=0), *r.good], INVALID, "num_examples"),
    "NaN metric": (lambda r: [r.prober.header(r.task, metrics={"loss": float("nan")}), *r.good], INVALID,
                   "non-finite"),
    "wrong round": (lambda r: [r.prober.header(r.task, round=r.task.round + 1), *r.good], STALE, "belongs to round"),
    "unknown task": (lambda r: [r.prober.header(r.task, task_id="forged"), *r.good], STALE,
                     "not a task of open round"),
    "unknown session": (lambda r: [r.prober.header(r.task, session_id="forged"), *r.good],
                        grpc.StatusCode.UNAUTHENTICATED, "Join again"),
    "oversized message": (lambda r: [r.prober.header(r.task),
                                     pb.UpdateMessage(chunk=pb.Chunk(data=b"\0" * (MAX_MESSAGE_BYTES + 1)))],
                          grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
}


@pytest.mark.slow
@pytest.mark.parametrize("label", list(CASES))
def test_a_bad_update_is_refused_with_its_code_and_the_round_goes_on(live: LiveRound, label: str) -> None:
    build, code, reason = CASES[label]
    got_code, details = live.prober.refused(build(live))
    assert (got_code, reason in details) == (code, True), f"{label}: {got_code} {details}"
    status = live.cluster.status()
    assert status.state == pb.TRAINING and not status.history, "a refused update closed the round"


@pytest.mark.slow
def test_an_upload_cancelled_mid_stream_leaves_nothing_behind(live: LiveRound) -> None:
    """A client that vanishes mid-stream holds its task only until the server sees the cancellation."""
    sent, release = threading.Event(), threading.Event()

    def stalling() -> Iterator[pb.UpdateMessage]:
        yield live.prober.header(live.task)
        yield live.good[0]
        sent.set()
        release.wait(10)
    call = live.prober.stub.SubmitUpdate.future(stalling())
    assert sent.wait(10)
    call.cancel()
    release.set()
    status = live.cluster.status()
    assert status.state == pb.TRAINING and not status.history


@pytest.mark.slow
def test_after_every_refusal_a_good_update_commits_and_the_model_is_unchanged(live: LiveRound) -> None:
    """Runs last in this module: the zero update commits, so round 2's model equals round 1's bit for bit, which
    proves no refused update above reached the accumulator."""
    prober, task = live.prober, live.task

    def commit_good() -> pb.SubmitReply | None:
        try:
            return prober.submit([prober.header(task), *live.good])
        except grpc.RpcError as exc:   # ABORTED until the server has seen a cancellation, as for any client
            if exc.code() != grpc.StatusCode.ABORTED:
                raise
            return None
    assert wait_for(commit_good, 5, "a cancelled upload to release its task").round == 1
    code, details = prober.refused([prober.header(task), *live.good])
    assert code == STALE and ("already committed" in details or "not open" in details)
    next_task = prober.task()
    assert next_task.round == 2
    model_after = prober.download(next_task)
    for key, value in live.model_before.items():
        assert np.array_equal(model_after[key], value), f"{key} changed"


def hostile_streams(prober: Prober, task: pb.TrainTask, count: int,
                    seed: int = 0) -> Iterator[tuple[str, list[pb.UpdateMessage]]]:
    """Update streams with a valid digest around payloads the uplink codec must refuse, plus bad headers."""
    rng = np.random.default_rng(seed)
    expected = prober.uplink(task)
    update = {n: rng.normal(0, 0.01, s.shape).astype(np.float32) for n, s in prober.specs.items()}
    valid = encode_model(update, expected)
    payloads = [t.payload for t in valid.tensors]
    bomb = zstandard.ZstdCompressor().compress(bytes(256 << 20))
    made = 0
    while made < count:
        victim = int(rng.integers(len(valid.tensors)))
        tensors = list(valid.tensors)
        target = tensors[victim]
        roll = rng.random()
        if roll < 0.1:
            kind, payload = "decompression bomb", bomb
        elif roll < 0.2:
            kind, payload = "non-finite centroid", zstandard.ZstdCompressor().compress(
                (1).to_bytes(2, "little") + b"\x00" + np.float32(np.nan).tobytes() + bytes(target.spec.numel))
        else:
            kind, payload = "mutated payload", mutate(rng, target.payload, payloads)
        try:   # only payloads the server's own decoder refuses count as hostile
            decode_tensor(EncodedTensor(target.spec, target.codec, payload), expected[target.spec.name])
            continue
        except PayloadError:
            pass
        tensors[victim] = EncodedTensor(target.spec, target.codec, payload)
        made += 1
        yield kind, [prober.header(task), *prober.chunks(EncodedModel(tensors))]


def test_a_thousand_hostile_updates_leave_a_live_server_serving_and_unchanged(cluster: Cluster) -> None:
    cluster.server(*FAST_SERVER, "--rounds", "2", "--min-clients", "1", "--uplink", "cluster(k=16)|zstd",
                   "--downlink", "dense")
    with cluster.channel() as channel:
        prober = Prober(channel)
        task = prober.task()
        assert task.uplink_codec.startswith("cluster(")
        global_before = prober.download(task)
        tally: Counter[str] = Counter()
        for kind, messages in hostile_streams(prober, task, 1000):
            code, details = prober.refused(messages)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{kind}: {code} {details}"
            assert details.startswith("tensor '"), details   # names the tensor, then the reason
            tally[kind] += 1
        print(f"1000 hostile updates refused INVALID_ARGUMENT: {dict(tally)}")
        status = cluster.status()
        assert status.state == pb.TRAINING and not status.history and cluster.processes["server"].poll() is None

        zero = {n: np.zeros(s.shape, np.float32) for n, s in prober.specs.items()}
        assert prober.submit([prober.header(task), *prober.chunks(zero, task)]).round == 1
        next_task = prober.task()
        global_after = prober.download(next_task)
    assert all(np.array_equal(global_after[k], v) for k, v in global_before.items())

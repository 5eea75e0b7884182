"""A live, enrolled server under 1,000 mixed hostile requests; and what its Prometheus endpoint reports."""

from __future__ import annotations

import json
import random
import urllib.request
from collections import Counter
from collections.abc import Callable

import grpc
import numpy as np
import pytest

from fedsqueeze.certs import make_certificates
from fedsqueeze.enrolment import BearerToken, read_token
from fedsqueeze.limits import MAX_MESSAGE_BYTES
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.v1 import federation_pb2_grpc as pb_grpc
from fedsqueeze.wire import EncodedModel, EncodedTensor, encode_model, expect_all

from conftest import FAST_SERVER, Cluster, free_port
from test_refusals import RAW_FLOAT32, Prober
from test_resilience import HOSTILE_PLANS


def scrape(port: int) -> dict[str, float]:
    """The metrics endpoint's samples, by name and labels as the exposition format writes them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_a_thousand_mixed_hostile_requests(cluster: Cluster) -> None:
    creds = cluster.root / "creds"
    make_certificates(creds, ["localhost"], ["alice", "mallory"], days=1)
    metrics_port = free_port()
    cluster.server(*FAST_SERVER, *RAW_FLOAT32, "--rounds", "3", "--min-clients", "1", "--tokens",
                   str(creds / "tokens.json"), "--max-update-norm", "100", "--joins-per-minute", "5",
                   "--metrics-listen", f"127.0.0.1:{metrics_port}", "--log-format", "json")

    def channel(token: str | None) -> grpc.Channel:
        plain = grpc.insecure_channel(f"127.0.0.1:{cluster.port}")
        return grpc.intercept_channel(plain, BearerToken(token)) if token else plain

    alice_channel = channel(read_token(str(creds / "alice.token")))
    alice = Prober(alice_channel, client_id="alice")
    mallory_channel = channel(read_token(str(creds / "mallory.token")))
    mallory = pb_grpc.FederationStub(mallory_channel)
    anonymous = pb_grpc.FederationStub(channel(None))
    forger = pb_grpc.FederationStub(channel("forged-token"))

    zero = {n: np.zeros(s.shape, np.float32) for n, s in alice.specs.items()}
    first = alice.task()
    replay = [alice.header(first), *alice.chunks(zero, first)]
    assert alice.submit(replay).round == 1                       # round 1 commits; round 2 opens
    task = alice.task()
    assert task.round == 2
    model_before = alice.download(task)
    for _ in range(5):                                           # mallory uses up her joins for the minute
        mallory.Join(pb.JoinRequest(client_id="mallory"), timeout=10)

    def update(fill: Callable[[tuple[int, ...]], np.ndarray]) -> list[pb.UpdateMessage]:
        """An update whose tensors ``fill`` makes, written raw into the dense uplink format (NaN included)."""
        assert task.uplink_codec.startswith("dense(dtype=float32)")
        valid = encode_model(zero, expect_all(alice.specs, task.uplink_codec))
        raw = EncodedModel([EncodedTensor(t.spec, t.codec, fill(t.spec.shape).astype("<f4").tobytes())
                            for t in valid.tensors])
        return [alice.header(task), *alice.chunks(raw)]

    def oversized() -> list[pb.UpdateMessage]:
        chunk = pb.Chunk(tensor=pb.TensorHeader(name="features.0.weight"), data=bytes(MAX_MESSAGE_BYTES))
        return [alice.header(task), pb.UpdateMessage(chunk=chunk)]

    def too_long() -> list[pb.UpdateMessage]:
        messages = update(np.zeros)
        return [*messages, *messages[1:]]                        # every tensor sent twice

    def tensor_header(**fields: object) -> list[pb.UpdateMessage]:
        valid = update(np.zeros)[1].chunk.tensor
        header = pb.TensorHeader(name=valid.name, shape=valid.shape, dtype=valid.dtype, codec=valid.codec,
                                 payload_size=valid.payload_size)
        for key, value in fields.items():
            setattr(header, key, value)
        return [alice.header(task), pb.UpdateMessage(chunk=pb.Chunk(tensor=header, data=b"\0"))]

    plans = list(HOSTILE_PLANS.values())
    raw_join = alice_channel.unary_unary("/fedsqueeze.v1.Federation/Join")

    submit = alice.stub.SubmitUpdate
    kinds: list[tuple[str, grpc.StatusCode, Callable[[], object]]] = [
        ("join without a token", grpc.StatusCode.UNAUTHENTICATED,
         lambda: anonymous.Join(pb.JoinRequest(client_id="alice"), timeout=10)),
        ("update with a forged token", grpc.StatusCode.UNAUTHENTICATED,
         lambda: forger.SubmitUpdate(iter(update(np.zeros)), timeout=10)),
        ("mallory joins as alice", grpc.StatusCode.PERMISSION_DENIED,
         lambda: mallory.Join(pb.JoinRequest(client_id="alice"), timeout=10)),
        ("mallory submits on alice's session", grpc.StatusCode.PERMISSION_DENIED,
         lambda: mallory.SubmitUpdate(iter(update(np.zeros)), timeout=10)),
        ("mallory floods joins", grpc.StatusCode.RESOURCE_EXHAUSTED,
         lambda: mallory.Join(pb.JoinRequest(client_id="mallory"), timeout=10)),
        ("NaN weights", grpc.StatusCode.INVALID_ARGUMENT,
         lambda: submit(iter(update(lambda shape: np.full(shape, np.nan, np.float32))), timeout=10)),
        ("infinite weights", grpc.StatusCode.INVALID_ARGUMENT,
         lambda: submit(iter(update(lambda shape: np.full(shape, -np.inf, np.float32))), timeout=10)),
        ("absurd norm", grpc.StatusCode.INVALID_ARGUMENT,
         lambda: submit(iter(update(lambda shape: np.full(shape, 1e3, np.float32))), timeout=10)),
        ("replay of round 1's update", grpc.StatusCode.FAILED_PRECONDITION,
         lambda: submit(iter(replay), timeout=10)),
        ("unknown session", grpc.StatusCode.UNAUTHENTICATED,
         lambda: submit(iter([alice.header(task, session_id="made-up"), *update(np.zeros)[1:]]), timeout=10)),
        ("over-long stream", grpc.StatusCode.INVALID_ARGUMENT, lambda: submit(iter(too_long()), timeout=10)),
        ("oversized message", grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: submit(iter(oversized()), timeout=10)),
        ("join with a hostile codec plan", grpc.StatusCode.INVALID_ARGUMENT,
         lambda: alice.stub.Join(pb.JoinRequest(client_id="alice", downlink_codec=rng.choice(plans)), timeout=10)),
        ("100 KB tensor name", grpc.StatusCode.INVALID_ARGUMENT,
         lambda: submit(iter(tensor_header(name="x\n" * 50_000)), timeout=10)),
        ("1 MB codec string", grpc.StatusCode.INVALID_ARGUMENT,
         lambda: submit(iter(tensor_header(codec="dense|" * 170_000)), timeout=10)),
        ("one-byte chunks", grpc.StatusCode.INVALID_ARGUMENT, lambda: submit(iter(tensor_header()), timeout=10)),
        ("bytes that are not protobuf", grpc.StatusCode.INVALID_ARGUMENT,
         lambda: raw_join(b"\xff\xff\xff\xff\x0f", timeout=10)),
        ("mallory reports a failure on alice's session", grpc.StatusCode.PERMISSION_DENIED,
         lambda: mallory.ReportFailure(pb.FailureReport(session_id=alice.session, reason="x"), timeout=10)),
    ]
    rng = random.Random(7)
    tallies: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    log_before = len(cluster.log("server").encode())
    for _ in range(1000):
        label, code, call = rng.choice(kinds)
        try:
            call()
        except grpc.RpcError as exc:
            assert exc.code() == code, f"{label}: {exc.code()} {exc.details()}"
            tallies[label] += 1
            codes[code.name] += 1
        else:
            raise AssertionError(f"{label} was accepted")
    log_bytes = len(cluster.log("server").encode()) - log_before
    print(f"\n1000 hostile requests, all refused as expected: {dict(tallies)}; {log_bytes / 1000:.0f} log bytes "
          "per request")
    assert log_bytes / 1000 < 1000, "the log grows with what attackers send"
    assert max(len(line) for line in cluster.log("server").splitlines()) < 2000

    status = pb_grpc.OperatorStub(channel(read_token(str(creds / "operator.token")))).GetStatus(
        pb.StatusRequest(include_history=True), timeout=10)
    assert status.state == pb.TRAINING and status.round == 2 and len(status.history) == 1
    assert cluster.processes["server"].poll() is None
    model_after = alice.download(task)
    assert all(np.array_equal(model_after[k], v) for k, v in model_before.items()), "the global model changed"

    samples = scrape(metrics_port)
    assert samples["fedsqueeze_rounds_total"] == 1 and samples["fedsqueeze_updates_total"] == 1
    assert samples['fedsqueeze_bytes_total{direction="up"}'] > 0
    assert samples["fedsqueeze_clients_connected"] >= 1
    refused = Counter()
    for name, value in samples.items():
        if name.startswith("fedsqueeze_rejections_total{"):
            refused[name.split('code="')[1].split('"')[0]] += int(value)
    for code, count in codes.items():   # gRPC itself refuses oversized messages before any handler runs
        if code != "RESOURCE_EXHAUSTED":
            assert refused[code] >= count, (code, refused)
    log_lines = [json.loads(line) for line in cluster.log("server").splitlines() if line.startswith("{")]
    assert any("refused with" in line["message"] for line in log_lines)
    assert alice.submit([alice.header(task), *alice.chunks(zero, task)]).round == 2   # no round stalled
    assert alice.task().round == 3


def test_hostile_evaluation_reports_are_refused_and_change_nothing(cluster: Cluster) -> None:
    """A server without data counts one valid evaluation per task; bad ones get clear codes and count nothing."""
    cluster.server("--insecure", "--data", "none", "--input-shape", "1,12,12", "--num-classes", "10", "--model",
                   "cnn(width=8)", "--rounds", "1", "--min-clients", "1", "--linger", "2")
    with cluster.channel() as channel:
        mallory = Prober(channel, client_id="mallory")
        train = mallory.task()
        zero = {name: np.zeros(spec.shape, np.float32) for name, spec in mallory.specs.items()}
        assert mallory.submit([mallory.header(train), *mallory.chunks(zero, train)]).round == 1
        polled = mallory.stub.GetTask(pb.GetTaskRequest(session_id=mallory.session, wait_ms=20_000), timeout=30)
        assert polled.WhichOneof("kind") == "evaluate", polled
        task = polled.evaluate

        def report(**overrides: object) -> pb.EvaluationReport:
            fields: dict[str, object] = dict(session_id=mallory.session, task_id=task.task_id, round=task.round,
                                             num_examples=100, metrics={"accuracy": 0.5, "loss": 1.0})
            fields.update(overrides)
            return pb.EvaluationReport(**fields)

        cases = {
            "NaN metric": (report(metrics={"accuracy": float("nan")}), grpc.StatusCode.INVALID_ARGUMENT),
            "no examples": (report(num_examples=0), grpc.StatusCode.INVALID_ARGUMENT),
            "wrong round": (report(round=7), grpc.StatusCode.FAILED_PRECONDITION),
            "unknown task": (report(task_id="forged"), grpc.StatusCode.FAILED_PRECONDITION),
            "unknown session": (report(session_id="forged"), grpc.StatusCode.UNAUTHENTICATED),
        }
        for label, (message, code) in cases.items():
            with pytest.raises(grpc.RpcError) as info:
                mallory.stub.SubmitEvaluation(message, timeout=10)
            assert info.value.code() == code, (label, info.value.details())
        code, details = mallory.refused([mallory.header(train, task_id=task.task_id, round=task.round)])
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "SubmitEvaluation" in details
        assert mallory.stub.SubmitEvaluation(report(), timeout=10).round == 1
        with pytest.raises(grpc.RpcError) as info:   # one evaluation per task
            mallory.stub.SubmitEvaluation(report(metrics={"accuracy": 1.0}), timeout=10)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert cluster.wait("server", 60) == 0
    (record,) = cluster.report()["rounds"]
    assert (record["evaluated"], record["accuracy"], record["loss"]) == (1, 0.5, 1.0)

"""Client identity by enrolment token, over TLS: who may call, and as whom."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedsqueeze.certs import make_certificates
from fedsqueeze.enrolment import BearerToken, Enrolment, read_token, token_hash
from fedsqueeze.models import build_model
from fedsqueeze.tensors import float_state, model_spec
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.v1 import federation_pb2_grpc as pb_grpc
from fedsqueeze.wire import encode_model, expect_all

from conftest import FAST_SERVER, Cluster


def test_tokens_identify_only_their_own_client() -> None:
    enrolment = Enrolment({"a": token_hash("secret-a"), "b": token_hash("secret-b")})
    assert enrolment.identify([("authorization", "Bearer secret-a")]) == "a"
    assert enrolment.identify([("authorization", "Bearer secret-b"), ("x", "y")]) == "b"
    for metadata in ([], None, [("authorization", "secret-a")], [("authorization", "Bearer wrong")],
                     [("authorization", "Bearer secret-a"), ("authorization", "Bearer secret-b")]):
        assert enrolment.identify(metadata) is None
    with pytest.raises(ValueError, match="sha256"):
        Enrolment({"a": "not-a-digest"})


class Caller:
    """A hand-driven client over TLS with some identity's token (or none)."""

    def __init__(self, port: int, creds: Path, token: str | None) -> None:
        channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(
            (creds / "ca.pem").read_bytes()))
        self.channel = grpc.intercept_channel(channel, BearerToken(token)) if token else channel
        self.stub = pb_grpc.FederationStub(self.channel)

    def refused(self, call: object, *args: object) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as info:
            call(*args, timeout=30)  # type: ignore[operator]
        return info.value.code(), info.value.details()


def test_enrolled_identities_over_tls(cluster: Cluster) -> None:
    creds = cluster.root / "creds"
    make_certificates(creds, ["localhost", "127.0.0.1"], ["alice", "bob"], days=1)
    plaintext = [a for a in FAST_SERVER if a != "--insecure"]
    cluster.server(*plaintext, "--tls-cert", str(creds / "server.pem"), "--tls-key", str(creds / "server.key"),
                   "--tokens", str(creds / "tokens.json"), "--rounds", "2", "--min-clients", "1")
    token = {name: read_token(str(creds / f"{name}.token")) for name in ("alice", "bob", "operator")}
    anonymous = Caller(cluster.port, creds, None)
    forger = Caller(cluster.port, creds, "not-a-token")
    alice, bob = Caller(cluster.port, creds, token["alice"]), Caller(cluster.port, creds, token["bob"])
    tallies = []

    def expect(label: str, code: grpc.StatusCode, refusal: tuple[grpc.StatusCode, str]) -> None:
        assert refusal[0] == code, f"{label}: {refusal}"
        tallies.append((label, code.name))

    join = pb.JoinRequest(client_id="alice", capabilities=pb.Capabilities(cpu_cores=1))
    expect("no token", grpc.StatusCode.UNAUTHENTICATED, anonymous.refused(anonymous.stub.Join, join))
    expect("forged token", grpc.StatusCode.UNAUTHENTICATED, forger.refused(forger.stub.Join, join))
    expect("bob joins as alice", grpc.StatusCode.PERMISSION_DENIED, bob.refused(bob.stub.Join, join))
    expect("operator status as a client", grpc.StatusCode.PERMISSION_DENIED,
           alice.refused(pb_grpc.OperatorStub(alice.channel).GetStatus, pb.StatusRequest()))
    expect("status without a token", grpc.StatusCode.UNAUTHENTICATED,
           anonymous.refused(pb_grpc.OperatorStub(anonymous.channel).GetStatus, pb.StatusRequest()))

    reply = alice.stub.Join(join, timeout=30)
    session = reply.session_id
    task = alice.stub.GetTask(pb.GetTaskRequest(session_id=session, wait_ms=20_000), timeout=30).train
    expect("bob polls alice's session", grpc.StatusCode.PERMISSION_DENIED,
           bob.refused(bob.stub.GetTask, pb.GetTaskRequest(session_id=session, wait_ms=0)))
    expect("bob downloads alice's task", grpc.StatusCode.PERMISSION_DENIED, bob.refused(
        lambda r, timeout: list(bob.stub.DownloadModel(r, timeout=timeout)),
        pb.DownloadRequest(session_id=session, task_id=task.task_id)))
    specs = model_spec(float_state(build_model(reply.model)))
    update = encode_model({n: np.zeros(s.shape, np.float32) for n, s in specs.items()},
                          expect_all(specs, task.uplink_codec))

    def messages(**header: object) -> list[pb.UpdateMessage]:
        fields = dict(session_id=session, task_id=task.task_id, round=task.round, num_examples=10)
        fields.update(header)
        return [pb.UpdateMessage(header=pb.UpdateHeader(**fields)),
                *(pb.UpdateMessage(chunk=c) for c in update.chunks(1 << 16))]

    expect("bob submits as alice", grpc.StatusCode.PERMISSION_DENIED,
           bob.refused(lambda m, timeout: bob.stub.SubmitUpdate(iter(m), timeout=timeout), messages()))
    expect("alice submits for a round she was not given", grpc.StatusCode.FAILED_PRECONDITION,
           alice.refused(lambda m, timeout: alice.stub.SubmitUpdate(iter(m), timeout=timeout),
                         messages(round=task.round + 1)))
    expect("alice submits for a task she was not given", grpc.StatusCode.FAILED_PRECONDITION,
           alice.refused(lambda m, timeout: alice.stub.SubmitUpdate(iter(m), timeout=timeout),
                         messages(task_id="made-up")))
    assert alice.stub.SubmitUpdate(iter(messages()), timeout=30).round == task.round
    task2 = alice.stub.GetTask(pb.GetTaskRequest(session_id=session, wait_ms=20_000), timeout=30)
    expect("alice submits twice", grpc.StatusCode.FAILED_PRECONDITION,
           alice.refused(lambda m, timeout: alice.stub.SubmitUpdate(iter(m), timeout=timeout), messages()))
    assert task2.WhichOneof("kind") == "train" and task2.train.round == 2

    # The real client daemon and the operator command, each with its own token.
    cluster.fedsqueeze("bob", "client", "--server", f"127.0.0.1:{cluster.port}", "--root-certificates",
                       str(creds / "ca.pem"), "--token-file", str(creds / "bob.token"), "--client-id", "bob",
                       "--data", "synthetic")
    alice.stub.Leave(pb.LeaveRequest(session_id=session, reason="test done"), timeout=30)
    assert cluster.wait("server", 120) == 0 and cluster.wait("bob", 60) == 0
    assert cluster.report()["rounds"][1]["updates"] == 1
    print(f"\nidentity refusals: {tallies}")


def test_certs_command_writes_a_working_set(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "fedsqueeze.apps", "certs", "--out", str(tmp_path), "--clients",
                             "edge-1,edge-2"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    enrolment = Enrolment.load(str(tmp_path / "tokens.json"))
    for name in ("edge-1", "edge-2", "operator"):
        token = read_token(str(tmp_path / f"{name}.token"))
        assert enrolment.identify([("authorization", f"Bearer {token}")]) == name
        assert (tmp_path / f"{name}.token").stat().st_mode & 0o077 == 0
    assert token not in (tmp_path / "tokens.json").read_text()

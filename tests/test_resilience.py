"""One client must never stop a federation (issue 24), each against a real server process.

Hostile codec plans at Join, uploads that stall, unread downloads, plans by the
hundred, idle connections, an inflated example count, a flood of tiny chunks,
bytes that are not protobuf, foreign or expired credentials, and clients that
cannot do their task: each is refused or dropped, and honest rounds go on.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from fedsqueeze.certs import make_certificates
from fedsqueeze.config import ServerConfig
from fedsqueeze.enrolment import BearerToken, read_token, token_hash
from fedsqueeze.models import build_model, make_model_spec
from fedsqueeze.server.admission import MAX_PLAN_CHARACTERS
from fedsqueeze.server.aggregation import WeightedSum
from fedsqueeze.server.app import build_server
from fedsqueeze.server.clients import ClientInfo
from fedsqueeze.server.coordinator import MAX_ROUND_FAILURES, Coordinator
from fedsqueeze.server.metering import ByteMeter
from fedsqueeze.server.strategies import ClientPlan, ClientUpdate, StrategySettings
from fedsqueeze.server.strategies.fedavg import FedAvg
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.v1 import federation_pb2_grpc as pb_grpc

from conftest import FAST_SERVER, Cluster, run_simulate, wait_for
from test_refusals import RAW_FLOAT32, Prober

HOSTILE_PLANS = {
    "seed=abc": "cluster(k=16,seed=abc)",
    "seed=-1": "cluster(k=16,seed=-1)",
    "missing latent decoder": "latent(decoder=x)|dense",
    "4 MB plan": "cluster(k=16)|" + "zstd|" * 700_000,
    "absurd iterations": "cluster(k=16,iterations=1000000000)",
    "unknown stage": "gzip(level=3)",
    "ratio not a number": "channels(ratio=abc)",
    "wrong type": "zstd(level=abc)",
}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def tls_server_args(creds: Path) -> list[str]:
    plaintext = [a for a in FAST_SERVER if a != "--insecure"]
    return [*plaintext, "--tls-cert", str(creds / "server.pem"), "--tls-key", str(creds / "server.key"),
            "--tokens", str(creds / "tokens.json")]


def tls_channel(port: int, creds: Path, name: str | None, cert_from: Path | None = None) -> grpc.Channel:
    """A TLS channel carrying ``name``'s token; with ``cert_from``, presenting ``name``'s certificate from there."""
    key = chain = None
    if cert_from is not None:
        key, chain = (cert_from / f"{name}.key").read_bytes(), (cert_from / f"{name}.pem").read_bytes()
    credentials = grpc.ssl_channel_credentials((creds / "ca.pem").read_bytes(), key, chain)
    channel = grpc.secure_channel(f"127.0.0.1:{port}", credentials)
    return grpc.intercept_channel(channel, BearerToken(read_token(str(creds / f"{name}.token")))) if name else channel


def honest_tls_client(cluster: Cluster, creds: Path, name: str) -> None:
    cluster.fedsqueeze(name, "client", "--server", f"127.0.0.1:{cluster.port}", "--root-certificates",
                       str(creds / "ca.pem"), "--token-file", str(creds / f"{name}.token"), "--client-id", name,
                       "--threads", "1", "--data", "synthetic")


@pytest.mark.parametrize("transport", ["plaintext", "tls+tokens"])
def test_hostile_codec_plans_are_refused_at_join_and_rounds_go_on(cluster: Cluster, transport: str) -> None:
    creds = cluster.root / "creds"
    if transport == "plaintext":
        cluster.server(*FAST_SERVER, "--rounds", "1", "--min-clients", "1")
        channel = cluster.channel()
    else:
        make_certificates(creds, ["localhost", "127.0.0.1"], ["alice", "mallory"], days=1)
        cluster.server(*tls_server_args(creds), "--rounds", "1", "--min-clients", "1")
        channel = tls_channel(cluster.port, creds, "mallory")
    stub = pb_grpc.FederationStub(channel)
    for label, plan in HOSTILE_PLANS.items():
        for direction in ("uplink_codec", "downlink_codec"):
            with pytest.raises(grpc.RpcError) as info:
                stub.Join(pb.JoinRequest(client_id="mallory", **{direction: plan}), timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (label, info.value.details())
            assert "codec plan" in info.value.details() and len(info.value.details()) < 1000, label
            if label == "4 MB plan":   # refused by its length, before any parsing
                assert f"at most {MAX_PLAN_CHARACTERS}" in info.value.details()
    if transport == "plaintext":
        cluster.client("alice")
    else:
        honest_tls_client(cluster, creds, "alice")
    assert cluster.wait("server", 120) == 0
    (record,) = cluster.report()["rounds"]
    assert record["updates"] == 1 and record["selected"] == 1
    log = cluster.log("server")
    assert "zstd|zstd|" * 200 not in log, "a hostile plan was echoed whole into the log"


def header_then_silence(header: pb.UpdateMessage, stop: threading.Event) -> Iterator[pb.UpdateMessage]:
    yield header
    stop.wait()


def stall_every_round(stub: pb_grpc.FederationStub, session: str, stop: threading.Event,
                      results: list[grpc.StatusCode]) -> None:
    """A client that takes each task and sends only an update's header, then nothing."""
    while not stop.is_set():
        try:
            task = stub.GetTask(pb.GetTaskRequest(session_id=session, wait_ms=2000), timeout=10)
        except grpc.RpcError:
            return
        if task.WhichOneof("kind") == "finished":
            return
        if task.WhichOneof("kind") != "train":
            continue
        header = pb.UpdateMessage(header=pb.UpdateHeader(session_id=session, task_id=task.train.task_id,
                                                         round=task.train.round, num_examples=10))

        try:
            stub.SubmitUpdate(header_then_silence(header, stop), timeout=60)
        except grpc.RpcError as exc:
            results.append(exc.code())


def test_stalled_uploads_lose_their_turn_and_honest_rounds_commit(cluster: Cluster) -> None:
    """8 enrolled clients (the default --concurrent-uploads) leave an upload unfinished every round, over TLS."""
    creds = cluster.root / "creds"
    attackers = [f"mallory-{i}" for i in range(8)]
    make_certificates(creds, ["localhost", "127.0.0.1"], ["alice", *attackers], days=1)
    stall = 3.0
    cluster.server(*tls_server_args(creds), "--rounds", "3", "--min-clients", "9",
                   "--upload-stall-seconds", str(stall), "--round-timeout", "300")
    stop, results = threading.Event(), []
    threads = []
    for name in attackers:
        stub = pb_grpc.FederationStub(tls_channel(cluster.port, creds, name))
        session = stub.Join(pb.JoinRequest(client_id=name), timeout=30).session_id
        threads.append(threading.Thread(target=stall_every_round, args=(stub, session, stop, results), daemon=True))
        threads[-1].start()
    honest_tls_client(cluster, creds, "alice")
    try:
        assert cluster.wait("server", 240) == 0
    finally:
        stop.set()
    rounds = cluster.report()["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for r in rounds:
        assert r["updates"] == 1 and r["failed"] == 8 and r["selected"] == 9, r
    assert "deadline reached" not in cluster.log("server")   # every round settled by dropping the stalled uploads
    assert results and set(results) == {grpc.StatusCode.DEADLINE_EXCEEDED}, results
    assert "stalled" in cluster.log("server")


def test_unread_downloads_and_distinct_plans_are_capped(cluster: Cluster) -> None:
    cluster.server(*FAST_SERVER, *RAW_FLOAT32, "--rounds", "1", "--min-clients", "1", "--round-timeout", "120",
                   "--model", "mlp(hidden=1024)")   # 7.4 MB of float32: a download outlasts gRPC's buffers
    prober = Prober(cluster.channel())
    task = prober.task()
    pid = cluster.processes["server"].pid
    before = rss_mib(pid)
    streams = [prober.stub.DownloadModel(pb.DownloadRequest(session_id=prober.session, task_id=task.task_id))
               for _ in range(300)]
    time.sleep(3)                                   # none is read: an admitted stream stays open
    refused = [s for s in streams if s.done()]
    assert all(s.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for s in refused), refused[0].details()
    admitted = len(streams) - len(refused)
    grown = rss_mib(pid) - before
    print(f"\n300 unread downloads: {admitted} admitted, {len(refused)} refused; server RSS +{grown:.1f} MiB")
    assert admitted == 2
    assert grown < 50
    for stream in streams:
        stream.cancel()

    codes = []
    for k in range(2, 102):   # 100 distinct, valid downlink plans from 100 clients
        try:
            prober.stub.Join(pb.JoinRequest(client_id=f"plan-{k}", downlink_codec=f"cluster(k={k})|zstd"), timeout=30)
            codes.append("OK")
        except grpc.RpcError as exc:
            codes.append(exc.code().name)
    grown = rss_mib(pid) - before
    print(f"100 distinct plans: {codes.count('OK')} accepted; server RSS +{grown:.1f} MiB")
    assert codes[:8] == ["OK"] * 8 and set(codes[8:]) == {"RESOURCE_EXHAUSTED"}
    assert grown < 100


def test_idle_connections_without_a_preface_are_dropped_and_joins_go_through(cluster: Cluster) -> None:
    cluster.server(*FAST_SERVER, "--rounds", "1", "--min-clients", "1")
    idle = []
    for _ in range(1100):
        s = socket.create_connection(("127.0.0.1", cluster.port), timeout=10)
        idle.append(s)
    started = time.monotonic()
    Prober(cluster.channel(), client_id="honest")
    joined = time.monotonic() - started
    idle[0].settimeout(30)
    while idle[0].recv(4096):   # the server's HTTP/2 settings, then the close at its 10 s handshake deadline
        pass                    # (a connection kept open would raise socket.timeout after 30 s)
    dropped = time.monotonic() - started
    print(f"\n1,100 idle connections: honest Join in {joined:.2f} s; idle ones closed after {dropped:.1f} s")
    for s in idle:
        s.close()


def test_an_inflated_example_count_moves_the_model_by_its_capped_share_only(cluster: Cluster) -> None:
    cluster.server(*FAST_SERVER, *RAW_FLOAT32, "--rounds", "2", "--min-clients", "2", "--max-examples", "1000",
                   "--max-update-norm", "1000")
    honest, attacker = Prober(cluster.channel(), client_id="honest"), Prober(cluster.channel(), client_id="big")
    tasks = {p: p.task() for p in (honest, attacker)}
    start = honest.download(tasks[honest])
    for _ in range(4):                          # downloading again does not inflate the dense yardstick
        honest.download(tasks[honest])
    zero = {n: np.zeros_like(v) for n, v in start.items()}
    rng = np.random.default_rng(0)
    push = {n: rng.standard_normal(v.shape).astype(np.float32) for n, v in start.items()}
    norm = np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in push.values()))
    push = {n: (v * (999.0 / norm)).astype(np.float32) for n, v in push.items()}   # norm 999, bound 1000
    honest.submit([honest.header(tasks[honest], num_examples=100), *honest.chunks(zero)])
    attacker.submit([attacker.header(tasks[attacker], num_examples=2**31), *attacker.chunks(push)])
    after = honest.download(honest.task())
    share = 1000 / 1100
    for name in start:
        moved = after[name].astype(np.float64) - start[name]
        assert np.allclose(moved, share * push[name], atol=1e-4), name
    assert "weighted as 1000" in cluster.log("server")
    (record,) = cluster.status().history
    model_bytes = sum(4 * v.size for v in start.values())
    assert record.dense_bytes_down == model_bytes and record.dense_bytes_up == 2 * model_bytes


def test_a_million_one_byte_chunks_are_refused_at_the_first(cluster: Cluster) -> None:
    cluster.server(*FAST_SERVER, *RAW_FLOAT32, "--rounds", "1", "--min-clients", "1")
    prober = Prober(cluster.channel())
    task = prober.task()
    name, spec = next(iter(prober.specs.items()))
    sent = [0]

    def flood() -> Iterator[pb.UpdateMessage]:
        yield prober.header(task)
        header = pb.TensorHeader(name=name, shape=spec.shape, dtype=pb.FLOAT32, codec=task.uplink_codec.split(";")[0],
                                 payload_size=spec.dense_bytes)
        yield pb.UpdateMessage(chunk=pb.Chunk(tensor=header, data=b"\0"))
        for _ in range(1_000_000):
            sent[0] += 1
            yield pb.UpdateMessage(chunk=pb.Chunk(data=b"\0"))

    started = time.monotonic()
    code, details = prober.refused(flood())   # a generator: refused long before it is drained
    elapsed = time.monotonic() - started
    print(f"\n1,000,000 one-byte chunks: refused after {sent[0]} were produced, in {elapsed:.2f} s")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at least 1024" in details, details
    assert sent[0] < 100_000


def test_undecodable_messages_get_invalid_argument_without_internals(cluster: Cluster) -> None:
    cluster.server(*FAST_SERVER, "--rounds", "1", "--min-clients", "1")
    channel = cluster.channel()
    garbage = b"\xff\xff\xff\xff\x0f"
    for method in ("Join", "GetTask", "Leave", "ReportFailure"):
        raw = channel.unary_unary(f"/fedsqueeze.v1.Federation/{method}")
        with pytest.raises(grpc.RpcError) as info:
            raw(garbage, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, info.value.details())
        assert "DecodeError" not in info.value.details() and "class" not in info.value.details()
    upload = channel.stream_unary("/fedsqueeze.v1.Federation/SubmitUpdate")
    with pytest.raises(grpc.RpcError) as info:
        upload(iter([garbage]), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    prober = Prober(channel)
    task = prober.task()
    code, details = prober.refused([prober.header(task), pb.UpdateMessage()])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "empty UpdateMessage" in details
    log = cluster.log("server")
    assert "Traceback" not in log and log.count("not valid protobuf") == 1   # once a minute per peer


def test_client_certificates_when_required(cluster: Cluster) -> None:
    creds, foreign = cluster.root / "creds", cluster.root / "foreign"
    make_certificates(creds, ["localhost", "127.0.0.1"], ["alice", "bob"], days=1)
    make_certificates(foreign, ["localhost"], ["alice"], days=1)
    cluster.server(*tls_server_args(creds), "--require-client-certs", "--client-ca", str(creds / "ca.pem"),
                   "--rounds", "1", "--min-clients", "1")

    def join(channel: grpc.Channel) -> grpc.StatusCode:
        try:
            pb_grpc.FederationStub(channel).Join(pb.JoinRequest(client_id="alice"), timeout=10)
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()

    # the certificate is checked before any handler runs: the TLS handshake fails, so the call is UNAVAILABLE
    assert join(tls_channel(cluster.port, creds, "alice")) == grpc.StatusCode.UNAVAILABLE          # none
    assert join(tls_channel(cluster.port, creds, "alice", cert_from=foreign)) == grpc.StatusCode.UNAVAILABLE
    bobs_cert = grpc.ssl_channel_credentials((creds / "ca.pem").read_bytes(), (creds / "bob.key").read_bytes(),
                                             (creds / "bob.pem").read_bytes())
    with_bobs = grpc.intercept_channel(grpc.secure_channel(f"127.0.0.1:{cluster.port}", bobs_cert),
                                       BearerToken(read_token(str(creds / "alice.token"))))
    assert join(with_bobs) == grpc.StatusCode.PERMISSION_DENIED
    assert join(tls_channel(cluster.port, creds, "alice", cert_from=creds)) == grpc.StatusCode.OK


def test_expired_tokens_are_refused_and_rotation_needs_no_restart(cluster: Cluster) -> None:
    creds = cluster.root / "creds"
    make_certificates(creds, ["localhost", "127.0.0.1"], ["alice"], days=1)
    tokens = json.loads((creds / "tokens.json").read_text())
    old = tokens["alice"]
    tokens["alice"] = {"sha256": old, "expires": "2020-01-01T00:00:00+00:00"}
    (creds / "tokens.json").write_text(json.dumps(tokens))
    cluster.server(*tls_server_args(creds), "--rounds", "1", "--min-clients", "1")
    stub = pb_grpc.FederationStub(tls_channel(cluster.port, creds, "alice"))
    with pytest.raises(grpc.RpcError) as info:
        stub.Join(pb.JoinRequest(client_id="alice"), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "expired" in info.value.details()
    (creds / "alice.token").write_text("a-rotated-token\n")
    tokens["alice"] = [tokens["alice"], {"sha256": token_hash("a-rotated-token"), "expires": "2999-01-01T00:00:00Z"}]
    (creds / "tokens.json").write_text(json.dumps(tokens))
    rotated = pb_grpc.FederationStub(tls_channel(cluster.port, creds, "alice"))
    wait_for(lambda: _joins(rotated), 10, "the rotated token to be accepted")


def _joins(stub: pb_grpc.FederationStub) -> bool:
    try:
        stub.Join(pb.JoinRequest(client_id="alice"), timeout=10)
        return True
    except grpc.RpcError:
        return False


def test_clients_that_cannot_do_their_task_say_so_and_the_round_closes(cluster: Cluster) -> None:
    cluster.server(*FAST_SERVER, "--rounds", "1", "--min-clients", "2", "--round-timeout", "600")
    cluster.client("wrong-data", "--data", "digits")     # 8x8 images against the federation's model: fails at Join
    assert cluster.wait("wrong-data", 60) == 2
    cluster.client("healthy")
    cluster.client("bad-trainer", "--lr", "-1")          # its trainer refuses a negative rate, mid-round
    assert cluster.wait("server", 120) == 0
    (record,) = cluster.report()["rounds"]
    assert record["selected"] == 2 and record["updates"] == 1 and record["failed"] == 1, record
    assert "deadline reached" not in cluster.log("server")   # closed by the reports, not at the 600 s deadline
    for name, why in (("wrong-data", "input shape"), ("bad-trainer", "learning_rate=-1")):
        assert cluster.wait(name, 30) == 2
        log = cluster.log(name)
        assert why in log and "Traceback" not in log, log
        assert f"client {name} reports a failure" in cluster.log("server")


def test_simulate_exits_non_zero_with_the_reason(tmp_path: Path) -> None:
    result = run_simulate(tmp_path, "--data", "synthetic", "--clients", "2", "--rounds", "1", "--optimizer", "adamw",
                          timeout=120)
    assert result.returncode != 0
    assert "--optimizer must be one of sgd, adam, not 'adamw'" in result.stdout + result.stderr


class SlowFedAvg(FedAvg):
    """FedAvg whose planning takes 2 s, whose first fold fails and whose first aggregation breaks the model and
    raises: no RPC may stall, the failed fold may not count, and the round is tried again on the model as it was."""

    folds = 0
    aggregations = 0

    configuring: tuple[float, float] = (0.0, 0.0)   # when the first configure began and ended

    def configure(self, round_number: int, clients: Sequence[ClientInfo]) -> dict[str, ClientPlan]:
        began = time.monotonic()
        time.sleep(2.0)
        if not self.configuring[1]:
            self.configuring = (began, time.monotonic())
        return super().configure(round_number, clients)

    def accumulate(self, accumulator: WeightedSum, update: ClientUpdate) -> None:
        self.folds += 1
        if self.folds == 1:
            raise RuntimeError("a strategy bug")
        super().accumulate(accumulator, update)

    def aggregate(self, round_number: int, accumulator: WeightedSum,
                  client_metrics: dict[str, float]) -> dict[str, float]:
        self.aggregations += 1
        if self.aggregations == 1:
            with torch.no_grad():
                for value in self.model.state_dict().values():
                    value.add_(1.0)
            raise RuntimeError("a strategy bug half-way through aggregating")
        return super().aggregate(round_number, accumulator, client_metrics)


IN_PROCESS = ServerConfig(listen="127.0.0.1:0", insecure=True, data="synthetic", model="cnn(width=4)", rounds=1,
                          min_clients=1, linger=0, uplink="dense", downlink="dense")
IN_PROCESS_SPEC = make_model_spec(IN_PROCESS.model, (1, 28, 28), 10)
IN_PROCESS_SETTINGS = StrategySettings(IN_PROCESS_SPEC, "synthetic", pb.Hyperparameters(
    epochs=1, batch_size=8, learning_rate=0.1, optimizer="sgd"), "dense", "dense")


def serve_in_a_thread(coordinator: Coordinator) -> tuple[threading.Thread, grpc.Channel]:
    """The real gRPC server and round loop of ``coordinator``, in this process (its strategy is a test's)."""
    ready, port = threading.Event(), [0]

    async def serve() -> None:
        server, _, port[0] = build_server(IN_PROCESS, coordinator, ByteMeter(), None)
        await server.start()
        ready.set()
        await coordinator.run()
        await server.stop(grace=1)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30)
    return thread, grpc.insecure_channel(f"127.0.0.1:{port[0]}")


def test_slow_strategy_hooks_run_off_the_event_loop() -> None:
    strategy = SlowFedAvg(build_model(IN_PROCESS_SPEC), IN_PROCESS_SETTINGS)
    initial = {name: value.clone() for name, value in strategy.model.state_dict().items()}
    coordinator = Coordinator(IN_PROCESS, strategy, IN_PROCESS_SPEC, lambda m: (0.5, 1.0), ByteMeter())
    thread, channel = serve_in_a_thread(coordinator)
    operator = pb_grpc.OperatorStub(channel)
    prober = Prober(channel)                                   # joining opens a round: 2 s in configure
    calls = []   # (what, started, answered)
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        started = time.monotonic()
        operator.GetStatus(pb.StatusRequest(), timeout=10)
        calls.append(("GetStatus", started, time.monotonic()))
        started = time.monotonic()
        prober.stub.GetTask(pb.GetTaskRequest(session_id=prober.session, wait_ms=0), timeout=10)
        calls.append(("GetTask", started, time.monotonic()))
        time.sleep(0.05)
    began, ended = strategy.configuring
    inside = {what for what, started, answered in calls if began < started and answered < ended}
    print(f"\nwhile configure slept 2 s: {sum(began < s and a < ended for _, s, a in calls)} calls answered, "
          f"slowest {max(a - s for _, s, a in calls) * 1000:.0f} ms")
    assert inside == {"GetStatus", "GetTask"}, "no call was answered while configure ran: it blocks the loop"
    task = prober.task()
    zero = {n: np.zeros(s.shape, np.float32) for n, s in prober.specs.items()}
    code, details = prober.refused([prober.header(task), *prober.chunks(zero)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "could not fold" in details
    assert operator.GetStatus(pb.StatusRequest(), timeout=10).clients[0].updates_committed == 0
    assert prober.submit([prober.header(task), *prober.chunks(zero)]).round == 1   # the task was not used up
    retried = prober.task()                 # the first aggregation failed: round 1 is planned again
    assert retried.round == 1 and retried.task_id != task.task_id
    assert prober.submit([prober.header(retried), *prober.chunks(zero)]).round == 1
    thread.join(60)
    assert not thread.is_alive()
    (record,) = coordinator.history
    assert record.updates == 1 and strategy.aggregations == 2
    for name, value in strategy.model.state_dict().items():   # restored, then a zero update: as it started
        assert torch.equal(value, initial[name]), name


class BrokenFedAvg(FedAvg):
    """FedAvg whose aggregation always fails: retrying cannot help."""

    def aggregate(self, round_number: int, accumulator: WeightedSum,
                  client_metrics: dict[str, float]) -> dict[str, float]:
        raise ValueError("this method does not fit this model")


def test_a_round_that_keeps_failing_stops_the_federation_with_the_reason() -> None:
    coordinator = Coordinator(IN_PROCESS, BrokenFedAvg(build_model(IN_PROCESS_SPEC), IN_PROCESS_SETTINGS),
                              IN_PROCESS_SPEC, lambda m: (0.5, 1.0), ByteMeter())
    thread, channel = serve_in_a_thread(coordinator)
    prober = Prober(channel)
    zero = {n: np.zeros(s.shape, np.float32) for n, s in prober.specs.items()}
    for _ in range(MAX_ROUND_FAILURES):
        task = prober.task()
        assert task.round == 1
        prober.submit([prober.header(task), *prober.chunks(zero)])
    finished = prober.stub.GetTask(pb.GetTaskRequest(session_id=prober.session, wait_ms=20_000), timeout=30)
    assert finished.WhichOneof("kind") == "finished"
    assert "does not fit this model" in finished.finished.reason
    thread.join(60)
    assert not thread.is_alive() and not coordinator.history
    assert "round 1 could not be closed: ValueError" in (coordinator.stopped_because or "")

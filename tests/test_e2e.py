"""End to end: real server and client processes talking gRPC over loopback."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.v1 import federation_pb2_grpc as pb_grpc

from conftest import FAST_SERVER, Cluster, free_port, run_simulate, simulate, wait_for


@pytest.mark.slow
def test_simulate_trains_and_counts_every_byte(tmp_path: Path) -> None:
    """The simulate command end to end; with raw float32 codecs, counted bytes stay within 2% of the tensors."""
    out = tmp_path / "run"
    result = run_simulate(out, "--clients", "3", "--rounds", "3", "--data", "synthetic(size=28,samples=900)",
                          "--model", "cnn", "--linger", "5", "--uplink", "dense", "--downlink", "dense", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.png").stat().st_size > 10_000
    assert report["method"] == "fedavg" and len(report["rounds"]) == 3
    assert report["final_accuracy"] > 0.9
    model_bytes = 4 * 421_642
    for r in report["rounds"]:
        assert r["selected"] == r["updates"] == 3
        assert r["dense_bytes_up"] == r["dense_bytes_down"] == 3 * model_bytes
        # Lossless float32 cannot cost less than the raw tensors; the rest is headers and control messages.
        overhead = (r["bytes_up"] + r["bytes_down"]) / (r["dense_bytes_up"] + r["dense_bytes_down"])
        print(f"round {r['round']}: wire bytes / raw float32 bytes = {overhead:.5f}")
        assert r["bytes_up"] >= r["dense_bytes_up"] and r["bytes_down"] >= r["dense_bytes_down"]
        assert overhead <= 1.02
    assert report["bytes_up"] >= sum(r["bytes_up"] for r in report["rounds"])
    assert "final accuracy" in result.stdout


def test_20m_parameter_model_round_trips(cluster: Cluster) -> None:
    """An 80 MB model goes down and its update comes up in bounded chunks: no message-size error; the
    default lossless codec sends fewer bytes than the float32 tensors both ways."""
    cluster.server("--insecure", "--data", "synthetic(size=28,samples=64)", "--model", "mlp(hidden=4096)",
                   "--rounds", "1", "--min-clients", "1", "--batch-size", "64", "--linger", "5")
    cluster.client("big", "--data", "synthetic(size=28,samples=64)")
    assert cluster.wait("server", 600) == 0
    assert cluster.wait("big", 60) == 0
    (r,) = cluster.report()["rounds"]
    params = 20_037_642
    assert r["updates"] == 1 and r["dense_bytes_up"] == r["dense_bytes_down"] == 4 * params
    print(f"float32 {4 * params:,} B each way; sent {r['bytes_up']:,} B up, {r['bytes_down']:,} B down")
    assert r["bytes_up"] < 4 * params and r["bytes_down"] < 4 * params
    assert "RESOURCE_EXHAUSTED" not in cluster.logs()


def test_killed_client_does_not_stop_the_run(cluster: Cluster) -> None:
    """kill -9 of a client mid-round: the round closes at its deadline and the run finishes."""
    cluster.server(*FAST_SERVER, "--rounds", "3", "--min-clients", "2", "--round-timeout", "8",
                   "--client-timeout", "3")
    victim = cluster.client("victim", "--epochs", "500")   # slow: still training when killed
    wait_for(lambda: cluster.status().connected_clients == 1, 60, "the victim to join")
    cluster.client("steady-0")
    cluster.client("steady-1")

    wait_for(lambda: cluster.status().state == pb.TRAINING, 60, "round 1 to start")
    wait_for(lambda: "round 1: downloaded the model" in cluster.log("victim"), 60, "the victim to start training")
    victim.send_signal(signal.SIGKILL)
    assert cluster.wait("server", 120) == 0
    report = cluster.report()
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3]
    first = report["rounds"][0]
    assert first["updates"] == first["selected"] - 1 >= 1
    assert all(r["updates"] == r["selected"] == 2 for r in report["rounds"][1:])
    assert "deadline reached" in cluster.log("server")


def test_client_started_before_the_server_joins_when_it_comes_up(cluster: Cluster) -> None:
    """...and sends its update in chunks no larger than the server said it accepts (else it would be refused)."""
    port = free_port()
    cluster.client("early", port=port)
    wait_for(lambda: "unreachable" in cluster.log("early"), 60, "the client to retry")
    cluster.server(*FAST_SERVER, "--rounds", "1", "--min-clients", "1", "--chunk-bytes", "4096", port=port)
    assert cluster.wait("server", 120) == 0
    assert cluster.wait("early", 30) == 0
    assert cluster.report()["rounds"][0]["updates"] == 1
    assert "joined" in cluster.log("early")
    # Both logs say where the round's time went.
    assert re.search(r"round 1: trained on \d+ examples .* download [\d.]+ s, training [\d.]+ s, "
                     r"encoding [\d.]+ s, upload [\d.]+ s", cluster.log("early"))
    assert re.search(r"round 1 done: .* \(aggregation [\d.]+ s, evaluation [\d.]+ s\)", cluster.log("server"))


def test_sigterm_stops_a_client_cleanly(cluster: Cluster) -> None:
    """SIGTERM during a long-poll: the client cancels the poll and leaves, rather than waiting it out."""
    cluster.server(*FAST_SERVER, "--rounds", "1", "--min-clients", "2")
    client = cluster.client("polite")
    wait_for(lambda: cluster.status().connected_clients == 1, 60, "the client to join")
    wait_for(lambda: cluster.status().clients[0].seconds_since_seen >= 0.5, 10, "the client to be inside a long-poll")
    client.send_signal(signal.SIGTERM)
    assert cluster.wait("polite", 15) == 0   # before the poll could have ended by itself: it was cancelled
    wait_for(lambda: "client polite left" in cluster.log("server"), 10, "the server to see the Leave")
    assert cluster.status().connected_clients == 0


def test_operator_status_health_and_reflection(cluster: Cluster) -> None:
    cluster.server(*FAST_SERVER, "--rounds", "1", "--min-clients", "5")
    target = f"127.0.0.1:{cluster.port}"
    health = subprocess.run([sys.executable, "-m", "fedsqueeze.apps", "health", "--server", target, "--insecure"],
                            capture_output=True, text=True, timeout=60)
    assert health.returncode == 0 and health.stdout.strip() == "SERVING"
    status = subprocess.run([sys.executable, "-m", "fedsqueeze.apps", "status", "--server", target, "--insecure",
                             "--json"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert document["state"] == "WAITING_FOR_CLIENTS" and document["total_rounds"] == "1"

    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
    with cluster.channel() as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"fedsqueeze.v1.Federation", "fedsqueeze.v1.Operator", "grpc.health.v1.Health"} <= services

    # Byte accounting is exact and covers the Federation service only: operator calls cost nothing.
    assert (cluster.status().bytes_up, cluster.status().bytes_down) == (0, 0)
    request = pb.JoinRequest(client_id="counter", capabilities=pb.Capabilities(cpu_cores=3))
    with cluster.channel() as channel:
        reply = pb_grpc.FederationStub(channel).Join(request, timeout=10)
    status = cluster.status()
    assert (status.bytes_up, status.bytes_down) == (request.ByteSize() + 5, reply.ByteSize() + 5)

    unreachable = subprocess.run([sys.executable, "-m", "fedsqueeze.apps", "health", "--server",
                                  f"127.0.0.1:{free_port()}", "--insecure"], capture_output=True, text=True,
                                 timeout=60)
    assert unreachable.returncode == 1


def test_client_survives_a_server_restart(cluster: Cluster) -> None:
    """The server dies (kill -9) and a new one comes up on the same port: the same client rejoins and trains."""
    port = free_port()
    first = cluster.server(*FAST_SERVER, "--rounds", "50", "--min-clients", "1", port=port, name="first-server")
    client = cluster.client("survivor", "--max-backoff", "1")
    wait_for(lambda: cluster.status().history, 60, "a first round")
    first.send_signal(signal.SIGKILL)
    first.wait()
    wait_for(lambda: "unreachable" in cluster.log("survivor"), 30, "the client to notice")
    cluster.server(*FAST_SERVER, "--rounds", "2", "--min-clients", "1", port=port)
    assert cluster.wait("server", 120) == 0
    assert cluster.wait("survivor", 30) == 0 and client.returncode == 0
    assert [r["updates"] for r in cluster.report()["rounds"]] == [1, 1]
    log = cluster.log("survivor")
    assert "session no longer valid" in log and log.count(f"joined 127.0.0.1:{port}") == 2


@pytest.mark.slow
def test_codecs_cut_bytes_both_ways(tmp_path: Path) -> None:
    """Clustered uplink with error feedback and a float16 downlink, over the real path."""
    out = tmp_path / "run"
    report = simulate(out, "--clients", "2", "--rounds", "3", "--data", "synthetic(size=28,samples=600)", "--model",
                      "cnn", "--linger", "5", "--uplink", "cluster(k=16)|zstd", "--downlink",
                      "dense(dtype=float16)|zstd", timeout=300)
    assert report["final_accuracy"] > 0.9
    for r in report["rounds"]:
        print(f"round {r['round']}: uplink {r['dense_bytes_up'] / r['bytes_up']:.2f}x, "
              f"downlink {r['dense_bytes_down'] / r['bytes_down']:.2f}x below float32")
        assert r["dense_bytes_up"] / r["bytes_up"] >= 8
        assert r["dense_bytes_down"] / r["bytes_down"] >= 1.9
        assert r["metrics"]["client_error_feedback_norm"] > 0


def test_clients_may_ask_for_their_own_codecs(cluster: Cluster) -> None:
    """A device on a slow link asks for a clustered uplink; the server honours it unless told not to."""
    def uplink_ratio(*server_flags: str) -> float:
        data = ("--data", "synthetic(size=28,samples=200)")
        cluster.server(*FAST_SERVER, *data, "--rounds", "1", "--min-clients", "1", "--model", "cnn", *server_flags)
        cluster.client("thrifty", "--uplink", "cluster(k=8)|zstd", *data)
        assert cluster.wait("server", 120) == 0 and cluster.wait("thrifty", 30) == 0
        (r,) = cluster.report()["rounds"]
        return r["dense_bytes_up"] / r["bytes_up"]
    assert uplink_ratio() > 8
    assert uplink_ratio("--no-client-codecs", "--uplink", "dense") < 1.01   # the server's own plan, raw float32

    cluster.server(*FAST_SERVER, "--rounds", "1", "--min-clients", "1")
    cluster.client("confused", "--uplink", "cluster(k=999)")
    assert cluster.wait("confused", 60) == 2
    assert "refused to let confused join" in cluster.log("confused") and "k must be an integer" in \
        cluster.log("confused")

"""The load generator against a real server: many connections, every update committed, nothing lost."""

from __future__ import annotations

import json

from conftest import FAST_SERVER, Cluster


def test_loadgen_clients_all_commit_every_round(cluster: Cluster) -> None:
    clients, rounds = 40, 2
    cluster.server(*FAST_SERVER, "--min-clients", str(clients), "--rounds", str(rounds),
                   "--uplink", "cluster(k=16)|zstd", "--concurrent-uploads", "3", "--chunk-bytes", "4096")
    out = cluster.root / "load.json"
    # the load generator's default chunk is larger: it must send the server's 4 KiB ones, or be refused
    cluster.fedsqueeze("loadgen", "loadgen", "--server", f"127.0.0.1:{cluster.port}", "--clients", str(clients),
                       "--out", str(out))
    assert cluster.wait("loadgen", 120) == 0, cluster.logs()
    assert cluster.wait("server", 60) == 0, cluster.logs()
    result = json.loads(out.read_text())
    assert result["errors"] == {}
    assert result["joined"] == result["finished"] == clients
    assert result["updates"] == clients * rounds
    assert [r["updates"] for r in result["rounds"]] == [clients] * rounds
    assert 0 < result["submit_latency_p50"] <= result["submit_latency_p99"] <= result["submit_latency_max"]
    report = cluster.report()
    assert [r["updates"] for r in report["rounds"]] == [clients] * rounds
    # every update's payload crossed the wire: the server metered at least that many bytes up
    assert report["bytes_up"] >= clients * rounds * result["update_payload_bytes"]


def test_loadgen_refuses_bad_settings(cluster: Cluster) -> None:
    cluster.fedsqueeze("loadgen", "loadgen", "--server", "127.0.0.1:9", "--clients", "0")
    assert cluster.wait("loadgen", 30) == 2
    assert "--clients must be at least 1" in cluster.log("loadgen")

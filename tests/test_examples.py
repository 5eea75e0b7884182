"""The example projects under examples/, installed from their folders (scripts/setup.sh test), run for real.

Each example is its own package; these tests use them as a user would, by the names their entry points
register, with real server and client processes over gRPC.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.v1 import federation_pb2_grpc as pb_grpc

from conftest import Cluster, free_port, wait_for
from conftest import simulate as run_to_report

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def simulate(out: Path, *args: str) -> dict[str, Any]:
    """A simulate run of an example, one training thread per client (the examples' models are small)."""
    return run_to_report(out, "--client-threads", "1", *args)


def test_the_examples_are_installed_packages_registered_by_entry_point() -> None:
    for module in ("fedsqueeze_resnet", "fedsqueeze_tabular", "fedsqueeze_fedprox"):
        origin = Path(importlib.util.find_spec(module).origin)
        assert ROOT / "examples" not in origin.parents, f"{module} is imported from the source tree: {origin}"
    listed = subprocess.run([sys.executable, "-m", "fedsqueeze.apps", "plugins"], capture_output=True, text=True,
                            timeout=60).stdout
    for name, where in (("resnet", "fedsqueeze-resnet"), ("tabular-mlp", "fedsqueeze-tabular"),
                        ("fedprox", "fedsqueeze-fedprox"), ("scaledsign", "fedsqueeze-fedprox")):
        assert any(line.split()[0] == name and f"entry point of {where}" in line for line in listed.splitlines()
                   if line.strip()), (name, listed)


RESNET = ("--model", "resnet(depth=8,width=8)", "--data", "synthetic(samples=2000,size=12)", "--clients", "2",
          "--rounds", "2", "--lr", "0.05")


@pytest.mark.parametrize("method", [
    "fedavg",
    "fedcompress(kd_epochs=1,ood_samples=200)",
    "ae(warmup=1,ae_epochs=5,chunk=1024)",
    "reft(kd_epochs=1,public_samples=200)",
])
def test_a_residual_network_with_batch_norm_under_every_method(tmp_path: Path, method: str) -> None:
    budgets = ("--budgets", "1,0.1") if method.startswith("reft") else ()
    # FedCompress's clients also evaluate its clustered model, sent in its clustered plan (no server data)
    evaluation = ("--federated-evaluation",) if method.startswith("fedcompress") else ()
    report = simulate(tmp_path, *RESNET, "--method", method, *budgets, *evaluation)
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["updates"] == 2 for r in rounds)
    assert report["final_accuracy"] > 0.3, report["final_accuracy"]   # 10 classes: chance is 0.1
    if method.startswith("fedcompress"):   # the embedding was found (input of `fc`), and scored on clients
        assert rounds[-1]["metrics"]["client_score"] > 1
        assert all(r["evaluated"] == 2 for r in rounds)
        assert report["config"]["data"] == "none"
    if method.startswith("reft"):          # the small device trained a cut ResNet: fewer FLOPs than the full one
        metrics = rounds[-1]["metrics"]
        tiers = sorted(k for k in metrics if k.endswith("_train_flops_per_sample"))
        flops = [metrics[k] for k in tiers]
        assert min(flops) < 0.2 * max(flops), metrics


def test_a_csv_federation_whose_server_holds_no_data(cluster: Cluster, tmp_path: Path) -> None:
    table = tmp_path / "cancer.csv"
    subprocess.run([str(Path(sys.executable).parent / "fedsqueeze-tabular-csv"), str(table)], check=True, timeout=120)
    metrics_port = free_port()
    cluster.server("--insecure", "--data", "none", "--input-shape", "30", "--num-classes", "2", "--model",
                   "tabular-mlp(hidden=16)", "--rounds", "2", "--min-clients", "2", "--linger", "10",
                   "--client-timeout", "3", "--metrics-listen", f"127.0.0.1:{metrics_port}")
    assert "no data: clients evaluate" in cluster.log("server")
    # A watcher that joins and falls silent: never selected once its client timeout passes, it never hears
    # Finished, so the server lingers after the last round and its status and metrics can be read then.
    with cluster.channel() as channel:
        pb_grpc.FederationStub(channel).Join(pb.JoinRequest(client_id="watcher"), timeout=10)
    wait_for(lambda: cluster.status().connected_clients == 0, 30, "the watcher to time out", interval=0.2)
    data = f"csv(path={table},label=label)"
    for i in range(2):
        cluster.client(f"site-{i}", "--data", data, "--num-partitions", "2", "--partition-index", str(i))
    status = wait_for(lambda: (s := cluster.status()).state == pb.FINISHED and s, 180, "the federation to finish",
                      interval=0.2)
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    assert cluster.wait("server", 180) == 0
    report = cluster.report()
    assert [r["evaluated"] for r in report["rounds"]] == [2, 2]
    assert report["final_accuracy"] > 0.85, report["final_accuracy"]
    # a round's downloads include the evaluation's: two models per client, against one update each
    assert all(r["dense_bytes_down"] == 2 * r["dense_bytes_up"] for r in report["rounds"])
    assert [r.evaluated for r in status.history] == [2, 2]
    assert "fedsqueeze_round_evaluated_clients 2.0" in scraped
    for i in range(2):
        assert "evaluated the global model on" in cluster.log(f"site-{i}")


def test_a_users_training_loop_and_codec_stage_from_the_python_api(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "fedprox" / "run_federation.py"), "--out",
                             str(tmp_path), "--rounds", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["config"]["trainer"] == "fedprox(mu=0.01)"
    assert report["config"]["uplink"] == "scaledsign|zstd"
    last = report["rounds"][-1]
    assert last["metrics"]["client_prox_distance"] > 0   # the user's loop ran on both clients
    assert last["dense_bytes_up"] / last["bytes_up"] > 8   # one bit per element: far below float32
    assert report["final_accuracy"] > 0.5, report["final_accuracy"]

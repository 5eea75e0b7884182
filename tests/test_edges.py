"""Edge aggregators, as processes on loopback: two levels give one level's bits; hostile partial sums are refused;
an edge killed mid-round, again and again, never stalls the root; methods that cannot relay refuse edges."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from fedsqueeze.server.aggregation import FRACTION_BITS
from fedsqueeze.server.partial_sums import expected_partial
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import EncodedModel, EncodedTensor, encode_model

from conftest import FAST_SERVER, Cluster, free_port, wait_for
from test_refusals import RAW_FLOAT32, Prober

UNIT = 2 ** FRACTION_BITS   # 1.0 on the fixed-point grid


def partition(i: int, parts: int = 4) -> tuple[str, ...]:
    return "--num-partitions", str(parts), "--partition-index", str(i)


def run_federation(root: Path, method: str, edges: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Four clients for two rounds, joined to the root (``edges=0``) or two to each of two edges; the final global
    model (its checkpoint) and the root's report."""
    root.mkdir()
    cluster = Cluster(root)
    try:
        cluster.server(*FAST_SERVER, "--rounds", "2", "--method", method, "--min-clients", str(edges or 4),
                       "--round-timeout", "120", "--state-dir", str(root / "state"))
        ports = [cluster.edge(f"edge-{j}", "--min-clients", "2") for j in range(edges)] or [cluster.port]
        clients = [f"client-{i}" for i in range(4)]
        for i, name in enumerate(clients):
            cluster.client(name, *partition(i), port=ports[i * len(ports) // 4])
        assert cluster.wait("server", 300) == 0, cluster.logs()
        for name in clients + [f"edge-{j}" for j in range(edges)]:
            assert cluster.wait(name, 60) == 0, cluster.logs()
        (checkpoint,) = (root / "state").glob("model-*.pt")
        return torch.load(checkpoint, weights_only=True), cluster.report()
    finally:
        cluster.stop()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fedavg", "fedcompress(kd_epochs=1,ood_samples=200)"])
def test_two_levels_give_the_bits_of_one(tmp_path: Path, method: str) -> None:
    one_model, one = run_federation(tmp_path / "one", method, edges=0)
    two_model, two = run_federation(tmp_path / "two", method, edges=2)
    assert one_model.keys() == two_model.keys()
    for name, value in one_model.items():
        assert torch.equal(value, two_model[name]), f"{method}: {name} differs between one level and two"
    for flat, tree in zip(one["rounds"], two["rounds"], strict=True):
        assert tree["accuracy"] == flat["accuracy"]
        assert (flat["updates"], flat["edges"], flat["edge_bytes_up"]) == (4, 0, 0)
        assert (tree["updates"], tree["selected"], tree["edges"]) == (4, 4, 2)
        assert tree["dense_bytes_up"] == flat["dense_bytes_up"] and tree["dense_bytes_down"] == flat["dense_bytes_down"]
        # The edges' links carry the clients' messages the root's link carried at one level (ids are as long).
        assert tree["edge_bytes_up"] == pytest.approx(flat["bytes_up"], rel=0.01)
        assert tree["edge_bytes_down"] == pytest.approx(flat["bytes_down"], rel=0.01)
        assert tree["bytes_down"] == pytest.approx(flat["bytes_down"] / 2, rel=0.05)   # two downloads, not four
    assert two["edge_bytes_up"] == sum(r["edge_bytes_up"] for r in two["rounds"])


def partial_update(prober: Prober, task: pb.TrainTask, sums: dict[str, np.ndarray] | EncodedModel,
                   num_examples: int = 10, **partial: Any) -> list[pb.UpdateMessage]:
    """An edge's answer to ``task``: header (PartialSum fields from ``partial``) and the sums' stream."""
    fields = {"count": 1, "bound": 1.0, "fraction_bits": FRACTION_BITS, "selected": 1, **partial}
    header = prober.header(task, num_examples=num_examples, partial=pb.PartialSum(**fields))
    encoded = sums if isinstance(sums, EncodedModel) else encode_model(sums, expected_partial(prober.specs))
    return [header, *(pb.UpdateMessage(chunk=c) for c in encoded.chunks(4096))]


@pytest.mark.slow
def test_hostile_partial_sums_are_refused_and_change_nothing(cluster: Cluster) -> None:
    cluster.server(*FAST_SERVER, *RAW_FLOAT32, "--rounds", "2", "--min-clients", "2", "--max-examples", "1000")
    with cluster.channel() as channel:
        edge = Prober(channel, client_id="edge", edge=True)
        client = Prober(channel, client_id="device")
        edge_task, client_task = edge.task(), client.task()
        assert edge_task.HasField("edge") and not client_task.HasField("edge")
        assert edge_task.edge.max_examples == 1000 and edge_task.edge.quorum == 1.0
        assert edge_task.edge.deadline_seconds > 0
        before = client.download(client_task)
        edge.download(edge_task)
        ones = {name: np.full(spec.shape, UNIT, np.int64) for name, spec in edge.specs.items()}
        zeros = {name: np.zeros(spec.shape, np.int64) for name, spec in edge.specs.items()}
        valid = encode_model(ones, expected_partial(edge.specs))
        name0 = valid.tensors[0].spec.name
        wrong_shape = EncodedModel([EncodedTensor(t.spec.__class__(t.spec.name, (*t.spec.shape, 1), "int64"),
                                                  t.codec, t.payload) if t.spec.name == name0 else t
                                    for t in valid.tensors])
        wrong_dtype = EncodedModel([EncodedTensor(t.spec.__class__(t.spec.name, t.spec.shape, "float32"),
                                                  t.codec, t.payload) for t in valid.tensors])
        cases = {
            "no updates": partial_update(edge, edge_task, ones, count=0),
            "weighs 5000": partial_update(edge, edge_task, ones, num_examples=5000),   # over 1 x --max-examples
            "weighs 2": partial_update(edge, edge_task, ones, num_examples=2, count=3, selected=3),
            "bound nan": partial_update(edge, edge_task, ones, bound=float("nan")),
            "bound inf": partial_update(edge, edge_task, ones, bound=float("inf")),
            "bound -1": partial_update(edge, edge_task, ones, bound=-1.0),
            "exceeds the partial sum's bound": partial_update(edge, edge_task, ones, bound=0.5),
            "2^-32 grid": partial_update(edge, edge_task, ones, fraction_bits=32),
            "failures of 1 selected": partial_update(edge, edge_task, ones, count=2, num_examples=20),
            "does not match the model's": partial_update(edge, edge_task, wrong_shape),
            "dtype float32": partial_update(edge, edge_task, wrong_dtype),
            "must carry its PartialSum": [edge.header(edge_task), *edge.chunks(zeros, edge_task)],
        }
        for expected, messages in cases.items():
            code, details = edge.refused(messages)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and expected in details, (expected, code, details)
        zero_update = {name: np.zeros(spec.shape, np.float32) for name, spec in client.specs.items()}
        code, details = client.refused(partial_update(client, client_task, zeros))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "only edge aggregators" in details
        # The same tasks still take honest answers: an edge's sum of three zero updates, a client's zero update.
        assert edge.submit(partial_update(edge, edge_task, zeros, num_examples=30, count=3, selected=4,
                                          failed=1, bound=0.0)).round == 1
        assert client.submit([client.header(client_task), *client.chunks(zero_update, client_task)]).round == 1
        after = client.download(client.task())   # round 2's model: round 1 changed nothing
        for name, value in before.items():
            np.testing.assert_array_equal(value, after[name])
        (record,) = wait_for(lambda: cluster.status().history, 30, "round 1's record")
        assert (record.updates, record.selected, record.failed, record.edges) == (4, 5, 1, 1)
        assert [c.edge for c in cluster.status().clients] == [False, True]   # device, edge: sorted by id


@pytest.mark.slow
def test_an_edge_holds_its_clients_to_the_roots_policies(cluster: Cluster) -> None:
    cluster.server(*FAST_SERVER, *RAW_FLOAT32, "--rounds", "1", "--min-clients", "1", "--max-update-norm", "5",
                   "--max-examples", "40")
    edge_port = cluster.edge("edge", "--min-clients", "1")
    with grpc.insecure_channel(f"127.0.0.1:{edge_port}") as channel:
        device = Prober(channel, client_id="device")
        task = device.task()
        assert not task.HasField("edge") and task.uplink_codec.startswith("dense(dtype=float32)")
        device.download(task)
        big = {name: np.full(spec.shape, 1.0, np.float32) for name, spec in device.specs.items()}
        code, details = device.refused([device.header(task), *device.chunks(big, task)])
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "exceeds the server's bound 5" in details, details
        nan = EncodedModel([EncodedTensor(t.spec, t.codec, np.full(t.spec.shape, np.nan, "<f4").tobytes())
                            for t in encode_model(big, device.uplink(task)).tensors])
        code, details = device.refused([device.header(task), *device.chunks(nan)])
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in details, details
        small = {name: np.full(spec.shape, 1e-4, np.float32) for name, spec in device.specs.items()}
        device.submit([device.header(task, num_examples=1000), *device.chunks(small, task)])
    assert cluster.wait("server", 60) == 0, cluster.logs()
    (record,) = cluster.report()["rounds"]
    assert (record["updates"], record["edges"]) == (1, 1)
    assert "weighted as 40 (--max-examples)" in cluster.log("edge")   # the root's cap, applied at the edge


@pytest.mark.slow
def test_a_method_that_cannot_relay_refuses_edges_at_join(cluster: Cluster) -> None:
    cluster.server(*FAST_SERVER, "--rounds", "1", "--method", "reft")
    cluster.fedsqueeze("edge", "edge", "--root", f"127.0.0.1:{cluster.port}", "--root-insecure", "--insecure",
                       "--listen", "127.0.0.1:0", "--edge-id", "edge")
    assert cluster.wait("edge", 60) != 0
    assert "method 'reft' cannot run through edge aggregators" in cluster.log("edge"), cluster.log("edge")


def relayed(cluster: Cluster, log: str) -> int:
    """How many root tasks an edge's log says it handed its clients."""
    return len(re.findall(r"relaying the root's task", cluster.log(log)))


@pytest.mark.slow
def test_an_edge_killed_mid_round_five_times_never_stalls_the_root(cluster: Cluster) -> None:
    timeout = 6.0
    state = cluster.root / "state"
    root_port = free_port()
    root = [*FAST_SERVER, "--rounds", "10", "--min-clients", "2", "--round-timeout", str(timeout),
            "--client-timeout", "4", "--state-dir", str(state)]
    cluster.server(*root, port=root_port)
    steady = cluster.edge("steady", "--min-clients", "2")
    victim_port = free_port()
    cluster.edge("victim", "--min-clients", "2", port=victim_port)
    for i, port in enumerate([steady, steady, victim_port, victim_port]):
        # several epochs: the victim's clients are still training when it is killed
        cluster.client(f"client-{i}", *partition(i), "--epochs", "2", "--max-backoff", "1", port=port)
    life = "victim"
    for kill in range(1, 6):
        wait_for(lambda name=life: relayed(cluster, name) >= 1, 60, f"{life} to hand out a root task")
        cluster.processes[life].send_signal(signal.SIGKILL)
        cluster.processes[life].wait()
        life = f"victim-{kill}"
        cluster.edge(life, "--min-clients", "2", port=victim_port)   # its clients come back unattended
    # The root restarts too (from its checkpoint): edges and clients join it again by themselves.
    done = len(cluster.status().history)
    assert done < 10, "the federation ended before the root could be restarted"
    cluster.processes["server"].send_signal(signal.SIGKILL)
    cluster.processes["server"].wait()
    cluster.server(*root, port=root_port, name="server-again")
    assert cluster.wait("server-again", 240) == 0, cluster.logs()
    for name in ["steady", life, *(f"client-{i}" for i in range(4))]:
        assert cluster.wait(name, 60) == 0, cluster.logs()
    rounds = cluster.report()["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, 11))
    # Never stalled: every round closed by its deadline (plus planning and evaluation), each with the steady
    # edge's clients; the victim's last life took part again with both its clients.
    assert all(r["seconds"] < timeout + 10 for r in rounds), [r["seconds"] for r in rounds]
    assert all(r["updates"] >= 2 and r["edges"] >= 1 for r in rounds), rounds
    assert rounds[-1]["edges"] == 2 and rounds[-1]["updates"] == 4, rounds[-1]
    assert relayed(cluster, life) >= 1

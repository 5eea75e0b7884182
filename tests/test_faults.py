"""Fault injection: clients and servers killed with SIGKILL at random points, over real processes and gRPC.

Each test prints its tallies (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from fedsqueeze.config import ServerConfig
from fedsqueeze.models import build_model, make_model_spec
from fedsqueeze.server.checkpoint import Checkpoint, CheckpointError, CheckpointStore
from fedsqueeze.server.coordinator import Coordinator
from fedsqueeze.server.metering import ByteMeter
from fedsqueeze.server.strategies import StrategySettings
from fedsqueeze.server.strategies.fedavg import FedAvg
from fedsqueeze.server.strategies.fedcompress import FedCompress
from fedsqueeze.v1 import federation_pb2 as pb

from conftest import FAST_SERVER, Cluster, free_port, wait_for


def committed(state: Path) -> dict[str, Any] | None:
    """The server's last checkpoint as it is on disk now (None before the first)."""
    index = state / "checkpoint.json"
    return json.loads(index.read_text()) if index.exists() else None


def test_clients_killed_at_random_points_never_stop_training(cluster: Cluster) -> None:
    """20 clients killed, four at a time, each at its own random instant after joining."""
    cluster.server(*FAST_SERVER, "--rounds", "10000", "--min-clients", "2", "--quorum", "0.3",
                   "--round-timeout", "10", "--client-timeout", "3")
    steady = [cluster.client(f"steady-{i}") for i in range(2)]
    rng = random.Random(20)
    tallies: Counter[str] = Counter()
    for batch in range(5):
        names = [f"victim-{batch}-{i}" for i in range(4)]
        victims = [cluster.client(name, "--epochs", "3") for name in names]
        wait_for(lambda names=names: all("joined" in cluster.log(n) for n in names), 60, f"victims of batch {batch}")
        rounds_before = len(cluster.status().history)
        joined = time.monotonic()
        for delay, victim in sorted(zip((rng.uniform(0.0, 3.0) for _ in victims), victims), key=lambda x: x[0]):
            time.sleep(max(0.0, joined + delay - time.monotonic()))
            state = pb.FederationState.Name(cluster.status().state).lower()
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            tallies[f"killed while the server was {state}"] += 1
        wait_for(lambda target=rounds_before + 2: len(cluster.status().history) >= target, 60,
                 f"two more rounds after batch {batch}")
        tallies["kills after which training went on"] += len(victims)
    history = cluster.status().history
    assert all(p.poll() is None for p in steady), "a steady client died"
    assert [r.round for r in history] == list(range(1, len(history) + 1))
    assert all(math.isfinite(r.loss) and r.updates >= 1 for r in history)
    assert history[-1].accuracy > 0.9
    cluster.processes["server"].send_signal(signal.SIGTERM)
    assert cluster.wait("server", 60) == 0
    tallies["rounds"] = len(history)
    print(f"\nclient kill -9 tallies: {dict(tallies)}")
    assert tallies["kills after which training went on"] == 20


def test_server_killed_at_random_points_resumes_from_its_last_committed_round(cluster: Cluster) -> None:
    state, port = cluster.root / "state", free_port()
    server_args = [*FAST_SERVER, "--rounds", "10000", "--min-clients", "2", "--state-dir", str(state)]
    cluster.server(*server_args, port=port, name="server-0")
    clients = [cluster.client(f"edge-{i}", "--max-backoff", "1") for i in range(2)]
    rng = random.Random(10)
    seen: dict[int, dict[str, Any]] = {}   # every round record ever checkpointed, by round
    tallies: Counter[str] = Counter()
    for run in range(1, 11):
        start = (committed(state) or {"round": 0})["round"]
        wait_for(lambda start=start: (committed(state) or {"round": 0})["round"] > start, 60,
                 f"a new committed round before kill {run}")
        time.sleep(rng.uniform(0.0, 1.5))
        before = committed(state)
        cluster.processes[f"server-{run - 1}"].send_signal(signal.SIGKILL)
        cluster.processes[f"server-{run - 1}"].wait()
        after = committed(state)   # what a restart will find: the checkpoint at the instant of death
        assert after is not None and after["round"] >= before["round"]
        for record in after["history"]:
            assert seen.setdefault(int(record["round"]), record) == record, "a committed round was rewritten"
        cluster.server(*server_args, port=port, name=f"server-{run}")
        resumed = f"resumed from {state} after round {after['round']}"
        wait_for(lambda name=f"server-{run}", line=resumed: line in cluster.log(name), 60, f"restart {run} to resume")
        tallies["restarts that resumed at the last committed round"] += 1
    wait_for(lambda: len(cluster.status().history) > max(seen) + 1, 60, "rounds after the last restart")
    history = cluster.status().history
    assert [r.round for r in history] == list(range(1, len(history) + 1)), "a round was lost or repeated"
    assert all(p.poll() is None for p in clients), "a client had to be restarted"
    tallies["rounds"] = len(history)
    tallies["client restarts"] = 0
    print(f"\nserver kill -9 tallies: {dict(tallies)}")
    assert tallies["restarts that resumed at the last committed round"] == 10


def test_checkpoints_round_trip_and_refuse_another_runs_state(tmp_path: Path) -> None:
    spec = make_model_spec("cnn(width=4)", (1, 28, 28), 10)
    model = build_model(spec, seed=0)
    store = CheckpointStore(tmp_path, "fedavg", spec)
    assert store.load() is None
    history = [pb.RoundMetrics(round=1, accuracy=0.5, bytes_up=1 << 40, metrics={"k": 8.0})]
    store.save(Checkpoint(1, model.state_dict(), history, 1 << 40, 7, {"k": 9}))
    store.save(Checkpoint(2, model.state_dict(), history, 1 << 41, 8, {"k": 10}))
    loaded = store.load()
    assert loaded is not None and loaded.round == 2 and loaded.history == history
    assert (loaded.bytes_up, loaded.bytes_down, loaded.strategy) == (1 << 41, 8, {"k": 10})
    assert all(torch.equal(loaded.model[k], v) for k, v in model.state_dict().items())
    assert [p.name for p in tmp_path.glob("model-*.pt")] == ["model-2.pt"]
    with pytest.raises(CheckpointError, match="another method"):
        CheckpointStore(tmp_path, "fedcompress", spec).load()
    with pytest.raises(CheckpointError, match="another model"):
        CheckpointStore(tmp_path, "fedavg", make_model_spec("cnn(width=8)", (1, 28, 28), 10)).load()
    (tmp_path / "model-2.pt").write_bytes(b"torn")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        store.load()


def test_a_resumed_server_continues_its_round_metrics(tmp_path: Path) -> None:
    spec = make_model_spec("cnn(width=4)", (1, 28, 28), 10)
    history = [pb.RoundMetrics(round=r, accuracy=0.4 + r / 10, updates=3) for r in (1, 2)]
    CheckpointStore(tmp_path, "fedavg", spec).save(Checkpoint(2, build_model(spec).state_dict(), history, 100, 200, {}))
    settings = StrategySettings(spec, "synthetic", pb.Hyperparameters(epochs=1), "dense", "dense")
    coordinator = Coordinator(ServerConfig(), FedAvg(build_model(spec), settings), spec, lambda m: (0.0, 0.0),
                              ByteMeter(), CheckpointStore(tmp_path, "fedavg", spec))
    assert coordinator.resume() == 2
    sample = coordinator.metrics.registry.get_sample_value
    assert sample("fedsqueeze_rounds_total") == 2 and sample("fedsqueeze_updates_total") == 6
    assert sample("fedsqueeze_round_accuracy") == pytest.approx(0.6)
    assert sample("fedsqueeze_bytes_total", {"direction": "up"}) == 100


def test_fedcompress_keeps_its_k_schedule_across_a_restart() -> None:
    spec = make_model_spec("cnn(width=4)", (1, 28, 28), 10)
    settings = StrategySettings(spec, "fashion-mnist", pb.Hyperparameters(epochs=1), "dense", "dense",
                                params={"k0": 4})
    first = FedCompress(build_model(spec), settings)
    for accuracy in (0.5, 0.5, 0.5, 0.5, 0.5):
        first.schedule.record(accuracy, 3.0)
    assert first.schedule.k == 5
    second = FedCompress(build_model(spec), settings)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert second.schedule.k == 5 and second.schedule.history == first.schedule.history

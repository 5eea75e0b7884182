"""The coordinator folds updates on its strategy thread: a round's aggregation must include every committed fold."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import torch

from fedsqueeze.config import ServerConfig
from fedsqueeze.models import build_model, make_model_spec
from fedsqueeze.server.aggregation import WeightedSum
from fedsqueeze.server.coordinator import Coordinator, Upload
from fedsqueeze.server.metering import ByteMeter
from fedsqueeze.server.strategies import ClientUpdate, StrategySettings
from fedsqueeze.server.strategies.fedavg import FedAvg
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import encode_model

CLIENTS = 6


class SlowFolds(FedAvg):
    """FedAvg whose folds take a while, and which records the thread each fold and the aggregation ran on."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.fold_threads: set[str] = set()
        self.aggregate_thread = ""

    def accumulate(self, accumulator: WeightedSum, update: ClientUpdate) -> None:
        time.sleep(0.05)
        self.fold_threads.add(threading.current_thread().name)
        super().accumulate(accumulator, update)

    def aggregate(self, round_number: int, accumulator: WeightedSum,
                  client_metrics: dict[str, float]) -> dict[str, float]:
        self.aggregate_thread = threading.current_thread().name
        return super().aggregate(round_number, accumulator, client_metrics)


def test_aggregation_includes_every_fold_still_running_when_the_round_closes() -> None:
    spec = make_model_spec("mlp(hidden=8)", (1, 28, 28), 10)
    settings = StrategySettings(spec, "synthetic", pb.Hyperparameters(epochs=1), "dense", "dense")
    strategy = SlowFolds(build_model(spec, seed=0), settings)
    before = {name: value.clone() for name, value in strategy.model.state_dict().items()}
    config = ServerConfig(rounds=1, min_clients=CLIENTS, linger=0.0)
    coordinator = Coordinator(config, strategy, spec, lambda model: (0.0, 0.0), ByteMeter())
    deltas = [{name: np.full(value.shape, i + 1, np.float32) for name, value in before.items()}
              for i in range(CLIENTS)]

    async def client(i: int) -> pb.SubmitReply:
        session = coordinator.join(pb.JoinRequest(client_id=f"c{i}")).session_id
        task = await coordinator.next_task(session, 30.0)
        header = pb.UpdateHeader(session_id=session, task_id=task.train.task_id, round=task.train.round,
                                 num_examples=10 * (i + 1))
        upload = coordinator.begin_upload(header)
        return await coordinator.commit(upload, encode_model(deltas[i], upload.expected).tensors)

    async def federation() -> list[pb.SubmitReply]:
        loop = asyncio.create_task(coordinator.run())
        replies = await asyncio.gather(*(client(i) for i in range(CLIENTS)))
        await asyncio.wait_for(loop, 60)
        return replies

    replies = asyncio.run(federation())
    assert [r.round for r in replies] == [1] * CLIENTS
    assert coordinator.history[0].updates == CLIENTS
    # the last commit closed the round while up to CLIENTS folds were still queued; all of them count
    weights = np.arange(1, CLIENTS + 1) * 10
    expected_mean = float((weights * np.arange(1, CLIENTS + 1)).sum() / weights.sum())
    for name, value in strategy.model.state_dict().items():
        torch.testing.assert_close(value, before[name] + expected_mean)
    assert strategy.fold_threads == {strategy.aggregate_thread}
    assert strategy.aggregate_thread.startswith("strategy")


def test_a_round_settles_when_its_last_outstanding_task_commits_or_leaves() -> None:
    """Leaves, aborted uploads and commits in any mix: the round closes exactly when nothing is outstanding."""
    spec = make_model_spec("mlp(hidden=8)", (1, 28, 28), 10)
    settings = StrategySettings(spec, "synthetic", pb.Hyperparameters(epochs=1), "dense", "dense")
    strategy = FedAvg(build_model(spec, seed=0), settings)
    coordinator = Coordinator(ServerConfig(rounds=1, min_clients=4, linger=0.0), strategy, spec,
                              lambda model: (0.0, 0.0), ByteMeter())
    zeros = {name: np.zeros(value.shape, np.float32) for name, value in strategy.model.state_dict().items()}

    async def scenario() -> list[tuple[int, bool]]:
        sessions = {f"c{i}": coordinator.join(pb.JoinRequest(client_id=f"c{i}")).session_id for i in range(4)}
        loop = asyncio.create_task(coordinator.run())
        tasks = {name: (await coordinator.next_task(session, 30.0)).train for name, session in sessions.items()}
        rnd = coordinator.current
        expected = rnd.assignments["c0"].expected
        seen = []

        def upload(name: str) -> Upload:
            return coordinator.begin_upload(pb.UpdateHeader(session_id=sessions[name], task_id=tasks[name].task_id,
                                                            round=1, num_examples=5))

        def settled() -> None:
            seen.append((rnd.outstanding, rnd.closed.is_set()))

        upload("c0").release()                 # stream failed: the task is given back, still outstanding
        settled()
        coordinator.leave(sessions["c1"], "shutting down")
        settled()
        await coordinator.commit(upload("c0"), encode_model(zeros, expected).tensors)
        settled()
        late = upload("c2")
        coordinator.leave(sessions["c2"], "left mid-upload")   # its stream still completes and counts
        settled()
        await coordinator.commit(late, encode_model(zeros, expected).tensors)
        settled()
        coordinator.leave(sessions["c3"], "gone")
        settled()
        await asyncio.wait_for(loop, 60)
        assert rnd.outstanding == sum(a.status in ("assigned", "uploading") for a in rnd.assignments.values())
        return seen

    seen = asyncio.run(scenario())
    assert seen == [(4, False), (3, False), (2, False), (1, False), (1, False), (0, True)]
    assert coordinator.history[0].updates == 2

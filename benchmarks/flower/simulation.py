"""Flower's Simulation Engine (Ray backend) on fedsqueeze's task, for ``benchmarks/ray_simulation.py``.

The same model and initial weights, data partition, local training (the loop of ``fedavg.py``'s
``TrainingClient``, which is fedsqueeze's FedAvg trainer), cohort sampling by count, and per-round server
evaluation on the test split as fedsqueeze's Ray backend. Virtual clients are built per message by
``client_fn`` from a partition id; each Ray actor process loads the train split and the partition once.

    .venv-flower/bin/python benchmarks/flower/simulation.py --population 1000 --per-round 100 --rounds 5 \
        --out flower.json

Writes per-round accuracy and seconds (from the round's sampling to its evaluated model, as fedsqueeze's
round clock), clients trained per second of rounds, and the driver's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import warnings
from pathlib import Path

import flwr as fl
import numpy as np
import torch
from fedavg import TrainingClient, accuracy, cached_partition, get_weights, make_model, set_weights
from flwr.client import ClientApp
from flwr.common import Context
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.simulation import run_simulation

from fedsqueeze.data.datasets import load_split

warnings.filterwarnings("ignore", category=DeprecationWarning)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--population", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpus", type=float, default=1.0, help="client_resources num_cpus")
    parser.add_argument("--out", default="flower-simulation.json")
    args = parser.parse_args()

    test = load_split(args.data, "test").select()
    model = make_model(args.model, test, args.seed)
    rounds: list[dict[str, float]] = []
    started: dict[int, float] = {}
    trained: dict[int, int] = {}
    began = time.monotonic()

    def client_fn(context: Context) -> fl.client.Client:
        torch.set_num_threads(max(1, int(args.cpus)))
        index = int(context.node_config["partition-id"])
        raw, parts = cached_partition(args.data, args.partition, args.population, args.seed)
        data = raw.select(parts[index])
        return TrainingClient(make_model(args.model, data, args.seed), data, f"client-{index}").to_client()

    class ClockedFedAvg(fl.server.strategy.FedAvg):
        """FedAvg whose round clock starts once the round's clients are sampled, as fedsqueeze's does."""

        def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
            instructions = super().configure_fit(server_round, parameters, client_manager)
            started[server_round] = time.monotonic()
            return instructions

        def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
            trained[server_round] = len(results)
            return super().aggregate_fit(server_round, results, failures)

    def evaluate(server_round: int, weights: list[np.ndarray], config: dict) -> tuple[float, dict[str, float]]:
        set_weights(model, weights)
        acc, loss = accuracy(model, test)
        if server_round > 0:
            rounds.append({"round": server_round, "accuracy": acc, "loss": loss, "clients_trained":
                           trained.get(server_round, 0), "seconds": time.monotonic() - started[server_round]})
        return loss, {"accuracy": acc}

    def fit_config(server_round: int) -> dict[str, float]:
        return {"round": server_round, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                "momentum": args.momentum}

    def server_fn(context: Context) -> ServerAppComponents:
        strategy = ClockedFedAvg(
            fraction_fit=args.per_round / args.population, fraction_evaluate=0.0, min_fit_clients=args.per_round,
            min_evaluate_clients=0, min_available_clients=args.population, evaluate_fn=evaluate,
            on_fit_config_fn=fit_config, initial_parameters=fl.common.ndarrays_to_parameters(get_weights(model)))
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=args.rounds))

    run_simulation(server_app=ServerApp(server_fn=server_fn), client_app=ClientApp(client_fn=client_fn),
                   num_supernodes=args.population,
                   backend_config={"client_resources": {"num_cpus": args.cpus, "num_gpus": 0.0},
                                   "init_args": {"include_dashboard": False, "log_to_driver": False}})
    round_seconds = sum(r["seconds"] for r in rounds)
    total = sum(r["clients_trained"] for r in rounds)
    Path(args.out).write_text(json.dumps({
        "system": "flower", "population": args.population, "clients_per_round": args.per_round,
        "rounds": rounds, "final_accuracy": rounds[-1]["accuracy"] if rounds else None,
        "clients_trained": total, "round_seconds": round_seconds, "seconds": time.monotonic() - began,
        "clients_per_second": total / round_seconds if round_seconds else None,
        "driver_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Flower FedAvg on fedsqueeze's task: the same model, initial weights, data partition, local training and test set.

Runs in its own virtualenv (``benchmarks/flower/setup.sh``: flwr needs protobuf < 7, fedsqueeze's stubs 7),
where fedsqueeze is installed without dependencies for its protobuf-free parts: the model builders, the
dataset loaders and the partitioner. Flower's legacy gRPC API (``start_server`` / ``start_client``, deprecated
since flwr 1.13 in favour of SuperLink/SuperNode but still shipped) is the closest match to fedsqueeze's
shape: one server process, one long-lived process per device.

    python benchmarks/flower/fedavg.py server --listen 0.0.0.0:8080 --clients 10 --rounds 30 --out report.json
    python benchmarks/flower/fedavg.py client --server 10.201.0.1:8080 --client-id client-00 --index 0 ...

The server evaluates the global model on the test split after every round (as fedsqueeze's does) and
writes ``report.json`` with per-round accuracy and seconds. The client trains exactly as fedsqueeze's
FedAvg trainer does (``client/trainers/local.py``): SGD with momentum over shuffled mini-batches, its
shuffling seeded by its id and the round. That loop is repeated here, not imported, because fedsqueeze's
trainer modules import its protobuf stubs.
"""

from __future__ import annotations

import argparse
import json
import time
import types
import warnings
import zlib
from functools import cache
from pathlib import Path

import flwr as fl
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedsqueeze.data.datasets import Dataset, load_split
from fedsqueeze.data.partition import partition
from fedsqueeze.models import build_model
from fedsqueeze.specs import parse_spec

warnings.filterwarnings("ignore", category=DeprecationWarning)


def make_model(model: str, dataset: Dataset, seed: int) -> nn.Module:
    """The architecture and initial weights fedsqueeze's server builds (``make_model_spec`` + ``build_model``)."""
    name, params = parse_spec(model)
    config = {**params, "input_shape": list(dataset.input_shape), "num_classes": dataset.num_classes}
    return build_model(types.SimpleNamespace(name=name, config_json=json.dumps(config, sort_keys=True)), seed=seed)


@cache
def cached_partition(data: str, scheme: str, parts: int, seed: int) -> tuple[Dataset, list[np.ndarray]]:
    """The train split and its partition, once per process (simulation.py's actors build many clients)."""
    raw = load_split(data, "train")
    return raw, partition(raw.labels, scheme, parts, seed)


def get_weights(model: nn.Module) -> list[np.ndarray]:
    return [v.detach().numpy().copy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    keys = list(model.state_dict())
    model.load_state_dict({k: torch.from_numpy(np.asarray(w)) for k, w in zip(keys, weights, strict=True)})


def accuracy(model: nn.Module, data: Dataset) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(data.x)
        return float((logits.argmax(1) == data.y).float().mean()), float(F.cross_entropy(logits, data.y))


def serve(args: argparse.Namespace) -> None:
    test = load_split(args.data, "test").select()
    model = make_model(args.model, test, args.seed)
    rounds: list[dict[str, float]] = []
    started: dict[int, float] = {}

    def fit_config(server_round: int) -> dict[str, float]:
        return {"round": server_round, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                "momentum": args.momentum}

    class ClockedFedAvg(fl.server.strategy.FedAvg):
        """FedAvg whose round clock starts once the round's clients are sampled, as fedsqueeze's does.

        FedAvg asks ``fit_config`` before it waits for ``min_fit_clients``, so a clock started there would
        put the clients' start-up (about 12 s for 10 clients on 2 cores) into round 1.
        """

        def configure_fit(self, server_round: int, parameters: fl.common.Parameters,
                          client_manager: fl.server.ClientManager) -> list:
            instructions = super().configure_fit(server_round, parameters, client_manager)
            started[server_round] = time.monotonic()
            return instructions

    def evaluate(server_round: int, weights: list[np.ndarray], config: dict) -> tuple[float, dict[str, float]]:
        set_weights(model, weights)
        acc, loss = accuracy(model, test)
        if server_round > 0:   # round 0 is the initial model, before any training
            rounds.append({"round": server_round, "accuracy": acc, "loss": loss,
                           "seconds": time.monotonic() - started[server_round]})
            Path(args.out).write_text(json.dumps({"system": "flower", "rounds": rounds,
                                                  "final_accuracy": acc}, indent=2) + "\n")
        return loss, {"accuracy": acc}

    strategy = ClockedFedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=args.clients, min_evaluate_clients=0,
        min_available_clients=args.clients, evaluate_fn=evaluate,
        on_fit_config_fn=fit_config,
        initial_parameters=fl.common.ndarrays_to_parameters(get_weights(model)))
    # Flower's round runs each client's fit in a thread pool of min(32, cores + 4) by default: 6 here, so on slow
    # links 4 of 10 clients would wait for a second wave. Every client gets its own worker, as in fedsqueeze's row.
    server = fl.server.Server(client_manager=fl.server.SimpleClientManager(), strategy=strategy)
    server.set_max_workers(args.clients)
    fl.server.start_server(server_address=args.listen, server=server,
                           config=fl.server.ServerConfig(num_rounds=args.rounds))


class TrainingClient(fl.client.NumPyClient):
    def __init__(self, model: nn.Module, data: Dataset, client_id: str) -> None:
        self.model, self.data = model, data
        self.seed = zlib.crc32(client_id.encode())

    def get_parameters(self, config: dict) -> list[np.ndarray]:
        return get_weights(self.model)

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        set_weights(self.model, parameters)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(config["round"]))
        optimizer = torch.optim.SGD(self.model.parameters(), lr=config["lr"], momentum=config["momentum"])
        self.model.train()
        for _ in range(int(config["epochs"])):
            order = torch.randperm(len(self.data), generator=generator)
            for start in range(0, len(order), int(config["batch_size"])):
                batch = order[start:start + int(config["batch_size"])]
                optimizer.zero_grad()
                F.cross_entropy(self.model(self.data.x[batch]), self.data.y[batch]).backward()
                optimizer.step()
        return get_weights(self.model), len(self.data), {}


def run_client(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    raw = load_split(args.data, "train")
    data = raw.select(partition(raw.labels, args.partition, args.partitions, args.seed)[args.index])
    model = make_model(args.model, data, args.seed)
    fl.client.start_client(server_address=args.server,
                           client=TrainingClient(model, data, args.client_id).to_client())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--listen", default="0.0.0.0:8080")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--out", default="report.json")
    parser.add_argument("--server", default="127.0.0.1:8080")
    parser.add_argument("--client-id", default="client-00")
    parser.add_argument("--index", type=int, default=0, help="this client's partition")
    parser.add_argument("--partitions", type=int, default=10)
    parser.add_argument("--partition", default="iid")
    args = parser.parse_args()
    serve(args) if args.role == "server" else run_client(args)


if __name__ == "__main__":
    main()

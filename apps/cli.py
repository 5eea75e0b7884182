"""The ``fedsqueeze`` command: server, client, edge, simulate, loadgen, status, health, certs, plugins.

Each command's flags come from its config dataclass (``fedsqueeze.config``);
heavy modules are imported inside the command that needs them, so ``status``
and ``health`` start quickly.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedsqueeze.config import (
    ClientConfig,
    EdgeConfig,
    LoadConfig,
    ServerConfig,
    SimulateConfig,
    add_arguments,
    option,
    resolve,
)
from fedsqueeze.logs import setup_logging


@dataclass
class OperatorConfig:
    server: str = option("localhost:50051", "server address host:port")
    insecure: bool = option(False, "plaintext gRPC instead of TLS")
    root_certificates: str | None = option(None, "PEM CA bundle that signs the server's certificate")
    token_file: str | None = option(None, "file holding the operator's enrolment token (servers with --tokens)")
    client_cert: str | None = option(None, "PEM client certificate (servers with --require-client-certs)")
    client_key: str | None = option(None, "PEM private key of --client-cert")


def _server(args: argparse.Namespace) -> int:
    config = resolve(ServerConfig, args, "server")
    setup_logging(config.log_level, config.log_format)
    from fedsqueeze.server import run_server

    run_server(config)
    return 0


def _client(args: argparse.Namespace) -> int:
    config = resolve(ClientConfig, args, "client")
    setup_logging(config.log_level, config.log_format)
    from fedsqueeze.client import run_client

    return run_client(config)


def _edge(args: argparse.Namespace) -> int:
    config = resolve(EdgeConfig, args, "edge")
    setup_logging(config.log_level, config.log_format)
    from fedsqueeze.server.edge import run_edge

    run_edge(config)
    return 0


def _simulate(args: argparse.Namespace) -> int:
    config = resolve(SimulateConfig, args, "simulate")
    setup_logging(config.log_level, config.log_format)
    from fedsqueeze.apps.simulate import simulate

    return simulate(config)


def _loadgen(args: argparse.Namespace) -> int:
    config = resolve(LoadConfig, args, "loadgen")
    setup_logging(config.log_level, config.log_format)
    from fedsqueeze.apps.loadgen import main

    return main(config)


def _ask_server(args: argparse.Namespace, call: Callable[[Any], Any]) -> Any:
    """Run ``call(channel)`` against the server the operator flags name; None (and a message) on failure."""
    import grpc

    from fedsqueeze.transport import open_channel

    config = resolve(OperatorConfig, args, "operator")
    with open_channel(config.server, config.insecure, config.root_certificates, config.token_file,
                      config.client_cert, config.client_key) as channel:
        try:
            return call(channel)
        except grpc.RpcError as exc:
            print(f"{config.server}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return None


def _status(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from fedsqueeze.v1 import federation_pb2 as pb
    from fedsqueeze.v1 import federation_pb2_grpc as pb_grpc

    status = _ask_server(args, lambda channel: pb_grpc.OperatorStub(channel).GetStatus(
        pb.StatusRequest(include_history=args.history), timeout=10))
    if status is None:
        return 1
    if args.json:
        print(json.dumps(json_format.MessageToDict(status, preserving_proto_field_name=True), indent=2))
        return 0
    print(f"state      {pb.FederationState.Name(status.state).lower()}")
    print(f"method     {status.method}")
    print(f"round      {status.round} of {status.total_rounds}")
    print(f"clients    {status.connected_clients} connected")
    print(f"bytes      up {status.bytes_up:,}  down {status.bytes_down:,}")
    rounds = status.history if args.history else ([status.last_round] if status.HasField("last_round") else [])
    for r in rounds:
        print(f"round {r.round:>4}  accuracy {r.accuracy:.4f}  loss {r.loss:.4f}  up {r.bytes_up:,}  "
              f"down {r.bytes_down:,}  {r.updates}/{r.selected} updates  {r.seconds:.1f} s")
    return 0


def _health(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    reply = _ask_server(args, lambda channel: health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=args.service), timeout=5))
    if reply is None:
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(name)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _plugins(args: argparse.Namespace) -> int:
    """Every model, dataset, codec stage, training loop and method a spec may name, and where each comes from."""
    from fedsqueeze.codecs import registered_stages
    from fedsqueeze.config import BUILTIN_LOOPS
    from fedsqueeze.data.datasets import builtin_datasets
    from fedsqueeze.methods import BUILTIN_PARAMS
    from fedsqueeze.models import builtin_models
    from fedsqueeze.plugins import listing

    kinds = {"models": (builtin_models(), "--model"), "datasets": (builtin_datasets(), "--data"),
             "codecs": (dict.fromkeys(registered_stages()), "--uplink/--downlink"),
             "trainers": (dict.fromkeys(BUILTIN_LOOPS), "--trainer"), "methods": (BUILTIN_PARAMS, "--method")}
    for kind, (builtins, flag) in kinds.items():
        print(f"{kind} ({flag}, entry points fedsqueeze.{kind}):")
        for name, origin in listing(kind, builtins):
            print(f"  {name:<20} {origin}")
    print("all but codec stages may also be import paths: --model 'mypkg.models:build(hidden=32)'")
    return 0


def _methods(args: argparse.Namespace) -> int:
    """Each method's parameters with their types, defaults and meaning."""
    from fedsqueeze.methods import BUILTIN_PARAMS, method_plugin
    from fedsqueeze.plugins import listing

    methods = dict(BUILTIN_PARAMS)
    for name, _ in listing("methods", {}):
        methods[name] = method_plugin(name).target.params
    for name, cls in methods.items():
        if args.method and name != args.method:
            continue
        rows = cls.describe()
        print(f"{name}{'' if rows else ' (no parameters of its own)'}")
        for key, kind, default, text in rows:
            print(f"  {key:<16} {kind:<10} {default!s:<28} {text}")
    print('set them in the method spec: --method "fedcompress(k0=8,kd_epochs=2)"')
    return 0


def _certs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedsqueeze.certs import make_certificates

    if args.keep_existing and (Path(args.out) / "tokens.json").exists() and (Path(args.out) / "ca.pem").exists():
        print(f"{args.out} already holds credentials; keeping them")
        return 0
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    written = make_certificates(Path(args.out), hosts, clients, args.days, args.token_days)
    print(f"wrote {len(written)} files to {args.out}: ca.pem, server.pem/.key for {', '.join(hosts)}; "
          f"tokens.json for the server; a .token (and .pem/.key) per client: {', '.join(clients + ['operator'])}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedsqueeze", description="Federated learning over gRPC, bandwidth first.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, cls, run, text in (
        ("server", ServerConfig, _server, "run the aggregation server"),
        ("client", ClientConfig, _client, "run a client daemon (an edge device)"),
        ("edge", EdgeConfig, _edge, "run an edge aggregator: a server to its clients, sending the root their sums"),
        ("simulate", SimulateConfig, _simulate, "run a server and N client processes on this machine"),
        ("loadgen", LoadConfig, _loadgen, "load-test a server with many lightweight clients (pre-made updates)"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        add_arguments(sub, cls)
        sub.set_defaults(run=run)

    status = commands.add_parser("status", help="show a federation's state", description="show a federation's state")
    add_arguments(status, OperatorConfig)
    status.add_argument("--history", action="store_true", help="every finished round, not just the last")
    status.add_argument("--json", action="store_true", help="print the FederationStatus message as JSON")
    status.set_defaults(run=_status)

    health = commands.add_parser("health", help="gRPC health check (exit 0 when serving)",
                                 description="gRPC health check (exit 0 when serving)")
    add_arguments(health, OperatorConfig)
    health.add_argument("--service", default="", help="service to check (default: the whole server)")
    health.set_defaults(run=_health)

    certs = commands.add_parser("certs", help="make a development CA, server certificate and client tokens",
                                description="make a development CA, server certificate and client tokens")
    certs.add_argument("--out", required=True, help="folder to write them to")
    certs.add_argument("--hosts", default="server,localhost,127.0.0.1",
                       help="comma-separated host names and IP addresses the server certificate is valid for")
    certs.add_argument("--clients", default="", help="comma-separated client ids to enrol")
    certs.add_argument("--days", type=int, default=365, help="validity in days")
    certs.add_argument("--token-days", type=float, default=0,
                       help="enrolment tokens expire after this many days (0: never)")
    certs.add_argument("--keep-existing", action="store_true",
                       help="do nothing when the folder already holds a CA and tokens (for start-up scripts)")
    certs.set_defaults(run=_certs)

    plugins = commands.add_parser("plugins", help="list the models, datasets, codecs, loops and methods specs "
                                  "may name", description="list what specs may name, "
                                  "and where each comes from (built in or an installed package's entry point)")
    plugins.set_defaults(run=_plugins)

    methods = commands.add_parser("methods", help="list each method's parameters, with defaults",
                                  description="list each method's parameters (set in the --method spec), with "
                                  "their types, defaults and meaning")
    methods.add_argument("method", nargs="?", default="", help="only this method")
    methods.set_defaults(run=_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fedsqueeze {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

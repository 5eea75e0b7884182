"""Configuration of the server, the client daemon and simulate.

Each command's settings are one dataclass. Every field is, at once, a flag
(``min_clients`` -> ``--min-clients``), a key of the command's table in a TOML
file (``--config``: ``[server]``, ``[client]``, ``[edge]``, ``[simulate]``) and an
environment variable (``FEDSQUEEZE_MIN_CLIENTS``). Precedence, highest first:
flag, environment, TOML file, default.
"""

import argparse
import os
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from fedsqueeze.limits import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES

ENV_PREFIX = "FEDSQUEEZE_"
# Lossless by default: float32 byte planes through zstd cost 15-24% fewer bytes than raw float32 for a few ms.
LOSSLESS_CODEC = "dense(shuffle=true)|zstd"
OPTIMIZERS = ("sgd", "adam")   # what the client trainers build from Hyperparameters.optimizer
BUILTIN_LOOPS = ("local",)      # the training loops fedsqueeze.client.loops holds (plug-ins besides)


def option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class ServingConfig:
    """What every process serving the Federation service takes: a server, and an edge (its clients' server)."""

    listen: str = option("0.0.0.0:50051", "host:port to serve on (port 0 picks a free port)")
    port_file: str | None = option(None, "write the bound port to this file once serving")
    insecure: bool = option(False, "serve plaintext gRPC instead of TLS; says so loudly")
    tls_cert: str | None = option(None, "PEM certificate chain of the server (TLS)")
    tls_key: str | None = option(None, "PEM private key of the server (TLS)")
    client_ca: str | None = option(None, "PEM CA bundle that signs client certificates (with "
                                   "--require-client-certs; fedsqueeze certs writes ca.pem)")
    require_client_certs: bool = option(False, "mutual TLS: refuse connections without a client certificate "
                                        "signed by --client-ca; with --tokens its common name must be the token's")
    metrics_listen: str | None = option(None, "host:port to serve Prometheus metrics on (/metrics), e.g. "
                                        "0.0.0.0:9464; off when not given")
    tokens: str | None = option(None, "JSON file of enrolled clients {client id: sha256 of its token}: every call "
                                "must then carry an enrolled token and act only as its client (fedsqueeze certs)")
    max_clients: int = option(10_000, "most distinct client ids the server admits (a cap against floods of "
                              "made-up ids; raise it for larger fleets)")
    joins_per_minute: int = option(30, "most Joins one client id may make per minute")
    concurrent_uploads: int = option(8, "update streams read and decoded at once; more wait their turn (server "
                                     "memory grows with this, not with the clients connected)")
    upload_stall_seconds: float = option(30.0, "an upload that sends nothing for this long, or that moves less "
                                         "than --min-upload-rate after it, loses its turn and its task "
                                         "(DEADLINE_EXCEEDED)")
    min_upload_rate: float = option(1024.0, "bytes per second an upload must average once it has held its turn "
                                    "for --upload-stall-seconds")
    poll_timeout: float = option(20.0, "longest a GetTask long-poll is held, seconds")
    client_timeout: float = option(60.0, "seconds without a call after which a client is not selected")
    linger: float = option(10.0, "seconds to keep telling clients the federation finished before exiting")
    chunk_bytes: int = option(DEFAULT_CHUNK_BYTES, f"payload bytes per streamed chunk, sent and accepted: "
                              f"clients learn it when they join and send no larger ones (<= {MAX_CHUNK_BYTES})")
    malloc_arenas: int = option(2, "glibc malloc arenas for the server process (0: glibc's default, 8 per core); "
                                "few keep freed update buffers reusable across threads (MALLOC_ARENA_MAX wins)")
    log_level: str = option("INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = option("text", "text, or json for one JSON object per line")


@dataclass
class ServerConfig(ServingConfig):
    data: str = option("fashion-mnist", "dataset spec; the server evaluates on its test split. none: the server "
                       "holds no data (give --input-shape and --num-classes) and clients evaluate each round's "
                       "model on their held-out share (federated evaluation)")
    input_shape: str = option("", "with --data none: one example's shape, comma-separated, e.g. 30 or 1,28,28")
    num_classes: int | None = option(None, "with --data none: the number of classes (0: a regression task, "
                                     "one output per example, squared error)")
    fraction_evaluate: float = option(1.0, "with --data none: fraction of connected clients asked to evaluate "
                                      "each round's model (each evaluation costs one model download)")
    model: str = option("cnn", "model spec, e.g. cnn or cnn(width=16) or mlp(hidden=512)")
    method: str = option("fedavg", "federated method (server strategy + client trainer), e.g. "
                         "fedcompress(k0=8); fedsqueeze methods lists them and their parameters")
    trainer: str = option("local", "the clients' local training loop: local (mini-batch SGD or Adam on "
                          "cross-entropy), or a plug-in, e.g. mypkg.loops:fedprox(mu=0.01)")
    rounds: int = option(5, "rounds to run")
    min_clients: int = option(2, "clients that must be connected before a round starts")
    fraction: float = option(1.0, "fraction of connected clients selected per round (at least min_clients)")
    clients_per_round: int = option(0, "clients selected per round, sampled (seeded) from those connected, "
                                    "e.g. 100 of 10,000; 0: --fraction decides")
    quorum: float = option(1.0, "fraction of selected clients whose updates close a round early")
    round_timeout: float = option(600.0, "seconds after which a round closes with the updates it has")
    max_update_norm: float = option(1000.0, "largest L2 norm of a client's update (a delta) the server takes; "
                                    "0 for no bound")
    norm_action: str = option("refuse", "an update over --max-update-norm: refuse (INVALID_ARGUMENT) or clip")
    max_examples: int = option(100_000, "largest example count an update is weighted by; a client claiming more "
                               "is weighted as this many, so one client cannot outweigh the rest")
    max_client_plans: int = option(8, "distinct codec plans clients may ask for at Join (each distinct downlink "
                                   "costs one encoded model per round); a Join bringing one more is refused")
    epochs: int = option(1, "local epochs per round")
    batch_size: int = option(32, "local batch size")
    lr: float = option(0.05, "local learning rate")
    optimizer: str = option("sgd", "local optimizer: sgd or adam")
    momentum: float = option(0.9, "SGD momentum")
    uplink: str = option(LOSSLESS_CODEC, "codec plan for updates, client -> server (docs: concepts/codecs); "
                         "the default is lossless")
    downlink: str = option(LOSSLESS_CODEC, "codec plan for models, server -> client; the default is lossless")
    error_feedback: bool = option(True, "clients carry what a lossy uplink codec drops into their next update")
    client_codecs: bool = option(True, "honour codec plans that clients ask for at Join")
    seed: int = option(0, "seed for model initialisation and client selection")
    out: str | None = option(None, "directory for report.json, rewritten after every round")
    state_dir: str | None = option(None, "directory for checkpoints (model, round, history, strategy state) and "
                                   "registered decoders; a server restarted on it resumes")
    threads: int = option(0, "torch threads for aggregation and evaluation (0: torch's default)")


@dataclass
class ClientConfig:
    server: str = option("localhost:50051", "server address host:port")
    insecure: bool = option(False, "plaintext gRPC instead of TLS; says so loudly")
    root_certificates: str | None = option(None, "PEM CA bundle that signs the server's certificate")
    token_file: str | None = option(None, "file holding this client's enrolment token (servers with --tokens)")
    client_cert: str | None = option(None, "PEM client certificate, for servers with --require-client-certs")
    client_key: str | None = option(None, "PEM private key of --client-cert")
    client_id: str | None = option(None, "stable id of this device (default: the host name)")
    data: str = option("fashion-mnist", "dataset spec; the client trains on its partition of the train split")
    partition: str = option("iid", "partition scheme: iid or dirichlet(alpha=A[,by=class|client])")
    num_partitions: int = option(1, "how many partitions the train split is cut into")
    partition_index: int = option(0, "which partition is this client's (0-based)")
    seed: int = option(0, "partitioning seed (the same on every client of a federation)")
    epochs: int | None = option(None, "override the server's local epochs")
    batch_size: int | None = option(None, "override the server's batch size")
    lr: float | None = option(None, "override the server's learning rate")
    threads: int = option(0, "torch threads for training (0: torch's default)")
    compute_budget: float = option(1.0, "share of this device the federation may use, in (0, 1]")
    uplink: str | None = option(None, "codec plan this device asks for its updates (e.g. on a slow link)")
    downlink: str | None = option(None, "codec plan this device asks for its downloads")
    max_backoff: float = option(30.0, "longest wait between reconnection attempts, seconds")
    chunk_bytes: int = option(DEFAULT_CHUNK_BYTES, f"payload bytes per uploaded chunk, at most what the server "
                              f"accepts (<= {MAX_CHUNK_BYTES})")
    log_level: str = option("INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = option("text", "text, or json for one JSON object per line")


@dataclass
class SimulateConfig(ServerConfig):
    listen: str = option("127.0.0.1:0", "host:port the local server binds (port 0 picks a free one)")
    insecure: bool = option(True, "simulate talks plaintext over loopback")
    clients: int = option(4, "client processes to start")
    min_clients: int = option(0, "clients a round needs (0: all of --clients)")
    partition: str = option("iid", "partition scheme: iid, dirichlet(alpha=A[,by=class|client]) or "
                            "skewed(last=N,classes=C,share=S)")
    partitions: int = option(0, "parts the data is split into (0: one per client); client i holds part i")
    federated_evaluation: bool = option(False, "give the server no data: clients evaluate each round's model on "
                                        "their share of the test split")
    budgets: str = option("", "compute budgets of the clients in order, comma-separated, repeating (e.g. 1,0.3,0.1)")
    client_threads: int = option(1, "torch threads per client process")
    out: str | None = option("runs/latest", "directory for report.json, report.png and logs")
    backend: str = option("process", "process: a server process and one process per client over gRPC; ray: "
                          "--population virtual clients on a pool of Ray actors, the server side in-process "
                          "(pip install 'fedsqueeze[ray]')")
    population: int = option(0, "with --backend ray: virtual clients in the federation (0: --clients); "
                             "--clients-per-round of them are sampled each round")
    client_resources: str = option("cpus=1", "with --backend ray: what one actor takes, as Flower's "
                                   "client_resources (cpus=C); the pool is the usable cores / C")
    actors: int = option(0, "with --backend ray: actors in the pool (0: from --client-resources)")
    device_profiles: str = option("none", "with --backend ray: simulated devices for the simulated clock: none, "
                                  "fixed(speed=1,up_mbps=1,down_mbps=10), lognormal(...,sigma=0.5,seed=0) or "
                                  "trace(path=devices.json)")
    object_store_mb: int = option(256, "with --backend ray: Ray's object store in /dev/shm, MiB")


@dataclass
class LoadConfig:
    """`fedsqueeze loadgen`: simulated lightweight clients against one test server, over plaintext gRPC."""

    server: str = option("localhost:50051", "server address host:port")
    clients: int = option(100, "simulated clients, each with its own connection")
    id_prefix: str = option("load", "client ids are <prefix>-00000, <prefix>-00001, ...")
    seed: int = option(0, "seed of the pre-made update")
    chunk_bytes: int = option(DEFAULT_CHUNK_BYTES, f"payload bytes per uploaded chunk, at most what the server "
                              f"accepts (<= {MAX_CHUNK_BYTES})")
    out: str | None = option(None, "write the result as JSON to this file")
    log_level: str = option("WARNING", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = option("text", "text, or json for one JSON object per line")


@dataclass
class EdgeConfig(ServingConfig):
    """`fedsqueeze edge`: a server to its own clients, one participant of the root federation above them."""

    listen: str = option("0.0.0.0:50052", "host:port to serve the edge's clients on (port 0 picks a free port)")
    root: str = option("localhost:50051", "the root server's address host:port")
    root_insecure: bool = option(False, "plaintext gRPC to the root instead of TLS; says so loudly")
    root_certificates: str | None = option(None, "PEM CA bundle that signs the root's certificate")
    token_file: str | None = option(None, "file holding this edge's enrolment token at the root (roots with --tokens)")
    client_cert: str | None = option(None, "PEM client certificate, for roots with --require-client-certs")
    client_key: str | None = option(None, "PEM private key of --client-cert")
    edge_id: str | None = option(None, "stable id of this edge at the root (default: the host name)")
    min_clients: int = option(1, "clients that must be connected before the edge takes a task from the root")
    seed: int = option(0, "seed for selecting among the edge's clients")
    out: str | None = option(None, "directory for the edge's report.json (its clients' rounds and traffic)")
    max_backoff: float = option(30.0, "longest wait between reconnection attempts to the root, seconds")


C = TypeVar("C")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(annotation: Any) -> type:
    """``int | None`` -> int; ``bool`` -> bool."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _parse_text(kind: type, value: str, source: str) -> Any:
    """An environment variable's text as the field's type."""
    if kind is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{source}: expected true or false, not {value!r}")
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{source}: expected {kind.__name__}, not {value!r}") from None


def _check_typed(kind: type, value: Any, source: str) -> Any:
    """A TOML value, which must already have the field's type (ints widen to float)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{source}: expected {kind.__name__}, not {value!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per field of ``cls`` (unset flags stay out of the namespace)."""
    hints = typing.get_type_hints(cls)
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="TOML file with these settings (flags and FEDSQUEEZE_* variables win)")
    for f in fields(cls):
        kind = _base_type(hints[f.name])
        default = f"(default: {f.default})" if f.default is not MISSING else ""
        if kind is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=f"{f.metadata['help']} {default}")
        else:
            parser.add_argument(_flag(f.name), type=kind, default=argparse.SUPPRESS,
                                metavar=kind.__name__.upper(), help=f"{f.metadata['help']} {default}")


def resolve(cls: type[C], args: argparse.Namespace, section: str, env: dict[str, str] | None = None) -> C:
    """Build ``cls`` from defaults, then the TOML file's ``[section]``, then the environment, then flags."""
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    values: dict[str, Any] = {}
    config_file = getattr(args, "config", None) or env.get(ENV_PREFIX + "CONFIG")
    if config_file:
        with Path(config_file).open("rb") as fh:
            table = tomllib.load(fh).get(section, {})
        unknown = set(table) - names
        if unknown:
            raise ValueError(f"{config_file}: unknown keys in [{section}]: {', '.join(sorted(unknown))}")
        values.update({k: _check_typed(_base_type(hints[k]), v, f"{config_file} [{section}] {k}")
                       for k, v in table.items()})
    for name in names:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _parse_text(_base_type(hints[name]), raw, ENV_PREFIX + name.upper())
    values.update({k: v for k, v in vars(args).items() if k in names})
    return cls(**values)

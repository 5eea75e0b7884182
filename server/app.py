"""Assemble and run the aggregation server: services, health, reflection, the round loop.

Everything a run is configured with is checked before anything listens: the
settings' ranges, the optimizer, the method's parameters, and the model
against the data (built and run on one batch of the test set), so a mistake
is one clear message and exit 2, never a federation that stalls once clients
have joined.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import signal
from collections.abc import Callable
from functools import partial
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fedsqueeze.config import BUILTIN_LOOPS, OPTIMIZERS, ServerConfig, ServingConfig
from fedsqueeze.data.datasets import Dataset, load_split
from fedsqueeze.enrolment import Enrolment
from fedsqueeze.evaluation import evaluate
from fedsqueeze.limits import MAX_CHUNK_BYTES, MIN_CHUNK_BYTES
from fedsqueeze.models import build_model, make_model_spec
from fedsqueeze.plugins import resolve
from fedsqueeze.server.checkpoint import CheckpointError, CheckpointStore
from fedsqueeze.server.coordinator import Coordinator
from fedsqueeze.server.decoding import add_tolerant_servicer
from fedsqueeze.server.metering import ByteMeter, MeteringInterceptor
from fedsqueeze.server.servicer import FederationServicer, OperatorServicer
from fedsqueeze.server.strategies import make_strategy, model_plans
from fedsqueeze.specs import parse_spec
from fedsqueeze.transport import server_options
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.v1 import federation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = [d.full_name for d in pb.DESCRIPTOR.services_by_name.values()]


def _bind(server: grpc.aio.Server, config: ServingConfig) -> int:
    if config.insecure:
        log.warning("SERVING PLAINTEXT gRPC on %s (--insecure): anyone on the network can read and alter "
                    "models and updates. Use TLS (--tls-cert/--tls-key) outside a trusted test network.",
                    config.listen)
        return server.add_insecure_port(config.listen)
    if not (config.tls_cert and config.tls_key):
        raise SystemExit("the server serves TLS by default: give --tls-cert and --tls-key, "
                         "or --insecure to serve plaintext deliberately")
    if config.require_client_certs and not config.client_ca:
        raise SystemExit("--require-client-certs needs --client-ca, the CA that signs the client certificates")
    credentials = grpc.ssl_server_credentials(
        [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())],
        root_certificates=Path(config.client_ca).read_bytes() if config.require_client_certs else None,
        require_client_auth=config.require_client_certs)
    return server.add_secure_port(config.listen, credentials)


def check_settings(config: ServerConfig) -> None:
    """SystemExit naming the first setting out of its range."""
    checks = [
        (config.rounds >= 1, f"--rounds must be at least 1, not {config.rounds}"),
        (config.min_clients >= 1, f"--min-clients must be at least 1, not {config.min_clients}"),
        (0 < config.fraction <= 1, f"--fraction must be in (0, 1], not {config.fraction}"),
        (config.clients_per_round >= 0, f"--clients-per-round must be >= 0, not {config.clients_per_round}"),
        (config.max_clients >= config.min_clients, f"--max-clients ({config.max_clients}) must be at least "
                                                   f"--min-clients ({config.min_clients})"),
        (0 < config.quorum <= 1, f"--quorum must be in (0, 1], not {config.quorum}"),
        (config.round_timeout > 0, f"--round-timeout must be positive, not {config.round_timeout}"),
        (config.concurrent_uploads >= 1, f"--concurrent-uploads must be at least 1, not {config.concurrent_uploads}"),
        (MIN_CHUNK_BYTES <= config.chunk_bytes <= MAX_CHUNK_BYTES,
         f"--chunk-bytes must be in [{MIN_CHUNK_BYTES}, {MAX_CHUNK_BYTES}], not {config.chunk_bytes}"),
        (config.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}, not "
                                         f"{config.optimizer!r}"),
        (config.epochs >= 1, f"--epochs must be at least 1, not {config.epochs}"),
        (config.batch_size >= 1, f"--batch-size must be at least 1, not {config.batch_size}"),
        (math.isfinite(config.lr) and config.lr > 0, f"--lr must be a positive number, not {config.lr}"),
        (math.isfinite(config.momentum) and 0 <= config.momentum < 1, f"--momentum must be in [0, 1), not "
                                                                       f"{config.momentum}"),
        (config.upload_stall_seconds > 0, f"--upload-stall-seconds must be positive, not "
                                          f"{config.upload_stall_seconds}"),
        (config.min_upload_rate >= 0, f"--min-upload-rate must be >= 0, not {config.min_upload_rate}"),
        (config.max_examples >= 1, f"--max-examples must be at least 1, not {config.max_examples}"),
        (config.max_client_plans >= 0, f"--max-client-plans must be >= 0, not {config.max_client_plans}"),
        (config.max_update_norm >= 0, f"--max-update-norm must be >= 0, not {config.max_update_norm}"),
    ]
    for ok, message in checks:
        if not ok:
            raise SystemExit(message)


NO_DATA = "none"


def data_shape(config: ServerConfig) -> tuple[Dataset | None, tuple[int, ...], int]:
    """(the test set, or None with ``--data none``; one example's shape; the number of classes)."""
    if config.data != NO_DATA:
        test_set = load_split(config.data, "test").select()
        return test_set, test_set.input_shape, test_set.num_classes
    try:
        shape = tuple(int(d) for d in config.input_shape.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1 or config.num_classes is None or config.num_classes < 0:
        raise SystemExit("--data none needs --input-shape (e.g. 30 or 1,28,28) and --num-classes (>= 1, or 0 "
                         "for regression): the model is built from them, and clients evaluate it on their own data")
    return None, shape, config.num_classes


def check_model(model: torch.nn.Module, test_set: Dataset, config: ServerConfig) -> None:
    """SystemExit unless the model takes one batch of the data and gives one score per class."""
    batch, training = test_set.x[:2], model.training
    try:
        with torch.no_grad():
            out = model.eval()(batch)
    except Exception as exc:   # any error of a model's forward pass means the same thing here
        raise SystemExit(f"model {config.model!r} cannot run on {config.data!r} inputs of shape "
                         f"{list(test_set.input_shape)}: {exc}") from None
    finally:
        model.train(training)
    if tuple(out.shape) != (len(batch), test_set.num_classes or 1):
        wanted = f"has {test_set.num_classes} classes" if test_set.num_classes else \
            "is a regression task: one output per example, shape [1]"
        raise SystemExit(f"model {config.model!r} gives outputs of shape {list(out.shape[1:])} per example; "
                         f"{config.data!r} {wanted}")


def raise_open_file_limit() -> None:
    """Lift the soft limit on open descriptors to the hard one: each connection is one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.debug("open-file limit raised from %d to %d", soft, hard)


def build_server(config: ServingConfig, coordinator: Coordinator, meter: ByteMeter,
                 enrolment: Enrolment | None) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """The gRPC server with every service, bound (not started); returns it, its health servicer and its port."""
    federation_service = pb.DESCRIPTOR.services_by_name["Federation"].full_name
    server = grpc.aio.server(interceptors=[MeteringInterceptor(meter, federation_service)],
                             options=server_options())
    servicer = FederationServicer(coordinator, config.chunk_bytes, enrolment, config.concurrent_uploads,
                                  config.upload_stall_seconds, config.min_upload_rate)
    add_tolerant_servicer(pb_grpc.add_FederationServicer_to_server, servicer, server)
    add_tolerant_servicer(pb_grpc.add_OperatorServicer_to_server, OperatorServicer(coordinator, enrolment), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return server, health_servicer, _bind(server, config)


def build_coordinator(config: ServerConfig) -> tuple[Coordinator, ByteMeter]:
    """Check every setting, build the model and the method's strategy, resume from ``--state-dir``.

    The server's whole federation side except the network: ``serve`` puts gRPC in front of it, and
    simulators drive it in-process through the same client calls. SystemExit with one message on a bad setting.
    """
    check_settings(config)
    try:
        model_plans(config)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if config.threads:
        torch.set_num_threads(config.threads)
    if not 0 < config.fraction_evaluate <= 1:
        raise SystemExit(f"--fraction-evaluate must be in (0, 1], not {config.fraction_evaluate}")
    test_set, input_shape, num_classes = data_shape(config)
    model_spec = make_model_spec(config.model, input_shape, num_classes)
    model = build_model(model_spec, seed=config.seed)
    # without data, two examples of zeros still show whether the model takes this shape and scores each class
    check_model(model, test_set or Dataset(torch.zeros(2, *input_shape), torch.zeros(2), num_classes), config)
    try:
        resolve("trainers", parse_spec(config.trainer)[0], dict.fromkeys(BUILTIN_LOOPS))   # clients need it too
    except ValueError as exc:
        raise SystemExit(f"--trainer {config.trainer!r}: {exc}") from None
    evaluate_on_test = partial(evaluate, data=test_set) if test_set is not None else None
    try:
        strategy = make_strategy(config, model, model_spec, evaluate_on_test)
    except ValueError as exc:
        raise SystemExit(f"--method {config.method!r}: {exc}") from None
    meter = ByteMeter()
    store = CheckpointStore(Path(config.state_dir), strategy.name, model_spec) if config.state_dir else None
    coordinator = Coordinator(config, strategy, model_spec, evaluate_on_test, meter, store)
    try:
        resumed = coordinator.resume()
    except CheckpointError as exc:
        raise SystemExit(f"cannot resume: {exc}") from None
    if store is None:
        log.warning("no --state-dir: the global model and round history live only in memory; a restarted "
                    "server starts the federation over")
    elif not resumed:
        log.info("checkpoints go to %s after every round", store.folder)
    log.info("model %s: %d parameters; method %s; uplink %s; downlink %s; %s", model_spec.name,
             sum(p.numel() for p in model.parameters()), strategy.name, strategy.settings.uplink,
             strategy.settings.downlink, f"test set {len(test_set)} examples" if test_set is not None else
             "no data: clients evaluate each round's model (federated evaluation)")
    return coordinator, meter


async def serve_rounds(config: ServingConfig, coordinator: Coordinator, meter: ByteMeter, what: str,
                       on_stop: Callable[[], None] | None = None) -> None:
    """Put gRPC in front of ``coordinator`` and run its round loop until it ends (or SIGTERM/SIGINT, which also
    call ``on_stop``), then stop gracefully; ``what`` names the process in the logs (a server, an edge)."""
    if config.metrics_listen:
        metrics_port = coordinator.metrics.serve(config.metrics_listen)
        log.info("Prometheus metrics on %s:%d/metrics", config.metrics_listen.rpartition(":")[0], metrics_port)
    enrolment = Enrolment.load(config.tokens) if config.tokens else None
    if enrolment is None:
        log.warning("no --tokens: any client may join under any id (fine on a closed test network only)")
    server, health_servicer, port = build_server(config, coordinator, meter, enrolment)
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if config.port_file:
        Path(config.port_file).write_text(f"{port}\n")
    log.info("serving on port %d", port)

    rounds = asyncio.create_task(coordinator.run())

    def stop() -> None:
        if on_stop is not None:
            on_stop()
        rounds.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    try:
        await rounds
    except asyncio.CancelledError:
        log.info("stopping on signal")
    finally:
        await health_servicer.enter_graceful_shutdown()
        coordinator.write_report()
        await server.stop(grace=5)
        log.info("%s stopped; %d rounds finished", what, len(coordinator.history))


async def serve(config: ServerConfig) -> None:
    """Serve until every round is done (or SIGTERM/SIGINT), then stop gracefully."""
    raise_open_file_limit()
    coordinator, meter = build_coordinator(config)
    await serve_rounds(config, coordinator, meter, "server")
    if coordinator.stopped_because:
        raise SystemExit(f"the federation stopped early: {coordinator.stopped_because}")

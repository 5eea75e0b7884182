"""Assemble and run the aggregation server: services, health, reflection, the round loop."""

from __future__ import annotations

import asyncio
import logging
import signal
from functools import partial
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fedsqueeze.config import ServerConfig
from fedsqueeze.data.datasets import load_split
from fedsqueeze.enrolment import Enrolment
from fedsqueeze.evaluation import evaluate
from fedsqueeze.limits import MAX_CHUNK_BYTES
from fedsqueeze.models import build_model, make_model_spec
from fedsqueeze.server.checkpoint import CheckpointError, CheckpointStore
from fedsqueeze.server.coordinator import Coordinator
from fedsqueeze.server.metering import ByteMeter, MeteringInterceptor
from fedsqueeze.server.servicer import FederationServicer, OperatorServicer
from fedsqueeze.server.strategies import make_strategy
from fedsqueeze.transport import server_options
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.v1 import federation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = [d.full_name for d in pb.DESCRIPTOR.services_by_name.values()]


def _bind(server: grpc.aio.Server, config: ServerConfig) -> int:
    if config.insecure:
        log.warning("SERVING PLAINTEXT gRPC on %s (--insecure): anyone on the network can read and alter "
                    "models and updates. Use TLS (--tls-cert/--tls-key) outside a trusted test network.",
                    config.listen)
        return server.add_insecure_port(config.listen)
    if not (config.tls_cert and config.tls_key):
        raise SystemExit("the server serves TLS by default: give --tls-cert and --tls-key, "
                         "or --insecure to serve plaintext deliberately")
    credentials = grpc.ssl_server_credentials([(Path(config.tls_key).read_bytes(),
                                                Path(config.tls_cert).read_bytes())])
    return server.add_secure_port(config.listen, credentials)


async def serve(config: ServerConfig) -> None:
    """Serve until every round is done (or SIGTERM/SIGINT), then stop gracefully."""
    if config.concurrent_uploads < 1:
        raise SystemExit(f"--concurrent-uploads must be at least 1, not {config.concurrent_uploads}")
    if not 0 < config.chunk_bytes <= MAX_CHUNK_BYTES:
        raise SystemExit(f"--chunk-bytes must be in (0, {MAX_CHUNK_BYTES}]")
    if config.threads:
        torch.set_num_threads(config.threads)
    test_set = load_split(config.data, "test").select()
    model_spec = make_model_spec(config.model, test_set.input_shape, test_set.num_classes)
    model = build_model(model_spec, seed=config.seed)
    evaluate_on_test = partial(evaluate, data=test_set)
    strategy = make_strategy(config, model, model_spec, evaluate_on_test)
    meter = ByteMeter()
    store = CheckpointStore(Path(config.state_dir), strategy.name, model_spec) if config.state_dir else None
    coordinator = Coordinator(config, strategy, model_spec, evaluate_on_test, meter, store)
    try:
        resumed = coordinator.resume()
    except CheckpointError as exc:
        raise SystemExit(f"cannot resume: {exc}") from None
    if config.metrics_listen:
        metrics_port = coordinator.metrics.serve(config.metrics_listen)
        log.info("Prometheus metrics on %s:%d/metrics", config.metrics_listen.rpartition(":")[0], metrics_port)
    if store is None:
        log.warning("no --state-dir: the global model and round history live only in memory; a restarted "
                    "server starts the federation over")
    elif not resumed:
        log.info("checkpoints go to %s after every round", store.folder)
    log.info("model %s: %d parameters; method %s; uplink %s; downlink %s; test set %d examples",
             model_spec.name, sum(p.numel() for p in model.parameters()), strategy.name,
             strategy.settings.uplink, strategy.settings.downlink, len(test_set))

    federation_service = pb.DESCRIPTOR.services_by_name["Federation"].full_name
    server = grpc.aio.server(interceptors=[MeteringInterceptor(meter, federation_service)],
                             options=server_options())
    enrolment = Enrolment.load(config.tokens) if config.tokens else None
    if enrolment is None:
        log.warning("no --tokens: any client may join under any id (fine on a closed test network only)")
    servicer = FederationServicer(coordinator, config.chunk_bytes, enrolment, config.concurrent_uploads)
    pb_grpc.add_FederationServicer_to_server(servicer, server)
    pb_grpc.add_OperatorServicer_to_server(OperatorServicer(coordinator, enrolment), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = _bind(server, config)
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if config.port_file:
        Path(config.port_file).write_text(f"{port}\n")
    log.info("serving on port %d", port)

    rounds = asyncio.create_task(coordinator.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, rounds.cancel)
    try:
        await rounds
    except asyncio.CancelledError:
        log.info("stopping on signal")
    finally:
        await health_servicer.enter_graceful_shutdown()
        coordinator.write_report()
        await server.stop(grace=5)
        log.info("server stopped; %d rounds finished", len(coordinator.history))

"""Assemble and run an edge aggregator: join the root, build the model it names, serve the edge's clients."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import socket

from fedsqueeze.config import EdgeConfig, ServerConfig, ServingConfig
from fedsqueeze.errors import Stopped
from fedsqueeze.federation_link import FatalError, FederationLink
from fedsqueeze.limits import MAX_CHUNK_BYTES, MIN_CHUNK_BYTES
from fedsqueeze.models import build_model
from fedsqueeze.server.app import raise_open_file_limit, serve_rounds
from fedsqueeze.server.edge.relay import EdgeCoordinator, Relay
from fedsqueeze.server.metering import ByteMeter
from fedsqueeze.server.strategies import StrategySettings
from fedsqueeze.v1 import federation_pb2 as pb

log = logging.getLogger(__name__)


def serving_config(config: EdgeConfig) -> ServerConfig:
    """The edge's settings as the server machinery takes them: its own serving settings, no data, no method
    of its own (the root's tasks bring everything else), and no codec plans of the clients' choosing."""
    serving = {f.name: getattr(config, f.name) for f in dataclasses.fields(ServingConfig)}
    return ServerConfig(**serving, data="none", min_clients=config.min_clients, seed=config.seed, out=config.out,
                        client_codecs=False)


def check_edge_settings(config: EdgeConfig) -> None:
    """SystemExit naming the first setting out of its range."""
    checks = [
        (config.min_clients >= 1, f"--min-clients must be at least 1, not {config.min_clients}"),
        (config.max_clients >= config.min_clients, f"--max-clients ({config.max_clients}) must be at least "
                                                   f"--min-clients ({config.min_clients})"),
        (config.concurrent_uploads >= 1, f"--concurrent-uploads must be at least 1, not {config.concurrent_uploads}"),
        (MIN_CHUNK_BYTES <= config.chunk_bytes <= MAX_CHUNK_BYTES,
         f"--chunk-bytes must be in [{MIN_CHUNK_BYTES}, {MAX_CHUNK_BYTES}], not {config.chunk_bytes}"),
        (config.upload_stall_seconds > 0, f"--upload-stall-seconds must be positive, not "
                                          f"{config.upload_stall_seconds}"),
        (config.min_upload_rate >= 0, f"--min-upload-rate must be >= 0, not {config.min_upload_rate}"),
    ]
    for ok, message in checks:
        if not ok:
            raise SystemExit(message)


def join_root(link: FederationLink, request: pb.JoinRequest) -> pb.JoinReply:
    """Join the root, waiting with backoff while it is not up; SystemExit if it refuses this edge for good."""
    import grpc

    while True:
        try:
            reply = link.join(request)
            link.succeeded()
            return reply
        except FatalError as exc:
            raise SystemExit(str(exc)) from None
        except grpc.RpcError as exc:
            if link.stopping:
                raise Stopped() from None
            link.recover(exc)


async def serve_edge(config: EdgeConfig) -> None:
    """Join the root, then serve the edge's clients until the root finishes (or SIGTERM/SIGINT)."""
    check_edge_settings(config)
    raise_open_file_limit()
    server_config = serving_config(config)
    edge_id = config.edge_id or socket.gethostname()
    link = FederationLink(config.root, config.root_insecure, config.root_certificates, config.token_file,
                          config.client_cert, config.client_key, config.chunk_bytes, config.max_backoff)
    request = pb.JoinRequest(client_id=edge_id, edge=True, capabilities=pb.Capabilities())
    loop = asyncio.get_running_loop()
    joining = asyncio.ensure_future(asyncio.to_thread(join_root, link, request))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, link.stop)
    try:
        reply = await joining
    except Stopped:
        link.close()
        return
    try:
        model = build_model(reply.model, seed=config.seed)
    except Exception as exc:   # whatever a model builder raises, this edge cannot serve the root's model
        link.leave(f"edge error: cannot build the model: {exc}")
        raise SystemExit(f"cannot build the root's model {reply.model.name!r}: {type(exc).__name__}: {exc}") from None
    relay = Relay(model, StrategySettings(reply.model, "", pb.Hyperparameters(), "", ""))
    meter = ByteMeter()
    coordinator = EdgeCoordinator(server_config, relay, reply.model, None, meter, link=link, join=request)
    log.info("edge %s joined root %s (model %s)", edge_id, config.root, reply.model.name)
    try:
        await serve_rounds(server_config, coordinator, meter, f"edge {edge_id}", on_stop=link.stop)
    finally:
        link.close()
    if coordinator.stopped_because:
        raise SystemExit(f"the edge stopped: {coordinator.stopped_because}")

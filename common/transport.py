"""gRPC channel and server options, and opening a channel to a server.

Keepalive suits edge devices that train for minutes between calls: clients
ping every 30 s when idle (keeping NAT mappings open and noticing dead links),
and the server accepts pings that often. Messages are capped just above one
full Chunk: anything larger is refused by gRPC itself (RESOURCE_EXHAUSTED).

The server turns off HTTP/2 BDP probing, so each incoming stream keeps the
64 KiB default flow-control window instead of growing it to megabytes: with a
thousand clients uploading at once, what gRPC buffers for the streams waiting
their turn stays small (benchmarks/scale.py, 1,000 clients, 2 rounds, on a
busy machine: 1.45 GiB peak server RSS with probing, 0.94 GiB without). The
price: one upload moves at most 64 KiB per round trip, 10 Mbit/s at 50 ms,
far above an edge uplink.

The server also caps each connection's read buffer at 8 KiB
(``grpc.experimental.tcp_max_read_buffer_size``). gRPC sizes a connection's
next read buffer from the largest reads it has seen and keeps it allocated
while the connection idles (grpc/grpc#42194), so every client that had
uploaded left from 64 KiB to a few hundred KiB on the server between
rounds. With the cap, 1,000 clients cost 50-80 MiB less than with a 64 KiB
one, at the same updates/s and server CPU per update (benchmarks/scale.py
--clients 1000).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc

from fedsqueeze.enrolment import BearerToken, read_token
from fedsqueeze.limits import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

ChannelOptions = list[tuple[str, Any]]

_MESSAGE_LIMITS: ChannelOptions = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def server_options() -> ChannelOptions:
    return [
        *_MESSAGE_LIMITS,
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
        ("grpc.http2.max_ping_strikes", 5),
        ("grpc.http2.bdp_probe", 0),
        ("grpc.experimental.tcp_max_read_buffer_size", 8 * 1024),
        # A connection must finish its TLS and HTTP/2 handshakes within 10 s (gRPC's default: 120 s), so idle or
        # half-open connections cannot pile up and starve honest ones (tests/test_resilience.py).
        ("grpc.server_handshake_timeout_ms", 10_000),
    ]


def client_options() -> ChannelOptions:
    return [
        *_MESSAGE_LIMITS,
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def open_channel(target: str, insecure: bool, root_certificates: str | None = None,
                 token_file: str | None = None, client_cert: str | None = None,
                 client_key: str | None = None) -> grpc.Channel:
    """A channel to ``target``: TLS by default (system roots or ``root_certificates``), plaintext if asked;
    every call carries the enrolment token in ``token_file`` when one is given; ``client_cert``/``client_key``
    present a client certificate (mutual TLS)."""
    if bool(client_cert) != bool(client_key):
        raise ValueError("give both --client-cert and --client-key, or neither")
    if insecure:
        log.warning("connecting to %s over PLAINTEXT gRPC (--insecure): traffic can be read and altered", target)
        channel = grpc.insecure_channel(target, options=client_options())
    else:
        roots = Path(root_certificates).read_bytes() if root_certificates else None
        key = Path(client_key).read_bytes() if client_key else None
        chain = Path(client_cert).read_bytes() if client_cert else None
        credentials = grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=chain)
        channel = grpc.secure_channel(target, credentials, options=client_options())
    if token_file:
        channel = grpc.intercept_channel(channel, BearerToken(read_token(token_file)))
    return channel

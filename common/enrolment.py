"""Client identity by enrolment token: every call carries its client's secret; the server knows each one's hash.

A server run with ``--tokens FILE`` (JSON ``{"client_id": "<sha256 hex of its
token>"}``) answers a Federation call only when its ``authorization: Bearer
<token>`` metadata matches an enrolled client, and then only as that client
(``fedsqueeze.server.servicer`` checks Join's client id and each session's
owner against it). Operator calls need the ``operator`` identity. The server
stores no secret: a leaked tokens file lets no one in. ``fedsqueeze certs``
makes tokens beside the certificates. Tokens only ever travel over TLS in
earnest; over ``--insecure`` they are as readable as everything else.

gRPC's call credentials would attach the token too, but refuse plaintext
channels, which tests and ``simulate`` use; a small client interceptor works on both.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc

METADATA_KEY = "authorization"
SCHEME = "Bearer "
OPERATOR = "operator"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def read_token(path: str) -> str:
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"{path}: empty token file")
    return token


class Enrolment:
    """The enrolled identities, by the hash of their tokens."""

    def __init__(self, hashes: Mapping[str, str]) -> None:
        bad = [cid for cid, h in hashes.items() if not (isinstance(h, str) and len(h) == 64)]
        if bad:
            raise ValueError(f"enrolment: {', '.join(sorted(bad)[:5])}: each value must be a sha256 hex digest")
        self._by_hash = {h: client_id for client_id, h in hashes.items()}

    @classmethod
    def load(cls, path: str) -> Enrolment:
        document = json.loads(Path(path).read_text())
        if not isinstance(document, dict):
            raise ValueError(f"{path}: expected a JSON object of client id -> token hash")
        return cls(document)

    def identify(self, metadata: Iterable[tuple[str, Any]] | None) -> str | None:
        """The client a call's bearer token belongs to, or None when it carries no valid one."""
        values = [v for k, v in (metadata or ()) if k == METADATA_KEY]
        if len(values) != 1 or not isinstance(values[0], str) or not values[0].startswith(SCHEME):
            return None
        digest = token_hash(values[0][len(SCHEME):])
        match = next((h for h in self._by_hash if hmac.compare_digest(h, digest)), None)
        return self._by_hash[match] if match else None


class _Call(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, metadata: list[tuple[str, str]]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = details.compression


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call of a channel."""

    def __init__(self, token: str) -> None:
        self._entry = (METADATA_KEY, SCHEME + token)

    def _details(self, details: grpc.ClientCallDetails) -> _Call:
        return _Call(details, [*(details.metadata or []), self._entry])

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request_iterator)

"""Client identity by enrolment token: every call carries its client's secret; the server knows each one's hash.

A server run with ``--tokens FILE`` answers a Federation call only when its
``authorization: Bearer <token>`` metadata matches an enrolled client, and then only as that client
(``fedsqueeze.server.servicer`` checks Join's client id and each session's
owner against it). Operator calls need the ``operator`` identity. The server
stores no secret: a leaked tokens file lets no one in. ``fedsqueeze certs``
makes tokens beside the certificates. Tokens only ever travel over TLS in
earnest; over ``--insecure`` they are as readable as everything else.

The file maps each client id to its token's sha256 hex digest, or to
``{"sha256": ..., "expires": "2027-01-01T00:00:00+00:00"}`` for a token that
expires (refused UNAUTHENTICATED after that instant), or to a list of these:
to rotate a token, list the new one beside the old, hand the device its new
token, then drop the old one. The server re-reads the file when it changes
(checked at most once a second), so enrolment, rotation and revocation need
no restart.

gRPC's call credentials would attach the token too, but refuse plaintext
channels, which tests and ``simulate`` use; a small client interceptor works on both.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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


class ExpiredTokenError(Exception):
    """A known token past its expiry."""


@dataclass(frozen=True)
class EnrolledToken:
    client_id: str
    expires: datetime.datetime | None   # None: never


def _entries(client_id: str, value: Any) -> list[tuple[str, EnrolledToken]]:
    """(hash, token) pairs from one client's value in the tokens file; ValueError saying what is wrong."""
    items = value if isinstance(value, list) else [value]
    pairs = []
    for item in items:
        digest, expires = (item, None) if isinstance(item, str) else \
            (item.get("sha256"), item.get("expires")) if isinstance(item, dict) else (None, None)
        if not (isinstance(digest, str) and len(digest) == 64):
            raise ValueError(f"enrolment: {client_id}: each token must be a sha256 hex digest, or "
                             '{"sha256": ..., "expires": ISO-8601}, or a list of these')
        when = None
        if expires is not None:
            try:
                when = datetime.datetime.fromisoformat(str(expires))
            except ValueError:
                raise ValueError(f"enrolment: {client_id}: expires {expires!r} is not an ISO-8601 time") from None
            if when.tzinfo is None:
                raise ValueError(f"enrolment: {client_id}: expires {expires!r} needs a UTC offset (+00:00)")
        pairs.append((digest, EnrolledToken(client_id, when)))
    return pairs


class Enrolment:
    """The enrolled identities, by the hash of their tokens; reloaded when the file it came from changes."""

    def __init__(self, tokens: Mapping[str, Any], path: str | None = None) -> None:
        self._by_hash = {digest: token for client_id, value in tokens.items()
                         for digest, token in _entries(client_id, value)}
        self._path = path
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()

    @classmethod
    def load(cls, path: str) -> Enrolment:
        return cls(cls._read(path), path)

    @staticmethod
    def _read(path: str) -> dict[str, Any]:
        document = json.loads(Path(path).read_text())
        if not isinstance(document, dict):
            raise ValueError(f"{path}: expected a JSON object of client id -> token hash")
        return document

    def _file_stamp(self) -> tuple[int, int] | None:
        if self._path is None:
            return None
        stat = os.stat(self._path)
        return stat.st_mtime_ns, stat.st_size

    def _refresh(self) -> None:
        """Re-read the tokens file if it changed (at most one stat a second); keep the old one if the new is bad."""
        if self._path is None or time.monotonic() - self._checked < 1.0:
            return
        self._checked = time.monotonic()
        try:
            stamp = self._file_stamp()
            if stamp != self._stamp:
                fresh = Enrolment(self._read(self._path))
                self._by_hash, self._stamp = fresh._by_hash, stamp
        except (OSError, ValueError):
            pass   # a half-written or broken file: keep serving with the last good one

    def identify(self, metadata: Iterable[tuple[str, Any]] | None) -> str | None:
        """The client a call's bearer token belongs to, or None when it carries no valid one.

        ExpiredTokenError when the token is known but past its expiry."""
        self._refresh()
        values = [v for k, v in (metadata or ()) if k == METADATA_KEY]
        if len(values) != 1 or not isinstance(values[0], str) or not values[0].startswith(SCHEME):
            return None
        digest = token_hash(values[0][len(SCHEME):])
        match = next((h for h in self._by_hash if hmac.compare_digest(h, digest)), None)
        if match is None:
            return None
        token = self._by_hash[match]
        if token.expires is not None and datetime.datetime.now(datetime.UTC) >= token.expires:
            raise ExpiredTokenError(f"the token of {token.client_id} expired at {token.expires.isoformat()}")
        return token.client_id


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

"""Who is in the federation: sessions, capabilities, liveness."""

from __future__ import annotations

import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

from fedsqueeze.errors import PayloadError, RateLimitError, SessionError
from fedsqueeze.v1 import federation_pb2 as pb

_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class ClientInfo:
    client_id: str
    capabilities: pb.Capabilities
    session_id: str
    last_seen: float = field(default_factory=time.monotonic)
    updates_committed: int = 0
    told_finished: bool = False
    open_polls: int = 0   # GetTask calls being held right now: the client is surely alive
    open_downloads: int = 0   # DownloadModel streams in flight
    uplink_codec: str = ""     # codec plans the client asked for ("" for none), canonical and checked
    downlink_codec: str = ""
    instance_id: str = ""      # changes when the client daemon restarts
    edge: bool = False         # an edge aggregator: its updates are its own clients' partial sums


class ClientRegistry:
    """Joined clients by session. A client that joins again gets a new session; the old one dies.

    Joins are limited: at most ``max_clients`` distinct client ids, and at most
    ``joins_per_minute`` joins per client id (a restarting device needs a few;
    a flood gets RESOURCE_EXHAUSTED). Clients that ask for their own codec plans
    share at most ``max_plans`` distinct (uplink, downlink) pairs: each distinct
    downlink costs the server one encoded model per round, so a Join bringing
    one more is refused RESOURCE_EXHAUSTED.
    """

    def __init__(self, timeout: float, max_clients: int = 10_000, joins_per_minute: int = 30,
                 max_plans: int = 8) -> None:
        self._timeout = timeout
        self._max_clients = max_clients
        self._joins_per_minute = joins_per_minute
        self._max_plans = max_plans
        self._by_id: dict[str, ClientInfo] = {}
        self._by_session: dict[str, ClientInfo] = {}
        self._recent_joins: dict[str, deque[float]] = {}

    def _admit(self, client_id: str) -> None:
        if client_id not in self._by_id and len(self._by_id) >= self._max_clients:
            raise RateLimitError(f"the federation is full ({self._max_clients} clients; --max-clients)")
        now = time.monotonic()
        recent = self._recent_joins.setdefault(client_id, deque())
        while recent and now - recent[0] > 60:
            recent.popleft()
        if len(recent) >= self._joins_per_minute:
            raise RateLimitError(f"client {client_id} joined {len(recent)} times in the last minute "
                                 f"(limit {self._joins_per_minute}); wait before joining again")
        recent.append(now)

    def join(self, client_id: str, capabilities: pb.Capabilities, uplink: str = "", downlink: str = "",
             instance_id: str = "", edge: bool = False) -> ClientInfo:
        """Admit a client; ``uplink``/``downlink`` are plans the caller already checked, canonical."""
        if not _CLIENT_ID_RE.match(client_id):
            raise PayloadError(f"client_id {client_id[:64]!r} must be 1-128 characters of "
                               "letters, digits, '.', '_' or '-', starting with a letter or digit")
        budget = capabilities.compute_budget
        if budget and not 0 < budget <= 1:
            raise PayloadError(f"compute_budget must be in (0, 1], not {budget}")
        self._admit(client_id)
        old = self._by_id.get(client_id)
        if uplink or downlink:
            plans = {(c.uplink_codec, c.downlink_codec) for c in self._by_id.values()
                     if c.client_id != client_id and (c.uplink_codec or c.downlink_codec)}
            if (uplink, downlink) not in plans and len(plans) >= self._max_plans:
                raise RateLimitError(f"clients already use {len(plans)} distinct codec plans, the server's "
                                     f"limit (--max-client-plans): join with one of theirs or the server's default")
        if old is not None:
            self._by_session.pop(old.session_id, None)
        info = ClientInfo(client_id, capabilities, secrets.token_urlsafe(18), uplink_codec=uplink,
                          downlink_codec=downlink, instance_id=instance_id[:64], edge=edge)
        if old is not None:
            info.updates_committed = old.updates_committed
        self._by_id[client_id] = info
        self._by_session[info.session_id] = info
        return info

    def owner_of(self, session_id: str) -> str:
        """The client id holding ``session_id`` (SessionError if none); unlike ``by_session``, not a sign of life."""
        info = self._by_session.get(session_id)
        if info is None:
            raise SessionError("unknown session (the server may have restarted, or this client "
                               "joined again elsewhere): call Join again")
        return info.client_id

    def by_session(self, session_id: str) -> ClientInfo:
        """The client holding ``session_id``, marked as seen now."""
        info = self._by_session.get(session_id)
        if info is None:
            raise SessionError("unknown session (the server may have restarted, or this client "
                               "joined again elsewhere): call Join again")
        info.last_seen = time.monotonic()
        return info

    def leave(self, session_id: str) -> ClientInfo:
        info = self.by_session(session_id)
        del self._by_session[session_id]
        del self._by_id[info.client_id]
        return info

    def has(self, client_id: str) -> bool:
        """Whether ``client_id`` is joined now."""
        return client_id in self._by_id

    def available(self) -> list[ClientInfo]:
        """Clients holding a long-poll or seen within the timeout, by id."""
        cutoff = time.monotonic() - self._timeout
        return sorted((c for c in self._by_id.values() if c.open_polls or c.last_seen >= cutoff),
                      key=lambda c: c.client_id)

    def all(self) -> list[ClientInfo]:
        return sorted(self._by_id.values(), key=lambda c: c.client_id)

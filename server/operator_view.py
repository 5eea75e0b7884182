"""The Operator API's answer: the federation as an operator sees it, from the coordinator's state."""

from __future__ import annotations

import time

from fedsqueeze.server.clients import ClientRegistry
from fedsqueeze.server.metering import Traffic
from fedsqueeze.server.rounds import OpenRound
from fedsqueeze.v1 import federation_pb2 as pb


def federation_status(phase: pb.FederationState, current: OpenRound | None, total_rounds: int, method: str,
                      clients: ClientRegistry, history: list[pb.RoundMetrics], traffic: Traffic,
                      include_history: bool) -> pb.FederationStatus:
    """State, round, connected clients (each with when it was last seen), bytes so far, the last record."""
    now = time.monotonic()
    return pb.FederationStatus(
        state=phase,
        round=current.number if current else (history[-1].round if history else 0),
        total_rounds=total_rounds,
        method=method,
        connected_clients=len(clients.available()),
        clients=[pb.ClientStatus(client_id=c.client_id, capabilities=c.capabilities,
                                 seconds_since_seen=now - c.last_seen, updates_committed=c.updates_committed,
                                 edge=c.edge)
                 for c in clients.all()],
        bytes_up=traffic.up,
        bytes_down=traffic.down,
        last_round=history[-1] if history else None,
        history=history if include_history else [],
    )

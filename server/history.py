"""Per-round records and the run report (report.json).

A round's record is the ``RoundMetrics`` message of the protocol, so the
Operator API and the report cannot disagree; ``metrics_dict`` is its JSON form
(plain numbers, unlike protobuf's JSON mapping, which writes 64-bit ints as strings).
The report is strict JSON: a non-finite accuracy or loss (a diverged model;
accuracy of a regression task; a round no client evaluated) is written as
null, never as ``NaN`` or ``Infinity``.
"""

from __future__ import annotations

import math
from typing import Any

from fedsqueeze.v1 import federation_pb2 as pb


def metrics_dict(record: pb.RoundMetrics) -> dict[str, Any]:
    """A RoundMetrics message as a dict of plain values, every field present."""
    values: dict[str, Any] = {}
    for field in record.DESCRIPTOR.fields:
        value = getattr(record, field.name)
        if field.message_type:
            value = {k: v for k, v in sorted(value.items()) if math.isfinite(v)}
        elif isinstance(value, float) and not math.isfinite(value):
            value = None
        values[field.name] = value
    return values


def build_report(method: str, config: dict[str, Any], rounds: list[pb.RoundMetrics],
                 bytes_up: int, bytes_down: int) -> dict[str, Any]:
    """The report document: settings, totals, and one entry per finished round.

    ``bytes_up`` / ``bytes_down`` are all traffic up to the report's writing;
    the rounds' figures partition it at round boundaries.
    """
    return {
        "method": method,
        "config": config,
        "final_accuracy": rounds[-1].accuracy if rounds and math.isfinite(rounds[-1].accuracy) else None,
        "final_loss": rounds[-1].loss if rounds and math.isfinite(rounds[-1].loss) else None,
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
        "dense_bytes_up": sum(r.dense_bytes_up for r in rounds),
        "dense_bytes_down": sum(r.dense_bytes_down for r in rounds),
        "edge_bytes_up": sum(r.edge_bytes_up for r in rounds),      # edges and their clients, as edges counted
        "edge_bytes_down": sum(r.edge_bytes_down for r in rounds),
        "rounds": [metrics_dict(r) for r in rounds],
    }

"""What a run keeps: each round's record, the bytes counted, the checkpoint after each round, the report.

``RunRecords`` turns a closed round into its ``RoundMetrics`` record (bytes
from the metering interceptor's counts since the last round closed, the dense
float32 yardstick, the clients' and the strategy's metrics), saves the
checkpoint a restarted server resumes from, and writes ``report.json``. The
history it holds is what the Operator API and the Prometheus gauges show.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path

from fedsqueeze.config import ServerConfig
from fedsqueeze.server.checkpoint import Checkpoint, CheckpointStore
from fedsqueeze.server.history import build_report
from fedsqueeze.server.metering import ByteMeter, Traffic
from fedsqueeze.server.rounds import OpenRound
from fedsqueeze.server.storage import write_json_atomic
from fedsqueeze.server.strategies import Strategy
from fedsqueeze.v1 import federation_pb2 as pb

log = logging.getLogger(__name__)


def finite_metrics(metrics: dict[str, float]) -> tuple[dict[str, float], int]:
    """The finite metrics, sorted by name, and how many non-finite ones were dropped (a record stays JSON)."""
    kept = {k: float(v) for k, v in sorted(metrics.items()) if math.isfinite(v)}
    return kept, len(metrics) - len(kept)


class RunRecords:
    """The run's history and byte totals, resumed from and saved to an optional state directory."""

    def __init__(self, config: ServerConfig, meter: ByteMeter, store: CheckpointStore | None = None) -> None:
        self.config = config
        self.meter = meter
        self.store = store
        self.history: list[pb.RoundMetrics] = []
        self._earlier_traffic = Traffic(0, 0)   # counted by the server runs before a resume
        self._traffic_at_last_close = meter.snapshot()

    def resume(self, strategy: Strategy) -> int:
        """Load the state directory's checkpoint into ``strategy``, if any; return its round (0 for none)."""
        checkpoint = self.store.load() if self.store else None
        if checkpoint is None:
            return 0
        strategy.model.load_state_dict(checkpoint.model)
        strategy.load_state_dict(checkpoint.strategy)
        self.history = checkpoint.history
        self._earlier_traffic = Traffic(checkpoint.bytes_up, checkpoint.bytes_down)
        log.info("resumed from %s after round %d", self.store.folder, checkpoint.round)
        return checkpoint.round

    def total_traffic(self) -> Traffic:
        """Bytes counted by this run, resumes included."""
        return self.meter.snapshot() + self._earlier_traffic

    def record(self, rnd: OpenRound, accuracy: float, loss: float, client_metrics: dict[str, float],
               strategy_metrics: dict[str, float], evaluation: OpenRound | None,
               seconds: float) -> tuple[pb.RoundMetrics, Traffic]:
        """The closed round's record and the meter's reading it was cut at (``commit`` it once it is saved).

        Client metrics are prefixed ``client_``; non-finite metrics are dropped and counted in
        ``non_finite_metrics_dropped``, so a record is always strict JSON.
        """
        clients, dropped = finite_metrics(client_metrics)
        strategy_metrics, dropped_too = finite_metrics(strategy_metrics)
        traffic = self.meter.snapshot()
        spent = traffic - self._traffic_at_last_close
        metrics = {f"client_{k}": v for k, v in clients.items()}
        metrics.update(strategy_metrics)
        if dropped + dropped_too:
            metrics["non_finite_metrics_dropped"] = float(dropped + dropped_too)
        below = rnd.below_edges   # an edge's task counts as its clients' tasks
        record = pb.RoundMetrics(round=rnd.number, accuracy=accuracy, loss=loss, bytes_up=spent.up,
                                 bytes_down=spent.down, seconds=seconds,
                                 selected=len(rnd.assignments) - below["edges"] + below["selected"],
                                 updates=rnd.committed - below["edges"] + below["updates"],
                                 dense_bytes_up=rnd.dense_up,
                                 dense_bytes_down=rnd.dense_down + below["dense_down"] +
                                 (evaluation.dense_down if evaluation else 0),
                                 metrics=metrics, failed=rnd.by_status["failed"] + below["failed"],
                                 evaluated=evaluation.committed if evaluation else 0, edges=below["edges"],
                                 edge_bytes_up=below["bytes_up"], edge_bytes_down=below["bytes_down"])
        return record, traffic

    def checkpoint(self, record: pb.RoundMetrics, strategy: Strategy) -> None:
        """Save the state after ``record``'s round (a no-op without a state directory).

        Call it on the strategy thread: ``state_dict`` may write files.
        """
        if self.store is None:
            return
        traffic = self.total_traffic()
        self.store.save(Checkpoint(record.round, strategy.model.state_dict(), [*self.history, record],
                                   traffic.up, traffic.down, strategy.state_dict()))

    def commit(self, record: pb.RoundMetrics, traffic: Traffic) -> None:
        """The round is done: its record joins the history and the next round's bytes count from ``traffic``."""
        self._traffic_at_last_close = traffic
        self.history.append(record)

    def write_report(self, method: str) -> None:
        """``report.json`` in ``--out`` (nothing without it), written atomically."""
        if not self.config.out:
            return
        traffic = self.total_traffic()
        report = build_report(method, asdict(self.config), self.history, traffic.up, traffic.down)
        write_json_atomic(Path(self.config.out) / "report.json", report)

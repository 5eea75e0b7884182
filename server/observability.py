"""What an operator watches: Prometheus metrics on ``--metrics-listen`` (logs: ``fedsqueeze.logs``).

Metrics (own registry, so several servers can live in one process in tests):

- ``fedsqueeze_rounds_total``, ``fedsqueeze_round_accuracy``, ``fedsqueeze_round_loss``: committed rounds, the
  last one's accuracy and loss (on the server's test set, or the clients' mean under federated evaluation);
- ``fedsqueeze_round_evaluated_clients``: clients whose evaluation counted in the last round (federated
  evaluation; 0 when the server evaluated);
- ``fedsqueeze_clients_connected``: clients that called within the client timeout;
- ``fedsqueeze_bytes_total{direction="up"|"down"}``: the byte meter's totals (serialised Federation
  messages), read at scrape time so they never disagree with the round records;
- ``fedsqueeze_updates_total``, ``fedsqueeze_update_seconds``: committed updates and the time from an
  update's header to its commit;
- ``fedsqueeze_rejections_total{method, code}``: refused calls by RPC and status code;
- ``fedsqueeze_task_failures_total{reason="reported"|"stalled"}``: tasks dropped from their round because the
  client reported it could not do them, or because their upload stalled;
- ``fedsqueeze_undecodable_messages_total``: requests that were not valid protobuf (INVALID_ARGUMENT).

A resumed server starts its round and update counters and the accuracy gauge from the checkpoint's history,
as the byte counters start from the checkpoint's totals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from fedsqueeze.server.metering import Traffic
from fedsqueeze.v1 import federation_pb2 as pb


class _Traffic(Collector):
    def __init__(self, read: Callable[[], Traffic]) -> None:
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        traffic = self._read()
        family = CounterMetricFamily("fedsqueeze_bytes", "Bytes of serialised Federation messages",
                                     labels=["direction"])
        family.add_metric(["up"], traffic.up)
        family.add_metric(["down"], traffic.down)
        yield family


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rounds = Counter("fedsqueeze_rounds", "Committed rounds", registry=self.registry)
        self.accuracy = Gauge("fedsqueeze_round_accuracy", "Test accuracy after the last round",
                              registry=self.registry)
        self.loss = Gauge("fedsqueeze_round_loss", "Test loss after the last round", registry=self.registry)
        self.evaluated = Gauge("fedsqueeze_round_evaluated_clients",
                               "Clients whose evaluation counted in the last round (federated evaluation)",
                               registry=self.registry)
        self.clients = Gauge("fedsqueeze_clients_connected", "Clients seen within the client timeout",
                             registry=self.registry)
        self.updates = Counter("fedsqueeze_updates", "Committed client updates", registry=self.registry)
        self.update_seconds = Histogram("fedsqueeze_update_seconds", "From an update's header to its commit",
                                        buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
                                        registry=self.registry)
        self.rejections = Counter("fedsqueeze_rejections", "Refused calls", ["method", "code"],
                                  registry=self.registry)
        self.task_failures = Counter("fedsqueeze_task_failures", "Tasks dropped from their round", ["reason"],
                                     registry=self.registry)
        self.undecodable = Counter("fedsqueeze_undecodable_messages", "Requests that were not valid protobuf",
                                   registry=self.registry)

    def restore(self, history: Sequence[pb.RoundMetrics]) -> None:
        """Continue the counters of the rounds a checkpoint holds (a resumed server)."""
        if history:
            self.rounds.inc(len(history))
            self.updates.inc(sum(r.updates for r in history))
            self.record(history[-1])

    def record(self, round: pb.RoundMetrics) -> None:
        """The gauges of a finished round."""
        self.accuracy.set(round.accuracy)
        self.loss.set(round.loss)
        self.evaluated.set(round.evaluated)

    def watch_traffic(self, read: Callable[[], Traffic]) -> None:
        self.registry.register(_Traffic(read))

    def serve(self, listen: str) -> int:
        """Serve ``/metrics`` on ``host:port`` (port 0 picks one); return the port."""
        host, _, port = listen.rpartition(":")
        server, _ = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=self.registry)
        return int(server.server_port)

"""An edge aggregator's rounds: each is a root task, run among the edge's own clients, answered with their sum.

For every train task the root hands it, the edge downloads the root's model
once (the encoded stream, kept byte for byte), selects ``EdgeRound.fraction``
of its connected clients, and opens a round on the server machinery every
server uses (``Coordinator``: long-polls, downloads, upload turns, strict
streams, metering): its clients get the root's TrainTask with a task id of
their own and the root's download as it came, so they train exactly as they
would joined to the root. Their updates are checked against the root's
policies (``EdgeRound``: norm bound and action, example cap), folded into an
exact ``WeightedSum``, and the round closes at the root's quorum, or a margin
before the root's deadline. The edge then sends the sum to the root as one
update (``partial_sums``), or reports a failure if no client sent anything.

The root's link (``FederationLink``) runs its blocking calls on worker threads;
everything else runs on the edge's event loop. A root that restarts or goes
away is waited for with backoff while the edge's clients keep long-polling it;
an edge that restarts joins the root again and picks up its open task.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets

import grpc
import torch

from fedsqueeze.errors import PayloadError, Stopped, UnsupportedError
from fedsqueeze.federation_link import FatalError, FederationLink
from fedsqueeze.server.aggregation import WeightedSum
from fedsqueeze.server.clients import ClientInfo
from fedsqueeze.server.coordinator import Coordinator
from fedsqueeze.server.norm_policy import NormPolicy
from fedsqueeze.server.partial_sums import encode_partial, partial_header
from fedsqueeze.server.records import finite_metrics
from fedsqueeze.server.rounds import Assignment, OpenRound
from fedsqueeze.server.strategies import ClientPlan, Strategy, StrategySettings
from fedsqueeze.text import shown
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import EncodedModel, ExpectedTensor, StreamReceiver, expect_all

log = logging.getLogger(__name__)

ROOT_PROFILE = "root"   # an edge's one download per round: the root's, as it came
MIN_MARGIN_SECONDS = 1.0   # an edge closes its round this long (or a tenth of the root's time) before the root's


class Relay(Strategy[WeightedSum]):
    """The method as an edge runs it: every client gets the root's plan; updates fold into a plain weighted sum.

    It is what ``Strategy.relays_through_edges`` promises of a root's method, so the edge needs none of the
    method's own code. The edge never plans downloads (it relays the root's) nor aggregates (the root does).
    """

    name = "edge"

    def __init__(self, model: torch.nn.Module, settings: StrategySettings) -> None:
        super().__init__(model, settings)
        self.plan: ClientPlan | None = None   # this round's, from the root's task

    def configure(self, round_number: int, clients: list[ClientInfo]) -> dict[str, ClientPlan]:
        assert self.plan is not None
        return {client.client_id: self.plan for client in clients}

    def downlink(self, profile: str) -> tuple[dict[str, torch.Tensor], dict[str, ExpectedTensor]]:
        raise RuntimeError("an edge sends its clients the root's download as it came; it encodes none")

    def expected_update(self, plan: ClientPlan) -> dict[str, ExpectedTensor]:
        return expect_all(self.specs, plan.uplink_codec)

    def new_accumulator(self) -> WeightedSum:
        return WeightedSum()

    def aggregate(self, round_number: int, accumulator: WeightedSum,
                  client_metrics: dict[str, float]) -> dict[str, float]:
        raise RuntimeError("an edge sends its partial sum to the root, which aggregates")


class EdgeCoordinator(Coordinator):
    """The edge's round loop: the root's tasks in, partial sums out; the client calls are a server's."""

    strategy: Relay

    def __init__(self, *args: object, link: FederationLink, join: pb.JoinRequest, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.link = link
        self._join_request = join
        self._root_task: pb.TrainTask | None = None
        self._root_finished = ""

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Take the root's tasks until the root says the federation finished, then tell the edge's clients."""
        while True:
            await self._wait_for_clients()
            try:
                task = await asyncio.to_thread(self._next_root_task)
            except FatalError as exc:
                self.stopped_because = str(exc)
                log.error("%s", exc)
                break
            except Stopped:
                return
            kind = task.WhichOneof("kind")
            if kind == "finished":
                self._root_finished = task.finished.reason
                log.info("the root finished the federation: %s", task.finished.reason)
                break
            if kind == "train":
                await self._relay(task.train)
            elif kind == "evaluate":
                await asyncio.to_thread(self.link.report_failure, task.evaluate.task_id,
                                        "an edge aggregator does not evaluate")
        self.phase = pb.FINISHED
        self._notify(tasks=True)
        await asyncio.to_thread(self.link.leave, "edge finished")
        await self._linger()

    def _next_root_task(self) -> pb.Task:
        """On a worker thread: (re)join the root as needed and long-poll it until it answers other than Wait."""
        while True:
            try:
                if self.link.session is None:
                    reply = self.link.join(self._join_request)
                    if reply.model != self.model_spec:
                        raise FatalError(f"the root now runs model {reply.model.name!r} "
                                         f"({shown(reply.model.config_json)}); this edge serves "
                                         f"{self.model_spec.name!r}: restart the edge")
                task = self.link.poll()
                if task.WhichOneof("kind") != "wait":
                    self.link.succeeded()
                    return task
            except grpc.RpcError as exc:
                if self.link.stopping:
                    raise Stopped() from None
                self.link.recover(exc)

    async def _report(self, task_id: str, reason: str) -> None:
        log.warning("round task %s: %s", task_id, reason)
        await asyncio.to_thread(self.link.report_failure, task_id, reason)

    # ------------------------------------------------------------- one root task

    async def _relay(self, task: pb.TrainTask) -> None:
        """Run one root task among the edge's clients and send the root their partial sum."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        if not task.HasField("edge"):
            await self._report(task.task_id, "the root sent an edge a task without its EdgeRound")
            return
        edge = task.edge
        try:
            self.norm_policy = NormPolicy(edge.max_update_norm, edge.norm_action)
            model = await asyncio.to_thread(self._download, task)
        except (ValueError, PayloadError) as exc:
            await self._report(task.task_id, f"the root's task cannot be relayed: {exc}")
            return
        except grpc.RpcError as exc:
            log.warning("round %d: the root's download failed (%s: %s)", task.round, exc.code().name, exc.details())
            await asyncio.to_thread(self.link.recover, exc)
            return
        available = self.clients.available()
        if not available:
            await self._report(task.task_id, f"edge {self._join_request.client_id} has no client connected")
            return
        self.quorum, self.max_examples = edge.quorum or 1.0, max(edge.max_examples, 1)
        self.strategy.plan = ClientPlan(profile=ROOT_PROFILE, hyperparameters=task.hyperparameters,
                                        uplink_codec=task.uplink_codec, downlink_codec=task.downlink_codec,
                                        error_feedback=task.error_feedback, sends_delta=edge.sends_delta)
        count = min(len(available), max(1, math.ceil(edge.fraction * len(available))))
        selected = self._rng.sample(available, count)
        plans = self.strategy.configure(task.round, selected)
        assignments = {client_id: Assignment(client_id, secrets.token_urlsafe(12), plan,
                                             self.strategy.expected_update(plan)) for client_id, plan in plans.items()}
        margin = max(MIN_MARGIN_SECONDS, 0.1 * edge.deadline_seconds)
        rnd = OpenRound(task.round, 1, started, started + edge.deadline_seconds - margin, assignments,
                        {ROOT_PROFILE: model}, self.strategy.new_accumulator())
        self._root_task = task
        self._publish(rnd, pb.TRAINING)
        log.info("round %d: relaying the root's task to %d of %d clients", task.round, count, len(available))
        await self._wait_until_closed(rnd)
        await self._forward(task, rnd)

    def _download(self, task: pb.TrainTask) -> EncodedModel:
        """On a worker thread: the root's model for ``task``, checked against its plan and kept as encoded."""
        receiver = StreamReceiver(expect_all(self.strategy.specs, task.downlink_codec))
        tensors = [done for chunk in self.link.download(task.task_id) if (done := receiver.feed(chunk))]
        receiver.finish()
        return EncodedModel(tensors)

    async def _forward(self, task: pb.TrainTask, rnd: OpenRound) -> None:
        """Record the edge's round, then send the root its partial sum (or say that no client sent an update)."""
        loop = asyncio.get_running_loop()
        record, traffic = self.records.record(rnd, math.nan, math.nan, rnd.means(), {}, None,
                                              loop.time() - rnd.started)
        self.records.commit(record, traffic)
        self.metrics.rounds.inc()
        await asyncio.to_thread(self.write_report)
        if not rnd.committed:
            first = f"; the first failure: {rnd.failures[0]}" if rnd.failures else ""
            await self._report(task.task_id, f"edge {self._join_request.client_id}: none of its "
                                             f"{len(rnd.assignments)} selected clients sent an update in time{first}")
            return
        weight, partial = partial_header(rnd.accumulator)
        partial.selected, partial.failed = len(rnd.assignments), len(rnd.assignments) - rnd.committed
        partial.bytes_up, partial.bytes_down, partial.dense_bytes_down = record.bytes_up, record.bytes_down, \
            rnd.dense_down
        header = pb.UpdateHeader(task_id=task.task_id, round=task.round, num_examples=weight,
                                 metrics=finite_metrics(rnd.means())[0], partial=partial)
        encoded = await loop.run_in_executor(self._decoding, encode_partial, rnd.accumulator, self.strategy.specs)
        try:
            await asyncio.to_thread(self.link.submit, header, encoded)
        except grpc.RpcError as exc:
            log.warning("round %d: the root did not take the partial sum (%s: %s)", task.round, exc.code().name,
                        exc.details())
            await asyncio.to_thread(self.link.recover, exc)
            return
        log.info("round %d: sent the root the sum of %d updates (%d examples, %d payload bytes)", task.round,
                 rnd.committed, weight, encoded.payload_size)

    # ------------------------------------------------------------- as a server

    def _check_edge(self, client_id: str) -> None:
        raise UnsupportedError(f"{client_id} joined as an edge aggregator, but this is an edge: edges join the "
                               "root")

    def _train_task(self, rnd: OpenRound, assignment: Assignment) -> pb.TrainTask:
        """The root's task, under the client's own task id."""
        assert self._root_task is not None
        task = pb.TrainTask()
        task.CopyFrom(self._root_task)
        task.ClearField("edge")
        task.task_id = assignment.task_id
        return task

    def _finished_reason(self) -> str:
        if self.stopped_because:
            return f"the edge stopped: {self.stopped_because}"
        return f"the root finished the federation: {self._root_finished}"

"""The federation's live state and every call a client makes on it.

``ClientCalls`` holds what the round loop and the client calls share (the
registry of clients, the phase, the open round, the wake-up events, the
strategy and decoding threads) and decides each client call: Join, Leave,
ReportFailure, the task long-poll, a download, an upload and its commit, an
evaluation report, and the operator's status. The round loop
(``coordinator.Coordinator``) opens and closes rounds on the same state.

Everything here runs on the server's asyncio event loop: state changes only
there, so it needs no locks, and nothing slow runs on the loop. Every call into
the strategy runs on one "strategy" thread, in submission order, so a
strategy's own state is only ever touched by that thread; decoding and
norm-checking updates run on a pool of decoding threads.

Nothing a client sends can stop the loop: client codec plans are checked at
Join (``admission``), every message is checked against its task before it
touches a round, and a client that cannot do its task (it says so with
ReportFailure, or its upload stalls) is dropped from the round at once.
Nothing here names a method: that is the strategy's business.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from torch import nn

from fedsqueeze.config import ServerConfig
from fedsqueeze.errors import PayloadError, RateLimitError, RoundStateError, UnsupportedError
from fedsqueeze.resources import usable_cores
from fedsqueeze.server.admission import check_client_plan, check_evaluation_report, check_update_header, open_task
from fedsqueeze.server.aggregation import WeightedSum
from fedsqueeze.server.checkpoint import CheckpointStore
from fedsqueeze.server.clients import ClientInfo, ClientRegistry
from fedsqueeze.server.metering import ByteMeter, Traffic
from fedsqueeze.server.norm_policy import NormPolicy
from fedsqueeze.server.observability import ServerMetrics
from fedsqueeze.server.operator_view import federation_status
from fedsqueeze.server.partial_sums import accept_partial
from fedsqueeze.server.records import RunRecords
from fedsqueeze.server.rounds import OUTSTANDING, Assignment, Download, OpenRound, Upload
from fedsqueeze.server.strategies import ClientUpdate, Strategy
from fedsqueeze.specs import parse_spec
from fedsqueeze.text import shown
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import EncodedTensor, decode_tensor

log = logging.getLogger(__name__)

MAX_DOWNLOADS_PER_CLIENT = 2   # DownloadModel streams one client may hold open at once

__all__ = ["ClientCalls", "MAX_DOWNLOADS_PER_CLIENT"]


class ClientCalls:
    """The shared state and the client calls' decisions (see the module doc for which thread runs what)."""

    def __init__(self, config: ServerConfig, strategy: Strategy, model_spec: pb.ModelSpec,
                 evaluate: Callable[[nn.Module], tuple[float, float]] | None, meter: ByteMeter,
                 store: CheckpointStore | None = None, metrics: ServerMetrics | None = None) -> None:
        self.config = config
        self.strategy = strategy
        self.model_spec = model_spec
        self.meter = meter
        self.records = RunRecords(config, meter, store)
        self.norm_policy = NormPolicy(config.max_update_norm, config.norm_action)
        self.quorum = config.quorum               # share of a round's tasks whose updates close it
        self.max_examples = config.max_examples   # the largest weight of one client's update
        self.clients = ClientRegistry(config.client_timeout, config.max_clients, config.joins_per_minute,
                                      config.max_client_plans)
        self.phase = pb.WAITING_FOR_CLIENTS
        self.current: OpenRound | None = None
        self._evaluate = evaluate   # on the server's test set; None: federated evaluation
        self._rng = random.Random(config.seed)
        self._changed = asyncio.Event()         # anything changed: the round loop and the linger wait on it
        self._tasks_changed = asyncio.Event()   # a round opened or the federation finished: long-polls wait on it
        # The yardstick of every compression figure: one float32 copy of the whole global model per committed
        # update and per completed download, whatever a method sends (sub-models, latents, decoders, ...).
        self._model_float32_bytes = sum(spec.dense_bytes for spec in strategy.specs.values())
        self.metrics = metrics or ServerMetrics()
        self.metrics.watch_traffic(self.total_traffic)
        self.metrics.clients.set_function(lambda: len(self.clients.available()))
        self._first_round = 1
        self._method_name = parse_spec(config.method)[0]   # clients find the trainer by the spec's name
        self._method_params = strategy.params.as_dict()   # every task carries them: the trainer reads the same
        self.stopped_because: str | None = None   # why the federation stopped early; None while it has not
        # The one thread that runs every strategy hook, off the event loop. Jobs run in submission order, so a
        # round's aggregation runs after every fold submitted before the round closed, and a strategy's state
        # is never touched by two threads.
        self._strategy_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="strategy")
        # Decoding (zstd, numpy: both release the GIL) gets one thread per usable core. More threads run no
        # faster and each holds an update's transient arrays: asyncio's default pool (6 threads on 2 cores)
        # added ~30 MiB to the peak RSS at 1,000 clients for the same updates/s (benchmarks/results/HISTORY.md).
        self._decoding = ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="decode")

    @property
    def history(self) -> list[pb.RoundMetrics]:
        """Every finished round's record, resumed rounds included."""
        return self.records.history

    def total_traffic(self) -> Traffic:
        """Bytes counted by this run, resumes included."""
        return self.records.total_traffic()

    def submit_evaluation(self, report: pb.EvaluationReport) -> pb.SubmitReply:
        """Count one client's evaluation of the global model, weighted by its held-out examples."""
        client = self.clients.by_session(report.session_id)
        rnd = self.current
        assignment = open_task(rnd, report.task_id, client)
        check_evaluation_report(report, rnd, assignment)
        weight = min(report.num_examples, self.config.max_examples)
        rnd.move(assignment, "committed")
        rnd.add_metrics(dict(report.metrics), weight)
        client.updates_committed += 1
        log.info("round %d: evaluation %d/%d from %s (%d examples, accuracy %.4f)", rnd.number, rnd.committed,
                 len(rnd.assignments), client.client_id, report.num_examples,
                 report.metrics.get("accuracy", float("nan")))
        self._close_if_settled(rnd)
        self._notify()
        return pb.SubmitReply(round=rnd.number)

    # ------------------------------------------------------------- client calls

    def join(self, request: pb.JoinRequest) -> pb.JoinReply:
        client_id, capabilities = request.client_id, request.capabilities
        if request.edge:
            self._check_edge(client_id)
        uplink = self._client_plan("uplink", request.uplink_codec)
        downlink = self._client_plan("downlink", request.downlink_codec)
        info = self.clients.join(client_id, capabilities, uplink, downlink, request.instance_id, request.edge)
        if info.edge:
            log.info("edge aggregator %s joined", client_id)
        else:
            log.info("client %s joined (%d cores, %.0f samples/s, budget %.2f)", client_id, capabilities.cpu_cores,
                     capabilities.train_samples_per_second, capabilities.compute_budget or 1.0)
        self._notify()
        return pb.JoinReply(session_id=info.session_id, model=self.model_spec, max_chunk_bytes=self.config.chunk_bytes)

    def _check_edge(self, client_id: str) -> None:
        """UnsupportedError unless this server's method can take partial sums from edge aggregators."""
        if not self.strategy.relays_through_edges:
            raise UnsupportedError(f"method {self.strategy.name!r} cannot run through edge aggregators (it plans "
                                   f"or folds each client's update itself); join {client_id}'s clients to the "
                                   "root directly, or run a method that relays, e.g. fedavg or fedcompress")

    def _client_plan(self, direction: str, text: str) -> str:
        """A client's codec plan once checked (``admission.check_client_plan``); "" for none or with
        ``--no-client-codecs``."""
        if not text or not self.config.client_codecs:
            return ""
        return check_client_plan(direction, text, self.strategy.specs)

    def leave(self, session_id: str, reason: str) -> None:
        info = self.clients.leave(session_id)
        log.info("client %s left%s", info.client_id, f": {shown(reason)}" if reason else "")
        self._drop(info.client_id, "left")
        self._notify()

    def report_failure(self, session_id: str, task_id: str, reason: str) -> None:
        """A client says it cannot do its task: drop the task from the open round, count it, log why.

        Without a task id the client cannot take part at all: it is also removed, as by Leave, so it is
        not selected again."""
        client = self.clients.by_session(session_id)
        rnd = self.current
        if task_id and (rnd is None or task_id not in rnd.by_task):
            raise RoundStateError(f"task {shown(task_id, 40)} is not a task of the open round")
        log.warning("client %s reports a failure%s: %s", client.client_id,
                    f" in round {rnd.number}" if rnd is not None and rnd.is_open else "", shown(reason))
        self.metrics.task_failures.labels("reported").inc()
        self._drop(client.client_id, "failed", f"{client.client_id}: {shown(reason)}")
        if not task_id:
            self.clients.leave(session_id)
        self._notify()

    def stalled(self, upload: Upload, why: str) -> None:
        """An upload made no progress in time: its task is dropped, so the round settles without it."""
        log.warning("round %d: the upload of %s stalled (%s); it is dropped from the round", upload.round.number,
                    upload.client.client_id, why)
        self.metrics.task_failures.labels("stalled").inc()
        if upload.assignment.status == "uploading" and upload.round.is_open:
            upload.round.move(upload.assignment, "failed")
            upload.round.failures.append(f"{upload.client.client_id}: upload stalled")
            self._close_if_settled(upload.round)
            self._notify()

    def _drop(self, client_id: str, status: str, why: str = "") -> None:
        """Take a client's outstanding task out of the open round (``left`` or ``failed``)."""
        rnd = self.current
        if rnd is None or not rnd.is_open:
            return
        assignment = rnd.assignments.get(client_id)
        if assignment is not None and assignment.status in OUTSTANDING:
            rnd.move(assignment, status)
            if why:
                rnd.failures.append(why)
            self._close_if_settled(rnd)

    async def next_task(self, session_id: str, wait_seconds: float) -> pb.Task:
        """Long-poll: a task as soon as there is one for the caller, else Wait after ``wait_seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(wait_seconds, 0.0), self.config.poll_timeout)
        client = self.clients.by_session(session_id)
        client.open_polls += 1
        try:
            while True:
                task = self._task_for(self.clients.by_session(session_id))
                if task is not None:
                    return task
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return pb.Task(wait=pb.Wait(retry_after_ms=0,
                                                reason=pb.FederationState.Name(self.phase).lower()))
                await self._wait_change(remaining, tasks=True)
        finally:
            client.open_polls -= 1

    def _task_for(self, client: ClientInfo) -> pb.Task | None:
        if self.phase == pb.FINISHED:
            if not client.told_finished:
                client.told_finished = True
                self._notify()   # the linger may be waiting for this
            return pb.Task(finished=pb.Finished(reason=self._finished_reason()[:500]))
        rnd = self.current
        if rnd is None or not rnd.is_open:
            return None
        assignment = rnd.assignments.get(client.client_id)
        if assignment is None or assignment.status != "assigned":
            return None
        plan = assignment.plan
        if rnd.evaluation:
            return pb.Task(evaluate=pb.EvaluateTask(
                round=rnd.number, task_id=assignment.task_id, downlink_codec=plan.downlink_codec,
                model_payload_size=rnd.downlinks[plan.profile].payload_size))
        task = self._train_task(rnd, assignment)
        if client.edge:
            task.edge.CopyFrom(pb.EdgeRound(
                deadline_seconds=max(rnd.deadline - asyncio.get_running_loop().time(), 0.0), quorum=self.quorum,
                fraction=self.config.fraction, sends_delta=plan.sends_delta,
                max_update_norm=self.norm_policy.bound, norm_action=self.norm_policy.action,
                max_examples=self.max_examples))
        return pb.Task(train=task)

    def _finished_reason(self) -> str:
        """What clients are told when the federation is over."""
        if self.stopped_because:
            return f"the server stopped the federation: {self.stopped_because}"
        return f"all {self.config.rounds} rounds done"

    def _train_task(self, rnd: OpenRound, assignment: Assignment) -> pb.TrainTask:
        """The train task of an assignment: its plan, the method and its parameters, the training loop."""
        plan = assignment.plan
        return pb.TrainTask(
            round=rnd.number, task_id=assignment.task_id, method=self._method_name, trainer=self.config.trainer,
            method_config_json=json.dumps({**plan.method_config, "params": self._method_params}),
            hyperparameters=plan.hyperparameters,
            uplink_codec=plan.uplink_codec, downlink_codec=plan.downlink_codec,
            model_payload_size=rnd.downlinks[plan.profile].payload_size,
            error_feedback=self.config.error_feedback and plan.error_feedback)

    def begin_download(self, session_id: str, task_id: str) -> Download:
        """Check a download request; the caller must ``end_download`` it whatever happens."""
        client = self.clients.by_session(session_id)
        rnd = self.current
        assignment = open_task(rnd, task_id, client)
        if client.open_downloads >= MAX_DOWNLOADS_PER_CLIENT:
            raise RateLimitError(f"{client.open_downloads} downloads already in flight for {client.client_id} "
                                 f"(at most {MAX_DOWNLOADS_PER_CLIENT}): finish or cancel one first")
        client.open_downloads += 1
        return Download(rnd, assignment, client, rnd.downlinks[assignment.plan.profile])

    def end_download(self, download: Download, completed: bool) -> None:
        """A download stream ended; once per task, a completed one counts in the yardstick and the strategy."""
        download.client.open_downloads -= 1
        rnd, assignment = download.round, download.assignment
        if not completed or assignment.downloaded or rnd is not self.current or not rnd.is_open:
            return
        assignment.downloaded = True
        if not download.client.edge:   # an edge's download is a hop of its clients' ones, which it counts itself
            rnd.dense_down += self._model_float32_bytes
        if not rnd.evaluation:
            self._strategy_thread.submit(self.strategy.downloaded, assignment.plan, download.model.payload_size)

    def begin_upload(self, header: pb.UpdateHeader) -> Upload:
        """Check an update's header; reserve its task until ``commit`` or ``Upload.release``."""
        client = self.clients.by_session(header.session_id)
        rnd = self.current
        assignment = open_task(rnd, header.task_id, client)
        check_update_header(header, rnd, assignment)
        if header.HasField("partial") != client.edge:
            raise PayloadError("an edge aggregator's update must carry its PartialSum" if client.edge else
                               "only edge aggregators send partial sums")
        rnd.move(assignment, "uploading")
        return Upload(rnd, assignment, client, header)

    async def commit(self, upload: Upload, encoded: list[EncodedTensor]) -> pb.SubmitReply:
        """Decode a complete, verified update and fold it into its round, if that round is still open.

        Decoding and the norm bound run in one decoding-thread job; the fold runs on the strategy thread,
        submitted while the round is open, so it lands before the round's aggregation. The update counts
        only once its fold succeeded: a strategy whose ``accumulate`` raises leaves the round as if the
        update had been refused (``accumulate`` must raise before it changes the sum, as the built-in ones do).
        The weight is the claimed example count capped at ``--max-examples``.
        """
        if upload.client.edge:
            return await self._commit_partial(upload, encoded)
        rnd, assignment, header = upload.round, upload.assignment, upload.header
        loop = asyncio.get_running_loop()
        tensors = await loop.run_in_executor(self._decoding, self._decode_bounded, assignment, encoded)
        if rnd is not self.current or not rnd.is_open:
            raise RoundStateError(f"round {rnd.number} closed while the update was in flight")
        sizes = {t.spec.name: len(t.payload) for t in encoded}
        weight = min(header.num_examples, self.max_examples)
        if weight < header.num_examples:
            log.info("round %d: %s claims %d examples; weighted as %d (--max-examples)", rnd.number,
                     upload.client.client_id, header.num_examples, weight)
        update = ClientUpdate(upload.client.client_id, assignment.plan, tensors, weight,
                              dict(header.metrics), sizes)
        try:
            await loop.run_in_executor(self._strategy_thread, self.strategy.accumulate, rnd.accumulator, update)
        except Exception:
            log.exception("round %d: the strategy could not fold the update of %s; it is refused", rnd.number,
                          upload.client.client_id)
            raise PayloadError("the server's method could not fold this update (the server log says why)") from None
        rnd.move(assignment, "committed")
        upload.client.updates_committed += 1
        self.metrics.updates.inc()
        self.metrics.update_seconds.observe(time.monotonic() - upload.started)
        rnd.dense_up += self._model_float32_bytes
        rnd.add_metrics(update.metrics, update.num_examples)
        log.info("round %d: update %d/%d from %s (%d examples)", rnd.number, rnd.committed, len(rnd.assignments),
                 update.client_id, update.num_examples)
        self._close_if_settled(rnd)
        self._notify()
        return pb.SubmitReply(round=rnd.number)

    async def _commit_partial(self, upload: Upload, encoded: list[EncodedTensor]) -> pb.SubmitReply:
        """Check an edge aggregator's partial sum and merge it into its round, as ``commit`` folds an update.

        The edge applied this server's policies (norm bound, example cap) to each of its clients' updates; the
        sum itself is checked (``partial_sums.accept_partial``) before the strategy merges it.
        """
        rnd, assignment, header = upload.round, upload.assignment, upload.header
        loop = asyncio.get_running_loop()
        partial = await loop.run_in_executor(self._decoding, self._decode_partial, assignment, encoded, header)
        if rnd is not self.current or not rnd.is_open:
            raise RoundStateError(f"round {rnd.number} closed while the partial sum was in flight")
        try:
            await loop.run_in_executor(self._strategy_thread, self.strategy.merge_partial, rnd.accumulator, partial)
        except ValueError as exc:
            raise PayloadError(f"the partial sum cannot be merged: {exc}") from None
        rnd.move(assignment, "committed")
        rnd.add_partial(header.partial)
        upload.client.updates_committed += 1
        self.metrics.updates.inc(partial.count)
        rnd.dense_up += partial.count * self._model_float32_bytes
        rnd.add_metrics(dict(header.metrics), partial.weight)
        log.info("round %d: partial sum %d/%d from edge %s (%d updates, %d examples)", rnd.number, rnd.committed,
                 len(rnd.assignments), upload.client.client_id, partial.count, header.num_examples)
        self._close_if_settled(rnd)
        self._notify()
        return pb.SubmitReply(round=rnd.number)

    def _decode_partial(self, assignment: Assignment, encoded: list[EncodedTensor],
                        header: pb.UpdateHeader) -> WeightedSum:
        tensors = {t.spec.name: decode_tensor(t, assignment.expected[t.spec.name]) for t in encoded}
        return accept_partial(header, tensors, self.max_examples)

    def _decode_bounded(self, assignment: Assignment, encoded: list[EncodedTensor]) -> dict[str, np.ndarray]:
        """The update's tensors, decoded (non-finite values refused) and norm-bounded; reads no mutable state."""
        tensors = {t.spec.name: decode_tensor(t, assignment.expected[t.spec.name]) for t in encoded}
        return self.norm_policy.apply(assignment.plan.sends_delta, tensors)

    def _close_if_settled(self, rnd: OpenRound) -> None:
        if rnd.settled(self.quorum):
            rnd.closed.set()

    # ------------------------------------------------------------ operator view

    def status(self, include_history: bool) -> pb.FederationStatus:
        return federation_status(self.phase, self.current, self.config.rounds, self.strategy.name, self.clients,
                                 self.history, self.total_traffic(), include_history)

    # ---------------------------------------------------------------- plumbing

    def _notify(self, tasks: bool = False) -> None:
        """Wake the round loop's waiters: something changed; with ``tasks``, wake every long-poll too.

        Only opening a round and finishing give a polling client something new, so commits, joins and
        leaves wake no poll: at 1,000 clients that is a million needless wake-ups a round saved.
        """
        self._changed.set()
        self._changed = asyncio.Event()
        if tasks:
            self._tasks_changed.set()
            self._tasks_changed = asyncio.Event()

    async def wait_for_tasks(self, timeout: float) -> None:
        """Return once a round opens or the federation finishes, or after ``timeout``: what a long-poll waits for
        (an in-process driver of virtual clients waits on it instead of polling)."""
        await self._wait_change(timeout, tasks=True)

    async def _wait_change(self, timeout: float, tasks: bool = False) -> None:
        changed = self._tasks_changed if tasks else self._changed
        try:
            await asyncio.wait_for(changed.wait(), max(timeout, 0.0))
        except TimeoutError:
            pass

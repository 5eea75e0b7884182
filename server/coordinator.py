"""The round loop: when rounds open, what each is planned to be, when it closes and what follows.

A round: wait for ``min_clients`` -> select -> ask the strategy for plans ->
encode the download once per profile -> publish the round (the client calls in
``client_calls`` hand out its tasks through long-polls and commit verified
updates into the running sum) -> close at quorum or deadline -> aggregate ->
evaluate -> record -> checkpoint (with a state directory). A server without
data evaluates through its clients (federated evaluation): after aggregating
it opens an evaluation round on the same machinery (select, encode the new
model once, hand out evaluate tasks, collect ``SubmitEvaluation`` reports,
close at quorum or deadline) and records the example-weighted mean. Edge
aggregators take part in every round (each selects among its own clients,
with the server's ``--fraction``) and answer with partial sums. A round
attempt that gets no update by its deadline is planned again with a fresh
selection; one that cannot be prepared or closed is logged and tried again
with the global model as it was. Started on a state directory that holds a
checkpoint, the loop resumes at the round after it.

The loop runs on the server's asyncio event loop; planning, aggregation and
checkpoints run on the strategy thread (``configure``, ``downlink``,
``expected_update``, encoding the downloads, ``aggregate``, ``state_dict``),
evaluation on a worker thread. Its parts keep one job each: ``client_calls``
(the shared state and every client call), ``rounds`` (a round attempt as
data), ``admission`` (checks a client's message must pass before it touches a
round), ``norm_policy`` (the update-size bound), ``records`` (records,
checkpoints, the report) and ``operator_view`` (the status answer). None of
them, nor the loop, names a method: that is the strategy's business.
"""
from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from typing import Any

from fedsqueeze.codecs import CodecError
from fedsqueeze.server.client_calls import ClientCalls
from fedsqueeze.server.clients import ClientInfo
from fedsqueeze.server.partial_sums import expected_partial
from fedsqueeze.server.records import finite_metrics
from fedsqueeze.server.rounds import Assignment, Download, OpenRound, Upload
from fedsqueeze.server.strategies import ClientPlan
from fedsqueeze.text import shown
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import EncodedModel, ExpectedTensor, encode_model, expect_all

log = logging.getLogger(__name__)

EVALUATION_PROFILE = "evaluate"   # the one download of an evaluation round
RETRY_SECONDS = 5.0            # pause before trying again a round that could not be prepared or closed
MAX_ROUND_FAILURES = 3         # a round that fails this many times in a row stops the federation

__all__ = ["Coordinator", "Download", "MAX_ROUND_FAILURES", "Upload"]


class Coordinator(ClientCalls):
    """The round loop, on the state and client calls of ``ClientCalls``."""

    def resume(self) -> int:
        """Load the state directory's checkpoint, if any; return the last committed round (0 for none)."""
        last = self.records.resume(self.strategy)
        self.metrics.restore(self.history)
        self._first_round = last + 1
        return last

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Run every round, then tell clients the federation finished.

        A round attempt that gets no update, or that cannot be prepared or closed (an exception in the
        strategy, a full disk, ...), is logged and planned again with a fresh selection; the server keeps
        serving. A round that cannot be prepared or closed, or whose every selected client reports that it
        cannot do its task, ``MAX_ROUND_FAILURES`` times is a fault retrying will not cure (a method that does
        not fit the model, say): the federation stops, clients are told why, and ``stopped_because`` says it
        (the server then exits non-zero). Each such attempt is followed by a pause, so clients that fail at once
        never spin the loop.
        """
        for number in range(self._first_round, self.config.rounds + 1):
            attempt, failures = 0, 0
            while failures < MAX_ROUND_FAILURES:
                attempt += 1
                await self._wait_for_clients()
                try:
                    rnd = await self._open_round(number, attempt)
                except Exception as exc:
                    failures += 1
                    self.stopped_because = f"round {number} could not be prepared: {type(exc).__name__}: {exc}"
                    log.exception("round %d attempt %d could not be prepared (%d of %d)", number, attempt, failures,
                                  MAX_ROUND_FAILURES)
                    await asyncio.sleep(RETRY_SECONDS if failures < MAX_ROUND_FAILURES else 0)
                    continue
                await self._wait_until_closed(rnd)
                if not rnd.committed and rnd.by_status["failed"] == len(rnd.assignments):
                    failures += 1
                    self.stopped_because = (f"round {number}: every selected client reported that it cannot do "
                                            f"its task; the first: {rnd.failures[0]}")
                    log.warning("%s (%d of %d)", self.stopped_because, failures, MAX_ROUND_FAILURES)
                    await asyncio.sleep(RETRY_SECONDS if failures < MAX_ROUND_FAILURES else 0)
                    continue
                if not rnd.committed:
                    log.warning("round %d attempt %d: no update before the deadline; selecting again", number,
                                attempt)
                    continue
                if await self._finish_round(rnd):
                    break
                failures += 1
                await asyncio.sleep(RETRY_SECONDS if failures < MAX_ROUND_FAILURES else 0)
            else:
                log.error("round %d failed %d times in a row; stopping the federation: %s", number, failures,
                          self.stopped_because)
                break
            self.stopped_because = None
        self.phase = pb.FINISHED
        self._notify(tasks=True)
        if self.stopped_because is None:
            log.info("federation finished after %d rounds", self.config.rounds)
        await self._linger()

    async def _wait_for_clients(self) -> None:
        need = self.config.min_clients
        last_log = 0.0
        while (have := len(self.clients.available())) < need:
            self.phase = pb.WAITING_FOR_CLIENTS
            if time.monotonic() - last_log > 30:
                log.info("waiting for clients: %d of %d connected", have, need)
                last_log = time.monotonic()
            await self._wait_change(1.0)

    async def _open_round(self, number: int, attempt: int) -> OpenRound:
        loop = asyncio.get_running_loop()
        started = loop.time()   # the round's clock includes encoding its downloads
        available = self.clients.available()
        edges = [c for c in available if c.edge]   # every edge takes part; it selects among its own clients
        direct = [c for c in available if not c.edge]
        count = min(len(direct), self._cohort_size(len(direct)))
        selected = edges + self._rng.sample(direct, count)
        plans, downlinks, expected, accumulator = await loop.run_in_executor(
            self._strategy_thread, self._plan_round, number, selected)
        assignments = {client_id: Assignment(client_id, secrets.token_urlsafe(12), plan, expected[client_id])
                       for client_id, plan in plans.items()}
        rnd = OpenRound(number, attempt, started, loop.time() + self.config.round_timeout,
                        assignments, downlinks, accumulator)
        self._publish(rnd, pb.TRAINING)
        names = sorted(plans)
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        log.info("round %d%s: %d of %d clients selected%s: %s", number, f" (attempt {attempt})" if attempt > 1 else "",
                 count, len(direct), f", and {len(edges)} edge aggregators" if edges else "", shown)
        return rnd

    def _cohort_size(self, available: int) -> int:
        """How many of ``available`` clients a round selects: ``--clients-per-round``, else ``--fraction``."""
        if self.config.clients_per_round:
            return self.config.clients_per_round
        return max(self.config.min_clients, math.ceil(self.config.fraction * available))

    def _publish(self, rnd: OpenRound, phase: pb.FederationState) -> None:
        """Make ``rnd`` the open round and wake the long-polls; clients that left while it was planned are out."""
        for assignment in rnd.assignments.values():
            if not self.clients.has(assignment.client_id):
                rnd.move(assignment, "left")
        self.current = rnd
        self._close_if_settled(rnd)
        self.phase = phase
        self._notify(tasks=True)

    def _plan_round(self, number: int, selected: list[ClientInfo]) -> tuple[
            dict[str, ClientPlan], dict[str, EncodedModel], dict[str, dict[str, ExpectedTensor]], Any]:
        """On the strategy thread: the plans, one encoded download per profile, each plan's expected update.

        A profile whose download cannot be encoded (a client's codec plan that passed the Join checks yet
        fails on the whole model) drops its clients from this round, logged; the others go ahead.
        """
        plans = self.strategy.configure(number, selected)
        downlinks: dict[str, EncodedModel] = {}
        for profile in sorted({plan.profile for plan in plans.values()}):
            try:
                tensors, expected = self.strategy.downlink(profile)
                downlinks[profile] = encode_model(tensors, expected)
            except (ValueError, CodecError) as exc:
                log.warning("round %d: cannot encode the download of profile %s (%s); its clients sit this "
                            "round out", number, shown(profile), shown(str(exc)))
        plans = {client_id: plan for client_id, plan in plans.items() if plan.profile in downlinks}
        if not plans:
            raise RuntimeError(f"round {number}: no selected client's download could be encoded")
        edges = {client.client_id for client in selected if client.edge}
        expected_updates = {client_id: expected_partial(self.strategy.specs) if client_id in edges else
                            self.strategy.expected_update(plan) for client_id, plan in plans.items()}
        return plans, downlinks, expected_updates, self.strategy.new_accumulator()

    async def _wait_until_closed(self, rnd: OpenRound) -> None:
        timeout = rnd.deadline - asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(rnd.closed.wait(), timeout)
        except TimeoutError:
            log.info("round %d: deadline reached with %d of %d updates", rnd.number, rnd.committed,
                     len(rnd.assignments))
        rnd.is_open = False
        self.phase = pb.AGGREGATING
        self._notify()

    async def _finish_round(self, rnd: OpenRound) -> bool:
        """Aggregate, evaluate, record and checkpoint a closed round; False (logged, model as it was, the reason in
        ``stopped_because``) on failure."""
        loop = asyncio.get_running_loop()
        closed = loop.time()
        before = {name: value.clone() for name, value in self.strategy.model.state_dict().items()}
        try:
            strategy_metrics = await loop.run_in_executor(
                self._strategy_thread, self.strategy.aggregate, rnd.number, rnd.accumulator,
                finite_metrics(rnd.means())[0])
            aggregated = loop.time()
            if self._evaluate is not None:
                accuracy, loss = await asyncio.to_thread(self._evaluate, self.strategy.model)
                evaluation = None
            else:
                evaluation = await self._federated_evaluation(rnd.number)
                accuracy, loss = evaluation.mean("accuracy"), evaluation.mean("loss")
            evaluated = loop.time()
            record, traffic = self.records.record(rnd, accuracy, loss, rnd.means(), strategy_metrics, evaluation,
                                                  loop.time() - rnd.started)
            if self.records.store:
                await loop.run_in_executor(self._strategy_thread, self.records.checkpoint, record, self.strategy)
        except Exception as exc:
            self.stopped_because = f"round {rnd.number} could not be closed: {type(exc).__name__}: {exc}"
            log.exception("round %d could not be closed; the global model is restored", rnd.number)
            self.strategy.model.load_state_dict(before)
            return False
        self.records.commit(record, traffic)
        self.metrics.rounds.inc()
        self.metrics.record(record)
        log.info("round %d done: accuracy %.4f, loss %.4f, %d/%d updates%s, up %d B, down %d B, %.1f s "
                 "(aggregation %.1f s, evaluation %.1f s)", rnd.number, accuracy, loss, rnd.committed,
                 len(rnd.assignments), f", {record.failed} failed" if record.failed else "", record.bytes_up,
                 record.bytes_down,
                 record.seconds, aggregated - closed, evaluated - aggregated)
        await asyncio.to_thread(self.write_report)
        return True

    async def _federated_evaluation(self, number: int) -> OpenRound:
        """Ask clients to evaluate the new global model; return the closed evaluation round (its metric sums).

        ``--fraction-evaluate`` of the available clients (at least one) each download the model once, encoded
        with the server's downlink plan, and report metrics on their held-out split. It closes at quorum or
        after ``--round-timeout``; a round that no client evaluated records accuracy and loss as NaN (the report
        writes null) and ``evaluated`` 0.
        """
        await self._wait_for_clients()
        loop = asyncio.get_running_loop()
        started = loop.time()
        available = [c for c in self.clients.available() if not c.edge]   # edges do not evaluate
        count = min(len(available), max(1, math.ceil(self.config.fraction_evaluate * len(available))))
        selected = self._rng.sample(available, count)
        tensors, codec = await loop.run_in_executor(self._strategy_thread, self.strategy.evaluation_model)
        encoded = await loop.run_in_executor(self._decoding, encode_model, tensors,
                                             expect_all(self.strategy.specs, codec))
        plan = ClientPlan(profile=EVALUATION_PROFILE, hyperparameters=pb.Hyperparameters(), uplink_codec="",
                          downlink_codec=codec)
        assignments = {c.client_id: Assignment(c.client_id, secrets.token_urlsafe(12), plan, {}) for c in selected}
        rnd = OpenRound(number, 1, started, loop.time() + self.config.round_timeout, assignments,
                        {EVALUATION_PROFILE: encoded}, None, evaluation=True)
        self._publish(rnd, pb.EVALUATING)
        log.info("round %d: %d clients evaluate the new model", number, count)
        await self._wait_until_closed(rnd)
        if not rnd.committed:
            log.warning("round %d: no client evaluated the model before the deadline", number)
        return rnd

    async def _linger(self) -> None:
        """Keep answering Finished until every known client has heard it, or ``linger`` passes."""
        end = time.monotonic() + self.config.linger
        while any(not c.told_finished for c in self.clients.all()) and time.monotonic() < end:
            await self._wait_change(end - time.monotonic())

    def write_report(self) -> None:
        """``report.json`` in ``--out``, as the run stands now."""
        self.records.write_report(self.strategy.name)

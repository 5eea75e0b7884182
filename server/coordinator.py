"""The round loop and every decision about who does what, when.

The coordinator lives on the server's asyncio event loop: its state changes
only there, so it needs no locks. Heavy work runs in worker threads: encoding
the downlink and evaluation while no round is open, decoding and norm-checking
each update as it commits, and, on one folding thread in commit order, adding
each update to the round's sum and then the round's aggregation.

A round: wait for ``min_clients`` -> select -> ask the strategy for plans ->
encode the download once per profile -> hand out train tasks through long-polls
-> commit verified updates into the running sum -> close at quorum or deadline
-> aggregate -> evaluate -> record -> checkpoint (with a state directory). A
round attempt that gets no update by its deadline is planned again with a fresh
selection. Started on a state directory that holds a checkpoint, the loop
resumes at the round after it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from fedsqueeze.config import ServerConfig
from fedsqueeze.errors import ConflictError, PayloadError, RoundStateError
from fedsqueeze.resources import usable_cores
from fedsqueeze.server.aggregation import WeightedSum
from fedsqueeze.server.checkpoint import Checkpoint, CheckpointStore
from fedsqueeze.server.clients import ClientInfo, ClientRegistry
from fedsqueeze.server.history import build_report
from fedsqueeze.server.metering import ByteMeter, Traffic
from fedsqueeze.server.observability import ServerMetrics
from fedsqueeze.server.storage import write_json_atomic
from fedsqueeze.server.strategies import ClientPlan, ClientUpdate, Strategy
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import EncodedModel, EncodedTensor, ExpectedTensor, decode_tensor, encode_model

log = logging.getLogger(__name__)

MAX_NUM_EXAMPLES = 1 << 31
MAX_UPDATE_METRICS = 64


@dataclass
class Assignment:
    """One client's task in one round attempt."""

    client_id: str
    task_id: str
    plan: ClientPlan
    expected: dict[str, ExpectedTensor]
    status: str = "assigned"   # assigned -> uploading -> committed; or left (changed by OpenRound.move only)


OUTSTANDING = ("assigned", "uploading")


@dataclass
class OpenRound:
    number: int
    attempt: int
    started: float
    deadline: float
    assignments: dict[str, Assignment]            # by client id
    downlinks: dict[str, EncodedModel]            # by profile
    accumulator: WeightedSum
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    is_open: bool = True
    dense_up: int = 0
    dense_down: int = 0
    metric_sums: dict[str, float] = field(default_factory=dict)
    metric_weight: float = 0.0
    by_task: dict[str, Assignment] = field(init=False)
    by_status: Counter[str] = field(init=False)

    def __post_init__(self) -> None:
        self.by_task = {a.task_id: a for a in self.assignments.values()}
        self.by_status = Counter(a.status for a in self.assignments.values())

    def move(self, assignment: Assignment, status: str) -> None:
        """Set an assignment's status and keep the per-status counts, so settling a round is O(1) per event."""
        self.by_status[assignment.status] -= 1
        self.by_status[status] += 1
        assignment.status = status

    @property
    def committed(self) -> int:
        """Updates committed in this round attempt."""
        return self.by_status["committed"]

    @property
    def outstanding(self) -> int:
        """Tasks still expected to bring an update: handed out or uploading."""
        return sum(self.by_status[s] for s in OUTSTANDING)


@dataclass
class Upload:
    """An update stream in progress: what it must contain and where it will land."""

    round: OpenRound
    assignment: Assignment
    client: ClientInfo
    header: pb.UpdateHeader
    started: float = field(default_factory=time.monotonic)

    @property
    def expected(self) -> dict[str, ExpectedTensor]:
        return self.assignment.expected

    def release(self) -> None:
        """Give the task back if the stream failed before it committed."""
        if self.assignment.status == "uploading":
            self.round.move(self.assignment, "assigned")


class Coordinator:
    def __init__(self, config: ServerConfig, strategy: Strategy, model_spec: pb.ModelSpec,
                 evaluate: Callable[[nn.Module], tuple[float, float]], meter: ByteMeter,
                 store: CheckpointStore | None = None, metrics: ServerMetrics | None = None) -> None:
        self.config = config
        self.strategy = strategy
        self.model_spec = model_spec
        self.meter = meter
        self.clients = ClientRegistry(config.client_timeout, config.max_clients, config.joins_per_minute)
        if config.norm_action not in ("refuse", "clip"):
            raise ValueError(f"--norm-action must be refuse or clip, not {config.norm_action!r}")
        self.phase = pb.WAITING_FOR_CLIENTS
        self.current: OpenRound | None = None
        self.history: list[pb.RoundMetrics] = []
        self._evaluate = evaluate
        self._rng = random.Random(config.seed)
        self._changed = asyncio.Event()         # anything changed: the round loop and the linger wait on it
        self._tasks_changed = asyncio.Event()   # a round opened or the federation finished: long-polls wait on it
        self._traffic_at_last_close = meter.snapshot()
        self._store = store
        # The yardstick of every compression figure: one float32 copy of the whole global model per committed
        # update and per completed download, whatever a method sends (sub-models, latents, decoders, ...).
        self._model_float32_bytes = sum(spec.dense_bytes for spec in strategy.specs.values())
        self.metrics = metrics or ServerMetrics()
        self.metrics.watch_traffic(self.total_traffic)
        self.metrics.clients.set_function(lambda: len(self.clients.available()))
        self._first_round = 1
        self._earlier_traffic = Traffic(0, 0)   # counted by the server runs before a resume
        # The one thread that folds updates into a round's sum and aggregates it, off the event loop. Jobs run
        # in submission order, so a round's aggregation runs after every fold committed before the round closed.
        self._folding = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fold")
        # Decoding (zstd, numpy: both release the GIL) gets one thread per usable core. More threads run no
        # faster and each holds an update's transient arrays: asyncio's default pool (6 threads on 2 cores)
        # added ~30 MiB to the peak RSS at 1,000 clients for the same updates/s (README, "The server at scale").
        self._decoding = ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="decode")

    def resume(self) -> int:
        """Load the state directory's checkpoint, if any; return the last committed round (0 for none)."""
        checkpoint = self._store.load() if self._store else None
        if checkpoint is None:
            return 0
        self.strategy.model.load_state_dict(checkpoint.model)
        self.strategy.load_state_dict(checkpoint.strategy)
        self.history = checkpoint.history
        self._earlier_traffic = Traffic(checkpoint.bytes_up, checkpoint.bytes_down)
        self._first_round = checkpoint.round + 1
        log.info("resumed from %s after round %d", self._store.folder, checkpoint.round)
        return checkpoint.round

    def total_traffic(self) -> Traffic:
        """Bytes counted by this run, resumes included."""
        return self.meter.snapshot() + self._earlier_traffic

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Run every round, then tell clients the federation finished."""
        for number in range(self._first_round, self.config.rounds + 1):
            attempt = 0
            while True:
                attempt += 1
                await self._wait_for_clients()
                rnd = await self._open_round(number, attempt)
                await self._wait_until_closed(rnd)
                if rnd.committed:
                    break
                log.warning("round %d attempt %d: no update before the deadline; selecting again", number, attempt)
            await self._finish_round(rnd)
        self.phase = pb.FINISHED
        self._notify(tasks=True)
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
        count = min(len(available), max(self.config.min_clients, math.ceil(self.config.fraction * len(available))))
        selected = self._rng.sample(available, count)
        plans = self.strategy.configure(number, selected)
        downlinks = {}
        for profile in sorted({plan.profile for plan in plans.values()}):
            tensors, expected = self.strategy.downlink(profile)
            downlinks[profile] = await asyncio.to_thread(encode_model, tensors, expected)
        assignments = {
            client_id: Assignment(client_id, secrets.token_urlsafe(12), plan, self.strategy.expected_update(plan))
            for client_id, plan in plans.items()
        }
        rnd = OpenRound(number, attempt, started, loop.time() + self.config.round_timeout,
                        assignments, downlinks, self.strategy.new_accumulator())
        self.current = rnd
        self.phase = pb.TRAINING
        self._notify(tasks=True)
        names = sorted(plans)
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        log.info("round %d%s: %d of %d clients selected: %s", number, f" (attempt {attempt})" if attempt > 1 else "",
                 count, len(available), shown)
        return rnd

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

    async def _finish_round(self, rnd: OpenRound) -> None:
        loop = asyncio.get_running_loop()
        closed = loop.time()
        client_metrics = {k: v / rnd.metric_weight for k, v in sorted(rnd.metric_sums.items())}
        strategy_metrics = await loop.run_in_executor(
            self._folding, self.strategy.aggregate, rnd.number, rnd.accumulator, client_metrics)
        aggregated = loop.time()
        accuracy, loss = await asyncio.to_thread(self._evaluate, self.strategy.model)
        evaluated = loop.time()
        traffic = self.meter.snapshot()
        spent = traffic - self._traffic_at_last_close
        self._traffic_at_last_close = traffic
        metrics = {f"client_{k}": v for k, v in client_metrics.items()}
        metrics.update(strategy_metrics)
        record = pb.RoundMetrics(round=rnd.number, accuracy=accuracy, loss=loss, bytes_up=spent.up,
                             bytes_down=spent.down, seconds=loop.time() - rnd.started,
                             selected=len(rnd.assignments), updates=rnd.committed, dense_bytes_up=rnd.dense_up,
                             dense_bytes_down=rnd.dense_down, metrics=metrics)
        self.history.append(record)
        self.metrics.rounds.inc()
        self.metrics.accuracy.set(accuracy)
        if self._store:
            traffic = self.total_traffic()
            await asyncio.to_thread(self._store.save, Checkpoint(
                rnd.number, self.strategy.model.state_dict(), self.history, traffic.up, traffic.down,
                self.strategy.state_dict()))
        log.info("round %d done: accuracy %.4f, loss %.4f, %d/%d updates, up %d B, down %d B, %.1f s "
                 "(aggregation %.1f s, evaluation %.1f s)", rnd.number, accuracy, loss, rnd.committed,
                 len(rnd.assignments), spent.up, spent.down, record.seconds, aggregated - closed,
                 evaluated - aggregated)
        await asyncio.to_thread(self.write_report)

    async def _linger(self) -> None:
        """Keep answering Finished until every known client has heard it, or ``linger`` passes."""
        end = time.monotonic() + self.config.linger
        while any(not c.told_finished for c in self.clients.all()) and time.monotonic() < end:
            await self._wait_change(end - time.monotonic())

    def write_report(self) -> None:
        if not self.config.out:
            return
        traffic = self.total_traffic()
        report = build_report(self.strategy.name, asdict(self.config), self.history, traffic.up, traffic.down)
        write_json_atomic(Path(self.config.out) / "report.json", report)

    # ------------------------------------------------------------- client calls

    def join(self, request: pb.JoinRequest) -> pb.JoinReply:
        client_id, capabilities = request.client_id, request.capabilities
        info = self.clients.join(client_id, capabilities, request.uplink_codec, request.downlink_codec,
                                 request.instance_id)
        log.info("client %s joined (%d cores, %.0f samples/s, budget %.2f)", client_id, capabilities.cpu_cores,
                 capabilities.train_samples_per_second, capabilities.compute_budget or 1.0)
        self._notify()
        return pb.JoinReply(session_id=info.session_id, model=self.model_spec, max_chunk_bytes=self.config.chunk_bytes)

    def leave(self, session_id: str, reason: str) -> None:
        info = self.clients.leave(session_id)
        log.info("client %s left%s", info.client_id, f": {reason[:200]}" if reason else "")
        rnd = self.current
        if rnd is not None and rnd.is_open:
            assignment = rnd.assignments.get(info.client_id)
            if assignment is not None and assignment.status != "committed":
                rnd.move(assignment, "left")
                self._close_if_settled(rnd)
        self._notify()

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
            return pb.Task(finished=pb.Finished(reason=f"all {self.config.rounds} rounds done"))
        rnd = self.current
        if rnd is None or not rnd.is_open:
            return None
        assignment = rnd.assignments.get(client.client_id)
        if assignment is None or assignment.status != "assigned":
            return None
        plan = assignment.plan
        return pb.Task(train=pb.TrainTask(
            round=rnd.number, task_id=assignment.task_id, method=self.strategy.name,
            method_config_json=json.dumps(plan.method_config), hyperparameters=plan.hyperparameters,
            uplink_codec=plan.uplink_codec, downlink_codec=plan.downlink_codec,
            model_payload_size=rnd.downlinks[plan.profile].payload_size,
            error_feedback=self.config.error_feedback and plan.error_feedback))

    def begin_download(self, session_id: str, task_id: str) -> tuple[OpenRound, ClientPlan, EncodedModel]:
        client = self.clients.by_session(session_id)
        rnd, assignment = self._open_task(task_id, client)
        return rnd, assignment.plan, rnd.downlinks[assignment.plan.profile]

    def download_completed(self, rnd: OpenRound, plan: ClientPlan, model: EncodedModel) -> None:
        rnd.dense_down += self._model_float32_bytes
        self.strategy.downloaded(plan, model.payload_size)

    def begin_upload(self, header: pb.UpdateHeader) -> Upload:
        """Check an update's header; reserve its task until ``commit`` or ``Upload.release``."""
        client = self.clients.by_session(header.session_id)
        rnd, assignment = self._open_task(header.task_id, client)
        if header.round != rnd.number:
            raise RoundStateError(f"update says round {header.round}, but task {header.task_id} "
                                  f"belongs to round {rnd.number}")
        if assignment.status == "committed":
            raise RoundStateError(f"task {header.task_id}: an update was already committed")
        if assignment.status == "uploading":
            raise ConflictError(f"task {header.task_id}: another upload is in progress")
        if not 1 <= header.num_examples <= MAX_NUM_EXAMPLES:
            raise PayloadError(f"num_examples must be in [1, {MAX_NUM_EXAMPLES}], not {header.num_examples}")
        if len(header.metrics) > MAX_UPDATE_METRICS:
            raise PayloadError(f"at most {MAX_UPDATE_METRICS} metrics per update, not {len(header.metrics)}")
        bad = [k for k, v in header.metrics.items() if not math.isfinite(v) or len(k) > 64]
        if bad:
            raise PayloadError(f"metrics {sorted(bad)[:5]} have non-finite values or names over 64 characters")
        rnd.move(assignment, "uploading")
        return Upload(rnd, assignment, client, header)

    async def commit(self, upload: Upload, encoded: list[EncodedTensor]) -> pb.SubmitReply:
        """Decode a complete, verified update and fold it into its round, if that round is still open.

        Decoding and the norm bound run in one worker-thread job; the update then counts at once (nothing
        awaited between the round check and the bookkeeping), and the reply waits until the folding
        thread has added it to the round's sum.
        """
        rnd, assignment, header = upload.round, upload.assignment, upload.header
        tensors = await asyncio.get_running_loop().run_in_executor(self._decoding, self._decode_bounded,
                                                                   assignment, encoded)
        if rnd is not self.current or not rnd.is_open:
            raise RoundStateError(f"round {rnd.number} closed while the update was in flight")
        sizes = {t.spec.name: len(t.payload) for t in encoded}
        update = ClientUpdate(upload.client.client_id, assignment.plan, tensors, header.num_examples,
                              dict(header.metrics), sizes)
        folded = asyncio.get_running_loop().run_in_executor(self._folding, self.strategy.accumulate,
                                                            rnd.accumulator, update)
        rnd.move(assignment, "committed")
        upload.client.updates_committed += 1
        self.metrics.updates.inc()
        self.metrics.update_seconds.observe(time.monotonic() - upload.started)
        rnd.dense_up += self._model_float32_bytes
        for key, value in update.metrics.items():
            rnd.metric_sums[key] = rnd.metric_sums.get(key, 0.0) + value * update.num_examples
        rnd.metric_weight += update.num_examples
        log.info("round %d: update %d/%d from %s (%d examples)", rnd.number, rnd.committed, len(rnd.assignments),
                 update.client_id, update.num_examples)
        self._close_if_settled(rnd)
        self._notify()
        await folded
        return pb.SubmitReply(round=rnd.number)

    def _decode_bounded(self, assignment: Assignment, encoded: list[EncodedTensor]) -> dict[str, np.ndarray]:
        """The update's tensors, decoded (non-finite values refused) and norm-bounded; reads no mutable state."""
        tensors = {t.spec.name: decode_tensor(t, assignment.expected[t.spec.name]) for t in encoded}
        return self._bounded(assignment.plan, tensors)

    def _bounded(self, plan: ClientPlan, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A delta within ``--max-update-norm``: refused (PayloadError) or scaled down, as configured."""
        bound = self.config.max_update_norm
        if not plan.sends_delta or bound <= 0:
            return tensors
        # float32 dot products (BLAS): a bound check needs no float64 copy of every update
        norm = math.sqrt(sum(float(np.dot(flat, flat)) for flat in (t.reshape(-1) for t in tensors.values())))
        if norm <= bound:
            return tensors
        if self.config.norm_action == "refuse":
            raise PayloadError(f"update norm {norm:.4g} exceeds the server's bound {bound:g} (--max-update-norm)")
        log.info("clipping an update of norm %.4g to %g", norm, bound)
        return {name: (t * (bound / norm)).astype(t.dtype) for name, t in tensors.items()}

    def _open_task(self, task_id: str, client: ClientInfo) -> tuple[OpenRound, Assignment]:
        rnd = self.current
        if rnd is None or not rnd.is_open:
            raise RoundStateError(f"task {task_id[:40]!r} is not open: no round is accepting work now")
        assignment = rnd.by_task.get(task_id)
        if assignment is None:
            raise RoundStateError(f"task {task_id[:40]!r} is not a task of open round {rnd.number} "
                                  "(stale, from an earlier round, or never issued)")
        if assignment.client_id != client.client_id:
            raise RoundStateError(f"task {task_id[:40]!r} was given to another client")
        return rnd, assignment

    def _close_if_settled(self, rnd: OpenRound) -> None:
        quorum = max(1, math.ceil(self.config.quorum * len(rnd.assignments)))
        if rnd.committed >= quorum or rnd.outstanding == 0:
            rnd.closed.set()

    # ------------------------------------------------------------ operator view

    def status(self, include_history: bool) -> pb.FederationStatus:
        traffic = self.total_traffic()
        now = time.monotonic()
        rnd = self.current
        available = {c.client_id for c in self.clients.available()}
        return pb.FederationStatus(
            state=self.phase,
            round=rnd.number if rnd else (self.history[-1].round if self.history else 0),
            total_rounds=self.config.rounds,
            method=self.strategy.name,
            connected_clients=len(available),
            clients=[pb.ClientStatus(client_id=c.client_id, capabilities=c.capabilities,
                                     seconds_since_seen=now - c.last_seen, updates_committed=c.updates_committed)
                     for c in self.clients.all()],
            bytes_up=traffic.up,
            bytes_down=traffic.down,
            last_round=self.history[-1] if self.history else None,
            history=self.history if include_history else [],
        )

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

    async def _wait_change(self, timeout: float, tasks: bool = False) -> None:
        changed = self._tasks_changed if tasks else self._changed
        try:
            await asyncio.wait_for(changed.wait(), max(timeout, 0.0))
        except TimeoutError:
            pass

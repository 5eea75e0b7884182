"""``fedsqueeze simulate --backend ray``: a population of virtual clients on a pool of Ray actors.

The server side is the real one, in this process: ``build_coordinator`` builds
exactly what ``fedsqueeze server`` runs, and its round loop selects
``--clients-per-round`` of the ``--population`` (seeded), plans, encodes the
downloads, decodes, bounds, folds, aggregates, distils, evaluates and writes
``report.json``. Only the network is left out: this driver makes the client
calls a daemon would make (Join, the GetTask that returns a task,
DownloadModel, SubmitUpdate, ReportFailure) in-process, with the messages a
daemon would send and receive, checked by the same admission path, and hands
each sampled client's task to a ``VirtualClientWorker`` on an actor, which
runs the daemon's own training and encoding. Each download is encoded once per
profile and shared through Ray's object store.

Bytes are counted as the metering interceptor counts them: each message's
serialised length plus the 5-byte gRPC prefix. Modelled: one Join per client,
the GetTask request and the task it returns, the DownloadModel request and
every chunk, the whole UpdateMessage stream and its reply, ReportFailure.
Not modelled: idle long-polls and their Wait replies, retries, Leave, upload
turns, HTTP/2 and TLS framing. A refused update is reported as a failure, so
its round does not wait for the deadline (a daemon would poll on). The
simulated clock (``--device-profiles``) gives each round's time as its slowest
committed client's download + training + upload.

Memory follows the cohort: a virtual client is a partition index and its saved
state (``ClientStateStore``, one file per client, read when it is sampled);
actors hold the train split once; the driver holds one ``ClientInfo`` per
client and at most two results per actor.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import resource
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from fedsqueeze.apps.client_store import ClientStateStore
from fedsqueeze.apps.device_profiles import DeviceProfiles
from fedsqueeze.apps.simulate import compute_budgets
from fedsqueeze.apps.virtual_clients import VirtualClientWorker, Work, WorkDone, WorkFailed
from fedsqueeze.client.daemon import POLL_WAIT_MS
from fedsqueeze.config import ServerConfig, SimulateConfig
from fedsqueeze.errors import FedsqueezeError, PayloadError
from fedsqueeze.resources import usable_cores
from fedsqueeze.server.app import build_coordinator
from fedsqueeze.server.coordinator import Coordinator
from fedsqueeze.server.metering import GRPC_FRAME_PREFIX, ByteMeter
from fedsqueeze.server.rounds import OpenRound
from fedsqueeze.server.storage import write_json_atomic
from fedsqueeze.specs import parse_spec
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import StreamReceiver

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["Federation"].full_name
TASKS_PER_ACTOR = 2   # queued on each actor, so it starts the next client while the driver folds the last
MODELLED = ("one Join per client; the GetTask request that returns each task and the task; the DownloadModel "
            "request and every chunk; each UpdateMessage stream and its reply; ReportFailure")
NOT_MODELLED = ("idle long-polls and their Wait replies; retries; Leave; upload turns; HTTP/2 and TLS framing")


def framed(message: Any) -> int:
    """Bytes a message costs on the wire as the metering interceptor counts it."""
    return message.ByteSize() + GRPC_FRAME_PREFIX


def actor_cpus(resources: str) -> float:
    """The CPUs one actor takes, from Flower-style ``--client-resources`` (``cpus=C``)."""
    try:
        name, params = parse_spec(f"resources({resources})")
        cpus = float(params.pop("cpus", 1))
    except (ValueError, TypeError):
        raise ValueError(f"--client-resources must look like cpus=1, not {resources!r}") from None
    if params:
        raise ValueError(f"--client-resources: only cpus is supported, not {sorted(params)}")
    if not cpus > 0:
        raise ValueError(f"--client-resources: cpus must be positive, not {cpus}")
    return cpus


def check_shared_memory(megabytes: int, folder: str = "/dev/shm") -> None:
    """SystemExit unless ``folder`` (where Ray keeps its object store) has ``megabytes`` free."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        raise SystemExit(f"{folder} is missing: Ray keeps its object store there") from None
    if free < megabytes * 2**20:
        raise SystemExit(f"{folder} has {free / 2**20:.0f} MiB free; Ray's object store needs --object-store-mb "
                         f"{megabytes}: lower it, or give the container more shared memory (docker run --shm-size, "
                         f"compose shm_size)")


@dataclass
class RoundClock:
    """One round's times: as simulated on the devices' profiles, and as it really took here."""

    round: int
    clients: int = 0
    simulated_seconds: float = 0.0
    train_seconds: float = 0.0      # the slowest committed client's training, as measured here
    failures: int = 0


@dataclass
class Driver:
    """Makes the client calls of every sampled virtual client and hands their training to the actors."""

    coordinator: Coordinator
    meter: ByteMeter
    ray: Any                        # the ray module, started
    actors: list[Any]
    profiles: DeviceProfiles
    chunk_bytes: int
    client_ids: list[str]
    capabilities: list[pb.Capabilities]
    on_round: Callable[[pb.RoundMetrics], None] = lambda record: None   # each finished round's record
    sessions: dict[str, str] = field(default_factory=dict)
    clocks: list[RoundClock] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)   # clients whose task failed, and why: they left for good

    def _count(self, method: str, up: int = 0, down: int = 0) -> None:
        self.meter.count(f"/{SERVICE}/{method}", up=up, down=down)

    def join_all(self) -> None:
        for client_id, capabilities in zip(self.client_ids, self.capabilities):
            request = pb.JoinRequest(client_id=client_id, capabilities=capabilities)
            reply = self.coordinator.join(request)
            self.sessions[client_id] = reply.session_id
            self._count("Join", framed(request), framed(reply))

    async def run(self) -> None:
        """Join everyone, run the round loop, and serve each training round it opens.

        A client whose task fails leaves, as a daemon does; the round goes on without it, and then the run
        stops (every round waits for the whole population), with the reasons in ``failed``.
        """
        self.join_all()
        index = {client_id: i for i, client_id in enumerate(self.client_ids)}
        rounds = asyncio.create_task(self.coordinator.run())
        served: set[tuple[int, int]] = set()
        shown = 0
        while not rounds.done():
            rnd = self.coordinator.current
            if rnd is not None and rnd.is_open and not rnd.evaluation and (rnd.number, rnd.attempt) not in served:
                served.add((rnd.number, rnd.attempt))
                self.clocks.append(await self._serve(rnd, index))
                if self.failed:
                    await self._finish_round_then_stop(rounds, rnd)
                    break
            else:
                await self.coordinator.wait_for_tasks(0.5)
            for record in self.coordinator.history[shown:]:
                self.on_round(record)
            shown = len(self.coordinator.history)
        if not rounds.cancelled():
            await rounds
        for record in self.coordinator.history[shown:]:
            self.on_round(record)

    async def _finish_round_then_stop(self, rounds: asyncio.Task[None], rnd: OpenRound) -> None:
        """Let the round loop finish ``rnd`` (it settles without the failed clients), then stop the loop: it
        would wait for the whole population forever."""
        def moved_on() -> bool:
            return (rounds.done() or self.coordinator.current is not rnd
                    or any(r.round == rnd.number for r in self.coordinator.history[-1:])
                    or self.coordinator.phase == pb.WAITING_FOR_CLIENTS)

        while not moved_on():
            await self.coordinator.wait_for_tasks(0.2)
        rounds.cancel()
        try:
            await rounds
        except asyncio.CancelledError:
            pass

    async def _serve(self, rnd: OpenRound, index: dict[str, int]) -> RoundClock:
        clock = RoundClock(rnd.number)
        downloads: dict[str, tuple[Any, int]] = {}   # profile -> (object ref of its serialised chunks, bytes)
        queue: list[tuple[Work, Any, int]] = []
        for client_id in sorted(a.client_id for a in rnd.assignments.values() if a.status == "assigned"):
            session = self.sessions[client_id]
            request = pb.GetTaskRequest(session_id=session, wait_ms=POLL_WAIT_MS)
            task = await self.coordinator.next_task(session, 0.0)
            self._count("GetTask", framed(request), framed(task))
            if task.WhichOneof("kind") != "train":
                continue
            fetch = pb.DownloadRequest(session_id=session, task_id=task.train.task_id)
            download = self.coordinator.begin_download(session, task.train.task_id)
            profile = download.assignment.plan.profile
            if profile not in downloads:
                messages = [chunk.SerializeToString() for chunk in download.model.chunks(self.chunk_bytes)]
                downloads[profile] = (self.ray.put(messages), sum(len(m) + GRPC_FRAME_PREFIX for m in messages))
            self._count("DownloadModel", framed(fetch), downloads[profile][1])
            self.coordinator.end_download(download, completed=True)
            queue.append((Work(client_id, index[client_id], session, task.SerializeToString()),
                          downloads[profile][0], framed(request) + framed(task) + framed(fetch) +
                          downloads[profile][1]))
        idle: asyncio.Queue[Any] = asyncio.Queue()
        for actor in self.actors:
            for _ in range(TASKS_PER_ACTOR):
                idle.put_nowait(actor)

        async def one(work: Work, download: Any, down_bytes: int) -> None:
            actor = await idle.get()
            try:
                result = await actor.run.remote(work, download)
            except self.ray.exceptions.RayError as exc:   # the actor died (out of memory, killed): this client fails
                result = WorkFailed(work.client_id, pb.Task.FromString(work.task).train.task_id,
                                    f"its simulation actor failed: {type(exc).__name__}")
            finally:
                idle.put_nowait(actor)
            await self._finish(result, down_bytes, clock, index)

        await asyncio.gather(*(one(*item) for item in queue))
        return clock

    async def _finish(self, result: WorkDone | WorkFailed, down_bytes: int, clock: RoundClock,
                      index: dict[str, int]) -> None:
        session = self.sessions[result.client_id]
        refused = False
        if isinstance(result, WorkDone):
            try:
                up_bytes = await self._submit(result)
            except FedsqueezeError as exc:
                log.warning("the update of %s was refused: %s", result.client_id, exc)
                refused = True
                result = WorkFailed(result.client_id, pb.UpdateMessage.FromString(result.messages[0]).header.task_id,
                                    f"the server refused the update: {exc}"[:500])
            else:
                profile = self.profiles.for_client(index[result.client_id])
                clock.clients += 1
                clock.simulated_seconds = max(clock.simulated_seconds,
                                              profile.seconds(down_bytes, result.train_seconds, up_bytes))
                clock.train_seconds = max(clock.train_seconds, result.train_seconds)
                return
        clock.failures += 1
        report = pb.FailureReport(session_id=session, task_id=result.task_id, reason=result.reason)
        self._count("ReportFailure", framed(report), framed(pb.FailureReply()))
        try:
            self.coordinator.report_failure(session, result.task_id, result.reason)
        except FedsqueezeError as exc:   # the round moved on meanwhile
            log.info("failure of %s not reported: %s", result.client_id, exc)
        if not refused:   # as a daemon whose task failed: it leaves, and the federation is one client short
            self.coordinator.leave(session, f"client error: {result.reason}")
            self.failed.append(f"{result.client_id}: {result.reason}")

    async def _submit(self, done: WorkDone) -> int:
        """The servicer's SubmitUpdate steps on a serialised stream; returns the bytes it cost."""
        first = pb.UpdateMessage.FromString(done.messages[0])
        upload = self.coordinator.begin_upload(first.header)
        try:
            receiver = StreamReceiver(upload.expected, self.chunk_bytes)
            encoded = []
            for raw in done.messages[1:]:
                message = pb.UpdateMessage.FromString(raw)
                if message.WhichOneof("kind") != "chunk":
                    raise PayloadError("an update stream holds one header, then chunks")
                tensor = receiver.feed(message.chunk)
                if tensor is not None:
                    encoded.append(tensor)
            receiver.finish()
            reply = await self.coordinator.commit(upload, encoded)
        finally:
            upload.release()
        reply.payload_bytes = receiver.payload_size
        up = sum(len(m) + GRPC_FRAME_PREFIX for m in done.messages)
        self._count("SubmitUpdate", up, framed(reply))
        return up


def _server_config(config: SimulateConfig, population: int, out: Path) -> ServerConfig:
    server = ServerConfig(**{f.name: getattr(config, f.name) for f in fields(ServerConfig)})
    # Every virtual client stays available (none polls: a timeout of about 30 years), the federation waits for
    # the whole population, and the cap on client ids is the population's.
    return replace(server, min_clients=population, max_clients=max(server.max_clients, population),
                   client_timeout=1e9, linger=0.0, out=str(out), port_file=None)


def _start_ray(cpus: int, object_store_mb: int, temp_dir: str) -> Any:
    """Start a private Ray cluster on this machine: no dashboard, no usage reports, files under ``temp_dir``.

    Token authentication stays on (Ray's default for local clusters since 2.59), with a fresh token given
    in the environment, so Ray writes none to ``~/.ray`` and none outlives the run.
    """
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"   # no network beyond loopback
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    try:
        import ray
    except ImportError:
        raise SystemExit("--backend ray needs Ray: pip install 'fedsqueeze[ray]'") from None
    ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=object_store_mb * 2**20,
             _temp_dir=temp_dir, log_to_driver=False, configure_logging=False, namespace="fedsqueeze")
    return ray


def simulate_on_ray(config: SimulateConfig, out: Path, console: Console,
                    on_round: Callable[[pb.RoundMetrics], None]) -> dict[str, Any]:
    """Run the federation of ``--population`` virtual clients; return the simulation's figures (also written to
    ``OUT/simulation.json``); the server's ``report.json`` is written as by ``fedsqueeze server``."""
    population = config.population or config.clients
    if config.federated_evaluation:
        raise SystemExit("--backend ray evaluates on the server's test set; --federated-evaluation needs the "
                         "process backend")
    if config.clients_per_round > population:
        raise SystemExit(f"--clients-per-round ({config.clients_per_round}) is more than --population ({population})")
    partitions = config.partitions or population
    if partitions < population:
        raise SystemExit(f"--partitions ({partitions}) must be at least --population ({population})")
    try:
        cpus = actor_cpus(config.client_resources)
        profiles = DeviceProfiles(config.device_profiles)
        budgets = compute_budgets(config)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    cores = usable_cores()
    pool = config.actors or max(1, int(cores // cpus))
    check_shared_memory(config.object_store_mb)
    coordinator, meter = build_coordinator(_server_config(config, population, out))
    temp_dir = tempfile.mkdtemp(prefix="fsq-ray-", dir="/tmp")   # short: Ray's socket paths must fit 107 bytes
    started = time.monotonic()
    ray = None
    try:
        ray = _start_ray(max(cores, math.ceil(pool * cpus)), config.object_store_mb, temp_dir)
        worker = ray.remote(num_cpus=cpus)(VirtualClientWorker)
        actors = [worker.remote(coordinator.model_spec.SerializeToString(), config.data, config.partition,
                                partitions, config.seed, str(out / "client-state"), config.chunk_bytes,
                                max(1, int(cpus))) for _ in range(pool)]
        console.print(f"{population} virtual clients, {config.clients_per_round or population} per round, on {pool} "
                      f"Ray actors ({cpus:g} CPU each); client state in {out / 'client-state'}")
        driver = Driver(coordinator, meter, ray, actors, profiles, config.chunk_bytes,
                        [f"client-{i}" for i in range(population)],
                        [pb.Capabilities(cpu_cores=max(1, int(cpus)), compute_budget=budgets[i % len(budgets)])
                         for i in range(population)], on_round)
        try:
            asyncio.run(driver.run())
        finally:
            coordinator.write_report()
        actor_rss = ray.get([a.peak_rss_bytes.remote() for a in actors])
    finally:
        if ray is not None:
            ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    figures = _figures(config, coordinator, driver, population, pool, cpus, profiles, time.monotonic() - started,
                       actor_rss, out)
    write_json_atomic(out / "simulation.json", figures)
    return figures


def _figures(config: SimulateConfig, coordinator: Coordinator, driver: Driver, population: int, pool: int,
             cpus: float, profiles: DeviceProfiles, seconds: float, actor_rss: list[int], out: Path) -> dict[str, Any]:
    history = {r.round: r for r in coordinator.history}
    rounds = []
    for clock in driver.clocks:
        record = history.get(clock.round)
        rounds.append({"round": clock.round, "clients_trained": clock.clients, "failures": clock.failures,
                       "simulated_seconds": clock.simulated_seconds, "slowest_training_seconds": clock.train_seconds,
                       "real_seconds": record.seconds if record else None,
                       "accuracy": record.accuracy if record else None})
    trained = sum(c.clients for c in driver.clocks)
    round_seconds = sum(r.seconds for r in coordinator.history)
    return {
        "backend": "ray", "population": population, "clients_per_round": config.clients_per_round or population,
        "actors": pool, "cpus_per_actor": cpus, "device_profiles": profiles.spec,
        "clients_trained": trained, "seconds": seconds, "round_seconds": round_seconds,
        "clients_per_second": trained / round_seconds if round_seconds else None,
        "simulated_seconds": sum(c.simulated_seconds for c in driver.clocks),
        "driver_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "actor_peak_rss_bytes": max(actor_rss) if actor_rss else 0,
        "client_state_bytes": ClientStateStore(out / "client-state").total_bytes(),
        "stopped_because": coordinator.stopped_because or (
            f"{len(driver.failed)} client(s) failed; the first: {driver.failed[0]}" if driver.failed else None),
        "bytes_modelled": MODELLED, "bytes_not_modelled": NOT_MODELLED,
        "rounds": rounds,
    }

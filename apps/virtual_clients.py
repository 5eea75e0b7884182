"""Virtual clients: one worker process trains, in turn, whichever clients it is handed.

A virtual client is data, not a process: a client id, a partition index and the
state it kept from its last task (``ClientStateStore``). A worker holds the
train split and its partition once, and for each task it is handed builds that
client exactly as a daemon would be: a fresh copy of the federation's model,
the client's share of the data, a ``TaskRunner`` with the client's saved state.
It then runs the daemon's own steps on the messages a daemon would receive and
send: it checks and assembles the download from the server's serialised
``Chunk`` messages (``receive_model``), trains with the method's real trainer,
encodes with the task's uplink plan (error feedback included), and returns the
serialised ``UpdateMessage`` stream a daemon would upload. The Ray backend runs
one worker per actor; nothing here imports Ray, so it is tested as it is.
"""

from __future__ import annotations

import copy
import resource
import time
from dataclasses import dataclass

import torch

from fedsqueeze.apps.client_store import ClientStateStore
from fedsqueeze.client.task_runner import TaskRunner
from fedsqueeze.data.datasets import load_split
from fedsqueeze.data.partition import partition
from fedsqueeze.models import build_model
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import receive_model


@dataclass
class Work:
    """One virtual client's task, as the driver hands it over."""

    client_id: str
    partition_index: int
    session_id: str
    task: bytes                 # a serialised pb.Task (its train task)


@dataclass
class WorkDone:
    client_id: str
    messages: list[bytes]       # the serialised UpdateMessage stream: header, then chunks
    num_examples: int
    train_seconds: float        # training and encoding, measured here
    state_bytes: int            # the client's saved state on disk (0 for none)


@dataclass
class WorkFailed:
    client_id: str
    task_id: str
    reason: str                 # what a daemon would send with ReportFailure


class VirtualClientWorker:
    """Trains virtual clients one task at a time on this process's share of the machine."""

    def __init__(self, model_spec: bytes, data: str, scheme: str, num_partitions: int, seed: int,
                 state_dir: str, chunk_bytes: int, threads: int) -> None:
        torch.set_num_threads(threads)
        self._pristine = build_model(pb.ModelSpec.FromString(model_spec))
        self._raw = load_split(data, "train")
        self._parts = partition(self._raw.labels, scheme, num_partitions, seed)
        self._store = ClientStateStore(state_dir)
        self._chunk_bytes = chunk_bytes

    def run(self, work: Work, download: list[bytes]) -> WorkDone | WorkFailed:
        """Do one train task from its serialised download; a task that cannot be done is a ``WorkFailed``."""
        task = pb.Task.FromString(work.task).train
        try:
            runner = TaskRunner(copy.deepcopy(self._pristine), self._raw.select(self._parts[work.partition_index]),
                                work.client_id)
            saved = self._store.load(work.client_id)
            if saved is not None:
                runner.load_state(saved)
            trainer = runner.trainer(task.method)
            downloaded = receive_model((pb.Chunk.FromString(m) for m in download), trainer.expected_download(task))
            started = time.perf_counter()
            result = runner.run(task, downloaded, task.hyperparameters, lambda: False)
            seconds = time.perf_counter() - started
            state = runner.state()
            state_bytes = self._store.save(work.client_id, state) if _holds_anything(state) else 0
            runner.unload()
        except Exception as exc:   # as a daemon does: this client cannot do the task, the round goes on without it
            return WorkFailed(work.client_id, task.task_id,
                              f"round {task.round}: {task.method} task failed: {type(exc).__name__}: {exc}"[:500])
        header = pb.UpdateMessage(header=pb.UpdateHeader(session_id=work.session_id, task_id=task.task_id,
                                                         round=task.round, num_examples=result.num_examples,
                                                         metrics=result.metrics))
        messages = [header.SerializeToString()]
        messages += [pb.UpdateMessage(chunk=c).SerializeToString() for c in result.update.chunks(self._chunk_bytes)]
        return WorkDone(work.client_id, messages, result.num_examples, seconds, state_bytes)

    def peak_rss_bytes(self) -> int:
        """This process's peak resident memory."""
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _holds_anything(state: object) -> bool:
    """Whether a ``TaskRunner.state()`` holds something worth a file (not only empty containers and Nones)."""
    if isinstance(state, dict):
        return any(_holds_anything(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return any(_holds_anything(v) for v in state)
    return state is not None

"""A round attempt as data: who was given which task, where each task stands, what the round has counted.

The coordinator owns one ``OpenRound`` at a time and changes it only on the
event loop; nothing here does I/O or names a method (a strategy's running sum
rides along as an opaque ``accumulator``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fedsqueeze.server.clients import ClientInfo
from fedsqueeze.server.strategies import ClientPlan
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import EncodedModel, ExpectedTensor

OUTSTANDING = ("assigned", "uploading")   # task states that may still bring an update


@dataclass
class Assignment:
    """One client's task in one round attempt."""

    client_id: str
    task_id: str
    plan: ClientPlan
    expected: dict[str, ExpectedTensor]
    status: str = "assigned"   # assigned -> uploading -> committed; or left / failed (OpenRound.move only)
    downloaded: bool = False   # its download completed once (the dense yardstick counts one per task)


@dataclass
class OpenRound:
    """A round attempt: its tasks by client and by task id, its encoded downloads, and its running counts."""

    number: int
    attempt: int
    started: float
    deadline: float
    assignments: dict[str, Assignment]            # by client id
    downlinks: dict[str, EncodedModel]            # by profile
    accumulator: Any
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    is_open: bool = True
    dense_up: int = 0
    dense_down: int = 0
    metric_sums: dict[str, float] = field(default_factory=dict)
    metric_weight: float = 0.0
    failures: list[str] = field(default_factory=list)   # why each dropped task failed, bounded text
    evaluation: bool = False   # an evaluation round: evaluate tasks, answered with SubmitEvaluation
    below_edges: Counter[str] = field(default_factory=Counter)   # what merged partial sums say of their clients
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

    def add_metrics(self, metrics: dict[str, float], weight: float) -> None:
        """Fold one client's reported metrics into the round's example-weighted sums."""
        for key, value in metrics.items():
            self.metric_sums[key] = self.metric_sums.get(key, 0.0) + value * weight
        self.metric_weight += weight

    def mean(self, metric: str) -> float:
        """The example-weighted mean of a metric the committed clients reported (NaN when none did)."""
        return self.metric_sums[metric] / self.metric_weight if metric in self.metric_sums else math.nan

    def means(self) -> dict[str, float]:
        """Every reported metric's example-weighted mean."""
        return {key: self.mean(key) for key in self.metric_sums}

    def add_partial(self, partial: pb.PartialSum) -> None:
        """Count what an edge's merged partial sum says of its own clients' tasks and traffic."""
        self.below_edges.update(edges=1, updates=partial.count, selected=partial.selected, failed=partial.failed,
                                bytes_up=partial.bytes_up, bytes_down=partial.bytes_down,
                                dense_down=partial.dense_bytes_down)

    def settled(self, quorum: float) -> bool:
        """Enough updates committed (``quorum`` of the tasks, at least one), or none still outstanding."""
        return self.committed >= max(1, math.ceil(quorum * len(self.assignments))) or self.outstanding == 0

    @property
    def committed(self) -> int:
        """Updates (or evaluations) committed in this round attempt."""
        return self.by_status["committed"]

    @property
    def outstanding(self) -> int:
        """Tasks still expected to bring an update: handed out or uploading."""
        return sum(self.by_status[s] for s in OUTSTANDING)


@dataclass
class Download:
    """A DownloadModel stream in progress: the model it sends and whose turn it holds."""

    round: OpenRound
    assignment: Assignment
    client: ClientInfo
    model: EncodedModel


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

"""What the server checks before a client's message may touch a round: task ownership, headers, reports, plans.

Every check raises one of ``fedsqueeze.errors``' typed errors (the servicer
maps each to its gRPC status code) and changes nothing, so a refused message
leaves the round exactly as it was.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from fedsqueeze.codecs import CodecError, get_plan
from fedsqueeze.errors import ConflictError, PayloadError, RoundStateError
from fedsqueeze.server.clients import ClientInfo
from fedsqueeze.server.rounds import Assignment, OpenRound
from fedsqueeze.tensors import TensorSpec
from fedsqueeze.text import shown
from fedsqueeze.v1 import federation_pb2 as pb

MAX_NUM_EXAMPLES = 1 << 31
MAX_UPDATE_METRICS = 64
MAX_METRIC_NAME = 64
MAX_PLAN_CHARACTERS = 256      # a client's codec plan; the built-in plans are well under 100


def open_task(rnd: OpenRound | None, task_id: str, client: ClientInfo) -> Assignment:
    """The caller's assignment for ``task_id`` in the open round; RoundStateError for any other task."""
    if rnd is None or not rnd.is_open:
        raise RoundStateError(f"task {shown(task_id, 40)} is not open: no round is accepting work now")
    assignment = rnd.by_task.get(task_id)
    if assignment is None:
        raise RoundStateError(f"task {shown(task_id, 40)} is not a task of open round {rnd.number} "
                              "(stale, from an earlier round, or never issued)")
    if assignment.client_id != client.client_id:
        raise RoundStateError(f"task {shown(task_id, 40)} was given to another client")
    if assignment.status in ("failed", "left"):
        raise RoundStateError(f"task {shown(task_id, 40)} was dropped from round {rnd.number} "
                              f"({assignment.status})")
    return assignment


def check_update_header(header: pb.UpdateHeader, rnd: OpenRound, assignment: Assignment) -> None:
    """An update's header fits its task: the right round, a train task not yet committed or uploading, sane numbers."""
    if header.round != rnd.number:
        raise RoundStateError(f"update says round {header.round}, but task {header.task_id} "
                              f"belongs to round {rnd.number}")
    if rnd.evaluation:
        raise RoundStateError(f"task {shown(header.task_id, 40)} is an evaluate task: send its result with "
                              "SubmitEvaluation")
    if assignment.status == "committed":
        raise RoundStateError(f"task {header.task_id}: an update was already committed")
    if assignment.status == "uploading":
        raise ConflictError(f"task {header.task_id}: another upload is in progress")
    check_num_examples(header.num_examples)
    check_metrics(header.metrics)


def check_evaluation_report(report: pb.EvaluationReport, rnd: OpenRound, assignment: Assignment) -> None:
    """An evaluation report fits its task: an evaluate task of this round, answered once, sane numbers."""
    if not rnd.evaluation:
        raise RoundStateError(f"task {shown(report.task_id, 40)} is a train task: send its update with "
                              "SubmitUpdate")
    if report.round != rnd.number:
        raise RoundStateError(f"report says round {report.round}, but task {report.task_id} evaluates round "
                              f"{rnd.number}")
    if assignment.status != "assigned":
        raise RoundStateError(f"task {shown(report.task_id, 40)}: an evaluation was already counted")
    check_num_examples(report.num_examples)
    check_metrics(report.metrics)


def check_num_examples(num_examples: int) -> None:
    if not 1 <= num_examples <= MAX_NUM_EXAMPLES:
        raise PayloadError(f"num_examples must be in [1, {MAX_NUM_EXAMPLES}], not {num_examples}")


def check_metrics(metrics: Mapping[str, float]) -> None:
    """PayloadError unless a client's metrics are at most MAX_UPDATE_METRICS finite values with short names."""
    if len(metrics) > MAX_UPDATE_METRICS:
        raise PayloadError(f"at most {MAX_UPDATE_METRICS} metrics per message, not {len(metrics)}")
    bad = [k for k, v in metrics.items() if not math.isfinite(v) or len(k) > MAX_METRIC_NAME]
    if bad:
        raise PayloadError(f"metrics {', '.join(shown(k, MAX_METRIC_NAME) for k in sorted(bad)[:3])} have "
                           f"non-finite values or names over {MAX_METRIC_NAME} characters")


def check_client_plan(direction: str, text: str, specs: Mapping[str, TensorSpec]) -> str:
    """A codec plan a client asked for, canonical, once it has proved it encodes this model.

    Refused (PayloadError, INVALID_ARGUMENT on the wire) when too long, unparsable, with a stage's parameter
    of the wrong type or out of range, with a latent stage (the autoencoder method assigns those), or when a
    trial round trip on the model's tensors fails.
    """
    if len(text) > MAX_PLAN_CHARACTERS:
        raise PayloadError(f"{direction} codec plan of {len(text)} characters: at most {MAX_PLAN_CHARACTERS}")
    try:
        plan = get_plan(text)
        if any(stage.codec_id == "latent" for p in plan.pipelines() for stage in p.array_stages):
            raise CodecError("latent stages are assigned by the server's method, not chosen by clients")
        plan.require_float32()
        plan.check(specs)
    except (CodecError, ValueError) as exc:
        raise PayloadError(f"{direction} codec plan {shown(text)} refused: {shown(str(exc))}") from None
    return plan.spec

"""The coordinator's parts, each on its own and in-process: round state, admission checks, the norm bound,
records and checkpoints, the operator view, and the client calls without the round loop."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from fedsqueeze.config import ServerConfig
from fedsqueeze.errors import ConflictError, PayloadError, RateLimitError, RoundStateError, SessionError
from fedsqueeze.models import build_model, make_model_spec
from fedsqueeze.server import coordinator as round_loop
from fedsqueeze.server.admission import (
    MAX_PLAN_CHARACTERS,
    check_client_plan,
    check_evaluation_report,
    check_metrics,
    check_update_header,
    open_task,
)
from fedsqueeze.server.checkpoint import CheckpointStore
from fedsqueeze.server.client_calls import MAX_DOWNLOADS_PER_CLIENT, ClientCalls
from fedsqueeze.server.clients import ClientInfo, ClientRegistry
from fedsqueeze.server.metering import ByteMeter
from fedsqueeze.server.norm_policy import NormPolicy
from fedsqueeze.server.operator_view import federation_status
from fedsqueeze.server.records import RunRecords, finite_metrics
from fedsqueeze.server.rounds import Assignment, OpenRound
from fedsqueeze.server.strategies import ClientPlan, StrategySettings
from fedsqueeze.server.strategies.fedavg import FedAvg
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import encode_model

SPEC = make_model_spec("mlp(hidden=8)", (1, 28, 28), 10)
PLAN = ClientPlan("dense", pb.Hyperparameters(epochs=1), "dense", "dense")


def a_round(clients: int = 3, evaluation: bool = False, number: int = 4) -> OpenRound:
    assignments = {f"c{i}": Assignment(f"c{i}", f"t{i}", PLAN, {}) for i in range(clients)}
    return OpenRound(number, 1, 0.0, 60.0, assignments, {}, None, evaluation=evaluation)


def strategy() -> FedAvg:
    return FedAvg(build_model(SPEC, seed=0), StrategySettings(SPEC, "synthetic", pb.Hyperparameters(epochs=1),
                                                             "dense", "dense"))


# ------------------------------------------------------------------------------------------------ rounds


def test_a_round_counts_its_tasks_by_status_and_settles_at_quorum_or_when_nothing_is_outstanding() -> None:
    rnd = a_round(4)
    assert (rnd.committed, rnd.outstanding, rnd.settled(0.5)) == (0, 4, False)
    rnd.move(rnd.assignments["c0"], "uploading")
    rnd.move(rnd.assignments["c0"], "committed")
    assert (rnd.committed, rnd.outstanding, rnd.settled(0.5), rnd.settled(1.0)) == (1, 3, False, False)
    rnd.move(rnd.assignments["c1"], "committed")
    assert rnd.settled(0.5) and not rnd.settled(1.0)
    for name in ("c2", "c3"):
        rnd.move(rnd.assignments[name], "left")
    assert rnd.outstanding == 0 and rnd.settled(1.0)   # everyone still in has answered
    assert a_round(4).settled(0.0) is False            # a quorum is at least one update


def test_a_rounds_metrics_are_example_weighted_means() -> None:
    rnd = a_round()
    assert np.isnan(rnd.mean("loss")) and rnd.means() == {}
    rnd.add_metrics({"loss": 1.0, "accuracy": 0.5}, 10)
    rnd.add_metrics({"loss": 4.0}, 30)
    assert rnd.means() == {"loss": pytest.approx(3.25), "accuracy": pytest.approx(0.125)}


# --------------------------------------------------------------------------------------------- admission


def test_open_task_accepts_only_the_callers_live_task_of_the_open_round() -> None:
    rnd = a_round()
    c0, c1 = ClientInfo("c0", pb.Capabilities(), "s0"), ClientInfo("c1", pb.Capabilities(), "s1")
    assert open_task(rnd, "t0", c0) is rnd.assignments["c0"]
    with pytest.raises(RoundStateError, match="given to another client"):
        open_task(rnd, "t0", c1)
    with pytest.raises(RoundStateError, match="stale, from an earlier round"):
        open_task(rnd, "t9", c0)
    with pytest.raises(RoundStateError, match="no round is accepting work"):
        open_task(None, "t0", c0)
    rnd.move(rnd.assignments["c1"], "failed")
    with pytest.raises(RoundStateError, match=r"dropped from round 4 \(failed\)"):
        open_task(rnd, "t1", c1)
    rnd.is_open = False
    with pytest.raises(RoundStateError, match="not open"):
        open_task(rnd, "t0", c0)


@pytest.mark.parametrize(("header", "status", "error", "match"), [
    (pb.UpdateHeader(task_id="t0", round=3, num_examples=1), "assigned", RoundStateError, "says round 3"),
    (pb.UpdateHeader(task_id="t0", round=4, num_examples=1), "committed", RoundStateError, "already committed"),
    (pb.UpdateHeader(task_id="t0", round=4, num_examples=1), "uploading", ConflictError, "in progress"),
    (pb.UpdateHeader(task_id="t0", round=4, num_examples=0), "assigned", PayloadError, "num_examples"),
    (pb.UpdateHeader(task_id="t0", round=4, num_examples=1 << 40), "assigned", PayloadError, "num_examples"),
    (pb.UpdateHeader(task_id="t0", round=4, num_examples=1, metrics={"loss": float("nan")}), "assigned",
     PayloadError, "non-finite"),
])
def test_an_update_header_that_does_not_fit_its_task_is_refused(header: pb.UpdateHeader, status: str,
                                                                 error: type[Exception], match: str) -> None:
    rnd = a_round()
    assignment = rnd.assignments["c0"]
    rnd.move(assignment, status)
    with pytest.raises(error, match=match):
        check_update_header(header, rnd, assignment)
    assert assignment.status == status   # a refused header changes nothing


def test_a_good_header_passes_and_evaluation_reports_go_to_evaluate_tasks_only() -> None:
    train, evaluate = a_round(), a_round(evaluation=True)
    check_update_header(pb.UpdateHeader(task_id="t0", round=4, num_examples=5, metrics={"loss": 0.1}), train,
                        train.assignments["c0"])
    report = pb.EvaluationReport(task_id="t0", round=4, num_examples=5, metrics={"accuracy": 0.9})
    check_evaluation_report(report, evaluate, evaluate.assignments["c0"])
    with pytest.raises(RoundStateError, match="is a train task"):
        check_evaluation_report(report, train, train.assignments["c0"])
    with pytest.raises(RoundStateError, match="is an evaluate task"):
        check_update_header(pb.UpdateHeader(task_id="t0", round=4, num_examples=5), evaluate,
                            evaluate.assignments["c0"])
    evaluate.move(evaluate.assignments["c0"], "committed")
    with pytest.raises(RoundStateError, match="already counted"):
        check_evaluation_report(report, evaluate, evaluate.assignments["c0"])


def test_metrics_are_bounded_in_count_name_and_value() -> None:
    check_metrics({f"m{i}": float(i) for i in range(64)})
    with pytest.raises(PayloadError, match="at most 64 metrics"):
        check_metrics({f"m{i}": 0.0 for i in range(65)})
    with pytest.raises(PayloadError, match="names over 64"):
        check_metrics({"x" * 65: 0.0})
    with pytest.raises(PayloadError, match="non-finite"):
        check_metrics({"loss": float("inf")})


def test_client_codec_plans_are_canonical_or_refused() -> None:
    specs = strategy().specs
    assert check_client_plan("uplink", "dense | zstd", specs) == "dense(dtype=float32)|zstd(level=3)"
    for text, match in [("x" * (MAX_PLAN_CHARACTERS + 1), "characters"), ("nosuchcodec", "refused"),
                        ("latent(size=4)", "refused")]:
        with pytest.raises(PayloadError, match=match):
            check_client_plan("uplink", text, specs)


# ------------------------------------------------------------------------------------------- norm policy


def test_the_norm_bound_refuses_or_clips_deltas_and_leaves_models_alone() -> None:
    delta = {"a": np.full(4, 3.0, np.float32), "b": np.full(9, 2.0, np.float32)}   # norm sqrt(36+36) = 8.49
    with pytest.raises(PayloadError, match="exceeds the server's bound 8"):
        NormPolicy(8.0).apply(True, delta)
    clipped = NormPolicy(4.0, "clip").apply(True, delta)
    assert np.isclose(np.sqrt(sum((v.astype(np.float64) ** 2).sum() for v in clipped.values())), 4.0)
    assert all(v.dtype == np.float32 for v in clipped.values())
    assert NormPolicy(9.0).apply(True, delta) is delta
    assert NormPolicy(1.0).apply(False, delta) is delta   # models (not deltas) are not bounded
    assert NormPolicy(0.0).apply(True, delta) is delta    # 0 turns the bound off
    with pytest.raises(ValueError, match="refuse or clip"):
        NormPolicy(1.0, "scale")


# ------------------------------------------------------------------------------------------------ records


def test_records_cut_bytes_at_round_boundaries_and_keep_records_json(tmp_path: Path) -> None:
    meter = ByteMeter()
    records = RunRecords(ServerConfig(out=str(tmp_path)), meter)
    meter.count("SubmitUpdate", up=1000)
    meter.count("DownloadModel", down=300)
    rnd = a_round(3)
    rnd.move(rnd.assignments["c0"], "committed")
    rnd.move(rnd.assignments["c1"], "failed")
    rnd.dense_up = 7
    record, traffic = records.record(rnd, 0.5, 1.5, {"loss": 2.0, "bad": float("nan")}, {"k": 8.0, "x": float("inf")},
                                     None, 3.0)
    assert (record.bytes_up, record.bytes_down, record.updates, record.failed, record.selected) == (1000, 300, 1, 1, 3)
    assert dict(record.metrics) == {"client_loss": 2.0, "k": 8.0, "non_finite_metrics_dropped": 2.0}
    records.commit(record, traffic)
    meter.count("SubmitUpdate", up=50)
    second, _ = records.record(a_round(number=5), float("nan"), 1.0, {}, {}, None, 1.0)
    assert (second.bytes_up, second.bytes_down) == (50, 0)   # only what crossed since round 4 closed
    records.write_report("fedavg")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["bytes_up"] == 1050 and [r["round"] for r in report["rounds"]] == [4]
    assert finite_metrics({"b": 1.0, "a": float("nan")}) == ({"b": 1.0}, 1)


def test_a_checkpoint_resumes_the_model_the_history_and_the_bytes(tmp_path: Path) -> None:
    meter, first = ByteMeter(), strategy()
    records = RunRecords(ServerConfig(), meter, CheckpointStore(tmp_path, "fedavg", SPEC))
    meter.count("SubmitUpdate", up=123, down=45)
    record, traffic = records.record(a_round(number=1), 0.7, 0.3, {}, {}, None, 1.0)
    records.checkpoint(record, first)
    records.commit(record, traffic)
    again = RunRecords(ServerConfig(), ByteMeter(), CheckpointStore(tmp_path, "fedavg", SPEC))
    second = FedAvg(build_model(SPEC, seed=1), first.settings)
    assert again.resume(second) == 1
    assert [r.round for r in again.history] == [1]
    assert (again.total_traffic().up, again.total_traffic().down) == (123, 45)
    for name, value in first.model.state_dict().items():
        assert np.array_equal(value.numpy(), second.model.state_dict()[name].numpy())
    assert RunRecords(ServerConfig(), ByteMeter()).resume(second) == 0   # no state directory: a fresh start


# ------------------------------------------------------------------------------------------ operator view


def test_the_operator_view_shows_the_round_clients_bytes_and_history() -> None:
    registry = ClientRegistry(timeout=60.0)
    registry.join("alice", pb.Capabilities(cpu_cores=2))
    history = [pb.RoundMetrics(round=1, accuracy=0.5), pb.RoundMetrics(round=2, accuracy=0.6)]
    meter = ByteMeter()
    meter.count("SubmitUpdate", up=10, down=20)
    idle = federation_status(pb.AGGREGATING, None, 5, "fedavg", registry, history, meter.snapshot(), False)
    assert (idle.round, idle.total_rounds, idle.connected_clients, idle.bytes_up, idle.bytes_down) == (2, 5, 1, 10, 20)
    assert idle.last_round.accuracy == pytest.approx(0.6) and not idle.history
    assert [c.client_id for c in idle.clients] == ["alice"] and idle.clients[0].capabilities.cpu_cores == 2
    busy = federation_status(pb.TRAINING, a_round(number=3), 5, "fedavg", registry, history, meter.snapshot(), True)
    assert busy.round == 3 and busy.state == pb.TRAINING and len(busy.history) == 2


# ------------------------------------------------------------------------------------------- client calls


def test_client_calls_hand_out_the_published_round_and_guard_its_tasks_without_a_round_loop() -> None:
    async def scenario() -> None:
        calls = ClientCalls(ServerConfig(rounds=1, poll_timeout=5.0), strategy(), SPEC, None, ByteMeter())
        alice = calls.join(pb.JoinRequest(client_id="alice")).session_id
        bob = calls.join(pb.JoinRequest(client_id="bob")).session_id
        with pytest.raises(PayloadError):
            calls.join(pb.JoinRequest(client_id="../evil"))
        with pytest.raises(SessionError):
            await calls.next_task("not-a-session", 0.0)
        waited = await calls.next_task(alice, 0.05)   # no round yet: a Wait that names the phase
        assert waited.WhichOneof("kind") == "wait" and waited.wait.reason == "waiting_for_clients"
        download = encode_model(*calls.strategy.downlink("dense"))
        rnd = OpenRound(4, 1, 0.0, 60.0, {"alice": Assignment("alice", "ta", PLAN, {}),
                                          "bob": Assignment("bob", "tb", PLAN, {})}, {"dense": download}, None)
        poll = asyncio.create_task(calls.next_task(bob, 5.0))   # a long-poll already waiting is woken
        await asyncio.sleep(0)
        calls.current, calls.phase = rnd, pb.TRAINING
        calls._notify(tasks=True)
        task = (await poll).train
        assert (task.round, task.task_id, task.method) == (4, "tb", "fedavg")
        assert task.model_payload_size == download.payload_size
        downloads = [calls.begin_download(alice, "ta") for _ in range(MAX_DOWNLOADS_PER_CLIENT)]
        with pytest.raises(RateLimitError):
            calls.begin_download(alice, "ta")
        for stream in downloads:
            calls.end_download(stream, completed=True)
        assert rnd.dense_down == calls._model_float32_bytes   # counted once per task, however many streams
        with pytest.raises(RoundStateError):
            calls.begin_download(alice, "tb")   # bob's task
        calls.report_failure(bob, "tb", "out of memory")
        assert rnd.assignments["bob"].status == "failed" and rnd.failures == ["bob: 'out of memory'"]
        calls.leave(alice, "done")
        assert rnd.assignments["alice"].status == "left" and rnd.closed.is_set()   # nothing outstanding
        calls.phase = pb.FINISHED
        assert (await calls.next_task(bob, 0.0)).WhichOneof("kind") == "finished"
        assert calls.clients.all()[0].told_finished

    asyncio.run(scenario())


def test_a_round_whose_every_client_fails_its_task_is_retried_after_a_pause_then_stops_the_federation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(round_loop, "RETRY_SECONDS", 0.2)

    async def scenario() -> tuple[round_loop.Coordinator, list[float]]:
        config = ServerConfig(rounds=2, min_clients=2, round_timeout=60.0, poll_timeout=5.0, linger=0.0)
        loop = round_loop.Coordinator(config, strategy(), SPEC, None, ByteMeter())
        sessions = [loop.join(pb.JoinRequest(client_id=name)).session_id for name in ("alice", "bob")]
        running = asyncio.create_task(loop.run())
        handed_out: list[float] = []
        while not running.done():   # a client that reports every task it gets as failed, and stays
            for session in sessions:
                task = await loop.next_task(session, 0.5)
                if task.WhichOneof("kind") == "train":
                    handed_out.append(asyncio.get_running_loop().time())
                    loop.report_failure(session, task.train.task_id, "no GPU here")
        await running
        return loop, handed_out

    loop, handed_out = asyncio.run(asyncio.wait_for(scenario(), 60))   # a loop that never stops fails here
    assert not loop.history
    assert loop.stopped_because == ("round 1: every selected client reported that it cannot do its task; "
                                    "the first: alice: 'no GPU here'")
    assert len(handed_out) == 2 * round_loop.MAX_ROUND_FAILURES   # three attempts of two tasks, then the stop
    attempts = handed_out[::2]
    assert all(later - earlier >= 0.2 for earlier, later in zip(attempts, attempts[1:]))   # paused, not spun

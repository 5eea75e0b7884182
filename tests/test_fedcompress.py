"""FedCompress: the K schedule, the representation score, weight clustering, distillation, end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedsqueeze.data.datasets import load_split
from fedsqueeze.data.ood import load_ood
from fedsqueeze.methods.fedcompress.clustering import cluster_model_, clustered_tensors, distinct_values, weight_sharing
from fedsqueeze.methods.fedcompress.representation import effective_rank
from fedsqueeze.models import build_model, make_model_spec
from fedsqueeze.server.aggregation import WeightedSum
from fedsqueeze.server.clients import ClientInfo
from fedsqueeze.server.distillation import distill, kl_to_teacher, softened
from fedsqueeze.server.strategies import StrategySettings
from fedsqueeze.server.strategies.fedcompress import FedCompress, KSchedule
from fedsqueeze.tensors import copy_float_state, float_state, model_spec
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import encode_model, expect_all, receive_model

from conftest import simulate


def feed(schedule: KSchedule, history: list[tuple[float, float]]) -> list[int]:
    return [schedule.record(a, s) for a, s in history]


def test_k_waits_for_patience_then_grows_on_a_plateau() -> None:
    flat = [(0.8, 10.0)] * 6
    assert feed(KSchedule(k0=8, patience=4), flat) == [8, 8, 8, 9, 9, 9]   # 4 rounds at 8, then 3 at 9
    # at K=9 the 4th round at the new K comes at the 8th record (tolerance is now 0.01 / 2)
    schedule = KSchedule(k0=8, patience=4)
    assert feed(schedule, [(0.8, 10.0)] * 8)[-1] == 10


def test_k_holds_while_accuracy_or_score_still_improves() -> None:
    improving_accuracy = [(0.5 + 0.05 * i, 10.0) for i in range(10)]
    assert feed(KSchedule(k0=8), improving_accuracy)[-1] == 8
    improving_score = [(0.8, 10.0 + 0.5 * i) for i in range(10)]
    assert feed(KSchedule(k0=8), improving_score)[-1] == 8
    falling = [(0.9 - 0.02 * i, 10.0 - i) for i in range(4)]                 # a drop is a plateau
    assert feed(KSchedule(k0=8), falling)[-1] == 9


def test_tolerance_shrinks_as_k_moves_away_from_k0() -> None:
    # at K = k0 + 2 the accuracy tolerance is 0.01 / (2 * 2) = 0.0025 per round of the rolling mean
    def grows_with(step: float) -> bool:
        schedule = KSchedule(k0=8, patience=4)
        schedule.k = 10
        assert feed(schedule, [(0.8, 10.0)] * 3) == [10, 10, 10]   # not yet patient enough
        return schedule.record(0.8 + 3 * step, 10.0) == 11         # the rolling mean rises by `step`
    assert grows_with(0.0024) and not grows_with(0.0026)


def test_k_stops_at_k_max() -> None:
    assert feed(KSchedule(k0=8, k_max=9, patience=1), [(0.8, 10.0)] * 10)[-1] == 9
    with pytest.raises(ValueError):
        KSchedule(k0=10, k_max=8)


def test_effective_rank_of_embeddings_of_known_rank() -> None:
    directions = torch.eye(16)[:5]
    spread = directions.repeat(40, 1) * torch.rand(200, 1).add(0.5)   # 5 orthogonal directions, equal counts
    assert effective_rank(spread) == pytest.approx(5.0, abs=1e-9)
    assert effective_rank(torch.ones(50, 8) * torch.rand(50, 1).add(1)) == pytest.approx(1.0, abs=1e-6)
    wide = effective_rank(torch.randn(20_000, 12, generator=torch.Generator().manual_seed(0)))
    assert 11.5 < wide <= 12.0


def small_model(seed: int = 0) -> torch.nn.Module:
    return build_model(make_model_spec("cnn(width=8)", (1, 12, 12), 10), seed=seed)


def test_clustering_leaves_exactly_k_values_per_layer_and_training_keeps_them() -> None:
    model = cluster_model_(small_model(), 6)
    assert set(distinct_values(model).values()) == {6}
    assert clustered_tensors(model) == ["features.0.weight", "features.3.weight", "features.7.weight", "head.weight"]
    data = load_split("synthetic", "train").select(np.arange(256))
    before = copy.deepcopy(model.state_dict())
    with weight_sharing(model, 6):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(5):
            optimizer.zero_grad()
            F.cross_entropy(model(data.x), data.y).backward()
            optimizer.step()
    assert set(distinct_values(model).values()) == {6}
    assert not torch.equal(before["head.weight"], model.state_dict()["head.weight"])   # centroids moved
    # ...and the clustered codec carries such a model exactly
    expected = expect_all(model_spec(float_state(model)), "cluster(k=6)|zstd; *.bias=dense")
    got = receive_model(encode_model(float_state(model), expected).chunks(), expected)
    assert all(np.array_equal(got[n], v.numpy()) for n, v in float_state(model).items())


def trained_teacher() -> torch.nn.Module:
    data = load_split("synthetic", "train").select()
    teacher = small_model(1)
    optimizer = torch.optim.SGD(teacher.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        for i in range(0, len(data), 64):
            optimizer.zero_grad()
            F.cross_entropy(teacher(data.x[i:i + 64]), data.y[i:i + 64]).backward()
            optimizer.step()
    return teacher


def test_distillation_reduces_the_teacher_student_kl_on_held_out_ood_data() -> None:
    teacher = trained_teacher()
    ood = load_ood("procedural", (1, 12, 12), 1200, seed=3)
    train, held = ood[200:], ood[:200]
    student = copy.deepcopy(teacher)
    probabilities = softened([teacher])
    with weight_sharing(student, 4):
        before = kl_to_teacher(student, probabilities, held)
        distill(student, probabilities, train, epochs=5, lr=1e-3)
        after = kl_to_teacher(student, probabilities, held)
    print(f"held-out KL(teacher || student): {before:.5f} -> {after:.5f}")
    assert after < 0.7 * before
    assert set(distinct_values(student).values()) == {4}


def small_settings(**params: object) -> StrategySettings:
    spec = make_model_spec("cnn(width=8)", (1, 12, 12), 10)
    return StrategySettings(spec, "synthetic", pb.Hyperparameters(epochs=1, batch_size=32, learning_rate=0.05,
                                                                   optimizer="sgd"), "dense", "dense", params=params)


def test_the_strategy_distils_the_clients_average_into_a_k_valued_global_model() -> None:
    settings = small_settings(k0=5, kd_epochs=1, ood_samples=300, upload="model")
    spec = settings.model_spec
    strategy = FedCompress(build_model(spec, seed=0), settings)
    assert set(distinct_values(strategy.model).values()) == {5}           # the first download is clustered
    accumulator = WeightedSum()
    for seed, examples in ((1, 100), (2, 300)):
        client = cluster_model_(build_model(spec, seed=seed), 5)
        accumulator.add(float_state(client), examples)
    metrics = strategy.aggregate(1, accumulator, {"val_accuracy": 0.5, "score": 7.0})
    assert set(distinct_values(strategy.model).values()) == {5}
    assert metrics["k"] == metrics["next_k"] == 5 and metrics["kd_kl_after"] <= metrics["kd_kl_before"]
    plan = strategy.configure(2, [])
    assert plan == {}
    with pytest.raises(ValueError, match="must not be the federation's own data"):
        FedCompress(build_model(spec), StrategySettings(spec, "synthetic", settings.hyperparameters, "dense",
                                                        "dense", params={"ood": "synthetic"}))
    with pytest.raises(ValueError, match="upload must be delta or model"):
        FedCompress(build_model(spec), small_settings(upload="weights"))


def test_delta_k_fixes_the_uplink_clusters_and_leaves_the_served_model_at_the_schedules_k() -> None:
    strategy = FedCompress(build_model(small_settings().model_spec, seed=0), small_settings(k0=12, delta_k=8))
    plan = strategy.configure(1, [ClientInfo("c1", pb.Capabilities(), "session")])["c1"]
    assert "k=8," in plan.uplink_codec and "k=12," in plan.downlink_codec
    assert "k=8," in strategy.expected_update(plan)["head.weight"].codec.spec   # what the server will accept
    assert set(distinct_values(strategy.model).values()) == {12}
    default = FedCompress(build_model(small_settings().model_spec, seed=0), small_settings(k0=12))
    default_plan = default.configure(1, [ClientInfo("c1", pb.Capabilities(), "session")])["c1"]
    assert default_plan.uplink_codec == default_plan.downlink_codec
    for bad in ({"delta_k": -1}, {"delta_k": 300}, {"delta_k": 8, "upload": "model"}):   # 0: the schedule's K
        with pytest.raises(ValueError, match="delta_k"):
            FedCompress(build_model(small_settings().model_spec), small_settings(**bad))

def test_delta_uploads_keep_steps_smaller_than_the_centroid_gaps(tmp_path: Path) -> None:
    """upload=delta: a step too small to move any weight to another centroid still accumulates in the float32
    teacher, round after round, while the served model stays K-valued; upload=model loses it for good."""
    def run(upload: str, state_dir: Path | None = None) -> tuple[FedCompress, list[dict[str, torch.Tensor]]]:
        settings = small_settings(k0=4, distill=False, upload=upload)
        settings = StrategySettings(**{**settings.__dict__, "state_dir": state_dir})
        strategy = FedCompress(build_model(settings.model_spec, seed=0), settings)
        served = []
        for round_number in (1, 2, 3):
            start = float_state(strategy.model)
            # +-1e-4, alternating: far below a centroid gap at K=4, and no net shift of any centroid
            step = {n: 1e-4 * (1 - 2 * (torch.arange(t.numel()) % 2)).reshape(t.shape).float()
                    for n, t in start.items()}
            update = step if upload == "delta" else {n: start[n] + step[n] for n in start}
            accumulator = WeightedSum()
            accumulator.add(update, 10)
            strategy.aggregate(round_number, accumulator, {})
            assert set(distinct_values(strategy.model).values()) == {4}
            served.append(copy_float_state(strategy.model))
            if state_dir:
                strategy.state_dict()   # as each checkpoint does
        return strategy, served

    deltas, _ = run("delta", tmp_path)
    initial = float_state(build_model(deltas.settings.model_spec, seed=0))
    assert deltas.teacher is not None
    for name, value in initial.items():
        signs = (1 - 2 * (torch.arange(value.numel()) % 2)).reshape(value.shape)
        torch.testing.assert_close(deltas.teacher[name], value + 3e-4 * signs)
    models, served = run("model")
    assert models.teacher is None
    for name in clustered_tensors(models.model):   # three steps of 1e-4 each, and the served weights did not move
        moved = (served[2][name] - served[0][name]).abs().max().item()
        print(f"{name}: upload=model moved the served weights by at most {moved:.2e}")
        assert moved < 5e-5

    # The teacher outlives a restart: the checkpoint's state names its file; two files are kept at most.
    state = json.loads(json.dumps(deltas.state_dict()))
    assert state["teacher_file"] == "teacher-3.pt"
    assert sorted(f.name for f in (tmp_path / "fedcompress").iterdir()) == ["teacher-2.pt", "teacher-3.pt"]
    restored = FedCompress(build_model(deltas.settings.model_spec, seed=5), deltas.settings)
    restored.model.load_state_dict(deltas.model.state_dict())
    restored.load_state_dict(state)
    assert restored.teacher is not None and all(torch.equal(restored.teacher[n], deltas.teacher[n])
                                                for n in deltas.teacher)
    assert restored.schedule.k == deltas.schedule.k


@pytest.mark.slow
def test_simulate_fedcompress_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    report = simulate(out, "--method", "fedcompress(kd_epochs=2,ood_samples=600,patience=2)", "--clients", "3",
                      "--rounds", "5", "--data", "synthetic(size=28,samples=600)", "--model", "cnn", "--linger", "5")
    # Chance is 0.1; at round 5 the curve is still steep (0.25 -> 0.58 -> 0.9), so the last figure moves by a
    # few points with any numeric change (0.89-0.93 across k-means' float32 and float64 grids).
    assert report["method"] == "fedcompress" and report["final_accuracy"] > 0.8
    ks = [r["metrics"]["k"] for r in report["rounds"]]
    assert ks[0] == 8 and all(b - a in (0, 1) for a, b in zip(ks, ks[1:]))
    for r in report["rounds"]:
        assert r["dense_bytes_up"] / r["bytes_up"] > 8 and r["dense_bytes_down"] / r["bytes_down"] > 8
        assert {"client_val_accuracy", "client_score", "teacher_accuracy", "kd_kl_after"} <= set(r["metrics"])


def test_distillation_leaves_batch_norm_statistics_as_the_clients_left_them() -> None:
    """The unlabelled images are out of distribution: their batch statistics must not replace the clients'."""
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 3))
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        student[1].running_mean.fill_(0.5)
        student[1].running_var.fill_(2.0)
    before = {k: v.clone() for k, v in student.state_dict().items() if "running" in k}
    distill(student, softened([teacher]), torch.randn(64, 1, 12, 12) * 3 + 1, epochs=2)
    assert all(torch.equal(student.state_dict()[k], v) for k, v in before.items())
    assert not torch.equal(student[4].weight, teacher[4].weight)   # it did train


def test_a_diverged_distillation_serves_the_clustered_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = small_settings(k0=5, kd_epochs=1, ood_samples=300)
    strategy = FedCompress(build_model(settings.model_spec, seed=0), settings)

    def diverge(student: nn.Module, teacher: object, round_number: int) -> dict[str, float]:
        with torch.no_grad():
            next(student.parameters()).fill_(float("nan"))
        return {}

    monkeypatch.setattr(strategy.distillation, "run", diverge)
    accumulator = WeightedSum()
    accumulator.add({k: torch.zeros_like(v).numpy() for k, v in float_state(strategy.model).items()}, 10)
    metrics = strategy.aggregate(1, accumulator, {})
    assert metrics["kd_diverged"] == 1.0
    assert all(torch.isfinite(v).all() for v in float_state(strategy.model).values())
    assert set(distinct_values(strategy.model).values()) <= {1, 2, 3, 4, 5}

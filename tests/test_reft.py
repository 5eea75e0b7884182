"""REFT: nested physical sub-models, tiers, coverage-weighted aggregation, ensemble distillation, live runs."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from fedsqueeze.client.trainers.reft import ReftTrainer
from fedsqueeze.data.datasets import Dataset
from fedsqueeze.data.partition import partition
from fedsqueeze.methods.reft.costs import training_cost
from fedsqueeze.methods.reft.nested import NestedWidth
from fedsqueeze.methods.reft.pruning import channel_ranking, index_map, keep_first, kept_channels, prune
from fedsqueeze.models import build_model, make_model_spec
from fedsqueeze.server.clients import ClientInfo
from fedsqueeze.server.strategies import StrategySettings
from fedsqueeze.server.strategies.base import ClientUpdate
from fedsqueeze.server.strategies.reft import Reft, parse_tiers, tier_for
from fedsqueeze.tensors import float_state
from fedsqueeze.v1 import federation_pb2 as pb

from conftest import FAST_SERVER, Cluster, simulate
from test_refusals import Prober

SPEC = make_model_spec("cnn", (1, 28, 28), 10)
EXAMPLE = torch.zeros(1, 1, 28, 28)


def test_sub_models_are_nested_physically_smaller_and_map_back_exactly() -> None:
    model = build_model(SPEC, seed=0)
    ranking = channel_ranking(model, EXAMPLE)
    full = float_state(model)
    previous: dict[str, list[int]] | None = None
    for width in (1.0, 0.75, 0.5, 0.25):
        keep = kept_channels(ranking, width)
        sub = float_state(prune(model, EXAMPLE, keep))
        positions = index_map(model, EXAMPLE, keep)
        assert set(sub) == set(full) == set(positions)
        for name, value in sub.items():
            assert np.array_equal(full[name].numpy().reshape(-1)[positions[name]], value.numpy()), name
            assert len(np.unique(positions[name])) == value.numel()
        assert sub["features.0.weight"].shape[0] == max(1, int(np.ceil(width * 32)))
        if previous is not None:
            assert all(set(keep[n]) <= set(previous[n]) for n in keep), "a smaller tier must nest in a larger"
        previous = keep
        # the client rebuilds the same structure from counts alone
        rebuilt = float_state(prune(build_model(SPEC), EXAMPLE, keep_first({n: len(k) for n, k in keep.items()})))
        assert {n: v.shape for n, v in rebuilt.items()} == {n: v.shape for n, v in sub.items()}
    with pytest.raises(ValueError, match="distinct indices"):
        prune(model, EXAMPLE, {"features.0": [0, 32]})
    with pytest.raises(ValueError, match="not prunable"):
        prune(model, EXAMPLE, {"head": [0]})


def test_the_quarter_width_tier_costs_under_a_tenth_of_the_full_model() -> None:
    model = build_model(SPEC, seed=0)
    full = training_cost(model, (1, 28, 28))
    quarter = training_cost(prune(model, EXAMPLE, kept_channels(channel_ranking(model, EXAMPLE), 0.25)), (1, 28, 28))
    assert quarter.flops_per_sample <= 0.1 * full.flops_per_sample
    assert quarter.params <= 0.1 * full.params
    assert quarter.memory_bytes < 0.5 * full.memory_bytes


def test_tiers_follow_the_compute_budget() -> None:
    widths = parse_tiers("0.25/1/0.5/0.75")
    assert widths == [1.0, 0.75, 0.5, 0.25]
    assert [tier_for(c, widths) for c in (1.0, 0.6, 0.3, 0.1, 0.01)] == [1.0, 0.75, 0.5, 0.25, 0.25]
    for bad in ("1/x", "0/0.5", "1.5"):
        with pytest.raises(ValueError, match="tiers|tier widths"):
            parse_tiers(bad)


def test_skewed_partition_puts_the_rare_classes_on_the_last_clients() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = partition(labels, "skewed(last=3,classes=3,share=0.9)", 10, 0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    rare = [np.isin(labels[p], [7, 8, 9]).mean() for p in parts]
    assert all(r == 1 for r in rare[-3:]) and all(r < 0.1 for r in rare[:-3])


def strategy(**params: object) -> Reft:
    settings = StrategySettings(SPEC, "fashion-mnist", pb.Hyperparameters(epochs=1, batch_size=32,
                                learning_rate=0.01, optimizer="sgd"), "dense", "dense",
                                params={"public_samples": 200, **params})
    return Reft(build_model(SPEC, seed=0), settings)


def client(name: str, budget: float) -> ClientInfo:
    return ClientInfo(name, pb.Capabilities(cpu_cores=1, compute_budget=budget), "s-" + name)


def test_aggregation_is_coverage_weighted_and_leaves_uncovered_weights() -> None:
    reft = strategy(distill=False)
    before = {n: v.clone() for n, v in float_state(reft.model).items()}
    plans = reft.configure(1, [client("big", 1.0), client("small", 0.1)])
    assert plans["big"].method_config["width"] == 1.0 and plans["small"].method_config["width"] == 0.25
    big_specs, small_specs = (reft.expected_update(plans[c]) for c in ("big", "small"))
    accumulator = reft.new_accumulator()
    ones = {n: np.ones(e.spec.shape, np.float32) for n, e in big_specs.items()}
    threes = {n: np.full(e.spec.shape, 3.0, np.float32) for n, e in small_specs.items()}
    reft.accumulate(accumulator, ClientUpdate("big", plans["big"], ones, 100, {}))
    reft.accumulate(accumulator, ClientUpdate("small", plans["small"], threes, 300, {}))
    metrics = reft.aggregate(1, accumulator, {})
    after = float_state(reft.model)
    small = reft.cuts[0.25].positions
    for name in before:
        moved = (after[name] - before[name]).numpy().reshape(-1)
        both = np.zeros(moved.size, bool)
        both[small[name].reshape(-1)] = True
        assert np.allclose(moved[both], (100 * 1 + 300 * 3) / 400, atol=1e-5), name   # covered by both
        assert np.allclose(moved[~both], 1.0, atol=1e-5), name                        # covered by big only
    assert metrics["coverage"] == 1.0 and metrics["tier_0.25_clients"] == 1

    lone = strategy(distill=False)
    before = {n: v.clone() for n, v in float_state(lone.model).items()}
    plan = lone.configure(1, [client("small", 0.1)])["small"]
    accumulator = lone.new_accumulator()
    lone.accumulate(accumulator, ClientUpdate("small", plan, {n: np.ones(e.spec.shape, np.float32) for n, e in
                                                               lone.expected_update(plan).items()}, 10, {}))
    lone.aggregate(1, accumulator, {})
    changed = sum(int((float_state(lone.model)[n] != before[n]).sum()) for n in before)
    assert changed == sum(v.size for v in lone.cuts[0.25].positions.values())   # nothing outside the sub-model


def test_ensemble_distillation_moves_the_global_model_towards_the_clients() -> None:
    reft = strategy(kd_epochs=3, kd_lr=1e-3)
    plans = reft.configure(1, [client("a", 1.0), client("b", 0.3)])
    accumulator = reft.new_accumulator()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        delta = {n: rng.normal(0, 0.05, e.spec.shape).astype(np.float32)
                 for n, e in reft.expected_update(plans[name]).items()}
        reft.accumulate(accumulator, ClientUpdate(name, plans[name], delta, 50, {}))
    metrics = reft.aggregate(1, accumulator, {})
    assert metrics["kd_kl_after"] < metrics["kd_kl_before"]


def test_a_nested_width_is_the_narrow_sub_model_and_trains_through_the_wide_models_weights() -> None:
    model = build_model(SPEC, seed=0)
    keep = kept_channels(channel_ranking(model, EXAMPLE), 0.25)
    nested = NestedWidth(model, EXAMPLE, keep)
    x = torch.randn(6, 1, 28, 28)
    assert torch.equal(nested(model, x), prune(model, EXAMPLE, keep)(x))
    nested(model, x).square().sum().backward()
    positions = index_map(model, EXAMPLE, keep)
    for name, parameter in model.named_parameters():
        touched = np.flatnonzero(parameter.grad.numpy().reshape(-1))
        assert touched.size and set(touched) <= set(positions[name].reshape(-1).tolist()), name


def test_wider_clients_are_told_where_the_narrowest_tier_sits_inside_their_sub_model() -> None:
    reft = strategy()
    plans = reft.configure(1, [client("big", 1.0), client("mid", 0.3), client("small", 0.1)])
    assert "inplace" not in plans["small"].method_config
    for name in ("big", "mid"):
        config = plans[name].method_config
        wide = reft.cuts[config["width"]]
        inner = NestedWidth(prune(reft.model, EXAMPLE, wide.keep), EXAMPLE, config["inplace"])
        wide_model = prune(reft.model, EXAMPLE, wide.keep)
        x = torch.randn(4, 1, 28, 28)
        narrow = prune(reft.model, EXAMPLE, reft.cuts[0.25].keep)
        assert torch.allclose(inner(wide_model, x), narrow(x), atol=1e-6), name
    off = strategy(inplace_kd=0).configure(1, [client("big", 1.0)])
    assert "inplace" not in off["big"].method_config


def reft_task(plan_config: dict[str, object], trainer: str = "") -> pb.TrainTask:
    """The task a client gets for ``plan_config`` (the strategy's method config), in-place term on."""
    return pb.TrainTask(round=1, trainer=trainer, method_config_json=json.dumps(
        {**plan_config, "params": {"inplace_kd": 1.0}}))


def test_in_place_distillation_teaches_the_clients_narrow_sub_network_to_agree_with_its_own_model() -> None:
    reft = strategy()
    config = reft.configure(1, [client("big", 1.0)])["big"].method_config
    labels = torch.arange(512) % 10
    prototypes = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    data = Dataset(prototypes[labels] + 0.5 * torch.randn(512, 1, 28, 28), labels, 10)
    downloaded = {n: v.numpy().copy() for n, v in reft.cuts[1.0].tensors.items()}
    hp = pb.Hyperparameters(epochs=3, batch_size=32, learning_rate=0.01, optimizer="sgd", momentum=0.9)
    agreement = {}
    for inplace in (True, False):
        task = reft_task({**config, **({} if inplace else {"inplace": None})})
        update = ReftTrainer(build_model(SPEC), data, seed=3).fit(task, downloaded, hp, lambda: False).update
        wide = prune(build_model(SPEC), EXAMPLE, keep_first(config["channels"])).eval()
        wide.load_state_dict({n: torch.from_numpy(downloaded[n]) + update[n] for n in downloaded})
        nested = NestedWidth(wide, EXAMPLE, config["inplace"])
        with torch.no_grad():
            narrow = nested(wide, data.x)
            agreement[inplace] = (narrow.argmax(1) == wide(data.x).argmax(1)).float().mean().item()
    # Trained only as a slice of the wide model, the narrow sub-network agrees on 0.28 of the samples here;
    # distilled in place, on 0.64.
    assert agreement[True] > agreement[False] + 0.2, agreement


def ignores_extra_loss(model: torch.nn.Module, data: Dataset, round: object) -> dict[str, float]:
    """A user's loop that trains nothing and never adds the method's term."""
    return {}


def test_a_training_loop_that_ignores_the_in_place_term_is_an_error_not_a_silent_skip() -> None:
    reft = strategy()
    config = reft.configure(1, [client("big", 1.0)])["big"].method_config
    data = Dataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)), 10)
    downloaded = {n: v.numpy().copy() for n, v in reft.cuts[1.0].tensors.items()}
    hp = pb.Hyperparameters(epochs=1, batch_size=32, learning_rate=0.05, optimizer="sgd")
    with pytest.raises(ValueError, match="never added round.extra_loss"):
        ReftTrainer(build_model(SPEC), data, seed=0).fit(
            reft_task(config, "test_reft:ignores_extra_loss"), downloaded, hp, lambda: False)


def test_aggregation_and_distillation_give_the_same_bits_in_any_arrival_order_or_tree_of_merges() -> None:
    budgets = {"a": 1.0, "b": 0.3, "c": 0.1, "d": 0.6}
    rng = np.random.default_rng(3)
    models = []
    for trial, tree in enumerate(([["a", "b", "c", "d"]], [["d", "c", "b", "a"]], [["c", "a"], ["d", "b"]])):
        reft = strategy(kd_epochs=1, kd_lr=1e-3)
        plans = reft.configure(1, [client(name, budget) for name, budget in budgets.items()])
        if trial == 0:
            deltas = {name: {n: (rng.normal(0, 0.05, e.spec.shape) * 10.0 ** rng.integers(-3, 1)).astype(np.float32)
                             for n, e in reft.expected_update(plans[name]).items()} for name in budgets}
        edges = []
        for branch in tree:
            edges.append(reft.new_accumulator())
            for name in branch:
                reft.accumulate(edges[-1], ClientUpdate(name, plans[name], deltas[name], 37 + len(name) * 11, {}))
        root = reft.new_accumulator()
        for edge in reversed(edges):
            root.merge(edge)
        with pytest.raises(ValueError, match="count twice"):
            root.merge(edges[0])
        reft.aggregate(1, root, {})
        models.append(float_state(reft.model))
    assert all(torch.equal(models[0][n], other[n]) for other in models[1:] for n in models[0])


def test_a_full_size_update_from_a_small_tier_is_refused(cluster: Cluster) -> None:
    cluster.server(*FAST_SERVER, "--rounds", "2", "--min-clients", "1", "--method", "reft(distill=false)")
    with cluster.channel() as channel:
        prober = Prober(channel, budget=0.1)
        task = prober.task()
        assert json.loads(task.method_config_json)["width"] == 0.25
        full = {n: np.zeros(s.shape, np.float32) for n, s in prober.specs.items()}
        code, details = prober.refused([prober.header(task), *prober.chunks(full, task)])
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "does not match" in details, details


@pytest.mark.slow
def test_simulate_reft_with_three_tiers_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    report = simulate(out, "--method", "reft(kd_epochs=1,public_samples=300)", "--clients", "3", "--budgets",
                      "1,0.3,0.1", "--rounds", "3", "--data", "synthetic(size=28,samples=600)", "--model", "cnn",
                      "--uplink", "cluster(k=16)|zstd", "--linger", "5")
    assert report["method"] == "reft" and report["final_accuracy"] > 0.9
    last = report["rounds"][-1]["metrics"]
    assert [last[f"tier_{w}_clients"] for w in ("1", "0.5", "0.25")] == [1, 1, 1]
    assert last["tier_0.25_payload_bytes_down"] < 0.1 * last["tier_1_payload_bytes_down"]
    assert last["tier_0.25_payload_bytes_up"] < last["tier_1_payload_bytes_up"]
    assert last["tier_0.25_train_flops_per_sample"] < 0.1 * last["tier_1_train_flops_per_sample"]
    assert all(0 <= last[f"tier_{w}_accuracy"] <= 1 for w in ("1", "0.75", "0.5", "0.25"))

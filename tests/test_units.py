"""Unit tests of the small pieces: specs, config precedence, partitioning, IDX, aggregation, backoff."""

from __future__ import annotations

import argparse
import gzip
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsqueeze.backoff import Backoff
from fedsqueeze.codecs import CodecError, get_pipeline
from fedsqueeze.config import ClientConfig, ServerConfig, add_arguments, resolve
from fedsqueeze.data.idx import read_idx
from fedsqueeze.data.partition import partition
from fedsqueeze.errors import PayloadError
from fedsqueeze.models import build_model, make_model_spec
from fedsqueeze.server.admission import check_client_plan
from fedsqueeze.server.aggregation import WeightedSum
from fedsqueeze.server.app import build_coordinator
from fedsqueeze.server.partial_sums import accept_partial, encode_partial, expected_partial, partial_header
from fedsqueeze.specs import SpecError, format_spec, parse_spec
from fedsqueeze.tensors import TensorSpec
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import receive_model


def test_spec_parsing_and_canonical_form() -> None:
    assert parse_spec("cnn") == ("cnn", {})
    name, params = parse_spec(" dirichlet( alpha = 0.5 , flag=true, dir=/usr/share/x ) ")
    assert (name, params) == ("dirichlet", {"alpha": 0.5, "flag": True, "dir": "/usr/share/x"})
    assert format_spec("cnn", {"width": 16, "hidden": 64}) == "cnn(hidden=64,width=16)"
    assert parse_spec(format_spec("x", {"a": 1, "b": False})) == ("x", {"a": 1, "b": False})
    for bad in ("", "cnn(", "cnn(width)", "cnn(a=1,a=2)", "1cnn", "cnn(a=b c)"):
        with pytest.raises(SpecError):
            parse_spec(bad)


def _args(cls: type, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls)
    return parser.parse_args(argv)


def test_config_precedence_flag_env_file_default(tmp_path: Path) -> None:
    toml = tmp_path / "fs.toml"
    toml.write_text('[server]\nrounds = 7\nmin_clients = 3\nlr = 1\nmethod = "fedavg"\n')
    env = {"FEDSQUEEZE_MIN_CLIENTS": "4", "FEDSQUEEZE_INSECURE": "true"}
    config = resolve(ServerConfig, _args(ServerConfig, ["--config", str(toml), "--rounds", "9"]), "server", env)
    assert config.rounds == 9            # flag beats file
    assert config.min_clients == 4       # environment beats file
    assert config.lr == 1.0 and isinstance(config.lr, float)   # file, int widened to float
    assert config.insecure is True       # environment
    assert config.fraction == 1.0        # default
    no_flag = resolve(ServerConfig, _args(ServerConfig, ["--no-insecure"]), "server", env)
    assert no_flag.insecure is False     # --no-insecure beats the environment


def test_config_errors_name_the_setting(tmp_path: Path) -> None:
    toml = tmp_path / "fs.toml"
    toml.write_text("[client]\nepochz = 2\n")
    with pytest.raises(ValueError, match="unknown keys in \\[client\\]: epochz"):
        resolve(ClientConfig, _args(ClientConfig, ["--config", str(toml)]), "client", {})
    with pytest.raises(ValueError, match="FEDSQUEEZE_EPOCHS: expected int"):
        resolve(ClientConfig, _args(ClientConfig, []), "client", {"FEDSQUEEZE_EPOCHS": "two"})
    toml.write_text('[client]\nepochs = "2"\n')
    with pytest.raises(ValueError, match="epochs: expected int"):
        resolve(ClientConfig, _args(ClientConfig, ["--config", str(toml)]), "client", {})


@pytest.mark.parametrize("scheme", ["iid", "dirichlet(alpha=0.3)", "dirichlet(alpha=0.3,by=client)"])
def test_partitions_are_disjoint_complete_and_seeded(scheme: str) -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=5000)
    parts = partition(labels, scheme, 7, seed=3)
    joined = np.concatenate(parts)
    assert len(joined) == len(labels) and len(np.unique(joined)) == len(labels)
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition(labels, scheme, 7, seed=3)))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, partition(labels, scheme, 7, seed=4)))


def test_dirichlet_skews_labels_and_iid_does_not() -> None:
    labels = np.repeat(np.arange(10), 1000)
    def majority_share(parts: list[np.ndarray]) -> float:
        return float(np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]))
    assert majority_share(partition(labels, "iid", 10, 0)) < 0.15
    assert majority_share(partition(labels, "dirichlet(alpha=0.1)", 10, 0)) > 0.5
    assert majority_share(partition(labels, "dirichlet(alpha=0.1,by=client)", 10, 0)) > 0.4
    for bad in ("shards", "dirichlet(alpha=0.3,by=row)", "dirichlet(beta=1)"):
        with pytest.raises(ValueError, match="unknown partition scheme"):
            partition(labels, bad, 10, 0)


def test_dirichlet_by_client_gives_every_client_an_equal_share_where_by_class_cannot() -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=6000)
    with pytest.raises(ValueError, match="by=client"):
        partition(labels, "dirichlet(alpha=0.3)", 1000, 0)
    parts = partition(labels, "dirichlet(alpha=0.3,by=client)", 1000, 0)
    assert {len(p) for p in parts} == {6}
    assert len(np.unique(np.concatenate(parts))) == len(labels)
    majority = np.mean([np.bincount(labels[p], minlength=10).max() / 6 for p in parts])
    assert majority > 0.45  # IID six-example clients would sit near 0.3
    with pytest.raises(ValueError, match="at least as many examples"):
        partition(labels[:10], "dirichlet(alpha=0.3,by=client)", 11, 0)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        partition(labels, "dirichlet(alpha=0,by=client)", 10, 0)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_idx_reader_round_trip_and_strictness(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    assert np.array_equal(read_idx(tmp_path / "a.gz"), images)
    (tmp_path / "short").write_bytes(_idx_bytes(images)[:-1])
    with pytest.raises(ValueError, match="needs 24"):
        read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\x01\x02\x03\x04" + _idx_bytes(images)[4:])
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(tmp_path / "magic")


def test_weighted_sum_is_the_weighted_mean_and_merges() -> None:
    rng = np.random.default_rng(1)
    updates = [({"w": rng.normal(size=(3, 2)).astype(np.float32)}, float(n)) for n in (5, 1, 10, 4)]
    whole, left, right = WeightedSum(), WeightedSum(), WeightedSum()
    for i, (tensors, weight) in enumerate(updates):
        whole.add(tensors, weight)
        (left if i < 2 else right).add(tensors, weight)
    expected = sum(t["w"] * w for t, w in updates) / sum(w for _, w in updates)
    np.testing.assert_allclose(whole.mean()["w"].numpy(), expected, rtol=1e-6)
    left.merge(right)
    np.testing.assert_allclose(left.mean()["w"].numpy(), expected, rtol=1e-6)
    assert left.count == 4 and left.weight == 20
    with pytest.raises(ValueError):
        whole.add({"w": np.zeros((3, 2), np.float32)}, 0)


def test_weighted_sum_gives_the_same_bits_in_any_order_and_any_tree_of_merges() -> None:
    rng = np.random.default_rng(2)
    updates = [({"w": (rng.normal(size=4096) * 10.0 ** rng.integers(-4, 1)).astype(np.float32)}, float(n))
               for n in rng.integers(1, 600, size=24)]
    one = WeightedSum()
    for tensors, weight in updates:
        one.add(tensors, weight)
    float_sums = []
    for trial in range(4):
        order = rng.permutation(len(updates))
        edges = [WeightedSum() for _ in range(trial + 2)]   # a tree: edge sums merged into a root
        for position, i in enumerate(order):
            edges[position % len(edges)].add(*updates[i])
        root = WeightedSum()
        for edge in reversed(edges):
            root.merge(edge)
        assert torch.equal(root.sums["w"], one.sums["w"]) and torch.equal(root.mean()["w"], one.mean()["w"])
        plain = torch.zeros(4096)
        for i in order:
            plain.add_(torch.from_numpy(updates[i][0]["w"]), alpha=updates[i][1])
        float_sums.append(plain)
    assert any(not torch.equal(float_sums[0], other) for other in float_sums[1:])   # what the fixed point fixes
    exact = sum(t["w"].astype(np.float64) * w for t, w in updates) / sum(w for _, w in updates)
    np.testing.assert_allclose(one.mean()["w"].numpy(), exact, rtol=1e-6, atol=1e-9)


def test_weighted_sum_refuses_what_could_overflow_or_is_not_finite_and_stays_unchanged() -> None:
    total = WeightedSum()
    total.add({"w": np.ones(3, np.float32)}, 1000.0)
    before = total.sums["w"].clone()
    with pytest.raises(ValueError, match="overflow"):
        total.add({"w": np.full(3, 1e5, np.float32)}, 1000.0)   # |w * x| = 1e8 > 2^26
    with pytest.raises(ValueError, match="non-finite"):
        total.add({"w": np.array([1.0, np.inf, 0.0], np.float32)}, 1.0)
    assert torch.equal(total.sums["w"], before) and total.count == 1 and total.weight == 1000.0


def test_weighted_sum_rounds_every_element_once_across_fold_blocks_and_strided_inputs() -> None:
    rng = np.random.default_rng(4)
    matrix = (rng.normal(size=(700, 300)) * 10.0 ** rng.integers(-6, 1, size=(700, 300))).astype(np.float32)
    updates = [({"w": matrix.T, "b": matrix[0, :5]}, 599.0),          # strided views, 210,000 elements
               ({"w": torch.from_numpy(matrix.T.copy()), "b": np.ones(5, np.float32)}, 3.0)]
    total = WeightedSum()
    for tensors, weight in updates:
        total.add(tensors, weight)
    for name in ("w", "b"):
        reference = sum(torch.round(torch.as_tensor(np.asarray(t[name])).to(torch.float64) * w * 2.0 ** 36)
                        .to(torch.int64) for t, w in updates)
        assert torch.equal(total.sums[name], reference)
    scaled, largest = WeightedSum().scale(updates[0][0], 599.0)
    assert torch.equal(scaled["b"], torch.round(torch.from_numpy(matrix[0, :5]).double() * 599.0 * 2.0 ** 36)
                       .to(torch.int64))
    assert largest == float(np.abs(matrix).max()) * 599.0
    with pytest.raises(ValueError, match="shape"):
        total.add({"w": matrix, "b": np.ones(5, np.float32)}, 1.0)   # (700, 300) against the sum's (300, 700)
    assert total.count == 2


def test_partial_sums_cross_the_wire_exactly_and_merge_as_the_updates_would_add() -> None:
    rng = np.random.default_rng(3)
    specs = {"w": TensorSpec("w", (64, 3)), "b": TensorSpec("b", (3,))}
    updates = [({n: (rng.normal(size=s.shape) * 10.0 ** rng.integers(-5, 2)).astype(np.float32)
                 for n, s in specs.items()}, float(n)) for n in rng.integers(1, 900, size=9)]
    one = WeightedSum()
    for tensors, weight in updates:
        one.add(tensors, weight)
    edges = [WeightedSum(), WeightedSum()]
    for i, (tensors, weight) in enumerate(updates):
        edges[i % 2].add(tensors, weight)
    root = WeightedSum()
    for edge in edges:
        weight, partial = partial_header(edge)
        partial.selected = edge.count
        header = pb.UpdateHeader(num_examples=weight, partial=partial)
        expected = expected_partial(specs)
        received = receive_model(encode_partial(edge, specs).chunks(1024), expected)   # what the root decodes
        root.merge(accept_partial(header, received, max_examples=1000))
    assert (root.count, root.weight) == (one.count, one.weight)
    for name in specs:
        assert torch.equal(root.sums[name], one.sums[name])
    extremes = np.array([np.iinfo(np.int64).min, -1, 0, 1, np.iinfo(np.int64).max], np.int64)
    for codec in ("fixed64", "fixed64(shuffle=true)|zstd"):
        pipeline = get_pipeline(codec)
        assert pipeline.lossless and pipeline.dtype == np.int64
        np.testing.assert_array_equal(pipeline.decode(pipeline.encode(extremes), TensorSpec("x", (5,), "int64")),
                                      extremes)
    with pytest.raises(CodecError, match="no transform stage"):
        get_pipeline("sparse(ratio=0.1)|fixed64")
    with pytest.raises(PayloadError, match="partial sums, not model tensors"):
        check_client_plan("uplink", "fixed64", specs)


def test_backoff_doubles_to_the_cap_with_jitter() -> None:
    backoff = Backoff(base=0.5, cap=8.0, rng=random.Random(0))
    delays = [backoff.next_delay() for _ in range(10)]
    ceilings = [min(8.0, 0.5 * 2**i) for i in range(10)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings))
    assert len(set(delays)) == len(delays)   # jittered
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_models_build_from_specs_with_reproducible_init() -> None:
    spec = make_model_spec("cnn(width=8)", (1, 12, 12), 10)
    a, b = build_model(spec, seed=1), build_model(spec, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a(torch.zeros(2, 1, 12, 12)).shape == (2, 10)
    big = build_model(make_model_spec("mlp(hidden=4096)", (1, 28, 28), 10))
    assert sum(p.numel() for p in big.parameters()) == 20_037_642
    with pytest.raises(ValueError, match="unknown model"):
        make_model_spec("nosuchmodel", (1, 28, 28), 10)


@pytest.mark.parametrize(("flags", "message"), [
    ({"uplink": "fixed64"}, "--uplink 'fixed64': fixed64 carries edge aggregators' partial sums"),
    ({"downlink": "fixed64(shuffle=true)|zstd"}, "--downlink 'fixed64(shuffle=true)|zstd': fixed64 carries"),
    ({"uplink": "gzip"}, "--uplink 'gzip': unknown codec 'gzip'"),
])
def test_server_refuses_codec_plans_that_cannot_carry_model_tensors_naming_the_flag(
        flags: dict[str, str], message: str) -> None:
    config = ServerConfig(data="none", input_shape="1,28,28", num_classes=10, **flags)
    with pytest.raises(SystemExit, match=re.escape(message)):
        build_coordinator(config)


"""Plug-ins from outside the package (issue 25, first part): models, datasets and codec stages a user brings.

A user module on PYTHONPATH provides a model builder and a data loader by import path; a fake installed
distribution registers a codec stage by entry point. Bad plug-ins are refused at start with a message that
names the problem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedsqueeze.codecs import get_plan
from fedsqueeze.data.datasets import load_split
from fedsqueeze.data.partition import partition
from fedsqueeze.methods import FedCompressParams
from fedsqueeze.models import build_model, make_model_spec
from fedsqueeze.plugins import PluginError
from fedsqueeze.tensors import TensorSpec

from conftest import Cluster, simulate

USER_MODULE = '''
import os
import numpy as np
from torch import nn


def build(hidden=16, input_shape=None, num_classes=None):
    hidden = int(os.environ.get("MYMOD_HIDDEN", hidden))   # lets a test make one side build another model
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def build_without_shapes(hidden=16):
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 4))


def linear_only(input_shape=None, num_classes=None):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes))


def wrong_output(input_shape=None, num_classes=None):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes + 3))


def raises(**params):
    raise RuntimeError("the builder is broken")


def load(n=1000, features=8, seed=0, nan=False, negative=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype(int) + 2 * (x[:, 2] > 0)
    if nan:
        x[3, 1] = float("nan")
    if negative:
        y[5] = -1
    return x, y


def load_regression(n=600, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, (x @ np.arange(1, 7) / 10 + 0.1 * rng.normal(size=n)).astype("float32")   # float targets
'''

METHOD_MODULE = '''
from dataclasses import dataclass

from fedsqueeze.client.trainers.local import FedAvgTrainer
from fedsqueeze.methods import Method, MethodParams, param
from fedsqueeze.server.strategies.fedavg import FedAvg


@dataclass(frozen=True)
class TaggedParams(MethodParams):
    method = "mymethod:TAGGED"
    tag: float = param(1.0, "a number both halves read")


class TaggedStrategy(FedAvg):
    name = "tagged"
    Params = TaggedParams

    def aggregate(self, round_number, accumulator, client_metrics):
        return {**super().aggregate(round_number, accumulator, client_metrics), "server_tag": self.params.tag}


class TaggedTrainer(FedAvgTrainer):
    method = "tagged"
    Params = TaggedParams

    def fit(self, task, downloaded, hyperparameters, should_stop):
        result = super().fit(task, downloaded, hyperparameters, should_stop)
        result.metrics["client_tag"] = self.params(task).tag
        return result


TAGGED = Method(strategy=TaggedStrategy, trainer=TaggedTrainer, params=TaggedParams)
'''

STAGE_MODULE = '''
from fedsqueeze.codecs import BytesStage


class Xor(BytesStage):
    """A lossless byte stage a user brings: every byte XORed with a key."""

    codec_id = "xor"

    def __init__(self, key: int = 90) -> None:
        self.key = key

    def compress(self, data):
        return bytes(b ^ self.key for b in data)

    def decompress(self, data, max_size):
        if len(data) > max_size:
            raise ValueError("too long")
        return bytes(b ^ self.key for b in data)

    def max_compressed_size(self, size):
        return size

    def get_config(self):
        return {"id": self.codec_id, "key": self.key}
'''


@pytest.fixture
def user_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path (and PYTHONPATH for child processes) holding the user's module and a fake installed
    distribution whose entry points register the ``xor`` codec stage."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "mymod.py").write_text(USER_MODULE)
    (folder / "mystage.py").write_text(STAGE_MODULE)
    (folder / "mymethod.py").write_text(METHOD_MODULE)
    info = folder / "mystage-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mystage\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[fedsqueeze.codecs]\nxor = mystage:Xor\n")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    yield folder
    for name in ("mymod", "mystage", "mymethod"):
        sys.modules.pop(name, None)


def test_models_and_datasets_by_import_path(user_path: Path) -> None:
    train, test = load_split("mymod:load(n=500)", "train"), load_split("mymod:load(n=500)", "test")
    assert (len(train.labels), len(test.labels)) == (400, 100) and train.num_classes == 4
    data = train.select()
    assert data.input_shape == (8,) and data.x.dtype.is_floating_point
    spec = make_model_spec("mymod:build(hidden=32)", data.input_shape, train.num_classes)
    assert spec.name == "mymod:build" and json.loads(spec.config_json)["hidden"] == 32
    assert build_model(spec)(data.x[:3]).shape == (3, 4)
    no_shapes = make_model_spec("mymod:build_without_shapes", data.input_shape, 4)   # takes no data keywords
    assert build_model(no_shapes)(data.x[:2]).shape == (2, 4)


def test_bad_plugins_are_refused_with_the_reason(user_path: Path) -> None:
    with pytest.raises(PluginError, match="cannot import module 'nomod'"):
        make_model_spec("nomod:build", (8,), 4)
    with pytest.raises(PluginError, match="has no attribute 'missing'"):
        make_model_spec("mymod:missing", (8,), 4)
    with pytest.raises(ValueError, match="could not be built: RuntimeError: the builder is broken"):
        build_model(make_model_spec("mymod:raises", (8,), 4))
    with pytest.raises(ValueError, match="NaN or infinity"):
        load_split("mymod:load(nan=true)", "train")
    with pytest.raises(ValueError, match=r"labels must be class indices.*negative"):
        load_split("mymod:load(negative=true)", "test")
    with pytest.raises(PluginError, match="unknown dataset 'nothing'"):
        load_split("nothing", "train")


def test_a_codec_stage_by_entry_point(user_path: Path) -> None:
    plan = get_plan("dense|xor(key=7)")
    spec = TensorSpec("w", (3, 5))
    values = np.arange(15, dtype=np.float32).reshape(3, 5)
    pipeline = plan.for_tensor("w")
    assert pipeline.spec == "dense(dtype=float32)|xor(key=7)"
    assert np.array_equal(pipeline.decode(pipeline.encode(values), spec), values)
    listed = subprocess.run([sys.executable, "-m", "fedsqueeze.apps", "plugins"], capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0 and "mystage:Xor (entry point of mystage)" in listed.stdout, listed.stdout



def test_the_server_refuses_bad_plugins_at_start(cluster: Cluster, user_path: Path) -> None:
    data = ("--data", "mymod:load()")
    cases: dict[str, tuple[tuple[str, ...], str]] = {
        "missing module": (("--model", "nomod:build", *data), "cannot import module 'nomod'"),
        "builder raises": (("--model", "mymod:raises", *data), "the builder is broken"),
        "wrong output shape": (("--model", "mymod:wrong_output", *data), "gives outputs of shape [7]"),
        "NaN features": (("--model", "mymod:build", "--data", "mymod:load(nan=true)"), "NaN or infinity"),
        "labels out of range": (("--model", "mymod:build", "--data", "mymod:load(negative=true)"),
                                "labels must be class indices"),
        "fedcompress without the declared embedding": (
            ("--model", "mymod:build", "--data", "digits", "--method", "fedcompress(embedding=encoder)"),
            "the model has no module 'encoder' to read the embedding from"),
        "reft on tabular data": (("--model", "mymod:build", *data, "--method", "reft"),
                                 "reft distils on unlabelled images"),
        "reft on a model with nothing to cut": (("--model", "mymod:linear_only", "--data", "digits", "--method",
                                                 "reft"), "reft cuts sub-models from the channels"),
        "missing training loop": (("--model", "mymod:build", *data, "--trainer", "noloops:prox"),
                                  "cannot import module 'noloops'"),
        "a method that is not a Method": (("--model", "mymod:build", *data, "--method", "mymod:load"),
                                          "not a fedsqueeze.methods.Method"),
        "a method parameter of the wrong type": (("--model", "mymod:build", *data, "--method", "ae(warmup=many)"),
                                                 "ae: warmup: expected int, not 'many'"),
    }
    for label, (args, _) in cases.items():   # all at once: each only starts and refuses
        cluster.fedsqueeze(label.replace(" ", "-"), "server", "--insecure", "--listen", "127.0.0.1:0", "--rounds",
                           "1", *args)
    for label, (_, why) in cases.items():
        name = label.replace(" ", "-")
        assert cluster.wait(name, 120) != 0, label
        log = cluster.log(name)
        assert why in log and "Traceback" not in log, (label, log)


@pytest.mark.slow
def test_simulate_with_a_users_model_and_data(tmp_path: Path, user_path: Path) -> None:
    out = tmp_path / "run"
    report = simulate(out, "--model", "mymod:build(hidden=32)", "--data", "mymod:load()", "--clients", "2", "--rounds",
                      "2", timeout=300)
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert report["final_accuracy"] > 0.5   # 4 classes: chance is about 0.25


def test_clients_that_lack_the_plugin_or_build_another_model_say_so(cluster: Cluster, user_path: Path) -> None:
    cluster.server("--insecure", "--model", "mymod:build", "--data", "mymod:load()", "--rounds", "1",
                   "--min-clients", "1", "--linger", "2")
    target = ["--server", f"127.0.0.1:{cluster.port}", "--insecure", "--threads", "1"]
    cluster.fedsqueeze("no-module", "client", *target, "--client-id", "no-module", "--data", "digits",
                       env={"PYTHONPATH": ""})
    assert cluster.wait("no-module", 60) == 2
    assert "cannot import module 'mymod'" in cluster.log("no-module")
    cluster.fedsqueeze("other-model", "client", *target, "--client-id", "other-model", "--data", "mymod:load()",
                       env={"MYMOD_HIDDEN": "8"})   # the same spec, another architecture on this side
    assert cluster.wait("other-model", 60) == 2
    assert "does not match the model's" in cluster.log("other-model")
    cluster.client("healthy", "--data", "mymod:load()")
    assert cluster.wait("server", 120) == 0
    (record,) = cluster.report()["rounds"]
    assert record["updates"] == 1
    for name in ("no-module", "other-model"):
        assert f"client {name} reports a failure" in cluster.log("server")
        assert "Traceback" not in cluster.log(name)


def test_npz_csv_and_imagefolder_datasets(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", features=rng.normal(size=(50, 6)), labels=rng.integers(0, 3, 50))
    train = load_split(f"npz(path={tmp_path}/d.npz,x=features,y=labels)", "train")
    assert train.images.shape == (40, 6) and train.num_classes == 3
    (tmp_path / "t.csv").write_text("a,b,kind\n" + "".join(f"{i},{i * 0.5},{i % 2}\n" for i in range(20)))
    table = load_split(f"csv(path={tmp_path}/t.csv,label=kind)", "test")
    assert table.images.shape == (4, 2) and set(table.labels) <= {0, 1}
    for index, name in enumerate(("cats", "dogs")):
        (tmp_path / "pics" / name).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (10 + i, 7), (40 * index, 9 * i, 0)).save(tmp_path / "pics" / name / f"{i}.png")
    pictures = load_split(f"imagefolder(dir={tmp_path}/pics,size=8,channels=3)", "train").select()
    assert pictures.input_shape == (3, 8, 8) and float(pictures.x.min()) >= -1 and float(pictures.x.max()) <= 1

    (tmp_path / "nan.csv").write_text("a,kind\n1,0\nnan,1\n2,0\n")
    (tmp_path / "bad.csv").write_text("a,kind\n1,0\n2,-3\n3,1\n")
    np.savez(tmp_path / "short.npz", x=np.zeros((5, 2)), y=np.zeros(4))
    for spec, why in ((f"csv(path={tmp_path}/t.csv,label=class)", "no column 'class'"),
                      (f"csv(path={tmp_path}/nan.csv,label=kind)", "NaN or infinity"),
                      (f"csv(path={tmp_path}/bad.csv,label=kind)", "labels must be class indices"),
                      (f"npz(path={tmp_path}/short.npz)", "expected x of shape"),
                      (f"npz(path={tmp_path}/d.npz)", "no array 'x'"),
                      (f"imagefolder(dir={tmp_path}/nowhere)", "no class sub-folders")):
        with pytest.raises(ValueError, match=why):
            load_split(spec, "train")


@pytest.mark.slow
def test_a_federation_on_a_csv_table(tmp_path: Path) -> None:
    """scikit-learn's breast-cancer table (shipped in its wheel), standardised, as a device's CSV file."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    x = (bunch.data - bunch.data.mean(axis=0)) / bunch.data.std(axis=0)
    header = ",".join([*(f"f{i}" for i in range(x.shape[1])), "diagnosis"])
    rows = "".join(",".join([*(f"{v:.6f}" for v in row), str(label)]) + "\n" for row, label in zip(x, bunch.target))
    (tmp_path / "cancer.csv").write_text(header + "\n" + rows)
    out = tmp_path / "run"
    report = simulate(out, "--model", "mlp(hidden=32)", "--data", f"csv(path={tmp_path}/cancer.csv,label=diagnosis)",
                      "--clients", "2", "--rounds", "2", timeout=300)
    assert report["final_accuracy"] > 0.85


@pytest.mark.slow
def test_a_regression_federation_evaluated_by_its_clients(tmp_path: Path, user_path: Path) -> None:
    """Float targets make a regression task: one output, squared error, accuracy null; the server holds no data."""
    out = tmp_path / "run"
    report = simulate(out, "--model", "mymod:build(hidden=16)", "--data", "mymod:load_regression()",
                      "--federated-evaluation", "--clients", "2", "--rounds", "3", "--lr", "0.02", timeout=300)
    assert report["config"]["data"] == "none" and report["final_accuracy"] is None
    assert all(r["evaluated"] == 2 for r in report["rounds"])
    variance = float(np.var(load_split("mymod:load_regression()", "test").labels))
    assert report["final_loss"] < 0.2 * variance, (report["final_loss"], variance)   # far better than the mean
    with pytest.raises(ValueError, match="splits by class; regression targets have none"):
        partition(load_split("mymod:load_regression()", "train").labels, "dirichlet(alpha=0.5)", 2, 0)


def test_method_parameters_are_one_typed_dataclass_listed_by_fedsqueeze_methods() -> None:
    params = FedCompressParams.from_spec({"k0": 12, "kd_lr": 1})   # an int where a float is due is fine
    assert (params.k0, params.kd_lr, params.cluster_epochs) == (12, 1.0, 0)   # cluster_epochs follows upload
    assert FedCompressParams.from_spec({"upload": "model"}).cluster_epochs == 1
    assert FedCompressParams.from_spec(params.as_dict()) == params   # what a task carries, read back whole
    with pytest.raises(ValueError, match="fedcompress: k0: expected int, not 'many'"):
        FedCompressParams.from_spec({"k0": "many"})
    with pytest.raises(ValueError, match="takes no parameter\\(s\\) k1; it takes .*k0"):
        FedCompressParams.from_spec({"k1": 3})
    with pytest.raises(ValueError, match="val_fraction must be in"):
        FedCompressParams.from_spec({"val_fraction": 1.5})
    listed = subprocess.run([sys.executable, "-m", "fedsqueeze.apps", "methods", "fedcompress"], capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0
    k0 = next(line for line in listed.stdout.splitlines() if line.split()[:1] == ["k0"])
    assert k0.split()[1:3] == ["int", "8"] and "clusters per layer" in k0, listed.stdout


@pytest.mark.slow
def test_a_method_plugin_by_import_path_reads_its_parameters_on_both_ends(tmp_path: Path, user_path: Path) -> None:
    out = tmp_path / "run"
    report = simulate(out, "--data", "digits", "--model", "mlp(hidden=32)", "--method", "mymethod:TAGGED(tag=0.25)",
                      "--clients", "2", "--rounds", "2", timeout=300)
    metrics = report["rounds"][-1]["metrics"]
    assert metrics["server_tag"] == 0.25 and metrics["client_client_tag"] == 0.25
    assert report["final_accuracy"] > 0.5

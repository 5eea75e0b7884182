"""``fedsqueeze simulate --backend ray``: virtual clients on Ray actors against the real server side.

The parts (client state on disk, device profiles, resource specs) are tested in-process; the backend as the
command a user runs: a population larger than the cohort, a method whose clients keep state between rounds,
and the same federation as the process backend, bit for bit.
"""

from __future__ import annotations

import glob
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsqueeze.apps.client_store import ClientStateStore
from fedsqueeze.apps.device_profiles import DeviceProfile, DeviceProfiles
from fedsqueeze.apps.ray_backend import actor_cpus, check_shared_memory
from fedsqueeze.apps.virtual_clients import VirtualClientWorker, Work, WorkDone, WorkFailed
from fedsqueeze.config import LOSSLESS_CODEC
from fedsqueeze.limits import MIN_CHUNK_BYTES
from fedsqueeze.models import build_model, make_model_spec
from fedsqueeze.tensors import float_state
from fedsqueeze.tensors import model_spec as tensor_specs
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import StreamReceiver, encode_model, expect_all

from conftest import run_simulate, simulate

SMALL = ("--data", "synthetic", "--model", "mlp(hidden=16)", "--epochs", "1", "--batch-size", "16",
         "--threads", "1", "--round-timeout", "120")


def test_client_state_round_trips_tensors_arrays_and_plain_values(tmp_path: Path) -> None:
    store = ClientStateStore(tmp_path / "state")
    state = {"feedback": {"w": torch.arange(4.0)}, "history": [np.ones((2, 3), np.float32), np.zeros(1)],
             "reference_error": None, "count": 3, "name": "x"}
    assert store.load("client-1") is None
    size = store.save("client-1", state)
    again = store.load("client-1")
    assert size == store.total_bytes() > 0
    assert torch.equal(again["feedback"]["w"], state["feedback"]["w"])
    assert isinstance(again["history"][0], np.ndarray) and np.array_equal(again["history"][0], state["history"][0])
    assert (again["reference_error"], again["count"], again["name"]) == (None, 3, "x")
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["client-1.pt"]   # no temporary files left


def test_device_profiles_are_deterministic_per_client_and_bad_specs_are_refused(tmp_path: Path) -> None:
    assert DeviceProfiles().for_client(7) == DeviceProfile() and not DeviceProfiles().modelled
    fixed = DeviceProfiles("fixed(speed=0.5,up_mbps=1,down_mbps=8)").for_client(3)
    assert fixed.seconds(down_bytes=1_000_000, train_seconds=2.0, up_bytes=125_000) == pytest.approx(1 + 4 + 1)
    spread = DeviceProfiles("lognormal(speed=1,up_mbps=1,down_mbps=10,sigma=0.5,seed=3)")
    assert spread.for_client(5) == DeviceProfiles(spread.spec).for_client(5) != spread.for_client(6)
    trace = tmp_path / "devices.json"
    trace.write_text(json.dumps([{"speed": 1, "up_mbps": 2, "down_mbps": 4}, {"speed": 0.25, "up_mbps": 0.5,
                                                                             "down_mbps": 1}]))
    profiles = DeviceProfiles(f"trace(path={trace})")
    assert profiles.for_client(3) == DeviceProfile(0.25, 0.5, 1.0)
    for bad in ("fixed(speed=0)", "warp(x=1)", "fixed(colour=1)", f"trace(path={tmp_path / 'missing.json'})"):
        with pytest.raises(ValueError, match="--device-profiles"):
            DeviceProfiles(bad)


def test_client_resources_and_shared_memory_are_checked_with_clear_messages() -> None:
    assert actor_cpus("cpus=2") == 2.0 and actor_cpus("cpus=0.5") == 0.5
    for bad in ("gpus=1", "cpus=0", "cpus"):
        with pytest.raises(ValueError, match="--client-resources"):
            actor_cpus(bad)
    with pytest.raises(SystemExit, match="shm_size"):
        check_shared_memory(2**30)   # a petabyte of /dev/shm
    with pytest.raises(SystemExit, match="missing"):
        check_shared_memory(1, "/no/such/folder")


@pytest.mark.slow
def test_a_population_of_200_samples_10_per_round_and_counts_the_bytes_it_moves(tmp_path: Path) -> None:
    leftovers = set(glob.glob("/tmp/fsq-ray-*"))
    out = tmp_path / "run"
    # A lossy uplink with error feedback: every trained client keeps residuals, paged out to disk.
    report = simulate(out, "--backend", "ray", "--population", "200", "--clients-per-round", "10", "--rounds", "2",
                      "--uplink", "dense(dtype=float16)|zstd", "--device-profiles",
                      "fixed(speed=1,up_mbps=1,down_mbps=10)", *SMALL)
    figures = json.loads((out / "simulation.json").read_text())
    assert [(r["selected"], r["updates"]) for r in report["rounds"]] == [(10, 10), (10, 10)]
    assert figures["population"] == 200 and figures["clients_trained"] == 20 and figures["stopped_because"] is None
    states = list((out / "client-state").glob("*.pt"))
    assert 10 <= len(states) <= 20 and figures["client_state_bytes"] == sum(p.stat().st_size for p in states)
    # 20 downloads and 20 updates of the whole model: float16 updates cost about half the float32 yardstick
    assert report["dense_bytes_up"] == report["dense_bytes_down"] > 0
    assert 0.3 * report["dense_bytes_up"] < report["bytes_up"] < 0.6 * report["dense_bytes_up"]
    assert report["bytes_down"] > 0.6 * report["dense_bytes_down"]   # lossless downloads
    per_update = report["bytes_up"] / 20
    for r in figures["rounds"]:   # 1 Mbit/s up: no round is quicker than one client's upload
        assert r["simulated_seconds"] >= r["slowest_training_seconds"] + 8 * per_update / 1e6 * 0.5
    assert set(glob.glob("/tmp/fsq-ray-*")) == leftovers   # Ray's session files are gone


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fedavg", "fedcompress(k0=8,kd_epochs=1,ood_samples=200)"])
def test_the_ray_backend_and_the_process_backend_give_the_same_global_model_bit_for_bit(
        tmp_path: Path, method: str) -> None:
    models = {}
    for backend in ("process", "ray"):
        out = tmp_path / backend
        args = ["--backend", backend, "--clients", "4", "--rounds", "2", "--method", method, "--seed", "5",
                "--state-dir", str(out / "state"), *SMALL]
        simulate(out, *args)
        (checkpoint,) = (out / "state").glob("model-*.pt")
        models[backend] = torch.load(checkpoint, weights_only=True)
    assert models["process"].keys() == models["ray"].keys()
    for name, value in models["process"].items():
        assert torch.equal(value, models["ray"][name]), name


@pytest.mark.slow
def test_autoencoder_clients_keep_their_encoders_between_the_rounds_they_are_sampled_in(tmp_path: Path) -> None:
    out = tmp_path / "ae"
    report = simulate(out, "--backend", "ray", "--population", "3", "--clients-per-round", "2", "--rounds", "6",
                      "--method", "ae(warmup=1,history=2,ae_epochs=5,chunk=256)", *SMALL)
    assert len(report["rounds"]) == 6 and all(r["updates"] == 2 for r in report["rounds"])
    states = sorted(p.name for p in (out / "client-state").glob("*.pt"))
    assert states and all(math.isfinite(r["accuracy"]) for r in report["rounds"])
    latent = [r for r in report["rounds"] if r["metrics"].get("clients_latent", 0)]
    assert latent, "no client ever sent latents: its encoder did not survive being paged out"


def test_the_ray_backend_refuses_settings_it_cannot_honour(tmp_path: Path) -> None:
    for args, message in ((("--clients-per-round", "9", "--population", "4"), "more than --population"),
                          (("--federated-evaluation",), "process backend"),
                          (("--client-resources", "gpus=1"), "--client-resources")):
        result = run_simulate(tmp_path / "bad", "--backend", "ray", *args, *SMALL, timeout=120)
        assert result.returncode != 0 and message in result.stdout + result.stderr


def test_a_worker_turns_a_task_and_its_download_into_the_update_stream_a_daemon_would_send(tmp_path: Path) -> None:
    spec = make_model_spec("mlp(hidden=8)", (1, 12, 12), 10)
    model = build_model(spec, seed=0)
    worker = VirtualClientWorker(spec.SerializeToString(), "synthetic", "iid", 4, 0, str(tmp_path / "state"),
                                 MIN_CHUNK_BYTES, 1)
    plan = "dense(dtype=float16)|zstd"   # lossy: the worker keeps error-feedback residuals for the client
    task = pb.Task(train=pb.TrainTask(round=3, task_id="t-1", method="fedavg", trainer="local",
                                      hyperparameters=pb.Hyperparameters(epochs=1, batch_size=16, learning_rate=0.05,
                                                                         optimizer="sgd"),
                                      uplink_codec=plan, downlink_codec=LOSSLESS_CODEC, error_feedback=True,
                                      method_config_json='{"params": {}}'))
    state = float_state(model)
    download = [c.SerializeToString() for c in encode_model(state, expect_all(tensor_specs(state), LOSSLESS_CODEC))
                .chunks(MIN_CHUNK_BYTES)]
    done = worker.run(Work("client-2", 2, "session-x", task.SerializeToString()), download)
    assert isinstance(done, WorkDone) and done.num_examples == 500 and done.state_bytes > 0
    header = pb.UpdateMessage.FromString(done.messages[0]).header
    assert (header.session_id, header.task_id, header.round, header.num_examples) == ("session-x", "t-1", 3, 500)
    receiver = StreamReceiver(expect_all(tensor_specs(state), plan), MIN_CHUNK_BYTES)
    received = [t for m in done.messages[1:] if (t := receiver.feed(pb.UpdateMessage.FromString(m).chunk))]
    receiver.finish()   # a whole stream, its digest right
    assert sorted(t.spec.name for t in received) == sorted(state)
    assert ClientStateStore(tmp_path / "state").load("client-2")["feedback"]   # residuals paged out
    failed = worker.run(Work("client-1", 1, "session-y", task.SerializeToString()), download[:-1])   # truncated
    assert isinstance(failed, WorkFailed) and failed.task_id == "t-1" and "fedavg task failed" in failed.reason

"""Autoencoder-compressed updates: reconstruction, error feedback, phases, refusals, restarts."""

from __future__ import annotations

import json
import re
import signal

import grpc
import numpy as np
import pytest
import torch
import zstandard

from fedsqueeze.client.error_feedback import ErrorFeedback
from fedsqueeze.client.trainers.autoencoder import AutoencoderTrainer, compose
from fedsqueeze.codecs import LATENT_MODELS, CodecError, get_pipeline
from fedsqueeze.data.datasets import Dataset
from fedsqueeze.methods.autoencoder.networks import (
    CORRECTION,
    DECODER_PREFIX,
    UPDATE,
    AutoencoderModel,
    AutoencoderSpec,
    ChunkAutoencoder,
    flatten,
    to_chunks,
    train_autoencoder,
    unflatten,
)
from fedsqueeze.models import build_model, make_model_spec
from fedsqueeze.server.clients import ClientInfo
from fedsqueeze.server.strategies import StrategySettings
from fedsqueeze.server.strategies.autoencoder import Autoencoder
from fedsqueeze.server.strategies.base import ClientUpdate
from fedsqueeze.tensors import TensorSpec, float_state, model_spec
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import EncodedModel, EncodedTensor, decode_tensor, encode_model, expect_all

from conftest import FAST_SERVER, Cluster, free_port, wait_for
from test_refusals import Prober

RNG = np.random.default_rng(0)
BASIS = RNG.normal(size=(4, 512)).astype(np.float32)


def structured_update(rng: np.random.Generator, chunks: int = 40) -> np.ndarray:
    """Chunks that mix four fixed patterns, plus 10% noise: the structure an autoencoder can learn."""
    mix = rng.normal(size=(chunks, 4)) @ BASIS + 0.1 * rng.normal(size=(chunks, 512))
    return (0.01 * mix).astype(np.float32).reshape(-1)


def fitted() -> AutoencoderModel:
    shape = AutoencoderSpec(512, 8, 32)
    rng = np.random.default_rng(1)
    samples = np.concatenate([to_chunks(structured_update(rng), shape.chunk)[0] for _ in range(5)])
    autoencoder, _ = train_autoencoder(samples, shape, epochs=100)
    return AutoencoderModel(autoencoder)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_the_autoencoder_reconstructs_a_structured_update_far_better_than_chance() -> None:
    model = fitted()
    rng = np.random.default_rng(2)
    update = structured_update(rng)
    spec = TensorSpec("u", update.shape)
    error = relative(model.decode(*model.encode(update), spec), update)
    untrained = AutoencoderModel(ChunkAutoencoder(model.shape))
    chance = relative(untrained.decode(*untrained.encode(update), spec), update)
    print(f"relative error: trained {error:.3f}, untrained {chance:.3f}, sending nothing 1.000")
    assert error < 0.2 and chance > 0.9
    noise = rng.normal(size=update.shape).astype(np.float32)     # unlike anything it learned
    assert relative(model.decode(*model.encode(noise), spec), noise) <= 1.0   # a projection: never worse than 0


def test_error_feedback_makes_the_cumulative_sent_signal_converge() -> None:
    """The trainer's composite (latent part + top-k correction) with error feedback: what a round drops is
    delivered later. A learned decoder alone reaches only the span it learned; the correction reaches every
    coordinate, so the cumulative gap keeps closing."""
    LATENT_MODELS.register("ef-test", 1, fitted())
    latent = get_pipeline("latent(decoder=ef-test,version=1)|cluster(k=16)|zstd")
    correction = get_pipeline("sparse(ratio=0.02)|dense(dtype=float16)")
    rng = np.random.default_rng(3)
    drift = rng.normal(size=(40, 4))                               # a mix the updates keep taking...
    feedback = ErrorFeedback()
    true_sum = sent_sum = plain_sum = np.zeros(40 * 512, np.float32)
    gaps = []
    try:
        for _ in range(60):
            mix = drift + 0.5 * rng.normal(size=(40, 4))               # ...varying from round to round...
            noise = 0.001 * rng.normal(size=(40, 512))                 # ...with a little it never learned
            update = (0.01 * mix @ BASIS + noise).astype(np.float32).reshape(-1)
            total = feedback.compensate({"u": torch.from_numpy(update)})["u"].numpy()
            _, sent, _ = compose(total, [(UPDATE, latent), (CORRECTION, correction)])
            feedback.remember({"u": torch.from_numpy(total)}, {"u": torch.from_numpy(sent)})
            plain_sum = plain_sum + compose(update, [(UPDATE, latent), (CORRECTION, correction)])[1]
            true_sum, sent_sum = true_sum + update, sent_sum + sent
            gaps.append(relative(sent_sum, true_sum))
    finally:
        LATENT_MODELS.unregister("ef-test", 1)
    without = relative(plain_sum, true_sum)
    print(f"cumulative relative gap: with error feedback {gaps[9]:.4f} (10 rounds) -> {gaps[-1]:.4f} (60); "
          f"without {without:.4f}")
    assert gaps[-1] < gaps[9] / 2 and without > 2 * gaps[-1]
    # the gap is exactly what is still owed
    assert np.allclose(true_sum - sent_sum, feedback.residuals["u"].numpy(), atol=1e-5)


def test_flatten_round_trips_in_state_dict_order() -> None:
    model = build_model(make_model_spec("cnn(width=4)", (1, 12, 12), 10))
    specs = model_spec(float_state(model))
    tensors = {n: v.numpy() for n, v in float_state(model).items()}
    flat = flatten(tensors, specs)
    assert flat.size == sum(s.numel for s in specs.values())
    assert all(np.array_equal(v, tensors[n]) for n, v in unflatten(flat, specs).items())


def client(name: str, instance: str = "i1", budget: float = 1.0) -> ClientInfo:
    return ClientInfo(name, pb.Capabilities(compute_budget=budget), "session", instance_id=instance)


def test_phases_follow_warmup_registration_and_restarts(tmp_path) -> None:
    spec = make_model_spec("cnn(width=4)", (1, 12, 12), 10)
    settings = StrategySettings(spec, "synthetic", pb.Hyperparameters(epochs=1, batch_size=8, learning_rate=0.1,
                                                                       optimizer="sgd"), "dense", "dense",
                                state_dir=tmp_path, params={"warmup": 2, "chunk": 256, "latent": 8, "hidden": 16})
    strategy = Autoencoder(build_model(spec), settings)
    specs = strategy.specs

    def run_round(clients: list[ClientInfo]) -> dict[str, str]:
        plans = strategy.configure(1, clients)
        accumulator = strategy.new_accumulator()
        for c in clients:
            plan = plans[c.client_id]
            expected = strategy.expected_update(plan)
            tensors = {n: np.zeros(e.spec.shape, np.float32) for n, e in expected.items()}
            strategy.accumulate(accumulator, ClientUpdate(c.client_id, plan, tensors, 10, {},
                                                          {n: 1 for n in tensors}))
        strategy.aggregate(1, accumulator, {})
        return {c.client_id: plans[c.client_id].method_config["phase"] for c in clients}

    weak = client("weak", budget=0.5)
    assert strategy.spec_for(weak).hidden == 8 and strategy.spec_for(client("a")).hidden == 16
    assert [run_round([client("a")])["a"] for _ in range(4)] == ["warmup", "warmup", "register", "latent"]
    plan = strategy.configure(5, [client("a")])["a"]
    assert plan.uplink_codec.startswith("latent(decoder=ae-a,version=1)|cluster(")
    assert set(strategy.expected_update(plan)) == {"ae.update"}
    assert (tmp_path / "decoders" / "a.npz").exists()
    # a restarted server restores the decoder: the same client instance goes on in the latent phase
    restored = Autoencoder(build_model(spec), settings)
    assert restored.configure(1, [client("a")])["a"].method_config["phase"] == "latent"
    # a restarted client (new instance) starts over
    assert restored.configure(1, [client("a", instance="i2")])["a"].method_config["phase"] == "warmup"
    assert sum(s.numel for s in specs.values()) == restored.numel


def test_client_and_server_decode_latents_with_the_same_lossy_decoder() -> None:
    """With a lossy ``decoder_codec`` the client codes against the decoder as the server decoded it."""
    spec = make_model_spec("cnn(width=4)", (1, 12, 12), 10)
    params = {"warmup": 1, "chunk": 256, "latent": 8, "hidden": 8, "ae_epochs": 5, "decoder_codec": "cluster(k=4)|zstd"}
    hp = pb.Hyperparameters(epochs=1, batch_size=8, learning_rate=0.1, optimizer="sgd")
    strategy = Autoencoder(build_model(spec), StrategySettings(spec, "synthetic", hp, "dense", "dense", params=params))
    data = Dataset(torch.randn(32, 1, 12, 12), torch.arange(32) % 10, 10)
    trainer = AutoencoderTrainer(build_model(spec), data, seed=0)
    weights = {n: v.numpy() for n, v in float_state(strategy.model).items()}
    try:
        for round_number in (1, 2):   # warm-up, then registration
            plan = strategy.configure(round_number, [client("a")])["a"]
            task = pb.TrainTask(round=round_number, uplink_codec=plan.uplink_codec, method_config_json=json.dumps(
                {**plan.method_config, "params": params}))
            result = trainer.fit(task, weights, hp, lambda: False)
            expected = strategy.expected_update(plan)
            received = {t.spec.name: decode_tensor(t, expected[t.spec.name])
                        for t in encode_model(result.update, expected).tensors}
            accumulator = strategy.new_accumulator()
            strategy.accumulate(accumulator, ClientUpdate("a", plan, received, 32, result.metrics,
                                                          {n: 1 for n in received}))
        sent = {n[len(DECODER_PREFIX):]: v for n, v in result.update.items() if n.startswith(DECODER_PREFIX)}
        served = {n[len(DECODER_PREFIX):]: v for n, v in received.items() if n.startswith(DECODER_PREFIX)}
        kept = trainer.registered[2].decoder.state_dict()
        assert not all(np.array_equal(sent[n].numpy(), served[n]) for n in sent)   # the codec is lossy
        assert all(np.array_equal(kept[n].numpy(), served[n]) for n in served)    # and the client knows it
    finally:
        trainer.unload()
        LATENT_MODELS.unregister("ae-a", 1)


def test_latents_without_a_matching_decoder_are_refused() -> None:
    LATENT_MODELS.register("ae-someone", 1, fitted())
    try:
        update = structured_update(np.random.default_rng(4))
        spec = TensorSpec("ae.update", update.shape)
        payload = get_pipeline("latent(decoder=ae-someone,version=1)|dense").encode(update)
        with pytest.raises(CodecError, match="no latent decoder 'ae-nobody' version 1 is registered"):
            get_pipeline("latent(decoder=ae-nobody,version=1)|dense").decode(payload, spec)
        with pytest.raises(CodecError, match="no latent decoder 'ae-someone' version 2"):
            get_pipeline("latent(decoder=ae-someone,version=2)|dense").decode(payload, spec)
        LATENT_MODELS.register("ae-someone", 2, fitted())
        with pytest.raises(CodecError, match="payload names decoder b'ae-someone' v1, expected 'ae-someone' v2"):
            get_pipeline("latent(decoder=ae-someone,version=2)|dense").decode(payload, spec)
    finally:
        LATENT_MODELS.unregister("ae-someone", 1)
        LATENT_MODELS.unregister("ae-someone", 2)


# ------------------------------------------------------------------ over the real gRPC path

AE_METHOD = "ae(warmup=1,chunk=1024,latent=8,hidden=16,ae_epochs=10)"


def test_decoders_and_latents_are_checked_by_a_live_server(cluster: Cluster) -> None:
    cluster.server(*FAST_SERVER, "--rounds", "3", "--min-clients", "1", "--method", AE_METHOD)
    with cluster.channel() as channel:
        prober = Prober(channel)
        zero = {n: np.zeros(s.shape, np.float32) for n, s in prober.specs.items()}
        task = prober.task()
        assert json.loads(task.method_config_json)["phase"] == "warmup"
        prober.submit([prober.header(task), *prober.chunks(zero, task)])

        task = prober.task()
        config = json.loads(task.method_config_json)
        assert config["phase"] == "register"
        spec = AutoencoderSpec(**config["autoencoder"])
        autoencoder = ChunkAutoencoder(spec)
        decoder = {DECODER_PREFIX + k: v.detach().numpy() for k, v in autoencoder.decoder.state_dict().items()}
        expected = expect_all({**prober.specs, **spec.decoder_specs(DECODER_PREFIX)}, task.uplink_codec)
        valid = encode_model({**zero, **decoder}, expected)
        reshaped = [pb.UpdateMessage(chunk=c) for c in valid.chunks(4096)]
        first_decoder = next(i for i, m in enumerate(reshaped) if m.chunk.tensor.name.startswith(DECODER_PREFIX))
        reshaped[first_decoder].chunk.tensor.shape[0] += 1
        target = next(t for t in valid.tensors if t.spec.name.startswith(DECODER_PREFIX))

        def replacing(payload: bytes, codec: str) -> EncodedModel:
            return EncodedModel([EncodedTensor(t.spec, codec, payload) if t is target else t for t in valid.tensors])
        nan_payload = zstandard.ZstdCompressor().compress(np.full(target.spec.shape, np.nan, "<f2").tobytes())
        for label, messages, reason in (
            ("decoder of the wrong shape", [prober.header(task), *reshaped], "does not match the model's"),
            ("decoder with NaN weights", [prober.header(task), *prober.chunks(replacing(nan_payload, target.codec))],
             "contains NaN"),
            ("decoder in another codec", [prober.header(task), *prober.chunks(replacing(
                np.zeros(target.spec.shape, "<f4").tobytes(), "dense(dtype=float32)"))], "is not the expected"),
            ("no decoder", [prober.header(task), *prober.chunks(EncodedModel(
                [t for t in valid.tensors if not t.spec.name.startswith(DECODER_PREFIX)]))],
             "stream ended without tensors"),
        ):
            code, details = prober.refused(messages)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and reason in details, f"{label}: {code} {details}"
        prober.submit([prober.header(task), *prober.chunks(valid)])

        task = prober.task()
        config = json.loads(task.method_config_json)
        assert config["phase"] == "latent" and config["version"] == 1
        LATENT_MODELS.register(config["decoder_id"], 1, AutoencoderModel(autoencoder))
        LATENT_MODELS.register(config["decoder_id"], 2, AutoencoderModel(autoencoder))
        LATENT_MODELS.register("ae-impostor", 1, AutoencoderModel(autoencoder))
        try:
            flat = {"ae.update": np.random.default_rng(0).normal(0, 0.01, sum(s.numel for s in prober.specs.values()))
                    .astype(np.float32)}
            wrong_version = task.uplink_codec.replace("version=1", "version=2")
            impostor = encode_model(flat, expect_all(model_spec(flat), task.uplink_codec.replace(
                config["decoder_id"], "ae-impostor")))
            expected_codec = expect_all(model_spec(flat), task.uplink_codec)["ae.update"].codec.spec
            impostor = EncodedModel([EncodedTensor(t.spec, expected_codec, t.payload) for t in impostor.tensors])
            for label, messages, reason in (
                ("wrong decoder version", [prober.header(task), *prober.chunks(
                    encode_model(flat, expect_all(model_spec(flat), wrong_version)))], "is not the expected"),
                ("another client's decoder", [prober.header(task), *prober.chunks(impostor)],
                 "payload names decoder b'ae-impostor'"),
            ):
                code, details = prober.refused(messages)
                assert code == grpc.StatusCode.INVALID_ARGUMENT and reason in details, f"{label}: {code} {details}"
            assert prober.submit([prober.header(task), *prober.chunks(
                encode_model(flat, expect_all(model_spec(flat), task.uplink_codec)))]).round == 3
        finally:
            for decoder_name, version in ((config["decoder_id"], 1), (config["decoder_id"], 2), ("ae-impostor", 1)):
                LATENT_MODELS.unregister(decoder_name, version)


def test_simulated_ae_run_and_a_server_restart_that_keeps_the_decoders(cluster: Cluster) -> None:
    state = cluster.root / "state"
    port = free_port()
    first = cluster.server(*FAST_SERVER, "--rounds", "50", "--min-clients", "1", "--method", AE_METHOD,
                           "--state-dir", str(state), port=port, name="first-server")
    cluster.client("edge", "--max-backoff", "1")
    wait_for(lambda: len(cluster.status().history) >= 3, 120, "warm-up, registration and a latent round")
    rounds = cluster.status().history
    assert rounds[1].metrics["payload_bytes_decoder"] > 0 and rounds[2].metrics["clients_latent"] == 1
    assert rounds[2].dense_bytes_up / rounds[2].bytes_up > 20
    first.send_signal(signal.SIGKILL)
    first.wait()
    cluster.server(*FAST_SERVER, "--rounds", "8", "--min-clients", "1", "--method", AE_METHOD,
                   "--state-dir", str(state), port=port)
    assert cluster.wait("server", 120) == 0 and cluster.wait("edge", 30) == 0
    assert "restored decoder ae-edge version 1" in cluster.log("server")
    resumed = int(re.search(r"resumed from .* after round (\d+)", cluster.log("server")).group(1))
    report = cluster.report()["rounds"]
    assert resumed >= 3 and [r["round"] for r in report] == list(range(1, 9))
    for r in report[resumed:]:   # straight back to latents: no warm-up, no second decoder upload
        metrics = r["metrics"]
        assert metrics["clients_latent"] == 1 and metrics["payload_bytes_decoder"] == 0
        assert metrics["payload_bytes_warmup"] == 0

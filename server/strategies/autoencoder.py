"""Autoencoder-compressed updates (after Chandar et al., 2021): encoders on clients, decoders on the server.

Each client goes through three phases, planned here round by round:

- ``warmup`` (its first ``warmup`` rounds): updates travel with ``warmup_codec``;
  the client keeps them as its autoencoder's training set;
- ``register``: the client trains its autoencoder and sends its decoder with
  that round's update (tensors ``ae.decoder.*``, coded with ``decoder_codec``
  and checked like any other); the server registers it under (client, version)
  and writes it to the state directory;
- ``latent``: the flattened update travels as one tensor ``ae.update`` coded
  ``latent(decoder=ae-<client>,version=V)|<latent_codec>`` and decoded with that
  client's decoder. Two stacks are optional: a ``coarse`` pipeline codes the
  update first and the autoencoder codes what it left (``ae.coarse``), and a
  ``correction`` pipeline (top-k) codes what the autoencoder missed
  (``ae.correction``). The server adds what it decodes of each part.

A learned decoder reaches only the span it learned; the correction reaches
every coordinate, which is what lets error feedback deliver in later rounds
whatever the autoencoder misses.

A client whose reconstruction error drifts above ``(1 + drift)`` times its
error on the first update its decoder had not seen asks (in its update's
metrics) for a new version. A client that restarted (new instance id) starts
over at warm-up. Every byte is counted; per round the metrics split update
payloads into warm-up, decoder, latent and correction bytes.

Method parameters: ``AutoencoderParams`` (``fedsqueeze methods`` lists them).
Clients that grant at most half their device
(compute_budget <= 0.5) get half the hidden units.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from fedsqueeze.codecs import LATENT_MODELS, get_plan
from fedsqueeze.methods import AutoencoderParams
from fedsqueeze.methods.autoencoder.networks import (
    COARSE,
    CORRECTION,
    DECODER_PREFIX,
    UPDATE,
    AutoencoderModel,
    AutoencoderSpec,
    ChunkAutoencoder,
    decoder_id,
    unflatten,
)
from fedsqueeze.server.aggregation import WeightedSum, add_mean_delta
from fedsqueeze.server.clients import ClientInfo
from fedsqueeze.server.storage import write_atomic, write_json_atomic
from fedsqueeze.server.strategies.base import ClientPlan, ClientUpdate, Strategy, StrategySettings
from fedsqueeze.tensors import TensorSpec, float_state
from fedsqueeze.wire import ExpectedTensor, expect_all

log = logging.getLogger(__name__)

PAYLOAD_KINDS = {DECODER_PREFIX: "decoder", UPDATE: "latent", COARSE: "coarse", CORRECTION: "correction"}


@dataclass
class ClientAutoencoder:
    """What the server knows of one client's autoencoder."""

    instance_id: str
    spec: AutoencoderSpec
    warmup_rounds: int = 0
    version: int = 0             # registered decoder version; 0 for none
    wants_new_version: bool = False


class AutoencoderSum(WeightedSum):
    """The running sum of a round, plus its update payload bytes by kind and clients by phase."""

    def __init__(self) -> None:
        super().__init__()
        self.payload_bytes = dict.fromkeys(("warmup", "decoder", "latent", "coarse", "correction"), 0)
        self.phases = dict.fromkeys(("warmup", "register", "latent"), 0)

    def merge(self, other: WeightedSum) -> None:
        """Fold another round sum in, its byte and phase counts included."""
        if not isinstance(other, AutoencoderSum):
            raise TypeError("an AutoencoderSum merges only another AutoencoderSum")
        super().merge(other)
        for kind, size in other.payload_bytes.items():
            self.payload_bytes[kind] = self.payload_bytes.get(kind, 0) + size
        for phase, n in other.phases.items():
            self.phases[phase] = self.phases.get(phase, 0) + n


def payload_kind(name: str) -> str:
    return next((kind for prefix, kind in PAYLOAD_KINDS.items() if name.startswith(prefix)), "warmup")


class Autoencoder(Strategy[AutoencoderSum]):
    name = "ae"
    Params = AutoencoderParams
    params: AutoencoderParams

    def __init__(self, model: torch.nn.Module, settings: StrategySettings) -> None:
        super().__init__(model, settings)
        p = self.params
        self.warmup = p.warmup
        self.warmup_codec = p.warmup_codec
        self.latent_codec = p.latent_codec
        self.decoder_codec = p.decoder_codec
        self.stacks = {COARSE: p.coarse, CORRECTION: p.correction}
        self.base_spec = AutoencoderSpec(p.chunk, p.latent, p.hidden, p.activation)
        self.numel = sum(spec.numel for spec in self.specs.values())
        self.clients: dict[str, ClientAutoencoder] = {}
        self._load_decoders()

    # ------------------------------------------------------------------ planning

    def spec_for(self, client: ClientInfo) -> AutoencoderSpec:
        """The autoencoder a client trains: the configured one, with half the hidden units on a small budget."""
        budget = client.capabilities.compute_budget or 1.0
        return self.base_spec if budget > 0.5 else replace(self.base_spec, hidden=max(1, self.base_spec.hidden // 2))

    def _state(self, client: ClientInfo) -> ClientAutoencoder:
        state = self.clients.get(client.client_id)
        if state is None or state.instance_id != client.instance_id:
            if state is not None:
                log.info("client %s restarted: its autoencoder starts over at warm-up", client.client_id)
            state = ClientAutoencoder(client.instance_id, self.spec_for(client))
            self.clients[client.client_id] = state
        return state

    def configure(self, round_number: int, clients: Sequence[ClientInfo]) -> dict[str, ClientPlan]:
        plans = {}
        for client in clients:
            state = self._state(client)
            _, downlink = self.codecs_for(client)
            config = {"autoencoder": asdict(state.spec), "decoder_id": decoder_id(client.client_id)}
            if state.version and not state.wants_new_version:
                config.update(phase="latent", version=state.version)
                rules = [f"latent(decoder={decoder_id(client.client_id)},version={state.version})|{self.latent_codec}"]
                rules += [f"{name}={pipeline}" for name, pipeline in self.stacks.items() if pipeline]
                uplink = "; ".join(rules)
            elif state.warmup_rounds >= self.warmup:
                config.update(phase="register", version=state.version + 1)
                uplink = f"{self.warmup_codec}; {DECODER_PREFIX}*={self.decoder_codec}"
            else:
                config.update(phase="warmup", version=state.version)
                uplink = self.warmup_codec
            plans[client.client_id] = ClientPlan(profile=downlink, hyperparameters=self.settings.hyperparameters,
                                                 uplink_codec=get_plan(uplink).spec, downlink_codec=downlink,
                                                 method_config=config)
        return plans

    def downlink(self, profile: str) -> tuple[dict[str, torch.Tensor], dict[str, ExpectedTensor]]:
        return float_state(self.model), expect_all(self.specs, profile)

    def expected_update(self, plan: ClientPlan) -> dict[str, ExpectedTensor]:
        config = plan.method_config
        if config["phase"] == "latent":
            parts = [UPDATE, *(name for name, pipeline in self.stacks.items() if pipeline)]
            return expect_all({name: TensorSpec(name, (self.numel,)) for name in parts}, plan.uplink_codec)
        specs = dict(self.specs)
        if config["phase"] == "register":
            specs.update(AutoencoderSpec(**config["autoencoder"]).decoder_specs(DECODER_PREFIX))
        return expect_all(specs, plan.uplink_codec)

    # ---------------------------------------------------------------- aggregation

    def new_accumulator(self) -> AutoencoderSum:
        return AutoencoderSum()

    def accumulate(self, accumulator: AutoencoderSum, update: ClientUpdate) -> None:
        config = update.plan.method_config
        state = self.clients[update.client_id]
        phase = config["phase"]
        accumulator.phases[phase] += 1
        for name, size in update.payload_bytes.items():
            accumulator.payload_bytes[payload_kind(name)] += size
        if phase == "latent":
            flat = sum(update.tensors[name] for name in (COARSE, UPDATE, CORRECTION) if name in update.tensors)
            accumulator.add(unflatten(flat, self.specs), update.num_examples)
            state.wants_new_version = bool(update.metrics.get("ae_retrain", 0))
            return
        accumulator.add({name: update.tensors[name] for name in self.specs}, update.num_examples)
        state.warmup_rounds += 1
        if phase == "register":
            decoder = {n[len(DECODER_PREFIX):]: v for n, v in update.tensors.items() if n.startswith(DECODER_PREFIX)}
            version = int(config["version"])
            self._register(update.client_id, state.instance_id, version, AutoencoderSpec(**config["autoencoder"]),
                           decoder)
            state.version, state.wants_new_version = version, False

    def aggregate(self, round_number: int, accumulator: AutoencoderSum,
                  client_metrics: dict[str, float]) -> dict[str, float]:
        add_mean_delta(self.model, accumulator)
        metrics = {f"payload_bytes_{kind}": float(size) for kind, size in accumulator.payload_bytes.items()}
        metrics.update({f"clients_{phase}": float(n) for phase, n in accumulator.phases.items()})
        metrics["decoders_registered"] = float(sum(1 for s in self.clients.values() if s.version))
        return metrics

    # --------------------------------------------------------------- decoders

    def _register(self, client_id: str, instance_id: str, version: int, spec: AutoencoderSpec,
                  decoder: dict[str, np.ndarray]) -> None:
        LATENT_MODELS.register(decoder_id(client_id), version, _decoder_model(spec, decoder))
        if version > 1:
            LATENT_MODELS.unregister(decoder_id(client_id), version - 1)
        log.info("registered decoder %s version %d (%s)", decoder_id(client_id), version, spec)
        if self.settings.state_dir:
            folder = self.settings.state_dir / "decoders"
            buffer = io.BytesIO()
            np.savez(buffer, **decoder)
            write_atomic(folder / f"{client_id}.npz", buffer.getvalue())
            write_json_atomic(folder / f"{client_id}.json", {
                "client_id": client_id, "instance_id": instance_id, "version": version, "spec": asdict(spec)})

    def _load_decoders(self) -> None:
        """Register the decoders a previous run of the server stored (its clients need not upload again)."""
        if not self.settings.state_dir:
            return
        for meta_path in sorted((self.settings.state_dir / "decoders").glob("*.json")):
            meta = json.loads(meta_path.read_text())
            spec = AutoencoderSpec(**meta["spec"])
            with np.load(meta_path.with_suffix(".npz")) as stored:
                decoder = {k: stored[k] for k in stored.files}
            LATENT_MODELS.register(decoder_id(meta["client_id"]), meta["version"], _decoder_model(spec, decoder))
            self.clients[meta["client_id"]] = ClientAutoencoder(meta["instance_id"], spec, self.warmup,
                                                                meta["version"])
            log.info("restored decoder %s version %d from %s", decoder_id(meta["client_id"]), meta["version"],
                     meta_path.parent)


def _decoder_model(spec: AutoencoderSpec, decoder: dict[str, np.ndarray]) -> AutoencoderModel:
    autoencoder = ChunkAutoencoder(spec)
    autoencoder.decoder.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in decoder.items()})
    return AutoencoderModel(autoencoder, can_encode=False)

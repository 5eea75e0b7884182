"""REFT-style heterogeneous training: pruned sub-models sized to each device, ensemble distillation.

Each round the server ranks the global model's channels (``fedsqueeze.methods.reft.pruning``)
and cuts one physically smaller sub-model per width tier; nested, so a smaller
tier's channels are a subset of a larger one's. A client gets its tier's
sub-model (its tensors only, in the downlink codec) and a channel count per
layer, from which it rebuilds the same structure; it sends back
``trained - downloaded`` for every sub-model tensor (in the uplink codec, so
clustering and the like stack on it). Which global elements a sub-model holds
never travels: the server cut it, and maps each element back itself, so a
client cannot write outside its sub-model.

Aggregation is coverage-weighted: each global element moves by the
example-weighted mean delta of the clients whose sub-model held it; elements no
client held stay. Then the global model is the student of the round's
ensemble: the mean temperature-softened prediction of the clients' trained
sub-models on unlabeled public data (never the clients').

In-place distillation (``inplace_kd``): a client wider than the narrowest
tier is told where that tier's channels sit in its own sub-model and trains
that nested sub-network towards its own outputs on every batch, so the
weakest devices' model also learns from the capable devices' data
(``fedsqueeze.methods.reft.nested``).

Tier: a client's capacity is its declared compute budget (1 when none), times
its measured training speed over ``reference_speed`` when that is set (capped
at 1). Training cost grows about as width squared, so a client gets the widest
tier ``w`` with ``w * w <= capacity``, or the narrowest tier.

Method parameters: ``ReftParams`` (``fedsqueeze methods`` lists them).

Error feedback is off: the channels a sub-model holds change from round to
round, so a residual in sub-model coordinates has nothing to be added to.
The round keeps the received sub-model deltas (each a fraction of the model)
until aggregation, as the ensemble's teachers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedsqueeze.methods import ReftParams
from fedsqueeze.methods.reft.costs import training_cost
from fedsqueeze.methods.reft.pruning import channel_ranking, index_map, kept_channels, prunable_layers, prune
from fedsqueeze.models import is_regression
from fedsqueeze.server.aggregation import WeightedSum
from fedsqueeze.server.clients import ClientInfo
from fedsqueeze.server.distillation import Distillation, softened
from fedsqueeze.server.strategies.base import ClientPlan, ClientUpdate, Strategy, StrategySettings
from fedsqueeze.tensors import float_state, model_spec
from fedsqueeze.wire import ExpectedTensor, expect_all


def parse_tiers(text: str) -> list[float]:
    """``"1/0.5/0.25"`` -> [1.0, 0.5, 0.25] (widest first); each in (0, 1], no repeats."""
    try:
        widths = sorted({float(part) for part in str(text).split("/")}, reverse=True)
    except ValueError:
        raise ValueError(f"reft: tiers must be widths separated by '/', e.g. 1/0.5/0.25, not {text!r}") from None
    if not widths or not all(0 < w <= 1 for w in widths):
        raise ValueError(f"reft: tier widths must be in (0, 1], not {text!r}")
    return widths


def tier_for(capacity: float, widths: Sequence[float]) -> float:
    """The widest width whose training cost (about width squared) fits ``capacity``; else the narrowest."""
    return next((w for w in widths if w * w <= capacity + 1e-9), widths[-1])


@dataclass
class TierCut:
    """One tier's sub-model for this round."""

    width: float
    keep: dict[str, list[int]]            # per prunable layer, the kept output channels
    positions: dict[str, np.ndarray]      # per sub-model tensor, its elements' flat positions in the global one
    tensors: dict[str, torch.Tensor]      # the sub-model's weights (the download)


class CoverageSum(WeightedSum):
    """Per-element sums of weighted deltas and of the weights that covered each element, plus the teachers.

    Exact and order-free as ``WeightedSum`` is: the deltas sum in its fixed point, the coverage sums whole
    example counts, and the teachers are kept by client id, so any arrival order or tree of merges gives the
    same aggregate and the same distillation.
    """

    def __init__(self) -> None:
        super().__init__()
        self.covered: dict[str, torch.Tensor] = {}
        self.teachers: dict[str, tuple[float, dict[str, torch.Tensor]]] = {}   # client -> (width, sub-model)
        self.bytes_up: dict[float, int] = {}
        self.clients: dict[float, int] = {}

    def add_sub(self, cut: TierCut, shapes: dict[str, torch.Size], delta: dict[str, np.ndarray],
                weight: float) -> None:
        scaled, largest = self.scale(delta, weight)
        for name, value in scaled.items():
            if name not in self.sums:
                self.sums[name] = torch.zeros(shapes[name], dtype=torch.int64)
                self.covered[name] = torch.zeros(shapes[name], dtype=torch.float64)
            idx = torch.from_numpy(cut.positions[name].reshape(-1))
            self.sums[name].view(-1).index_add_(0, idx, value.reshape(-1))
            self.covered[name].view(-1)[idx] += weight
        self.settle(largest, weight)

    def ordered_teachers(self) -> list[tuple[float, dict[str, torch.Tensor]]]:
        """The trained sub-models, in client-id order (not arrival order)."""
        return [self.teachers[client] for client in sorted(self.teachers)]

    def merge(self, other: WeightedSum) -> None:
        """Fold another round sum in: its sums and coverage per element, teachers and per-tier counts."""
        if not isinstance(other, CoverageSum):
            raise TypeError("a CoverageSum merges only another CoverageSum (coverage is per element)")
        if set(other.teachers) & set(self.teachers):
            raise ValueError("these round sums share clients: a client's update would count twice")
        super().merge(other)
        for name, covered in other.covered.items():
            if name in self.covered:
                self.covered[name].add_(covered)
            else:
                self.covered[name] = covered.clone()
        self.teachers.update(other.teachers)
        for width, size in other.bytes_up.items():
            self.bytes_up[width] = self.bytes_up.get(width, 0) + size
        for width, n in other.clients.items():
            self.clients[width] = self.clients.get(width, 0) + n


class Reft(Strategy[CoverageSum]):
    name = "reft"
    Params = ReftParams
    params: ReftParams

    def __init__(self, model: torch.nn.Module, settings: StrategySettings) -> None:
        super().__init__(model, settings)
        p = self.params
        self.widths = parse_tiers(p.tiers)
        self.reference_speed = p.reference_speed
        self.input_shape = tuple(json.loads(settings.model_spec.config_json)["input_shape"])
        self.distillation = Distillation(p, p.public, p.public_samples, "public", settings.data, self.input_shape,
                                         settings.seed, is_regression(settings.model_spec))
        self.example = torch.zeros(1, *self.input_shape)
        self.cuts: dict[float, TierCut] = {}
        self.profiles: dict[str, tuple[float, str]] = {}
        self.bytes_down: dict[float, int] = {}
        if not prunable_layers(model):
            raise ValueError("reft cuts sub-models from the channels of conv and linear layers; this model has "
                             "none besides its output layer: use fedavg, fedcompress or ae")
        try:   # refused here, at start, when torch-pruning cannot trace or cut the model
            ranking = channel_ranking(model, self.example)
            self.costs = {w: training_cost(prune(model, self.example, kept_channels(ranking, w)), self.input_shape)
                          for w in self.widths}
        except Exception as exc:   # torch-pruning's errors have no common type
            raise ValueError(f"reft: torch-pruning cannot cut this model ({type(exc).__name__}: {exc})") from None
        self._public: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ tiers and cuts

    def capacity(self, client: ClientInfo) -> float:
        capacity = client.capabilities.compute_budget or 1.0
        if self.reference_speed > 0:
            capacity *= min(1.0, client.capabilities.train_samples_per_second / self.reference_speed)
        return capacity

    def _cut_round(self) -> None:
        """This round's sub-model per tier, from one channel ranking of the global model."""
        ranking = channel_ranking(self.model, self.example)
        self.cuts = {}
        for width in self.widths:
            keep = kept_channels(ranking, width)
            self.cuts[width] = TierCut(width, keep, index_map(self.model, self.example, keep),
                                       float_state(prune(self.model, self.example, keep)))
        self.bytes_down = dict.fromkeys(self.widths, 0)

    # ------------------------------------------------------------------ the round

    def configure(self, round_number: int, clients: Sequence[ClientInfo]) -> dict[str, ClientPlan]:
        self._cut_round()
        plans = {}
        for client in clients:
            width = tier_for(self.capacity(client), self.widths)
            uplink, downlink = self.codecs_for(client)
            profile = f"{width}:{downlink}"
            self.profiles[profile] = (width, downlink)
            config = {"width": width, "channels": {name: len(kept) for name, kept in self.cuts[width].keep.items()}}
            if self.params.inplace_kd > 0 and width > self.widths[-1]:
                config["inplace"] = self._nested_positions(width, self.widths[-1])
            plans[client.client_id] = ClientPlan(
                profile=profile, hyperparameters=self.settings.hyperparameters, uplink_codec=uplink,
                downlink_codec=downlink, error_feedback=False, method_config=config)
        return plans

    def _nested_positions(self, width: float, narrower: float) -> dict[str, list[int]]:
        """Per layer, where the ``narrower`` tier's channels sit among the ``width`` tier's (tiers nest, so
        each is found): what a client needs to run the narrower sub-network inside its own."""
        return {name: np.searchsorted(kept, self.cuts[narrower].keep[name]).tolist()
                for name, kept in self.cuts[width].keep.items()}

    def downlink(self, profile: str) -> tuple[dict[str, torch.Tensor], dict[str, ExpectedTensor]]:
        width, codec = self.profiles[profile]
        tensors = self.cuts[width].tensors
        return tensors, expect_all(model_spec(tensors), codec)

    def expected_update(self, plan: ClientPlan) -> dict[str, ExpectedTensor]:
        return expect_all(model_spec(self.cuts[plan.method_config["width"]].tensors), plan.uplink_codec)

    def downloaded(self, plan: ClientPlan, payload_bytes: int) -> None:
        width = plan.method_config["width"]
        self.bytes_down[width] = self.bytes_down.get(width, 0) + payload_bytes

    def new_accumulator(self) -> CoverageSum:
        return CoverageSum()

    def accumulate(self, accumulator: CoverageSum, update: ClientUpdate) -> None:
        width = update.plan.method_config["width"]
        cut = self.cuts[width]
        shapes = {name: torch.Size(spec.shape) for name, spec in self.specs.items()}
        accumulator.add_sub(cut, shapes, update.tensors, update.num_examples)
        trained = {name: cut.tensors[name] + torch.from_numpy(value) for name, value in update.tensors.items()}
        accumulator.teachers[update.client_id] = (width, trained)
        accumulator.bytes_up[width] = accumulator.bytes_up.get(width, 0) + sum(update.payload_bytes.values())
        accumulator.clients[width] = accumulator.clients.get(width, 0) + 1

    def _teacher_models(self, teachers: list[tuple[float, dict[str, torch.Tensor]]]) -> list[torch.nn.Module]:
        """The clients' trained sub-models as modules (cut as this round's download was)."""
        models = []
        for width, trained in teachers:
            module = prune(self.model, self.example, self.cuts[width].keep)
            module.load_state_dict(trained, strict=False)
            models.append(module)
        return models

    def aggregate(self, round_number: int, accumulator: CoverageSum,
                  client_metrics: dict[str, float]) -> dict[str, float]:
        teachers = self._teacher_models(accumulator.ordered_teachers())   # cut from the model the clients started from
        state = self.model.state_dict()
        coverage = []
        with torch.no_grad():
            for name in accumulator.sums:
                total, covered = accumulator.total(name), accumulator.covered[name]
                mean = torch.where(covered > 0, total / covered.clamp_min(1e-12), torch.zeros_like(total))
                state[name].add_(mean.to(state[name].dtype))
                coverage.append(((covered > 0).sum().item(), covered.numel()))
        metrics: dict[str, float] = {
            "coverage": sum(c for c, _ in coverage) / max(1, sum(n for _, n in coverage))}
        if self.distillation.active and teachers:
            if self.settings.evaluate:
                metrics["aggregate_accuracy"] = self.settings.evaluate(self.model)[0]
            metrics.update(self.distillation.run(self.model, softened(teachers), round_number))
        metrics.update(self._tier_metrics(accumulator))
        return metrics

    def _tier_metrics(self, accumulator: CoverageSum) -> dict[str, float]:
        """Per tier: clients, payload bytes each way, and the new global model's sub-model accuracy and costs."""
        metrics: dict[str, float] = {}
        ranking = channel_ranking(self.model, self.example)
        for width in self.widths:
            tier = f"tier_{width:g}"
            cost = self.costs[width]
            metrics.update({f"{tier}_clients": accumulator.clients.get(width, 0),
                            f"{tier}_payload_bytes_up": accumulator.bytes_up.get(width, 0),
                            f"{tier}_payload_bytes_down": self.bytes_down.get(width, 0),
                            f"{tier}_params": cost.params, f"{tier}_train_flops_per_sample": cost.flops_per_sample,
                            f"{tier}_train_memory_bytes": cost.memory_bytes})
            if self.settings.evaluate:
                sub = prune(self.model, self.example, kept_channels(ranking, width))
                metrics[f"{tier}_accuracy"] = self.settings.evaluate(sub)[0]
        return metrics

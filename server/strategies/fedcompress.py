"""FedCompress (Tsouvalas et al., ICASSP 2024): dynamic weight clustering with server-side distillation.

Round: every client gets the clustered global model (K values per layer),
trains it, fine-tunes with weight sharing at K, and sends back its clustered
model with its validation accuracy and representation score. The server
averages the models (the teacher), clusters a copy to K (the student) and
distils the teacher into it on unlabeled out-of-distribution images; the
clustered student is the next global model. K grows by one when accuracy and
score plateau (``KSchedule``). Models, not updates, travel: no error feedback.

Method parameters (``--method "fedcompress(k0=8,kd_epochs=2)"``):
k0 (8), k_max (30), window (3), patience (4), acc_tol (0.01), score_tol (0.1)
for the schedule; cluster_epochs (1), cluster_lr (5e-4), val_fraction (0.1)
for clients; distill (true), kd_epochs (10), kd_lr (1e-4), kd_batch (256),
temperature (2.0), ood ("procedural", or a dataset spec other than the
federation's, e.g. "mnist"), ood_samples (5000) for the server; entropy
("ans" or "zstd") for the wire: the indices of trained clustered weights are
close to i.i.d., so ans (at their entropy) beats zstd by about 15%.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedsqueeze.clustering import cluster_model_, clustered_tensors, weight_sharing
from fedsqueeze.codecs import get_plan
from fedsqueeze.server.aggregation import WeightedSum
from fedsqueeze.server.clients import ClientInfo
from fedsqueeze.server.distillation import Distillation, softened
from fedsqueeze.server.strategies.base import ClientPlan, Strategy, StrategySettings
from fedsqueeze.tensors import float_state
from fedsqueeze.wire import ExpectedTensor, encode_model, expect_all

log = logging.getLogger(__name__)


@dataclass
class KSchedule:
    """When to grow the number of clusters, as in the authors' code.

    Each round adds the clients' weighted-mean validation accuracy and score.
    K grows by ``step`` when at least ``patience`` rounds ran at the current K
    and the latest change of both rolling means (window ``window``, over the
    whole history) is at most ``acc_tol`` / ``score_tol`` divided by
    2 * (K - k0), or by 1 at k0. A drop counts as a plateau.
    """

    k0: int = 8
    k_max: int = 30
    window: int = 3
    patience: int = 4
    acc_tol: float = 0.01
    score_tol: float = 0.1
    step: int = 1
    k: int = field(init=False)
    history: list[tuple[int, float, float]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.k0 <= self.k_max <= 256:
            raise ValueError(f"need 1 <= k0 <= k_max <= 256, got k0={self.k0}, k_max={self.k_max}")
        if self.window < 1 or self.patience < 1 or self.step < 1:
            raise ValueError("window, patience and step must be >= 1")
        self.k = self.k0

    def record(self, accuracy: float, score: float) -> int:
        """Add a round at the current K; return the K for the next round."""
        self.history.append((self.k, accuracy, score))
        if self.plateaued():
            self.k = min(self.k + self.step, self.k_max)
        return self.k

    def _rolling_change(self, values: list[float]) -> float:
        now = values[-self.window:]
        before = values[max(0, len(values) - 1 - self.window):-1]
        return sum(now) / len(now) - sum(before) / len(before)

    def plateaued(self) -> bool:
        rounds_at_k = sum(1 for k, _, _ in self.history if k == self.k)
        if self.k >= self.k_max or rounds_at_k < self.patience or len(self.history) < 2:
            return False
        scale = 2 * (self.k - self.k0) or 1
        accuracy = self._rolling_change([a for _, a, _ in self.history])
        score = self._rolling_change([s for _, _, s in self.history])
        return accuracy <= self.acc_tol / scale and score <= self.score_tol / scale


class FedCompress(Strategy):
    name = "fedcompress"
    params = frozenset({"k0", "k_max", "window", "patience", "acc_tol", "score_tol", "cluster_epochs", "cluster_lr",
                        "val_fraction", "entropy"}) | Distillation.params("ood")

    def __init__(self, model: torch.nn.Module, settings: StrategySettings) -> None:
        super().__init__(model, settings)
        p = settings.params
        self.schedule = KSchedule(int(p.get("k0", 8)), int(p.get("k_max", 30)), int(p.get("window", 3)),
                                  int(p.get("patience", 4)), float(p.get("acc_tol", 0.01)),
                                  float(p.get("score_tol", 0.1)))
        self.client_config = {"cluster_epochs": int(p.get("cluster_epochs", 1)),
                              "cluster_lr": float(p.get("cluster_lr", 5e-4)),
                              "val_fraction": float(p.get("val_fraction", 0.1))}
        input_shape = tuple(json.loads(settings.model_spec.config_json)["input_shape"])
        self.distillation = Distillation(p, self.name, settings.data, input_shape, settings.seed, "ood",
                                         default_epochs=10)
        self.entropy = str(p.get("entropy", "ans"))
        if self.entropy not in ("zstd", "ans"):
            raise ValueError(f"fedcompress: entropy must be zstd or ans, not {self.entropy!r}")
        self.clustered = set(clustered_tensors(model))
        self._ood: tuple[torch.Tensor, torch.Tensor] | None = None
        self._plans: dict[str, str] = {}
        cluster_model_(self.model, self.schedule.k, settings.seed)   # the first download is clustered too

    def state_dict(self) -> dict[str, Any]:
        return {"k": self.schedule.k, "history": self.schedule.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.k = int(state["k"])
        self.schedule.history = [(int(k), float(acc), float(score)) for k, acc, score in state["history"]]

    def plan(self, k: int) -> str:
        """Clustered conv/linear weights, everything else (biases) dense float32."""
        dense = [f"{name}=dense" for name in self.specs if name not in self.clustered]
        return "; ".join([f"cluster(k={k})|{self.entropy}", *dense])

    def configure(self, round_number: int, clients: Sequence[ClientInfo]) -> dict[str, ClientPlan]:
        k = self.schedule.k
        profile = f"k={k}"
        self._plans[profile] = get_plan(self.plan(k)).spec
        plan = ClientPlan(profile=profile, hyperparameters=self.settings.hyperparameters,
                          uplink_codec=self._plans[profile], downlink_codec=self._plans[profile],
                          method_config={"k": k, **self.client_config}, error_feedback=False,
                          sends_delta=False)
        return {client.client_id: plan for client in clients}

    def downlink(self, profile: str) -> tuple[dict[str, torch.Tensor], dict[str, ExpectedTensor]]:
        return float_state(self.model), expect_all(self.specs, self._plans[profile])

    def expected_update(self, plan: ClientPlan) -> dict[str, ExpectedTensor]:
        return expect_all(self.specs, plan.uplink_codec)

    def aggregate(self, round_number: int, accumulator: WeightedSum,
                  client_metrics: dict[str, float]) -> dict[str, float]:
        k = self.schedule.k
        teacher = copy.deepcopy(self.model)
        teacher.load_state_dict(accumulator.mean(), strict=False)
        metrics: dict[str, float] = {"k": k}
        if self.settings.evaluate:
            metrics["teacher_accuracy"] = self.settings.evaluate(teacher)[0]
        student = copy.deepcopy(teacher)
        if self.distillation.active:
            with weight_sharing(student, k, self.settings.seed):
                metrics.update(self.distillation.run(student, softened([teacher]), round_number))
        else:
            cluster_model_(student, k, self.settings.seed)
        self.model.load_state_dict(student.state_dict())
        if "val_accuracy" in client_metrics and "score" in client_metrics:
            self.schedule.record(client_metrics["val_accuracy"], client_metrics["score"])
        metrics["next_k"] = self.schedule.k
        encoded = encode_model(float_state(self.model), expect_all(self.specs, self.plan(self.schedule.k)))
        metrics["model_bytes"] = encoded.payload_size
        if self.schedule.k != k:
            log.info("round %d: accuracy and score plateaued at K=%d; K is now %d", round_number, k,
                     self.schedule.k)
        return metrics

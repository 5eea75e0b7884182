"""FedCompress (Tsouvalas et al., ICASSP 2024): dynamic weight clustering with server-side distillation.

Round: every client gets the clustered global model (K values per layer),
trains it, and sends back its clustered work with its validation accuracy and
representation score. The server averages the clients' work into the teacher,
clusters a copy to K (the student) and distils the teacher into it on
unlabeled out-of-distribution images; the clustered student is the next
global model. K grows by one when accuracy and score plateau (``KSchedule``).

What travels up (``upload``):

- ``model``, the paper's: each client fine-tunes with weight sharing at K and
  sends its clustered model; the teacher is the clients' mean model. A weight
  moves only when local training carries it past the midpoint to the next
  centroid, so small steps are lost every round, on the client and again when
  the server re-clusters (10 rounds, 1 epoch: -1.5 pt against FedAvg).
- ``delta`` (default): each client sends ``trained - downloaded`` through the
  same clustered codec, with error feedback; the server keeps the teacher in
  float32 between rounds and adds the clients' mean delta to it, so the small
  steps accumulate there (straight-through, as in quantisation-aware training
  with full-precision latent weights). Same wire format, same clustered
  student served. Benchmarks: docs/methods/fedcompress.md.

Method parameters (``--method "fedcompress(k0=8,kd_epochs=2)"``): ``FedCompressParams``
(``fedsqueeze methods`` lists them). Clustered indices are close to i.i.d., so
``entropy=ans`` (at their entropy) beats zstd by about 15%. With
``upload=delta`` and a state directory, the float32 teacher is kept beside the
checkpoint (``fedcompress/teacher-<round>.pt``) so a restart resumes it.
"""

from __future__ import annotations

import copy
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedsqueeze.codecs import get_plan
from fedsqueeze.methods import FedCompressParams
from fedsqueeze.methods.fedcompress.clustering import cluster_model_, clustered_tensors, weight_sharing
from fedsqueeze.methods.fedcompress.representation import embedding_module
from fedsqueeze.models import is_regression
from fedsqueeze.server.aggregation import WeightedSum
from fedsqueeze.server.clients import ClientInfo
from fedsqueeze.server.distillation import Distillation, softened
from fedsqueeze.server.storage import write_atomic
from fedsqueeze.server.strategies.base import ClientPlan, Strategy, StrategySettings
from fedsqueeze.tensors import copy_float_state, float_state
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


class FedCompress(Strategy[WeightedSum]):
    name = "fedcompress"
    relays_through_edges = True
    Params = FedCompressParams
    params: FedCompressParams
    TEACHERS_KEPT = 2   # the checkpoint being written and the one before it, which a crash falls back to

    def __init__(self, model: torch.nn.Module, settings: StrategySettings) -> None:
        super().__init__(model, settings)
        p = self.params
        embedding_module(model, p.embedding)   # refused here, at start, when the model has no embedding to score
        self.schedule = KSchedule(p.k0, p.k_max, p.window, p.patience, p.acc_tol, p.score_tol)
        deltas = p.upload == "delta"
        self.delta_k = p.delta_k or None
        input_shape = tuple(json.loads(settings.model_spec.config_json)["input_shape"])
        self.distillation = Distillation(p, p.ood, p.ood_samples, "ood", settings.data, input_shape, settings.seed,
                                         is_regression(settings.model_spec))
        self.entropy = p.entropy
        self.clustered = set(clustered_tensors(model))
        self._ood: tuple[torch.Tensor, torch.Tensor] | None = None
        self._plans: dict[str, str] = {}
        # upload=delta: the float32 teacher the clients' deltas add to (the served model is its clustered student)
        self.teacher: dict[str, torch.Tensor] | None = \
            copy_float_state(model) if deltas else None
        self._round = 0
        cluster_model_(self.model, self.schedule.k, settings.seed)   # the first download is clustered too

    def state_dict(self) -> dict[str, Any]:
        """K's schedule; with upload=delta, also the float32 teacher, written to its own file first."""
        state: dict[str, Any] = {"k": self.schedule.k, "history": self.schedule.history}
        if self.teacher is not None and self.settings.state_dir:
            folder = self.settings.state_dir / "fedcompress"
            buffer = io.BytesIO()
            torch.save(self.teacher, buffer)
            write_atomic(folder / f"teacher-{self._round}.pt", buffer.getvalue())
            state["teacher_file"] = f"teacher-{self._round}.pt"
            for old in sorted(folder.glob("teacher-*.pt"), key=lambda f: int(f.stem.split("-")[1]))[
                    :-self.TEACHERS_KEPT]:
                old.unlink(missing_ok=True)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.k = int(state["k"])
        self.schedule.history = [(int(k), float(acc), float(score)) for k, acc, score in state["history"]]
        if self.teacher is None:
            return
        path = self.settings.state_dir / "fedcompress" / str(state.get("teacher_file")) \
            if self.settings.state_dir and state.get("teacher_file") else None
        if path and path.exists():
            self.teacher = torch.load(path, weights_only=True)
        else:   # a checkpoint of upload=model, or one whose teacher is gone: start again from the served model
            log.warning("no float32 teacher beside the checkpoint; the clustered model is the teacher from here")
            self.teacher = copy_float_state(self.model)

    def plan(self, k: int) -> str:
        """Clustered conv/linear weights, everything else (biases) dense float32."""
        dense = [f"{name}=dense" for name in self.specs if name not in self.clustered]
        return "; ".join([f"cluster(k={k})|{self.entropy}", *dense])

    def configure(self, round_number: int, clients: Sequence[ClientInfo]) -> dict[str, ClientPlan]:
        k = self.schedule.k
        profile = f"k={k}"
        self._plans[profile] = get_plan(self.plan(k)).spec
        uplink = get_plan(self.plan(self.delta_k)).spec if self.delta_k else self._plans[profile]
        plan = ClientPlan(profile=profile, hyperparameters=self.settings.hyperparameters,
                          uplink_codec=uplink, downlink_codec=self._plans[profile],
                          method_config={"k": k}, error_feedback=self.params.upload == "delta",
                          sends_delta=self.params.upload == "delta")
        return {client.client_id: plan for client in clients}

    def downlink(self, profile: str) -> tuple[dict[str, torch.Tensor], dict[str, ExpectedTensor]]:
        return float_state(self.model), expect_all(self.specs, self._plans[profile])

    def evaluation_model(self) -> tuple[dict[str, torch.Tensor], str]:
        """The clustered model in the plan of the next round's download (not the lossless default)."""
        return float_state(self.model), get_plan(self.plan(self.schedule.k)).spec

    def expected_update(self, plan: ClientPlan) -> dict[str, ExpectedTensor]:
        return expect_all(self.specs, plan.uplink_codec)

    def new_accumulator(self) -> WeightedSum:
        return WeightedSum()

    def aggregate(self, round_number: int, accumulator: WeightedSum,
                  client_metrics: dict[str, float]) -> dict[str, float]:
        k = self.schedule.k
        self._round = round_number
        teacher = copy.deepcopy(self.model)
        mean = accumulator.mean()
        if self.teacher is not None:
            self.teacher = {name: self.teacher[name] + mean[name] for name in self.teacher}
            teacher.load_state_dict(self.teacher, strict=False)
        else:
            teacher.load_state_dict(mean, strict=False)
        metrics: dict[str, float] = {"k": k}
        if self.settings.evaluate:
            metrics["teacher_accuracy"] = self.settings.evaluate(teacher)[0]
        student = copy.deepcopy(teacher)
        if self.distillation.active:
            with weight_sharing(student, k, self.settings.seed):
                metrics.update(self.distillation.run(student, softened([teacher]), round_number))
            if not all(torch.isfinite(v).all() for v in float_state(student).values()):
                # diverged: serve the clustered teacher rather than stop the federation
                log.warning("round %d: distillation diverged (non-finite weights); serving the clustered teacher",
                            round_number)
                metrics["kd_diverged"] = 1.0
                student = cluster_model_(copy.deepcopy(teacher), k, self.settings.seed)
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

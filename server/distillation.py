"""Knowledge distillation on unlabeled data, on the server.

The teacher is anything that gives temperature-softened class probabilities
for a batch: one model (FedCompress: the clients' average) or the mean over
several (REFT: the clients' ensemble). The student minimises
T^2 * KL(p_teacher || p_student) at temperature T (Hinton et al., 2015).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from fedsqueeze.data.ood import load_ood
from fedsqueeze.methods import DistillationParams
from fedsqueeze.specs import parse_spec

TeacherProbabilities = Callable[[torch.Tensor, float], torch.Tensor]


def softened(models: Sequence[nn.Module]) -> TeacherProbabilities:
    """The mean softened prediction of one or more frozen models."""
    def probabilities(x: torch.Tensor, temperature: float) -> torch.Tensor:
        with torch.inference_mode():
            return torch.stack([F.softmax(m.eval()(x) / temperature, dim=1) for m in models]).mean(dim=0)
    return probabilities


def _teacher_targets(teacher: TeacherProbabilities, data: torch.Tensor, temperature: float,
                     batch_size: int) -> torch.Tensor:
    return torch.cat([teacher(data[i:i + batch_size], temperature) for i in range(0, len(data), batch_size)])


def kl_to_teacher(student: nn.Module, teacher: TeacherProbabilities, data: torch.Tensor,
                  temperature: float = 2.0, batch_size: int = 512) -> float:
    """Mean KL(p_teacher || p_student) over ``data`` at ``temperature`` (no T^2 factor)."""
    targets = _teacher_targets(teacher, data, temperature, batch_size)
    was_training = student.training
    student.eval()
    total = 0.0
    with torch.inference_mode():
        for i in range(0, len(data), batch_size):
            log_p = F.log_softmax(student(data[i:i + batch_size]) / temperature, dim=1)
            total += F.kl_div(log_p, targets[i:i + batch_size], reduction="sum").item()
    student.train(was_training)
    return total / len(data)


def distill(student: nn.Module, teacher: TeacherProbabilities, data: torch.Tensor, epochs: int,
            temperature: float = 2.0, lr: float = 1e-4, batch_size: int = 256, seed: int = 0) -> None:
    """Train ``student``'s parameters (whatever is trainable: e.g. shared centroids) to match the teacher; batch-norm
    layers stay in eval mode (their running statistics are the federation's, not the unlabelled set's)."""
    targets = _teacher_targets(teacher, data, temperature, batch_size)
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    student.train()
    # Batch norm keeps the running statistics the clients' data gave it: the unlabelled images are out of
    # distribution, and normalising by their batches (or learning their statistics) wrecks the student in eval
    # mode (a ResNet-8 on Fashion-MNIST: held-out KL 0.003 -> 0.81 in one round, then NaN).
    for module in student.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for i in range(0, len(order), batch_size):
            batch = order[i:i + batch_size]
            log_p = F.log_softmax(student(data[batch]) / temperature, dim=1)
            loss = F.kl_div(log_p, targets[batch], reduction="batchmean") * temperature**2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


class Distillation:
    """A method's server-side distillation: its settings (``DistillationParams``) and its unlabeled set, made once.

    ``set_spec`` names the unlabeled set ("procedural" or a dataset other than the federation's), ``samples``
    its size, ``set_key`` the method parameter that chose it (for messages). A tenth of the set is held out
    to measure the KL.
    """

    HELD_OUT = 0.1

    def __init__(self, params: DistillationParams, set_spec: str, samples: int, set_key: str, federation_data: str,
                 input_shape: tuple[int, ...], seed: int, regression: bool = False) -> None:
        method = params.method
        if regression:
            raise ValueError(f"{method} distils class probabilities; a regression task has none: use fedavg or ae")
        if len(input_shape) != 3:
            raise ValueError(f"{method} distils on unlabelled images (C, H, W); this model's inputs are "
                             f"{list(input_shape)}: use a method without distillation (fedavg, ae) for such data")
        self.enabled = params.distill
        self.epochs = params.kd_epochs
        self.lr = params.kd_lr
        self.batch = params.kd_batch
        self.temperature = params.temperature
        self.set_spec = set_spec
        self.samples = samples
        if federation_data and parse_spec(self.set_spec)[0] == parse_spec(federation_data)[0]:
            raise ValueError(f"{method}: the distillation set must not be the federation's own data "
                             f"({federation_data}); use {set_key}=procedural or another dataset")
        self.input_shape = input_shape
        self.seed = seed
        self._data: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def active(self) -> bool:
        return self.enabled and self.epochs > 0

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(distillation part, held-out part) of the unlabeled set."""
        if self._data is None:
            images = load_ood(self.set_spec, self.input_shape, self.samples, self.seed)
            held = max(1, int(self.HELD_OUT * len(images)))
            self._data = images[held:], images[:held]
        return self._data

    def run(self, student: nn.Module, teacher: TeacherProbabilities, round_number: int) -> dict[str, float]:
        """Distil ``teacher`` into ``student``; return the held-out KL before and after."""
        train, held = self.data()
        before = kl_to_teacher(student, teacher, held, self.temperature)
        distill(student, teacher, train, self.epochs, self.temperature, self.lr, self.batch, seed=round_number)
        return {"kd_kl_before": before, "kd_kl_after": kl_to_teacher(student, teacher, held, self.temperature)}

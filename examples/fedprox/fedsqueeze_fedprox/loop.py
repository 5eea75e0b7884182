"""FedProx (Li et al., 2020) as a fedsqueeze training loop: local SGD plus a proximal term.

Each step minimises ``loss + mu / 2 * ||w - w_global||^2``: local models are
pulled towards the global one, which limits client drift on non-IID data.
Registered as ``fedprox`` (entry point ``fedsqueeze.trainers``); the server
names it with ``--trainer "fedprox(mu=0.01)"`` and every client runs it inside
its method's own steps (error feedback, encoding, ...).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fedsqueeze.client.loops import LocalRound
from fedsqueeze.data.datasets import Dataset


def fedprox(model: nn.Module, data: Dataset, round: LocalRound, mu: float = 0.01) -> dict[str, float]:
    """Train in place; return the mean loss (without the proximal term), accuracy and the final distance."""
    if mu < 0:
        raise ValueError(f"fedprox: mu must be >= 0, not {mu}")
    hp = round.hyperparameters
    anchor = [p.detach().clone() for p in model.parameters()]   # the downloaded global weights
    optimizer = round.make_optimizer(model)
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for _ in range(hp.epochs):
        order = torch.randperm(len(data), generator=round.generator)
        for start in range(0, len(order), hp.batch_size):
            round.check_stop()
            batch = order[start:start + hp.batch_size]
            logits = model(data.x[batch])
            loss = F.cross_entropy(logits, data.y[batch])
            proximal = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
            optimizer.zero_grad()
            (loss + mu / 2 * proximal).backward()
            optimizer.step()
            loss_sum += loss.item() * len(batch)
            correct += (logits.argmax(dim=1) == data.y[batch]).sum().item()
            seen += len(batch)
    distance = sum(((p.detach() - a) ** 2).sum() for p, a in zip(model.parameters(), anchor)) ** 0.5
    return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen, "prox_distance": float(distance)}

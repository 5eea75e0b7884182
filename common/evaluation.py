"""Loss and metrics of a model on a dataset (the server's test set, a client's held-out split).

Classification: cross-entropy and accuracy. Regression (``Dataset.num_classes``
0, one output per example): the mean squared error; accuracy is NaN (the
report writes null).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fedsqueeze.data.datasets import Dataset


def task_loss(outputs: torch.Tensor, y: torch.Tensor, regression: bool, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of class scores, or the squared error of one output per example."""
    if regression:
        return F.mse_loss(outputs.reshape(len(y), -1)[:, 0], y, reduction=reduction)
    return F.cross_entropy(outputs, y, reduction=reduction)


@torch.inference_mode()
def evaluate(model: nn.Module, data: Dataset, batch_size: int = 1000) -> tuple[float, float]:
    """Return (accuracy, mean loss) of ``model`` on ``data`` (regression: (NaN, mean squared error))."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for start in range(0, len(data), batch_size):
        x, y = data.x[start:start + batch_size], data.y[start:start + batch_size]
        outputs = model(x)
        loss += task_loss(outputs, y, data.regression, reduction="sum").item()
        if not data.regression:
            correct += (outputs.argmax(dim=1) == y).sum().item()
    model.train(was_training)
    return (math.nan if data.regression else correct / len(data)), loss / len(data)

"""What this device can do: usable cores and memory (cgroup limits applied) and a measured training speed."""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.nn import functional as F

from fedsqueeze.resources import usable_cores, usable_memory
from fedsqueeze.v1 import federation_pb2 as pb


def measure_training_speed(seconds: float = 0.5) -> float:
    """Training samples per second on a fixed reference CNN (28x28 inputs, batch 32)."""
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(16 * 14 * 14, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(32, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (32,), generator=generator)

    def step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()  # warm-up
    samples, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        step()
        samples += len(x)
    return samples / elapsed


def measure_capabilities(compute_budget: float) -> pb.Capabilities:
    if not 0 < compute_budget <= 1:
        raise ValueError(f"compute budget must be in (0, 1], not {compute_budget}")
    return pb.Capabilities(cpu_cores=usable_cores(), memory_bytes=usable_memory(),
                           train_samples_per_second=measure_training_speed(), compute_budget=compute_budget)

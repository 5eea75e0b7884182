"""FedAvg's parameters: none beyond the federation's training settings."""

from dataclasses import dataclass

from fedsqueeze.methods.base import MethodParams


@dataclass(frozen=True)
class FedAvgParams(MethodParams):
    method = "fedavg"

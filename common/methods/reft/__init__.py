"""REFT's parameters, read by its server strategy; its client trainer reads ``inplace_kd`` and ``temperature``."""

from dataclasses import dataclass

from fedsqueeze.methods.base import DistillationParams, param


@dataclass(frozen=True)
class ReftParams(DistillationParams):
    method = "reft"

    tiers: str = param("1/0.75/0.5/0.25", "widths of the sub-model tiers, largest first, '/'-separated")
    reference_speed: float = param(0.0, "training samples/s of a full-capacity device (0: budgets alone size tiers)")
    kd_epochs: int = param(2, "distillation epochs per round (0: none)")
    public: str = param("procedural", "unlabelled distillation images: procedural, or a dataset other than the "
                        "federation's")
    public_samples: int = param(5000, "distillation images")
    inplace_kd: float = param(0.25, "weight of in-place distillation: a client wider than the narrowest tier also "
                              "trains that tier's nested sub-network towards its own outputs on each batch (0: off)")

    def check(self) -> None:
        super().check()
        if self.reference_speed < 0 or self.public_samples < 10 or not self.inplace_kd >= 0:
            raise ValueError("reft: need reference_speed >= 0, public_samples >= 10 and inplace_kd >= 0")

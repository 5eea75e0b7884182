"""FedCompress's parameters, read by its server strategy and its client trainer."""

from dataclasses import dataclass

from fedsqueeze.methods.base import DistillationParams, param


@dataclass(frozen=True)
class FedCompressParams(DistillationParams):
    method = "fedcompress"

    k0: int = param(8, "clusters per layer at the start")
    k_max: int = param(30, "most clusters per layer")
    window: int = param(3, "rounds in the rolling means the K schedule compares")
    patience: int = param(4, "fewest rounds at one K before it may grow")
    acc_tol: float = param(0.01, "a validation-accuracy change at most this (scaled) is a plateau")
    score_tol: float = param(0.1, "a representation-score change at most this (scaled) is a plateau")
    upload: str = param("delta", "delta (trained - downloaded, error feedback) or model (the paper's)")
    delta_k: int = param(0, "with upload=delta: a fixed number of clusters for the uplink (0: the schedule's K)")
    cluster_epochs: int | None = param(None, "clustered fine-tuning epochs on clients (default: 0 with "
                                       "upload=delta, 1 with upload=model)")
    cluster_lr: float = param(5e-4, "learning rate of the clustered fine-tuning (Adam)")
    val_fraction: float = param(0.1, "share of each client's data held out for its validation accuracy and score")
    embedding: str = param("", "module whose output is the penultimate embedding the score reads (default: the "
                           "model's `embedding_module` attribute, else the input of its last nn.Linear)")
    entropy: str = param("ans", "entropy stage of the clustered indices: ans or zstd")
    ood: str = param("procedural", "unlabelled distillation images: procedural, or a dataset other than the "
                     "federation's")
    ood_samples: int = param(5000, "distillation images")

    def __post_init__(self) -> None:
        if self.cluster_epochs is None:
            object.__setattr__(self, "cluster_epochs", 0 if self.upload == "delta" else 1)
        super().__post_init__()

    def check(self) -> None:
        super().check()
        if not 1 <= self.k0 <= self.k_max <= 256:
            raise ValueError(f"fedcompress: need 1 <= k0 <= k_max <= 256, got k0={self.k0}, k_max={self.k_max}")
        if self.window < 1 or self.patience < 1:
            raise ValueError("fedcompress: window and patience must be >= 1")
        if self.upload not in ("delta", "model"):
            raise ValueError(f"fedcompress: upload must be delta or model, not {self.upload!r}")
        if self.delta_k and not (self.upload == "delta" and 1 <= self.delta_k <= 256):
            raise ValueError(f"fedcompress: delta_k must be in 1..256 and needs upload=delta, "
                             f"got delta_k={self.delta_k}, upload={self.upload}")
        if self.cluster_epochs is not None and self.cluster_epochs < 0 or not self.cluster_lr > 0:
            raise ValueError("fedcompress: need cluster_epochs >= 0 and cluster_lr > 0")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"fedcompress: val_fraction must be in (0, 1), not {self.val_fraction}")
        if self.entropy not in ("zstd", "ans"):
            raise ValueError(f"fedcompress: entropy must be zstd or ans, not {self.entropy!r}")
        if self.ood_samples < 10:
            raise ValueError("fedcompress: ood_samples must be >= 10")

"""Client trainers by method name."""

from fedsqueeze.client.trainers.autoencoder import AutoencoderTrainer
from fedsqueeze.client.trainers.base import Stopped, Trainer, TrainResult
from fedsqueeze.client.trainers.fedcompress import FedCompressTrainer
from fedsqueeze.client.trainers.local import FedAvgTrainer
from fedsqueeze.client.trainers.reft import ReftTrainer

TRAINERS: dict[str, type[Trainer]] = {
    cls.method: cls for cls in (FedAvgTrainer, FedCompressTrainer, AutoencoderTrainer, ReftTrainer)}

__all__ = ["Stopped", "TRAINERS", "TrainResult", "Trainer"]

"""The server's state after each committed round, so a restarted server resumes where it stopped.

A checkpoint is the global model (``model-<round>.pt``, torch's weights-only
format) and ``checkpoint.json``: the round it follows, the run's identity
(method and model spec), every round's record, the bytes counted so far and
the strategy's own state (e.g. FedCompress's K schedule). Each file is written
atomically (temporary file, fsync, rename) and the model before the JSON that
names it, so a server killed at any instant finds the previous checkpoint or
the new one, never a mix.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from google.protobuf import json_format

from fedsqueeze.server.storage import write_atomic, write_json_atomic
from fedsqueeze.v1 import federation_pb2 as pb

log = logging.getLogger(__name__)

FORMAT = 1


class CheckpointError(Exception):
    """The state directory holds something this server must not resume from."""


@dataclass
class Checkpoint:
    round: int                              # the last committed round
    model: dict[str, torch.Tensor]
    history: list[pb.RoundMetrics]
    bytes_up: int
    bytes_down: int
    strategy: dict[str, Any]


class CheckpointStore:
    """Reads and writes the checkpoints of one run in ``folder``."""

    def __init__(self, folder: Path, method: str, model_spec: pb.ModelSpec) -> None:
        self.folder = folder
        self.identity = {"method": method, "model": json_format.MessageToDict(model_spec)}

    @property
    def index(self) -> Path:
        return self.folder / "checkpoint.json"

    def save(self, checkpoint: Checkpoint) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint.model, buffer)
        model_file = f"model-{checkpoint.round}.pt"
        write_atomic(self.folder / model_file, buffer.getvalue())
        write_json_atomic(self.index, {
            "format": FORMAT, **self.identity, "round": checkpoint.round, "model_file": model_file,
            "bytes_up": checkpoint.bytes_up, "bytes_down": checkpoint.bytes_down, "strategy": checkpoint.strategy,
            "history": [json_format.MessageToDict(r) for r in checkpoint.history]}, strict=False)
        for old in self.folder.glob("model-*.pt"):
            if old.name != model_file:
                old.unlink(missing_ok=True)

    def load(self) -> Checkpoint | None:
        """The last checkpoint, or None when the folder holds none; CheckpointError if it is another run's."""
        if not self.index.exists():
            return None
        try:
            document = json.loads(self.index.read_text())
            if document.get("format") != FORMAT:
                raise CheckpointError(f"{self.index}: unknown checkpoint format {document.get('format')!r}")
            for key, value in self.identity.items():
                if document.get(key) != value:
                    raise CheckpointError(f"{self.index} belongs to a run with another {key} "
                                          f"({document.get(key)!r}, this server: {value!r}); "
                                          "give this run its own --state-dir")
            model = torch.load(self.folder / document["model_file"], weights_only=True)
            history = [json_format.ParseDict(r, pb.RoundMetrics()) for r in document["history"]]
            return Checkpoint(int(document["round"]), model, history, int(document["bytes_up"]),
                              int(document["bytes_down"]), dict(document["strategy"]))
        except CheckpointError:
            raise
        except Exception as exc:   # torch's unpickler and protobuf raise many kinds; all mean the same here
            raise CheckpointError(f"{self.index}: unreadable checkpoint ({type(exc).__name__}: {exc})") from exc

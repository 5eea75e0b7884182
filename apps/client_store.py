"""Virtual clients' state between the rounds they are sampled in: one file per client on disk.

A simulated population is far larger than the cohort of a round, so what a
client keeps between its tasks (``TaskRunner.state()``: error-feedback
residuals, a method's own client state such as an autoencoder) is written out
when its task ends and read back when it is next sampled: memory follows the
cohort, not the population. Files are written atomically (a crash leaves the
previous state) and read with ``torch.load(weights_only=True)``: tensors,
numbers, strings, lists and dicts only, with numpy arrays carried as tensors.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsqueeze.server.storage import write_atomic

_ARRAY = "__ndarray__"   # marks a numpy array stored as a tensor


def _to_storable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {_ARRAY: torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, dict):
        return {key: _to_storable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_storable(item) for item in value]
    return value


def _from_stored(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_ARRAY}:
            return value[_ARRAY].numpy()
        return {key: _from_stored(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_stored(item) for item in value]
    return value


class ClientStateStore:
    """``save``/``load`` one client's state by client id under ``folder``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, client_id: str) -> Path:
        return self.folder / f"{client_id}.pt"   # client ids are [A-Za-z0-9._-]: safe as file names

    def save(self, client_id: str, state: dict[str, Any]) -> int:
        """Write ``state`` for ``client_id`` (replacing the last); return its size in bytes."""
        buffer = io.BytesIO()
        torch.save(_to_storable(state), buffer)
        write_atomic(self._path(client_id), buffer.getvalue())
        return buffer.tell()

    def load(self, client_id: str) -> dict[str, Any] | None:
        """The state last saved for ``client_id``, or None if it has none yet."""
        path = self._path(client_id)
        if not path.exists():
            return None
        return _from_stored(torch.load(path, weights_only=True))

    def total_bytes(self) -> int:
        """Bytes the store holds on disk."""
        return sum(p.stat().st_size for p in self.folder.glob("*.pt"))

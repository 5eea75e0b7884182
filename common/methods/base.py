"""What a method is made of, shared by both ends: its typed parameters, and the plug-in descriptor.

A method's parameters are one frozen dataclass (``FedCompressParams``, ...),
built from the method spec (``--method "fedcompress(k0=8)"``) on the server
and from the task's config on the client, so both halves read the same
fields with the same defaults. Each field carries its help text;
``fedsqueeze methods`` lists them.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar, Self


def param(default: Any, help: str) -> Any:
    """A method parameter: its default and a one-line description."""
    return field(default=default, metadata={"help": help})


def _coerce(kind: Any, value: Any, where: str) -> Any:
    """``value`` as a field of type ``kind`` (int, float, bool, str, or one of them or None)."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        if value is None:
            return None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
    raise ValueError(f"{where}: expected {getattr(kind, '__name__', kind)}, not {value!r}")


@dataclass(frozen=True)
class MethodParams:
    """Base of every method's parameters. Subclasses add fields (``param``) and range checks (``check``)."""

    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ValueError naming the parameter when a value is out of range (default: none)."""

    @classmethod
    def from_spec(cls, values: Mapping[str, Any]) -> Self:
        """Typed parameters from a spec's (or a task's JSON) values; ValueError for unknown keys or wrong types."""
        hints = typing.get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            takes = f"; it takes {', '.join(sorted(known))}" if known else "; it takes none"
            raise ValueError(f"method {cls.method!r} takes no parameter(s) {', '.join(unknown)}{takes}")
        return cls(**{k: _coerce(hints[k], v, f"{cls.method}: {k}") for k, v in values.items()})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def describe(cls) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, help) of every parameter, in declaration order."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in fields(cls):
            kind = hints[f.name]
            shown = getattr(kind, "__name__", str(kind).replace("NoneType", "None"))
            rows.append((f.name, shown, None if f.default is MISSING else f.default, f.metadata.get("help", "")))
        return rows


@dataclass(frozen=True)
class DistillationParams(MethodParams):
    """The parameters of server-side distillation, shared by the methods that distil (FedCompress, REFT)."""

    distill: bool = param(True, "distil on the server after aggregating")
    kd_epochs: int = param(10, "distillation epochs per round (0: none)")
    kd_lr: float = param(1e-4, "distillation learning rate (Adam)")
    kd_batch: int = param(256, "distillation batch size")
    temperature: float = param(2.0, "softmax temperature of teacher and student")

    def check(self) -> None:
        if self.kd_epochs < 0 or self.kd_batch < 1 or not self.kd_lr > 0 or not self.temperature > 0:
            raise ValueError(f"{self.method}: need kd_epochs >= 0, kd_batch >= 1, kd_lr > 0 and temperature > 0")


@dataclass(frozen=True)
class Method:
    """A method plug-in (entry-point group ``fedsqueeze.methods``, or an import path naming one of these).

    ``strategy`` is the server half (a ``fedsqueeze.server.strategies.Strategy`` subclass), ``trainer`` the
    client half (a ``fedsqueeze.client.trainers.Trainer`` subclass), ``params`` their shared parameters.
    """

    strategy: type
    trainer: type
    params: type[MethodParams]

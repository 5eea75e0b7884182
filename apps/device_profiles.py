"""Simulated devices: how fast each virtual client trains and how fast its links are, and the round's clock.

A profile scales the training time measured on this machine (``speed`` 0.5:
the device takes twice as long) and turns the bytes a client really sent and
received into link time. A round's simulated wall-clock is its slowest
committed client's download + training + upload (FedScale's approach), so
time-to-accuracy on slow links can be estimated for populations this machine
could never hold as processes. Specs (``--device-profiles``):

- ``none``: every device is this machine with unlimited links (the default);
- ``fixed(speed=1,up_mbps=1,down_mbps=10)``: every device alike;
- ``lognormal(speed=1,up_mbps=1,down_mbps=10,sigma=0.5,seed=0)``: each device's
  speed and bandwidths drawn around those medians, log-spread ``sigma``;
- ``trace(path=devices.json)``: a JSON list of ``{"speed", "up_mbps",
  "down_mbps"}`` objects, assigned to clients in turn (client i gets entry
  i mod the list's length).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsqueeze.specs import parse_spec

NO_PROFILES = "none"


@dataclass(frozen=True)
class DeviceProfile:
    speed: float = 1.0              # training speed relative to this machine's
    up_mbps: float = math.inf       # uplink, megabits per second
    down_mbps: float = math.inf

    def seconds(self, down_bytes: int, train_seconds: float, up_bytes: int) -> float:
        """This device's time for one task: download, training (as measured here, scaled), upload."""
        link = down_bytes * 8 / (self.down_mbps * 1e6) + up_bytes * 8 / (self.up_mbps * 1e6)
        return link + train_seconds / self.speed


def _checked(profile: DeviceProfile, source: str) -> DeviceProfile:
    for name in ("speed", "up_mbps", "down_mbps"):
        value = getattr(profile, name)
        if not value > 0:
            raise ValueError(f"{source}: {name} must be positive, not {value}")
    return profile


class DeviceProfiles:
    """The profile of each client index, from a ``--device-profiles`` spec (see the module doc)."""

    def __init__(self, spec: str = NO_PROFILES) -> None:
        self.spec = spec or NO_PROFILES
        name, params = parse_spec(self.spec)
        self._trace: list[DeviceProfile] = []
        self._median = DeviceProfile()
        self._sigma, self._seed = 0.0, 0
        try:
            if name == "trace":
                entries = json.loads(Path(str(params.pop("path"))).read_text())
                if not isinstance(entries, list) or not entries:
                    raise ValueError("a trace is a non-empty JSON list of {speed, up_mbps, down_mbps} objects")
                self._trace = [_checked(DeviceProfile(**{k: float(v) for k, v in e.items()}), f"trace entry {i}")
                               for i, e in enumerate(entries)]
            elif name in ("fixed", "lognormal"):
                if name == "lognormal":
                    self._sigma, self._seed = float(params.pop("sigma", 0.5)), int(params.pop("seed", 0))
                self._median = _checked(DeviceProfile(**{k: float(v) for k, v in params.items()}), self.spec)
                params = {}
            elif name != NO_PROFILES:
                raise ValueError("expected none, fixed(...), lognormal(...) or trace(path=...)")
        except (KeyError, TypeError, OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"--device-profiles {self.spec!r}: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"--device-profiles {self.spec!r}: {exc}") from None
        if params:
            raise ValueError(f"--device-profiles {self.spec!r}: unknown parameters {sorted(params)}")

    @property
    def modelled(self) -> bool:
        """Whether devices differ from this machine at all (links or speed)."""
        return self.spec != NO_PROFILES

    def for_client(self, index: int) -> DeviceProfile:
        """Client ``index``'s profile: the same on every call and every run with the same spec."""
        if self._trace:
            return self._trace[index % len(self._trace)]
        if not self._sigma:
            return self._median
        draws = np.random.default_rng([self._seed, index]).lognormal(0.0, self._sigma, size=3)
        m = self._median
        return DeviceProfile(m.speed * draws[0], m.up_mbps * draws[1], m.down_mbps * draws[2])

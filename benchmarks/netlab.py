"""Clients on their own network: one Linux network namespace per client, joined to the host by a veth pair.

The server runs in the host namespace and listens on every client's host-side address; client ``i`` runs
inside namespace ``<prefix>-<i>`` (``NetLab.prefix_command(i)``) and dials ``NetLab.server_address(i)``.
Every byte between a client and the server crosses that client's veth, so the host-side interface's
kernel counters (``rx_bytes``: uplink, ``tx_bytes``: downlink) measure the traffic from outside either
program: Ethernet, IP and TCP headers, TLS or HTTP/2 framing and retransmissions all included. The same
measure applies to any FL system, ours or Flower. Both ends of each link have ``gso_max_segs 1``, so TCP hands
the link one MSS-sized frame at a time, each with its own headers, as a physical Ethernet link carries them
(with the default segmentation offload a veth counts one set of headers per 64 KB super-frame, which would
make the count depend on how each program batches its writes). Retransmitted TCP segments are counted too:
on a machine whose cores the clients' training saturates, ACKs can lag the microsecond round trip of a veth
by milliseconds and TCP's tail-loss probes resend data that was not lost; those bytes did cross the link.

Optional slow links: a token-bucket filter (``tc qdisc ... tbf``) on the client side's egress limits its
uplink, one on the host side's egress its downlink (netem is not available here; tbf shapes rate only).

Needs root (CAP_NET_ADMIN) and ``ip``/``tc`` (iproute2). Addresses are 10.201.<i>.1 (host side) and
10.201.<i>.2 (client side): traffic never leaves the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, fields
from pathlib import Path

MAX_CLIENTS = 250


def why_unavailable() -> str | None:
    """None when namespaces can be made here; otherwise the reason, for a clear skip message."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found: install iproute2"
    probe = subprocess.run(["ip", "netns", "add", "fsq-probe"], capture_output=True, text=True)
    if probe.returncode:
        return f"cannot create a network namespace here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "fsq-probe"], capture_output=True)
    return None


def _retransmitted_segments(prefix: list[str]) -> int:
    """TcpRetransSegs of the namespace a command ``prefix`` runs in (/proc/net/snmp is per namespace)."""
    snmp = subprocess.run([*prefix, "cat", "/proc/net/snmp"], capture_output=True, text=True, check=True).stdout
    names, values = (line.split()[1:] for line in snmp.splitlines() if line.startswith("Tcp:"))
    return int(values[names.index("RetransSegs")])


def _run(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")


@dataclass(frozen=True)
class LinkLimits:
    """Rates in kbit/s of each client's uplink (client -> server) and downlink; None for unlimited."""

    up_kbit: int | None = None
    down_kbit: int | None = None

    def describe(self) -> str:
        if self.up_kbit is None and self.down_kbit is None:
            return "unlimited veth"
        up = f"{self.up_kbit / 1000:g} Mbit/s up" if self.up_kbit else "unlimited up"
        down = f"{self.down_kbit / 1000:g} Mbit/s down" if self.down_kbit else "unlimited down"
        return f"{up}, {down}"


@dataclass(frozen=True)
class LinkCounters:
    """Frames and their bytes (Ethernet header on) over the client links, each way."""

    bytes_up: int
    bytes_down: int
    packets_up: int
    packets_down: int
    retransmitted_up: int     # TCP segments the clients sent again (their namespaces' TcpRetransSegs)
    retransmitted_down: int   # the host namespace's TcpRetransSegs: the server's, if nothing else runs

    def __sub__(self, before: LinkCounters) -> LinkCounters:
        return LinkCounters(*(getattr(self, f.name) - getattr(before, f.name) for f in fields(self)))


class NetLab:
    """``clients`` namespaces with veth links to the host; a context manager that removes them on exit."""

    def __init__(self, clients: int, limits: LinkLimits = LinkLimits(), prefix: str = "fsq") -> None:
        if not 1 <= clients <= MAX_CLIENTS:
            raise ValueError(f"1 to {MAX_CLIENTS} clients, not {clients}")
        reason = why_unavailable()
        if reason:
            raise RuntimeError(reason)
        self.clients = clients
        self.limits = limits
        self.prefix = prefix

    def namespace(self, i: int) -> str:
        return f"{self.prefix}-{i}"

    def host_interface(self, i: int) -> str:
        return f"{self.prefix}h{i}"

    def host_ip(self, i: int) -> str:
        return f"10.201.{i}.1"

    def server_address(self, i: int, port: int) -> str:
        return f"{self.host_ip(i)}:{port}"

    def prefix_command(self, i: int) -> list[str]:
        """Prefix that runs a command inside client ``i``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(i)]

    def __enter__(self) -> NetLab:
        self.remove()   # what a crashed earlier run may have left
        try:
            for i in range(self.clients):
                self._add(i)
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _add(self, i: int) -> None:
        ns, host, peer = self.namespace(i), self.host_interface(i), f"{self.prefix}c{i}"
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", host, "gso_max_segs", "1", "type", "veth", "peer", "name", peer, "gso_max_segs", "1")
        _run("ip", "link", "set", peer, "netns", ns)
        _run("ip", "addr", "add", f"{self.host_ip(i)}/30", "dev", host)
        _run("ip", "link", "set", host, "up")
        inside = self.prefix_command(i)
        _run(*inside, "ip", "addr", "add", f"10.201.{i}.2/30", "dev", peer)
        _run(*inside, "ip", "link", "set", peer, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        if self.limits.up_kbit:
            _run(*inside, "tc", "qdisc", "add", "dev", peer, "root", *self._tbf(self.limits.up_kbit))
        if self.limits.down_kbit:
            _run("tc", "qdisc", "add", "dev", host, "root", *self._tbf(self.limits.down_kbit))

    @staticmethod
    def _tbf(kbit: int) -> list[str]:
        # a bucket of ~50 ms of traffic (at least a few full frames) and a queue of up to 1 s
        burst = max(16_000, kbit * 1000 // 8 // 20)
        return ["tbf", "rate", f"{kbit}kbit", "burst", str(burst), "latency", "1s"]

    def remove(self) -> None:
        existing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        for i in range(MAX_CLIENTS):
            if self.namespace(i) in existing:
                subprocess.run(["ip", "netns", "del", self.namespace(i)], capture_output=True)
            if Path(f"/sys/class/net/{self.host_interface(i)}").exists():
                subprocess.run(["ip", "link", "del", self.host_interface(i)], capture_output=True)

    def counters(self) -> LinkCounters:
        """Traffic so far over every client link, as the host side sees it (rx: uplink, tx: downlink)."""
        totals = dict.fromkeys(("rx_bytes", "tx_bytes", "rx_packets", "tx_packets"), 0)
        for i in range(self.clients):
            stats = Path(f"/sys/class/net/{self.host_interface(i)}/statistics")
            for name in totals:
                totals[name] += int((stats / name).read_text())
        retransmitted_up = sum(_retransmitted_segments(self.prefix_command(i)) for i in range(self.clients))
        return LinkCounters(totals["rx_bytes"], totals["tx_bytes"], totals["rx_packets"], totals["tx_packets"],
                            retransmitted_up, _retransmitted_segments([]))

"""Clients on their own (slow) network: namespaces, veth links and tbf, as the Flower comparison uses them.

Root only: skipped, saying why, where network namespaces cannot be made.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import FAST_CLIENT, FAST_SERVER, Cluster, free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from netlab import LinkLimits, NetLab, why_unavailable  # noqa: E402

pytestmark = pytest.mark.skipif(why_unavailable() is not None, reason=f"netlab: {why_unavailable()}")


@pytest.mark.slow
def test_a_federation_across_namespaces_is_counted_on_the_links(cluster: Cluster) -> None:
    port = free_port()
    with NetLab(2, prefix="fsqt") as lab:
        cluster.server(*FAST_SERVER, "--listen", f"0.0.0.0:{port}", "--min-clients", "2", "--rounds", "2",
                       port=port)
        before = lab.counters()
        for i in range(2):
            cluster.spawn(f"client-{i}", [*lab.prefix_command(i), sys.executable, "-m", "fedsqueeze.apps", "client",
                                          "--server", lab.server_address(i, port), "--insecure",
                                          "--client-id", f"client-{i}", *FAST_CLIENT])
        assert cluster.wait("server", 120) == 0, cluster.logs()
        traffic = lab.counters() - before
    up, down = traffic.bytes_up, traffic.bytes_down
    report = cluster.report()
    assert [r["updates"] for r in report["rounds"]] == [2, 2]
    # the kernel saw every gRPC message byte the server metered, plus framing and headers
    assert up >= report["bytes_up"] and down >= report["bytes_down"]
    assert up < 2 * report["bytes_up"] + 200_000 and down < 2 * report["bytes_down"] + 200_000


def test_tbf_limits_a_client_uplink() -> None:
    payload = 250_000   # 2 Mbit: about one second at 2 Mbit/s
    with NetLab(1, LinkLimits(up_kbit=2000), prefix="fsqt") as lab, socket.socket() as listener:
        listener.bind((lab.host_ip(0), 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        received: list[float] = []

        def receive() -> None:
            connection, _ = listener.accept()
            with connection:
                got, first = 0, None
                while chunk := connection.recv(65536):
                    first = first or time.monotonic()
                    got += len(chunk)
                received.extend([got, time.monotonic() - first])

        reader = threading.Thread(target=receive)
        reader.start()
        sender = (f"import socket; s = socket.create_connection(('{lab.host_ip(0)}', {port})); "
                  f"s.sendall(bytes({payload})); s.close()")
        subprocess.run([*lab.prefix_command(0), sys.executable, "-c", sender], check=True, timeout=60)
        reader.join(60)
    got, seconds = received
    assert got == payload
    assert seconds > 0.7 * payload * 8 / 2_000_000, f"{payload} B in {seconds:.2f} s: faster than 2 Mbit/s"

"""TLS is the default: the server will not serve plaintext unless told, and a TLS federation trains."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fedsqueeze.certs import make_certificates

from conftest import FAST_SERVER, Cluster


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA, and a server certificate it signs for 127.0.0.1 and localhost."""
    make_certificates(directory, ["localhost", "127.0.0.1"], [], days=1)
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


def test_server_refuses_to_start_without_tls_or_insecure(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "fedsqueeze.apps", "server", "--data", "synthetic", "--listen",
                             "127.0.0.1:0"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "TLS by default" in result.stderr and "--insecure" in result.stderr


def test_federation_over_tls(cluster: Cluster) -> None:
    ca, cert, key = make_ca_and_server_cert(cluster.root)
    plaintext = [a for a in FAST_SERVER if a != "--insecure"]
    cluster.server(*plaintext, "--tls-cert", str(cert), "--tls-key", str(key), "--rounds", "1",
                   "--min-clients", "1")
    health = subprocess.run([sys.executable, "-m", "fedsqueeze.apps", "health", "--server",
                             f"127.0.0.1:{cluster.port}", "--root-certificates", str(ca)],
                            capture_output=True, text=True, timeout=60)
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING"), health.stderr
    cluster.fedsqueeze("tls-client", "client", "--server", f"127.0.0.1:{cluster.port}", "--root-certificates",
                       str(ca), "--client-id", "tls-client", "--data", "synthetic")
    # A client that does not trust the CA never gets in.
    cluster.fedsqueeze("untrusting", "client", "--server", f"127.0.0.1:{cluster.port}", "--client-id",
                       "untrusting", "--data", "synthetic", "--max-backoff", "1")
    assert cluster.wait("server", 120) == 0
    assert cluster.wait("tls-client", 30) == 0
    assert cluster.report()["rounds"][0]["updates"] == 1
    assert "untrusting" not in cluster.log("server")
    assert "unreachable" in cluster.log("untrusting")

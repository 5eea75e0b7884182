"""TLS is the default: the server will not serve plaintext unless told, and a TLS federation trains."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import FAST_SERVER, Cluster


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA, and a server certificate it signs for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("test CA")).issuer_name(_name("test CA"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).add_extension(san, critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_server_refuses_to_start_without_tls_or_insecure(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "fedsqueeze", "server", "--data", "synthetic", "--listen",
                             "127.0.0.1:0"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "TLS by default" in result.stderr and "--insecure" in result.stderr


def test_federation_over_tls(cluster: Cluster) -> None:
    ca, cert, key = make_ca_and_server_cert(cluster.root)
    plaintext = [a for a in FAST_SERVER if a != "--insecure"]
    cluster.server(*plaintext, "--tls-cert", str(cert), "--tls-key", str(key), "--rounds", "1",
                   "--min-clients", "1")
    health = subprocess.run([sys.executable, "-m", "fedsqueeze", "health", "--server",
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

"""Development credentials: a certificate authority, the server's TLS certificate, client identities.

``fedsqueeze certs --out DIR --clients a,b`` writes ``ca.pem`` (what clients
trust), ``ca.key``, ``server.pem``/``server.key`` (valid for the given host
names and IP addresses), and per client (``operator`` always among them, for
``fedsqueeze status``) an enrolment token ``<name>.token`` plus a client
certificate ``<name>.pem``/``<name>.key`` whose common name is its id, for
servers run with ``--require-client-certs --client-ca ca.pem`` (mutual TLS).
The server's ``tokens.json`` holds only the tokens' hashes, with an expiry
when ``token_days`` is given. For development and the
compose cluster; a real fleet has its own PKI and enrolment.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsqueeze.enrolment import OPERATOR, new_token, token_hash


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_certificates(out: Path, hosts: Sequence[str], clients: Sequence[str], days: int = 365,
                      token_days: float = 0) -> list[Path]:
    """Write a CA, a server certificate for ``hosts`` and one client certificate and token per name; return the
    paths. Tokens expire after ``token_days`` (0: never)."""
    if not hosts:
        raise ValueError("give at least one server host name or address")
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = {"not_valid_before": now - datetime.timedelta(minutes=5),
             "not_valid_after": now + datetime.timedelta(days=days)}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("fedsqueeze development CA"))
          .issuer_name(_name("fedsqueeze development CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    _write_cert(out / "ca.pem", ca)
    _write_key(out / "ca.key", ca_key)
    written = [out / "ca.pem", out / "ca.key"]

    def issue(file_stem: str, common_name: str, usage: x509.ObjectIdentifier,
              san: x509.SubjectAlternativeName | None) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        _write_cert(out / f"{file_stem}.pem", builder.sign(ca_key, hashes.SHA256()))
        _write_key(out / f"{file_stem}.key", key)
        written.extend([out / f"{file_stem}.pem", out / f"{file_stem}.key"])

    issue("server", hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, _san(hosts))
    digests: dict[str, str | dict[str, str]] = {}
    expires = (now + datetime.timedelta(days=token_days)).isoformat() if token_days > 0 else None
    for client in dict.fromkeys([*clients, OPERATOR]):
        if not client or "/" in client or client in ("ca", "server", "tokens"):
            raise ValueError(f"bad client name {client!r}")
        issue(client, client, ExtendedKeyUsageOID.CLIENT_AUTH, None)
        token = new_token()
        (out / f"{client}.token").write_text(token + "\n")
        os.chmod(out / f"{client}.token", 0o600)
        digests[client] = {"sha256": token_hash(token), "expires": expires} if expires else token_hash(token)
        written.append(out / f"{client}.token")
    (out / "tokens.json").write_text(json.dumps(digests, indent=2) + "\n")
    written.append(out / "tokens.json")
    return written

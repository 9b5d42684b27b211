"""QEMU TLS credentials for a live migration (``tls-creds-x509``, QEMU's file names).

For each migration the source makes a CA of its own (a fresh key, its name unique, never
written anywhere) and issues with it a server certificate for the target's underlay address
and a client certificate for itself, both valid a day; then the CA's key is dropped. The
target's certificate, key and the CA go to the target with the migration's request, over the
hosts' authenticated TLS API. Each QEMU trusts that one CA alone: the stream and the disk
copies are encrypted, and each end checks that the other is the host of this migration.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import uuid
from pathlib import Path
from typing import Literal

Role = Literal["server", "client"]
VALID = datetime.timedelta(days=1)


def issue(server_address: str) -> dict[str, dict[str, str]]:
    """``{"server": {ca, cert, key}, "client": {ca, cert, key}}`` (PEM text)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
                ) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + VALID))

    def pem(key: ec.EllipticCurvePrivateKey) -> str:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name(f"Corral migration CA {uuid.uuid4().hex}")
    ca = (builder(ca_name, ca_name, ca_key)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    out = {}
    for role, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH),
                        ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (builder(name(f"corral migration {role}"), ca_name, key)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if role == "server":
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(server_address))]), critical=False)
        cert = b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        out[role] = {"ca": ca_pem, "cert": cert.decode(), "key": pem(key)}
    return out


def creds_dir(vm_dir: Path, role: Role) -> Path:
    return vm_dir / f".migrate-tls-{role}"


def write(vm_dir: Path, role: Role, creds: dict[str, str]) -> Path:
    """A directory of ``creds`` (from :func:`issue`) for ``role``, as QEMU names them."""
    d = creds_dir(vm_dir, role)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(mode=0o700)
    (d / "ca-cert.pem").write_text(creds["ca"])
    (d / f"{role}-cert.pem").write_text(creds["cert"])
    fd = os.open(d / f"{role}-key.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(creds["key"])
    return d


def remove(vm_dir: Path, role: Role) -> None:
    shutil.rmtree(creds_dir(vm_dir, role), ignore_errors=True)

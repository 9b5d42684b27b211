"""QEMU TLS credentials for a live migration (``tls-creds-x509``, QEMU's file names).

Each daemon has a CA of its own (``HOME/tls/ca.crt``, made with its API's certificate; see
:mod:`corral.api.tls`). For one migration each side issues itself a short-lived certificate
from its CA (the target a server certificate for its underlay address, the source a client
certificate) and trusts the other side's CA alone, sent along with the migration's request
and its answer over the authenticated TLS API. So the stream and the disk copies are
encrypted, and each QEMU checks that the other end is the host its daemon talked to. A
daemon serving a certificate of the user's own (``api.tls_cert``) has no CA key: its
migrations go unencrypted, and the answer says so.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
from pathlib import Path
from typing import Literal

Role = Literal["server", "client"]
VALID = datetime.timedelta(days=1)


def ca_pem(home: Path) -> str | None:
    """This daemon's CA certificate, when it has the CA's key to issue with."""
    tls = home / "tls"
    if not (tls / "ca.key").is_file() or not (tls / "ca.crt").is_file():
        return None
    return (tls / "ca.crt").read_text()


def creds_dir(vm_dir: Path, role: Role) -> Path:
    return vm_dir / f".migrate-tls-{role}"


def write(home: Path, vm_dir: Path, role: Role, peer_ca: str, address: str | None = None
          ) -> Path:
    """A directory of credentials for ``role``: a fresh key and certificate from this
    daemon's CA (for ``address``, a server's), and the peer's CA as the one trusted."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    tls = home / "tls"
    ca = x509.load_pem_x509_certificate((tls / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((tls / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else \
        ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                           f"corral migration {role}")]))
               .issuer_name(ca.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + VALID)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if address is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    d = creds_dir(vm_dir, role)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(mode=0o700)
    (d / "ca-cert.pem").write_text(peer_ca)
    (d / f"{role}-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(d / f"{role}-key.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return d


def remove(vm_dir: Path, role: Role) -> None:
    shutil.rmtree(creds_dir(vm_dir, role), ignore_errors=True)

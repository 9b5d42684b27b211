"""The TLS listener's certificate: the user's own (``api.tls_cert`` + ``api.tls_key``), or
one the daemon makes on its first start with ``cryptography``::

    HOME/tls/ca.crt, ca.key          a CA of this daemon (ECDSA P-256, ten years)
    HOME/tls/server.crt, server.key  the server's, signed by that CA, for localhost, the
                                     host's name and addresses and the listen address

Keys are written 0600 in a 0700 directory and never replaced: clients pin the server
certificate's SHA-256 fingerprint (trust on first use), or trust ``ca.crt``.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
from pathlib import Path

from corral import settings
from corral.errors import InvalidSpec

YEARS = 10


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[v6]:PORT`` for IPv6) as (address, port).

    :raises InvalidSpec: it is not an IP address and a port in 1-65535.
    """
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        number = 0
    if not sep or not 0 < number < 65536:
        raise InvalidSpec("listen", f"'{text}' is not ADDR:PORT (an IP address and a port, "
                                    "e.g. 0.0.0.0:8443 or [::]:8443)")
    return host, number


def fingerprint(cert_pem: bytes) -> str:
    """The SHA-256 fingerprint of the first certificate in ``cert_pem`` (its DER bytes), as
    lowercase hex: what a client sees as the server's certificate."""
    import ssl

    end = "-----END CERTIFICATE-----"
    first = cert_pem.decode().split(end)[0].strip() + "\n" + end + "\n"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(first)).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _names(listen_host: str) -> list[str]:
    """The names a client may check the certificate against (with ``ca``; a pinned
    fingerprint needs none): loopback, the host's name and the listen address."""
    names = {"localhost", "127.0.0.1", "::1", socket.gethostname()}
    if listen_host not in ("0.0.0.0", "::"):
        names.add(listen_host)
    return sorted(names)


def ensure_certificate(home: Path, listen_host: str) -> tuple[Path, Path]:
    """(certificate, key) to serve with: the configured pair, else this daemon's own
    (made now if it has none).

    :raises InvalidSpec: only one of ``api.tls_cert`` and ``api.tls_key`` is set, or a
        file of them is missing.
    """
    cert_s, key_s = settings.value("api.tls_cert"), settings.value("api.tls_key")
    if cert_s or key_s:
        if not (cert_s and key_s):
            raise InvalidSpec("api.tls_cert", "give both the certificate and its key "
                                              "(CORRAL_TLS_CERT and CORRAL_TLS_KEY)")
        for value in (cert_s, key_s):
            if not Path(value).is_file():
                raise InvalidSpec("api.tls_cert", f"{value} is not a file")
        return Path(cert_s), Path(key_s)
    tls = home / "tls"
    tls.mkdir(mode=0o700, exist_ok=True)
    os.chmod(tls, 0o700)
    cert, key = tls / "server.crt", tls / "server.key"
    if not (cert.exists() and key.exists()):
        _make(tls, listen_host)
    return cert, key


def _make(tls: Path, listen_host: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    until = now + datetime.timedelta(days=365 * YEARS)
    host = socket.gethostname()

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corral"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name(f"Corral CA {host}"))
          .issuer_name(name(f"Corral CA {host}")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for entry in _names(listen_host):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(entry.split("%")[0])))
        except ValueError:
            alt.append(x509.DNSName(entry))
    server = (x509.CertificateBuilder().subject_name(name(host)).issuer_name(ca.subject)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now).not_valid_after(until)
              .add_extension(x509.SubjectAlternativeName(alt), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    _write_private(tls / "ca.key", pem_key(ca_key))
    (tls / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_private(tls / "server.key", pem_key(key))
    (tls / "server.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM)
                                     + ca.public_bytes(serialization.Encoding.PEM))

"""The client's side of a remote daemon: TLS to ``https://HOST:PORT`` with the certificate
checked, and the remotes the CLI knows (``corral remote add|list|rm|switch``).

Trust is one of: the server certificate's SHA-256 ``fingerprint`` pinned (trust on first
use: ``corral remote add`` shows it and stores it), a ``ca`` that signs it, or the system's
CAs. A certificate that is not trusted is :class:`~corral.errors.Untrusted`, naming the
fingerprint the daemon showed, and nothing is sent.

Remotes live in ``$XDG_CONFIG_HOME/corral/remotes.json`` (``~/.config/…``), mode 0600 (it
holds tokens): ``{"current": NAME|null, "remotes": {NAME: {url, token, fingerprint}}}``.
Standard library only; imported only when a remote is used.
"""

from __future__ import annotations

import json
import os

from corral import errors

# the CLI reads the remotes on its lean path: no typing, ssl, socket, urllib or pathlib
# until a remote is used
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    import ssl
    from pathlib import Path
    from typing import Any

LOCAL = "local"  # the remote name of this host's own daemon (its unix socket)


def normalize_fingerprint(text: str) -> str:
    """``AB:CD:…`` or ``abcd…`` as 64 lowercase hex digits.

    :raises InvalidSpec: it is not a SHA-256 fingerprint.
    """
    fp = text.replace(":", "").strip().lower()
    if len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
        raise errors.InvalidSpec("fingerprint", f"'{text[:80]}' is not a SHA-256 fingerprint "
                                                "(64 hex digits)")
    return fp


def parse_url(url: str) -> tuple[str, int]:
    """:raises InvalidSpec: unless ``url`` is ``https://HOST:PORT``."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme != "https" or not parts.hostname or port is None or \
            parts.path not in ("", "/") or parts.query or parts.username:
        raise errors.InvalidSpec("url", f"'{url[:100]}' is not https://HOST:PORT")
    return parts.hostname, port


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


class Remote:
    """How to reach and trust one remote daemon; :meth:`connect` gives a TLS socket."""

    def __init__(self, url: str, fingerprint: str | None = None, ca: str | None = None
                 ) -> None:
        self.url = url
        self.host, self.port = parse_url(url)
        self.fingerprint = normalize_fingerprint(fingerprint) if fingerprint else None
        self.ca = ca

    def _context(self) -> ssl.SSLContext:
        import ssl

        if self.fingerprint is not None:  # the pin is the trust: no chain, no names
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context(cafile=self.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def _raw(self, timeout: float | None) -> socket.socket:
        import socket

        try:
            raw = socket.create_connection((self.host, self.port), timeout)
            # small requests and answers: no waiting for the peer's delayed ACK
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return raw
        except (ConnectionRefusedError, TimeoutError):
            raise
        except OSError as err:
            raise errors.DaemonUnavailable(f"cannot reach {self.url}: "
                                           f"{err.strerror or err}") from err

    def connect(self, timeout: float | None) -> ssl.SSLSocket:
        """A TLS connection whose certificate is trusted.

        :raises Untrusted: the certificate is not the pinned one, or no CA trusted signs it.
        :raises DaemonUnavailable: the host cannot be reached.
        """
        import ssl

        raw = self._raw(timeout)
        try:
            sock = self._context().wrap_socket(raw, server_hostname=self.host)
        except ssl.SSLCertVerificationError as err:
            raw.close()
            seen = self.peer_fingerprint(timeout)
            raise errors.Untrusted(
                f"the daemon at {self.url} shows a certificate that is not trusted "
                f"({err.verify_message}); its SHA-256 fingerprint is {seen}: if that is the "
                "daemon's, 'corral remote add' it with --fingerprint", seen) from err
        except (ssl.SSLError, OSError) as err:
            raw.close()
            raise errors.DaemonUnavailable(f"no TLS handshake with {self.url}: {err}") from err
        if self.fingerprint is not None:
            seen = _sha256(sock.getpeercert(binary_form=True) or b"")
            if seen != self.fingerprint:
                sock.close()
                raise errors.Untrusted(
                    f"the daemon at {self.url} shows a certificate with SHA-256 fingerprint "
                    f"{seen}, not the trusted {self.fingerprint}: someone may be in between; "
                    "if its certificate was remade, remove and add the remote again", seen)
        return sock

    def peer_fingerprint(self, timeout: float | None = 10.0) -> str:
        """The SHA-256 fingerprint of the certificate the daemon shows (nothing trusted)."""
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            raw = self._raw(timeout)
        except ConnectionRefusedError as err:
            raise errors.DaemonUnavailable(f"no Corral daemon answers at {self.url}; is it "
                                           "serving with --listen?") from err
        except TimeoutError as err:
            raise errors.DaemonUnavailable(f"{self.url} did not answer in {timeout:g} s; is "
                                           "the address right?") from err
        try:
            with ctx.wrap_socket(raw, server_hostname=self.host) as sock:
                return _sha256(sock.getpeercert(binary_form=True) or b"")
        except (ssl.SSLError, OSError) as err:
            raise errors.DaemonUnavailable(f"no TLS handshake with {self.url}: {err}") from err
        finally:
            raw.close()


# --- the remotes the CLI knows ---
def config_path() -> Path:
    from pathlib import Path

    return Path(_config_file())


def _config_file() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".config")
    return os.path.join(base, "corral", "remotes.json")


def load() -> dict[str, Any]:
    try:
        with open(_config_file(), encoding="utf-8") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        return {"current": None, "remotes": {}}
    except (OSError, ValueError) as err:
        raise errors.CorralError(f"cannot read {_config_file()}: {err}") from err
    return data if isinstance(data, dict) else {"current": None, "remotes": {}}


def save(data: dict[str, Any]) -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def get(name: str) -> dict[str, Any]:
    """:raises NotFound: no remote of that name."""
    entry = load()["remotes"].get(name)
    if not isinstance(entry, dict):
        raise errors.NotFound(f"no remote named '{name}'; see 'corral remote list'")
    return entry


def current() -> str | None:
    """The remote ``corral remote switch`` chose (None: this host's daemon)."""
    try:
        name = load().get("current")
    except errors.CorralError:
        return None
    return name if isinstance(name, str) and name != LOCAL else None

"""The remote API for real: a daemon listening over TLS on the host end of a veth pair, and a
client in another network namespace that drives a whole lifecycle of a real tiny guest with
the ``corral`` CLI and ``corral.Client`` (trust on first use of the certificate, a token).
Bad conditions: a pinned fingerprint that differs, no token, a revoked token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.api.tls import fingerprint

from .conftest import CORRAL, Daemon, running_daemon

pytestmark = pytest.mark.integration
TAG = os.getpid() % 10000
NETNS, HOST_END, NS_END = f"corral-rt{TAG}", f"crl-rh{TAG}", f"crl-rn{TAG}"
SUBNET = f"10.254.{TAG % 250}"
HOST_IP, NS_IP, PORT = f"{SUBNET}.1", f"{SUBNET}.2", 18000 + TAG % 1000


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    """Another network namespace joined to the host by a veth pair (host end HOST_IP)."""
    _ip("netns", "add", NETNS)
    try:
        _ip("link", "add", HOST_END, "type", "veth", "peer", "name", NS_END)
        _ip("link", "set", NS_END, "netns", NETNS)
        _ip("addr", "add", f"{HOST_IP}/30", "dev", HOST_END)
        _ip("link", "set", HOST_END, "up")
        _ip("-n", NETNS, "addr", "add", f"{NS_IP}/30", "dev", NS_END)
        _ip("-n", NETNS, "link", "set", NS_END, "up")
        _ip("-n", NETNS, "link", "set", "lo", "up")
        yield NETNS
    finally:
        subprocess.run(["ip", "link", "del", HOST_END], capture_output=True)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    assert NETNS not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                       text=True).stdout


@dataclass
class Remote:
    daemon: Daemon
    url: str
    fingerprint: str
    config: Path  # the remote client's XDG_CONFIG_HOME

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 240
            ) -> subprocess.CompletedProcess[str]:
        """``corral ARGS`` inside the other namespace, with no way to the local socket."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        clean.update({"XDG_CONFIG_HOME": str(self.config),
                      "CORRAL_SOCKET": "/nonexistent/corral.sock", **(env or {})})
        return subprocess.run(["ip", "netns", "exec", NETNS, CORRAL, *args], env=clean,
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def remote(image_path: str, namespace: str) -> Iterator[Remote]:
    with running_daemon(image_path, CORRAL_LISTEN=f"{HOST_IP}:{PORT}") as d, \
            tempfile.TemporaryDirectory(prefix="crl-cfg-") as cfg:
        cert = d.home / "tls" / "server.crt"
        deadline = time.monotonic() + 30
        while not cert.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert oct((d.home / "tls" / "server.key").stat().st_mode & 0o777) == "0o600"
        assert oct((d.home / "tls").stat().st_mode & 0o777) == "0o700"
        yield Remote(d, f"https://{HOST_IP}:{PORT}", fingerprint(cert.read_bytes()), Path(cfg))


def _secret(d: Daemon, name: str, role: str) -> str:
    res = d.cli("token", "create", name, "--role", role, "--json", check=True)
    secret: str = json.loads(res.stdout)["secret"]
    return secret


def test_a_whole_lifecycle_from_another_namespace(remote: Remote) -> None:
    d = remote.daemon
    token = _secret(d, "remote-op", "operator")
    # trust on first use: the fingerprint is shown, and kept
    res = remote.run("remote", "add", "lab", remote.url, "--token", token,
                     "--accept-certificate")
    assert res.returncode == 0, res.stderr
    assert remote.fingerprint in res.stderr
    stored = json.loads((remote.config / "corral" / "remotes.json").read_text())
    assert stored["remotes"]["lab"]["fingerprint"] == remote.fingerprint
    assert oct((remote.config / "corral" / "remotes.json").stat().st_mode & 0o777) == "0o600"
    res = remote.run("--remote", "lab", "run", "far", "--memory", "256M", "--json")
    assert res.returncode == 0, res.stderr
    vm = json.loads(res.stdout)
    assert vm["state"] == "running" and vm["ready"] and vm["project"] == "default"
    pid = d.client.get("far")["pid"]
    assert Path(f"/proc/{pid}").exists()  # a real QEMU on the daemon's host
    for verb, state in (("pause", "paused"), ("resume", "running")):
        res = remote.run("--remote", "lab", verb, "far", "--json")
        assert res.returncode == 0 and json.loads(res.stdout)["state"] == state, res.stderr
        assert d.client.get("far")["state"] == state
    res = remote.run("--remote", "lab", "exec", "far", "--", "uname", "-m")
    assert res.returncode == 0 and res.stdout.strip() == "x86_64", res.stderr
    # the same with CORRAL_URL/CORRAL_TOKEN, and with the Python Client
    res = remote.run("list", "--json", env={"CORRAL_URL": remote.url, "CORRAL_TOKEN": token,
                                            "CORRAL_FINGERPRINT": remote.fingerprint})
    assert res.returncode == 0 and [v["name"] for v in json.loads(res.stdout)] == ["far"]
    code = ("from corral import Client; import sys\n"
            f"c = Client(url={remote.url!r}, token={token!r}, fingerprint={remote.fingerprint!r})\n"
            "print(c.stop('far')['state']); c.rm('far'); print(len(c.list()))")
    res = subprocess.run(["ip", "netns", "exec", NETNS, sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.split() == ["stopped", "0"], res.stderr
    audit = [e for e in d.client.events() if e["kind"] == "audit"
             and e["detail"]["who"] == "remote-op"]
    actions = [e["detail"]["action"] for e in audit]
    for action in ("POST /v1/vms", "POST /v1/vms/{name}/pause", "POST /v1/vms/{name}/stop",
                   "DELETE /v1/vms/{name}"):
        assert action in actions, actions
    assert all(e["vm"] == "far" for e in audit)


def test_untrusted_certificate_no_token_and_revoked(remote: Remote) -> None:
    d = remote.daemon
    token = _secret(d, "remote-view", "viewer")
    wrong = "ab" * 32
    res = remote.run("list", env={"CORRAL_URL": remote.url, "CORRAL_TOKEN": token,
                                  "CORRAL_FINGERPRINT": wrong})
    assert res.returncode == 17 and remote.fingerprint in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = remote.run("list", env={"CORRAL_URL": remote.url, "CORRAL_TOKEN": token})
    assert res.returncode == 17 and remote.fingerprint in res.stderr  # no pin, no CA
    pinned = {"CORRAL_URL": remote.url, "CORRAL_FINGERPRINT": remote.fingerprint}
    res = remote.run("list", env=pinned)
    assert res.returncode == 13 and "token" in res.stderr, res.stderr
    res = remote.run("list", env={**pinned, "CORRAL_TOKEN": token})
    assert res.returncode == 0, res.stderr
    res = remote.run("pause", "x", env={**pinned, "CORRAL_TOKEN": token})
    assert res.returncode == 14 and "viewer" in res.stderr, res.stderr
    d.cli("token", "revoke", "remote-view", check=True)
    res = remote.run("list", env={**pinned, "CORRAL_TOKEN": token})
    assert res.returncode == 13 and "revoked" in res.stderr, res.stderr
    # trusting the daemon's CA instead of a pin (the certificate names the listen address)
    res = remote.run("whoami", env={"CORRAL_URL": remote.url, "CORRAL_TOKEN": _secret(
        d, "remote-ca", "viewer"), "CORRAL_CA": str(d.home / "tls" / "ca.crt")})
    assert res.returncode == 0 and "remote-ca: viewer in default" in res.stdout, res.stderr

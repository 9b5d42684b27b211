"""Boot the extra images straight under QEMU (no daemon yet) and check them through the agent.

- ``tiny-arm64``: ``qemu-system-aarch64 -machine virt -cpu cortex-a57`` under TCG; the agent's
  ``guest-exec uname -m`` must say ``aarch64``. Skipped without ``qemu-system-aarch64``
  (Debian package ``qemu-system-arm``). The image is built into ``build/images`` once.
- ``debian``: q35, TCG, 2 vCPUs, 1 GiB, NVMe root overlay, a NoCloud seed on virtio-blk and
  user networking with an ssh ``hostfwd``. cloud-init must finish from NoCloud, set the
  hostname, run ``runcmd`` and create the user whose key then logs in over ssh. Slow (about a
  minute); runs only when ``CORRAL_DEBIAN_IMAGE`` names a built image directory.

The agent protocol is QGA over a unix socket: send ``0xFF`` and ``guest-sync-delimited`` with a
random id, skip everything up to the ``0xFF`` the agent sends back and any stale reply, then
one JSON object per line.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.images.arm64 import NIC_OPTIONS, arm64_machine_args, build_tiny_arm64

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
AGENT_PORT = "org.qemu.guest_agent.0"


class Agent:
    """A minimal synchronous QGA client."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _read_reply(self, deadline: float) -> dict[str, Any] | None:
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionError("QEMU closed the agent socket")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        line = line.rpartition(b"\xff")[2].strip()
        return json.loads(line) if line else {}

    def sync(self, within: float) -> float:
        """Wait until the agent answers; returns the monotonic time it did."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            token = random.randrange(1, 2**31)
            self.buf = b""
            self.sock.sendall(b"\xff" + json.dumps(
                {"execute": "guest-sync-delimited", "arguments": {"id": token}}).encode())
            attempt = min(time.monotonic() + 1.0, deadline)
            while (reply := self._read_reply(attempt)) is not None:
                if reply.get("return") == token:
                    return time.monotonic()
        raise TimeoutError(f"the guest agent did not answer within {within:.0f} s")

    def call(self, command: str, within: float = 30, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        reply = self._read_reply(time.monotonic() + within)
        if reply is None:
            raise TimeoutError(f"{command}: no reply within {within} s")
        if "error" in reply:
            raise RuntimeError(f"{command}: {reply['error']}")
        return reply["return"]

    def shutdown(self) -> None:
        """``guest-shutdown`` (powerdown); it never replies."""
        self.sock.sendall(b'{"execute":"guest-shutdown"}\n')

    def exec(self, path: str, *args: str, within: float = 120) -> tuple[int, str, str]:
        pid = self.call("guest-exec", path=path, arg=list(args), **{"capture-output": True})
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            st = self.call("guest-exec-status", pid=pid["pid"])
            if st["exited"]:
                out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
                err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
                return int(st.get("exitcode", -1)), out, err
            time.sleep(0.05)
        raise TimeoutError(f"guest-exec {path}: still running after {within} s")


@contextlib.contextmanager
def qemu(argv: list[str], run_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run QEMU; kill it (only this pid) afterwards and show its serial log on failure."""
    with (run_dir / "qemu.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        yield proc
    except BaseException:
        for name in ("qemu.log", "serial.log"):
            with contextlib.suppress(OSError):
                print(f"--- {name}\n" + (run_dir / name).read_text(errors="replace")[-6000:])
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def common_args(run_dir: Path, bus: str = "pci", nic: dict[str, str] | None = None,
                hostfwd: str = "") -> list[str]:
    nic_opts = "".join(f",{k}={v}" for k, v in (nic or {}).items())
    return [
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-chardev", f"file,id=serial0,path={run_dir / 'serial.log'}", "-serial", "chardev:serial0",
        "-qmp", f"unix:{run_dir / 'qmp.sock'},server=on,wait=off",
        "-netdev", f"user,id=n0{hostfwd}", "-device", f"virtio-net-{bus},netdev=n0{nic_opts}",
        "-chardev", f"socket,id=qga0,path={run_dir / 'qga.sock'},server=on,wait=off",
        "-device", f"virtio-serial-{bus}",
        "-device", f"virtserialport,chardev=qga0,name={AGENT_PORT}",
    ]


def connect_agent(run_dir: Path, proc: subprocess.Popen[bytes]) -> Agent:
    sock = run_dir / "qga.sock"
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert proc.poll() is None, (run_dir / "qemu.log").read_text()
        assert time.monotonic() < deadline, "QEMU made no agent socket"
        time.sleep(0.02)
    return Agent(sock)


@pytest.fixture(scope="module")
def arm64_image() -> Path:
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 is missing (apt-get install qemu-system-arm)")
    env = os.environ.get("CORRAL_ARM64_IMAGE")
    if env:
        return Path(env)
    return build_tiny_arm64(ROOT / "build" / "images" / "tiny-arm64")


def test_arm64_guest_agent_says_aarch64(arm64_image: Path, tmp_path: Path) -> None:
    meta = json.loads((arm64_image / "image.json").read_text())
    assert (meta["arch"], meta["machine"], meta["cpu"]) == ("aarch64", "virt", "cortex-a57")

    class Spec:
        memory_bytes, cpus, cpu_model = 256 << 20, 1, meta["cpu"]
        kernel = str(arm64_image / meta["kernel"])
        initrd = str(arm64_image / meta["initrd"])
        cmdline = meta["cmdline"] + " GUEST_HOSTNAME=arm1"

    argv = ["qemu-system-aarch64", *arm64_machine_args(Spec()),
            *common_args(tmp_path, nic=NIC_OPTIONS)]
    started = time.monotonic()
    with qemu(argv, tmp_path) as proc:
        agent = connect_agent(tmp_path, proc)
        ready = agent.sync(within=60) - started
        code, out, _ = agent.exec("uname", "-m")
        assert (code, out.strip()) == (0, "aarch64")
        print(f"arm64: agent answered {ready:.2f} s after QEMU started")
        agent.shutdown()
        assert proc.wait(20) == 0
        agent.close()


def _debian_image() -> Path:
    env = os.environ.get("CORRAL_DEBIAN_IMAGE")
    if not env:
        pytest.skip("set CORRAL_DEBIAN_IMAGE to a built debian image directory")
    image = Path(env)
    if not (image / "image.json").is_file():
        pytest.skip(f"{image} holds no image.json")
    for tool in ("qemu-system-x86_64", "qemu-img", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing")
    return image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_debian_cloud_init_applies_the_seed(tmp_path: Path) -> None:
    from corral.images.cloudinit import default_user_data, make_seed

    image = _debian_image()
    meta = json.loads((image / "image.json").read_text())
    assert meta["format"] == "qcow2" and meta["cloud_init"] and meta["agent"]
    disk = tmp_path / "vm.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str((image / meta["disk"]).absolute()), str(disk), "4G"], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")],
                   check=True)
    user_data = default_user_data("cloudtest", [(tmp_path / "key.pub").read_text()])
    user_data += "runcmd:\n  - [touch, /var/tmp/corral-runcmd-ran]\n"
    make_seed(tmp_path / "seed.iso", user_data=user_data,
              meta_data={"instance-id": "iid-cloudtest", "local-hostname": "cloudtest"})
    port = _free_port()
    argv = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg,tb-size=256",
            "-cpu", "max", "-smp", "2", "-m", "1024",
            "-kernel", str(image / meta["kernel"]), "-append", meta["cmdline"],
            *common_args(tmp_path, hostfwd=f",hostfwd=tcp:127.0.0.1:{port}-:22"),
            "-device", "virtio-rng-pci",
            "-drive", f"if=none,id=d0,file={disk},format=qcow2,discard=unmap",
            "-device", "nvme,drive=d0,serial=root0",
            "-drive", f"if=none,id=seed,file={tmp_path / 'seed.iso'},format=raw,readonly=on",
            "-device", "virtio-blk-pci,drive=seed"]
    started = time.monotonic()
    with qemu(argv, tmp_path) as proc:
        agent = connect_agent(tmp_path, proc)
        print(f"debian: agent answered {agent.sync(within=180) - started:.1f} s after start")
        code, out, err = agent.exec("cloud-init", "status", "--wait", "--long", within=300)
        print(f"debian: cloud-init done {time.monotonic() - started:.1f} s after start")
        assert code == 0 and "status: done" in out, out + err
        assert "DataSourceNoCloud" in out, out           # not the silent DataSourceNone
        assert agent.exec("hostname")[1].strip() == "cloudtest"
        assert agent.exec("test", "-f", "/var/tmp/corral-runcmd-ran")[0] == 0
        ssh = subprocess.run(
            ["ssh", "-i", str(tmp_path / "key"), "-p", str(port), "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "ConnectTimeout=20", "corral@127.0.0.1", "id -un; hostname; sudo -n true"],
            capture_output=True, text=True, timeout=90)
        assert ssh.returncode == 0, ssh.stderr
        assert ssh.stdout.split() == ["corral", "cloudtest"]
        agent.shutdown()
        assert proc.wait(60) == 0
        agent.close()

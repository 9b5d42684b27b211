"""Images through the daemon: the persistent tiny-disk root, image import and removal, an
arm64 guest under TCG, and cloud-init in the Debian image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import Daemon


def test_file_survives_a_reboot_on_the_disk_image(daemon: Daemon) -> None:
    c = daemon.client
    vm = c.create("disky", image="tiny-disk", start=True, wait=True)
    assert vm["disks"][0]["id"] == "root" and vm["disks"][0]["bus"] == "nvme"
    c.exec("disky", ["sh", "-c", "echo kept > /root/note; sync"])
    c.reboot("disky", wait=True)
    assert c.exec("disky", ["cat", "/root/note"])["stdout"] == b"kept\n"
    c.shutdown("disky", timeout=30)
    c.start("disky", wait=True)
    assert c.exec("disky", ["cat", "/root/note"])["stdout"] == b"kept\n"
    # the image itself is untouched: a new VM does not see the file
    c.create("fresh", image="tiny-disk", start=True, wait=True)
    assert c.exec("fresh", ["sh", "-c", "test -e /root/note; echo $?"])["stdout"] == b"1\n"
    c.destroy("disky")
    c.destroy("fresh")


def test_image_import_and_removal(daemon: Daemon, tmp_path: Path) -> None:
    d = daemon
    env = {**d.env, "CORRAL_HOME": str(d.home)}
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(1 << 20))
    res = d.cli("image", "import", "junk", str(junk))
    assert res.returncode == 2 and "not a disk image" in res.stderr
    # the file as its user knows it, not the daemon's upload under its home
    assert "the uploaded file" in res.stderr and str(d.home) not in res.stderr
    broken = tmp_path / "broken.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(broken), "64M"], check=True)
    broken.write_bytes(broken.read_bytes()[:1024])  # header only: the tables are gone
    res = d.cli("image", "import", "broken", str(broken))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert not (d.home / "images" / "broken").exists()

    # a real disk image: the tiny-disk root, imported under a new name, boots with --kernel
    tiny = next(Path(p) for p in env["CORRAL_IMAGE_PATH"].split(":")
                if (Path(p) / "tiny" / "root.qcow2").exists()) / "tiny"
    res = d.cli("image", "import", "mine", str(tiny / "root.qcow2"), "--agent",
                "--root-device", "nvme", "--json")
    assert res.returncode == 0, res.stderr
    imported = json.loads(res.stdout)
    assert imported["name"] == "mine" and imported["path"] == str(d.home / "images" / "mine")
    manifest = json.loads((d.home / "images" / "mine" / "image.json").read_text())
    assert manifest["disk"] == "root.qcow2" and manifest["source"] == "upload"
    assert list((d.home / "uploads").iterdir()) == []  # the upload was used up
    assert "mine" in d.cli("image", "list").stdout
    cmdline = json.loads((tiny.parent / "tiny-disk" / "image.json").read_text())["cmdline"]
    d.client.create("imp", image="mine", kernel=str(tiny / "vmlinux"), cmdline=cmdline,
                    start=True, wait=True)
    assert d.client.exec("imp", ["hostname"])["stdout"].strip() == b"imp"
    res = d.cli("image", "rm", "mine")
    assert res.returncode == 5 and "used by imp" in res.stderr
    d.client.destroy("imp")
    assert d.cli("image", "rm", "mine").returncode == 0
    assert not (d.home / "images" / "mine").exists()
    assert d.cli("image", "rm", "mine").returncode == 3


@pytest.mark.skipif(shutil.which("qemu-system-aarch64") is None,
                    reason="qemu-system-aarch64 is not installed (make test installs it)")
def test_arm64_guest(daemon: Daemon) -> None:
    if not any((Path(p) / "tiny-arm64" / "image.json").is_file()
               for p in daemon.env["CORRAL_IMAGE_PATH"].split(":")):
        pytest.skip("no tiny-arm64 image built (make test builds it)")
    d = daemon
    t0 = time.monotonic()
    res = d.cli("create", "arm", "--arch", "aarch64")
    assert res.returncode == 0, res.stderr
    vm = d.client.start("arm", wait=True)
    print(f"arm64 boot to agent: {time.monotonic() - t0:.2f} s")
    assert vm["arch"] == "aarch64" and vm["machine"] == "virt" and vm["accel"] == "tcg"
    res = d.cli("exec", "arm", "--", "uname", "-m")
    assert res.returncode == 0 and res.stdout.strip() == "aarch64"
    data = os.urandom(100_000)
    d.client.write_file("arm", "/tmp/blob", data)
    assert d.client.read_file("arm", "/tmp/blob") == data
    assert d.client.shutdown("arm", timeout=30)["state"] == "stopped"
    assert d.cli("create", "bad", "--arch", "aarch64", "--machine", "q35").returncode == 2
    d.client.destroy("arm")


@pytest.mark.slow
def test_cloud_init_in_the_debian_image(daemon: Daemon, tmp_path: Path) -> None:
    if not any((Path(p) / "debian" / "image.json").is_file()
               for p in daemon.env["CORRAL_IMAGE_PATH"].split(":")):
        pytest.skip("no debian image built (make test builds it)")
    d = daemon
    user_data = tmp_path / "user-data"
    user_data.write_text("#cloud-config\nhostname: from-cloud-init\n"
                         "runcmd:\n  - [sh, -c, 'echo done > /var/tmp/corral-marker']\n")
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxN3cKqJ0N8w0Zr3m7v2Gm2oM6m3V6sM0Zr3m7v2G"
                   " test@corral\n")
    t0 = time.monotonic()
    res = d.cli("create", "deb", "--image", "debian", "--memory", "1G", "--cpus", "2",
                "--user-data", str(user_data), "--ssh-key", str(key))
    assert res.returncode == 0, res.stderr
    d.client.start("deb", wait=True, timeout=240)
    print(f"debian boot to agent: {time.monotonic() - t0:.1f} s")
    out = d.client.exec("deb", ["cloud-init", "status", "--wait"], timeout=240)
    print(f"cloud-init done after {time.monotonic() - t0:.1f} s")
    assert b"status: done" in out["stdout"], out
    assert d.client.exec("deb", ["hostname"])["stdout"].strip() == b"from-cloud-init"
    marker = d.client.exec("deb", ["cat", "/var/tmp/corral-marker"])["stdout"]
    assert marker == b"done\n"
    keys = d.client.exec("deb", ["sh", "-c", "cat /home/*/.ssh/authorized_keys"])["stdout"]
    assert b"test@corral" in keys
    assert d.client.shutdown("deb", timeout=60)["state"] == "stopped"
    d.client.destroy("deb")

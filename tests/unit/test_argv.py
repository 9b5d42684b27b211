"""Golden files for generated QEMU command lines. Regenerate with CORRAL_REGEN_GOLDEN=1."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TypedDict

import pytest

from corral.domain.specs import DiskSpec, NicSpec, VMSpec
from corral.engine.qemu.argv import Listeners, RamFile, RunPaths, build

GOLDEN = Path(__file__).parent / "golden"


def spec(**over: object) -> VMSpec:
    base: dict[str, object] = dict(
        name="web", image="tiny", cpus=2, memory_bytes=256 << 20,
        kernel="/img/tiny/vmlinux", initrd="/img/tiny/initrd.lz4",
        cmdline="console=ttyS0 quiet", machine="q35", cpu_model="max",
        disks=[DiskSpec(path="/vms/web/disk0.qcow2", format="qcow2")],
        nics=[NicSpec(mac="52:54:00:00:00:01")], vmstate="/vms/web/vmstate.qcow2")
    base.update(over)
    return VMSpec.model_validate(base)


TEMPLATE_RAM = Path("/vms/src/templates/s1/ram")


class Launch(TypedDict, total=False):
    """build()'s keyword arguments, as the service passes them."""

    ram: RamFile
    incoming: bool
    taps: dict[int, int]


CASES: dict[str, tuple[VMSpec, Launch]] = {name: (case, {}) for name, case in {
    "q35": spec(),
    "microvm": spec(machine="microvm", disks=[], nics=[NicSpec(mac="52:54:00:00:00:02")]),
    "q35-nics": spec(disks=[], vmstate=None, nics=[
        NicSpec(mac="52:54:00:00:00:03", mode="network", network="lan", ip="10.20.0.10",
                ifname="crl-tweb.0", planned_for="web"),
        NicSpec(mac="52:54:00:00:00:04", hostfwd=["tcp::8022-:22", "udp:127.0.0.1:53-:53"]),
        NicSpec(mac="52:54:00:00:00:05", mode="network", network="dmz", ip="10.30.0.10",
                ifname="crl-tweb.2", planned_for="web", id="nic2", port="hp1")]),
    "kernel-no-agent": spec(agent=False, initrd=None, nics=[], vmstate=None,
                            disks=[DiskSpec(path="/data/raw.img", format="raw", readonly=True,
                                            owned=False)]),
    "aarch64-virt": spec(arch="aarch64", machine="virt", cpu_model="cortex-a57",
                         kernel="/img/tiny-arm64/Image", initrd="/img/tiny-arm64/initrd.lz4",
                         cmdline="console=ttyAMA0 quiet"),
    "nvme-root": spec(initrd=None, cmdline="console=ttyS0 root=/dev/nvme0n1 rw", disks=[
        DiskSpec(path="/vms/web/root.qcow2", format="qcow2", id="root", bus="nvme", boot=True),
        DiskSpec(path="/vms/web/disk1.qcow2", format="qcow2")]),
}.items()}
CASES.update({
    # engine/qemu/driver.py: the daemon opens the network NICs' taps and passes them
    "q35-tap-fds": (CASES["q35-nics"][0], {"taps": {0: 6, 2: 7}}),
    # service/saved.py: a restore waits for the saved state
    "incoming": (spec(), {"incoming": True}),
    # service/warm.py: the helper QEMU that makes a template writes guest RAM into the file
    "ram-file-template": (spec(), {"ram": RamFile(TEMPLATE_RAM, shared=True)}),
    # service/warm.py: a clone maps the template's RAM copy-on-write and reads device state
    "ram-file-clone": (spec(), {"ram": RamFile(TEMPLATE_RAM, shared=False), "incoming": True}),
})


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    vm, kwargs = CASES[case]
    # as the driver passes them: the daemon's listening sockets, QEMU's seccomp filter
    argv = build(vm, RunPaths(Path("/run/corral/web")), Path("/vms/web/serial.log"),
                 "tcg", tsc_khz=2600000, listeners=Listeners(qmp=3, console=4, agent=5),
                 sandbox=True, **kwargs)
    path = GOLDEN / f"argv-{case}.json"
    if os.environ.get("CORRAL_REGEN_GOLDEN"):
        path.write_text(json.dumps(argv, indent=1) + "\n")
    assert argv == json.loads(path.read_text())


def test_device_args_are_qemu_json() -> None:
    argv = build(CASES["q35"][0], RunPaths(Path("/r")), Path("/s"), "kvm")
    devices = [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-device"]
    assert {d["driver"] for d in devices} >= {"virtio-net-pci", "virtio-blk-pci",
                                               "virtserialport"}
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert "tsc_early_khz" not in argv[argv.index("-append") + 1]

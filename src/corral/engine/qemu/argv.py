"""Turn a VM spec into a QEMU command line. Pure: no I/O, so golden files can pin it.

Devices are JSON objects (``-device '{"driver": …}'``) in QEMU's own schema, so the same dict
can later feed ``device_add`` for hot-plug.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from corral.domain.nics import parse_hostfwd
from corral.domain.specs import DiskSpec, NicSpec, VMSpec
from corral.engine.driver import RamFile as RamFile  # re-exported for callers of build()

AGENT_PORT = "org.qemu.guest_agent.0"
VMSTATE_NODE = "vmstate"


HOTPLUG_PORTS = 4  # empty PCIe root ports on q35, so disks and NICs can be hot-plugged
#: QEMU's own seccomp filter at its strictest: no obsolete calls, no setuid and friends, no
#: fork or exec, no scheduler or resource changes (a denied call kills the process)
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


@dataclass(frozen=True)
class Listeners:
    """Listening sockets the daemon made and passes to QEMU (descriptor numbers): QEMU opens
    no path for them, and the daemon's connection waits in the socket's backlog until QEMU
    takes it, so there is nothing to poll for."""

    qmp: int
    console: int
    agent: int | None = None


def disk_node(index: int) -> str:
    return f"disk{index}"


def disk_blockdev(disk: DiskSpec, node: str) -> dict[str, object]:
    """The ``-blockdev`` / ``blockdev-add`` object of a disk. QEMU's image locking stays on,
    so a disk another QEMU holds read-write cannot be opened."""
    return {"driver": disk.format, "node-name": node, "read-only": disk.readonly,
            "file": {"driver": "file", "filename": disk.path, "node-name": f"{node}-file",
                     "read-only": disk.readonly}}


def disk_device(disk: DiskSpec, node: str, bus: str, port: str | None = None
                ) -> dict[str, object]:
    """The ``-device`` / ``device_add`` object of a virtio disk."""
    if disk.bus == "nvme":
        dev: dict[str, object] = {"driver": "nvme", "drive": node, "id": f"vd-{node}",
                                  "serial": node}
    else:
        dev = {"driver": f"virtio-blk-{bus}", "drive": node, "id": f"vd-{node}"}
    if port:
        dev["bus"] = port
    if disk.boot:
        dev["bootindex"] = 0
    return dev


def nic_netdev(nic: NicSpec, index: int, tap_fd: str | None = None) -> dict[str, object]:
    """The ``netdev_add`` object of a NIC's backend: QEMU's user-mode networking, or the tap
    the network service made, opened by the daemon and passed as ``tap_fd`` (a descriptor's
    number on the command line, a ``getfd`` name over QMP), else opened by QEMU by name. No
    scripts run."""
    netdev_id = "net" + nic.device(index).removeprefix("nic")
    if nic.mode == "user":
        # canonical again: a forward stored before they bound the loopback by default does now
        return {"type": "user", "id": netdev_id, "hostfwd": [
            {"str": parse_hostfwd("hostfwd", h).qemu()} for h in nic.hostfwd]}
    if tap_fd is not None:  # QEMU reads the tap's flags (virtio-net headers) from it
        return {"type": "tap", "id": netdev_id, "fd": tap_fd}
    return {"type": "tap", "id": netdev_id, "ifname": nic.ifname, "script": "no",
            "downscript": "no", "vnet_hdr": True}


def netdev_option(netdev: dict[str, object]) -> str:
    """A ``netdev_add`` object as the ``-netdev`` option string."""
    parts = [str(netdev["type"])]
    for key, value in netdev.items():
        if key == "type":
            continue
        if isinstance(value, list):
            parts += [f"{key}={_opt(item['str'])}" for item in value]
        else:
            parts.append(f"{key}={'on' if value is True else _opt(str(value))}")
    return ",".join(parts)


def nic_device(nic: NicSpec, index: int, bus: str) -> dict[str, object]:
    """The ``-device`` / ``device_add`` object of a virtio NIC."""
    device = nic.device(index)
    dev: dict[str, object] = {"driver": f"virtio-net-{bus}",
                              "netdev": "net" + device.removeprefix("nic"), "mac": nic.mac,
                              "id": device}
    if nic.port:
        dev["bus"] = nic.port
    return dev


@dataclass(frozen=True)
class RunPaths:
    """Where one VM's sockets and files live."""

    dir: Path

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def agent(self) -> Path:
        return self.dir / "qga.sock"

    @property
    def console(self) -> Path:
        return self.dir / "console.sock"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def log(self) -> Path:
        """QEMU's own output (its warnings, why it would not start)."""
        return self.dir / "qemu.log"

    def remove(self, keep_dir: bool = False) -> None:
        """Remove the sockets, pidfile and log a machine left (and the directory, if
        empty)."""
        for path in (self.qmp, self.agent, self.console, self.pidfile, self.log):
            path.unlink(missing_ok=True)
        if not keep_dir:
            with contextlib.suppress(OSError):
                self.dir.rmdir()


def monitor(run: RunPaths, spec: VMSpec) -> Path:
    """The monitor socket a VM's QEMU holds: its run directory's, or for a VM renamed since
    it was launched (a warm pool's clone handed out) the one its first name's had."""
    return RunPaths(run.dir.parent / spec.launched_as).qmp if spec.launched_as else run.qmp


def binary(arch: str) -> str:
    return f"qemu-system-{arch}"


def _opt(path: Path | str) -> str:
    """A path inside a QEMU ``key=value,...`` option: commas are doubled."""
    return str(path).replace(",", ",,")


def _dev(obj: dict[str, object]) -> str:
    return json.dumps(obj, separators=(",", ":"))


RAM_ID = "pc.ram"  # QEMU's own name for machine RAM, so states move between both backends


def _socket(run_path: Path, fd: int | None) -> str:
    return f"fd={fd}" if fd is not None else f"path={_opt(run_path)}"


def _channels(spec: VMSpec, run: RunPaths, serial_log: Path, listeners: Listeners | None,
              bus: str) -> list[str]:
    """The serial console (logged), the monitor and the guest agent's channel."""
    argv: list[str] = []
    con_fd, qmp_fd, qga_fd = ((None, None, None) if listeners is None else
                              (listeners.console, listeners.qmp, listeners.agent))
    argv += [
        "-chardev", f"socket,id=serial0,{_socket(run.console, con_fd)}"
                    f",server=on,wait=off,logfile={_opt(serial_log)},logappend=on",
        "-serial", "chardev:serial0",
        "-chardev", f"socket,id=qmp0,{_socket(run.qmp, qmp_fd)},server=on,wait=off",
        "-mon", "chardev=qmp0,mode=control",
    ]
    if spec.agent:
        argv += [
            "-chardev", f"socket,id=qga0,{_socket(run.agent, qga_fd)}"
                        ",server=on,wait=off",
            "-device", _dev({"driver": f"virtio-serial-{bus}", "id": "vser0"}),
            "-device", _dev({"driver": "virtserialport", "chardev": "qga0", "id": "qga0port",
                             "name": AGENT_PORT}),
        ]
    return argv


def build(spec: VMSpec, run: RunPaths, serial_log: Path, accel: str,
          tsc_khz: int | None = None, ram: RamFile | None = None, incoming: bool = False,
          listeners: Listeners | None = None, sandbox: bool = False,
          taps: dict[int, int] | None = None) -> list[str]:
    """The full argv for ``spec``. With ``incoming`` QEMU waits for a migration stream
    (``-incoming defer``: a saved state or a warm start's device state) instead of booting.
    With ``listeners`` the monitor, console and agent sockets are the daemon's descriptors
    (else QEMU makes them in ``run``), and with ``taps`` (NIC index -> descriptor) so are the
    NICs' taps; ``sandbox`` adds the seccomp filter :data:`SANDBOX`.

    ``-no-shutdown`` keeps QEMU alive after a guest poweroff only where the service wants it;
    here a guest poweroff ends the process, and the exit is what marks the VM stopped.
    """
    microvm = spec.machine == "microvm"
    bus = "device" if microvm else "pci"
    machine = {"microvm": "microvm,rtc=on"}.get(spec.machine, spec.machine)
    machine += f",memory-backend={RAM_ID}"
    size = spec.memory_bytes
    if ram is None:
        backend: dict[str, object] = {"qom-type": "memory-backend-ram", "id": RAM_ID,
                                      "size": size}
    else:
        backend = {"qom-type": "memory-backend-file", "id": RAM_ID, "size": size,
                   "mem-path": str(ram.path), "share": ram.shared}
    cmdline = spec.cmdline
    if tsc_khz and spec.arch == "x86_64" and "tsc_early_khz=" not in cmdline:
        cmdline += f" tsc_early_khz={tsc_khz}"
    cmdline += f" GUEST_HOSTNAME={spec.name}"
    argv = [
        binary(spec.arch),
        "-name", f"guest={spec.name},process=crl-{spec.name}"[:200],
        "-nodefaults", "-no-user-config", "-display", "none",
        "-machine", machine, "-accel", accel, "-cpu", spec.cpu_model,
        "-m", f"{spec.memory_bytes >> 20}M", "-object", _dev(backend),
        "-smp", str(spec.cpus),
    ]
    if spec.kernel:
        argv += ["-kernel", spec.kernel]
        if spec.initrd:
            argv += ["-initrd", spec.initrd]
        argv += ["-append", cmdline]
    if microvm:
        argv += ["-global", "virtio-mmio.force-legacy=false"]
    argv += _channels(spec, run, serial_log, listeners, bus)
    # a device once hot-plugged behind a root port comes after the ports (QEMU makes devices
    # in command-line order), which is also where it was in the QEMU it was plugged into
    behind_ports: list[str] = []
    for i, nic in enumerate(spec.nics):
        tap = (taps or {}).get(i)
        argv += ["-netdev", netdev_option(nic_netdev(nic, i, None if tap is None else str(tap)))]
        (behind_ports if nic.port else argv).extend(["-device", _dev(nic_device(nic, i, bus))])
    for i, disk in enumerate(spec.disks):
        node = disk.node(i)
        argv += ["-blockdev", _dev(disk_blockdev(disk, node))]
        (behind_ports if disk.port else argv).extend(
            ["-device", _dev(disk_device(disk, node, bus, disk.port))])
    if not microvm:
        for i in range(HOTPLUG_PORTS):
            argv += ["-device", _dev({"driver": "pcie-root-port", "id": f"hp{i}",
                                      "chassis": i + 1, "slot": i + 1})]
    argv += behind_ports
    if spec.vmstate:
        argv += ["-blockdev", _dev({"driver": "qcow2", "node-name": VMSTATE_NODE,
                                    "file": {"driver": "file", "filename": spec.vmstate,
                                             "node-name": f"{VMSTATE_NODE}-file"}})]
    argv += ["-msg", "timestamp=on"]
    if sandbox:
        argv += ["-sandbox", SANDBOX]
    if incoming:
        argv += ["-incoming", "defer"]
    return argv

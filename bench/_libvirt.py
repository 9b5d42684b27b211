"""The libvirt side of the lifecycle benchmark: install, run libvirtd, drive the same guest.

Installed only when the benchmark is asked (``--with-libvirt``), never by ``make test``:

* Debian's ``libvirt-daemon`` + ``libvirt-daemon-driver-qemu`` + ``libvirt-clients`` (the
  minimal set; ``libvirt-daemon-system`` would pull in systemd), plus the ``libvirt-qemu``
  user that ``libvirt-daemon-system``'s postinst would create;
* ``libvirt-python`` from PyPI into the running venv, built against ``libvirt-dev``.

There is no systemd here, so the benchmark starts ``virtlogd`` and ``libvirtd`` itself (in the
foreground, as its own children) and stops them at the end. libvirtd runs under
``_subreaper.py`` so its daemonized QEMUs are reaped at once (caveat 1 of
shared/notes/baseline-libvirt-vs-raw-qemu.md).

Where ``/dev/kvm`` exists but only root may open it, libvirt 9.0 finds KVM in its (root)
capability probe but not usable for its ``libvirt-qemu`` user, judges its capability cache
stale and re-probes QEMU (~0.6 s) on every domain start. For the run, ``/dev/kvm`` is made
``root:kvm 0660`` (what udev does on a standard Debian host) and put back afterwards.
"""

from __future__ import annotations

import contextlib
import grp
import importlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from _common import Memory, System, memory_of, ms_since, run_timed, wait_gone

URI = "qemu:///system"
PACKAGES = ["libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients", "libvirt-dev",
            "pkg-config", "gcc"]
LIBVIRT_SOCK = Path("/run/libvirt/libvirt-sock")
VIRTLOGD_SOCK = Path("/run/libvirt/virtlogd-sock")
SUBREAPER = Path(__file__).with_name("_subreaper.py")
KVM = Path("/dev/kvm")


class LibvirtUnavailable(Exception):
    """libvirt cannot be installed or started here; the message says why."""


def _log(msg: str) -> None:
    print(f"[libvirt] {msg}", file=sys.stderr, flush=True)


def _run(argv: list[str], what: str, env: dict[str, str] | None = None) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-5:]
        raise LibvirtUnavailable(f"{what} failed ({' '.join(argv)} -> {res.returncode}): "
                                 + " | ".join(tail))


def install() -> None:
    """Install what is missing. :raises LibvirtUnavailable: when an install step fails."""
    if not all(shutil.which(b) for b in ("libvirtd", "virtlogd", "virsh", "pkg-config", "gcc")) \
            or not Path("/usr/include/libvirt/libvirt.h").exists():
        _log("installing Debian packages: " + " ".join(PACKAGES))
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run(["apt-get", "update", "-qq"], "apt-get update", env)
        _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
             "apt-get install", env)
    # what libvirt-daemon-system's postinst does; libvirtd refuses to start QEMU without it
    if subprocess.run(["getent", "group", "kvm"], capture_output=True).returncode != 0:
        _run(["groupadd", "--system", "kvm"], "groupadd kvm")
    if subprocess.run(["getent", "passwd", "libvirt-qemu"], capture_output=True).returncode:
        _log("creating the libvirt-qemu user (as libvirt-daemon-system would)")
        _run(["useradd", "--system", "--user-group", "--groups", "kvm", "--no-create-home",
              "--home-dir", "/var/lib/libvirt", "--shell", "/usr/sbin/nologin",
              "--comment", "Libvirt Qemu", "libvirt-qemu"], "useradd libvirt-qemu")
    try:
        importlib.import_module("libvirt")
    except ImportError:
        _log(f"pip install libvirt-python into {sys.prefix}")
        _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
              "libvirt-python"], "pip install libvirt-python")
        importlib.invalidate_caches()


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _children(ppid: int, comm: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if name == comm and int(stat.rpartition(")")[2].split()[1]) == ppid:
            found.append(int(proc.name))
    return found


class LibvirtHost:
    """virtlogd and libvirtd (under the subreaper), started by us, and one connection."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.virtlogd: subprocess.Popen[bytes] | None = None
        self.wrapper: subprocess.Popen[bytes] | None = None
        self.libvirtd_pid: int | None = None
        self.conn: Any = None
        self.lv: Any = None  # the libvirt module
        self.lvq: Any = None  # libvirt_qemu
        self.version = ""
        self.notes: list[str] = []
        self._kvm_saved: tuple[int, int, int] | None = None

    def start(self) -> None:
        """:raises LibvirtUnavailable: with the reason."""
        install()
        self._kvm_to_group()
        try:
            self.lv = importlib.import_module("libvirt")
            self.lvq = importlib.import_module("libvirt_qemu")
        except ImportError as err:
            raise LibvirtUnavailable(f"libvirt-python does not import: {err}") from err
        self.lv.registerErrorHandler(lambda _ctx, _err: None, None)
        if _listening(LIBVIRT_SOCK) or _listening(VIRTLOGD_SOCK):
            raise LibvirtUnavailable("a libvirtd or virtlogd not started by this benchmark is "
                                     "already running; stop it first")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / "virtlogd.log").open("ab") as out:
            self.virtlogd = subprocess.Popen(["virtlogd"], stdin=subprocess.DEVNULL,
                                             stdout=out, stderr=out)
        self._wait_for(VIRTLOGD_SOCK, self.virtlogd, "virtlogd")
        with (self.log_dir / "libvirtd.log").open("ab") as out:
            self.wrapper = subprocess.Popen([sys.executable, str(SUBREAPER), "libvirtd"],
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        self._wait_for(LIBVIRT_SOCK, self.wrapper, "libvirtd")
        pids = _children(self.wrapper.pid, "libvirtd")
        self.libvirtd_pid = pids[0] if pids else None
        deadline = time.monotonic() + 30
        while True:
            try:
                self.conn = self.lv.open(URI)
                break
            except self.lv.libvirtError as err:
                if time.monotonic() > deadline:
                    raise LibvirtUnavailable(f"cannot connect to {URI}: {err}; see "
                                             f"{self.log_dir}/libvirtd.log") from err
                time.sleep(0.1)
        ver = self.conn.getLibVersion()
        self.version = f"libvirt {ver // 1000000}.{ver // 1000 % 1000}.{ver % 1000}"

    def _kvm_to_group(self) -> None:
        if not KVM.exists():
            return
        st = KVM.stat()
        gid = grp.getgrnam("kvm").gr_gid
        if st.st_gid == gid and st.st_mode & 0o060 == 0o060:
            return
        self._kvm_saved = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
        os.chown(KVM, st.st_uid, gid)
        os.chmod(KVM, 0o660)
        was = f"{grp.getgrgid(st.st_gid).gr_name} {stat.S_IMODE(st.st_mode):04o}"
        note = (f"/dev/kvm was group {was}: made group kvm 0660 for the run (as udev does on "
                "Debian; else libvirt re-probes QEMU on every start), restored after")
        if note not in self.notes:
            self.notes.append(note)

    def _restore_kvm(self) -> None:
        if self._kvm_saved is not None:
            uid, gid, mode = self._kvm_saved
            os.chown(KVM, uid, gid)
            os.chmod(KVM, mode)
            self._kvm_saved = None

    def _wait_for(self, sock: Path, proc: subprocess.Popen[bytes], what: str) -> None:
        deadline = time.monotonic() + 30
        while not _listening(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (self.log_dir / f"{what}.log").read_text(errors="replace")
                raise LibvirtUnavailable(f"{what} did not come up: {log.strip()[-400:]}")
            time.sleep(0.05)

    def memory(self) -> Memory:
        """RSS and PSS of libvirtd plus virtlogd."""
        assert self.libvirtd_pid is not None and self.virtlogd is not None
        return memory_of(self.libvirtd_pid) + memory_of(self.virtlogd.pid)

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None
        for proc in (self.wrapper, self.virtlogd):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.wrapper = self.virtlogd = None
        self._restore_kvm()


def domain_xml(name: str, kernel: Path, initrd: Path, cmdline: str, memory_mib: int,
               serial: Path) -> str:
    """Direct kernel boot, the same guest as Corral's argv: q35, TCG, ``-cpu max``, one
    user-mode virtio NIC, serial to a file and the guest agent channel."""
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{escape(str(kernel))}</kernel>
    <initrd>{escape(str(initrd))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='maximum' check='none'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'><source path='{escape(str(serial))}'/><target port='0'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <interface type='user'><model type='virtio'/></interface>
    <memballoon model='none'/>
  </devices>
</domain>"""


class LibvirtPy(System):
    """libvirt-python on one persistent connection; persistent (defined) domains."""

    key = "libvirt"

    def __init__(self, host: LibvirtHost, root: Path, prefix: str, kernel: Path,
                 initrd: Path, cmdline: str, memory_mib: int) -> None:
        self.host = host
        self.root = root
        self.prefix = prefix
        self.memory_mib = memory_mib
        self.cmdline = cmdline  # with @NAME@ where the domain name goes
        # libvirt relabels the kernel and initrd for its QEMU user: give it private copies
        img = root / "img"
        img.mkdir(parents=True, exist_ok=True)
        self.kernel, self.initrd = img / kernel.name, img / initrd.name
        shutil.copyfile(kernel, self.kernel)
        shutil.copyfile(initrd, self.initrd)
        for d in (root, img):
            d.chmod(0o755)

    def name(self, role: str) -> str:
        return f"{self.prefix}-{self.key[0]}-{role}"

    def _dom(self, role: str) -> Any:
        return self.host.conn.lookupByName(self.name(role))

    def prepare(self, role: str) -> None:
        name = self.name(role)
        cmdline = self.cmdline.replace("@NAME@", name)
        xml = domain_xml(name, self.kernel, self.initrd, cmdline, self.memory_mib,
                         self.root / f"{name}.serial.log")
        self.host.conn.defineXML(xml)

    def remove(self, role: str) -> None:
        dom = self._dom(role)
        if dom.isActive():
            dom.destroy()
        dom.undefine()

    def pid(self, role: str) -> int:
        return int(Path(f"/run/libvirt/qemu/{self.name(role)}.pid").read_text().strip())

    def wait_ready(self, role: str, timeout: float = 120.0) -> None:
        """Poll the guest agent through libvirt (which owns the channel) until it answers."""
        dom = self._dom(role)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.host.lvq.qemuAgentCommand(dom, '{"execute":"guest-ping"}', 2, 0)
                return
            except self.host.lv.libvirtError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def _start(self, role: str) -> None:
        self._dom(role).create()

    def _destroy(self, role: str) -> None:
        self._dom(role).destroy()

    def spawn(self, role: str) -> float:
        t0 = time.perf_counter()
        self._start(role)
        return ms_since(t0)

    def boot(self, role: str) -> float:
        t0 = time.perf_counter()
        self._start(role)
        self.wait_ready(role)
        return ms_since(t0)

    def destroy(self, role: str) -> float:
        pid = self.pid(role)
        t0 = time.perf_counter()
        self._destroy(role)
        wait_gone(pid)
        return ms_since(t0)

    def teardown(self, role: str) -> None:
        self._destroy(role)

    def pause(self, role: str) -> float:
        dom = self._dom(role)
        t0 = time.perf_counter()
        dom.suspend()
        return ms_since(t0)

    def resume(self, role: str) -> float:
        dom = self._dom(role)
        t0 = time.perf_counter()
        dom.resume()
        return ms_since(t0)

    def list_vms(self) -> float:
        """Every domain's name and state, as ``corral.Client.list`` gives every VM's (one
        ``state()`` call per domain: listAllDomains alone carries names, not states)."""
        t0 = time.perf_counter()
        [(dom.name(), dom.state()[0]) for dom in self.host.conn.listAllDomains()]
        return ms_since(t0)

    def list_bare(self) -> float:
        """``listAllDomains()`` alone (names, no states)."""
        t0 = time.perf_counter()
        self.host.conn.listAllDomains()
        return ms_since(t0)

    def close(self) -> None:
        """Destroy and undefine every domain this benchmark defined."""
        if self.host.conn is None:
            return
        for dom in self.host.conn.listAllDomains():
            if dom.name().startswith(f"{self.prefix}-{self.key[0]}-"):
                with contextlib.suppress(self.host.lv.libvirtError):
                    if dom.isActive():
                        dom.destroy()
                with contextlib.suppress(self.host.lv.libvirtError):
                    dom.undefine()


class Virsh(LibvirtPy):
    """One ``virsh`` process per operation; readiness is still polled in process."""

    key = "virsh"

    cpu_ms = 0.0  # the CPU time of the last virsh process

    def virsh(self, *args: str) -> float:
        res, took, self.cpu_ms = run_timed(["virsh", "-q", "-c", URI, *args])
        if res.returncode != 0:
            raise RuntimeError(f"virsh {' '.join(args)}: {res.stderr.strip()}")
        return took

    def _start(self, role: str) -> None:
        self.virsh("start", self.name(role))

    def _destroy(self, role: str) -> None:
        self.virsh("destroy", self.name(role))

    def pause(self, role: str) -> float:
        return self.virsh("suspend", self.name(role))

    def resume(self, role: str) -> float:
        return self.virsh("resume", self.name(role))

    def list_vms(self) -> float:
        return self.virsh("list", "--all")

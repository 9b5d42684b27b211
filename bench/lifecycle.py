"""Lifecycle benchmark: Corral vs raw QEMU (vs libvirt), measured side by side in one run.

    CORRAL_IMAGE_PATH=build/images .venv/bin/python bench/lifecycle.py [--reps 5]
        [--vms 1,10,20] [--with-libvirt] [--json FILE] [--only cli]

All systems drive the same tiny guest (q35, 256 MiB, 1 vCPU, TCG, direct kernel boot):

* **corral**: ``corral.Client`` against a ``corral serve`` this script starts with its own
  temporary ``CORRAL_HOME``;
* **raw**: Corral's own generated argv, read from a Corral VM's ``/proc/PID/cmdline`` (so it
  follows whatever ``corral.engine.qemu.argv.build`` makes today), started by hand with a fresh
  run dir, driven by a minimal in-process QMP client and a guest agent sync (``_common.py``);
* **libvirt** / **virsh** (``--with-libvirt``, installed and started by this script): the same
  kernel, initrd and cmdline as a persistent domain (``_libvirt.py``).

Measured: boot to guest-agent-ready, spawn to QMP ready (the start call returns), destroy until
the QEMU pid is gone, pause/resume/list through each API and each CLI, and the daemon's RSS and
PSS with 0 and ``--vms`` idle guests (on freshly restarted daemons). The published targets are
checked at the end (PASS/FAIL).

Systems are interleaved in every repetition, the order rotates each repetition, and one
warm-up per system is discarded. Numbers are medians (min-max). This process is a child
subreaper, so raw QEMUs (daemonized, like Corral's) are reaped the moment they exit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _libvirt
from _common import (
    QMP,
    Memory,
    System,
    agent_sync,
    become_subreaper,
    fmt_num,
    kill_and_reap,
    memory_of,
    ms_since,
    reap,
    replayable,
    run_benchmark,
    run_timed,
    wait_gone,
)
from _report import Results, report, write_json

from corral.client import Client
from corral.config import Paths
from corral.errors import CorralError

ROOT = Path(__file__).resolve().parents[1]
CORRAL = str(next((p for p in (Path(sys.executable).parent / "corral",
                               ROOT / ".venv" / "bin" / "corral") if p.exists()),
                   "corral"))
MEMORY_MIB = 256
GAP = 0.2  # seconds between cycles, so one QEMU's exit does not overlap the next start


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def image_path() -> str:
    """CORRAL_IMAGE_PATH, else the repo's build/images; it must hold tiny/image.json."""
    paths = [p for p in os.environ.get("CORRAL_IMAGE_PATH", "").split(":") if p]
    if not paths:
        paths = [str(ROOT / "build" / "images")]
    if not any((Path(p) / "tiny" / "image.json").is_file() for p in paths):
        sys.exit(f"no tiny image in {':'.join(paths)}; build it with 'make image' or "
                 "'corral image build tiny --dest build/images'")
    return ":".join(str(Path(p).absolute()) for p in paths)


# ----- Corral ---------------------------------------------------------------------------------

class CorralSystem(System):
    """``corral serve`` with a temporary home, driven through one ``corral.Client``."""

    key = "corral"

    def __init__(self, home: Path, images: str) -> None:
        self.home = home
        self.socket = home / "corral.sock"
        # 20 idle 1-vCPU guests on 2 CPUs exceed the default CPU overcommit (4.0): raise it, or
        # the admission queue would (rightly) hold the later ones back
        self.env = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_SOCKET": str(self.socket),
                    "CORRAL_IMAGE_PATH": images, "CORRAL_CPU_RATIO": "16"}
        self.client = Client(self.socket, timeout=180)
        self.proc: subprocess.Popen[bytes] | None = None

    def start_daemon(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with (self.home / "daemon.log").open("ab") as out:
            self.proc = subprocess.Popen([CORRAL, "serve"], env=self.env, stdout=out,
                                         stderr=out, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client.host_info()
                return
            except CorralError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("corral serve did not come up: "
                                       + (self.home / "daemon.log").read_text()[-2000:]) from None
                time.sleep(0.05)

    def stop_daemon(self) -> None:
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart_daemon(self) -> None:
        self.stop_daemon()
        self.start_daemon()

    def name(self, role: str) -> str:
        return f"c-{role}"

    def prepare(self, role: str) -> None:
        self.client.create(self.name(role), memory=f"{MEMORY_MIB}M")

    def remove(self, role: str) -> None:
        self.client.destroy(self.name(role))

    def boot(self, role: str) -> float:
        t0 = time.perf_counter()
        self.client.start(self.name(role), wait=True)
        return ms_since(t0)

    def spawn(self, role: str) -> float:
        t0 = time.perf_counter()
        self.client.start(self.name(role))
        return ms_since(t0)

    def destroy(self, role: str) -> float:
        pid = self.pid(role)
        t0 = time.perf_counter()
        self.client.stop(self.name(role), force=True)
        wait_gone(pid)
        return ms_since(t0)

    def teardown(self, role: str) -> None:
        self.client.stop(self.name(role), force=True)

    def pause(self, role: str) -> float:
        t0 = time.perf_counter()
        self.client.pause(self.name(role))
        return ms_since(t0)

    def resume(self, role: str) -> float:
        t0 = time.perf_counter()
        self.client.resume(self.name(role))
        return ms_since(t0)

    def list_vms(self) -> float:
        t0 = time.perf_counter()
        self.client.list()
        return ms_since(t0)

    def pid(self, role: str) -> int:
        return int(self.client.get(self.name(role))["pid"])

    def vm_info(self, role: str) -> dict[str, Any]:
        info: dict[str, Any] = self.client.get(self.name(role))
        return info

    cpu_ms = 0.0  # the CPU time of the last CLI process

    def cli(self, *args: str) -> float:
        """Wall time of one ``corral`` CLI process."""
        res, took, self.cpu_ms = run_timed([CORRAL, *args], self.env)
        if res.returncode != 0:
            raise RuntimeError(f"corral {' '.join(args)}: {res.stderr.strip()}")
        return took

    def daemon_memory(self) -> Memory:
        assert self.proc is not None
        return memory_of(self.proc.pid)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # a fresh connection: an interrupted request leaves the kept-alive one unusable
            with Client(self.socket, timeout=60) as fresh, contextlib.suppress(CorralError):
                for vm in fresh.list():
                    with contextlib.suppress(CorralError):
                        fresh.destroy(vm["name"])
        self.stop_daemon()
        for pid in qemu_pids(str(self.home)):  # VMs the daemon left running: ours by path
            kill_and_reap(pid)


def qemu_pids(marker: str) -> list[int]:
    """QEMUs whose command line mentions ``marker`` (their comm is renamed by ``-name``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if Path(argv[0].decode()).name.startswith("qemu-system") and \
                    any(marker.encode() in a for a in argv):
                pids.append(int(proc.name))
    return pids


# ----- raw QEMU -------------------------------------------------------------------------------

@dataclass
class RawVM:
    pid: int
    qmp: QMP
    run: Path


class RawSystem(System):
    """Corral's own argv started by hand: Popen (it daemonizes), pidfile, QMP, agent sync.

    The argv is read from a running Corral VM (:meth:`learn`) and replayed with a fresh run
    dir and name per start; files Corral made in the VM's directory for QEMU to open (such as
    its ``vmstate.qcow2``) are copied into that run dir, untimed, as Corral makes them at
    create time."""

    key = "raw"
    RUN, NAME = "@RUN@", "@NAME@"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.template: list[str] = []
        self.files: list[Path] = []
        self.vms: dict[str, RawVM] = {}
        self.starts = 0

    def learn(self, corral: CorralSystem, role: str) -> str:
        """Take the argv of Corral's running VM ``role``; describe what was taken."""
        name = corral.name(role)
        pid = corral.pid(role)
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
        paths = Paths(corral.home)
        run, vm_dir = str(paths.run_dir(name)), str(paths.vm_dir(name))
        argv = replayable(argv, run)
        self.template = [a.replace(run, self.RUN).replace(vm_dir, self.RUN)
                         .replace(name, self.NAME) for a in argv]
        keep = self.root / "template"
        keep.mkdir(parents=True)
        for f in sorted(Path(vm_dir).iterdir()):
            if f.is_file() and f.name != "serial.log" and f.name in " ".join(argv):
                shutil.copy2(f, keep / f.name)
                self.files.append(keep / f.name)
        copied = ", ".join(f.name for f in self.files) or "none"
        return (f"Corral's own, read from /proc/{pid}/cmdline of a Corral VM ({len(argv)} args),"
                f" replayed with a fresh run dir and name per start; VM files copied: {copied}")

    def argv(self, name: str, run: Path) -> list[str]:
        return [a.replace(self.RUN, str(run)).replace(self.NAME, name) for a in self.template]

    def option(self, flag: str) -> str:
        """The value after ``flag`` (``-append`` has ``@NAME@`` where the VM name goes)."""
        return self.template[self.template.index(flag) + 1]

    def name(self, role: str) -> str:
        return f"r-{role}"

    def _fresh(self, role: str) -> tuple[list[str], Path]:
        self.starts += 1
        run = self.root / f"{role}{self.starts}"
        run.mkdir(parents=True)
        for f in self.files:
            shutil.copy2(f, run / f.name)
        return self.argv(self.name(role), run), run

    def _launch(self, role: str, argv: list[str], run: Path) -> RawVM:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        _out, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"QEMU exited {proc.returncode}: {err.decode().strip()}")
        pid = int((run / "qemu.pid").read_text())
        try:
            vm = RawVM(pid, QMP(run / "qmp.sock"), run)
        except BaseException:
            kill_and_reap(pid)
            raise
        self.vms[role] = vm
        return vm

    def spawn(self, role: str) -> float:
        argv, run = self._fresh(role)
        t0 = time.perf_counter()
        self._launch(role, argv, run)
        return ms_since(t0)

    def boot(self, role: str) -> float:
        argv, run = self._fresh(role)
        t0 = time.perf_counter()
        vm = self._launch(role, argv, run)
        agent_sync(vm.run / "qga.sock")
        return ms_since(t0)

    def destroy(self, role: str) -> float:
        vm = self.vms.pop(role)
        t0 = time.perf_counter()
        with contextlib.suppress(ConnectionError):
            vm.qmp.execute("quit")
        if not reap(vm.pid):
            kill_and_reap(vm.pid)
        took = ms_since(t0)
        vm.qmp.close()
        return took

    def teardown(self, role: str) -> None:
        self.destroy(role)

    def pause(self, role: str) -> float:
        t0 = time.perf_counter()
        self.vms[role].qmp.execute("stop")
        return ms_since(t0)

    def resume(self, role: str) -> float:
        t0 = time.perf_counter()
        self.vms[role].qmp.execute("cont")
        return ms_since(t0)

    def pid(self, role: str) -> int:
        return self.vms[role].pid

    def close(self) -> None:
        for vm in self.vms.values():
            vm.qmp.close()
            kill_and_reap(vm.pid)
        self.vms.clear()
        for pid in qemu_pids(str(self.root)):  # interrupted between spawn and bookkeeping
            kill_and_reap(pid)


def rotated(items: Sequence[Any], k: int) -> list[Any]:
    k %= max(1, len(items))
    return [*items[k:], *items[:k]]


# ----- phases ---------------------------------------------------------------------------------

WARMUPS = 1  # rounds run first and discarded (--no-warmup: none)
API_LISTS = 5  # lists through each API per repetition of the CLI's


def phase_lifecycle(systems: Sequence[System], reps: int, res: Results) -> None:
    """Boot to ready, then destroy; spawn to QMP ready, then an untimed stop."""
    for s in systems:
        s.prepare("boot")
        s.prepare("spawn")
    for rep in range(-WARMUPS, reps):
        for s in rotated(systems, rep + 1):
            ready = s.boot("boot")
            time.sleep(GAP)
            gone = s.destroy("boot")
            if rep >= 0:
                res.add("boot", s.key, ready)
                res.add("destroy", s.key, gone)
            time.sleep(GAP)
        for s in rotated(systems, rep + 1):
            spawned = s.spawn("spawn")
            time.sleep(GAP)
            s.teardown("spawn")
            if rep >= 0:
                res.add("spawn", s.key, spawned)
            time.sleep(GAP)
        if rep < 0:
            log("lifecycle warm-up done")
        else:
            log(f"lifecycle rep {rep + 1}/{reps}: boot "
                + ", ".join(f"{s.key} {fmt_num(res.samples['boot'][s.key][-1])}"
                            for s in systems) + " ms")
    for s in systems:
        s.remove("boot")
        s.remove("spawn")


Op = Callable[[], list[tuple[str, float]]]


def interleave(entries: Sequence[tuple[str, Op]], reps: int, res: Results,
               gap: float = 0.02) -> None:
    """Run ``(system, fn)`` entries ``reps`` times after one warm-up, rotating the order;
    ``fn`` returns ``(op, ms)`` pairs."""
    for rep in range(-WARMUPS, reps):
        for system, fn in rotated(entries, rep + 1):
            for op, took in fn():
                if rep >= 0:
                    res.add(op, system, took)
            time.sleep(gap)


def phase_control(systems: Sequence[System], corral: CorralSystem, pause_reps: int,
                  cli_reps: int, res: Results, cli_only: bool = False) -> None:
    """Pause/resume and list through each API and each CLI, on one idle guest per system
    (``cli_only``: pause/resume through the CLIs alone, and the lists)."""
    for s in systems:
        s.prepare("idle")
        s.boot("idle")
    time.sleep(2)
    cname = corral.name("idle")

    def pause_resume(s: System) -> Op:
        def run() -> list[tuple[str, float]]:
            paused = s.pause("idle")
            out = [("pause", paused)]
            if isinstance(s, _libvirt.Virsh):  # a CLI: its process's CPU time too
                out.append(("cli_pause_cpu", s.cpu_ms))
            time.sleep(0.02)
            out.append(("resume", s.resume("idle")))
            if isinstance(s, _libvirt.Virsh):
                out.append(("cli_resume_cpu", s.cpu_ms))
            return out
        return run

    def cli_pause_resume() -> list[tuple[str, float]]:
        paused = corral.cli("pause", cname)
        out = [("cli_pause", paused), ("cli_pause_cpu", corral.cpu_ms)]
        time.sleep(0.02)
        return [*out, ("cli_resume", corral.cli("resume", cname)),
                ("cli_resume_cpu", corral.cpu_ms)]

    def one(op: str, fn: Callable[[], float]) -> Op:
        return lambda: [(op, fn())]

    def cli(op: str, s: CorralSystem | _libvirt.Virsh, fn: Callable[[], float]) -> Op:
        return lambda: [(op, fn()), (f"{op}_cpu", s.cpu_ms)]

    log(f"pause/resume, {pause_reps} each")
    entries = [(s.key, pause_resume(s)) for s in systems if not cli_only or s.key == "virsh"]
    entries.append(("corral", cli_pause_resume))
    interleave(entries, pause_reps, res)
    log(f"list, {cli_reps} each")
    lists = [("corral", cli("cli_list", corral, lambda: corral.cli("list")))]
    lists += [(s.key, cli("cli_list", s, s.list_vms)) for s in systems
              if isinstance(s, _libvirt.Virsh)]
    interleave(lists, cli_reps, res)
    # the lists through the APIs take a millisecond: API_LISTS times as many repetitions,
    # one call each, interleaved like the rest (20 ms apart: no call finds the last one's
    # work still in the caches)
    log(f"list through the APIs, {API_LISTS * cli_reps} each")
    lists = [("corral", one("list", corral.list_vms))]
    lists += [(s.key, fn) for s in systems if type(s) is _libvirt.LibvirtPy
              for fn in (one("list", s.list_vms), one("list_bare", s.list_bare))]
    interleave(lists, API_LISTS * cli_reps, res)
    if "virsh" in res.samples.get("pause", {}):  # virsh is a CLI: the same samples serve both
        for op in ("pause", "resume"):
            res.samples[f"cli_{op}"]["virsh"] = res.samples[op]["virsh"]
        res.samples["list"]["virsh"] = res.samples["cli_list"]["virsh"]
    for s in systems:
        s.teardown("idle")
        s.remove("idle")


def measure_memory(label: str, counts: Sequence[int], start_batch: Callable[[list[str]], None],
                   daemon: Callable[[], Memory], qemu_pid: Callable[[str], int],
                   settle: float) -> dict[int, dict[str, float]]:
    """Daemon RSS/PSS with 0 and each count of idle VMs, booted at most 3 at a time."""
    out: dict[int, dict[str, float]] = {}
    names: list[str] = []

    def record(n: int) -> None:
        mem = daemon()
        qemu = [memory_of(qemu_pid(nm)).rss_kib for nm in names]
        out[n] = {"rss_kib": mem.rss_kib, "pss_kib": mem.pss_kib,
                  "qemu_rss_kib_median": sorted(qemu)[len(qemu) // 2] if qemu else 0}
        log(f"{label}: {n} VMs, daemon RSS {mem.rss_kib / 1024:.1f} MiB, "
            f"PSS {mem.pss_kib / 1024:.1f} MiB")

    time.sleep(settle)
    record(0)
    for n in counts:
        while len(names) < n:
            batch = [f"m{i:02d}" for i in range(len(names), min(n, len(names) + 3))]
            start_batch(batch)
            names += batch
        time.sleep(settle)
        record(n)
    return out


def phase_memory(corral: CorralSystem, lv: _libvirt.LibvirtPy | None, counts: Sequence[int],
                 res: Results) -> None:
    """Daemon memory on freshly restarted daemons (so it does not depend on ``--reps``), after
    noting what the timing phases left behind."""
    worn = {"corral": asdict(corral.daemon_memory())}
    if lv is not None:
        worn["libvirt"] = asdict(lv.host.memory())
    res.meta["daemon_after_timing"] = worn
    log("restarting the daemons for the memory phase")
    corral.restart_daemon()

    def corral_batch(batch: list[str]) -> None:
        for nm in batch:
            corral.client.create(nm, memory=f"{MEMORY_MIB}M", start=True)
        for nm in batch:
            corral.client.wait_ready(nm)

    def corral_pid(nm: str) -> int:
        return int(corral.client.get(nm)["pid"])

    res.memory["corral"] = measure_memory("corral", counts, corral_batch, corral.daemon_memory,
                                          corral_pid, settle=3)
    for vm in corral.client.list():  # after a failure, the exit stack cleans up instead
        corral.client.destroy(vm["name"])
    if lv is None:
        return
    lvm = lv
    lvm.host.restart()

    def lv_batch(batch: list[str]) -> None:
        for nm in batch:
            lvm.prepare(nm)
            lvm.spawn(nm)
        for nm in batch:
            lvm.wait_ready(nm)

    res.memory["libvirt"] = measure_memory("libvirt", counts, lv_batch, lvm.host.memory,
                                           lvm.pid, settle=3)
    lvm.close()


# ----- main -----------------------------------------------------------------------------------

def learn_argv(corral: CorralSystem, raw: RawSystem) -> str:
    """Boot one Corral VM and give its command line to the raw side."""
    corral.prepare("argv")
    corral.spawn("argv")
    try:
        return raw.learn(corral, "argv")
    finally:
        corral.teardown("argv")
        corral.remove("argv")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5, help="boot/spawn/destroy repetitions (5)")
    p.add_argument("--pause-reps", type=int, default=30, help="pause/resume repetitions (30)")
    p.add_argument("--cli-reps", type=int, default=20, help="list repetitions (20)")
    p.add_argument("--vms", default="1,10,20",
                   help="idle VM counts for the daemon memory phase ('none' skips it)")
    p.add_argument("--with-libvirt", action="store_true",
                   help="install (apt, pip) and start libvirt, and measure it too")
    p.add_argument("--no-warmup", action="store_true",
                   help="no discarded warm-up round (a quick report)")
    p.add_argument("--json", type=Path, help="write the raw numbers to this file")
    p.add_argument("--skip-lifecycle", action="store_true",
                   help="skip boot/spawn/destroy (measure the hot path: pause, resume, list)")
    p.add_argument("--only", choices=["cli"],
                   help="cli: only the CLIs (corral list/pause/resume beside virsh) and the "
                        "lists through the APIs; no lifecycle, no raw QEMU, no memory phase")
    args = p.parse_args(argv)
    if args.only == "cli":
        args.skip_lifecycle, args.vms = True, "none"
    args.counts = [] if args.vms == "none" else sorted({int(v) for v in args.vms.split(",")})
    if any(n < 1 for n in args.counts) or min(args.reps, args.pause_reps, args.cli_reps) < 1:
        p.error("counts and repetitions must be at least 1")
    return args



def main(argv: Sequence[str] | None = None) -> int:
    global WARMUPS
    args = parse_args(argv)
    WARMUPS = 0 if args.no_warmup else 1
    images = image_path()
    os.environ["CORRAL_IMAGE_PATH"] = images
    become_subreaper()
    res = Results()
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                          check=False).stdout.split("\n")[0]
    res.meta = {"host": f"{os.cpu_count()} CPUs, Linux {platform.release()}", "qemu": qemu,
                "memory_mib": MEMORY_MIB, "reps": args.reps, "pause_reps": args.pause_reps,
                "cli_reps": args.cli_reps, "api_lists": API_LISTS * args.cli_reps,
                "vms": args.counts,
                "loadavg_start": os.getloadavg(),
                "libvirt": "not measured (run with --with-libvirt)"}
    t_start = time.monotonic()
    token = secrets.token_hex(3)
    ws = Path(f"/tmp/crb-{token}")
    ws.mkdir()
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, ws, True)
        ws.chmod(0o755)  # libvirt's QEMU user must reach its files inside
        corral = CorralSystem(ws / "c", images)
        stack.callback(corral.close)
        log(f"starting corral serve (CORRAL_HOME={corral.home})")
        corral.start_daemon()
        raw = RawSystem(ws / "r")
        stack.callback(raw.close)
        res.meta["argv_check"] = learn_argv(corral, raw)
        res.meta["accel"] = raw.option("-accel")
        log(f"raw QEMU argv: {res.meta['argv_check']}")
        systems: list[System] = [corral] if args.only == "cli" else [corral, raw]
        lvpy: _libvirt.LibvirtPy | None = None
        if args.with_libvirt:
            host = _libvirt.LibvirtHost(ws / "l")
            stack.callback(host.stop)
            try:
                log("setting up libvirt")
                host.start()
            except _libvirt.LibvirtUnavailable as err:
                host.stop()
                res.meta["libvirt"] = f"UNAVAILABLE here, not measured: {err}"
                log(f"libvirt: {res.meta['libvirt']}")
            else:
                lvpy, virsh = (cls(host, ws / "l", f"crb-{token}", Path(raw.option("-kernel")),
                                   Path(raw.option("-initrd")), raw.option("-append"),
                                   MEMORY_MIB)
                               for cls in (_libvirt.LibvirtPy, _libvirt.Virsh))
                stack.callback(lvpy.close)
                stack.callback(virsh.close)
                systems += [lvpy, virsh]
                res.meta["libvirt"] = "; ".join([
                    f"ok: {host.version}, libvirtd (under a subreaper) and virtlogd started and "
                    "stopped by this benchmark", *host.notes])
        log(f"lifecycle: {args.reps} reps + {WARMUPS} warm-up, systems {[s.key for s in systems]}")
        if not args.skip_lifecycle:
            phase_lifecycle(systems, args.reps, res)
        phase_control(systems, corral, args.pause_reps, args.cli_reps, res,
                      cli_only=args.only == "cli")
        if args.counts:
            log(f"daemon memory with {args.counts} idle VMs")
            phase_memory(corral, lvpy, args.counts, res)
    res.meta["loadavg_end"] = os.getloadavg()
    res.meta["seconds"] = round(time.monotonic() - t_start, 1)
    print(report(res, [s.key for s in systems]))
    if args.json:
        write_json(res, args.json)
        log(f"raw numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    run_benchmark(main)

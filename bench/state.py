"""Saved-state benchmark: cold boot vs warm start, save/restore, state size vs memory, and
virtio disk IO; Corral next to raw QEMU (and libvirt), measured side by side in one run.

    CORRAL_IMAGE_PATH=build/images .venv/bin/python bench/state.py [--reps 3]
        [--with-libvirt] [--json FILE]

The same tiny guest everywhere (q35, 1 vCPU, TCG, 256 MiB unless said):

* **Corral**: ``corral.Client`` against a ``corral serve`` started with its own temporary
  ``CORRAL_HOME``. Cold boot = ``create`` + ``start(wait=True)``. Warm start =
  ``create(from_snapshot="GOLDEN:SNAP", wait=True)`` from a memory snapshot of a booted VM;
  the first one builds the snapshot's template and is reported apart. Save / restore =
  ``save`` / ``restore`` (then ``wait_ready``).
* **raw QEMU**: Corral's own argv, read from the Corral VM's ``/proc/PID/cmdline``, started
  by hand (``_guest_common.RawQemu``) with a minimal QMP client and guest agent client:
  save = ``stop``, ``max-bandwidth`` lifted, ``migrate`` into a file descriptor
  (``getfd``), ``completed``, ``quit`` (an fsync of the state is timed apart, done before
  the ``quit`` as Corral does: "raw + fsync"); restore = the same argv plus
  ``-incoming defer``, ``migrate-incoming`` from the state file, ``completed``, ``cont``,
  agent sync (every 20 ms). Two raw warm starts: the *streamed* restore of a full state
  file saved from a booted raw VM, and *Corral's template by hand*: the argv of a Corral
  warm clone (guest RAM in the template's file, mapped private) with ``x-ignore-shared``
  and the template's device state, then what Corral does to give a clone its identity
  (``guest-set-time``, then a ``guest-exec`` of ``hostname``/``ip link set address``).
* **virsh** (``--with-libvirt``, installed and started by this script, as in
  ``lifecycle.py``): ``virsh save`` / ``virsh restore`` of the same kernel, initrd and
  cmdline as a libvirt domain; skipped cleanly when libvirt cannot run here.

Also: save and restore of a 1 GiB guest whose memory holds 600 MiB of non-zero data (zero
pages travel as flags, so ``dd if=/dev/zero`` would not make the state big), next to the
host's own sequential write speed (``dd conv=fdatasync`` into the directory the states are
written to); the idle RSS of warm clones; and a named virtio disk hot-plugged into a running
guest, ``dd`` with direct IO in the guest against ``dd`` on a host file in the same directory.

Systems are interleaved in every repetition, the order rotating; warm starts and
save/restore have one discarded warm-up each (cold boots use the golden VMs' boots as
theirs). Numbers are medians (min-max). The targets of the issue are checked at the end.

Caveat: where the host is itself a VM whose freed memory goes back to its hypervisor (free
page reporting of virtio-balloon), a restore that faults in hundreds of MiB runs at two
speeds, depending on whether the pages it gets were freed a moment ago (the 1 GiB restores:
about 0.3 s or about 1.5-2 s, whoever starts QEMU); look at the min-max, not only at the
median.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _libvirt
from _common import Memory, become_subreaper, memory_of, ms_since, render_table, run_benchmark
from _guest_common import (
    Agent,
    Op,
    RawQemu,
    RawVM,
    Samples,
    add,
    cell,
    fsync_file,
    get,
    host_dd,
    interleave,
    log,
    med,
    raw_load,
    raw_save,
    target_line,
    tratio,
)
from lifecycle import CorralSystem, image_path

from corral.client import Client

GOLD, SNAP, BIG = "sb-gold", "s", "sb-big"
SETTLE = 2.0  # seconds an idle guest is left alone before its memory is read
FILL_MIB = 600
#: 600 MiB of non-zero data in guest RAM: one random MiB, catenated 600 times by one cat
FILL = ("mkdir -p /dev/shm && mount -t tmpfs -o size=800m shm /dev/shm && "
        "dd if=/dev/urandom of=/tmp/r bs=1M count=1 2>/dev/null && set -- && i=0 && "
        f"while [ $i -lt {FILL_MIB} ]; do set -- \"$@\" /tmp/r; i=$((i+1)); done && "
        "cat \"$@\" > /dev/shm/x && rm /tmp/r && du -m /dev/shm/x")
#: dd in the guest, timed by the guest's own clock
GUEST_DD = ("a=$(cut -d' ' -f1 /proc/uptime); dd {args} 2>/dev/null; "
            "b=$(cut -d' ' -f1 /proc/uptime); echo $a $b")
IO_MIB = 256
QUICK_IO_MIB = 64


class Bench:
    """Everything the run made, for the phases and the cleanup."""

    def __init__(self, ws: Path, images: str, reps: int) -> None:
        self.ws = ws
        self.reps = reps
        self.corral = CorralSystem(ws / "c", images)
        self.raw = RawQemu(ws / "r")
        self.samples: Samples = {}
        self.mem: dict[str, dict[str, list[Memory]]] = {}  # row -> system -> samples
        self.meta: dict[str, Any] = {}
        # Corral's own phases from its event log: what -> phase -> ms
        self.breakdown: dict[str, dict[str, list[float]]] = {}
        self.counter = 0
        self.virsh: _libvirt.Virsh | None = None

    @property
    def c(self) -> Client:
        return self.corral.client

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def add(self, op: str, system: str, value: float) -> None:
        add(self.samples, op, system, value)

    def drop_first(self, *whats: str) -> None:
        """Forget the first (warm-up) phases of each of ``whats``."""
        for what in whats:
            for k, v in self.breakdown.get(what, {}).items():
                self.breakdown[what][k] = v[1:]

    def phases(self, what: str, phases: dict[str, float]) -> None:
        for k, v in phases.items():
            self.breakdown.setdefault(what, {}).setdefault(k, []).append(v)

    def memory(self, row: str, system: str, pid: int) -> None:
        self.mem.setdefault(row, {}).setdefault(system, []).append(memory_of(pid))

    def cpid(self, name: str) -> int:
        return int(self.c.get(name)["pid"])

    def csh(self, name: str, script: str, timeout: float = 300) -> str:
        res = self.c.exec(name, ["sh", "-c", script], timeout=timeout)
        if res["exitcode"] != 0:
            raise RuntimeError(f"{name}: {script!r} exited {res['exitcode']}: "
                               f"{res['stderr'].decode(errors='replace').strip()}")
        return str(res["stdout"].decode(errors="replace"))

    def state_bytes(self, name: str) -> int:
        written = [e for e in self.c.events(vm=name) if e["kind"] == "state_written"]
        return int(written[-1]["detail"]["bytes"])


# ----- phases ---------------------------------------------------------------------------------

def phase_cold(b: Bench) -> None:
    """Cold boots to an answering agent, Corral and raw, interleaved (no warm-up: the golden
    VMs booted just before)."""
    def corral() -> list[tuple[str, float]]:
        name = b.fresh("sb-cold")
        t0 = time.perf_counter()
        b.c.create(name, memory="256M")
        b.c.start(name, wait=True)
        took = ms_since(t0)
        b.c.destroy(name)
        return [("cold", took)]

    def raw() -> list[tuple[str, float]]:
        vm, took = b.raw.boot("vm")
        b.raw.quit(vm)
        return [("cold", took)]

    interleave([("corral", corral), ("raw", raw)], b.reps, b.samples, "cold boots",
               warmup=False, gap=0.2)


def event_phases(b: Bench, name: str, kinds: Sequence[str], t0_wall: float,
                 t_end_wall: float) -> dict[str, float]:
    """Ms between the request, the first event of each of ``kinds`` at or after it (in
    order), and the call's return, from Corral's event log (``Client.events``)."""
    ts: dict[str, float] = {}
    for e in b.c.events(vm=name):
        if e["ts"] >= t0_wall - 0.001:
            ts.setdefault(e["kind"], e["ts"])
    marks = [("request", t0_wall), *((k, ts[k]) for k in kinds), ("returned", t_end_wall)]
    return {f"{a}→{c}": (tc - ta) * 1000 for (a, ta), (c, tc) in itertools.pairwise(marks)}


WARM_EVENTS = ("created", "starting", "warm_started", "ready")


def corral_warm(b: Bench, keep: bool = False) -> tuple[str, float, dict[str, float]]:
    name = b.fresh("sb-w")
    t0_wall = time.time()
    t0 = time.perf_counter()
    b.c.create(name, from_snapshot=f"{GOLD}:{SNAP}", wait=True)
    took = ms_since(t0)
    phases = event_phases(b, name, WARM_EVENTS, t0_wall, time.time())
    if not keep:
        b.c.destroy(name)
    return name, took, phases


def raw_streamed(b: Bench, state: Path) -> RawVM:
    """A streamed restore by hand, to an answering agent; marks in ``vm.marks``."""
    vm = b.raw.launch("vm", ["-incoming", "defer"])
    raw_load(vm.qmp, state)
    vm.marks["loaded"] = b.raw.since(vm)
    vm.qmp.execute("cont")
    vm.marks["running"] = b.raw.since(vm)
    vm.agent = Agent(vm.qga, attempt=0.02)
    vm.marks["agent"] = b.raw.since(vm)
    return vm


def raw_template(b: Bench, tdir: Path) -> RawVM:
    """Corral's warm start by hand: its clone argv, its template's device state, then the
    identity fix-up Corral makes; marks in ``vm.marks``."""
    vm = b.raw.launch("clone", ["-incoming", "defer"])
    raw_load(vm.qmp, tdir / "dev.state", ignore_shared=True)
    vm.marks["loaded"] = b.raw.since(vm)
    vm.qmp.execute("cont")
    vm.marks["running"] = b.raw.since(vm)
    vm.agent = Agent(vm.qga, attempt=0.02)
    vm.marks["agent"] = b.raw.since(vm)
    vm.agent.execute("guest-set-time", {"time": time.time_ns()})
    vm.marks["clock"] = b.raw.since(vm)
    vm.agent.execute("guest-exec", {"path": "sh", "arg": [
        "-c", f"hostname {vm.name}; ip link set dev eth0 address 52:54:00:be:00:01"]})
    vm.marks["identity"] = b.raw.since(vm)
    return vm


def phase_warm(b: Bench, raw_state: Path, tdir: Path) -> None:
    """Single warm starts (Corral, raw streamed, raw with Corral's template), then four in a
    row, then the idle clones' memory."""
    def corral() -> list[tuple[str, float]]:
        _name, took, phases = corral_warm(b)
        b.phases("warm", phases)
        return [("warm_ready", took), ("warm_running", phases["request→created"]
                                       + phases["created→starting"]
                                       + phases["starting→warm_started"])]

    def streamed() -> list[tuple[str, float]]:
        vm = raw_streamed(b, raw_state)
        b.raw.quit(vm)
        return [("warm_running", vm.marks["running"]), ("warm_agent", vm.marks["agent"])]

    def template() -> list[tuple[str, float]]:
        vm = raw_template(b, tdir)
        b.raw.quit(vm)
        return [("warm_running", vm.marks["running"]), ("warm_agent", vm.marks["agent"]),
                ("warm_clock", vm.marks["clock"]), ("warm_ready", vm.marks["identity"])]

    interleave([("corral", corral), ("raw", streamed), ("tmpl", template)], b.reps,
               b.samples, "warm starts", gap=0.2)
    b.drop_first("warm")  # the warm-up went in too

    def corral4() -> list[tuple[str, float]]:
        t0 = time.perf_counter()
        names = [corral_warm(b, keep=True)[0] for _ in range(4)]
        took = ms_since(t0)
        time.sleep(SETTLE)
        for name in names:
            b.memory("clone", "corral", b.cpid(name))
        for name in names:
            b.c.destroy(name)
        return [("warm4", took)]

    def template4() -> list[tuple[str, float]]:
        t0 = time.perf_counter()
        vms = [raw_template(b, tdir) for _ in range(4)]
        took = ms_since(t0)
        time.sleep(SETTLE)
        for vm in vms:
            b.memory("clone", "tmpl", vm.pid)
        for vm in vms:
            b.raw.quit(vm)
        return [("warm4", took)]

    interleave([("corral", corral4), ("tmpl", template4)], b.reps, b.samples,
               "4 warm starts in a row", warmup=False, gap=0.2)
    vm = raw_streamed(b, raw_state)  # memory after a streamed restore, for reference
    time.sleep(SETTLE)
    b.memory("streamed", "raw", vm.pid)
    b.raw.quit(vm)


def save_restore_ops(b: Bench, cname: str, rvm: dict[str, RawVM], key: str, tag: str,
                     state_dir: Path) -> list[tuple[str, Op]]:
    """The (system, fn) entries of one save + restore cycle each, for memory size ``tag``."""
    def corral() -> list[tuple[str, float]]:
        t0_wall, t0 = time.time(), time.perf_counter()
        b.c.save(cname)
        save = ms_since(t0)
        b.phases(f"save{tag}", event_phases(b, cname, ("saving", "state_written", "saved"),
                                            t0_wall, time.time()))
        size = b.state_bytes(cname)
        t0_wall, t0 = time.time(), time.perf_counter()
        b.c.restore(cname)
        running = ms_since(t0)
        t1_wall = time.time()
        b.c.wait_ready(cname)
        ready = ms_since(t0)
        b.phases(f"restore{tag}", {
            **event_phases(b, cname, ("restoring", "restored"), t0_wall, t1_wall),
            "restored→ready (agent, clock)": event_phases(
                b, cname, ("restored", "ready"), t0_wall, time.time())["restored→ready"]})
        return [(f"save{tag}", save), (f"restore{tag}", running),
                (f"restore_ready{tag}", ready), (f"size{tag}", size / 2**20)]

    def raw() -> list[tuple[str, float]]:
        vm = rvm["vm"]
        state = state_dir / f"raw{tag}.state"
        # in Corral's order (the fsync before QEMU ends, so a restore follows the exit at
        # once on both sides); "save" leaves the fsync out, "save_fsync" counts it
        t0 = time.perf_counter()
        size = raw_save(vm.qmp, state)
        migrated = ms_since(t0)
        t0 = time.perf_counter()
        fsync_file(state)
        fsync = ms_since(t0)
        quit_ms = b.raw.quit(vm)
        save, synced = migrated + quit_ms, migrated + fsync + quit_ms
        vm = b.raw.launch(key, ["-incoming", "defer"])
        raw_load(vm.qmp, state)
        vm.qmp.execute("cont")
        running = b.raw.since(vm)
        vm.agent = Agent(vm.qga, attempt=0.02)
        vm.agent.execute("guest-set-time", {"time": time.time_ns()})
        ready = b.raw.since(vm)
        rvm["vm"] = vm
        state.unlink()
        return [(f"save{tag}", save), (f"save_fsync{tag}", synced),
                (f"restore{tag}", running), (f"restore_ready{tag}", ready),
                (f"size{tag}", size / 2**20)]

    return [("corral", corral), ("raw", raw)]


def virsh_ops(b: Bench, tag: str) -> list[tuple[str, Op]]:
    virsh = b.virsh
    if virsh is None:
        return []
    state = b.ws / "l" / "virsh.state"

    failed: list[str] = []

    def run() -> list[tuple[str, float]]:
        if failed:
            return []
        try:
            name = virsh.name("sr")
            save = virsh.virsh("save", name, str(state))
            size = state.stat().st_size
            t0 = time.perf_counter()
            virsh.virsh("restore", str(state))
            running = ms_since(t0)
            virsh.wait_ready("sr")
            ready = ms_since(t0)
            state.unlink()
        except Exception as err:  # libvirt is a guest here: its failure skips it only
            failed.append(str(err))
            b.meta["libvirt"] = f"FAILED during save/restore, not measured further: {err}"
            log(b.meta["libvirt"])
            return []
        return [(f"save{tag}", save), (f"restore{tag}", running),
                (f"restore_ready{tag}", ready), (f"size{tag}", size / 2**20)]

    return [("virsh", run)]


def phase_save_restore(b: Bench) -> tuple[str, dict[str, RawVM]]:
    """256 MiB: Corral, raw (and virsh) save + restore, interleaved. Returns the Corral VM
    and the raw VM, running, for the disk phase."""
    cname = "sb-sr"
    b.c.create(cname, memory="256M")
    b.c.start(cname, wait=True)
    vm, _ = b.raw.boot("vm")
    rvm = {"vm": vm}
    entries = save_restore_ops(b, cname, rvm, "vm", "", b.ws / "r")
    if b.virsh is not None:
        try:
            b.virsh.prepare("sr")
            b.virsh.boot("sr")
            entries += virsh_ops(b, "")
        except Exception as err:  # libvirt is a guest here: its failure skips it only
            b.meta["libvirt"] = f"FAILED while preparing save/restore, not measured: {err}"
            log(b.meta["libvirt"])
    time.sleep(SETTLE)
    b.memory("cold", "corral", b.cpid(cname))
    b.memory("cold", "raw", rvm["vm"].pid)
    interleave(entries, b.reps, b.samples, "save/restore 256 MiB", gap=0.3)
    b.drop_first("save", "restore")
    time.sleep(SETTLE)
    b.memory("restored", "corral", b.cpid(cname))
    b.memory("restored", "raw", rvm["vm"].pid)
    return cname, rvm


def phase_memory_size(b: Bench) -> None:
    """1 GiB guests holding 600 MiB of data: save + restore, and the host's write speed."""
    b.c.create(BIG, memory="1G")
    b.c.start(BIG, wait=True)
    b.meta["argv_big"] = b.raw.learn("big", b.corral.home, BIG, b.cpid(BIG))
    vm, _ = b.raw.boot("big")
    assert vm.agent is not None
    rvm = {"vm": vm}
    log(f"filling {FILL_MIB} MiB of guest RAM with non-zero data in both 1 GiB guests")
    t0 = time.perf_counter()
    started = vm.agent.execute("guest-exec", {"path": "sh", "arg": ["-c", FILL],
                                              "capture-output": True})
    b.csh(BIG, FILL)
    while not (st := vm.agent.execute("guest-exec-status", {"pid": started["pid"]}))["exited"]:
        time.sleep(0.05)
    if st.get("exitcode") != 0:
        raise RuntimeError(f"the raw 1 GiB guest could not fill its memory: {st}")
    b.meta["fill_seconds"] = round(time.perf_counter() - t0, 1)
    entries = save_restore_ops(b, BIG, rvm, "big", "_1g", b.ws / "r")
    interleave(entries, b.reps, b.samples, "save/restore 1 GiB", gap=0.3)
    b.drop_first("save_1g", "restore_1g")
    b.raw.quit(rvm["vm"])
    b.c.destroy(BIG)
    host_speed(b)


def host_speed(b: Bench) -> None:
    """The host's own sequential write speed, into the directory Corral writes states to."""
    target = b.corral.home / "vms" / "sb-sr" / "dd.bin"
    for _ in range(b.reps):
        secs = host_dd(["if=/dev/zero", f"of={target}", "bs=1M", "count=512",
                        "conv=fdatasync"])
        b.add("dd_mib_s", "host", 512 / secs)
        target.unlink()


def guest_dd(b: Bench, name: str, args: str) -> float:
    """Seconds of one ``dd`` in the Corral guest, by its own clock."""
    a, c = b.csh(name, GUEST_DD.format(args=args)).split()
    return float(c) - float(a)


def phase_disk(b: Bench, cname: str) -> None:
    """A named qcow2 disk hot-plugged into the running Corral guest: dd with direct IO in
    the guest, against dd on a host file in the same directory."""
    disk = b.c.disk_create("sb-io", size="1G")
    before = set(b.csh(cname, "ls /sys/block").split())
    b.c.attach_disk(cname, "sb-io")
    deadline = time.monotonic() + 30
    while not (new := set(b.csh(cname, "ls /sys/block").split()) - before):
        if time.monotonic() > deadline:
            raise RuntimeError("the hot-plugged disk did not appear in the guest")
        time.sleep(0.1)
    dev = f"/dev/{sorted(new)[0]}"
    host_file = Path(disk["path"]).with_name("host-io.bin")
    b.meta["disk"] = (f"{disk['format']} {disk['path']} as {dev} (virtio-blk, hot-plugged); "
                      f"host file {host_file}")
    count = f"bs=1M count={IO_MIB}"
    b.add("first_write", "guest", IO_MIB / guest_dd(
        b, cname, f"if=/dev/zero of={dev} {count} oflag=direct"))
    b.add("first_write", "host_direct", IO_MIB / host_dd(
        ["if=/dev/zero", f"of={host_file}", "bs=1M", f"count={IO_MIB}", "oflag=direct"]))

    def guest() -> list[tuple[str, float]]:
        w = guest_dd(b, cname, f"if=/dev/zero of={dev} {count} oflag=direct")
        r = guest_dd(b, cname, f"if={dev} of=/dev/null {count} iflag=direct")
        return [("write", IO_MIB / w), ("read", IO_MIB / r)]

    def host(flag: str, key: str) -> tuple[str, Op]:
        def run() -> list[tuple[str, float]]:
            w = host_dd(["if=/dev/zero", f"of={host_file}", "bs=1M", f"count={IO_MIB}",
                         "conv=notrunc", *([f"oflag={flag}"] if flag else [])])
            r = host_dd([f"if={host_file}", "of=/dev/null", "bs=1M", f"count={IO_MIB}",
                         *([f"iflag={flag}"] if flag else [])])
            return [("write", IO_MIB / w), ("read", IO_MIB / r)]
        return (key, run)

    interleave([("guest", guest), host("direct", "host_direct"), host("", "host_cache")],
               b.reps, b.samples, "disk IO")
    b.c.detach_disk(cname, "sb-io")
    host_file.unlink()


# ----- report ---------------------------------------------------------------------------------

def mib(kib: float) -> float:
    return kib / 1024


def mem_cell(samples: list[Memory] | None) -> str:
    if not samples:
        return "—"
    rss = med([mib(m.rss_kib) for m in samples])
    pss = med([mib(m.pss_kib) for m in samples])
    return f"{rss:.1f} / {pss:.1f}"


def fmt_ms(samples: list[float]) -> str:
    return f"{samples[0]:.0f}" if samples else "—"


def report(b: Bench) -> str:
    s, m = b.samples, b.meta
    warm_rows = [
        ["cold boot → agent ready", cell(get(s, "cold", "corral")), cell(get(s, "cold", "raw")),
         "—", tratio(s, "cold", "corral", "raw"), "—"],
        ["first warm start, builds the template (n=1)", cell(get(s, "warm_first", "corral")),
         "—", "—", "—", "—"],
    ]
    for op, label in (("warm_running", "warm start → QEMU running (state in, cont)"),
                      ("warm_agent", "warm start → guest agent answers"),
                      ("warm_clock", "warm start → clock set (guest-set-time)"),
                      ("warm_ready", "warm start → ready (+ clock, hostname, MAC)"),
                      ("warm4", "4 warm starts in a row, total")):
        warm_rows.append([label, *(cell(get(s, op, k)) for k in ("corral", "raw", "tmpl")),
                          tratio(s, op, "corral", "raw"), tratio(s, op, "corral", "tmpl")])
    warm_rows.append(["warm start / cold boot (raw streamed: to agent)",
                      tratio(s, "warm_ready", "corral", "corral", "cold"),
                      tratio(s, "warm_agent", "raw", "raw", "cold"),
                      tratio(s, "warm_ready", "tmpl", "raw", "cold"), "", ""])
    warm = render_table(["warm start (ms)", "Corral", "raw streamed", "raw, Corral's tmpl",
                         "Corral/raw", "Corral/tmpl"], warm_rows)

    breakdown = render_table(["Corral warm start, from its event log (ms)", "median (min-max)"],
                             [[k, cell(v)] for k, v in b.breakdown.get("warm", {}).items()])
    sr_phase_rows = []
    for what in ("save", "restore"):
        names = list(dict.fromkeys(k for tag in ("", "_1g")
                                   for k in b.breakdown.get(what + tag, {})))
        sr_phase_rows += [[f"{what}: {k}", *(cell(b.breakdown.get(what + tag, {}).get(k, []))
                                             for tag in ("", "_1g"))] for k in names]
    sr_phases = render_table(["Corral save/restore, from its event log (ms)", "256 MiB",
                              "1 GiB"], sr_phase_rows)

    mem_rows = [[label, mem_cell(b.mem.get(row, {}).get(sysk)),
                 mem_cell(b.mem.get(row, {}).get(rawk))]
                for row, label, sysk, rawk in (
                    ("clone", "idle warm clone (Corral / raw with Corral's template)",
                     "corral", "tmpl"),
                    ("cold", "idle after a cold boot", "corral", "raw"),
                    ("restored", "idle after save + restore", "corral", "raw"),
                    ("streamed", "idle after a raw streamed restore", "corral", "raw"))]
    memory = render_table(["QEMU memory, RSS / PSS (MiB)", "Corral", "raw QEMU"], mem_rows)

    keys = ["corral", "raw"] + (["virsh"] if get(s, "save", "virsh") else [])
    sr_rows = []
    for op, label in (("save", "save (stop, state to file, QEMU ends)"),
                      ("save_fsync", "  raw + fsync of the state (Corral fsyncs)"),
                      ("restore", "restore → running (call returns)"),
                      ("restore_ready", "restore → agent answers (+ clock set)"),
                      ("size", "state file (MiB)")):
        row = [label, *(cell(get(s, op, k)) for k in keys), tratio(s, op, "corral", "raw")]
        if "virsh" in keys:
            row.append(tratio(s, op, "virsh", "corral"))
        sr_rows.append(row)
    sr_rows[1][-1 if "virsh" not in keys else -2] = tratio(s, "save", "corral", "raw",
                                                           "save_fsync")
    sr = render_table(["save / restore, 256 MiB (ms)", "Corral", "raw QEMU",
                       *(["virsh"] if "virsh" in keys else []), "Corral/raw",
                       *(["virsh/Corral"] if "virsh" in keys else [])], sr_rows)

    dd = med(get(s, "dd_mib_s", "host"))
    size_rows = []
    for tag, label in (("", "256 MiB guest"), ("_1g", f"1 GiB guest, {FILL_MIB} MiB filled")):
        size = med(get(s, f"size{tag}", "corral"))
        bound = f"{size / dd * 1000:.0f}" if size and dd else "—"
        size_rows.append([label, f"{size:.0f}" if size else "—",
                          cell(get(s, f"save{tag}", "corral")), cell(get(s, f"save{tag}", "raw")),
                          cell(get(s, f"save_fsync{tag}", "raw")), bound,
                          cell(get(s, f"restore{tag}", "corral")),
                          cell(get(s, f"restore{tag}", "raw")),
                          tratio(s, f"save{tag}", "corral", "raw"),
                          tratio(s, f"restore{tag}", "corral", "raw")])
    sizes = render_table(["memory size (ms)", "state MiB", "Corral save", "raw save",
                          "raw save+fsync", "host dd bound", "Corral restore", "raw restore",
                          "save C/raw", "restore C/raw"], size_rows)

    io_rows = []
    for op, label in (("first_write", f"write {IO_MIB} MiB, first pass (allocates)"),
                      ("write", f"write {IO_MIB} MiB"), ("read", f"read {IO_MIB} MiB")):
        g, hd, hc = (med(get(s, op, k)) for k in ("guest", "host_direct", "host_cache"))
        io_rows.append([label, *(cell(get(s, op, k)) for k in
                                 ("guest", "host_direct", "host_cache")),
                        f"{g / hd:.2f}x" if g and hd else "—",
                        f"{g / hc:.2f}x" if g and hc else "—"])
    io = render_table(["disk IO (MiB/s)", "guest, virtio, O_DIRECT", "host file, O_DIRECT",
                       "host file, page cache", "guest/host direct", "guest/host cache"],
                      io_rows)

    return "\n".join([
        "",
        f"Corral saved-state benchmark: {m['host']}, {m['qemu']}, accel {m['accel']}, guest "
        f"q35 1 vCPU, 256 MiB unless said. Median (min-max); n={m['reps']} (warm starts and "
        "save/restore after 1 warm-up)",
        f"libvirt: {m['libvirt']}",
        f"raw QEMU argv: Corral's own: {m['argv']}; clone: {m['argv_clone']}",
        f"raw streamed = full state file saved from a booted raw VM ({m['raw_state_mib']:.0f}"
        " MiB); raw, Corral's tmpl = Corral's warm clone argv + its template's RAM file and "
        "device state, x-ignore-shared, then set-time + hostname/MAC exec as Corral does",
        "",
        warm,
        "",
        breakdown,
        f"first warm start {fmt_ms(get(s, 'warm_first', 'corral'))} ms (the template is built "
        f"before 'created'): " + ", ".join(f"{k} {v}" for k, v in
                                          m.get("first_warm_phases", {}).items())
        + f"; memory snapshot of the golden VM: {m.get('snapshot_ms', '—')} ms",
        "",
        memory,
        "",
        sr,
        "",
        sizes,
        "",
        sr_phases,
        f"host dd bound = state size / the host's sequential write speed, dd bs=1M count=512 "
        f"conv=fdatasync into {b.corral.home}/vms: "
        f"{cell(get(s, 'dd_mib_s', 'host'))} MiB/s; 1 GiB guests filled in "
        f"{m.get('fill_seconds', '—')} s",
        "",
        io,
        f"disk: {m.get('disk', '—')}",
        "",
        "targets (from the issue):",
        *targets(b),
        f"\n(total {m['seconds']} s; load average {m['load'][0]:.2f} at start, "
        f"{m['load'][1]:.2f} at end)",
    ])


def targets(b: Bench) -> list[str]:
    s = b.samples
    warm = med(get(s, "warm_ready", "corral"))
    warm4 = med(get(s, "warm4", "corral"))
    rss = med([mib(x.rss_kib) for x in b.mem.get("clone", {}).get("corral", [])])
    out = [target_line(None if warm is None else warm / 1000, 0.1,
                       "warm start to an answering agent under 0.1 s",
                       f"{warm / 1000:.3f} s" if warm is not None else ""),
           target_line(None if warm4 is None else warm4 / 1000, 0.5,
                       "4 warm starts in a row under 0.5 s",
                       f"{warm4 / 1000:.3f} s" if warm4 is not None else ""),
           target_line(rss, 100, "idle clone under 100 MiB RSS",
                       f"{rss:.1f} MiB" if rss is not None else "")]
    for op, what in (("save", "save"), ("restore", "restore")):
        c, r = med(get(s, op, "corral")), med(get(s, op, "raw"))
        v = c / r if c is not None and r else None
        extra = ""
        if op == "save" and (f := med(get(s, "save_fsync", "raw"))) and c is not None:
            extra = f"; against raw + fsync: {c / f:.2f}x"
        out.append(target_line(v, 1.3, f"{what} at most 1.3x raw QEMU (256 MiB)",
                               f"{v:.2f}x ({c:.0f} vs {r:.0f} ms{extra})"
                               if v is not None and c is not None and r is not None else ""))
    return out


# ----- main -----------------------------------------------------------------------------------

def setup_libvirt(b: Bench, stack: contextlib.ExitStack, token: str) -> None:
    host = _libvirt.LibvirtHost(b.ws / "l")
    stack.callback(host.stop)
    try:
        log("setting up libvirt")
        host.start()
    except _libvirt.LibvirtUnavailable as err:
        host.stop()
        b.meta["libvirt"] = f"UNAVAILABLE here, not measured: {err}"
        log(f"libvirt: {b.meta['libvirt']}")
        return
    virsh = _libvirt.Virsh(host, b.ws / "l", f"crs-{token}",
                           Path(b.raw.option("vm", "-kernel")),
                           Path(b.raw.option("vm", "-initrd")),
                           b.raw.option("vm", "-append"), 256)
    stack.callback(virsh.close)
    b.virsh = virsh
    b.meta["libvirt"] = "; ".join([f"ok: {host.version}, libvirtd and virtlogd started and "
                                   "stopped by this benchmark; virsh save/restore (CLI)",
                                   *host.notes])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3, help="repetitions of every measure (3)")
    p.add_argument("--with-libvirt", action="store_true",
                   help="install (apt, pip) and start libvirt, and measure virsh save/restore")
    p.add_argument("--quick", action="store_true",
                   help=f"skip the 1 GiB save/restore; disk IO with {QUICK_IO_MIB} MiB")
    p.add_argument("--json", type=Path, help="write the raw numbers to this file")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error("--reps must be at least 1")
    return args



def run(b: Bench, args: argparse.Namespace, stack: contextlib.ExitStack, token: str) -> None:
    c = b.c
    log(f"starting corral serve (CORRAL_HOME={b.corral.home})")
    b.corral.start_daemon()
    log("booting the golden guests (Corral and raw)")
    c.create(GOLD, memory="256M")
    c.start(GOLD, wait=True)
    b.meta["argv"] = b.raw.learn("vm", b.corral.home, GOLD, b.cpid(GOLD))
    b.meta["accel"] = b.raw.option("vm", "-accel")
    rgold, _ = b.raw.boot("vm")
    if args.with_libvirt:
        setup_libvirt(b, stack, token)
    time.sleep(SETTLE)
    log(f"cold boots, {b.reps} each")
    phase_cold(b)

    log("memory snapshot of the golden guest, then the first warm start (builds the template)")
    t0 = time.perf_counter()
    c.snapshot_create(GOLD, SNAP, memory=True)
    b.meta["snapshot_ms"] = round(ms_since(t0))
    name, took, phases = corral_warm(b, keep=True)
    b.add("warm_first", "corral", took)
    b.meta["first_warm_phases"] = {k: round(v) for k, v in phases.items()}
    b.meta["argv_clone"] = b.raw.learn("clone", b.corral.home, name, b.cpid(name))
    c.destroy(name)
    tdir = b.corral.home / "vms" / GOLD / "templates" / SNAP
    raw_state = b.ws / "r" / "golden.state"
    b.meta["raw_state_mib"] = raw_save(rgold.qmp, raw_state) / 2**20
    b.raw.quit(rgold)
    log(f"warm starts, {b.reps} each + 1 warm-up; then 4 in a row, {b.reps} times")
    phase_warm(b, raw_state, tdir)

    log(f"save/restore at 256 MiB, {b.reps} each + 1 warm-up")
    cname, rvm = phase_save_restore(b)
    b.raw.quit(rvm["vm"])
    if b.virsh is not None:
        with contextlib.suppress(Exception):
            b.virsh.remove("sr")
    if args.quick:
        global IO_MIB
        IO_MIB = QUICK_IO_MIB
        host_speed(b)
    else:
        log(f"save/restore at 1 GiB, {b.reps} each + 1 warm-up")
        phase_memory_size(b)
    log(f"disk IO, {IO_MIB} MiB, {b.reps} each + 1 warm-up")
    phase_disk(b, cname)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    images = image_path()
    os.environ["CORRAL_IMAGE_PATH"] = images
    become_subreaper()
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                          check=False).stdout.split("\n")[0]
    t_start = time.monotonic()
    load0 = os.getloadavg()[0]
    token = secrets.token_hex(3)
    ws = Path(f"/tmp/crs-{token}")
    ws.mkdir()
    b = Bench(ws, images, args.reps)
    b.meta.update({"host": f"{os.cpu_count()} CPUs, Linux {platform.release()}",
                   "qemu": qemu, "reps": args.reps,
                   "libvirt": "not measured (run with --with-libvirt)"})
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, ws, True)
        ws.chmod(0o755)  # libvirt's QEMU user must reach its files inside
        stack.callback(b.corral.close)
        stack.callback(b.raw.close)
        run(b, args, stack, token)
    b.meta["load"] = (load0, os.getloadavg()[0])
    b.meta["seconds"] = round(time.monotonic() - t_start, 1)
    print(report(b))
    if args.json:
        args.json.write_text(json.dumps({
            "meta": b.meta, "samples": b.samples, "warm_breakdown_ms": b.breakdown,
            "memory_kib": {row: {k: [vars(x) for x in v] for k, v in by.items()}
                           for row, by in b.mem.items()}}, indent=2) + "\n")
        log(f"raw numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    run_benchmark(main)

"""Helpers for the guest and state benchmarks (``guest.py``, ``state.py``): a minimal guest
agent client, QMP with file descriptors and migration, and raw QEMU started by hand from a
Corral VM's own command line. Standard library only, like ``_common.py``, so the raw side of
a comparison carries no framework cost."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    QMP,
    LineSocket,
    Summary,
    fmt_summary,
    kill_and_reap,
    ms_since,
    reap,
    replayable,
)

from corral.config import Paths


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----- the guest agent, by hand ---------------------------------------------------------------

class Agent:
    """A guest agent client on one persistent connection: one ``guest-sync-delimited`` when
    it connects (retried every ``attempt`` seconds while the guest comes up), then one JSON
    request and one reply per command, with no sync in between."""

    def __init__(self, path: Path, timeout: float = 120.0, attempt: float = 0.02) -> None:
        self.conn = LineSocket(path, timeout)
        self.timeout = timeout
        deadline = time.perf_counter() + timeout
        try:
            while time.perf_counter() < deadline:
                ident = secrets.randbelow(1 << 31)
                self.conn.send(b"\xff" + json.dumps({"execute": "guest-sync-delimited",
                                                     "arguments": {"id": ident}}).encode()
                               + b"\n")
                until = min(deadline, time.perf_counter() + attempt)
                while (msg := self.conn.read_json(until)) is not None:
                    if msg.get("return") == ident:
                        return
            raise TimeoutError(f"guest agent at {path} did not answer in {timeout} s")
        except BaseException:
            self.conn.close()
            raise

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.conn.send(json.dumps(msg).encode() + b"\n")
        reply = self.conn.read_json(time.perf_counter() + self.timeout)
        if reply is None:
            raise TimeoutError(f"guest agent: no answer to {command} in {self.timeout} s")
        if "error" in reply:
            raise RuntimeError(f"guest agent {command}: {reply['error']}")
        return reply.get("return")

    def run(self, argv: Sequence[str], poll: float = 0.001) -> dict[str, Any]:
        """``guest-exec`` with captured output, then ``guest-exec-status`` every ``poll``
        seconds until it exits."""
        pid = self.execute("guest-exec", {"path": argv[0], "arg": list(argv[1:]),
                                          "capture-output": True})["pid"]
        while True:
            status: dict[str, Any] = self.execute("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                return status
            time.sleep(poll)

    def sh(self, script: str) -> str:
        """Run a shell script in the guest; its stdout (stderr too on failure)."""
        st = self.run(["sh", "-c", script], poll=0.01)
        out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
        if st.get("exitcode") != 0:
            err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
            raise RuntimeError(f"guest: {script!r} exited {st.get('exitcode')}: {err.strip()}")
        return out

    def write_file(self, path: str, data: bytes, chunk: int = 1 << 20) -> None:
        """``guest-file-open``/``-write`` (``chunk`` bytes each)/``-flush``/``-close``. After
        a failure the handle is left open: the channel may be mid-request, and the guest is
        thrown away anyway."""
        handle = self.execute("guest-file-open", {"path": path, "mode": "wb"})
        for off in range(0, len(data), chunk):
            self.execute("guest-file-write", {
                "handle": handle, "buf-b64": base64.b64encode(data[off:off + chunk]).decode()})
        self.execute("guest-file-flush", {"handle": handle})
        self.execute("guest-file-close", {"handle": handle})

    def read_file(self, path: str, chunk: int = 1 << 20) -> bytes:
        handle = self.execute("guest-file-open", {"path": path, "mode": "rb"})
        parts = []
        while True:
            got = self.execute("guest-file-read", {"handle": handle, "count": chunk})
            parts.append(base64.b64decode(got.get("buf-b64", "")))
            if got.get("eof") or not got.get("count"):
                break
        self.execute("guest-file-close", {"handle": handle})
        return b"".join(parts)

    def close(self) -> None:
        self.conn.close()


# ----- QMP: file descriptors and migration ----------------------------------------------------

def qmp_send_fd(qmp: QMP, fd: int, name: str) -> None:
    """``getfd``: hand QEMU an open file (SCM_RIGHTS) under ``name``, for ``fd:NAME`` URIs."""
    msg = json.dumps({"execute": "getfd", "arguments": {"fdname": name}}).encode() + b"\n"
    socket.send_fds(qmp.conn.sock, [msg], [fd])
    deadline = time.perf_counter() + qmp.timeout
    while True:
        reply = qmp.conn.read_json(deadline)
        if reply is None:
            raise TimeoutError("QMP getfd: no answer")
        if "error" in reply:
            raise RuntimeError(f"QMP getfd: {reply['error']}")
        if "return" in reply:
            return


def wait_migration(qmp: QMP, timeout: float = 600.0, poll: float = 0.001) -> dict[str, Any]:
    """Poll ``query-migrate`` every ``poll`` seconds until ``completed``."""
    deadline = time.perf_counter() + timeout
    while True:
        info: dict[str, Any] = qmp.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise RuntimeError(f"migration {status}: {info.get('error-desc', '')}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"migration still {status} after {timeout} s")
        time.sleep(poll)


UNLIMITED = 1 << 40  # bytes per second: QEMU 7.2's default cap is 128 MiB/s, even when stopped


def raw_save(qmp: QMP, target: Path) -> int:
    """``stop``, lift the bandwidth cap, ``migrate`` into an fd of ``target``, wait for
    ``completed``; returns the state's size. No fsync (see ``fsync_file``)."""
    qmp.execute("stop")
    with target.open("wb") as f:
        qmp_send_fd(qmp, f.fileno(), "bench-state")
    qmp.execute("migrate-set-parameters", {"max-bandwidth": UNLIMITED})
    qmp.execute("migrate", {"uri": "fd:bench-state"})
    wait_migration(qmp)
    return target.stat().st_size


def raw_load(qmp: QMP, source: Path, ignore_shared: bool = False) -> None:
    """Feed ``source`` to a QEMU started with ``-incoming defer`` and wait until it is in."""
    if ignore_shared:
        qmp.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "x-ignore-shared", "state": True}]})
    with source.open("rb") as f:
        qmp_send_fd(qmp, f.fileno(), "bench-state")
    qmp.execute("migrate-incoming", {"uri": "fd:bench-state"})
    wait_migration(qmp)


def fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


# ----- raw QEMU from Corral's own argv --------------------------------------------------------

@dataclass
class RawVM:
    pid: int
    qmp: QMP
    run: Path
    name: str
    agent: Agent | None = None
    marks: dict[str, float] = field(default_factory=dict)  # label -> ms since launch

    @property
    def qga(self) -> Path:
        return self.run / "qga.sock"


class RawQemu:
    """Corral's own QEMU argv, read from a running Corral VM's ``/proc/PID/cmdline``, replayed
    by hand with a fresh run dir and name per start (files Corral made in the VM's directory
    for QEMU to open, such as ``vmstate.qcow2``, are copied in, untimed). Every QEMU it
    starts is under ``root``, so :meth:`close` finds even one interrupted mid-start."""

    RUN, NAME = "@RUN@", "@NAME@"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.templates: dict[str, tuple[list[str], list[Path]]] = {}
        self.vms: list[RawVM] = []
        self.starts = 0

    def learn(self, key: str, home: Path, name: str, pid: int) -> str:
        """Take the argv of Corral's running VM ``name`` (without ``-incoming``) as ``key``."""
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
        if "-incoming" in argv:
            i = argv.index("-incoming")
            del argv[i:i + 2]
        paths = Paths(home)
        run, vm_dir = str(paths.run_dir(name)), str(paths.vm_dir(name))
        argv = replayable(argv, run)
        template = [a.replace(run, self.RUN).replace(vm_dir, self.RUN).replace(name, self.NAME)
                    for a in argv]
        keep = self.root / f"template-{key}"
        keep.mkdir(parents=True)
        files = []
        for f in sorted(Path(vm_dir).iterdir()):
            if f.is_file() and f.name != "serial.log" and f.name in " ".join(argv):
                shutil.copy2(f, keep / f.name)
                files.append(keep / f.name)
        self.templates[key] = (template, files)
        copied = ", ".join(f.name for f in files) or "none"
        return f"{len(argv)} args from /proc/{pid}/cmdline, VM files copied: {copied}"

    def option(self, key: str, flag: str) -> str:
        template = self.templates[key][0]
        return template[template.index(flag) + 1]

    def launch(self, key: str, extra: Sequence[str] = ()) -> RawVM:
        """Start QEMU (it daemonizes) and connect QMP; the launch is timed from the Popen:
        ``vm.marks['qmp']``. Run-dir preparation happens before, untimed."""
        template, files = self.templates[key]
        self.starts += 1
        name = f"rw{self.starts}"
        run = self.root / name
        run.mkdir(parents=True)
        for f in files:
            shutil.copy2(f, run / f.name)
        argv = [a.replace(self.RUN, str(run)).replace(self.NAME, name) for a in template]
        t0 = time.perf_counter()
        proc = subprocess.Popen([*argv, *extra], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        _out, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"QEMU exited {proc.returncode}: {err.decode().strip()}")
        pid = int((run / "qemu.pid").read_text())
        try:
            vm = RawVM(pid, QMP(run / "qmp.sock"), run, name)
        except BaseException:
            kill_and_reap(pid)
            raise
        vm.marks["t0"] = t0
        vm.marks["qmp"] = ms_since(t0)
        self.vms.append(vm)
        return vm

    def since(self, vm: RawVM) -> float:
        return ms_since(vm.marks["t0"])

    def boot(self, key: str) -> tuple[RawVM, float]:
        """A cold boot to an answering agent; the VM and the ms it took."""
        vm = self.launch(key)
        vm.agent = Agent(vm.qga, attempt=0.5)
        return vm, self.since(vm)

    def quit(self, vm: RawVM) -> float:
        """``quit`` and wait for the pid to go; ms."""
        t0 = time.perf_counter()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError, RuntimeError):
            vm.qmp.execute("quit")
        if not reap(vm.pid):
            kill_and_reap(vm.pid)
        took = ms_since(t0)
        self.discard(vm)
        return took

    def discard(self, vm: RawVM) -> None:
        """Forget a VM whose QEMU is gone (or kill it) and remove its run dir."""
        if vm.agent is not None:
            vm.agent.close()
        vm.qmp.close()
        kill_and_reap(vm.pid)
        if vm in self.vms:
            self.vms.remove(vm)
        shutil.rmtree(vm.run, ignore_errors=True)

    def close(self) -> None:
        from lifecycle import qemu_pids

        for vm in list(self.vms):
            self.discard(vm)
        for pid in qemu_pids(str(self.root)):  # interrupted between spawn and bookkeeping
            kill_and_reap(pid)


# ----- the host's own tools -------------------------------------------------------------------

_DD_RATE = re.compile(r"copied, ([0-9.]+) s")


def host_dd(argv: Sequence[str]) -> float:
    """Run coreutils ``dd`` and return the seconds it reports."""
    res = subprocess.run(["dd", *argv], capture_output=True, text=True, check=False)
    m = _DD_RATE.search(res.stderr)
    if res.returncode != 0 or m is None:
        raise RuntimeError(f"dd {' '.join(argv)}: {res.stderr.strip()}")
    return float(m.group(1))


# ----- samples and tables ---------------------------------------------------------------------

Samples = dict[str, dict[str, list[float]]]  # op -> system -> samples
Op = Callable[[], list[tuple[str, float]]]  # one timed step: (op, value) pairs


def add(samples: Samples, op: str, system: str, value: float) -> None:
    samples.setdefault(op, {}).setdefault(system, []).append(value)


def get(samples: Samples, op: str, system: str) -> list[float]:
    return samples.get(op, {}).get(system, [])


def interleave(entries: Sequence[tuple[str, Op]], reps: int, samples: Samples, what: str,
               warmup: bool = True, gap: float = 0.01) -> None:
    """Run every ``(system, fn)`` once per repetition, after one discarded warm-up (if
    ``warmup``), the order rotating each time; ``fn`` returns ``(op, value)`` pairs."""
    for rep in range(-1 if warmup else 0, reps):
        k = (rep + 1) % max(1, len(entries))
        for system, fn in [*entries[k:], *entries[:k]]:
            for op, value in fn():
                if rep >= 0:
                    add(samples, op, system, value)
            time.sleep(gap)
        if rep >= 0 and ((rep + 1) % max(1, reps // 3) == 0 or rep + 1 == reps):
            log(f"{what}: {rep + 1}/{reps}")


def cell(samples: Sequence[float]) -> str:
    return fmt_summary(Summary.of(samples))


def tratio(samples: Samples, op: str, num: str, den: str, den_op: str | None = None) -> str:
    """The ratio of the medians of ``num`` and ``den`` (for ``op``; ``den_op`` for the
    denominator if given)."""
    a, b = med(get(samples, op, num)), med(get(samples, den_op or op, den))
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}x"


def med(samples: Sequence[float]) -> float | None:
    s = Summary.of(samples)
    return s.median if s else None


def target_line(status_value: float | None, limit: float, name: str, shown: str) -> str:
    status = "n/a " if status_value is None else ("PASS" if status_value <= limit else "FAIL")
    return f"  {status}  {name}: {shown if status_value is not None else 'not measured'}"

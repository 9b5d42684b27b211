"""Helpers for the benchmarks: a minimal QMP client, the guest agent sync, process memory,
statistics and table rendering. Standard library only, so the raw-QEMU side of a comparison
carries no framework cost."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Adopt our orphaned descendants (the QEMUs that ``-daemonize`` leaves behind), so that
    ``waitpid`` on them returns the moment they exit."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def replayable(argv: list[str], run: str) -> list[str]:
    """Corral's QEMU argv (read from ``/proc``) as a QEMU started by hand runs it: the
    sockets Corral passes as descriptors made by QEMU itself in ``run``, no seccomp filter
    (its ``spawn=deny`` would kill the fork of ``-daemonize``), and ``-daemonize -pidfile``."""
    sockets = {"serial0": "console.sock", "qmp0": "qmp.sock", "qga0": "qga.sock"}
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip or arg == "-sandbox":
            skip = not skip
            continue
        m = re.match(r"socket,id=(\w+),fd=\d+,", arg)
        if m and m.group(1) in sockets:
            arg = f"socket,id={m.group(1)},path={run}/{sockets[m.group(1)]}," + arg[m.end():]
        out.append(arg)
    return [*out, "-daemonize", "-pidfile", f"{run}/qemu.pid"]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """Poll (0.2 ms) until ``pid`` is gone or a zombie; True if it went in time."""
    deadline = time.perf_counter() + timeout
    while pid_alive(pid):
        if time.perf_counter() > deadline:
            return False
        time.sleep(0.0002)
    return True


def reap(pid: int, timeout: float = 10.0) -> bool:
    """Wait for our child ``pid`` to exit and reap it; False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return wait_gone(pid, max(0.0, deadline - time.monotonic()))
        if done == pid:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0002)


def qemu_pids(marker: str) -> list[int]:
    """The QEMU processes whose command line mentions ``marker`` (a home), zombies aside."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
        except OSError:
            continue
        if b"qemu-system" in cmd and marker.encode() in cmd and pid_alive(int(proc.name)):
            pids.append(int(proc.name))
    return pids


def kill_and_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)
    reap(pid, 10)


@dataclass(frozen=True)
class Memory:
    rss_kib: int
    pss_kib: int

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.rss_kib + other.rss_kib, self.pss_kib + other.pss_kib)


def memory_of(pid: int) -> Memory:
    """``VmRSS`` and ``Pss`` (smaps_rollup) of ``pid``, in KiB."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
    return Memory(rss, pss)


# ----- QMP and the guest agent ----------------------------------------------------------------

class LineSocket:
    """A unix stream socket read as JSON lines (the framing of QMP and of the guest agent)."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise
        self._buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_json(self, deadline: float | None = None) -> dict[str, Any] | None:
        """The next JSON object, or None when ``deadline`` (perf_counter) passes first."""
        while True:
            line, sep, rest = self._buf.partition(b"\n")
            if sep:
                self._buf = rest
                line = line.lstrip(b"\xff").strip()
                if not line:
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if isinstance(msg, dict):
                    return msg
                continue
            if deadline is not None:
                left = deadline - time.perf_counter()
                if left <= 0:
                    return None
                self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionError("the peer closed the socket")
            self._buf += chunk

    def close(self) -> None:
        self.sock.close()


class QMP:
    """A synchronous QMP client on one persistent connection. Events are skipped."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.conn = LineSocket(path, timeout)
        greeting = self.conn.read_json(time.perf_counter() + timeout)
        if greeting is None or "QMP" not in greeting:
            self.conn.close()
            raise ConnectionError(f"no QMP greeting on {path}")
        self.execute("qmp_capabilities")

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.conn.send(json.dumps(msg).encode() + b"\n")
        deadline = time.perf_counter() + self.timeout
        while True:
            reply = self.conn.read_json(deadline)
            if reply is None:
                raise TimeoutError(f"QMP {command}: no answer in {self.timeout} s")
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error']}")
            if "return" in reply:
                return reply["return"]

    def close(self) -> None:
        self.conn.close()


def agent_sync(path: Path, timeout: float = 120.0, attempt: float = 2.0) -> None:
    """Connect to a guest agent socket and wait until a ``guest-sync-delimited`` is answered.

    The request written before the guest opens its port waits in the socket and is answered
    when qemu-ga starts; a fresh id every ``attempt`` seconds catches a lost one (the same
    scheme as Corral's own agent client).
    """
    deadline = time.perf_counter() + timeout
    conn = LineSocket(path, timeout)
    try:
        while time.perf_counter() < deadline:
            ident = secrets.randbelow(1 << 31)
            conn.send(b"\xff" + json.dumps({"execute": "guest-sync-delimited",
                                            "arguments": {"id": ident}}).encode() + b"\n")
            until = min(deadline, time.perf_counter() + attempt)
            while (msg := conn.read_json(until)) is not None:
                if msg.get("return") == ident:
                    return
        raise TimeoutError(f"guest agent at {path} did not answer in {timeout} s")
    finally:
        conn.close()


# ----- statistics and tables ------------------------------------------------------------------

@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary | None:
        if not samples:
            return None
        return cls(statistics.median(samples), min(samples), max(samples), len(samples))

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}


def fmt_num(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_summary(s: Summary | None) -> str:
    if s is None:
        return "—"
    return f"{fmt_num(s.median)} ({fmt_num(s.low)}-{fmt_num(s.high)})"


def ratio(num: Summary | float | None, den: Summary | float | None) -> str:
    a = num.median if isinstance(num, Summary) else num
    b = den.median if isinstance(den, Summary) else den
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}x"


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def run_timed(argv: Sequence[str], env: dict[str, str] | None = None
              ) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """Run a command to its end: its result, its wall time and the CPU time (user + system)
    its process used, in ms. CPU time counts the command's own work, and holds still when
    the host is loaded, where wall time mostly counts the waits for a CPU."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(list(argv), env=env, capture_output=True, text=True, check=False)
    wall = ms_since(t0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return res, wall, cpu


class System:
    """One way to manage the benchmark guest. A *role* names one of its VMs ("boot", "idle",
    ...); timed methods return milliseconds."""

    key = ""

    def name(self, role: str) -> str:
        raise NotImplementedError

    def prepare(self, role: str) -> None:
        """Define the VM (untimed)."""

    def remove(self, role: str) -> None:
        """Undefine the VM (untimed)."""

    def boot(self, role: str) -> float:
        """Start; return when the guest agent answers."""
        raise NotImplementedError

    def spawn(self, role: str) -> float:
        """Start; return when QEMU runs and its monitor is connected."""
        raise NotImplementedError

    def destroy(self, role: str) -> float:
        """Stop at once; return when the QEMU pid is gone."""
        raise NotImplementedError

    def teardown(self, role: str) -> None:
        """Stop at once, untimed."""
        raise NotImplementedError

    def pause(self, role: str) -> float:
        raise NotImplementedError

    def resume(self, role: str) -> float:
        raise NotImplementedError

    def pid(self, role: str) -> int:
        raise NotImplementedError

    def list_vms(self) -> float:
        raise NotImplementedError

    def close(self) -> None:
        """Remove everything this system started (safe to call after a failure)."""


def _interrupt(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_benchmark(main: Callable[[], int]) -> NoReturn:
    """Run a benchmark's ``main`` so that Ctrl-C and SIGTERM unwind through its cleanup."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; everything the benchmark started was cleaned up", file=sys.stderr)
        sys.exit(130)

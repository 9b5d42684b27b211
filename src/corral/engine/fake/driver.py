"""The fake driver: launches and re-adopts :class:`~corral.engine.fake.machine.FakeMachine`s."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from corral.domain.specs import VMSpec
from corral.engine.driver import EventHandler, LaunchOptions
from corral.engine.fake.core import Failures, MachineCore, inject
from corral.engine.fake.machine import FakeMachine
from corral.engine.qemu import argv as qargv
from corral.errors import LaunchFailed


class FakeDriver:
    """Starts fake machines; see the module's docstring for what tests can make go wrong."""

    _registry: ClassVar[dict[Path, FakeMachine]] = {}  # live machines by run directory

    def __init__(self, accel: str = "tcg", boot_delay: float = 0.01,
                 latency: float = 0.0) -> None:
        self.accel = accel
        self.boot_delay = boot_delay
        self.latency = latency
        self.launched: list[FakeMachine] = []
        self.failures: Failures = {}
        self.orphans_ended: list[str] = []  # run directories swept with a machine in them
        #: called with every machine this driver launches, before the service sees it
        self.on_launch: Callable[[FakeMachine], None] | None = None

    def fail_next(self, op: str, error: BaseException, times: int = 1) -> None:
        """The next ``times`` calls of ``op`` (``launch``, ``adopt`` or a machine method, on
        any machine) raise ``error``, changing nothing."""
        inject(self.failures, op, error, times, FakeMachine)

    def machine(self, name: str) -> FakeMachine:
        """The machine of VM ``name``: the last launched or adopted one still alive, else
        the last one.

        :raises KeyError: none was ever launched for it.
        """
        mine = [m for m in self.launched if m.name == name]
        if not mine:
            raise KeyError(name)
        return next((m for m in reversed(mine) if m.alive), mine[-1])

    @classmethod
    def forget_all(cls) -> None:
        """Forget every live machine (between tests)."""
        cls._registry.clear()

    def gone(self, machine: MachineCore) -> None:
        """``machine`` exited: it can no longer be adopted."""
        if self._registry.get(machine.run_dir) is machine:
            del self._registry[machine.run_dir]

    def moved(self, machine: MachineCore, old: Path) -> None:
        """``machine``'s VM was renamed: it is adopted from its new run directory."""
        if self._registry.get(old) is machine:
            del self._registry[old]
            self._registry[machine.run_dir] = machine

    def cleanup(self, run_dir: Path, keep_dir: bool = False, orphan: bool = False) -> None:
        if orphan:  # a fake machine is no process: one left there is only forgotten
            self.orphans_ended.append(run_dir.name)
        qargv.RunPaths(run_dir).remove(keep_dir)

    def end_stray(self, pid: int) -> bool:
        return False  # a fake machine is no process: none is in a cgroup

    def confinement_of(self, pid: int | None) -> dict[str, Any] | None:
        """The fake engine confines nothing (its machines are no processes)."""
        return None

    async def launch(self, spec: VMSpec, run_dir: Path, serial_log: Path,
                     on_event: EventHandler, options: LaunchOptions | None = None
                     ) -> FakeMachine:
        opts = options or LaunchOptions()
        run = qargv.RunPaths(run_dir.absolute())
        run.dir.mkdir(parents=True, exist_ok=True)
        self.cleanup(run.dir, keep_dir=True)
        await asyncio.sleep(self.latency)
        argv = qargv.build(spec, run, serial_log, self.accel, ram=opts.ram)
        argv += (["-incoming", "defer"] if opts.incoming else []) + \
            (["-S"] if opts.hold else []) + opts.extra
        if self.failures.get("launch"):
            raise self.failures["launch"].pop(0)
        problem = _launch_problem(spec, run.dir in self._registry)
        if problem:
            raise LaunchFailed(argv, 1, f"{argv[0]}: {problem}", what="QEMU would not start")
        machine = FakeMachine(self, spec.model_copy(deep=True), run.dir, on_event, opts)
        run.pidfile.write_text(f"{machine.pid}\n")
        for sock in (run.qmp, run.console) + ((run.agent,) if spec.agent else ()):
            sock.touch()
        with serial_log.open("a") as log_file:
            log_file.write(f"fake: {spec.name} started ({' '.join(argv[-3:])})\n")
        self._registry[run.dir] = machine
        self.launched.append(machine)
        if self.on_launch is not None:
            self.on_launch(machine)
        return machine

    async def adopt(self, spec: VMSpec, run_dir: Path, pid: int | None, started: int | None,
                    on_event: EventHandler) -> FakeMachine | None:
        await asyncio.sleep(self.latency)
        if self.failures.get("adopt"):
            raise self.failures["adopt"].pop(0)
        machine = self._registry.get(run_dir.absolute())
        if machine is None or not machine.alive or \
                (pid is None and not qargv.RunPaths(run_dir).pidfile.is_file()) or \
                pid not in (None, machine.pid) or started not in (None, machine.started):
            return None
        machine.attach(self, on_event)
        self.launched.append(machine)
        return machine


def _launch_problem(spec: VMSpec, running: bool) -> str | None:
    """Why QEMU would refuse ``spec`` here, in its words; None when it would start."""
    if running:
        return "the fake engine already runs a machine in this run directory"
    if spec.kernel and not Path(spec.kernel).is_file():
        return f"could not open kernel file '{spec.kernel}': No such file or directory"
    if spec.initrd and not Path(spec.initrd).is_file():
        return f"could not load initrd '{spec.initrd}'"
    for path in [d.path for d in spec.disks] + ([spec.vmstate] if spec.vmstate else []):
        if not Path(path).is_file():
            return f"Could not open '{path}': No such file or directory"
    return None

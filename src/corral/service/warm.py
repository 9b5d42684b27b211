"""Warm starts: a new VM that begins life as a copy of a memory snapshot, running in tens of
milliseconds instead of booting for seconds.

The first warm start from a snapshot makes a *template* of it (once, kept beside the source
VM): the snapshot's disks as standalone qcow2 files, its RAM in a plain file, and its device
state in a small migration stream made with ``x-ignore-shared`` (the RAM is not in it). A
template is made by a helper QEMU that loads the snapshot with its RAM in that file mapped
shared, so the file ends up holding the guest's memory.

Each clone then maps the RAM file *private* (copy-on-write: clones share every page they have
not written, through the page cache), gets qcow2 overlays on the template's disks, reads the
device state, and continues. It then takes its own identity through its guest agent: the
host's clock, its own hostname and MAC.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from corral.domain import specs as sp
from corral.domain.states import LIVE, State
from corral.engine.driver import LaunchOptions, Machine, RamFile
from corral.engine.qemu.argv import VMSTATE_NODE
from corral.errors import (
    AgentError,
    AlreadyExists,
    CorralError,
    InvalidSpec,
    InvalidState,
    NotFound,
    QuotaExceeded,
    Timeout,
)
from corral.host import cgroups, qemu_img
from corral.host.network import names
from corral.service import access, handoff, provision, quotas, snapshots
from corral.service.runtime import VMRuntime
from corral.store.db import VMRecord

log = logging.getLogger(__name__)
DISK_RESERVE = 1 << 30  # a background template leaves at least this much of the disk free
READDRESS_WITHIN = 10.0  # seconds a clone's NICs on networks have to get their leases


async def ensure_template(rt: VMRuntime, src: str, snapshot: str, memory: bool = True) -> Path:
    """The template of ``src``'s snapshot, made on first use: its disks, and with
    ``memory`` its running state too.

    :raises InvalidSpec: ``memory`` is asked of a snapshot that keeps no running state.
    """
    snap = snapshots._find(rt, src, snapshot)
    if memory and not snap["memory"]:
        raise InvalidSpec("from_snapshot", f"snapshot '{snapshot}' of '{src}' has no running "
                                           "state; take one with --memory")
    async with rt.lock(snapshots.template_lock(src, snapshot)):  # made once, not twice
        return await _make_template(rt, src, snapshot, snap)


def template_soon(rt: VMRuntime, src: str, snapshot: str) -> None:
    """After a memory snapshot: make its template in the background (the snapshot's answer
    does not wait for it), unless ``snapshots.background_template`` is off."""
    from corral import settings

    if settings.value("snapshots.background_template"):
        rt.background(_background_template(rt, src, snapshot))


async def _background_template(rt: VMRuntime, src: str, snapshot: str) -> None:
    """Make the template of a snapshot just taken, if the host's disk and the project's
    disk quota hold it (it is counted against both); a snapshot (or VM) removed meanwhile
    leaves nothing (its removal waits for this under the template's lock)."""
    async with rt.lock(snapshots.template_lock(src, snapshot)):
        rec = rt.db.get_vm(src)
        try:
            if rec is None:
                return
            snap = snapshots._find(rt, src, snapshot)
            tdir = snapshots.template_dir(rt, src, snapshot)
            if (tdir / "template.json").is_file():
                return
            reason = await _no_room(rt, rec, tdir.parent.parent)
            if reason is not None:
                _note(rt, src, "template_skipped", snapshot=snapshot, reason=reason)
                return
            t0 = time.monotonic()
            await _make_template(rt, src, snapshot, snap)
        except NotFound:  # the snapshot or its VM went away before we began
            return
        except CorralError as err:
            log.warning("the template of %s:%s was not made: %s", src, snapshot, err.message)
            _note(rt, src, "template_failed", snapshot=snapshot, reason=err.message)
            return
        _note(rt, src, "template_made", snapshot=snapshot,
              seconds=round(time.monotonic() - t0, 3))


def _note(rt: VMRuntime, vm: str, kind: str, **detail: Any) -> None:
    """An event on ``vm`` as it is now (the record read before an await may be stale)."""
    rec = rt.db.get_vm(vm)
    if rec is not None:
        rt.record(rec, kind, **detail)


async def _no_room(rt: VMRuntime, rec: VMRecord, where: Path) -> str | None:
    """Why a template of ``rec`` does not fit (None: it does): its disk copies and its RAM
    file against the free space of the host's disk, its disks against the project's quota."""
    allocated = virtual = 0
    for disk in rec.spec.disks:
        if not disk.readonly:
            info = await qemu_img.ainfo(disk.path)
            allocated += info.actual_size or info.virtual_size
            virtual += info.virtual_size
    need = allocated + rec.spec.memory_bytes
    free = shutil.disk_usage(where).free
    if free - need < DISK_RESERVE:
        return (f"the host's disk has {free >> 20} MiB free; the template needs "
                f"{need >> 20} MiB and {DISK_RESERVE >> 20} MiB are kept free")
    try:
        await quotas.check_disk(rt, rec.project, virtual)
    except QuotaExceeded as err:
        return err.message
    return None


async def _make_template(rt: VMRuntime, src: str, snapshot: str, snap: dict[str, Any]
                         ) -> Path:
    tdir = snapshots.template_dir(rt, src, snapshot)
    if (tdir / "template.json").is_file():
        return tdir
    snapshots._find(rt, src, snapshot)  # removed while we waited for the lock
    rec = rt.get(src)
    work = tdir.with_name(f".{snapshot}.tmp-{uuid.uuid4().hex[:6]}")
    work.mkdir(parents=True)
    try:
        spec = rec.spec.model_copy(deep=True)
        for i, disk in enumerate(spec.disks):
            if disk.readonly:
                continue
            copy = work / f"disk{i}.qcow2"
            await qemu_img.aconvert(disk.path, copy, src_format=disk.format, snapshot=snapshot,
                                    what="qemu-img could not copy the snapshot's disk")
            spec.disks[i] = disk.model_copy(update={"path": str(copy), "format": "qcow2"})
        if snap["memory"]:
            assert rec.spec.vmstate is not None
            shutil.copyfile(rec.spec.vmstate, work / "vmstate.qcow2")
            spec.vmstate = str(work / "vmstate.qcow2")
            await _capture(rt, spec, snapshot, work)
        (work / "template.json").write_text(json.dumps(
            {"src": src, "snapshot": snapshot, "running": snap["running"],
             "memory": bool(snap["memory"]),
             "spec": spec.model_dump(), "created_at": time.time()}))
        # the paths inside point into `work`; after the rename they point into `tdir`
        meta = (work / "template.json").read_text().replace(str(work), str(tdir))
        (work / "template.json").write_text(meta)
        work.rename(tdir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return tdir


async def _capture(rt: VMRuntime, spec: sp.VMSpec, snapshot: str, work: Path) -> None:
    """Load the snapshot in a helper machine whose RAM is ``work/ram`` (shared), then write
    the device state alone to ``work/dev.state``."""
    run_dir = rt.paths.run / f".tmpl-{uuid.uuid4().hex[:8]}"
    # named as its run directory (no VM can be): its cgroups are its own, not those of the
    # VM the snapshot is of (which may be running, under the same memory limit), and go
    # with it. A NIC on a network gets a tap of its own, on no bridge (the VM's own is held
    # by the VM's QEMU while it runs): made when it is opened, gone when QEMU and the
    # daemon have closed it; a tap still, since the device state holds what the guest
    # agreed with one (virtio-net headers)
    nics = [nic.model_copy(update={"ifname": names.make("tap", run_dir.name, i)})
            if nic.mode == "network" else nic for i, nic in enumerate(spec.nics)]
    helper = spec.model_copy(update={"name": run_dir.name, "nics": nics})
    try:
        machine = await rt.driver.launch(
            helper, run_dir, work / "serial.log", lambda _e, _d: None,
            LaunchOptions(hold=True, ram=RamFile(work / "ram", shared=True)))
    except BaseException:
        cgroups.remove_limits(rt.paths.tag, helper.name)
        raise
    machine.watch_exit(lambda _status: None)  # so that kill and wait_exit see it end
    try:
        await machine.snapshot_load(snapshot, VMSTATE_NODE, [VMSTATE_NODE])
        await machine.save_state(work / "dev.state", ignore_shared=True)
        with contextlib.suppress(CorralError):
            await machine.quit()
    finally:  # its run directory goes however this ends (cancelled while it waits, say)
        machine.kill()
        try:
            await machine.close()
            await machine.wait_exit(5)
        finally:
            rt.driver.cleanup(run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)
            cgroups.remove_limits(rt.paths.tag, helper.name)


async def define_warm(rt: VMRuntime, name: str, source: str,
                      sched: sp.Scheduling | None = None) -> VMRecord:
    """Define ``name`` from ``source`` ("VM:SNAPSHOT") to start from the snapshot's running
    state (its template is made on first use).

    :raises InvalidSpec: ``source`` is malformed or names a snapshot without memory.
    :raises AlreadyExists: the name is taken.
    """
    sp.check_name(name)
    src, sep, snapshot = source.partition(":")
    if not sep or not src or not snapshot:
        raise InvalidSpec("from_snapshot", f"'{source}' is not VM:SNAPSHOT")
    if rt.db.get_vm(name) is not None:
        raise AlreadyExists(f"a VM named '{name}' exists; pick another name")
    tdir = await ensure_template(rt, src, snapshot)
    meta = json.loads((tdir / "template.json").read_text())
    rec = await _define_clone(rt, name, sp.VMSpec.model_validate(meta["spec"]), full=False,
                              sched=sched)
    rec.spec.warm_template = str(tdir)
    rt.record(rec, "warm_start_requested", template=str(tdir))
    return rec


async def _define_clone(rt: VMRuntime, name: str, base: sp.VMSpec, full: bool,
                        snapshot: str | None = None,
                        sched: sp.Scheduling | None = None) -> VMRecord:
    """Define ``name`` with ``base``'s hardware, its own MACs, and disks that are overlays on
    ``base``'s (linked) or copies of them (``full``, from ``snapshot`` if given)."""
    project = access.project_for_new()
    quotas.check_vm(rt, project, base.cpus, base.memory_bytes)
    if quotas.limits_disk(rt, project):  # its disks are as large as the ones they copy
        await quotas.check_disk(rt, project, sum([(await qemu_img.ainfo(d.path)).virtual_size
                                                  for d in base.disks if not d.readonly]))
    vm_dir = rt.paths.vm_dir(name)
    vm_dir.mkdir(parents=True)
    try:
        disks = []
        for i, disk in enumerate(base.disks):
            if disk.readonly:
                disks.append(disk)
                continue
            target = vm_dir / f"disk{i}.qcow2"
            what = "qemu-img could not make the clone's disk"
            if full:
                await qemu_img.aconvert(disk.path, target, src_format=disk.format,
                                        snapshot=snapshot, what=what)
            else:
                await qemu_img.acreate(target, "qcow2", backing=disk.path,
                                       backing_format="qcow2", what=what)
            disks.append(disk.model_copy(update={"path": str(target), "owned": True,
                                                 "format": "qcow2", "name": None}))
        spec = base.model_copy(update={
            "name": name, "disks": disks, "vmstate": await provision.make_vmstate(vm_dir),
            "nics": [n.model_copy(update={"mac": sp.new_mac()}) for n in base.nics],
            "sched": sched or sp.Scheduling(), "warm_template": None, "migrated": None})
        quotas.check_vm(rt, project, spec.cpus, spec.memory_bytes)  # others meanwhile
        rec = VMRecord(name=name, uid=str(uuid.uuid4()), spec=spec, state=State.DEFINED,
                       project=project)
        rt.db.add_vm(rec)
    except BaseException:
        shutil.rmtree(vm_dir, ignore_errors=True)
        raise
    return rec


async def clone(rt: VMRuntime, src: str, name: str, full: bool = False,
                snapshot: str | None = None) -> dict[str, Any]:
    """Define ``name`` as a clone of ``src``: of its current disks (a full copy: they would
    keep changing under a linked clone; the VM must not run) or of one of its snapshots
    (linked by default: qcow2 overlays on the snapshot's frozen disks).

    :raises InvalidState: a clone of current disks is asked of a VM that runs.
    :raises AlreadyExists: the name is taken.
    """
    sp.check_name(name)
    if rt.db.get_vm(name) is not None:
        raise AlreadyExists(f"a VM named '{name}' exists; pick another name")
    async with rt.lock(src):
        rec = rt.get(src)
        if snapshot is None:
            if rec.state in LIVE:
                raise InvalidState(src, "clone", rec.state.value,
                                   ["defined", "stopped", "crashed", "saved"])
            new = await _define_clone(rt, name, rec.spec, full=True)
        elif full:
            snapshots._find(rt, src, snapshot)
            new = await _define_clone(rt, name, rec.spec, full=True, snapshot=snapshot)
        else:
            tdir = await ensure_template(rt, src, snapshot, memory=False)
            meta = json.loads((tdir / "template.json").read_text())
            new = await _define_clone(rt, name, sp.VMSpec.model_validate(meta["spec"]),
                                      full=False)
    rt.record(new, "cloned", **{"from": src, "snapshot": snapshot, "full": full})
    return rt.view(new)


async def resume_template(rt: VMRuntime, rec: VMRecord) -> None:
    """Start ``rec`` (admitted, ``starting``) from its warm-start template instead of
    booting it; the template is used once."""
    assert rec.spec.warm_template is not None
    tdir = Path(rec.spec.warm_template)
    meta = json.loads((tdir / "template.json").read_text())
    running = bool(meta["running"])
    macs = [(str(old["mac"]), nic)
            for old, nic in zip(meta["spec"]["nics"], rec.spec.nics, strict=False)]
    live = await rt.spawn(rec, LaunchOptions(incoming=True,
                                             ram=RamFile(tdir / "ram", shared=False)))
    await live.machine.load_state(tdir / "dev.state", ignore_shared=True)
    if running:
        await live.machine.cont()
    rec.started_at, rec.ready_at, rec.exit_reason = time.time(), None, None
    rec.spec.warm_template = None  # from now on it boots, saves and restores as itself
    rt.set_state(rec, State.RUNNING if running else State.PAUSED, "warm_started",
                 template=str(tdir))
    on_networks = [(old, nic) for old, nic in macs if nic.mode == "network"]
    rt.watch_ready(rec.name, live, on_ready=_readdress(on_networks) if on_networks else None,
                   then=_take_identity(rt))


def _find_nic(old_mac: str) -> str:
    """Shell: ``$d`` is the guest's interface that has ``old_mac`` (the template's)."""
    return (f'd=; for f in /sys/class/net/*; do [ "$(cat "$f/address")" = {old_mac} ] && '
            'd=${f##*/} && break; done')


def _readdress(nics: list[tuple[str, sp.NicSpec]]) -> Callable[[str, Machine], Awaitable[None]]:
    async def readdress(name: str, machine: Machine) -> None:
        """The clone's NICs on networks still have the template's MACs and addresses (on
        the network, another VM's: its switch drops what they send). Before the clone is
        marked ready, each takes its MAC and a lease of its own, its DHCP client started
        again: busybox's udhcpc (the tiny images), waited for until it has its lease, or
        systemd-networkd's (``networkctl reconfigure``). Best effort (logged)."""
        pidfile = "/run/udhcpc.$d.pid"
        script = [
            f'{_find_nic(old)}; if [ -n "$d" ]; then ip link set dev $d address {nic.mac}; '
            f'if [ -s {pidfile} ]; then p=$(cat {pidfile}); kill "$p"; '
            'while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; '
            "udhcpc -i $d -s /usr/share/udhcpc/default.script -t 4 -T 1 -A 1 -b "
            f"-p {pidfile} -x hostname:{name} >>/run/udhcpc.log 2>&1; "
            "elif command -v networkctl >/dev/null; then networkctl reconfigure $d; fi; fi"
            for old, nic in nics]
        try:
            pid = await machine.guest_exec(["sh", "-c", "; ".join(script)], capture=False,
                                           timeout=5)
            deadline = time.monotonic() + READDRESS_WITHIN
            while not (await machine.guest_exec_status(pid)).exited:
                if time.monotonic() > deadline:
                    raise Timeout(f"no lease within {READDRESS_WITHIN:g} s")
                await asyncio.sleep(0.02)
        except (AgentError, Timeout, CorralError) as err:
            log.warning("clone %s kept its template's network addresses: %s", name, err)

    return readdress


def _take_identity(rt: VMRuntime) -> Callable[[str, Machine], Awaitable[None]]:
    async def take(name: str, machine: Machine) -> None:
        """The clone wakes up as its template: give it the host's time, its name and the
        MACs of its user-mode NICs (``ethN``; those on networks took theirs before it was
        ready), in one short exec just after it is marked ready (``guest-set-time`` would
        also write the RTC through ``hwclock``, which costs a just-restored guest over
        100 ms)."""
        rec = rt.db.get_vm(name)
        if rec is None or not machine.has_agent:
            return
        script = [f"date -s @{handoff.seconds_now()} >/dev/null", f"hostname {name}"]
        for i, nic in enumerate(rec.spec.nics):
            if nic.mode != "network":
                script.append(f"ip link set dev eth{i} address {nic.mac}")
        # best effort: the VM runs either way, and 'corral exec NAME -- hostname' shows it
        with contextlib.suppress(AgentError, Timeout, CorralError):
            await machine.guest_exec(["sh", "-c", "; ".join(script)], capture=False,
                                     timeout=5)

    return take

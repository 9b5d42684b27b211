"""Renaming a VM, live or not: how a warm pool's clone, made under a name of the pool's,
becomes the VM a user asked for by name.

A VM's name is its key everywhere: its record, its directory (disks, state file, serial log),
its run directory (sockets, pidfile) and the daemon's live handle. A rename moves them all
in one step that either happens whole or not at all: the directories are renamed (QEMU keeps
its open files and sockets, which go on working under the new paths), the record is written
under the new name in one transaction, and the live machine is told its new paths. The
machine's command line still names the old run directory, so the record keeps that name
(``launched_as``) until the next launch, for adoption to recognise the process after a
daemon restart.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.errors import AlreadyExists
from corral.store.renames import rename_vm

if TYPE_CHECKING:
    from corral.service.runtime import VMRuntime
    from corral.store.db import VMRecord


def _moved_path(path: str | None, old: Path, new: Path) -> str | None:
    if path is None:
        return None
    p = Path(path)
    return str(new / p.relative_to(old)) if p.is_relative_to(old) else path


def rename(rt: VMRuntime, old: str, new: str, kind: str = "renamed",
           doc: tuple[str, Any] | None = None, **detail: Any) -> VMRecord:
    """Call VM ``old`` ``new`` from now on; the caller holds both names' locks. The event
    ``kind`` (and the document ``doc``, when given) are written with the new record.

    :raises AlreadyExists: a VM named ``new`` exists.
    :raises NotFound: no VM named ``old``.
    """
    rec = rt.get(old)
    if rt.db.get_vm(new) is not None:
        raise AlreadyExists(f"a VM named '{new}' exists; pick another name")
    dirs = [(rt.paths.vm_dir(old), rt.paths.vm_dir(new)), (rt.run_dir(old), rt.run_dir(new))]
    live = rt.live.get(old)
    spec = rec.spec.model_copy(deep=True)
    vm_old, vm_new = dirs[0]
    spec.name = new
    spec.disks = [d.model_copy(update={"path": _moved_path(d.path, vm_old, vm_new)})
                  for d in spec.disks]
    spec.vmstate = _moved_path(spec.vmstate, vm_old, vm_new)
    for nic in spec.nics:  # its ports on networks (and its name in their DNS) follow it
        if nic.planned_for == old:
            nic.planned_for = new
    if live is not None:
        spec.launched_as = spec.launched_as or old
    moved: list[tuple[Path, Path]] = []
    before = (rec.name, rec.spec)
    try:
        for src, dst in dirs:
            if src.is_dir():
                shutil.rmtree(dst, ignore_errors=True)  # a leftover of a VM long gone
                os.rename(src, dst)
                moved.append((src, dst))
        rec.name, rec.spec = new, spec
        rename_vm(rt.db, old, rec, kind, doc, **detail)
    except BaseException:
        rec.name, rec.spec = before
        for src, dst in reversed(moved):
            os.rename(dst, src)
        raise
    if live is not None:
        rt.live[new] = rt.live.pop(old)
        live.machine.moved(new, rt.run_dir(new))
        for launched, current in list(rt.renamed.items()):
            if current == old:
                rt.renamed[launched] = new
        rt.renamed[old] = new
    return rec

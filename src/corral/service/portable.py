"""One-file export and import of a VM: its spec, disks, snapshots and saved state.

The file is a tar archive: ``corral-export.json`` first (format version, the spec, the
snapshot tree, and a SHA-256 for every other member), then the files. Export refuses a VM
with a live QEMU (save or stop it first) so that disks are quiescent, unless it is *live*:
then a running VM is paused for the copy and resumed after it (a paused QEMU has flushed its
disks and writes nothing), and the archive imports as a stopped VM whose disks are as at
the pause, as if it had lost power then. It writes under a temporary name, synced and
renamed: a full disk leaves no partial archive. Import checks the archive's shape, every
checksum and the names before anything lands in the data directory, and unpacks into a
temporary directory that is renamed into place at the end: a truncated, corrupt or foreign
file is refused with nothing half-imported. A VM exported while saved
comes back saved, and ``corral start`` resumes it where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import shutil
import tarfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.domain import specs as sp
from corral.domain.states import LIVE, State
from corral.errors import AlreadyExists, CorralError, InvalidSpec, InvalidState
from corral.host.runner import run
from corral.images import catalog
from corral.service import access, quotas
from corral.store.db import VMRecord

if TYPE_CHECKING:
    from corral.service.lifecycle import Lifecycle
    from corral.service.runtime import VMRuntime

FORMAT = "corral-export/1"
MANIFEST = "corral-export.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def export(rt: VMRuntime, name: str, file: str, live: bool = False) -> dict[str, Any]:
    """Write VM ``name`` into one file. With ``live``, a paused VM's QEMU may hold its disks
    (QEMU flushes them when it pauses, and writes nothing while paused): it imports as a
    stopped VM whose disks are as they were at the pause. :func:`export_live` pauses it.

    :raises InvalidState: the VM has a live QEMU (with ``live``: one that is not paused).
    :raises CorralError: the file cannot be written (nothing is left behind).
    """
    rec = rt.get(name)
    if rec.state in LIVE and not (live and rec.state == State.PAUSED):
        raise InvalidState(name, "export", rec.state.value,
                           ["defined", "stopped", "saved", "crashed",
                            *(["paused"] if live else [])])
    target = Path(file).expanduser().absolute()
    if not target.parent.is_dir():
        raise InvalidSpec("file", f"no directory '{target.parent}'")
    members: dict[str, Path] = {}
    spec = rec.spec.model_copy(deep=True)
    for i, disk in enumerate(spec.disks):
        members[f"disk{i}.{disk.format}"] = Path(disk.path)
    if spec.vmstate:
        members["vmstate.qcow2"] = Path(spec.vmstate)
    if spec.image is None and spec.kernel:
        members["kernel"] = Path(spec.kernel)
        if spec.initrd:
            members["initrd"] = Path(spec.initrd)
    saved = rec.state == State.SAVED and rec.saved_state
    if saved:
        members["saved.state"] = Path(str(rec.saved_state))
    manifest = {
        "format": FORMAT, "name": name, "spec": spec.model_dump(),
        "saved": bool(saved), "saved_running": rec.saved_running,
        "snapshots": rt.db.list_snapshots(name), "current_snapshot": rec.current_snapshot,
        "files": {arc: _sha256(path) for arc, path in members.items()},
    }
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with tarfile.open(tmp, "w") as tar:
            data = json.dumps(manifest, indent=1).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            for arc, path in members.items():
                tar.add(path, arcname=arc, recursive=False)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CorralError(f"cannot write the export to {target}: {err.strerror}") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"file": str(target), "size": target.stat().st_size, "vm": name,
            "saved": bool(saved), "files": sorted(members)}


async def export_live(life: Lifecycle, name: str, file: str) -> dict[str, Any]:
    """Write VM ``name`` into one file whatever its state: a running VM is paused for the
    export and resumed after it, whether it
    succeeded or not; a paused one stays paused. Call it without holding the VM's lock.

    :raises InvalidState: the VM is starting, stopping, saving or restoring, or was resumed
        by another request before the export began (nothing is written then).
    :raises CorralError: the file cannot be written (nothing is left behind).
    """
    rt = life.rt
    paused_here = rt.get(name).state == State.RUNNING
    if paused_here:
        await life.pause(name)
    try:
        async with rt.lock(name):  # no resume, nor time slice, until the copy is whole
            return await asyncio.to_thread(export, rt, name, file, True)
    finally:
        if paused_here:
            with contextlib.suppress(InvalidState):  # stopped or resumed meanwhile
                await life.resume(name)


def _refuse(file: Path, why: str) -> CorralError:
    return InvalidSpec("file", f"{file} is not a Corral export: {why}")


def import_vm(rt: VMRuntime, file: str, new_name: str | None = None) -> dict[str, Any]:
    """Recreate a VM from an export.

    :raises InvalidSpec: the file is not a (whole, intact) Corral export.
    :raises AlreadyExists: the name is taken (give another with ``new_name``).
    """
    path = Path(file).expanduser().absolute()
    if not path.is_file():
        raise InvalidSpec("file", f"no file '{file}'")
    try:
        tar = tarfile.open(path, "r:")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError) as err:
        raise _refuse(path, "not a tar archive") from err
    with tar:
        try:
            first = tar.next()
            if first is None or first.name != MANIFEST:
                raise _refuse(path, f"it does not start with {MANIFEST}")
            raw = tar.extractfile(first)
            manifest = json.loads(raw.read() if raw else b"")
        except (tarfile.TarError, ValueError, OSError) as err:
            raise _refuse(path, "its manifest cannot be read") from err
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise _refuse(path, "unknown format")
        name = sp.check_name(new_name or str(manifest.get("name", "")))
        if rt.db.get_vm(name) is not None:
            raise AlreadyExists(f"a VM named '{name}' exists; import it with --name NEW")
        try:
            spec = sp.VMSpec.model_validate(manifest["spec"])
        except Exception as err:
            raise _refuse(path, "its spec is not valid") from err
        expected: dict[str, str] = dict(manifest.get("files", {}))
        vm_dir = rt.paths.vm_dir(name)
        work = vm_dir.with_name(f".import-{uuid.uuid4().hex[:8]}")
        work.mkdir(parents=True)
        try:
            _unpack(tar, path, work, expected)
            rec = _record(rt, manifest, spec, name, new_name is not None, vm_dir, work.name)
            work.rename(vm_dir)
            rt.db.add_vm(rec)
            for snap in manifest.get("snapshots", []):
                rt.db.add_snapshot({**snap, "vm": name})
            if manifest.get("current_snapshot") or rec.state == State.SAVED:
                rec = rt.get(name)
                rec.current_snapshot = manifest.get("current_snapshot")
                rt.db.update_vm(rec, "imported", {"file": str(path)})
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            if rt.db.get_vm(name) is None:
                shutil.rmtree(vm_dir, ignore_errors=True)
            raise
    return rt.view(rt.get(name))


def _unpack(tar: tarfile.TarFile, path: Path, work: Path, expected: dict[str, str]) -> None:
    seen = set()
    try:
        for member in tar:
            if member.name == MANIFEST:
                continue
            if member.name not in expected or not member.isfile():
                raise _refuse(path, f"unexpected member '{member.name}'")
            tar.extract(member, work, filter="data")
            if _sha256(work / member.name) != expected[member.name]:
                raise _refuse(path, f"'{member.name}' is damaged (checksum mismatch)")
            seen.add(member.name)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise _refuse(path, f"it is truncated or damaged ({err})") from err
    missing = set(expected) - seen
    if missing:
        raise _refuse(path, f"it is truncated: {', '.join(sorted(missing))} missing")


def _record(rt: VMRuntime, manifest: dict[str, Any], spec: sp.VMSpec, name: str, renamed: bool,
            vm_dir: Path, work_name: str) -> VMRecord:
    for i, disk in enumerate(spec.disks):
        spec.disks[i] = disk.model_copy(update={
            "path": str(vm_dir / f"disk{i}.{disk.format}"), "owned": True, "name": None,
            "port": disk.port})
    if spec.vmstate:
        spec.vmstate = str(vm_dir / "vmstate.qcow2")
    if spec.image is None and spec.kernel:
        spec.kernel = str(vm_dir / "kernel")
        spec.initrd = str(vm_dir / "initrd") if spec.initrd else None
    elif spec.image is not None:
        image = catalog.resolve(rt.paths, spec.image)
        spec.kernel = str(image.kernel) if image.kernel else None
        spec.initrd = str(image.initrd) if image.initrd else None
        if image.disk is not None and spec.disks and spec.disks[0].id == "root":
            # the root overlay sat on the exporter's copy of the image: point it at ours
            root = vm_dir.with_name(work_name) / Path(spec.disks[0].path).name
            run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", str(image.disk), root],
                what="qemu-img could not attach the root disk to this host's image")
    spec.name = name
    if renamed:  # a copy beside the original, not a move: it needs its own MACs
        spec.nics = [n.model_copy(update={"mac": sp.new_mac()}) for n in spec.nics]
    saved = bool(manifest.get("saved"))
    project = access.project_for_new()
    quotas.check_vm(rt, project, spec.cpus, spec.memory_bytes)
    return VMRecord(name=name, uid=str(uuid.uuid4()), spec=spec, project=project,
                    state=State.SAVED if saved else State.STOPPED,
                    saved_state=str(vm_dir / "saved.state") if saved else None,
                    saved_running=manifest.get("saved_running") if saved else None)

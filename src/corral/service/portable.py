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

import hashlib
import json
import shutil
import tarfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.domain import specs as sp
from corral.domain.states import State
from corral.errors import AlreadyExists, CommandFailed, CorralError, InvalidSpec
from corral.host import qemu_img
from corral.host.runner import run
from corral.images import catalog
from corral.service import access, quotas
from corral.store.db import VMRecord

if TYPE_CHECKING:
    from corral.service.runtime import VMRuntime

FORMAT = "corral-export/1"
MANIFEST = "corral-export.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _refuse(file: str, why: str) -> CorralError:
    return InvalidSpec("file", f"{file} is not a Corral export: {why}")


def import_vm(rt: VMRuntime, path: Path, new_name: str | None = None,
              source: str | None = None) -> dict[str, Any]:
    """Recreate a VM from the export at ``path`` (an upload or a file the host allows;
    ``source`` is how the event log names it).

    :raises InvalidSpec: the file is not a (whole, intact) Corral export.
    :raises AlreadyExists: the name is taken (give another with ``new_name``).
    """
    if not path.is_file():
        raise InvalidSpec("file", f"no file '{path}'")
    shown = "the uploaded file" if source == "upload" else str(path)  # (not its path here)
    try:
        tar = tarfile.open(path, "r:")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError) as err:
        raise _refuse(shown, "not a tar archive") from err
    with tar:
        try:
            first = tar.next()
            if first is None or first.name != MANIFEST:
                raise _refuse(shown, f"it does not start with {MANIFEST}")
            raw = tar.extractfile(first)
            manifest = json.loads(raw.read() if raw else b"")
        except (tarfile.TarError, ValueError, OSError) as err:
            raise _refuse(shown, "its manifest cannot be read") from err
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise _refuse(shown, "unknown format")
        name = sp.check_name(new_name or str(manifest.get("name", "")))
        if rt.db.get_vm(name) is not None:
            raise AlreadyExists(f"a VM named '{name}' exists; import it with --name NEW")
        try:
            spec = sp.VMSpec.model_validate(manifest["spec"])
        except Exception as err:
            raise _refuse(shown, "its spec is not valid") from err
        expected: dict[str, str] = dict(manifest.get("files", {}))
        vm_dir = rt.paths.vm_dir(name)
        work = vm_dir.with_name(f".import-{uuid.uuid4().hex[:8]}")
        work.mkdir(parents=True)
        try:
            _unpack(tar, shown, work, expected)
            rec = _record(rt, manifest, spec, name, new_name is not None, vm_dir, work.name)
            _standalone(rt, shown, work, rec.spec)
            work.rename(vm_dir)
            rt.db.add_vm(rec)
            for snap in manifest.get("snapshots", []):
                rt.db.add_snapshot({**snap, "vm": name})
            if manifest.get("current_snapshot") or rec.state == State.SAVED:
                rec = rt.get(name)
                rec.current_snapshot = manifest.get("current_snapshot")
                rt.db.update_vm(rec, "imported", {"file": source or str(path)})
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            if rt.db.get_vm(name) is None:
                shutil.rmtree(vm_dir, ignore_errors=True)
            raise
    return rt.view(rt.get(name))


def _unpack(tar: tarfile.TarFile, shown: str, work: Path, expected: dict[str, str]) -> None:
    seen = set()
    try:
        for member in tar:
            if member.name == MANIFEST:
                continue
            if member.name not in expected or not member.isfile():
                raise _refuse(shown, f"unexpected member '{member.name}'")
            tar.extract(member, work, filter="data")
            if _sha256(work / member.name) != expected[member.name]:
                raise _refuse(shown, f"'{member.name}' is damaged (checksum mismatch)")
            seen.add(member.name)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise _refuse(shown, f"it is truncated or damaged ({err})") from err
    missing = set(expected) - seen
    if missing:
        raise _refuse(shown, f"it is truncated: {', '.join(sorted(missing))} missing")


def _standalone(rt: VMRuntime, shown: str, work: Path, spec: sp.VMSpec) -> None:
    """:raises InvalidSpec: a qcow2 member names a file outside the VM (a backing file other
    than this host's image under the root disk, or an external data file)."""
    image = catalog.find(rt.paths, spec.image) if spec.image else None
    base = str(image.disk) if image is not None and image.disk is not None else None
    qcow2 = [Path(d.path).name for d in spec.disks if d.format == "qcow2"]
    if spec.vmstate:
        qcow2.append(Path(spec.vmstate).name)
    for member in qcow2:
        try:
            info = qemu_img.info(work / member)
        except (CommandFailed, ValueError) as err:
            raise _refuse(shown, f"'{member}' is not a qcow2 image") from err
        root = bool(spec.disks) and member == Path(spec.disks[0].path).name \
            and spec.disks[0].id == "root"
        if info.data_file or (info.backing_file and not (root and info.backing_path == base)):
            raise _refuse(shown, f"'{member}' names a file outside the VM")


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
    spec.warm_template = None  # a path of the exporter's home
    spec.migrated = None
    if spec.kernel is None:
        spec.initrd = None
    if renamed:  # a copy beside the original, not a move: it needs its own MACs
        spec.nics = [n.model_copy(update={"mac": sp.new_mac()}) for n in spec.nics]
    saved = bool(manifest.get("saved"))
    project = access.project_for_new()
    quotas.check_vm(rt, project, spec.cpus, spec.memory_bytes)
    return VMRecord(name=name, uid=str(uuid.uuid4()), spec=spec, project=project,
                    state=State.SAVED if saved else State.STOPPED,
                    saved_state=str(vm_dir / "saved.state") if saved else None,
                    saved_running=manifest.get("saved_running") if saved else None)

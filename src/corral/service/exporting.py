"""Export a VM as a stream: the bytes of one tar archive, sent to the client, which writes
the file with its own rights (the daemon writes no file a client names).

The archive is the one :mod:`.portable` imports: ``corral-export.json`` first (format, the
spec, the snapshot tree, a SHA-256 for every other member), then the files. It is planned
whole before the first byte is sent (every checksum, every header, so the exact size is
known and sent as ``Content-Length``), and streamed while the VM's lock is held, so no
operation changes a disk under the copy. Export refuses a VM with a live QEMU unless it is
*live*: then a running VM is paused for the copy and resumed after it (a paused QEMU has
flushed its disks and writes nothing), and the archive imports as a stopped VM whose disks
are as at the pause. Headers carry fixed owners and modes and the files' own times, so two
exports of an unchanged VM are byte-identical.

A failure half-way (a file that shrank, the client gone) ends the stream short: the client
sees fewer bytes than announced and keeps no file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.domain.states import LIVE, State
from corral.errors import CorralError, InvalidState
from corral.service.portable import FORMAT, MANIFEST

if TYPE_CHECKING:
    from corral.service.lifecycle import Lifecycle
    from corral.service.runtime import VMRuntime

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _header(name: str, size: int, mtime: float) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _pad(size: int) -> int:
    return -size % BLOCK


class Plan:
    """What one export sends: the manifest, then each member (header, file, padding)."""

    def __init__(self, name: str, manifest: dict[str, Any], members: dict[str, Path]) -> None:
        self.name = name
        self.saved = bool(manifest["saved"])
        self.files = sorted(members)
        stats = {arc: path.stat() for arc, path in members.items()}
        newest = max((s.st_mtime for s in stats.values()), default=0.0)
        data = json.dumps(manifest, indent=1).encode()
        self.head = _header(MANIFEST, len(data), newest) + data + bytes(_pad(len(data)))
        self.members = [(_header(arc, s.st_size, s.st_mtime), path, s.st_size)
                        for (arc, path), s in zip(members.items(), stats.values(), strict=True)]
        body = len(self.head) + sum(len(h) + n + _pad(n) for h, _, n in self.members)
        # the end: two zero blocks, then zeros up to a whole record (as tar writes it)
        self.tail = 2 * BLOCK + (-(body + 2 * BLOCK) % RECORD)
        self.size = body + self.tail

    def info(self) -> dict[str, Any]:
        return {"vm": self.name, "size": self.size, "saved": self.saved, "files": self.files}

    async def chunks(self) -> AsyncIterator[bytes]:
        """The archive's bytes, exactly :attr:`size` of them.

        :raises CorralError: a file changed size under the copy.
        """
        yield self.head
        for header, path, size in self.members:
            yield header
            with path.open("rb") as f:
                left = size
                while left:
                    chunk = await asyncio.to_thread(f.read, min(CHUNK, left))
                    if not chunk:
                        raise CorralError(f"{path} shrank during the export")
                    left -= len(chunk)
                    yield chunk
            yield bytes(_pad(size))
        yield bytes(self.tail)


def plan(rt: VMRuntime, name: str, live: bool = False) -> Plan:
    """Plan the export of VM ``name`` (reads every file for its checksum). With ``live``, a
    paused VM's QEMU may hold its disks: it imports as a stopped VM whose disks are as at
    the pause.

    :raises InvalidState: the VM has a live QEMU (with ``live``: one that is not paused).
    """
    rec = rt.get(name)
    if rec.state in LIVE and not (live and rec.state == State.PAUSED):
        raise InvalidState(name, "export", rec.state.value,
                           ["defined", "stopped", "saved", "crashed",
                            *(["paused"] if live else [])])
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
    return Plan(name, manifest, members)


@contextlib.asynccontextmanager
async def exporting(life: Lifecycle, name: str, live: bool = False) -> AsyncIterator[Plan]:
    """Hold VM ``name`` still for its export and yield its :class:`Plan`: its lock is held
    until the block ends; with ``live``, a running VM is paused first and resumed after,
    whether the export succeeded or not (a paused one stays paused).

    :raises InvalidState: see :func:`plan`; also when a live export's VM was resumed by
        another request before the copy began.
    """
    rt = life.rt
    paused_here = live and rt.get(name).state == State.RUNNING
    if paused_here:
        await life.pause(name)
    try:
        async with rt.lock(name):  # no resume, nor time slice, until the copy is whole
            yield await asyncio.to_thread(plan, rt, name, live)
    finally:
        if paused_here:
            with contextlib.suppress(InvalidState):  # stopped or resumed meanwhile
                await life.resume(name)

"""Files a client sends: kernels, initrds, disk images, VM exports.

The client reads the file with its own rights and streams it to ``POST /v1/uploads``; the
daemon writes it into ``$CORRAL_HOME/uploads/`` (mode 0600) under a temporary name, and
renames it to its id once it is whole. A request then names it as ``upload:ID`` (a VM's
``kernel``, ``initrd``, a disk's ``upload``) or ``?upload=ID`` (image and VM import), and
the use case *takes* it: the file moves where it belongs (the VM's directory) or is read and
removed. An upload is used once.

Bounds: an upload larger than the ``uploads.max_size`` setting is refused (413) as soon as
the bytes pass it, and leaves nothing; one no request took within ``uploads.ttl`` seconds
is removed (checked when a new one arrives and when the daemon starts); a full disk leaves
nothing (507).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from corral import settings
from corral.errors import DiskFull, InvalidSpec, NotFound, TooLarge

ID_RE = re.compile(r"^[0-9a-f]{32}$")
PREFIX = "upload:"
PARTIAL = ".partial-"
BATCH = 1 << 20  # bytes gathered for each write


class _Writer:
    """Hashes and writes an upload in a thread, one batch in flight while the next arrives,
    so neither the disk nor the hash holds the event loop up (hashlib lets go of the GIL
    for big buffers). The file is closed only once no write is running in a thread."""

    _threads: ClassVar[ThreadPoolExecutor | None] = None

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.digest = hashlib.sha256()
        self.flight: Future[None] | None = None

    def _write(self, data: bytes, sync: bool) -> None:
        self.digest.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        if sync:
            os.fsync(self.fd)

    async def write(self, data: bytes, sync: bool = False) -> None:
        """Start writing ``data`` once the batch before it is written.

        :raises OSError: writing the batch before it failed.
        """
        await self.settle()
        if _Writer._threads is None:
            _Writer._threads = ThreadPoolExecutor(2, thread_name_prefix="corral-upload")
        self.flight = _Writer._threads.submit(self._write, data, sync)

    async def settle(self) -> None:
        """:raises OSError: the write in flight failed."""
        if self.flight is not None:
            await asyncio.wrap_future(self.flight)  # kept until done: close() waits for it
            self.flight = None

    def close(self) -> None:
        if self.flight is not None and not self.flight.done():
            self.flight.add_done_callback(lambda _: os.close(self.fd))
        else:
            os.close(self.fd)


class Uploads:
    """The uploads directory of one home."""

    def __init__(self, home: Path) -> None:
        self.dir = home / "uploads"

    def path(self, upload_id: str, field: str = "upload") -> Path:
        """The file of upload ``upload_id``.

        :raises InvalidSpec: not an upload id. :raises NotFound: no such upload (used,
            expired or never made).
        """
        if not isinstance(upload_id, str) or not ID_RE.match(upload_id):
            raise InvalidSpec(field, f"'{str(upload_id)[:80]}' is not an upload id (32 hex "
                                     "digits, from POST /v1/uploads)")
        path = self.dir / upload_id
        if not path.is_file():
            raise NotFound(f"no upload '{upload_id}' (each is used once and expires after "
                           f"{settings.value('uploads.ttl'):g} s); upload the file again")
        return path

    def ref(self, field: str, text: str) -> Path | None:
        """The upload ``text`` names as ``upload:ID``, or None when it names none."""
        if not text.startswith(PREFIX):
            return None
        return self.path(text[len(PREFIX):], field)

    async def receive(self, chunks: AsyncIterator[bytes]) -> dict[str, Any]:
        """Write the streamed ``chunks`` into a new upload: ``{"upload", "size",
        "sha256"}``.

        :raises TooLarge: more than ``uploads.max_size`` bytes (nothing is kept).
        :raises DiskFull: the home's disk filled up (nothing is kept).
        """
        limit: int = settings.value("uploads.max_size")
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.sweep()
        upload_id = secrets.token_hex(16)
        tmp = self.dir / f"{PARTIAL}{upload_id}"
        size = 0
        writer = _Writer(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                 0o600))
        pending: list[bytes] = []
        held = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"the upload is larger than {limit} bytes (setting "
                                   "uploads.max_size, CORRAL_UPLOAD_MAX)", limit)
                pending.append(chunk)
                held += len(chunk)
                if held >= BATCH:
                    await writer.write(b"".join(pending))
                    pending, held = [], 0
            await writer.write(b"".join(pending), sync=True)
            await writer.settle()
            os.rename(tmp, self.dir / upload_id)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            if isinstance(err, OSError) and err.errno == errno.ENOSPC:
                raise DiskFull(f"the disk holding {self.dir} is full; free some space") from err
            raise
        finally:
            writer.close()
        return {"upload": upload_id, "size": size, "sha256": writer.digest.hexdigest()}

    def rm(self, upload_id: str) -> None:
        """:raises NotFound: no such upload."""
        self.path(upload_id).unlink()

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove uploads older than ``uploads.ttl`` (and partial ones of a daemon that died
        mid-upload); return their names."""
        ttl: float = settings.value("uploads.ttl")
        now = time.time() if now is None else now
        gone: list[str] = []
        if not self.dir.is_dir():
            return gone
        for path in self.dir.iterdir():
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > ttl:
                    path.unlink()
                    gone.append(path.name)
        return gone

    def sweep_partial(self) -> None:
        """At start: no upload can be in flight, so every partial file is a leftover."""
        if self.dir.is_dir():
            for path in self.dir.glob(f"{PARTIAL}*"):
                path.unlink(missing_ok=True)
        self.sweep()

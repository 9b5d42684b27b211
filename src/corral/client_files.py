"""The Client's calls that move files: uploads and downloads, so the daemon never opens a
path the caller names (part of ``corral.Client``).

What the caller names is opened *here*, with the caller's own rights: a file to send is read
and streamed to ``POST /v1/uploads`` (never all in memory), and a file to receive (an
export, a saved state) is written beside its target under a temporary name and renamed into
place once whole, so a failure half-way leaves no file. Every call takes a path or an open
binary file, and an optional ``progress(done, total)`` callback. Standard library only.
"""

from __future__ import annotations

import json
import os

from corral import errors
from corral.wire import Connection, seg

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    import contextlib
    from collections.abc import Callable, Iterator
    from typing import Any, BinaryIO

    from corral import views

    Progress = Callable[[int, int], None]
    FileLike = str | os.PathLike[str] | BinaryIO

UPLOAD_FIELDS = ("kernel", "initrd")


def _open_read(field: str, file: FileLike) -> tuple[BinaryIO, int, bool]:
    """``file`` open for reading, its size, and whether this call opened it.

    :raises InvalidSpec: it cannot be read (missing, a directory, no permission).
    """
    if hasattr(file, "read"):
        f: BinaryIO = file  # type: ignore[assignment]
        try:
            size = os.fstat(f.fileno()).st_size - f.tell()
        except (OSError, AttributeError, ValueError):  # an in-memory file
            pos = f.tell()
            size = f.seek(0, 2) - pos
            f.seek(pos)
        return f, size, False
    path = os.fspath(file)
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the caller)
        size = os.fstat(f.fileno()).st_size
    except OSError as err:
        raise errors.InvalidSpec(field, f"cannot read {path}: {err.strerror}") from err
    if not os.path.isfile(path):
        f.close()
        raise errors.InvalidSpec(field, f"{path} is not a file")
    return f, size, True


class FileCalls(Connection):
    """Uploads and downloads; :class:`corral.Client` adds them to every other call."""

    def upload(self, file: FileLike, field: str = "file",
               progress: Progress | None = None) -> views.Upload:
        """Send ``file`` (a path or a binary file open for reading) to the daemon; name the
        answer's ``upload`` id in a later request (it is used once).

        :raises InvalidSpec: the file cannot be read. :raises TooLarge: it is larger than
            the daemon's ``uploads.max_size``.
        """
        f, size, mine = _open_read(field, file)
        try:
            out: views.Upload = json.loads(self.send_file("/uploads", f, size, progress))
        except OSError as err:
            raise errors.InvalidSpec(field, f"cannot read the file: {err}") from err
        finally:
            if mine:
                f.close()
        return out

    def _uploaded_spec(self, spec: dict[str, Any], progress: Progress | None
                       ) -> dict[str, Any]:
        """``spec`` with each file it names sent first: ``kernel``/``initrd`` become
        ``upload:ID``, a disk's ``file`` becomes its ``upload`` (a disk's ``path`` stays: it
        is used in place, where the daemon's host allows it)."""
        out = dict(spec)
        for key in UPLOAD_FIELDS:
            if out.get(key) is not None and not str(out[key]).startswith("upload:"):
                out[key] = "upload:" + self.upload(out[key], key, progress)["upload"]
        if out.get("disks"):
            disks = []
            for i, disk in enumerate(out["disks"]):
                disk = dict(disk)
                if disk.get("file") is not None:
                    disk["upload"] = self.upload(disk.pop("file"), f"disks.{i}.file",
                                                 progress)["upload"]
                disks.append(disk)
            out["disks"] = disks
        return out

    def copy_in(self, name: str, guest_path: str, file: FileLike,
                progress: Progress | None = None) -> views.FileWritten:
        """Copy ``file`` (a path or a binary file) to ``guest_path`` in VM ``name``: sent as
        an upload, so it may be as large as the daemon's ``uploads.max_size``."""
        upload = self.upload(file, "file", progress)["upload"]
        out: views.FileWritten = json.loads(self.raw_request(
            "PUT", f"/vms/{seg(name)}/files", None, path=guest_path, upload=upload))
        return out

    def import_image(self, name: str, file: FileLike, *, agent: bool = False,
                     root_device: str = "virtio", progress: Progress | None = None
                     ) -> views.Image:
        """Upload a qcow2 or raw disk image and make it image ``name``.

        :raises InvalidSpec: not a disk image (or one naming other files).
        :raises AlreadyExists: the name is taken.
        """
        seg(name)
        upload = self.upload(file, "file", progress)["upload"]
        out: views.Image = self.request("POST", "/images", {
            "name": name, "upload": upload, "agent": agent, "root_device": root_device})
        return out

    def import_vm(self, file: FileLike, name: str | None = None,
                  progress: Progress | None = None) -> views.VM:
        """Upload an export (made by :meth:`export`) and recreate its VM (as ``name``).

        :raises InvalidSpec: not a whole Corral export. :raises AlreadyExists: name taken.
        """
        if name is not None:
            seg(name)
        upload = self.upload(file, "file", progress)["upload"]
        out: views.VM = self.request("POST", "/import", upload=upload, name=name)
        return out

    def export(self, name: str, file: FileLike, live: bool = False,
               progress: Progress | None = None) -> views.Export:
        """Download VM ``name`` as one archive into ``file`` (a path, written whole or not at
        all, or a binary file open for writing); ``live`` exports a running VM too."""
        headers = self._download("POST", f"/vms/{seg(name)}/export", file, "export",
                                 progress, live=live or None)
        out: views.Export = json.loads(headers.get("x-corral-export", "{}"))
        out["file"] = os.fspath(file) if not hasattr(file, "write") else "-"
        return out

    def download_state(self, name: str, file: FileLike, progress: Progress | None = None
                       ) -> int:
        """Download the saved state of VM ``name`` (it must be saved) into ``file``; returns
        its size."""
        headers = self._download("GET", f"/vms/{seg(name)}/state", file, "state", progress)
        return int(headers.get("content-length", "0"))

    def _download(self, method: str, route: str, file: FileLike, what: str,
                  progress: Progress | None, **query: Any) -> dict[str, str]:
        with writing(file, what) as sink:
            return self.receive_file(method, route, sink, progress, **query)


def writing(file: FileLike, what: str) -> contextlib.AbstractContextManager[BinaryIO]:
    """A sink for the download of ``what`` into ``file``: a binary file open for writing is
    written as it is; a path gets a private (0600) temporary file beside it (made first, so
    a target the caller may not write fails before the daemon does anything), synced and
    renamed onto the path when the block ends well, removed when it does not.

    :raises CorralError: the file cannot be written (nothing is left).
    """
    import contextlib  # not on the CLI's lean path

    return contextlib.contextmanager(_writing)(file, what)


def _writing(file: FileLike, what: str) -> Iterator[BinaryIO]:
    if hasattr(file, "write"):
        yield file  # type: ignore[misc]
        return
    target = os.path.abspath(os.fspath(file))
    if os.path.isdir(target):
        raise errors.InvalidSpec("file", f"{target} is a directory; name the file")
    tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.tmp-{os.getpid()}")
    try:
        # private (0600) whatever the caller's umask: exports and states hold a guest's
        # disks and memory
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                               0o600), "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as err:
        raise errors.CorralError(f"cannot write the {what} to {target}: "
                                 f"{err.strerror or err}") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

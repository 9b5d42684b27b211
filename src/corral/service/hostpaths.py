"""Host paths a client names: the daemon opens none with its own rights unless the host's
configuration allows it.

A client sends files as uploads (:mod:`corral.service.uploads`) and receives exports and
saved states as downloads, so its own rights decide what it can read and write. Only a file
that must stay where it lies (a raw disk used in place, a kernel shared by many VMs) may be
named by path, and only inside a directory of the ``paths.allowed`` setting
(``CORRAL_ALLOWED_PATHS``, empty by default):

* the path must be absolute; symbolic links and ``..`` are resolved *before* the check, so a
  link inside an allowed directory cannot point out of it;
* the daemon's own files (its home: other VMs' disks, the store; its image directories)
  are never a client's, even where they lie inside an allowed directory;
* the resolved file is opened without following a final symbolic link (``O_NOFOLLOW``), so a
  link swapped in after the check is refused too, and must be a regular file (or, for disks,
  a block device);
* a qcow2's backing file and external data file are files QEMU opens on the image's behalf:
  each must pass the same check (:func:`check_image_refs`);
* it is checked again each time a machine starts (:func:`recheck_spec`): a file replaced by a
  link, or a directory no longer allowed, stops the start with the same error;
* the daemon never creates or replaces a file outside its home for a client.

Every refusal is one :class:`~corral.errors.PathNotAllowed` line that names the setting.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from corral import settings
from corral.config import Paths
from corral.domain.specs import VMSpec
from corral.errors import InvalidSpec, PathNotAllowed

SETTING = "paths.allowed"
ENV = "CORRAL_ALLOWED_PATHS"
UPLOAD_PREFIX = "upload:"


def allowed_dirs() -> list[Path]:
    """The directories of ``paths.allowed``, resolved (relative entries are ignored)."""
    dirs: list[str] = settings.value(SETTING)
    return [Path(os.path.realpath(d)) for d in dirs if os.path.isabs(d)]


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path != root and path.is_relative_to(root) for root in roots)


def _refuse(field: str, text: str, why: str) -> PathNotAllowed:
    dirs = ":".join(str(d) for d in allowed_dirs()) or "none"
    return PathNotAllowed(
        field, text, f"{why}; the daemon opens a path a client names only inside the "
        f"directories of the setting {SETTING} ({ENV}, now: {dirs}); upload the file instead",
        SETTING)


def own_dirs(paths: Paths) -> list[Path]:
    """The daemon's own directories (its home, its image directories, and in a cluster the
    HA VMs' directories it makes on shared storage), resolved."""
    from corral import settings

    shared = str(settings.value("cluster.shared") or "")
    extra = [Path(shared) / "vms"] if shared else []
    return [Path(os.path.realpath(d)) for d in (paths.home, *paths.image_path, *extra)]


def check(field: str, text: str, paths: Paths, *, block_ok: bool = False) -> Path:
    """``text`` resolved, once it is shown to name a file a client may have the daemon use
    in place (see the module docstring): inside an allowed directory, and not inside the
    daemon's own ones (another VM's disk, an image, the store), even where those lie in an
    allowed directory.

    :raises PathNotAllowed: outside the allowed directories (or a link swapped in).
    :raises InvalidSpec: no such file, or not a regular file (block device with
        ``block_ok``).
    """
    if not text or "\0" in text:
        raise InvalidSpec(field, "give a path")
    shown = text if len(text) <= 200 else text[:200] + "…"
    if not os.path.isabs(text):
        raise _refuse(field, text, f"'{shown}' is not an absolute path")
    real = Path(os.path.realpath(text))
    if not _inside(real, allowed_dirs()):
        raise _refuse(field, text, f"{shown} is outside the allowed directories")
    if any(real == d or real.is_relative_to(d) for d in own_dirs(paths)):
        raise _refuse(field, text, f"{shown} is one of the daemon's own files")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                     | os.O_NOCTTY)
    except FileNotFoundError as err:
        raise InvalidSpec(field, f"no file '{shown}'") from err
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _refuse(field, text, f"{shown} became a symbolic link") from err
        raise InvalidSpec(field, f"cannot open '{shown}': {err.strerror}") from err
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    if not (stat.S_ISREG(mode) or (block_ok and stat.S_ISBLK(mode))):
        kinds = "a regular file or a block device" if block_ok else "a regular file"
        raise InvalidSpec(field, f"'{shown}' is not {kinds}")
    return real


def check_image_refs(field: str, backing: str | None, data_file: str | None,
                     paths: Paths) -> None:
    """A disk image's backing file and external data file, which QEMU would open for it,
    must be files a client may name too.

    :raises PathNotAllowed: either lies outside the allowed directories.
    """
    for ref, what in ((backing, "its backing file"), (data_file, "its data file")):
        if ref is not None:
            try:
                check(field, ref, paths, block_ok=True)
            except InvalidSpec as err:
                raise _refuse(field, ref, f"{what} {ref} is not a file a client may name"
                              ) from err


def recheck_spec(spec: VMSpec, paths: Paths) -> None:
    """Before a machine starts: every file of ``spec`` outside the daemon's own directories
    (disks and kernels used in place) still passes :func:`check` under its stored name.

    :raises PathNotAllowed: one no longer does (replaced by a link, directory no longer
        allowed); nothing is started.
    """
    named = [(f"disks.{i}.path", d.path, True) for i, d in enumerate(spec.disks)]
    named += [(f, p, False) for f, p in (("kernel", spec.kernel), ("initrd", spec.initrd)) if p]
    own = own_dirs(paths)
    for field, path, block_ok in named:
        if _inside(Path(os.path.realpath(path)), own):
            continue  # the daemon's own file (made by it, or an image's)
        if check(field, path, paths, block_ok=block_ok) != Path(path):
            raise _refuse(field, path, f"{path} is now a link to another file")

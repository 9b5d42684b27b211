"""The unprivileged system user every QEMU runs as, and the files handed over to it.

The user (``corral-qemu`` by default, setting ``engine.user``) is a system account with no
home and no login shell, made once with ``useradd`` and found again afterwards. QEMU is
*started* as that user, so the strongest seccomp filter applies to it from its first
instruction (see :mod:`corral.engine.qemu.spawn`).

What QEMU opens by path must belong to it: :func:`hand_over` gives the user each file a VM
uses (disks, the RAM file, the snapshot state node) together with the directories above it
up to the home's first level, and makes the base images those disks stand on readable by
the user's group only. Everything handed over is mode 0600 (directories 0700): the daemon,
as root, still reads and writes all of it.
"""

from __future__ import annotations

import grp
import os
import pwd
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from corral.errors import CorralError
from corral.host.runner import run

NOLOGIN = "/usr/sbin/nologin"
_QCOW2_MAGIC = b"QFI\xfb"


@dataclass(frozen=True)
class QemuUser:
    """The account QEMU runs as."""

    name: str
    uid: int
    gid: int


def find_user(name: str) -> QemuUser | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return QemuUser(name, entry.pw_uid, entry.pw_gid)


def ensure_user(name: str) -> QemuUser:
    """The system user ``name``, made (no home, no login, its own group) if it does not
    exist yet.

    :raises CorralError: when it cannot be made (not root, no ``useradd``).
    """
    user = find_user(name)
    if user is not None:
        return user
    run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", NOLOGIN, "--user-group", "--comment", "Corral's QEMU processes", name],
        what=f"cannot make the system user {name}")
    user = find_user(name)
    if user is None:
        raise CorralError(f"useradd made no user {name}")
    return user


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def backing_file(path: Path) -> Path | None:
    """The backing file a qcow2 image names in its header (None: none, or not qcow2)."""
    try:
        with path.open("rb") as f:
            head = f.read(20)
            if len(head) < 20 or head[:4] != _QCOW2_MAGIC:
                return None
            offset, size = struct.unpack(">QI", head[8:20])
            if not offset or not size or size > 4096:
                return None
            f.seek(offset)
            name = f.read(size).decode(errors="replace")
    except OSError:
        return None
    backing = Path(name)
    return backing if backing.is_absolute() else path.parent / backing


def _chain(path: Path) -> list[Path]:
    out = [path]
    while len(out) < 64 and (nxt := backing_file(out[-1])) is not None:
        out.append(nxt)
    return out


def _own(path: Path, user: QemuUser, mode: int) -> None:
    st = path.lstat()
    if (st.st_uid, st.st_gid) != (user.uid, user.gid):
        os.lchown(path, user.uid, user.gid)
    if st.st_mode & 0o7777 != mode:
        os.chmod(path, mode)


def _share_read(path: Path, user: QemuUser, mode: int) -> None:
    """Readable by QEMU's group, still owned (and only writable) by root."""
    st = path.stat()
    if st.st_gid != user.gid:
        os.chown(path, -1, user.gid)
    if st.st_mode & 0o7777 != mode:
        os.chmod(path, mode)


def hand_over(paths: Iterable[str | Path], home: Path, user: QemuUser,
              shared: Iterable[Path] = ()) -> None:
    """Give ``user`` the files QEMU will open by path.

    A file under the home (and each directory above it, below the home's first level) becomes
    the user's, mode 0600 (0700); a base image under one of the ``shared`` directories (the
    images) becomes readable by the user's group (0640, directories 0750), and the backing
    chain of every qcow2 is followed. A path that does not exist yet has its directories
    handed over (QEMU makes the file). Files elsewhere on the host are left as they are.

    :raises CorralError: when a file cannot be handed over.
    """
    shared = [Path(s) for s in shared]
    try:
        for given in paths:
            for path in _chain(Path(given)):
                _hand_over_one(path, home, user, shared)
    except OSError as err:
        raise CorralError(f"cannot hand {err.filename} to the QEMU user {user.name}: "
                          f"{err.strerror}") from err


def _hand_over_one(path: Path, home: Path, user: QemuUser, shared: list[Path]) -> None:
    for top in shared:
        if path.is_relative_to(top) and path != top:
            if path.exists():
                _share_read(path, user, 0o640)
            for d in list(path.relative_to(top).parents)[:-1]:
                _share_read(top / d, user, 0o750)
            _share_read(top, user, 0o750)
            return
    if not path.is_relative_to(home) or path == home:
        return
    rel = path.relative_to(home)
    if path.exists() and not path.is_dir():
        _own(path, user, 0o600)
    for d in list(rel.parents)[:-1]:  # the directories above it, the home's own excluded
        _own(home / d, user, 0o700)

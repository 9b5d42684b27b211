"""Where Corral keeps things. Stdlib only: the CLI imports this on its lean path.

The settings ``home``, ``socket`` and ``images.path`` (:mod:`corral.settings`: the
configuration file, ``CORRAL_HOME``, ``CORRAL_SOCKET``, ``CORRAL_IMAGE_PATH``) place them.
``home`` is the data directory (default ``/var/lib/corral`` as root,
``~/.local/share/corral`` otherwise): ``images/``, ``vms/<name>/``, ``run/``, ``corral.db``
and the daemon's socket ``corral.sock`` (``CORRAL_SOCKET`` overrides). The home may be
private (mode 0700): what other users' processes must reach lives in ``/run/corral-<tag>``.
``CORRAL_IMAGE_PATH`` adds read-only image directories, searched after
``$CORRAL_HOME/images``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from corral import settings

_SUN_PATH_MAX = 107  # a unix socket path must fit sockaddr_un


def default_home() -> Path:
    home = settings.value("home")
    if home:
        return Path(home).expanduser().absolute()
    if os.geteuid() == 0:
        return Path("/var/lib/corral")
    return Path.home() / ".local" / "share" / "corral"


def default_socket(home: Path | None = None) -> Path:
    sock = settings.value("socket")
    if sock:
        return Path(sock).expanduser().absolute()
    return (home or default_home()) / "corral.sock"


class Paths:
    """The layout of one data directory. (A plain class: ``dataclasses`` is slow to import.)"""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._run: Path | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Paths) and other.home == self.home

    def __hash__(self) -> int:
        return hash(self.home)

    @classmethod
    def from_env(cls) -> Paths:
        return cls(default_home())

    @property
    def db(self) -> Path:
        return self.home / "corral.db"

    @property
    def images(self) -> Path:
        return self.home / "images"

    @property
    def image_path(self) -> list[Path]:
        # absolute, as the home is: a VM's kernel found there is stored with its path
        return [self.images] + [Path(p).expanduser().absolute()
                                for p in settings.value("images.path")]

    def vm_dir(self, name: str) -> Path:
        return self.home / "vms" / name

    @property
    def tag(self) -> str:
        """A short hash of the home: names this daemon's objects that live outside it
        (the fallback run directory, cgroups), so two daemons never share one."""
        import hashlib

        return hashlib.sha256(str(self.home).encode()).hexdigest()[:10]

    @property
    def outside(self) -> Path:
        """This daemon's directory outside its home, ``/run/corral-<tag>``: for what a process
        running as another user must reach (dnsmasq drops to ``nobody``), so the home may be
        private, and for sockets when the home is too deep. Searchable by others, listable
        only by its owner (mode 0711)."""
        base = Path("/run") if os.access("/run", os.W_OK) else Path("/tmp")
        return base / f"corral-{self.tag}"

    @property
    def run(self) -> Path:
        """Sockets and pidfiles. Falls back to :attr:`outside` when the home is too deep for
        unix socket names. (Worked out once: every view of a live VM names its socket.)"""
        if self._run is None:
            run = self.home / "run"
            self._run = run if len(str(run)) + 48 <= _SUN_PATH_MAX else self.outside
        return self._run

    @property
    def networks(self) -> Path:
        """The files of the networks' dnsmasqs (``<network namespace>/``), where dnsmasq can
        read them as ``nobody`` however private the home is. (A name no VM can have: the
        directory shares :attr:`outside` with VM sockets when the home is deep.)"""
        return self.outside / "networks.d"

    def run_dir(self, name: str) -> Path:
        return self.run / name

    def remove_leftovers(self) -> None:
        """Remove the empty directories a stopped daemon leaves in its run directories (and
        those directories once nothing is left in them). A running VM's sockets and a
        running dnsmasq's files keep theirs; the next daemon makes again what it needs."""
        for top in {self.run, self.outside}:
            if not top.is_dir():
                continue
            for dir, _subdirs, _files in os.walk(top, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(dir)

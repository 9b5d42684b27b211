"""The daemon's decision, once at start, on how every QEMU is confined, and what it says
about the parts this host cannot give.

In full (the daemon runs as root): QEMU runs as the system user ``engine.qemu_user`` (made
if missing), started as that user with QEMU's strictest seccomp filter, in a mount
namespace that shows it only the home's ``vms``, ``disks`` and ``images``, in memory and
pids cgroups of its own (guest RAM plus ``engine.memory_overhead``; ``engine.pids_max``),
and refused every TCP connection to the host itself (so a guest on user-mode networking
cannot reach the daemon's API port, or any host service, through 10.0.2.2).
Each part that cannot be had is named at start with the reason (not root, no such cgroup
controller, …) and the daemon runs with the rest.

The home is made private at the same time: mode 0700, and the daemon's umask 077, so every
file Corral writes (the store, saved states, snapshots, seeds, exports, logs) is 0600.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from corral import settings
from corral.config import Paths
from corral.engine.qemu.confine import Confinement
from corral.errors import CorralError
from corral.host import cgroups, qemu_user

log = logging.getLogger(__name__)
TCG_OVERHEAD = 1 << 30   # TCG's translation cache alone may grow to 1 GiB
KVM_OVERHEAD = 256 << 20


def _setting(key: str) -> object:
    try:
        return settings.value(key)
    except settings.SettingError as err:
        raise CorralError(str(err)) from err


def private_home(paths: Paths) -> None:
    """Make the home 0700 (and new files 0600: the umask) before anything is written."""
    os.umask(0o077)
    paths.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    if paths.home.stat().st_uid == os.geteuid():
        os.chmod(paths.home, 0o700)


def decide(paths: Paths, accel: str) -> Confinement:
    """The confinement every QEMU of this daemon gets. Logs each part that is off and why.

    :raises CorralError: when a confinement setting does not parse.
    """
    sandbox = bool(_setting("engine.sandbox"))
    conf = Confinement(sandbox=sandbox)
    if not sandbox:
        conf.off["seccomp"] = "turned off by the setting engine.sandbox"
    name = str(_setting("engine.qemu_user") or "")
    closed = [p for p in paths.home.parents if p.exists() and not p.stat().st_mode & 0o001]
    if name in ("", "root"):
        conf.off["user"] = "the setting engine.qemu_user is root: QEMU runs as the daemon's user"
    elif os.geteuid() != 0:
        conf.off["user"] = (f"the daemon is not root (uid {os.geteuid()}): QEMU runs as "
                            "the daemon's own user")
    elif closed:
        conf.off["user"] = (f"{closed[0]} is not searchable by others (chmod o+x), so a user "
                            "of QEMU's own could not reach the home: QEMU runs as root")
    else:
        try:
            conf.user = qemu_user.ensure_user(name)
        except CorralError as err:
            conf.off["user"] = f"{err.message}: QEMU runs as root"
    if conf.user is not None:
        conf.home, conf.shared = paths.home, (paths.images,)
        shared = str(_setting("cluster.shared") or "")
        if shared:  # HA VMs' directories on the cluster's shared storage
            conf.owned = (Path(shared) / "vms",)
    else:
        conf.off["private_home"] = "QEMU does not run as a user of its own"
    _limits(conf, paths, accel)
    _guard_host(conf, paths)
    for part, why in conf.off.items():
        log.warning("QEMU confinement: no %s: %s", part.replace("_", " "), why)
    return conf


def _limits(conf: Confinement, paths: Paths, accel: str) -> None:
    why = cgroups.limits_unavailable()
    if why is not None:
        conf.off["cgroup_limits"] = why
        return
    overhead = _setting("engine.memory_overhead")
    conf.tag = paths.tag
    conf.memory_overhead = int(overhead) if isinstance(overhead, int) else (
        TCG_OVERHEAD if accel == "tcg" else KVM_OVERHEAD)
    conf.pids_max = int(str(_setting("engine.pids_max")))


def _guard_host(conf: Confinement, paths: Paths) -> None:
    """QEMU's user is to be refused every TCP connection to the host itself (a guest on
    user-mode networking reaching the API port through 10.0.2.2): the rule is in place while
    a QEMU of this daemon runs (:meth:`Confinement.raise_guard`), and ``engine.guard_linger``
    seconds after the last one ends (:meth:`~corral.engine.qemu.driver.QemuDriver.settle_guard`)."""
    if conf.user is None:
        conf.off["host_guard"] = "QEMU does not run as a user of its own"
    elif shutil.which("nft") is None:
        conf.off["host_guard"] = "nft is not installed (apt-get install nftables)"
    else:
        conf.host_guard = f"corral-qemu-{paths.tag}"
        conf.guard_linger = float(str(_setting("engine.guard_linger")))

"""A VM changing hosts in a cluster, as one host's store records it: taken over from a lost
host (its cluster-wide name moved here with its record, in one transaction), or forgotten
because another host has it now (fencing). See :mod:`corral.service.clusterha`.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, insert

from corral.store.cluster import move_name
from corral.store.db import Store, VMRecord
from corral.store.schema import snapshots, vms


def take_over_vm(store: Store, rec: VMRecord, old_host: str) -> None:
    """Add ``rec`` to this host's ``store``: a VM of host ``old_host`` (lost) that this host
    restarts, its cluster-wide name moved here in the same transaction.

    :raises AlreadyExists: another host took it over first.
    """
    assert store.host is not None, "only a cluster's store takes VMs over"
    new_host = store.host
    rec.created_at = rec.updated_at = time.time()

    def write() -> None:
        with store._tx() as conn:
            move_name(conn, rec.name, old_host, new_host)
            conn.execute(insert(vms).values(**rec.to_row()))
            store._event(conn, rec.name, "taken_over", {"from": old_host})

    store._run(write)
    store._vms[rec.name] = rec


def forget_vm(store: Store, name: str) -> None:
    """Drop a VM's record and snapshots from ``store``, not its cluster-wide name: another
    host has it now (fencing)."""
    def write() -> None:
        with store._tx() as conn:
            conn.execute(delete(vms).where(vms.c.name == name))
            conn.execute(delete(snapshots).where(snapshots.c.vm == name))
            store._event(conn, name, "fenced", {})

    store._run(write)
    store._vms.pop(name, None)

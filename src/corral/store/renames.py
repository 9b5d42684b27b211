"""The store's side of renaming a VM (a warm pool's clone handed out under the name its
user asked for): its record, its snapshots, the records of its taps, the pools' document
and the event move in one transaction on the :class:`~corral.store.db.Store`'s writer
thread."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import delete, insert, update

from corral.store.db import Store, VMRecord
from corral.store.schema import kv, net_records, snapshots, vms


def rename_vm(store: Store, old: str, rec: VMRecord, kind: str,
              doc: tuple[str, Any] | None = None, **detail: Any) -> None:
    """``old`` is now called ``rec.name`` (its snapshots and its taps' records follow it:
    a cached :class:`~corral.store.networks.NetStore` is told by
    :meth:`~corral.store.networks.NetStore.owner_renamed`); with an event (in the
    VM's project), and the document ``doc`` (key, value) when given, in the same
    transaction."""
    rec.updated_at = time.time()
    row = rec.to_row()

    def write() -> None:
        with store._tx() as conn:
            conn.execute(update(vms).where(vms.c.name == old).values(**row))
            conn.execute(update(snapshots).where(snapshots.c.vm == old).values(vm=rec.name))
            conn.execute(update(net_records).where(net_records.c.owner == f"vm:{old}")
                         .values(owner=f"vm:{rec.name}"))
            if doc is not None:
                conn.execute(delete(kv).where(kv.c.key == doc[0]))
                conn.execute(insert(kv).values(key=doc[0], value=json.dumps(doc[1])))
            store._event(conn, rec.name, kind, {"from": old, **detail}, rec.project)

    store._run(write)
    store._vms.pop(old, None)
    store._vms[rec.name] = rec

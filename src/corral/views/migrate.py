"""The answers of live migration (:mod:`corral.api.migrate`)."""

from __future__ import annotations

from corral.views._typed import TypedDict


class Migration(TypedDict):
    """How a live migration went (in the VM's answer, as ``migration``)."""

    to: str
    total_time: float    # seconds
    downtime: float      # seconds the guest stood still
    transferred: int     # RAM bytes sent
    postcopy: bool
    disks: list[str]     # the disks copied live (none: shared storage)
    encrypted: bool      # over QEMU's TLS (both hosts have cluster.migrate_tls); false: in clear


class LastMigration(TypedDict):
    """A VM's last live migration (in ``corral show``, as ``last_migration``)."""

    source: str        # the host it came from
    at: float          # when it arrived (epoch seconds)
    encrypted: bool    # over QEMU's TLS; false: in clear


class MigrationCancelled(TypedDict):
    name: str
    cancelled: bool
    to: str


class DrainMove(TypedDict):
    vm: str
    to: str | None
    ok: bool


class DrainReport(TypedDict):
    host: str
    moves: list[DrainMove]
    left: list[str]  # VMs still running on the host


class MigrationPlan(TypedDict):
    """(Host to host) where the source sends an arriving VM."""

    uri: str
    nbd: str | None
    disks: list[str]
    host: str


class ArrivalAborted(TypedDict):
    aborted: bool

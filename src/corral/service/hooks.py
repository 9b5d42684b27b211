"""What the VM runtime (:mod:`corral.service.runtime`) asks of the slices it does not own:
the network's taps and addresses, the scheduler's reservations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from corral.domain.specs import VMSpec
    from corral.store.db import VMRecord


class Hooks(Protocol):
    """What the runtime asks of the slices it does not own."""

    async def plug(self, rec: VMRecord) -> None:
        """Before a machine starts: make what its NICs need (taps)."""

    def unplug(self, name: str) -> None:
        """A machine ended: remove its taps."""

    def released(self, name: str) -> None:
        """A machine ended or never started: free its reservation."""

    async def forget(self, name: str, spec: VMSpec) -> None:
        """A VM is gone for good: remove every network object that names it."""

    async def moved(self, name: str, spec: VMSpec) -> None:
        """A VM runs on another host now: stop carrying what only it needed here."""


class NoHooks:
    """Hooks that do nothing (a runtime without networks or scheduler, in tests)."""

    async def plug(self, rec: VMRecord) -> None:
        return None

    def unplug(self, name: str) -> None:
        return None

    def released(self, name: str) -> None:
        return None

    async def forget(self, name: str, spec: VMSpec) -> None:
        return None

    async def moved(self, name: str, spec: VMSpec) -> None:
        return None

"""A fake engine driver that behaves like QEMU for the service, with no process at all.

A :class:`FakeMachine` is an object with QEMU's run state (``running``, ``paused``,
``prelaunch``, ``inmigrate``, ``postmigrate``…) that follows the calls as QEMU does, and
reports QEMU's events through the service's callback from the event loop, never inside the
call: ``pause``/``cont`` emit ``STOP``/``RESUME``; ``quit`` emits ``SHUTDOWN`` and exits 0;
``powerdown`` and ``guest_shutdown`` make the guest power off (``SHUTDOWN`` with ``guest:
true``, exit 0; a paused guest sees the ACPI button when it runs again); ``reset`` and a
guest reboot emit ``RESET`` and the agent answers again after the boot delay; ``kill`` exits
with -9. An exit is reported once through :meth:`FakeMachine.watch_exit` and wakes
:meth:`FakeMachine.wait_exit`. Its guest is a :class:`~corral.engine.fake_guest.FakeGuest`.

Files it writes where QEMU would: ``save_state`` a small JSON state (temporary name, mode
0600, renamed into place) that ``load_state`` accepts only on a machine launched
``incoming`` with the same memory size and devices (else ``MonitorError`` and the machine
exits 1, like QEMU after a failed incoming migration); memory snapshots into the VM's
``vmstate`` file (as JSON: a copy of the file carries its snapshots, like a copy of the
qcow2 does), which only the fake can read then; RAM into a shared ``RamFile`` (templates),
read back from a private one (clones). Tags on disk nodes are not written: reverting a
disk-only snapshot of a VM with writable disks needs real qcow2 snapshots.

Failure injection:

* ``driver.fail_next(op, error, times=1)``: the next call of ``op`` (``"launch"``,
  ``"adopt"`` or any :class:`FakeMachine` method name, on any machine) raises ``error``
  before it changes anything; ``machine.fail_next(op, error)`` for one machine.
* ``machine.crash()``: the process dies as if killed outside Corral (exit -9, no event).
* ``machine.panic()``: the guest panics (``GUEST_PANICKED``, then ``SHUTDOWN`` reason
  ``guest-panic`` and exit 0, QEMU's default action); ``panic(action="pause")`` only stops.
* ``machine.hang(channel, seconds=None)``: ``"guest"`` (agent calls wait until their timeout,
  or ``seconds`` if shorter, then raise Timeout), ``"monitor"`` (likewise for monitor calls),
  ``"acpi"`` (the guest ignores the power button and hot-unplug requests); ``unhang``.
* ``driver.on_launch``: called with each new machine before the service gets it (to hang
  or fail it from its very first call).
* ``driver.boot_delay`` (seconds from first run to the agent answering, default 0.01) and
  ``driver.latency`` (the time every call takes, default 0: it still yields to the loop).

``FakeDriver.adopt`` finds machines a previous ``FakeDriver`` launched in the same run
directory (a class-level registry), so a test restarts the daemon with a new Manager on the
same home; ``FakeDriver.forget_all()`` empties the registry between tests.
"""

from corral.engine.fake.driver import FakeDriver
from corral.engine.fake.guest import FakeGuest
from corral.engine.fake.machine import FakeMachine

__all__ = ["FakeDriver", "FakeGuest", "FakeMachine"]

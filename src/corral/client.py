"""``corral.Client``: the Python API, a thin client of the daemon's REST API.

Standard library only (HTTP/1.1 over the unix socket, one kept-alive connection: see
:mod:`corral.wire`), so importing it costs milliseconds; the CLI is built on it::

    from corral import Client
    c = Client()                      # $CORRAL_SOCKET or $CORRAL_HOME/corral.sock
    c.create("web", memory="256M")
    c.start("web", wait=True)
    c.pause("web"); c.resume("web")
    c.rm("web")

A remote daemon (``corral serve --listen``) is the same Client over TLS, with a token and
the server certificate's SHA-256 fingerprint (or a CA) to trust::

    c = Client(url="https://10.0.0.2:8443", token="crl_…", fingerprint="6e82…")
    c = Client()                      # $CORRAL_URL, $CORRAL_TOKEN, $CORRAL_FINGERPRINT

One verb per action (``rm``, ``disk_rm``, ``snapshot_rm``, ``network_rm`` …); the older names
(``destroy``, ``disk_delete`` …) stay as aliases. Every name is checked and percent-quoted
before it goes into a URL, and every number is checked (finite, in range) before a request
is sent (:class:`~corral.errors.InvalidSpec`). Answers are typed with :mod:`corral.views`
(imported only by type checkers). Errors come back as the same class the daemon raised, with
the same facts (:func:`corral.errors.from_dict`).
"""

from __future__ import annotations

import json

from corral import errors
from corral.client_access import AccessCalls
from corral.client_events import EventCalls
from corral.client_files import FileCalls, writing
from corral.client_migrate import MigrateCalls
from corral.client_networks import NetworkCalls
from corral.client_pools import PoolCalls
from corral.client_stacks import StackCalls
from corral.wire import MAX_TIMEOUT, error, integer, seconds, seg

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    import builtins
    from collections.abc import Iterator, Sequence
    from typing import Any

    from corral import views
    from corral.client_files import FileLike, Progress

__all__ = ["MAX_TIMEOUT", "Client"]


def _error(status: int, body: dict[str, Any]) -> errors.CorralError:
    return error(status, body)


class Client(NetworkCalls, AccessCalls, PoolCalls, StackCalls, EventCalls, FileCalls,
             MigrateCalls):
    """A connection to ``corral serve`` with one method per action. Every method raises
    :class:`~corral.errors.CorralError` subclasses; :class:`~corral.errors.DaemonUnavailable`
    when the daemon is not running."""

    # --- VMs: the lifecycle ---
    def create(self, name: str, *, start: bool = False, wait: bool = False,
               timeout: float | None = None, queue: bool = True,
               progress: Progress | None = None, **spec: Any) -> views.VM:
        """Define a VM (``start=True`` also boots it; ``wait=True`` until it is ready).
        Files the spec names are sent first, read with the caller's rights: ``kernel`` and
        ``initrd`` (paths or open binary files) and a disk's ``file`` (an image that becomes
        the VM's own disk); a disk's ``path`` is used in place, only where the daemon's host
        allows it (its ``paths.allowed`` setting).

        :raises InvalidSpec: a bad spec, or a file that cannot be read.
        :raises AlreadyExists: the name is taken.
        """
        seg(name)
        spec = self._uploaded_spec(spec, progress)
        out: views.VM = self.request("POST", "/vms", {"name": name, **spec},
                                     start=start or None, wait=wait or None,
                                     timeout=seconds(timeout), queue=None if queue else False)
        return out

    def start(self, name: str, wait: bool = False, timeout: float | None = None,
              queue: bool = True) -> views.VM:
        """Boot a VM, or queue it when the host is full (``queue=False``: fail instead).

        :raises InvalidState: it is not defined, stopped, saved or crashed.
        :raises NoCapacity: the host is full and ``queue`` is False.
        """
        out: views.VM = self.request("POST", f"/vms/{seg(name)}/start", wait=wait or None,
                                     timeout=seconds(timeout), queue=None if queue else False)
        return out

    def wait_ready(self, name: str, timeout: float | None = None) -> views.VM:
        out: views.VM = self.request("POST", f"/vms/{seg(name)}/wait",
                                     timeout=seconds(timeout))
        return out

    def pause(self, name: str) -> views.VM:
        """:raises InvalidState: it is not running."""
        out: views.VM = self.request("POST", f"/vms/{seg(name)}/pause")
        return out

    def resume(self, name: str) -> views.VM:
        """:raises InvalidState: it is not paused."""
        out: views.VM = self.request("POST", f"/vms/{seg(name)}/resume")
        return out

    def shutdown(self, name: str, timeout: float | None = None) -> views.VM:
        out: views.VM = self.request("POST", f"/vms/{seg(name)}/shutdown",
                                     timeout=seconds(timeout))
        return out

    def stop(self, name: str, force: bool = True, timeout: float | None = None) -> views.VM:
        out: views.VM = self.request("POST", f"/vms/{seg(name)}/stop", force=force,
                                     timeout=seconds(timeout))
        return out

    def reboot(self, name: str, wait: bool = False, timeout: float | None = None) -> views.VM:
        out: views.VM = self.request("POST", f"/vms/{seg(name)}/reboot", wait=wait or None,
                                     timeout=seconds(timeout))
        return out

    def save(self, name: str, file: FileLike | None = None,
             progress: Progress | None = None) -> views.VM:
        """Write the VM's whole state to its state file and stop it (``saved``); with
        ``file`` (a path or a binary file open for writing), also download a copy there."""
        if file is None:
            out: views.VM = self.request("POST", f"/vms/{seg(name)}/save")
            return out
        with writing(file, "state") as sink:  # a file the caller cannot write fails first
            out = self.request("POST", f"/vms/{seg(name)}/save")
            self.download_state(name, sink, progress)
        return out

    def restore(self, name: str, wait: bool = False, timeout: float | None = None
                ) -> views.VM:
        """Bring a saved VM back where it was."""
        out: views.VM = self.request("POST", f"/vms/{seg(name)}/restore", wait=wait or None,
                                     timeout=seconds(timeout))
        return out

    def rm(self, name: str) -> None:
        """Stop the VM if it runs and remove everything it owns.

        :raises NotFound: no VM of that name.
        """
        self.request("DELETE", f"/vms/{seg(name)}")

    destroy = rm

    def get(self, name: str) -> views.VM:
        """:raises NotFound: no VM of that name."""
        out: views.VM = self.request("GET", f"/vms/{seg(name)}")
        return out

    def list(self, host: str | None = None) -> builtins.list[views.VM]:
        """Every VM (in a cluster: of every host, each with its ``host``; ``host`` keeps
        one host's)."""
        out: builtins.list[views.VM] = self.request("GET", "/vms", host=host)
        return out

    def logs(self, name: str, offset: int = 0, limit: int | None = None) -> views.Logs:
        """The serial log from byte ``offset`` (negative: from the end)."""
        out: views.Logs = self.request("GET", f"/vms/{seg(name)}/logs",
                                       offset=integer(offset, "offset", -(1 << 50), 1 << 50),
                                       limit=integer(limit, "limit", 1, 16 << 20))
        return out

    def clone(self, src: str, new: str, full: bool = False,
              snapshot: str | None = None) -> views.VM:
        seg(new, "new")
        if snapshot is not None:
            seg(snapshot, "snapshot")
        out: views.VM = self.request("POST", f"/vms/{seg(src)}/clone", new=new,
                                     full=full or None, snapshot=snapshot)
        return out

    # --- the host, the admission queue, batch jobs ---
    def host_info(self) -> views.Host:
        out: views.Host = self.request("GET", "/host")
        return out

    def queue(self) -> builtins.list[views.QueueEntry]:
        out: builtins.list[views.QueueEntry] = self.request("GET", "/queue")
        return out

    def batch(self, argv: Sequence[str], timeout: float = 600.0, queue: bool = True,
              **spec: Any) -> views.BatchResult:
        """Run ``argv`` in a fresh VM that is destroyed afterwards; stdout/stderr as bytes.
        Files the spec names are sent as :meth:`create` sends them."""
        import base64

        spec = self._uploaded_spec(spec, None)
        out: views.BatchResult = self.request("POST", "/batch", {
            "spec": spec, "argv": list(argv), "timeout": seconds(timeout), "queue": queue})
        out["stdout"] = base64.b64decode(out["stdout"])
        out["stderr"] = base64.b64decode(out["stderr"])
        return out

    # --- the cluster ---
    def hosts(self) -> builtins.list[views.ClusterHost]:
        """Every host of the cluster: state (up, down, cordoned, draining), leader,
        allocation ratios and VM count.

        :raises InvalidSpec: the daemon is not in a cluster.
        """
        out: builtins.list[views.ClusterHost] = self.request("GET", "/hosts")
        return out

    def host_admin(self, name: str, action: str) -> views.ClusterHost:
        """``cordon`` (no new VMs), ``drain`` (no new VMs; to be emptied) or ``uncordon``."""
        if action not in ("cordon", "uncordon", "drain"):
            raise errors.InvalidSpec("action", f"'{action}' is not cordon, uncordon or drain")
        out: views.ClusterHost = self.request("POST", f"/hosts/{seg(name, 'host')}/{action}")
        return out

    def join_token(self) -> views.JoinToken:
        """A new token another host joins the cluster with (``CORRAL_JOIN_TOKEN``)."""
        out: views.JoinToken = self.request("POST", "/cluster/token")
        return out

    def move(self, name: str, to: str) -> views.VM:
        """Move a VM that does not run to host ``to`` of the cluster (a saved VM resumes
        there).

        :raises InvalidState: it runs. :raises HostUnavailable: ``to`` is not up.
        """
        out: views.VM = self.request("POST", f"/vms/{seg(name)}/move", to=seg(to, "to") and to)
        return out

    def placement(self, name: str) -> views.PlacementExplained:
        """Where the VM went and why each host was or was not chosen."""
        out: views.PlacementExplained = self.request("GET", f"/vms/{seg(name)}/placement")
        return out

    def trace(self) -> builtins.list[views.TraceEntry]:
        out: builtins.list[views.TraceEntry] = self.request("GET", "/trace")
        return out

    # --- images ---
    def image_list(self) -> builtins.list[views.Image]:
        out: builtins.list[views.Image] = self.request("GET", "/images")
        return out

    def image_rm(self, name: str) -> None:
        """:raises InvalidState: a VM uses it. :raises NotFound: no such image."""
        self.request("DELETE", f"/images/{seg(name)}")

    # --- named disks ---
    def disk_create(self, name: str, size: str | None = None, format: str = "qcow2",
                    source: str | None = None) -> views.Disk:
        seg(name)
        body: dict[str, Any] = {"name": name, "size": size, "format": format}
        if source:
            body["from"] = source
        out: views.Disk = self.request("POST", "/disks", body)
        return out

    def disk_list(self) -> builtins.list[views.Disk]:
        out: builtins.list[views.Disk] = self.request("GET", "/disks")
        return out

    def disk_show(self, name: str) -> views.Disk:
        out: views.Disk = self.request("GET", f"/disks/{seg(name)}")
        return out

    def disk_resize(self, name: str, size: str) -> views.Disk:
        out: views.Disk = self.request("POST", f"/disks/{seg(name)}/resize", size=size)
        return out

    def disk_rm(self, name: str) -> None:
        """:raises InvalidState: the disk is attached to a VM."""
        self.request("DELETE", f"/disks/{seg(name)}")

    disk_delete = disk_rm

    def attach_disk(self, vm: str, disk: str, readonly: bool = False,
                    iops: int | None = None, bps: int | None = None) -> views.VM:
        seg(disk, "disk")
        out: views.VM = self.request("POST", f"/vms/{seg(vm)}/disks", {
            "disk": disk, "readonly": readonly, "iops": integer(iops, "iops", 0, 1 << 40),
            "bps": integer(bps, "bps", 0, 1 << 50)})
        return out

    def detach_disk(self, vm: str, disk: str) -> views.VM:
        out: views.VM = self.request("DELETE", f"/vms/{seg(vm)}/disks/{seg(disk, 'disk')}")
        return out

    # --- snapshots ---
    def snapshot_create(self, name: str, snapshot: str, memory: bool = False,
                        template: bool = False) -> views.Snapshot:
        """``template`` (with ``memory``): make its warm-start template before returning."""
        seg(snapshot, "snapshot")
        out: views.Snapshot = self.request("POST", f"/vms/{seg(name)}/snapshots",
                                           {"name": snapshot, "memory": memory,
                                            "template": template})
        return out

    def snapshot_list(self, name: str) -> builtins.list[views.Snapshot]:
        out: builtins.list[views.Snapshot] = self.request("GET", f"/vms/{seg(name)}/snapshots")
        return out

    def snapshot_revert(self, name: str, snapshot: str) -> views.VM:
        out: views.VM = self.request(
            "POST", f"/vms/{seg(name)}/snapshots/{seg(snapshot, 'snapshot')}/revert")
        return out

    def snapshot_rm(self, name: str, snapshot: str) -> None:
        self.request("DELETE", f"/vms/{seg(name)}/snapshots/{seg(snapshot, 'snapshot')}")

    snapshot_delete = snapshot_rm

    # --- inside the guest (through its agent) ---
    def exec(self, name: str, argv: Sequence[str], timeout: float = 60.0,
             stdin: bytes | None = None) -> views.ExecResult:
        """Run ``argv`` in the guest; ``stdout``/``stderr`` come back as bytes."""
        import base64

        body: dict[str, Any] = {"argv": list(argv), "timeout": seconds(timeout)}
        if stdin is not None:
            body["stdin"] = base64.b64encode(stdin).decode()
        out: views.ExecResult = self.request("POST", f"/vms/{seg(name)}/exec", body)
        out["stdout"] = base64.b64decode(out["stdout"])
        out["stderr"] = base64.b64decode(out["stderr"])
        return out

    def exec_stream(self, name: str, argv: Sequence[str], timeout: float = 60.0,
                    stdin: bytes | None = None) -> Iterator[dict[str, Any]]:
        """Run ``argv`` in the guest and yield its output as it comes: ``{"stdout": bytes}``
        and ``{"stderr": bytes}`` chunks, then ``{"exitcode": N, "signal": S}``.

        :raises CorralError: as :meth:`exec` does, also when it fails half-way.
        """
        import base64

        body: dict[str, Any] = {"argv": list(argv), "timeout": seconds(timeout)}
        if stdin is not None:
            body["stdin"] = base64.b64encode(stdin).decode()
        url = f"/v1/vms/{seg(name)}/exec?stream=true"
        self.close()  # a fresh connection: a kept-alive one the daemon dropped cannot be retried
        try:
            for status, line in self._conn.stream_lines("POST", url, json.dumps(body).encode()):
                event = json.loads(line) if line.strip() else {}
                if status >= 400 or "error" in event:
                    raise error(status if status >= 400 else 500, event)
                for key in ("stdout", "stderr"):
                    if key in event:
                        event[key] = base64.b64decode(event[key])
                if event:
                    yield event
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as err:
            raise self.unavailable(err) from err

    def read_file(self, name: str, path: str) -> bytes:
        return self.raw_request("GET", f"/vms/{seg(name)}/files", path=path)

    def write_file(self, name: str, path: str, data: bytes) -> views.FileWritten:
        out: views.FileWritten = json.loads(self.raw_request(
            "PUT", f"/vms/{seg(name)}/files", data, "application/octet-stream", path=path))
        return out

    def addresses(self, name: str) -> builtins.list[views.Interface]:
        out: builtins.list[views.Interface] = self.request("GET", f"/vms/{seg(name)}/addresses")
        return out


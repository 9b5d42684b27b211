"""``corral.Client``: the Python API, a thin client of the daemon's REST API.

Standard library only (``http.client`` over the unix socket, one kept-alive connection), so
importing it costs milliseconds; the CLI is built on it::

    from corral import Client
    c = Client()                      # $CORRAL_SOCKET or $CORRAL_HOME/corral.sock
    c.create("web", memory="256M")
    c.start("web", wait=True)
    c.pause("web"); c.resume("web")
    c.rm("web")

One verb per action (``rm``, ``disk_rm``, ``snapshot_rm``, ``network_rm`` …); the older names
(``destroy``, ``disk_delete`` …) stay as aliases. Every name is checked and percent-quoted
before it goes into a URL, and every number is checked (finite, in range) before a request
is sent (:class:`~corral.errors.InvalidSpec`). Answers are typed with :mod:`corral.views`
(imported only by type checkers). Errors come back as the same class the daemon raised, with
the same facts (:func:`corral.errors.from_dict`).
"""

from __future__ import annotations

import json
import socket
import urllib.parse
from pathlib import Path

from corral import errors
from corral.config import default_socket

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    import builtins
    from collections.abc import Iterator, Sequence
    from typing import Any

    from corral import views

MAX_TIMEOUT = 86400.0  # the daemon refuses longer waits


def _error(status: int, body: dict[str, Any]) -> errors.CorralError:
    return errors.from_dict(body, status)


def _seg(name: object, field: str = "name") -> str:
    """``name`` as one URL path segment: checked, then percent-quoted, so that no name can
    reach another route or smuggle a second request (CR/LF).

    :raises InvalidSpec: an empty name, a control character, ``/``, ``.`` or ``..``.
    """
    if not isinstance(name, str) or not name:
        raise errors.InvalidSpec(field, "give a name")
    if len(name) > 255 or name in (".", "..") or "/" in name or \
            any(ord(c) < 32 or ord(c) == 127 for c in name):
        shown = name if len(name) <= 40 else name[:40] + "…"
        raise errors.InvalidSpec(field, f"{shown!r} is not a valid name; use 1-32 lowercase "
                                        "letters, digits and '-', starting with a letter or "
                                        "digit")
    return urllib.parse.quote(name, safe="")


def _seconds(value: float | None, field: str = "timeout") -> float | None:
    """:raises InvalidSpec: unless ``value`` is None or a finite number in (0, a day]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not 0 < value <= MAX_TIMEOUT:  # NaN fails every comparison
        raise errors.InvalidSpec(field, f"{value!r} is not a number of seconds in "
                                        f"(0, {MAX_TIMEOUT:g}]")
    return float(value)


def _int(value: int | None, field: str, low: int, high: int) -> int | None:
    """:raises InvalidSpec: unless ``value`` is None or an integer in [low, high]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise errors.InvalidSpec(field, f"{value!r} is not an integer in [{low}, {high}]")
    return value


class _Transport:
    """HTTP/1.1 over a unix socket, kept alive. Hand-written because ``http.client`` pulls in
    the ``email`` package, which alone costs the CLI more than its whole time budget."""

    def __init__(self, path: str, timeout: float | None) -> None:
        self.path = path
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._buf = b""

    def __del__(self) -> None:  # a client dropped without close() (the CLI's) closes here
        self.close()

    def _connect(self) -> socket.socket:
        if self.sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            self.sock = sock
        return self.sock

    def _read_until(self, sep: bytes) -> bytes:
        assert self.sock is not None
        while sep not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("the daemon closed the connection")
            self._buf += chunk
        head, _, self._buf = self._buf.partition(sep)
        return head

    def _read_exact(self, n: int) -> bytes:
        assert self.sock is not None
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise ConnectionResetError("the daemon closed the connection")
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def stream_lines(self, method: str, url: str, body: bytes) -> Iterator[tuple[int, bytes]]:
        """Send a request and yield ``(status, line)`` for each line of the (chunked) answer
        as it arrives; the connection is not reused afterwards."""
        sock = self._connect()
        sock.sendall(f"{method} {url} HTTP/1.1\r\nHost: corral\r\nConnection: close\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                     .encode() + body)
        lines = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        pending = b""
        try:
            if headers.get("transfer-encoding", "").lower() != "chunked":
                yield status, self._read_exact(int(headers.get("content-length", "0")))
                return
            while size := int(self._read_until(b"\r\n").split(b";")[0], 16):
                pending += self._read_exact(size)
                self._read_exact(2)
                *done, pending = pending.split(b"\n")
                for line in done:
                    yield status, line
            if pending:
                yield status, pending
        finally:
            self.close()

    def request(self, method: str, url: str, body: bytes | None,
                content_type: str = "application/json") -> tuple[int, bytes]:
        sock = self._connect()
        head = f"{method} {url} HTTP/1.1\r\nHost: corral\r\n"
        if body is not None:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        elif method in ("POST", "PUT"):
            head += "Content-Length: 0\r\n"
        sock.sendall(head.encode() + b"\r\n" + (body or b""))
        lines = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        if headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while size := int(self._read_until(b"\r\n").split(b";")[0], 16):
                data += self._read_exact(size)
                self._read_exact(2)
            self._read_until(b"\r\n")
        else:
            data = self._read_exact(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, data


class Client:
    """A connection to ``corral serve``. Every method raises :class:`~corral.errors.CorralError`
    subclasses; :class:`~corral.errors.DaemonUnavailable` when the daemon is not running."""

    def __init__(self, socket_path: str | Path | None = None,
                 timeout: float | None = 300.0) -> None:
        self.socket_path = str(socket_path or default_socket())
        self.timeout = timeout
        self._conn = _Transport(self.socket_path, timeout)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, method: str, route: str, body: Any = None, **query: Any) -> Any:
        """One REST call; returns the decoded JSON (None for 204)."""
        payload = json.dumps(body).encode() if body is not None else None
        data = self.raw_request(method, route, payload, **query)
        return json.loads(data) if data else None

    def raw_request(self, method: str, route: str, payload: bytes | None = None,
                    content_type: str = "application/json", **query: Any) -> bytes:
        """One REST call with a raw body; returns the raw response body."""
        params = {k: (str(v).lower() if isinstance(v, bool) else v)
                  for k, v in query.items() if v is not None}
        url = "/v1" + route + ("?" + urllib.parse.urlencode(params) if params else "")
        for attempt in (1, 2):  # a kept-alive connection the daemon closed is retried once
            fresh = self._conn.sock is None
            try:
                status, data = self._conn.request(method, url, payload, content_type)
                break
            except (FileNotFoundError, ConnectionRefusedError) as err:
                self.close()
                raise errors.DaemonUnavailable(
                    f"the Corral daemon is not running at {self.socket_path}; start it with "
                    "'corral serve' (or set CORRAL_SOCKET)") from err
            except (BrokenPipeError, ConnectionResetError) as err:
                self.close()
                if fresh or attempt == 2:
                    raise errors.DaemonUnavailable(
                        f"the Corral daemon at {self.socket_path} closed the connection") from err
            except TimeoutError as err:
                self.close()
                raise errors.Timeout(f"the daemon did not answer {method} {route} in "
                                     f"{self.timeout:g} s") from err
        if status >= 400:
            try:
                decoded = json.loads(data) if data else {}
            except ValueError:
                decoded = {"message": data.decode(errors="replace")[:200]}
            raise _error(status, decoded if isinstance(decoded, dict) else {})
        return data

    # --- VMs: the lifecycle ---
    def create(self, name: str, *, start: bool = False, wait: bool = False,
               timeout: float | None = None, queue: bool = True,
               **spec: Any) -> views.VM:
        """Define a VM (``start=True`` also boots it; ``wait=True`` until it is ready).

        :raises InvalidSpec: a bad spec. :raises AlreadyExists: the name is taken.
        """
        _seg(name)
        out: views.VM = self.request("POST", "/vms", {"name": name, **spec},
                                     start=start or None, wait=wait or None,
                                     timeout=_seconds(timeout), queue=None if queue else False)
        return out

    def start(self, name: str, wait: bool = False, timeout: float | None = None,
              queue: bool = True) -> views.VM:
        """Boot a VM, or queue it when the host is full (``queue=False``: fail instead).

        :raises InvalidState: it is not defined, stopped, saved or crashed.
        :raises NoCapacity: the host is full and ``queue`` is False.
        """
        out: views.VM = self.request("POST", f"/vms/{_seg(name)}/start", wait=wait or None,
                                     timeout=_seconds(timeout), queue=None if queue else False)
        return out

    def wait_ready(self, name: str, timeout: float | None = None) -> views.VM:
        out: views.VM = self.request("POST", f"/vms/{_seg(name)}/wait",
                                     timeout=_seconds(timeout))
        return out

    def pause(self, name: str) -> views.VM:
        """:raises InvalidState: it is not running."""
        out: views.VM = self.request("POST", f"/vms/{_seg(name)}/pause")
        return out

    def resume(self, name: str) -> views.VM:
        """:raises InvalidState: it is not paused."""
        out: views.VM = self.request("POST", f"/vms/{_seg(name)}/resume")
        return out

    def shutdown(self, name: str, timeout: float | None = None) -> views.VM:
        out: views.VM = self.request("POST", f"/vms/{_seg(name)}/shutdown",
                                     timeout=_seconds(timeout))
        return out

    def stop(self, name: str, force: bool = True, timeout: float | None = None) -> views.VM:
        out: views.VM = self.request("POST", f"/vms/{_seg(name)}/stop", force=force,
                                     timeout=_seconds(timeout))
        return out

    def reboot(self, name: str, wait: bool = False, timeout: float | None = None) -> views.VM:
        out: views.VM = self.request("POST", f"/vms/{_seg(name)}/reboot", wait=wait or None,
                                     timeout=_seconds(timeout))
        return out

    def save(self, name: str, file: str | None = None) -> views.VM:
        """Write the VM's whole state to a file and stop it (``saved``); a relative ``file``
        is relative to the caller's directory."""
        import os

        out: views.VM = self.request("POST", f"/vms/{_seg(name)}/save",
                                     file=os.path.abspath(file) if file else None)
        return out

    def restore(self, name: str, wait: bool = False, timeout: float | None = None
                ) -> views.VM:
        """Bring a saved VM back where it was."""
        out: views.VM = self.request("POST", f"/vms/{_seg(name)}/restore", wait=wait or None,
                                     timeout=_seconds(timeout))
        return out

    def rm(self, name: str) -> None:
        """Stop the VM if it runs and remove everything it owns.

        :raises NotFound: no VM of that name.
        """
        self.request("DELETE", f"/vms/{_seg(name)}")

    destroy = rm

    def get(self, name: str) -> views.VM:
        """:raises NotFound: no VM of that name."""
        out: views.VM = self.request("GET", f"/vms/{_seg(name)}")
        return out

    def list(self) -> builtins.list[views.VM]:
        out: builtins.list[views.VM] = self.request("GET", "/vms")
        return out

    def logs(self, name: str, offset: int = 0, limit: int | None = None) -> views.Logs:
        """The serial log from byte ``offset`` (negative: from the end)."""
        out: views.Logs = self.request("GET", f"/vms/{_seg(name)}/logs",
                                       offset=_int(offset, "offset", -(1 << 50), 1 << 50),
                                       limit=_int(limit, "limit", 1, 16 << 20))
        return out

    def events(self, since: int = 0, vm: str | None = None) -> builtins.list[views.Event]:
        out: builtins.list[views.Event] = self.request(
            "GET", "/events", since=_int(since, "since", 0, (1 << 63) - 1),
            vm=None if vm is None else (_seg(vm, "vm") and vm))
        return out

    def clone(self, src: str, new: str, full: bool = False,
              snapshot: str | None = None) -> views.VM:
        _seg(new, "new")
        if snapshot is not None:
            _seg(snapshot, "snapshot")
        out: views.VM = self.request("POST", f"/vms/{_seg(src)}/clone", new=new,
                                     full=full or None, snapshot=snapshot)
        return out

    # --- portability ---
    def export(self, name: str, file: str, live: bool = False) -> views.Export:
        """Write the VM (spec, disks, snapshots, saved state) into one file; ``live``
        exports a running VM too."""
        import os

        out: views.Export = self.request("POST", f"/vms/{_seg(name)}/export",
                                         file=os.path.abspath(file), live=live or None)
        return out

    def import_vm(self, file: str, name: str | None = None) -> views.VM:
        import os

        if name is not None:
            _seg(name)
        out: views.VM = self.request("POST", "/import", file=os.path.abspath(file), name=name)
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
        """Run ``argv`` in a fresh VM that is destroyed afterwards; stdout/stderr as bytes."""
        import base64

        out: views.BatchResult = self.request("POST", "/batch", {
            "spec": spec, "argv": list(argv), "timeout": _seconds(timeout), "queue": queue})
        out["stdout"] = base64.b64decode(out["stdout"])
        out["stderr"] = base64.b64decode(out["stderr"])
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
        self.request("DELETE", f"/images/{_seg(name)}")

    # --- named disks ---
    def disk_create(self, name: str, size: str | None = None, format: str = "qcow2",
                    source: str | None = None) -> views.Disk:
        _seg(name)
        body: dict[str, Any] = {"name": name, "size": size, "format": format}
        if source:
            body["from"] = source
        out: views.Disk = self.request("POST", "/disks", body)
        return out

    def disk_list(self) -> builtins.list[views.Disk]:
        out: builtins.list[views.Disk] = self.request("GET", "/disks")
        return out

    def disk_show(self, name: str) -> views.Disk:
        out: views.Disk = self.request("GET", f"/disks/{_seg(name)}")
        return out

    def disk_resize(self, name: str, size: str) -> views.Disk:
        out: views.Disk = self.request("POST", f"/disks/{_seg(name)}/resize", size=size)
        return out

    def disk_rm(self, name: str) -> None:
        """:raises InvalidState: the disk is attached to a VM."""
        self.request("DELETE", f"/disks/{_seg(name)}")

    disk_delete = disk_rm

    def attach_disk(self, vm: str, disk: str, readonly: bool = False,
                    iops: int | None = None, bps: int | None = None) -> views.VM:
        _seg(disk, "disk")
        out: views.VM = self.request("POST", f"/vms/{_seg(vm)}/disks", {
            "disk": disk, "readonly": readonly, "iops": _int(iops, "iops", 0, 1 << 40),
            "bps": _int(bps, "bps", 0, 1 << 50)})
        return out

    def detach_disk(self, vm: str, disk: str) -> views.VM:
        out: views.VM = self.request("DELETE", f"/vms/{_seg(vm)}/disks/{_seg(disk, 'disk')}")
        return out

    # --- snapshots ---
    def snapshot_create(self, name: str, snapshot: str, memory: bool = False
                        ) -> views.Snapshot:
        _seg(snapshot, "snapshot")
        out: views.Snapshot = self.request("POST", f"/vms/{_seg(name)}/snapshots",
                                           {"name": snapshot, "memory": memory})
        return out

    def snapshot_list(self, name: str) -> builtins.list[views.Snapshot]:
        out: builtins.list[views.Snapshot] = self.request("GET", f"/vms/{_seg(name)}/snapshots")
        return out

    def snapshot_revert(self, name: str, snapshot: str) -> views.VM:
        out: views.VM = self.request(
            "POST", f"/vms/{_seg(name)}/snapshots/{_seg(snapshot, 'snapshot')}/revert")
        return out

    def snapshot_rm(self, name: str, snapshot: str) -> None:
        self.request("DELETE", f"/vms/{_seg(name)}/snapshots/{_seg(snapshot, 'snapshot')}")

    snapshot_delete = snapshot_rm

    # --- inside the guest (through its agent) ---
    def exec(self, name: str, argv: Sequence[str], timeout: float = 60.0,
             stdin: bytes | None = None) -> views.ExecResult:
        """Run ``argv`` in the guest; ``stdout``/``stderr`` come back as bytes."""
        import base64

        body: dict[str, Any] = {"argv": list(argv), "timeout": _seconds(timeout)}
        if stdin is not None:
            body["stdin"] = base64.b64encode(stdin).decode()
        out: views.ExecResult = self.request("POST", f"/vms/{_seg(name)}/exec", body)
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

        body: dict[str, Any] = {"argv": list(argv), "timeout": _seconds(timeout)}
        if stdin is not None:
            body["stdin"] = base64.b64encode(stdin).decode()
        url = f"/v1/vms/{_seg(name)}/exec?stream=true"
        try:
            for status, line in self._conn.stream_lines("POST", url, json.dumps(body).encode()):
                event = json.loads(line) if line.strip() else {}
                if status >= 400 or "error" in event:
                    raise _error(status if status >= 400 else 500, event)
                for key in ("stdout", "stderr"):
                    if key in event:
                        event[key] = base64.b64decode(event[key])
                if event:
                    yield event
        except (FileNotFoundError, ConnectionRefusedError) as err:
            raise errors.DaemonUnavailable(
                f"the Corral daemon is not running at {self.socket_path}; start it with "
                "'corral serve' (or set CORRAL_SOCKET)") from err

    def read_file(self, name: str, path: str) -> bytes:
        return self.raw_request("GET", f"/vms/{_seg(name)}/files", path=path)

    def write_file(self, name: str, path: str, data: bytes) -> views.FileWritten:
        out: views.FileWritten = json.loads(self.raw_request(
            "PUT", f"/vms/{_seg(name)}/files", data, "application/octet-stream", path=path))
        return out

    def addresses(self, name: str) -> builtins.list[views.Interface]:
        out: builtins.list[views.Interface] = self.request("GET", f"/vms/{_seg(name)}/addresses")
        return out

    # --- virtual networks, routers, firewall rules and NICs ---
    def network_create(self, name: str, subnet: str, dhcp: bool = True,
                       isolated: bool = False) -> views.Network:
        """A virtual switch on ``subnet`` with DHCP and DNS (``NAME.corral``) unless
        ``dhcp=False``; ``isolated``: no router may join it."""
        _seg(name)
        out: views.Network = self.request("POST", "/networks", {
            "name": name, "subnet": subnet, "dhcp": dhcp, "isolated": isolated})
        return out

    def network_list(self) -> builtins.list[views.Network]:
        out: builtins.list[views.Network] = self.request("GET", "/networks")
        return out

    def network_show(self, name: str) -> views.Network:
        """One network, with each port's DHCP lease and rx/tx counters."""
        out: views.Network = self.request("GET", f"/networks/{_seg(name)}")
        return out

    def network_rm(self, name: str, force: bool = False) -> builtins.list[str]:
        """Remove a network; ``force`` first detaches what uses it. Returns what ``force``
        removed.

        :raises InUse: NICs or a router use it (and ``force`` is False).
        """
        out = self.request("DELETE", f"/networks/{_seg(name)}", force=force or None)
        return list(out["removed"]) if out else []

    def network_delete(self, name: str) -> None:
        self.network_rm(name)

    def network_policy(self, name: str, policy: str) -> views.Network:
        """What happens to traffic to the network's VMs that no rule allows."""
        out: views.Network = self.request("PUT", f"/networks/{_seg(name)}/policy",
                                          {"policy": policy})
        return out

    def topology(self, format: str = "text") -> str:
        """Switches, routers and VMs as a text tree, or as a Graphviz graph (``dot``)."""
        return self.raw_request("GET", "/topology", format=format).decode()

    def router_create(self, name: str, uplink: bool = False) -> views.Router:
        _seg(name)
        out: views.Router = self.request("POST", "/routers", {"name": name, "uplink": uplink})
        return out

    def router_list(self) -> builtins.list[views.Router]:
        out: builtins.list[views.Router] = self.request("GET", "/routers")
        return out

    def router_show(self, name: str) -> views.Router:
        out: views.Router = self.request("GET", f"/routers/{_seg(name)}")
        return out

    def router_rm(self, name: str, force: bool = False) -> builtins.list[str]:
        """Remove a router; ``force`` first detaches its legs and forwards. Returns what
        ``force`` removed.

        :raises InUse: it still has legs (and ``force`` is False).
        """
        out = self.request("DELETE", f"/routers/{_seg(name)}", force=force or None)
        return list(out["removed"]) if out else []

    def router_delete(self, name: str) -> None:
        self.router_rm(name)

    def router_attach(self, name: str, network: str) -> views.Router:
        _seg(network, "network")
        out: views.Router = self.request("POST", f"/routers/{_seg(name)}/networks",
                                         {"network": network})
        return out

    def router_detach(self, name: str, network: str) -> views.Router:
        out: views.Router = self.request(
            "DELETE", f"/routers/{_seg(name)}/networks/{_seg(network, 'network')}")
        return out

    def forward_add(self, router: str, proto: str, host_port: int, vm: str, port: int
                    ) -> views.Forward:
        """Publish ``vm``:``port`` on host port ``host_port`` through ``router``'s uplink."""
        _seg(vm, "vm")
        out: views.Forward = self.request("POST", f"/routers/{_seg(router)}/forwards", {
            "proto": proto, "host_port": _int(host_port, "host_port", 1, 65535), "vm": vm,
            "port": _int(port, "port", 1, 65535)})
        return out

    def forward_list(self) -> builtins.list[views.Forward]:
        out: builtins.list[views.Forward] = self.request("GET", "/forwards")
        return out

    def forward_rm(self, router: str, proto: str, host_port: int) -> None:
        port = _int(host_port, "host_port", 1, 65535)
        self.request("DELETE", f"/routers/{_seg(router)}/forwards/{_seg(proto, 'proto')}/"
                               f"{port}")

    forward_delete = forward_rm

    def firewall_add(self, target: str, allow: str, source: str = "0.0.0.0/0"
                     ) -> views.FirewallRule:
        """Allow ``allow`` (``tcp/22``) from ``source`` to a network's VMs or to one VM."""
        out: views.FirewallRule = self.request("POST", "/firewall/rules", {
            "target": target, "allow": allow, "from": source})
        return out

    def firewall_list(self) -> views.Firewall:
        out: views.Firewall = self.request("GET", "/firewall")
        return out

    def firewall_rm(self, rule_id: int) -> None:
        self.request("DELETE", f"/firewall/rules/{_int(rule_id, 'id', 1, (1 << 63) - 1)}")

    firewall_delete = firewall_rm

    def attach_nic(self, vm: str, network: str, mac: str | None = None,
                   ip: str | None = None) -> views.VM:
        """A NIC on ``network``; a running q35 VM gets it at once (hot-plug)."""
        _seg(network, "network")
        out: views.VM = self.request("POST", f"/vms/{_seg(vm)}/nics", {
            "network": network, "mac": mac, "ip": ip})
        return out

    def detach_nic(self, vm: str, nic: str) -> views.VM:
        out: views.VM = self.request("DELETE", f"/vms/{_seg(vm)}/nics/{_seg(nic, 'nic')}")
        return out

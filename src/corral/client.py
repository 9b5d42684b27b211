"""``corral.Client``: the Python API, a thin client of the daemon's REST API.

Standard library only (``http.client`` over the unix socket, one kept-alive connection), so
importing it costs milliseconds; the CLI is built on it::

    from corral import Client
    c = Client()                      # $CORRAL_SOCKET or $CORRAL_HOME/corral.sock
    c.create("web", memory="256M")
    c.start("web", wait=True)
    c.pause("web"); c.resume("web")
    c.destroy("web")

Errors come back as the same tree the daemon raised (:mod:`corral.errors`).
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
    from collections.abc import Iterator, Sequence
    from typing import Any

_KINDS: dict[str, type[errors.CorralError]] = {
    "not_found": errors.NotFound, "already_exists": errors.AlreadyExists,
    "timeout": errors.Timeout, "agent_error": errors.AgentError,
    "daemon_unavailable": errors.DaemonUnavailable, "no_capacity": errors.NoCapacity,
    "needs_root": errors.NeedsRoot,
}


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


def _error(status: int, body: dict[str, Any]) -> errors.CorralError:
    kind = str(body.get("error", "error"))
    message = str(body.get("message", f"daemon answered {status}"))
    if kind == "invalid_spec":
        field = str(body.get("field", "body"))
        return errors.InvalidSpec(field, message.removeprefix(f"{field}: "))
    if kind == "invalid_state":
        err = errors.InvalidState("?", "?", "?", [])
        err.args = (message,)
        err.message = message
        err.vm, err.state = str(body.get("vm", "")), str(body.get("state", ""))
        return err
    cls = _KINDS.get(kind, errors.CorralError)
    err2 = cls(message)
    err2.status = status
    return err2


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

    # --- the VM lifecycle ---
    def create(self, name: str, *, start: bool = False, wait: bool = False,
               timeout: float | None = None, queue: bool = True,
               **spec: Any) -> dict[str, Any]:
        """Define a VM (``start=True`` also boots it; ``wait=True`` until it is ready)."""
        out: dict[str, Any] = self.request("POST", "/vms", {"name": name, **spec},
                                           start=start or None, wait=wait or None,
                                           timeout=timeout, queue=None if queue else False)
        return out

    def start(self, name: str, wait: bool = False, timeout: float | None = None,
              queue: bool = True) -> Any:
        """Boot a VM, or queue it when the host is full (``queue=False``: fail instead)."""
        return self.request("POST", f"/vms/{name}/start", wait=wait or None, timeout=timeout,
                            queue=None if queue else False)

    def queue(self) -> Any:
        return self.request("GET", "/queue")

    def batch(self, argv: Sequence[str], timeout: float = 600.0, queue: bool = True,
              **spec: Any) -> dict[str, Any]:
        """Run ``argv`` in a fresh VM that is destroyed afterwards; stdout/stderr as bytes."""
        import base64

        out: dict[str, Any] = self.request("POST", "/batch", {
            "spec": spec, "argv": list(argv), "timeout": timeout, "queue": queue})
        out["stdout"] = base64.b64decode(out["stdout"])
        out["stderr"] = base64.b64decode(out["stderr"])
        return out

    def trace(self) -> Any:
        return self.request("GET", "/trace")

    def wait_ready(self, name: str, timeout: float | None = None) -> Any:
        return self.request("POST", f"/vms/{name}/wait", timeout=timeout)

    def pause(self, name: str) -> Any:
        return self.request("POST", f"/vms/{name}/pause")

    def resume(self, name: str) -> Any:
        return self.request("POST", f"/vms/{name}/resume")

    def shutdown(self, name: str, timeout: float | None = None) -> Any:
        return self.request("POST", f"/vms/{name}/shutdown", timeout=timeout)

    def stop(self, name: str, force: bool = True, timeout: float | None = None) -> Any:
        return self.request("POST", f"/vms/{name}/stop", force=force, timeout=timeout)

    def reboot(self, name: str, wait: bool = False, timeout: float | None = None) -> Any:
        return self.request("POST", f"/vms/{name}/reboot", wait=wait or None, timeout=timeout)

    def save(self, name: str, file: str | None = None) -> Any:
        """Write the VM's whole state to a file and stop it (``saved``)."""
        return self.request("POST", f"/vms/{name}/save", file=file)

    def restore(self, name: str, wait: bool = False, timeout: float | None = None) -> Any:
        """Bring a saved VM back where it was."""
        return self.request("POST", f"/vms/{name}/restore", wait=wait or None, timeout=timeout)

    def clone(self, src: str, new: str, full: bool = False,
              snapshot: str | None = None) -> Any:
        return self.request("POST", f"/vms/{src}/clone", new=new, full=full or None,
                            snapshot=snapshot)

    # --- portability ---
    def export(self, name: str, file: str) -> Any:
        """Write the VM (spec, disks, snapshots, saved state) into one file."""
        import os

        return self.request("POST", f"/vms/{name}/export", file=os.path.abspath(file))

    def import_vm(self, file: str, name: str | None = None) -> Any:
        import os

        return self.request("POST", "/import", file=os.path.abspath(file), name=name)

    # --- named disks ---
    def disk_create(self, name: str, size: str | None = None, format: str = "qcow2",
                    source: str | None = None) -> Any:
        body: dict[str, Any] = {"name": name, "size": size, "format": format}
        if source:
            body["from"] = source
        return self.request("POST", "/disks", body)

    def disk_list(self) -> Any:
        return self.request("GET", "/disks")

    def disk_resize(self, name: str, size: str) -> Any:
        return self.request("POST", f"/disks/{name}/resize", size=size)

    def disk_delete(self, name: str) -> None:
        self.request("DELETE", f"/disks/{name}")

    def attach_disk(self, vm: str, disk: str, readonly: bool = False,
                    iops: int | None = None, bps: int | None = None) -> Any:
        return self.request("POST", f"/vms/{vm}/disks", {"disk": disk, "readonly": readonly,
                                                         "iops": iops, "bps": bps})

    def detach_disk(self, vm: str, disk: str) -> Any:
        return self.request("DELETE", f"/vms/{vm}/disks/{disk}")

    # --- snapshots ---
    def snapshot_create(self, name: str, snapshot: str, memory: bool = False) -> Any:
        return self.request("POST", f"/vms/{name}/snapshots",
                            {"name": snapshot, "memory": memory})

    def snapshot_list(self, name: str) -> Any:
        return self.request("GET", f"/vms/{name}/snapshots")

    def snapshot_revert(self, name: str, snapshot: str) -> Any:
        return self.request("POST", f"/vms/{name}/snapshots/{snapshot}/revert")

    def snapshot_delete(self, name: str, snapshot: str) -> None:
        self.request("DELETE", f"/vms/{name}/snapshots/{snapshot}")

    def destroy(self, name: str) -> None:
        self.request("DELETE", f"/vms/{name}")

    def get(self, name: str) -> Any:
        return self.request("GET", f"/vms/{name}")

    def list(self) -> Any:
        return self.request("GET", "/vms")

    def logs(self, name: str, offset: int = 0) -> Any:
        return self.request("GET", f"/vms/{name}/logs", offset=offset)

    # --- inside the guest (through its agent) ---
    def exec(self, name: str, argv: Sequence[str], timeout: float = 60.0,
             stdin: bytes | None = None) -> dict[str, Any]:
        """Run ``argv`` in the guest; ``stdout``/``stderr`` come back as bytes."""
        import base64

        body: dict[str, Any] = {"argv": list(argv), "timeout": timeout}
        if stdin is not None:
            body["stdin"] = base64.b64encode(stdin).decode()
        out: dict[str, Any] = self.request("POST", f"/vms/{name}/exec", body)
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

        body: dict[str, Any] = {"argv": list(argv), "timeout": timeout}
        if stdin is not None:
            body["stdin"] = base64.b64encode(stdin).decode()
        params = urllib.parse.urlencode({"stream": "true"})
        url = f"/v1/vms/{name}/exec?{params}"
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
        return self.raw_request("GET", f"/vms/{name}/files", path=path)

    def write_file(self, name: str, path: str, data: bytes) -> Any:
        return json.loads(self.raw_request("PUT", f"/vms/{name}/files", data,
                                           "application/octet-stream", path=path))

    def addresses(self, name: str) -> Any:
        return self.request("GET", f"/vms/{name}/addresses")

    # --- virtual networks, routers, firewall rules and NICs ---
    def network_create(self, name: str, subnet: str, dhcp: bool = True,
                       isolated: bool = False) -> Any:
        """A virtual switch on ``subnet`` with DHCP and DNS (``NAME.corral``) unless
        ``dhcp=False``; ``isolated``: no router may join it."""
        return self.request("POST", "/networks", {"name": name, "subnet": subnet,
                                                  "dhcp": dhcp, "isolated": isolated})

    def network_list(self) -> Any:
        return self.request("GET", "/networks")

    def network_show(self, name: str) -> Any:
        """One network, with each port's DHCP lease and rx/tx counters."""
        return self.request("GET", f"/networks/{name}")

    def network_delete(self, name: str) -> None:
        self.request("DELETE", f"/networks/{name}")

    def network_policy(self, name: str, policy: str) -> Any:
        """What happens to traffic to the network's VMs that no rule allows."""
        return self.request("PUT", f"/networks/{name}/policy", {"policy": policy})

    def topology(self, format: str = "text") -> str:
        """Switches, routers and VMs as a text tree, or as a Graphviz graph (``dot``)."""
        return self.raw_request("GET", "/topology", format=format).decode()

    def router_create(self, name: str, uplink: bool = False) -> Any:
        return self.request("POST", "/routers", {"name": name, "uplink": uplink})

    def router_list(self) -> Any:
        return self.request("GET", "/routers")

    def router_show(self, name: str) -> Any:
        return self.request("GET", f"/routers/{name}")

    def router_delete(self, name: str) -> None:
        self.request("DELETE", f"/routers/{name}")

    def router_attach(self, name: str, network: str) -> Any:
        return self.request("POST", f"/routers/{name}/networks", {"network": network})

    def router_detach(self, name: str, network: str) -> Any:
        return self.request("DELETE", f"/routers/{name}/networks/{network}")

    def forward_add(self, router: str, proto: str, host_port: int, vm: str, port: int) -> Any:
        """Publish ``vm``:``port`` on host port ``host_port`` through ``router``'s uplink."""
        return self.request("POST", f"/routers/{router}/forwards",
                            {"proto": proto, "host_port": host_port, "vm": vm, "port": port})

    def forward_list(self) -> Any:
        return self.request("GET", "/forwards")

    def forward_delete(self, router: str, proto: str, host_port: int) -> None:
        self.request("DELETE", f"/routers/{router}/forwards/{proto}/{host_port}")

    def firewall_add(self, target: str, allow: str, source: str = "0.0.0.0/0") -> Any:
        """Allow ``allow`` (``tcp/22``) from ``source`` to a network's VMs or to one VM."""
        return self.request("POST", "/firewall/rules",
                            {"target": target, "allow": allow, "from": source})

    def firewall_list(self) -> Any:
        return self.request("GET", "/firewall")

    def firewall_delete(self, rule_id: int) -> None:
        self.request("DELETE", f"/firewall/rules/{rule_id}")

    def attach_nic(self, vm: str, network: str, mac: str | None = None,
                   ip: str | None = None) -> Any:
        """A NIC on ``network``; a running q35 VM gets it at once (hot-plug)."""
        return self.request("POST", f"/vms/{vm}/nics", {"network": network, "mac": mac,
                                                        "ip": ip})

    def detach_nic(self, vm: str, nic: str) -> Any:
        return self.request("DELETE", f"/vms/{vm}/nics/{nic}")

    def host_info(self) -> Any:
        return self.request("GET", "/host")

    def events(self, since: int = 0, vm: str | None = None) -> Any:
        return self.request("GET", "/events", since=since, vm=vm)

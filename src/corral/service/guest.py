"""Acting inside a guest through its agent: run processes, move files, learn addresses.

Every call needs a running VM whose agent answers; a paused or stopped VM is refused with
:class:`~corral.errors.InvalidState`, an agent that stays silent with
:class:`~corral.errors.Timeout` (the VM is left alone). Files move in 1 MiB chunks and are
checked end to end with SHA-256 computed inside the guest.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from corral.domain.states import State
from corral.engine.qemu.guest_agent import GuestAgent
from corral.errors import AgentError, CorralError, InvalidState, Timeout

if TYPE_CHECKING:
    from corral.service.manager import Manager

CHUNK = 1 << 20


async def _agent(manager: Manager, name: str, within: float = 60.0) -> GuestAgent:
    """The agent of a running VM; a time-sliced VM that is between slices is waited for."""
    deadline = time.monotonic() + within
    while name in manager.sched.sliced_out and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    rec = manager._get(name)
    rt = manager._rt.get(name)
    if rec.state != State.RUNNING or rt is None:
        raise InvalidState(name, "reach the guest agent of", rec.state.value, ["running"])
    if rt.agent is None:
        raise AgentError(f"VM '{name}' has no guest agent")
    return rt.agent


async def exec_command(manager: Manager, name: str, argv: list[str], timeout: float = 60.0,
                       stdin: bytes | None = None, env: list[str] | None = None
                       ) -> dict[str, Any]:
    """Run ``argv`` in the guest and wait for it.

    :returns: ``exitcode`` (or ``signal``), ``stdout`` and ``stderr`` as base64, ``seconds``.
    :raises AgentError: the guest could not start the command (its own words).
    :raises Timeout: the command still runs after ``timeout`` seconds.
    """
    if not argv:
        raise AgentError("no command given")
    agent = await _agent(manager, name)
    args: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
    if stdin is not None:
        args["input-data"] = base64.b64encode(stdin).decode()
    if env:
        args["env"] = env
    t0 = time.monotonic()
    started = await agent.execute("guest-exec", args, timeout=min(timeout, 30))
    pid = int(started["pid"])
    delay = 0.001
    while True:
        status = await agent.execute("guest-exec-status", {"pid": pid}, timeout=30)
        if status.get("exited"):
            break
        if time.monotonic() - t0 > timeout:
            raise Timeout(f"'{argv[0]}' still runs in '{name}' after {timeout:g} s "
                          f"(guest pid {pid})")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    return {
        "exitcode": status.get("exitcode"),
        "signal": status.get("signal"),
        "stdout": status.get("out-data", ""),
        "stderr": status.get("err-data", ""),
        "truncated": bool(status.get("out-truncated") or status.get("err-truncated")),
        "seconds": round(time.monotonic() - t0, 4),
    }


async def _guest_sha256(manager: Manager, name: str, path: str) -> str:
    res = await exec_command(manager, name, ["sha256sum", path], timeout=120)
    out = base64.b64decode(res["stdout"]).decode(errors="replace")
    if res["exitcode"] != 0 or not out:
        raise AgentError(f"cannot checksum {path} in '{name}'")
    return out.split()[0]


async def read_file(manager: Manager, name: str, path: str) -> bytes:
    """The content of ``path`` in the guest, checked against the guest's own SHA-256.

    :raises AgentError: the path does not exist or cannot be read (the guest's words).
    """
    agent = await _agent(manager, name)
    handle = await agent.execute("guest-file-open", {"path": path, "mode": "rb"})
    parts: list[bytes] = []
    try:
        while True:
            chunk = await agent.execute("guest-file-read", {"handle": handle, "count": CHUNK})
            parts.append(base64.b64decode(chunk.get("buf-b64", "")))
            if chunk.get("eof") or not chunk.get("count"):
                break
    finally:
        await agent.execute("guest-file-close", {"handle": handle})
    data = b"".join(parts)
    if hashlib.sha256(data).hexdigest() != await _guest_sha256(manager, name, path):
        raise CorralError(f"{path} changed or was damaged while it was copied from '{name}'")
    return data


async def write_file(manager: Manager, name: str, path: str, data: bytes) -> dict[str, Any]:
    """Write ``data`` to ``path`` in the guest (replacing it) and verify its SHA-256.

    :raises AgentError: the directory does not exist or is not writable (the guest's words).
    """
    agent = await _agent(manager, name)
    handle = await agent.execute("guest-file-open", {"path": path, "mode": "wb"})
    try:
        for off in range(0, len(data), CHUNK) or [0]:
            await agent.execute("guest-file-write", {
                "handle": handle, "buf-b64": base64.b64encode(data[off:off + CHUNK]).decode()})
        await agent.execute("guest-file-flush", {"handle": handle})
    finally:
        await agent.execute("guest-file-close", {"handle": handle})
    digest = hashlib.sha256(data).hexdigest()
    if digest != await _guest_sha256(manager, name, path):
        raise CorralError(f"{path} in '{name}' does not match what was sent")
    return {"path": path, "size": len(data), "sha256": digest}


async def addresses(manager: Manager, name: str, timeout: float = 10.0
                    ) -> list[dict[str, Any]]:
    """The guest's interfaces as its agent reports them (loopback left out)."""
    agent = await _agent(manager, name)
    ifaces = await agent.execute("guest-network-get-interfaces", timeout=timeout)
    out = []
    for iface in ifaces or []:
        if iface.get("name") == "lo":
            continue
        out.append({
            "name": iface.get("name"),
            "mac": iface.get("hardware-address"),
            "addresses": [f"{a['ip-address']}/{a['prefix']}"
                          for a in iface.get("ip-addresses", [])],
            "ipv4": [a["ip-address"] for a in iface.get("ip-addresses", [])
                     if a.get("ip-address-type") == "ipv4"],
        })
    return out


async def exec_stream(manager: Manager, name: str, argv: list[str], timeout: float = 60.0,
                      stdin: bytes | None = None) -> AsyncIterator[dict[str, Any]]:
    """Run ``argv`` in the guest and yield its output as it comes: ``{"stdout": b64}`` and
    ``{"stderr": b64}`` chunks, then ``{"exitcode", "signal"}``.

    The agent only hands back captured output when a process ends, so the command runs under
    ``sh -c 'exec "$@" >F.out 2>F.err'`` (its argv untouched) and the two files are read as
    they grow; a seek before every read clears the stream's sticky end-of-file. A command
    that does not exist ends with the shell's message and exit code 127.

    :raises Timeout: the command still runs after ``timeout`` seconds.
    """
    if not argv:
        raise AgentError("no command given")
    agent = await _agent(manager, name)
    prefix = f"/tmp/.corral-exec-{uuid.uuid4().hex[:10]}"
    args: dict[str, Any] = {"path": "sh", "arg": ["-c", 'exec "$@" >"$0.out" 2>"$0.err"',
                                                  prefix, *argv]}
    if stdin is not None:
        args["input-data"] = base64.b64encode(stdin).decode()
    t0 = time.monotonic()
    pid = int((await agent.execute("guest-exec", args, timeout=min(timeout, 30)))["pid"])
    handles: dict[str, int] = {}
    delay = 0.005
    try:
        while True:
            status = await agent.execute("guest-exec-status", {"pid": pid}, timeout=30)
            for stream in ("stdout", "stderr"):
                async for chunk in _drain(agent, handles, stream, f"{prefix}.{stream[3:]}"):
                    yield {stream: base64.b64encode(chunk).decode()}
            if status.get("exited"):
                yield {"exitcode": status.get("exitcode"), "signal": status.get("signal"),
                       "seconds": round(time.monotonic() - t0, 4)}
                return
            if time.monotonic() - t0 > timeout:
                raise Timeout(f"'{argv[0]}' still runs in '{name}' after {timeout:g} s "
                              f"(guest pid {pid})")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
    finally:
        for handle in handles.values():
            with contextlib.suppress(CorralError):
                await agent.execute("guest-file-close", {"handle": handle})
        with contextlib.suppress(CorralError):
            await agent.execute("guest-exec", {"path": "rm", "arg": ["-f", f"{prefix}.out",
                                                                    f"{prefix}.err"]})


async def _drain(agent: GuestAgent, handles: dict[str, int], stream: str,
                 path: str) -> AsyncIterator[bytes]:
    """Yield what ``path`` holds beyond what was read before (opening it once it exists)."""
    if stream not in handles:
        try:
            handles[stream] = int(await agent.execute("guest-file-open",
                                                      {"path": path, "mode": "r"}))
        except AgentError:
            return  # the shell has not made it yet
    handle = handles[stream]
    await agent.execute("guest-file-seek", {"handle": handle, "offset": 0, "whence": "cur"})
    while True:
        chunk = await agent.execute("guest-file-read", {"handle": handle, "count": CHUNK})
        data = base64.b64decode(chunk.get("buf-b64", ""))
        if not data:
            return
        yield data

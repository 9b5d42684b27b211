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
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from corral.domain.states import State
from corral.errors import AgentError, CorralError, InvalidSpec, InvalidState, Timeout

if TYPE_CHECKING:
    from corral.engine.driver import Machine
    from corral.service.runtime import VMRuntime

T = TypeVar("T")
CHUNK = 1 << 20
MAX_FILE = 256 << 20      # bytes a file read may bring back through the daemon
MAX_ARGV_BYTES = 128 << 10  # a guest command line (the agent holds it whole, in base64)
MAX_ARGS = 4096


class GuestService:
    """The guest slice: what runs inside a VM, through its agent. ``held`` tells whether the
    time slicer holds a VM paused between slices (it is waited for)."""

    def __init__(self, rt: VMRuntime, held: Callable[[str], bool]) -> None:
        self.rt = rt
        self.held = held

    async def call(self, name: str, call: Awaitable[T]) -> T:
        """Await an agent call; an agent that falls silent makes the VM not ready (until it
        answers again) instead of leaving ``ready`` true."""
        try:
            return await call
        except Timeout:
            self.rt.not_ready(name, "the guest agent stopped answering")
            raise

    async def exec(self, vm: str, argv: list[str], timeout: float = 60.0,
                   stdin: bytes | None = None, env: list[str] | None = None
                   ) -> dict[str, Any]:
        _check_argv(argv)
        return await exec_command(self, vm, argv, timeout, stdin, env)

    def exec_stream(self, vm: str, argv: list[str], timeout: float = 60.0,
                    stdin: bytes | None = None) -> AsyncIterator[dict[str, Any]]:
        _check_argv(argv)
        return exec_stream(self, vm, argv, timeout, stdin)

    async def read_file(self, vm: str, path: str) -> bytes:
        return await read_file(self, vm, path)

    async def write_file(self, vm: str, path: str, data: bytes | Path) -> dict[str, Any]:
        return await write_file(self, vm, path, data)

    async def addresses(self, vm: str) -> list[dict[str, Any]]:
        return await addresses(self, vm)


def _check_argv(argv: list[str]) -> None:
    """:raises InvalidSpec: no command, or one too large for the guest agent to hold."""
    if not argv:
        raise InvalidSpec("argv", "give a command to run")
    if len(argv) > MAX_ARGS or sum(len(a.encode()) + 1 for a in argv) > MAX_ARGV_BYTES:
        raise InvalidSpec("argv", f"the command line is larger than {MAX_ARGV_BYTES >> 10} KiB "
                                  f"or {MAX_ARGS} arguments; pass data through a file "
                                  "('corral cp') instead")


async def _agent(gs: GuestService, name: str, within: float = 60.0) -> Machine:
    """The machine of a running VM with an agent; a time-sliced VM that is between slices
    is waited for."""
    deadline = time.monotonic() + within
    while gs.held(name) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    rec = gs.rt.get(name)
    live = gs.rt.live.get(name)
    if rec.state != State.RUNNING or live is None:
        raise InvalidState(name, "reach the guest agent of", rec.state.value, ["running"])
    if not live.machine.has_agent:
        raise AgentError(f"VM '{name}' has no guest agent")
    return live.machine


async def exec_command(gs: GuestService, name: str, argv: list[str], timeout: float = 60.0,
                       stdin: bytes | None = None, env: list[str] | None = None
                       ) -> dict[str, Any]:
    """Run ``argv`` in the guest and wait for it.

    :returns: ``exitcode`` (or ``signal``), ``stdout`` and ``stderr`` as base64, ``seconds``.
    :raises AgentError: the guest could not start the command (its own words).
    :raises Timeout: the command still runs after ``timeout`` seconds.
    """
    if not argv:
        raise AgentError("no command given")
    machine = await _agent(gs, name)
    t0 = time.monotonic()
    pid = await gs.call(name, machine.guest_exec(argv, stdin, env, timeout=min(timeout, 30)))
    delay = 0.001
    while True:
        status = await gs.call(name, machine.guest_exec_status(pid))
        if status.exited:
            break
        if time.monotonic() - t0 > timeout:
            raise Timeout(f"'{argv[0]}' still runs in '{name}' after {timeout:g} s "
                          f"(guest pid {pid})")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    return {
        "exitcode": status.exitcode,
        "signal": status.signal,
        "stdout": status.stdout,
        "stderr": status.stderr,
        "truncated": status.truncated,
        "seconds": round(time.monotonic() - t0, 4),
    }


async def _guest_sha256(gs: GuestService, name: str, path: str) -> str:
    res = await exec_command(gs, name, ["sha256sum", path], timeout=120)
    out = base64.b64decode(res["stdout"]).decode(errors="replace")
    if res["exitcode"] != 0 or not out:
        raise AgentError(f"cannot checksum {path} in '{name}'")
    return out.split()[0]


async def read_file(gs: GuestService, name: str, path: str, limit: int = MAX_FILE) -> bytes:
    """The content of ``path`` in the guest, checked against the guest's own SHA-256.

    :raises AgentError: the path does not exist or cannot be read (the guest's words).
    :raises InvalidSpec: it holds more than ``limit`` bytes (``/dev/zero`` never ends).
    """
    machine = await _agent(gs, name)
    handle = await gs.call(name, machine.guest_open(path, "rb"))
    parts: list[bytes] = []
    total = 0
    try:
        while True:
            data, eof = await gs.call(name, machine.guest_read(handle, CHUNK))
            total += len(data)
            if total > limit:
                raise InvalidSpec("path", f"{path} in '{name}' is larger than {limit} bytes; "
                                          "copy a regular file, or a smaller one")
            parts.append(data)
            if eof:
                break
    finally:
        with contextlib.suppress(CorralError):
            await machine.guest_close(handle)
    data = b"".join(parts)
    if hashlib.sha256(data).hexdigest() != await _guest_sha256(gs, name, path):
        raise CorralError(f"{path} changed or was damaged while it was copied from '{name}'")
    return data


async def write_file(gs: GuestService, name: str, path: str, data: bytes | Path
                     ) -> dict[str, Any]:
    """Write ``data`` (bytes, or the file of an upload, read as it goes) to ``path`` in the
    guest (replacing it) and verify its SHA-256.

    :raises AgentError: the directory does not exist or is not writable (the guest's words).
    """
    machine = await _agent(gs, name)
    handle = await gs.call(name, machine.guest_open(path, "wb"))
    digest, size = hashlib.sha256(), 0
    try:
        async for chunk in _chunks(data):
            digest.update(chunk)
            size += len(chunk)
            await gs.call(name, machine.guest_write(handle, chunk))
        await machine.guest_flush(handle)
    finally:
        with contextlib.suppress(CorralError):
            await machine.guest_close(handle)
    if digest.hexdigest() != await _guest_sha256(gs, name, path):
        raise CorralError(f"{path} in '{name}' does not match what was sent")
    return {"path": path, "size": size, "sha256": digest.hexdigest()}


async def _chunks(data: bytes | Path) -> AsyncIterator[bytes]:
    """``data`` in pieces the agent takes at once (one empty piece for nothing)."""
    if isinstance(data, bytes):
        for off in range(0, len(data), CHUNK) or [0]:
            yield data[off:off + CHUNK]
        return
    with data.open("rb") as f:
        chunk = await asyncio.to_thread(f.read, CHUNK)
        yield chunk
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk


async def addresses(gs: GuestService, name: str, timeout: float = 10.0
                    ) -> list[dict[str, Any]]:
    """The guest's interfaces as its agent reports them (loopback left out)."""
    machine = await _agent(gs, name)
    return [{"name": i.name, "mac": i.mac,
             "addresses": [f"{a}/{p}" for a, p, _ in i.addresses],
             "ipv4": [a for a, _, kind in i.addresses if kind == "ipv4"]}
            for i in await gs.call(name, machine.guest_interfaces(timeout=timeout))
            if i.name != "lo"]


async def exec_stream(gs: GuestService, name: str, argv: list[str], timeout: float = 60.0,
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
    machine = await _agent(gs, name)
    prefix = f"/tmp/.corral-exec-{uuid.uuid4().hex[:10]}"
    t0 = time.monotonic()
    pid = await gs.call(name, machine.guest_exec(
        ["sh", "-c", 'exec "$@" >"$0.out" 2>"$0.err"', prefix, *argv], stdin, capture=False,
        timeout=min(timeout, 30)))
    handles: dict[str, int] = {}
    delay = 0.005
    try:
        while True:
            status = await gs.call(name, machine.guest_exec_status(pid))
            for stream in ("stdout", "stderr"):
                async for chunk in _drain(machine, handles, stream, f"{prefix}.{stream[3:]}"):
                    yield {stream: base64.b64encode(chunk).decode()}
            if status.exited:
                yield {"exitcode": status.exitcode, "signal": status.signal,
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
                await machine.guest_close(handle)
        with contextlib.suppress(CorralError):
            await machine.guest_exec(["rm", "-f", f"{prefix}.out", f"{prefix}.err"],
                                     capture=False)


async def _drain(machine: Machine, handles: dict[str, int], stream: str,
                 path: str) -> AsyncIterator[bytes]:
    """Yield what ``path`` holds beyond what was read before (opening it once it exists)."""
    if stream not in handles:
        try:
            handles[stream] = await machine.guest_open(path, "r")
        except AgentError:
            return  # the shell has not made it yet
    handle = handles[stream]
    await machine.guest_seek(handle, 0, "cur")
    while True:
        data, _ = await machine.guest_read(handle, CHUNK)
        if not data:
            return
        yield data

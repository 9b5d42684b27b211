"""The guest-agent half of a QEMU machine: every guest-agent command Corral sends, typed.

Files move as raw bytes here and as base64 on the wire; an agent that is absent raises
:class:`~corral.errors.AgentError`.
"""

from __future__ import annotations

import base64
from contextlib import AbstractAsyncContextManager
from typing import Any

from corral.engine.driver import ExecStatus, GuestInterface
from corral.engine.qemu.guest_agent import GuestAgent
from corral.errors import AgentError


class GuestOps:
    """Guest-agent calls of one machine (``agent`` is None for a VM without one)."""

    name: str
    agent: GuestAgent | None

    # -- guest agent -------------------------------------------------------------------------
    def _agent(self) -> GuestAgent:
        if self.agent is None:
            raise AgentError(f"VM '{self.name}' has no guest agent")
        return self.agent

    def guest_hold(self) -> AbstractAsyncContextManager[None]:
        return self._agent().hold()

    async def guest_wait_ready(self, timeout: float) -> None:
        await self._agent().wait_ready(timeout)

    async def guest_reset_channel(self) -> None:
        if self.agent is not None:
            await self.agent.close()

    async def guest_ping(self, timeout: float) -> None:
        await self._agent().execute("guest-ping", timeout=timeout)

    async def guest_shutdown(self, reboot: bool = False) -> None:
        await self._agent().execute("guest-shutdown", {"mode": "reboot" if reboot
                                                       else "powerdown"},
                                    timeout=5, expect_reply=False)

    async def guest_set_time(self, ns: int, timeout: float = 5.0) -> None:
        await self._agent().execute("guest-set-time", {"time": ns}, timeout=timeout)

    async def guest_exec(self, argv: list[str], stdin: bytes | None = None,
                         env: list[str] | None = None, capture: bool = True,
                         timeout: float = 30.0) -> int:
        args: dict[str, Any] = {"path": argv[0], "arg": argv[1:]}
        if capture:
            args["capture-output"] = True
        if stdin is not None:
            args["input-data"] = base64.b64encode(stdin).decode()
        if env:
            args["env"] = env
        return int((await self._agent().execute("guest-exec", args, timeout=timeout))["pid"])

    async def guest_exec_status(self, pid: int) -> ExecStatus:
        s = await self._agent().execute("guest-exec-status", {"pid": pid}, timeout=30)
        return ExecStatus(exited=bool(s.get("exited")), exitcode=s.get("exitcode"),
                          signal=s.get("signal"), stdout=s.get("out-data", ""),
                          stderr=s.get("err-data", ""),
                          truncated=bool(s.get("out-truncated") or s.get("err-truncated")))

    async def guest_open(self, path: str, mode: str) -> int:
        return int(await self._agent().execute("guest-file-open", {"path": path,
                                                                   "mode": mode}))

    async def guest_read(self, handle: int, count: int) -> tuple[bytes, bool]:
        chunk = await self._agent().execute("guest-file-read", {"handle": handle,
                                                                "count": count})
        data = base64.b64decode(chunk.get("buf-b64", ""))
        return data, bool(chunk.get("eof") or not chunk.get("count"))

    async def guest_write(self, handle: int, data: bytes) -> None:
        await self._agent().execute("guest-file-write", {
            "handle": handle, "buf-b64": base64.b64encode(data).decode()})

    async def guest_seek(self, handle: int, offset: int, whence: str) -> None:
        await self._agent().execute("guest-file-seek", {"handle": handle, "offset": offset,
                                                        "whence": whence})

    async def guest_flush(self, handle: int) -> None:
        await self._agent().execute("guest-file-flush", {"handle": handle})

    async def guest_close(self, handle: int) -> None:
        await self._agent().execute("guest-file-close", {"handle": handle})

    async def guest_feed(self, pid: int, handle: int, data: bytes, timeout: float = 5.0
                         ) -> bool:
        status, wrote, closed = await self._agent().exchange([
            ("guest-exec-status", {"pid": pid}),
            ("guest-file-write", {"handle": handle, "buf-b64": base64.b64encode(data).decode()}),
            ("guest-file-close", {"handle": handle})], timeout)
        running = not (status.get("return") or {"exited": True}).get("exited")
        return running and "return" in wrote and "return" in closed

    async def guest_interfaces(self, timeout: float = 10.0) -> list[GuestInterface]:
        ifaces = await self._agent().execute("guest-network-get-interfaces", timeout=timeout)
        return [GuestInterface(
            name=str(i.get("name")), mac=i.get("hardware-address"),
            addresses=[(str(a["ip-address"]), int(a.get("prefix", 0)),
                        str(a.get("ip-address-type", "")))
                       for a in i.get("ip-addresses", [])],
            counters=_counters(i.get("statistics")))
            for i in ifaces or []]


def _counters(stats: dict[str, Any] | None) -> dict[str, int] | None:
    if not stats:
        return None
    return {key.replace("-", "_"): int(stats.get(key, 0)) for key in (
        "rx-bytes", "tx-bytes", "rx-packets", "tx-packets", "rx-dropped", "tx-dropped")}

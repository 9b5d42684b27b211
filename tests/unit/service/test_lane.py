"""The unix socket's protocol answers the local admin's hot requests itself (the lane of
corral.api.fastlane, inside corral.api.onepiece): the same answers as FastAPI's routes, counted
in the metrics and audited alike, in order with the requests around them; anything else goes
the usual way."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from corral.api.app import create_app
from corral.api.fastlane import Lane
from corral.api.onepiece import OnePieceHttp
from corral.service.manager import Manager

from .conftest import vm


class Counted(Lane):
    def __init__(self, m: Manager) -> None:
        super().__init__(m, lambda: True)
        self.served: list[str] = []

    async def serve(self, request: Any, write: Any) -> None:
        self.served.append(f"{request[3]} {request[1]}")
        await super().serve(request, write)

    def serve_now(self, request: Any, write: Any) -> bool:
        done = super().serve_now(request, write)
        if done:  # (a list: answered without a task)
            self.served.append(f"{request[3]} {request[1]}")
        return done


@pytest.fixture
async def served(m: Manager, tmp_path: Path) -> AsyncIterator[tuple[Path, Counted]]:
    lane = Counted(m)
    path = tmp_path / "s.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    config = uvicorn.Config(create_app(m, manage_lifecycle=False), loop="none",
                            http=type("LaneHttp", (OnePieceHttp,), {"lane": lane}),
                            lifespan="off", log_level="warning", ws="none")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield path, lane
    server.should_exit = True
    await serving
    listener.close()


def _answers(data: bytes) -> list[tuple[int, dict[str, str], Any]]:
    """The answers in ``data``, each (status, headers, decoded body)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        size = int(headers["content-length"])
        out.append((int(lines[0].split()[1]), headers, json.loads(rest[:size])))
        data = rest[size:]
    return out


def exchange(path: Path, *writes: bytes, answers: int | None = None) -> list[Any]:
    """Send each write and read its answer, one after the other, on one connection; with
    ``answers``, send every write first, then read that many answers."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.settimeout(10)
        got = b""

        def read(want: int) -> None:
            nonlocal got
            while len(_complete(got)) < want:
                chunk = s.recv(65536)
                assert chunk, "the daemon closed the connection"
                got += chunk

        for i, data in enumerate(writes):
            s.sendall(data)
            if answers is None:
                read(i + 1)
        if answers is not None:
            read(answers)
        return _answers(got)


def split(path: Path, data: bytes) -> Any:
    """Send ``data`` in two writes 0.2 s apart (so in two reads) and read its answer."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.settimeout(10)
        s.sendall(data[:10])
        time.sleep(0.2)
        s.sendall(data[10:])
        got = b""
        while not _complete(got):
            got += s.recv(65536)
        return _answers(got)[0]


def _complete(data: bytes) -> list[Any]:
    try:
        return _answers(data)
    except (ValueError, KeyError):
        return _answers(data[:data.rfind(b"HTTP/1.1 ")]) if data.count(b"HTTP/1.1 ") > 1 \
            else []


def req(method: str, path: str, *headers: str) -> bytes:
    extra = "".join(h + "\r\n" for h in headers)
    length = "Content-Length: 0\r\n" if method == "POST" else ""
    return f"{method} {path} HTTP/1.1\r\nHost: corral\r\n{length}{extra}\r\n".encode()


def strip(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: v for k, v in body.items() if k != "uptime_seconds"}
    return [strip(x) for x in body] if isinstance(body, list) else body


async def test_the_lane_answers_as_the_routes_do_counted_and_audited(
        m: Manager, served: tuple[Path, Counted]) -> None:
    path, lane = served
    await m.vms.create(vm("a"), start=True, wait=True, timeout=5)
    await m.vms.create(vm("b"))

    def run() -> list[Any]:
        return exchange(path, req("GET", "/v1/vms"), req("GET", "/v1/vms?via=fastapi"),
                        req("POST", "/v1/vms/a/pause"), req("POST", "/v1/vms/a/pause"),
                        req("POST", "/v1/vms/a/pause?via=fastapi"),
                        req("POST", "/v1/vms/nope/resume"),
                        req("POST", "/v1/vms/nope/resume?via=fastapi"))

    listed, routed, paused, again, again_routed, missing, missing_routed = \
        await asyncio.to_thread(run)
    assert lane.served == ["GET /v1/vms", "POST /v1/vms/{name}/pause",
                           "POST /v1/vms/{name}/pause", "POST /v1/vms/{name}/resume"]
    assert listed[0] == routed[0] == 200 and strip(listed[2]) == strip(routed[2])
    assert listed[1]["x-total-count"] == routed[1]["x-total-count"] == "2"
    assert paused[0] == 200 and paused[2]["state"] == "paused"
    assert again[0] == again_routed[0] == 409 and again[2] == again_routed[2]
    assert missing[0] == missing_routed[0] == 404 and missing[2] == missing_routed[2]
    assert all(a[1]["content-type"] == "application/json" for a in (listed, paused, missing))
    # audited as Guard audits the routes' acts (both record it after the answer is sent)
    for _ in range(100):
        mine = [(e["detail"]["action"], e["detail"]["status"], e["detail"]["result"], e["vm"])
                for e in m.runtime.db.events(limit=100) if e["kind"] == "audit"]
        if len(mine) == 5:
            break
        await asyncio.sleep(0.05)
    assert mine.count(("POST /v1/vms/{name}/pause", 200, "ok", "a")) == 1
    assert mine.count(("POST /v1/vms/{name}/pause", 409, "invalid_state", "a")) == 2
    assert mine.count(("POST /v1/vms/{name}/resume", 404, "not_found", "nope")) == 2
    counted = [line for line in m.metrics.exposition().decode().splitlines()
               if line.startswith("corral_api_requests_total{") and "/pause" in line]
    assert any('status="409"' in line and line.endswith(" 2.0") for line in counted), counted


async def test_what_the_lane_does_not_take_goes_the_usual_way(
        m: Manager, served: tuple[Path, Counted]) -> None:
    path, lane = served
    await m.vms.create(vm("a"), start=True, wait=True, timeout=5)

    def run() -> list[Any]:
        return [
            # a token: Guard's (here an unknown one: 401)
            *exchange(path, req("POST", "/v1/vms/a/pause", "Authorization: Bearer crl_x")),
            # a project picked; a body; a name FastAPI refuses
            *exchange(path, req("GET", "/v1/vms", "X-Corral-Project: nope")),
            *exchange(path, b"POST /v1/vms/a/pause HTTP/1.1\r\nHost: c\r\n"
                            b"Content-Length: 2\r\n\r\n{}"),
            *exchange(path, req("POST", "/v1/vms/Bad_Name/pause")),
            # two requests in one write, and one in two writes
            *exchange(path, req("POST", "/v1/vms/a/resume") + req("GET", "/v1/vms"),
                      answers=2),
            split(path, req("GET", "/v1/vms")),
        ]

    token, project, body, bad, pipelined, listed, halves = await asyncio.to_thread(run)
    assert lane.served == []
    assert token[0] == 401 and project[0] == 404 and bad[0] == 422
    assert body[0] == 200 and body[2]["state"] == "paused"
    assert pipelined[0] == 200 and pipelined[2]["state"] == "running"
    assert listed[0] == halves[0] == 200 and len(halves[2]) == 1


async def test_a_request_sent_while_the_lane_answers_waits_for_that_answer(
        m: Manager, served: tuple[Path, Counted]) -> None:
    """The second request arrives while the first (a pause whose machine takes 1 s) is
    being answered: its answer comes after, and the connection is kept for a third."""
    path, lane = served
    await m.vms.create(vm("a"), start=True, wait=True, timeout=5)
    machine = m.runtime.live["a"].machine
    slow = machine.pause

    async def pause() -> None:
        await asyncio.sleep(1.0)
        await slow()

    machine.pause = pause  # type: ignore[method-assign]

    def run() -> list[Any]:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.settimeout(10)
            s.sendall(req("POST", "/v1/vms/a/pause"))
            time.sleep(0.1)  # a read of its own, while the pause is under way
            s.sendall(req("GET", "/v1/vms"))
            got = b""
            while len(_complete(got)) < 2:
                got += s.recv(65536)
            s.sendall(req("POST", "/v1/vms/a/resume"))
            while len(_complete(got)) < 3:
                got += s.recv(65536)
            return _answers(got)

    paused, listed, resumed = await asyncio.to_thread(run)
    assert paused[2]["state"] == "paused" and listed[2][0]["state"] == "paused"
    assert resumed[2]["state"] == "running"
    assert lane.served == ["POST /v1/vms/{name}/pause", "GET /v1/vms",
                           "POST /v1/vms/{name}/resume"]

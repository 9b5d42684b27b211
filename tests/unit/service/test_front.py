"""The daemon's first answers (:mod:`corral.api.front`), on the fake engine: while the
service opens and the API loads, the unix socket's plain list of VMs waits until every VM is
taken up and is answered with each as adoption found it, before the API is loaded; every other
request (a query, a token, another route) waits for the API; a service that could not open
answers every request with why."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx

from corral.api.front import Front, Loader
from corral.api.opening import Opening
from corral.service.manager import Manager

from .conftest import vm


def _front(m: Manager, release: threading.Event) -> tuple[Front, Loader]:
    opening = Opening()

    def build() -> list[Any]:  # the API loads only once the test lets it
        from corral.api.app import create_app

        assert release.wait(10)
        return [create_app(m, manage_lifecycle=False, opening=opening)]

    loader = Loader(build)
    return Front(m, opening, loader, 0, lane=True, owner=True), loader


async def test_the_list_answers_once_adopted_before_the_api_is_loaded(m: Manager) -> None:
    await m.vms.create(vm("a"), start=True, wait=True)
    await m.vms.create(vm("b"), start=True, wait=True)
    await m.vms.pause("b")
    await m.close()  # the VMs run on; the next open takes them up
    release = threading.Event()
    front, loader = _front(m, release)
    real_open = m.open

    async def slow_open() -> None:
        await asyncio.sleep(0.2)
        await real_open()

    m.open = slow_open  # type: ignore[method-assign]
    front.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=front),
                                     base_url="http://corral") as c:
            waiting = [asyncio.create_task(c.get(path, headers=head)) for path, head in (
                ("/v1/vms/a", {}), ("/v1/vms?limit=1", {}),
                ("/v1/vms", {"X-Corral-Project": "default"}))]
            r = await c.get("/v1/vms")
            assert m.adopted.is_set() and r.status_code == 200, r.text
            assert [(v["name"], v["state"]) for v in r.json()] == [
                ("a", "running"), ("b", "paused")]
            assert r.headers["x-total-count"] == "2"
            assert front.app is None and not loader.done.is_set()  # before the API
            await asyncio.sleep(0.1)
            assert not any(t.done() for t in waiting)  # these wait for the API
            release.set()
            answers = [await t for t in waiting]
            assert [a.status_code for a in answers] == [200, 200, 200], answers
            assert answers[0].json()["state"] == "running"
            assert [v["name"] for v in answers[1].json()] == ["a"]
            assert front.app is not None
            text = (await c.get("/metrics")).text
            assert 'route="/v1/vms",' in text  # the early answer is counted too
    finally:
        release.set()
        del m.open
        for name in ("a", "b"):
            await m.vms.rm(name)


async def test_a_service_that_could_not_open_answers_why(home: Path, m: Manager) -> None:
    await m.close()
    release = threading.Event()
    front, loader = _front(m, release)

    async def broken() -> None:
        raise RuntimeError("the store is unreadable")

    m.open = broken  # type: ignore[method-assign]
    front.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=front),
                                 base_url="http://corral") as c:
        for path in ("/v1/vms", "/v1/vms/a"):
            r = await c.get(path)
            assert r.status_code == 500, r.text
            assert r.json()["message"] == "the daemon could not open: the store is unreadable"
    assert loader.done.is_set() and loader.apps == []  # nothing was loaded
    del m.open
    await m.open()  # for the fixture's close


async def test_an_api_that_could_not_load_answers_why_and_stops_the_daemon(m: Manager) -> None:
    await m.close()
    opening, failures = Opening(), list[BaseException]()

    def build() -> list[Any]:
        raise RuntimeError("no such module")

    loader = Loader(build, failures.append)
    front = Front(m, opening, loader, 0, lane=True, owner=True)
    front.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=front),
                                 base_url="http://corral") as c:
        for path in ("/v1/vms/a", "/v1/vms"):  # the list too, once the load is over
            r = await c.get(path)
            assert r.status_code == 500, r.text
            assert r.json()["message"] == "the daemon could not load its API: no such module"
    assert [str(f) for f in failures] == ["the daemon could not load its API: no such module"]

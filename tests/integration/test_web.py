"""The web page in a real browser (Playwright driving Debian's chromium, headless) against a
daemon with real guests: create from the form, see it run without reloading, type into its
serial console, pause it, watch a chart get points, destroy it; screenshots of every page go
to build/artefacts/web. Beside it: ``promtool`` accepts ``/metrics`` and its figures agree
with ``corral show`` after a known disk write, and a state change reaches a stream client
within 100 ms."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral.errors import CorralError

from .conftest import CORRAL, ROOT, Daemon, running_daemon

ARTEFACTS = ROOT / "build" / "artefacts" / "web"
CHROMIUM = "/usr/bin/chromium"
TERMINAL_LINES = """() => { const b = window.corralTerm.buffer.active, out = [];
  for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
  return out; }"""


@pytest.fixture(scope="module")
def web(image_path: str) -> Iterator[Daemon]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    with running_daemon(image_path, CORRAL_WEB_LISTEN="127.0.0.1:0",
                        CORRAL_METRICS_INTERVAL="1") as d:
        yield d


def bearer(d: Daemon) -> dict[str, str]:
    """An admin token's header: every request on the TCP listener needs one."""
    if not hasattr(d, "token"):
        d.token = d.client.token_create("web-test", "admin")["secret"]  # type: ignore[attr-defined]
    return {"Authorization": f"Bearer {d.token}"}  # type: ignore[attr-defined]


@pytest.fixture
def page(web: Daemon) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1366, "height": 820})
        pg.on("pageerror", lambda err: errors.append(str(err)))
        # the login link 'corral dashboard' prints
        link = subprocess.run([CORRAL, "--socket", str(web.socket), "dashboard", "--json"],
                              capture_output=True, text=True, check=True)
        pg.goto(json.loads(link.stdout)["url"])
        yield pg
        browser.close()
    assert errors == [], errors


@pytest.fixture
def vm_on(web: Daemon) -> Iterator[Any]:
    """Create and boot VMs on the web daemon; destroy them after the test."""
    made: list[str] = []

    def make(name: str, **spec: Any) -> None:
        made.append(name)
        web.client.create(name, start=True, wait=True, **spec)

    yield make
    for name in made:
        with contextlib.suppress(CorralError):
            web.client.rm(name)


def shot(pg: Any, name: str) -> None:
    pg.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)


def terminal_has(pg: Any, line: str, within: float = 15) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if line in [x.strip() for x in pg.evaluate(TERMINAL_LINES)]:
            return True
        time.sleep(0.1)
    return False


def test_browser_create_run_console_pause_chart_destroy(web: Daemon, page: Any) -> None:
    pg = page
    pg.wait_for_selector("#live:not(.off)")
    pg.evaluate("window.notReloaded = true")
    shot(pg, "1-vms-empty")
    pg.click("#new-vm")
    pg.fill("#create-form input[name=name]", "browser1")
    pg.select_option("#create-form select[name=image]", "tiny")
    pg.fill("#create-form input[name=memory]", "128M")
    pg.fill("#create-form input[name=disk]", "64M")
    shot(pg, "2-create-form")
    pg.click("#create-submit")
    # the row appears and turns running by the event stream alone
    pg.wait_for_selector("tr[data-vm=browser1] [data-state=running]", timeout=60_000)
    shot(pg, "3-vms-running")
    pg.click("tr[data-vm=browser1] a")
    pg.wait_for_selector("h1:text('browser1')")
    web.client.wait_ready("browser1", 120)
    pg.click("#terminal")
    pg.keyboard.type("echo hello-from-$((6*7))-browser")
    pg.keyboard.press("Enter")
    assert terminal_has(pg, "hello-from-42-browser"), pg.evaluate(TERMINAL_LINES)[-10:]
    pg.wait_for_function("Number(document.querySelector('#chart-cpu').dataset.points) >= 2",
                         timeout=30_000)
    shot(pg, "4-vm-console-and-charts")
    # a snapshot with memory, and a warm-started clone of it, from the VM's page
    pg.click("#take-snapshot")
    pg.click("#dialog button.primary")
    pg.click("button:text('Warm start a clone')", timeout=60_000)
    pg.fill("#create-form input[name=name]", "browser2")
    pg.click("#create-submit")
    try:
        pg.wait_for_selector("text=browser2 is running", timeout=60_000)  # the page's toast
        assert web.client.wait_ready("browser2", 60)["state"] == "running"
        shot(pg, "4b-vm-snapshots")
    finally:
        with contextlib.suppress(CorralError):
            web.client.rm("browser2")
    pg.click(".head [data-action=pause]")
    pg.wait_for_selector(".head [data-state=paused]", timeout=10_000)
    assert web.client.get("browser1")["state"] == "paused"
    shot(pg, "5-vm-paused")
    for where in ("host", "network", "events"):
        pg.click(f"#side a[data-nav={where}]")
        pg.wait_for_timeout(700)
        shot(pg, f"6-{where}")
    assert pg.locator("#event-rows tr", has_text="paused").count() >= 1
    # the stream breaks; what happens meanwhile arrives after the reconnection, once each
    pg.evaluate("() => window.corral.stream.restart()")
    web.client.resume("browser1")
    web.client.pause("browser1")
    pg.wait_for_function("window.corral.stream.connected", timeout=10_000)
    last = web.client.events(tail=1)[0]["id"]
    pg.wait_for_function(f"window.corral.eventLog.rows.some((e) => e.id === {last})",
                         timeout=10_000)
    ids = pg.evaluate("() => window.corral.eventLog.rows.map((e) => e.id)")
    ids = ids[:ids.index(last) + 1]
    assert ids == list(range(ids[0], last + 1)), ids
    pg.click("#side a[data-nav=vms]")
    pg.click("tr[data-vm=browser1] a")
    pg.click(".head [data-action=destroy]")
    pg.click("#confirm-destroy")
    pg.wait_for_selector("#gone", timeout=30_000)
    pg.wait_for_selector("#console-closed", timeout=10_000)
    assert "browser1" in pg.inner_text("#console-closed")
    shot(pg, "7-vm-destroyed")
    assert "browser1" not in [v["name"] for v in web.client.list()]
    assert pg.evaluate("window.notReloaded") is True


def test_metrics_pass_promtool_and_agree_with_show(web: Daemon, vm_on: Any) -> None:
    vm_on("metric1", memory="160M", disks=[{"size": "64M"}])
    res = web.client.exec("metric1", ["sh", "-c", "dd if=/dev/urandom of=/dev/vda bs=65536 "
                                                  "count=16 2>/dev/null && sync"])
    assert res["exitcode"] == 0, res
    url = web.client.web_info()["url"]
    deadline = time.monotonic() + 20
    while True:
        show = web.client.get("metric1")
        text = httpx.get(f"{url}metrics", headers=bearer(web)).text
        values = {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for fam in text_string_to_metric_families(text) for s in fam.samples}
        written = values.get(("corral_vm_block_written_bytes_total",
                              (("disk", "disk0"), ("vm", "metric1"))))
        if written == show["disks"][0]["stats"]["wr_bytes"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert written == show["disks"][0]["stats"]["wr_bytes"] >= 16 * 65536
    assert values[("corral_vm_memory_size_bytes", (("vm", "metric1"),))] == \
        show["memory_bytes"] == 160 << 20
    assert values[("corral_vm_state", (("state", "running"), ("vm", "metric1")))] == 1
    assert values[("corral_vm_cpu_seconds_total", (("vm", "metric1"),))] > 0
    assert values[("corral_vm_boot_seconds", (("vm", "metric1"),))] == show["boot_seconds"]
    assert values[("corral_vm_boot_duration_seconds_count", ())] >= 1
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make test installs Debian's prometheus)")
    check = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                           capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_state_changes_reach_the_stream_within_100_ms(web: Daemon, vm_on: Any) -> None:
    vm_on("lag1", memory="128M")
    url = web.client.web_info()["url"] or ""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET /v1/events/stream?vm=lag1 HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     f"Authorization: {bearer(web)['Authorization']}\r\n\r\n".encode())
        time.sleep(0.2)
        lags, buf = [], b""
        for i in range(10):
            (web.client.pause if i % 2 == 0 else web.client.resume)("lag1")
            while not (m := re.search(rb"data: (\{.*?)\n", buf)):
                buf += sock.recv(65536)
            buf = buf[m.end():]
            ev = json.loads(m.group(1))
            lags.append(time.time() - ev["ts"])
            assert ev["kind"] in ("paused", "running"), ev
    assert statistics.median(lags) < 0.1, lags

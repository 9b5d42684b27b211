"""The web front door's costs: ``/metrics`` scrape time by VM count, event latency to the
browser, and the daemon's memory with pages open.

* **Scrape time** with 1, 20 and 100 VMs, two ways, each beside ``GET /v1/vms`` of the same
  VMs (the API's cheapest read, the yardstick):
  - *fake engine*: a Manager in this process on fake machines (:mod:`corral.engine.fake`),
    every VM running with a disk and its figures gathered, scraped through the ASGI app
    (routing, middleware, exposition; no sockets). 100 real guests do not fit this host.
  - *real daemon*: ``corral serve`` over its loopback TCP listener, with one real running
    tiny guest and the rest defined, not running (figures only for the running one).
* **Event latency** of a state change to the browser: headless chromium on the VM's page; a
  pause or resume through ``corral.Client`` (QMP ``stop``/``cont``, QEMU's STOP/RESUME event,
  the store's commit, the stream) until the page's stream reader has the event. Beside it the
  same to a raw SSE socket, and from the event's commit time alone.
* **Daemon RSS** with no page and with 10 pages of the VM open (each: the event stream, the
  console WebSocket, the charts polling every second).

Usage: ``python bench/web.py [--quick]`` (as root, with the tiny image on CORRAL_IMAGE_PATH).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import Summary, fmt_summary, memory_of, ratio, render_table, run_benchmark

ROOT = Path(__file__).resolve().parents[1]
CORRAL = str(Path(sys.executable).parent / "corral")
COUNTS = (1, 20, 100)


def log(msg: str) -> None:
    print(f"[web] {msg}", file=sys.stderr, flush=True)


def ms(samples: list[float]) -> Summary | None:
    return Summary.of([s * 1000 for s in samples])


# ----- scrapes on the fake engine ---------------------------------------------------------------

async def fake_scrapes(n: int, reps: int) -> dict[str, Any]:
    import httpx

    from corral.api.app import create_app
    from corral.config import Paths
    from corral.engine.fake import FakeDriver
    from corral.service.manager import Manager

    tmp = Path(tempfile.mkdtemp(prefix="crl-bw-"))
    images = tmp / "images" / "tiny"
    images.mkdir(parents=True)
    (images / "vmlinux").write_bytes(b"\x7fELF")
    (images / "image.json").write_text(json.dumps(
        {"name": "tiny", "kernel": "vmlinux", "cmdline": "console=ttyS0", "agent": True}))
    os.environ.update(CORRAL_IMAGE_PATH=str(tmp / "images"), CORRAL_HOST_CPUS="512",
                      CORRAL_HOST_MEMORY="1T")
    manager = Manager(Paths(tmp / "home"), driver=FakeDriver())
    await manager.open()
    try:
        for i in range(n):
            await manager.vms.create({"name": f"f{i}", "image": "tiny", "memory": "64M",
                                      "disks": [{"size": "16M"}]}, start=True)
        await manager.telemetry.gather()
        t0 = time.perf_counter()
        await manager.telemetry.gather()
        gather = time.perf_counter() - t0
        app = create_app(manager, manage_lifecycle=False)
        scrape, listing, size = [], [], 0
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://corral") as c:
            for _ in range(reps):
                t0 = time.perf_counter()
                r = await c.get("/metrics")
                scrape.append(time.perf_counter() - t0)
                size = len(r.content)
                t0 = time.perf_counter()
                await c.get("/v1/vms")
                listing.append(time.perf_counter() - t0)
        return {"scrape": ms(scrape), "list": ms(listing), "gather_ms": gather * 1000,
                "bytes": size}
    finally:
        await manager.close()
        FakeDriver.forget_all()
        shutil.rmtree(tmp, ignore_errors=True)


# ----- the real daemon --------------------------------------------------------------------------

class Daemon:
    def __init__(self, image_path: str) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="crl-bw-", dir="/tmp"))
        self.env = {**os.environ, "CORRAL_HOME": str(self.home), "CORRAL_IMAGE_PATH": image_path,
                    "CORRAL_WEB_LISTEN": "127.0.0.1:0", "CORRAL_METRICS_INTERVAL": "1"}
        for key in ("CORRAL_HOST_CPUS", "CORRAL_HOST_MEMORY"):
            self.env.pop(key, None)
        self.log = (self.home / "daemon.log").open("wb")
        self.proc = subprocess.Popen([CORRAL, "serve"], env=self.env, stdout=self.log,
                                     stderr=self.log)
        from corral.client import Client

        self.client = Client(self.home / "corral.sock", timeout=180)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(Exception):
                self.url = (self.client.web_info()["url"] or "").rstrip("/")
                break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError((self.home / "daemon.log").read_text()[-2000:])
            time.sleep(0.05)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            for vm in self.client.list():
                self.client.rm(vm["name"])
        self.client.close()
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()
        shutil.rmtree(self.home, ignore_errors=True)


def real_scrapes(d: Daemon, n: int, reps: int) -> dict[str, Any]:
    import httpx

    have = len(d.client.list())
    for i in range(have, n):
        d.client.create(f"d{i}", memory="64M")
    time.sleep(1.2)  # a gathering with every VM in it
    scrape, listing = [], []
    with httpx.Client(base_url=d.url) as c:
        for _ in range(reps):
            t0 = time.perf_counter()
            c.get("/metrics")
            scrape.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            c.get("/v1/vms")
            listing.append(time.perf_counter() - t0)
    return {"scrape": ms(scrape), "list": ms(listing)}


def raw_sse(d: Daemon) -> socket.socket:
    host, port = d.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"GET /v1/events/stream?vm=run0 HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
                 .encode())
    return sock


def latency(d: Daemon, reps: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(d.url + "/#/vm/run0")
        page.wait_for_selector("#live:not(.off)")
        page.evaluate("""() => { window.arrivals = {};
          window.corral.stream.subscribe((ev) => {
            window.arrivals[ev.id] = performance.timeOrigin + ev.received; }); }""")
        sock = raw_sse(d)
        buf = b""
        to_page, to_raw, commit_to_page = [], [], []
        time.sleep(0.5)
        for i in range(reps):
            call = d.client.pause if i % 2 == 0 else d.client.resume
            sent = time.time()
            call("run0")
            while not (m := re.search(rb"data: (\{.*?)\n", buf)):
                buf += sock.recv(65536)
            raw_at = time.time()
            buf = buf[m.end():]
            ev = json.loads(m.group(1))
            page.wait_for_function(f"window.arrivals[{ev['id']}] !== undefined")
            at = page.evaluate(f"window.arrivals[{ev['id']}]") / 1000
            to_page.append(at - sent)
            to_raw.append(raw_at - sent)
            commit_to_page.append(at - ev["ts"])
            time.sleep(0.05)
        sock.close()
        browser.close()
    return {"page": ms(to_page), "raw": ms(to_raw), "commit": ms(commit_to_page)}


def rss_with_pages(d: Daemon, pages: int, settle: float) -> tuple[float, float]:
    from playwright.sync_api import sync_playwright

    idle = memory_of(d.proc.pid).rss_kib / 1024
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        opened = []
        for _ in range(pages):
            page = browser.new_page()
            page.goto(d.url + "/#/vm/run0")
            opened.append(page)
        for page in opened:
            page.wait_for_selector("#live:not(.off)")
        time.sleep(settle)
        loaded = memory_of(d.proc.pid).rss_kib / 1024
        browser.close()
    return idle, loaded


def image_path() -> str:
    paths = [p for p in os.environ.get("CORRAL_IMAGE_PATH", "").split(":") if p]
    paths.append(str(ROOT / "build" / "images"))
    found = [p for p in paths if (Path(p) / "tiny" / "image.json").is_file()]
    if not found:
        raise SystemExit("no tiny image: run 'make image' or set CORRAL_IMAGE_PATH")
    return ":".join(found)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args()
    reps = 10 if args.quick else 30
    sys.path.insert(0, str(ROOT / "src"))
    fake: dict[int, dict[str, Any]] = {}
    for n in COUNTS:
        log(f"fake engine: {n} running VMs")
        fake[n] = asyncio.run(fake_scrapes(n, reps))
    log("starting corral serve and one tiny guest")
    d = Daemon(image_path())
    try:
        d.client.create("run0", memory="128M", start=True, wait=True)
        real = {}
        for n in COUNTS:
            log(f"real daemon: 1 running + {n - 1} defined VMs")
            real[n] = real_scrapes(d, n, reps)
        for i in range(1, COUNTS[-1]):
            d.client.rm(f"d{i}")
        log("event latency to the browser")
        lat = latency(d, 10 if args.quick else 30)
        log("daemon memory with 10 pages")
        idle, loaded = rss_with_pages(d, 10, 5 if args.quick else 10)
    finally:
        d.close()
    print(report(fake, real, lat, idle, loaded))
    return 0


def report(fake: dict[int, dict[str, Any]], real: dict[int, dict[str, Any]],
           lat: dict[str, Any], idle: float, loaded: float) -> str:
    import platform

    out = [f"Corral web benchmark: {os.cpu_count()} CPUs, Linux {platform.release()}. "
           "Median (min-max) in ms.", ""]
    rows = []
    for n in COUNTS:
        f, r = fake[n], real[n]
        rows.append([str(n), fmt_summary(f["scrape"]), fmt_summary(f["list"]),
                     ratio(f["scrape"], f["list"]), f"{f['gather_ms']:.1f}",
                     f"{f['bytes'] // 1024}", fmt_summary(r["scrape"]), fmt_summary(r["list"]),
                     ratio(r["scrape"], r["list"])])
    out.append(render_table(["VMs", "fake: /metrics", "fake: /v1/vms", "ratio", "gather",
                             "KiB", "daemon: /metrics", "daemon: /v1/vms", "ratio"], rows))
    f1, f100 = fake[1]["scrape"].median, fake[100]["scrape"].median
    per_vm = (f100 - fake[20]["scrape"].median) / 80
    out += ["", f"growth, fake engine: {per_vm:.3f} ms per extra VM (20→100); "
            f"100 VMs / 1 VM = {f100 / f1:.1f}x", ""]
    out.append(render_table(["state change → (ms)", "median (min-max)"], [
        ["browser page (API call sent → page has it)", fmt_summary(lat["page"])],
        ["raw SSE socket (API call sent → socket has it)", fmt_summary(lat["raw"])],
        ["browser page, from the event's commit", fmt_summary(lat["commit"])]]))
    out += ["", render_table(["daemon RSS (MiB)", "value"], [
        ["no page open", f"{idle:.1f}"], ["10 pages of a VM open", f"{loaded:.1f}"],
        ["per page", f"{(loaded - idle) / 10:+.2f}"]]), "", "targets (from the issue):"]
    fr = fake[100]["scrape"].median
    out.append(f"  {'PASS' if fr < 50 else 'FAIL'}  /metrics under 50 ms with 100 VMs "
               f"(fake engine, all running): {fr:.1f} ms")
    out.append(f"  {'PASS' if lat['page'].median < 50 else 'FAIL'}  event to the browser "
               f"under 50 ms median: {lat['page'].median:.1f} ms (from the API call)")
    return "\n".join(out)


if __name__ == "__main__":
    run_benchmark(main)

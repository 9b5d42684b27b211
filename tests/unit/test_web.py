"""The web front door of a real ``corral serve`` (no QEMU: VMs are only defined): the page
and its vendored libraries, the event stream's latency and resumption, the console
WebSocket's refusals, the metrics, the loopback listener's origin checks, and the CLI's
``events`` and ``dashboard``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral.client import Client

from .served import stub_image

ROOT = Path(__file__).resolve().parents[2]
CORRAL = str(Path(sys.executable).parent / "corral")
STATIC = ROOT / "src" / "corral" / "api" / "static"


class Web:
    def __init__(self, home: Path, proc: subprocess.Popen[bytes], url: str) -> None:
        self.home = home
        self.proc = proc
        self.url = url.rstrip("/")
        self.socket = home / "corral.sock"
        self.client = Client(self.socket, timeout=30)
        # every request on the TCP listener needs a token
        self.token = self.client.token_create("web-test", "admin")["secret"]
        self.auth = {"Authorization": f"Bearer {self.token}"}
        self.http = httpx.Client(headers=self.auth)
        self.env = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_SOCKET": str(self.socket)}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CORRAL, *args], env=self.env, capture_output=True, text=True,
                              timeout=30)


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    home = tmp_path_factory.mktemp("web") / "home"
    stub_image(home)
    env = {k: v for k, v in os.environ.items() if k != "CORRAL_IMAGE_PATH"}
    env.update(CORRAL_HOME=str(home), CORRAL_WEB_LISTEN="127.0.0.1:0")
    log = (home / "daemon.log").open("wb")
    proc = subprocess.Popen([CORRAL, "serve"], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        url = None
        while url is None:
            assert proc.poll() is None and time.monotonic() < deadline, \
                (home / "daemon.log").read_text()
            with contextlib.suppress(Exception):
                url = Client(home / "corral.sock", timeout=5).web_info()["url"]
            time.sleep(0.05)
        yield Web(home, proc, url)
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def sse_connect(web: Web, query: str = "", last_id: int | None = None) -> socket.socket:
    """A raw SSE connection on the TCP listener, past its response head."""
    host, port = web.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    extra = f"Last-Event-ID: {last_id}\r\n" if last_id is not None else ""
    extra += f"Authorization: Bearer {web.token}\r\n"
    sock.sendall(f"GET /v1/events/stream{query} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}"
                 "Accept: text/event-stream\r\n\r\n".encode())
    return sock


class SSE:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def next(self, within: float = 10, audit: bool = False) -> tuple[dict[str, Any], float]:
        """The next event (an audit record only with ``audit``), and when it arrived
        (time.time())."""
        deadline = time.monotonic() + within
        while True:
            for m in re.finditer(rb"data: (\{\"id\".*?)\n", self.buf):
                self.buf = self.buf[m.end():]
                ev = json.loads(m.group(1))
                if audit or ev["kind"] != "audit":
                    return ev, time.time()
            assert time.monotonic() < deadline, self.buf[-500:]
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            self.buf += self.sock.recv(65536)


def test_the_page_and_every_asset_it_names_are_served(web: Web) -> None:
    page = web.http.get(web.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert {"/static/vendor/xterm.js", "/static/vendor/uPlot.iife.min.js",
            "/static/app.js"} <= set(assets)
    for asset in assets:
        r = web.http.get(web.url + asset)
        assert r.status_code == 200 and len(r.content) > 100, asset
    assert "cdn" not in page.text.lower() and "https://" not in page.text


def test_the_vendored_libraries_are_the_pinned_versions_with_licences() -> None:
    pins = json.loads((ROOT / "web" / "package.json").read_text())["dependencies"]
    versions = (STATIC / "vendor" / "VERSIONS").read_text()
    for name, version in pins.items():
        assert f"{name} {version} MIT" in versions
    lock = json.loads((ROOT / "web" / "package-lock.json").read_text())
    for name, version in pins.items():
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
        assert lock["packages"][f"node_modules/{name}"]["integrity"].startswith("sha512-")
    for lib in ("xterm", "uplot"):
        assert "Permission is hereby granted" in (STATIC / "vendor" / f"LICENSE.{lib}").read_text()


def test_events_arrive_within_100_ms_and_a_resumed_stream_has_no_gap(web: Web) -> None:
    live = SSE(sse_connect(web))
    time.sleep(0.2)
    lags = []
    for i in range(8):
        web.client.create(f"lat{i}")
        ev, arrived = live.next()
        assert ev["vm"] == f"lat{i}" and ev["kind"] == "created"
        lags.append(arrived - ev["ts"])
    assert statistics.median(lags) < 0.1 and max(lags) < 0.5, lags
    live.sock.close()
    # everything after a given id, from the log and then live, each once and in order
    log = web.client.events()
    cut = log[len(log) // 2]["id"]
    resumed = SSE(sse_connect(web, last_id=cut))
    expect = [e["id"] for e in log if e["id"] > cut]
    got = [resumed.next(audit=True)[0]["id"] for _ in expect]
    assert got == expect
    web.client.rm("lat0")
    ev, _ = resumed.next(audit=True)
    assert ev["id"] == expect[-1] + 1 and (ev["vm"], ev["kind"]) == ("lat0", "destroyed")
    resumed.sock.close()
    since = SSE(sse_connect(web, f"?since={cut}&vm=lat7"))
    assert since.next()[0]["vm"] == "lat7"
    since.sock.close()


def test_metrics_are_valid_and_cheap(web: Web) -> None:
    web.client.create("met", cpus=2, memory="384M")
    web.http.get(web.url + "/static/app.js")
    web.http.get(web.url + "/no/such/route")
    web.client.get("met")
    web.http.get(web.url + "/metrics")
    r = web.http.get(web.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for fam in text_string_to_metric_families(r.text) for s in fam.samples}
    show = web.client.get("met")
    assert values[("corral_vm_memory_size_bytes", (("vm", "met"),))] == show["memory_bytes"]
    assert values[("corral_vm_vcpus", (("vm", "met"),))] == show["cpus"]
    assert values[("corral_vm_state", (("state", "defined"), ("vm", "met")))] == 1
    routes = {dict(k[1])["route"] for k in values if k[0] == "corral_api_requests_total"}
    assert {"/v1/vms/{name}", "/static", "unmatched", "/metrics"} <= routes, routes
    assert not any(r.startswith("/v1/vms/") and "{" not in r for r in routes)
    promtool = subprocess.run(["promtool", "check", "metrics"], input=r.text, text=True,
                              capture_output=True) if _has("promtool") else None
    if promtool is not None:
        assert promtool.returncode == 0, promtool.stdout + promtool.stderr
    stats = web.http.get(web.url + "/v1/vms/met/stats").json()
    assert stats["state"] == "defined" and stats["figures"] is None
    assert web.http.get(web.url + "/v1/vms/nope/stats").status_code == 404


def _has(binary: str) -> bool:
    import shutil

    return shutil.which(binary) is not None


def test_the_console_needs_a_token_and_an_operator(web: Web) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    web.client.create("locked")
    url = web.url.replace("http://", "ws://") + "/v1/vms/locked/console"
    viewer = web.client.token_create("web-viewer", "viewer")["secret"]
    for protocols in (["corral"], ["corral", "corral.bearer.crl_bad_token"],
                      ["corral", f"corral.bearer.{viewer}"]):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, subprotocols=protocols)  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403  # closed before it was accepted
    web.client.token_revoke("web-viewer")
    web.client.rm("locked")


def test_the_console_refuses_a_vm_without_a_machine_and_says_why(web: Web) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    web.client.create("quiet")
    ws_url = web.url.replace("http://", "ws://")
    for name, code, reason in (("quiet", 4409, "VM 'quiet' is defined"),
                               ("ghost", 4404, "no VM named 'ghost'")):
        with connect(f"{ws_url}/v1/vms/{name}/console",
                     subprotocols=["corral", f"corral.bearer.{web.token}"]) as ws, \
                pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason[:len(reason)]) == (code, reason)


def test_the_loopback_listener_refuses_other_sites(web: Web) -> None:
    host = web.url.removeprefix("http://")
    ok = web.http.post(web.url + "/v1/vms", json={"name": "same"}, headers={"Origin": web.url})
    assert ok.status_code == 201
    for headers in ({"Origin": "http://evil.example"}, {"Host": f"evil.example:{host}"}):
        r = web.http.post(web.url + "/v1/vms", json={"name": "csrf"}, headers=headers)
        assert r.status_code == 403 and r.json()["kind"] == "forbidden"
    assert "csrf" not in [v["name"] for v in web.client.list()]  # the unix socket: no checks
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as refused:
        connect(web.url.replace("http://", "ws://") + "/v1/vms/same/console",
                origin="http://evil.example",  # type: ignore[arg-type]
                subprotocols=["corral", f"corral.bearer.{web.token}"])  # type: ignore[list-item]
    assert refused.value.response.status_code == 403


def test_the_cli_prints_the_log_follows_it_and_the_dashboard_address(web: Web) -> None:
    web.client.create("clie")
    res = web.cli("events", "--vm", "clie", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)[0]["kind"] == "created"
    follow = subprocess.Popen([CORRAL, "events", "-f", "--vm", "clie"], env=web.env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        assert "created" in follow.stdout.readline()
        web.client.rm("clie")
        # the next lines: the create's audit record, then the destroy's events
        assert any("destroyed" in follow.stdout.readline() for _ in range(4))
    finally:
        follow.terminate()
        follow.wait(10)
        if follow.stdout is not None:
            follow.stdout.close()
    res = web.cli("dashboard", "--no-login")
    assert res.returncode == 0 and res.stdout.strip() == web.url + "/"
    res = web.cli("dashboard", "--json", "--role", "viewer", "--expires", "1h")
    link = json.loads(res.stdout)
    token = link["url"].partition("#token=")[2]
    assert link["url"].startswith(web.url + "/#token=crl_") and res.returncode == 0
    assert httpx.get(web.url + "/v1/vms", headers={"Authorization": f"Bearer {token}"}
                     ).status_code == 200
    assert httpx.get(web.url + "/v1/vms").status_code == 401  # no token: refused
    web.client.token_revoke(link["token"])
    res = web.cli("events", "--tail", "0")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "tail" in res.stderr


@pytest.mark.parametrize(("text", "why"), [
    ("0.0.0.0:8470", "only a loopback address"), ("10.1.2.3:80", "only a loopback address"),
    ("127.0.0.1:99999", "expected HOST:PORT"), ("nonsense", "expected HOST:PORT")])
def test_the_listener_setting_takes_only_a_loopback_host_and_port(text: str, why: str) -> None:
    from corral import settings

    with pytest.raises(settings.SettingError, match=why):
        settings.value("web.listen", {"CORRAL_WEB_LISTEN": text})
    assert settings.value("web.listen", {"CORRAL_WEB_LISTEN": "[::1]:0"}) == ("::1", 0)
    assert settings.value("web.listen", {}) is None


def test_a_taken_port_stops_the_daemon_with_one_line_and_nothing_left(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "CORRAL_HOME": str(tmp_path / "home"),
               "CORRAL_WEB_LISTEN": f"127.0.0.1:{port}"}
        res = subprocess.run([CORRAL, "serve"], env=env, capture_output=True, text=True,
                             timeout=30)
    assert res.returncode == 1
    # the daemon's start line, then the one line of the error (no traceback)
    assert res.stderr.strip().splitlines()[-1] == f"corral: error: cannot listen on " \
        f"127.0.0.1:{port} (web.listen): Address already in use"
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "home" / "corral.sock").exists()

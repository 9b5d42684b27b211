"""The front doors against a real daemon (no QEMU): errors cross the wire with their class and
facts, names cannot smuggle requests, and a table of bad inputs to the CLI and the REST API
each answers its documented exit code or status in one line, leaving the daemon healthy."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral import errors
from corral.cli.main import main
from corral.client import Client

from .served import Served, served

BIG = "9" * 400


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served(tmp_path_factory.mktemp("front") / "home") as d:
        with Client(d.socket) as c:
            c.create("defined1")
        yield d


@pytest.fixture
def http(daemon: Served) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)),
                      base_url="http://corral", timeout=30) as client:
        yield client


def test_a_refused_transition_crosses_the_wire_with_its_facts(daemon: Served,
                                                               http: httpx.Client) -> None:
    r = http.post("/v1/vms/defined1/pause")
    assert r.status_code == 409
    body = r.json()
    facts = {"vm": "defined1", "what": "VM", "operation": "pause", "state": "defined",
             "required": ["running"]}
    assert body["error"] == body["kind"] == "invalid_state"
    assert body["facts"] == facts
    assert {k: body[k] for k in facts} == facts  # the old top-level keys stay
    with Client(daemon.socket) as c, pytest.raises(errors.InvalidState) as info:
        c.pause("defined1")
    err = info.value
    assert type(err) is errors.InvalidState and err.status == 409 and err.exit_code == 5
    assert (err.vm, err.what, err.operation, err.state, err.required) == (
        "defined1", "VM", "pause", "defined", ("running",))
    assert err.message == body["message"]


def test_invalid_spec_keeps_its_field(daemon: Served) -> None:
    with Client(daemon.socket) as c, pytest.raises(errors.InvalidSpec) as info:
        c.create("m1", memory=BIG)
    assert info.value.field == "memory" and info.value.status == 422


def test_a_name_cannot_smuggle_a_request(daemon: Served) -> None:
    with Client(daemon.socket) as c:
        c.create("victim")
        for evil in ("x HTTP/1.1\r\nHost: a\r\n\r\nDELETE /v1/vms/victim", "x\nDELETE",
                     "../host", "", ".", "a/b", "a\x00b", "a\x7fb"):
            with pytest.raises(errors.InvalidSpec):
                c.get(evil)
            with pytest.raises(errors.InvalidSpec):
                c.rm(evil)
        with pytest.raises(errors.InvalidSpec):  # quoted, then refused by the daemon's rule
            c.get("a b?x=1#y")
        assert c.get("victim")["state"] == "defined"
        c.rm("victim")


@pytest.mark.parametrize("call", [
    lambda c: c.start("defined1", timeout=float("nan")),
    lambda c: c.exec("defined1", ["true"], timeout=float("inf")),
    lambda c: c.wait_ready("defined1", timeout=-1),
    lambda c: c.stop("defined1", timeout=0),
    lambda c: c.shutdown("defined1", timeout=1e9),
    lambda c: c.logs("defined1", offset=1 << 62),
    lambda c: c.events(since=-1),
    lambda c: c.forward_add("gw", "tcp", 70000, "web", 80),
    lambda c: c.attach_disk("defined1", "d", iops=-1),
])
def test_client_checks_numbers_before_sending(daemon: Served, call: object) -> None:
    with Client(daemon.socket) as c, pytest.raises(errors.InvalidSpec):
        call(c)  # type: ignore[operator]


# --- the bad-input table: the CLI ------------------------------------------------------------
CLI_ROWS = [
    (["show", ""], 2), (["rm", ""], 2), (["destroy", ""], 2), (["show", "../host"], 2),
    (["show", "a b"], 2), (["show", "wéb"], 2), (["show", "a\r\nGET /v1/host"], 2),
    (["show", "ghost"], 3), (["rm", "ghost"], 3), (["delete", "ghost"], 3),
    (["pause", "defined1"], 5),
    (["exec", "defined1", "--timeout", "nan", "--", "true"], 2),
    (["exec", "defined1", "--timeout", "inf", "--", "true"], 2),
    (["exec", "defined1", "--timeout", "-1", "--", "true"], 2),
    (["exec", "defined1", "--timeout", "1e12", "--", "true"], 2),
    (["start", "defined1", "--timeout", "nan"], 2),
    (["run", "r1", "--timeout", "-5"], 2),
    (["reboot", "defined1", "--timeout", "inf"], 2),
    (["create", "big", "--memory", BIG], 2),
    (["create", "big", "--cpus", "100000"], 2),
    (["create", "big", "--priority", str(2 ** 70)], 2),
    (["create", "big", "--cpu-weight", "-1"], 2),
    (["create", "Bad_Name"], 2),
    (["logs", "defined1", "--tail", str(2 ** 70)], 2),
    (["disk", "rm", ""], 2), (["disk", "rm", "ghost"], 3),
    (["disk", "create", "d9", "--size", BIG], 2),
    (["snapshot", "rm", "defined1", ""], 2), (["snapshot", "rm", "defined1", "../x"], 2),
    (["network", "rm", "../x"], 2), (["router", "rm", ""], 2), (["image", "rm", "ghost"], 3),
    (["router", "forward", "gw", "tcp", "70000", "web:80"], 2),
    (["router", "unforward", "gw", "tcp", "0"], 2),
    (["attach-disk", "defined1", "d", "--iops", "-1"], 2),
    (["firewall", "rm", "0"], 2),
]


@pytest.mark.parametrize(("argv", "code"), CLI_ROWS, ids=[" ".join(r[0])[:40] for r in CLI_ROWS])
def test_cli_bad_input(daemon: Served, capsys: pytest.CaptureFixture[str],
                       argv: list[str], code: int) -> None:
    cut = argv.index("--") if "--" in argv else len(argv)
    assert main([*argv[:cut], "--socket", str(daemon.socket), *argv[cut:]]) == code
    err = capsys.readouterr().err
    assert err.startswith("corral: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "daemon answered" not in err, err
    assert daemon.alive()


def test_disk_rm_names_a_disk(daemon: Served, capsys: pytest.CaptureFixture[str]) -> None:
    s = ["--socket", str(daemon.socket)]
    assert main(["disk", "create", "d1", "--size", "16M", *s]) == 0
    assert main(["attach-disk", "defined1", "d1", *s]) == 0
    capsys.readouterr()
    assert main(["disk", "rm", "d1", *s]) == 5
    err = capsys.readouterr().err
    assert "cannot remove disk 'd1': it is attached to 'defined1'" in err and " VM " not in err
    with Client(daemon.socket) as c, pytest.raises(errors.InvalidState) as info:
        c.disk_rm("d1")
    assert info.value.what == "disk" and info.value.vm == "d1"
    assert main(["detach-disk", "defined1", "d1", *s]) == 0
    assert main(["disk", "rm", "d1", *s]) == 0


# --- the bad-input table: the REST API -------------------------------------------------------
REST_ROWS: list[tuple[str, str, object, int]] = [
    ("GET", "/v1/vms/ghost", None, 404),
    ("GET", "/v1/vms/Bad_Name", None, 422),
    ("GET", "/v1/vms/a%20b", None, 422),
    ("GET", "/v1/vms/w%C3%A9b", None, 422),
    ("GET", "/v1/vms/..%2Fhost", None, 404),  # decoded before routing: no such route
    ("GET", "/v1/nowhere", None, 404),
    ("PATCH", "/v1/vms", None, 405),
    ("POST", "/v1/vms", {"name": "a", "memory": BIG}, 422),
    ("POST", "/v1/vms", {"name": "a", "memory": int(BIG)}, 422),
    ("POST", "/v1/vms", {"name": "a", "cpus": 10 ** 30}, 422),
    ("POST", "/v1/vms", {"name": "a", "priority": 2 ** 70}, 422),
    ("POST", "/v1/vms", {"name": "a", "expected_runtime": -1.0}, 422),
    ("POST", "/v1/vms", b'{"name": "a", "cpu_max": NaN}', 422),
    ("POST", "/v1/vms", b'{"name": "a", "expected_runtime": Infinity}', 422),
    ("POST", "/v1/vms", b"not json", 422),
    ("POST", "/v1/vms", b'{"name": "a"', 422),
    ("POST", "/v1/vms", {"name": 5}, 422),
    ("POST", "/v1/vms", {}, 422),
    ("POST", "/v1/vms", [1, 2], 422),
    ("POST", "/v1/vms", {"name": "a", "cmdline": "x" * (2 << 20)}, 413),
    ("POST", "/v1/vms?start=true&timeout=nan", {"name": "a"}, 422),
    ("POST", "/v1/vms/defined1/start?timeout=-1", None, 422),
    ("POST", "/v1/vms/defined1/wait?timeout=inf", None, 422),
    ("POST", "/v1/vms/defined1/shutdown?timeout=1e100", None, 422),
    ("POST", "/v1/vms/defined1/stop?timeout=0", None, 422),
    ("POST", "/v1/vms/defined1/reboot?timeout=NaN", None, 422),
    ("POST", "/v1/vms/defined1/restore?timeout=-inf", None, 422),
    ("GET", f"/v1/vms/defined1/logs?offset={2 ** 62}", None, 422),
    ("GET", "/v1/vms/defined1/logs?limit=-5", None, 422),
    ("GET", f"/v1/vms/defined1/logs?limit={2 ** 62}", None, 422),
    ("GET", f"/v1/events?since={2 ** 70}", None, 422),
    ("GET", "/v1/events?since=-1", None, 422),
    ("POST", "/v1/vms/defined1/exec", {"argv": ["true"], "stdin": "!!not base64!!"}, 422),
    ("POST", "/v1/vms/defined1/exec", b'{"argv": ["true"], "timeout": NaN}', 422),
    ("POST", "/v1/vms/defined1/exec", {"argv": ["true"], "timeout": -1}, 422),
    ("POST", "/v1/vms/defined1/exec", {"argv": ["x" * 300_000]}, 422),
    ("POST", "/v1/vms/defined1/exec", {"argv": ["a"] * 5000}, 422),
    ("POST", "/v1/vms/defined1/exec", {"argv": []}, 422),
    ("POST", "/v1/vms/defined1/exec", {"argv": ["true"]}, 409),
    ("POST", "/v1/batch", {"argv": ["true"], "timeout": 1e300}, 422),
    ("POST", "/v1/disks", {"name": "d", "size": BIG}, 422),
    ("POST", "/v1/disks/ghost/resize?size=" + BIG, None, 422),
    ("POST", "/v1/vms/defined1/disks", {"disk": "d", "iops": -1}, 422),
    ("POST", "/v1/vms/defined1/snapshots", {"name": "../x"}, 422),
    ("DELETE", "/v1/networks/ghost?force=maybe", None, 422),
    ("DELETE", "/v1/routers/ghost/forwards/tcp/70000", None, 422),
    ("DELETE", "/v1/firewall/rules/0", None, 422),
    ("POST", "/v1/routers/gw/forwards", {"host_port": 0, "vm": "a", "port": 80}, 422),
    ("POST", "/v1/vms/defined1/clone?new=Bad", None, 422),
    ("POST", "/v1/vms/defined1/export?file=", None, 422),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), REST_ROWS,
                         ids=[f"{r[0]} {r[1][:40]}" for r in REST_ROWS])
def test_rest_bad_input(daemon: Served, http: httpx.Client, method: str, path: str,
                        body: object, status: int) -> None:
    if isinstance(body, bytes):
        r = http.request(method, path, content=body,
                         headers={"content-type": "application/json"})
    else:
        r = http.request(method, path, json=body)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["error"] == err["kind"] and isinstance(err["facts"], dict), err
    assert "\n" not in err["message"] and len(err["message"]) < 400, err
    assert daemon.alive()


def _answer(s: socket.socket) -> str:
    """The whole answer: its head and body may come in separate writes."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < int(
            data.lower().partition(b"content-length: ")[2].split(b"\r\n")[0] or 0):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode("latin-1")


def test_a_huge_upload_is_refused_before_it_is_read(daemon: Served) -> None:
    """Content-Length alone decides: the daemon answers 413 without reading 400 MB, even for a
    VM that does not exist."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(daemon.socket))
        s.sendall(b"PUT /v1/vms/ghost/files?path=/x HTTP/1.1\r\nHost: corral\r\n"
                  b"Content-Type: application/octet-stream\r\n"
                  b"Content-Length: 400000000\r\n\r\n" + b"\0" * 65536)
        head = _answer(s)
    assert head.startswith("HTTP/1.1 413"), head
    body = json.loads(head.split("\r\n\r\n", 1)[1])
    assert body["kind"] == "too_large" and body["facts"]["limit"] > 0
    assert daemon.alive()


def test_a_chunked_body_is_cut_off_at_the_limit(daemon: Served, http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "a", "cmdline": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    r = http.post("/v1/vms", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["kind"] == "too_large"
    assert daemon.alive()


def test_forced_rm_answers_what_it_removed(http: httpx.Client, tmp_path: Path) -> None:
    r = http.delete("/v1/networks/ghost", params={"force": "true"})
    assert r.status_code in (403, 404) and r.json()["kind"] in ("needs_root", "not_found")

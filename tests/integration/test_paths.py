"""The daemon never opens a path a client names with its own rights, against a real daemon
and real guests: host paths sent over the socket as any client (a remote one too) would send
them are refused and change nothing; an unprivileged user's CLI cannot make the daemon read a
root-only file; kernels, images and exports travel as uploads and downloads for real."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cli import guest as _cli_guest  # noqa: F401 (imported before a fork, see below)
from corral.cli import host as _cli_host  # noqa: F401
from corral.cli import vms as _cli_vms  # noqa: F401
from corral.cli.main import main
from corral.errors import PathNotAllowed

from .conftest import Daemon, running_daemon

SHADOW = "/etc/shadow"
NOBODY = 65534


def _fingerprint(path: str) -> tuple[int, float, str]:
    st = os.stat(path)
    return st.st_size, st.st_mtime, hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def shared(image_path: str) -> Iterator[Daemon]:
    """A daemon whose socket anyone may open (as a TCP port would be reachable), with a small
    upload limit."""
    sock_dir = Path(tempfile.mkdtemp(prefix="crl-sock-"))
    sock_dir.chmod(0o755)
    try:
        with running_daemon(image_path, CORRAL_SOCKET=str(sock_dir / "corral.sock"),
                            CORRAL_UPLOAD_MAX="80M") as d:
            d.socket.chmod(0o666)
            yield d
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def no_uploads(d: Daemon) -> bool:
    uploads = d.home / "uploads"
    return not uploads.exists() or list(uploads.iterdir()) == []


def tiny_files(d: Daemon) -> tuple[Path, Path, str]:
    tiny = next(Path(p) / "tiny" for p in d.env["CORRAL_IMAGE_PATH"].split(":")
                if (Path(p) / "tiny" / "image.json").is_file())
    manifest = json.loads((tiny / "image.json").read_text())
    return tiny / manifest["kernel"], tiny / manifest["initrd"], manifest["cmdline"]


def test_host_paths_sent_over_the_socket_are_refused(shared: Daemon) -> None:
    c, home = shared.client, shared.home
    c.create("held", disks=[{"size": "8M"}])
    before = sorted(str(p) for p in home.rglob("*") if "corral.db" not in p.name)
    shadow = _fingerprint(SHADOW)
    asks = [("POST", "/vms", {"name": "x", "kernel": SHADOW}, {}),
            ("POST", "/vms", {"name": "x", "disks": [{"path": SHADOW}]}, {}),
            ("POST", "/images", {"name": "x", "file": SHADOW}, {}),
            ("POST", "/import", None, {"file": SHADOW}),
            ("POST", "/vms/held/export", None, {"file": SHADOW}),
            ("POST", "/vms/held/save", None, {"file": SHADOW})]
    for method, route, body, query in asks:
        with pytest.raises(PathNotAllowed) as info:
            c.request(method, route, body, **query)
        assert info.value.status == 422 and "\n" not in info.value.message, route
    assert [vm["name"] for vm in c.list()] == ["held"]
    assert c.get("held")["state"] == "defined"
    assert sorted(str(p) for p in home.rglob("*") if "corral.db" not in p.name) == before
    assert _fingerprint(SHADOW) == shadow
    c.rm("held")


def _warm_up(args: tuple[str, ...]) -> None:
    """Run the same command as root, on no file and no daemon, so that every module it
    imports lazily (the CLI's and the standard library's, which nobody may not read here)
    is loaded before the fork."""
    argv = [a.replace(SHADOW, "/nonexistent/file") for a in args]
    old = os.environ.get("CORRAL_SOCKET")
    os.environ["CORRAL_SOCKET"] = "/nonexistent/corral.sock"
    try:
        with contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(BaseException):
            main(argv)
    finally:
        if old is None:
            os.environ.pop("CORRAL_SOCKET", None)
        else:
            os.environ["CORRAL_SOCKET"] = old


def _as_nobody(d: Daemon, *args: str) -> tuple[int, str]:
    """``corral ARGS`` run by the CLI as user nobody: a child of this process that drops
    root before the CLI runs (the test's Python lives where nobody may not execute it)."""
    _warm_up(args)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 99
        try:
            os.close(read)
            out = os.fdopen(write, "w")
            sys.stdout = sys.stderr = out
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.chdir("/")
            os.environ["CORRAL_SOCKET"] = str(d.socket)
            code = main(list(args))
            out.flush()
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        output = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output


def test_an_unprivileged_cli_cannot_make_the_daemon_read_a_root_only_file(
        shared: Daemon) -> None:
    c = shared.client
    c.create("nb")
    assert os.stat(SHADOW).st_mode & 0o004 == 0  # root-only here
    code, out = _as_nobody(shared, "list", "--json")
    assert code == 0 and json.loads(out)[0]["name"] == "nb"  # nobody reaches the daemon
    shadow = _fingerprint(SHADOW)
    for args, field in [(["create", "x", "--kernel", SHADOW], "kernel"),
                        (["create", "x", "--disk", f"file={SHADOW}"], "disks.0.file"),
                        (["create", "x", "--disk", f"path={SHADOW}"], "disks.0.path"),
                        (["import", SHADOW], "file"),
                        (["image", "import", "x", SHADOW], "file"),
                        (["cp", SHADOW, "nb:/tmp/x"], "cp")]:
        code, out = _as_nobody(shared, *args)
        assert code == 2, (args, out)
        assert out.startswith(f"corral: error: {field}: ") and out.count("\n") == 1, out
    for args, what in ((["export", "nb", "/root/nb.corral"], "export to /root/nb.corral"),
                       (["save", "nb", "--file", SHADOW], f"state to {SHADOW}")):
        code, out = _as_nobody(shared, *args)
        assert code == 1 and out.count("\n") == 1, out
        assert f"cannot write the {what}: Permission denied" in out, out
    assert [vm["name"] for vm in c.list()] == ["nb"] and c.get("nb")["state"] == "defined"
    assert _fingerprint(SHADOW) == shadow
    assert not list(Path("/root").glob("*nb.corral*"))
    assert not list(Path("/etc").glob(".shadow*"))
    assert no_uploads(shared)
    c.rm("nb")


def test_a_guest_boots_from_an_uploaded_kernel(shared: Daemon) -> None:
    kernel, initrd, cmdline = tiny_files(shared)
    res = shared.cli("run", "upk", "--kernel", str(kernel), "--initrd", str(initrd),
                     "--cmdline", cmdline, "--json")
    assert res.returncode == 0, res.stderr
    vm = json.loads(res.stdout)
    assert vm["state"] == "running" and vm["image"] is None
    vm_dir = shared.home / "vms" / "upk"
    assert (vm_dir / "kernel").read_bytes() == kernel.read_bytes()  # a copy, not the path
    assert shared.client.exec("upk", ["hostname"])["stdout"].strip() == b"upk"
    assert no_uploads(shared)
    shared.client.rm("upk")


def _raw_download(d: Daemon, route: str) -> bytes:
    """The bytes the daemon answers to ``POST /v1/ROUTE``, read off the socket by hand."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(d.socket))
        s.sendall(f"POST /v1{route} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                  "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    assert len(body) == length
    return body


def test_an_export_downloads_byte_identical_and_an_upload_over_the_limit_is_refused(
        shared: Daemon, tmp_path: Path) -> None:
    c = shared.client
    c.create("dl", disks=[{"size": "16M"}])
    res = shared.cli("export", "dl", str(tmp_path / "dl.corral"), "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    written = (tmp_path / "dl.corral").read_bytes()
    assert info["size"] == len(written) and info["file"] == str(tmp_path / "dl.corral")
    assert _raw_download(shared, "/vms/dl/export") == written  # what the daemon sent
    vm_dir = shared.home / "vms" / "dl"
    with tarfile.open(fileobj=io.BytesIO(written)) as tar:
        for member, name in (("disk0.qcow2", "disk0.qcow2"),
                             ("vmstate.qcow2", "vmstate.qcow2")):
            f = tar.extractfile(member)
            assert f is not None and f.read() == (vm_dir / name).read_bytes(), member
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl.corral"]  # no temporary left

    big = tmp_path / "big.corral"
    with big.open("wb") as f:
        f.truncate(81 << 20)
    res = shared.cli("import", str(big))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "larger than 83886080 bytes (setting uploads.max_size" in res.stderr
    assert no_uploads(shared)
    assert [vm["name"] for vm in c.list()] == ["dl"]
    with contextlib.suppress(Exception):
        c.rm("dl")

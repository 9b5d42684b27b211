"""The daemon opens no path a client names: every request that names a host path, sent to
the REST API as a remote client would send it, is refused unless the path lies inside the
``paths.allowed`` setting, and changes nothing; files travel as uploads instead, bounded by
``uploads.max_size``; exports and saved states are answered as bytes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from corral.api.app import create_app
from corral.config import Paths
from corral.service.manager import Manager

SHADOW = "/etc/shadow"


def _fingerprint(path: str) -> tuple[int, float, str]:
    st = os.stat(path)
    return st.st_size, st.st_mtime, hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
              ) -> AsyncIterator[httpx.AsyncClient]:
    home = tmp_path / "home"
    images = home / "images" / "tiny"
    images.mkdir(parents=True)
    (images / "vmlinux").write_bytes(b"\x7fELF")
    (images / "image.json").write_text(json.dumps(
        {"name": "tiny", "kernel": "vmlinux", "cmdline": "console=ttyS0", "agent": True}))
    monkeypatch.delenv("CORRAL_ALLOWED_PATHS", raising=False)
    monkeypatch.setenv("CORRAL_UPLOAD_MAX", "1M")
    manager = Manager(Paths(home))
    await manager.open()
    app = create_app(manager, manage_lifecycle=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://corral") as client:
        yield client
    await manager.close()


def _home_files(tmp_path: Path) -> set[str]:
    home = tmp_path / "home"
    return {str(p.relative_to(home)) for p in home.rglob("*")
            if "corral.db" not in p.name and p.name != "run" and "uploads" not in p.parts}


@pytest.mark.parametrize(("method", "url", "body", "field"), [
    ("POST", "/v1/vms", {"name": "x", "kernel": SHADOW}, "kernel"),
    ("POST", "/v1/vms", {"name": "x", "image": "tiny", "kernel": "/etc/../etc/shadow"},
     "kernel"),
    ("POST", "/v1/vms", {"name": "x", "kernel": "UPLOAD", "initrd": SHADOW}, "initrd"),
    ("POST", "/v1/vms", {"name": "x", "disks": [{"path": SHADOW}]}, "disks.0.path"),
    ("POST", "/v1/vms", {"name": "x", "disks": [{"size": "1M"}, {"path": "etc/shadow"}]},
     "disks.1.path"),
    ("POST", "/v1/batch", {"spec": {"kernel": SHADOW}, "argv": ["true"]}, "kernel"),
    ("POST", "/v1/images", {"name": "x", "file": SHADOW}, "file"),
    ("POST", f"/v1/import?file={SHADOW}", None, "file"),
    ("POST", f"/v1/vms/a/export?file={SHADOW}", None, "file"),
    ("POST", f"/v1/vms/a/save?file={SHADOW}", None, "file"),
])
async def test_a_client_named_host_file_is_refused_and_nothing_is_made(
        api: httpx.AsyncClient, tmp_path: Path, method: str, url: str,
        body: dict[str, object] | None, field: str) -> None:
    assert (await api.post("/v1/vms", json={"name": "a"})).status_code == 201
    if body and body.get("kernel") == "UPLOAD":  # a good kernel: the initrd is refused
        up = (await api.post("/v1/uploads", content=b"\x7fELF")).json()["upload"]
        body = {**body, "kernel": f"upload:{up}"}
    before, shadow = _home_files(tmp_path), _fingerprint(SHADOW)
    r = await api.request(method, url, json=body)
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["kind"] == "path_not_allowed" and err["facts"]["field"] == field, err
    # what to change: the setting that allows a path to read; nothing allows one to write
    wanted = "writes no file a client names" if "file=" in url and "import" not in url \
        else "setting paths.allowed"
    assert "\n" not in err["message"] and wanted in err["message"], err
    assert [v["name"] for v in (await api.get("/v1/vms")).json()] == ["a"]
    assert _home_files(tmp_path) == before and _fingerprint(SHADOW) == shadow
    uploads = tmp_path / "home" / "uploads"  # a request that names an upload uses it up
    assert not uploads.exists() or list(uploads.iterdir()) == []


async def test_only_files_inside_the_allowed_directories_are_used_in_place(
        api: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    disk = allowed / "sub" / "data.raw"
    disk.write_bytes(bytes(1 << 16))
    (allowed / "escape").symlink_to(SHADOW)
    (allowed / "dir-escape").symlink_to("/etc")
    outside = tmp_path / "outside.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(outside), "1M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(outside), str(allowed / "backed.qcow2")], check=True)
    monkeypatch.setenv("CORRAL_ALLOWED_PATHS", f"relative/dir:{allowed}")
    for path, why in [(f"{allowed}/escape", "outside the allowed"),
                      (f"{allowed}/dir-escape/shadow", "outside the allowed"),
                      (f"{allowed}/sub/../../outside.qcow2", "outside the allowed"),
                      (str(allowed), "outside the allowed"),  # the directory itself
                      (f"{allowed}/backed.qcow2", "its backing file"),
                      (f"{allowed}/sub", "not a regular file")]:
        r = await api.post("/v1/vms", json={"name": "x", "disks": [{"path": path}]})
        assert r.status_code == 422 and why in r.json()["message"], (path, r.text)
    r = await api.post("/v1/vms", json={"name": "x", "disks": [
        {"path": f"{allowed}/sub/./data.raw", "format": "raw"}]})
    assert r.status_code == 201, r.text
    assert r.json()["disks"][-1]["path"] == str(disk)  # resolved before it is stored
    assert (await api.delete("/v1/vms/x")).status_code == 204
    assert disk.read_bytes() == bytes(1 << 16)  # a file used in place stays the user's


async def test_uploads_boot_files_and_disks(api: httpx.AsyncClient, tmp_path: Path) -> None:
    kernel = (await api.post("/v1/uploads", content=b"\x7fELF kernel")).json()
    assert kernel["size"] == 11
    assert kernel["sha256"] == hashlib.sha256(b"\x7fELF kernel").hexdigest()
    image = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1M"], check=True)
    disk = (await api.post("/v1/uploads", content=image.read_bytes())).json()
    uploads = tmp_path / "home" / "uploads"
    assert oct((uploads / kernel["upload"]).stat().st_mode & 0o777) == "0o600"
    r = await api.post("/v1/vms", json={"name": "k", "kernel": f"upload:{kernel['upload']}",
                                        "disks": [{"upload": disk["upload"]}]})
    assert r.status_code == 201, r.text
    vm_dir = tmp_path / "home" / "vms" / "k"
    assert (vm_dir / "kernel").read_bytes() == b"\x7fELF kernel"
    assert r.json()["disks"][0]["path"] == str(vm_dir / "disk0.qcow2")
    assert list(uploads.iterdir()) == []  # each upload is used once
    r = await api.post("/v1/vms", json={"name": "k2", "kernel": f"upload:{kernel['upload']}"})
    assert r.status_code == 404 and "upload the file again" in r.json()["message"]
    r = await api.post("/v1/vms", json={"name": "k2", "kernel": "upload:../../etc/shadow"})
    assert r.status_code == 422 and r.json()["field"] == "kernel"


async def test_an_uploaded_image_may_name_no_other_file(api: httpx.AsyncClient,
                                                        tmp_path: Path) -> None:
    backed = tmp_path / "backed.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", SHADOW,
                    str(backed), "1M"], check=True)
    for body in ({"name": "x", "disks": [{"upload": "ID"}]}, {"name": "x", "upload": "ID"}):
        up = (await api.post("/v1/uploads", content=backed.read_bytes())).json()["upload"]
        url = "/v1/vms" if "disks" in body else "/v1/images"
        text = json.dumps(body).replace("ID", up)
        r = await api.post(url, content=text, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "backing file" in r.json()["message"], r.text
        assert not (tmp_path / "home" / "vms" / "x").exists()
        assert not (tmp_path / "home" / "images" / "x").exists()
        assert list((tmp_path / "home" / "uploads").iterdir()) == []


async def test_an_upload_over_the_limit_is_413_and_leaves_nothing(
        api: httpx.AsyncClient, tmp_path: Path) -> None:
    r = await api.post("/v1/uploads", content=bytes((1 << 20) + 1))
    assert r.status_code == 413 and "uploads.max_size" in r.json()["message"]

    async def unsized() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(40):
            yield bytes(32 << 10)

    r = await api.post("/v1/uploads", content=unsized())
    assert r.status_code == 413, r.text
    assert r.json()["kind"] == "too_large" and r.json()["limit"] == 1 << 20
    assert list((tmp_path / "home" / "uploads").iterdir()) == []
    r = await api.post("/v1/uploads", content=bytes(1 << 20))  # the limit itself is fine
    assert r.status_code == 201
    assert (await api.delete(f"/v1/uploads/{r.json()['upload']}")).status_code == 204
    assert list((tmp_path / "home" / "uploads").iterdir()) == []


async def test_downloads_of_an_export_and_a_saved_state(api: httpx.AsyncClient) -> None:
    assert (await api.post("/v1/vms", json={"name": "e", "disks": [{"size": "1M"}]})
            ).status_code == 201
    first = await api.post("/v1/vms/e/export")
    assert first.status_code == 200 and first.headers["content-type"] == "application/x-tar"
    assert int(first.headers["content-length"]) == len(first.content)
    info = json.loads(first.headers["x-corral-export"])
    assert info["vm"] == "e" and info["size"] == len(first.content)
    assert (await api.post("/v1/vms/e/export")).content == first.content
    r = await api.get("/v1/vms/e/state")
    assert r.status_code == 409 and "needs saved" in r.json()["message"]
    assert (await api.post("/v1/vms/nope/export")).status_code == 404


async def test_a_full_disk_during_an_upload_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from corral.errors import DiskFull
    from corral.service import uploads as uploads_mod

    store = uploads_mod.Uploads(tmp_path)
    real_write, calls = os.write, []

    def filling(fd: int, data: memoryview) -> int:
        calls.append(len(data))
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield bytes(1 << 20)

    monkeypatch.setattr(uploads_mod.os, "write", filling)
    with pytest.raises(DiskFull, match="is full"):
        await store.receive(body())
    assert list(store.dir.iterdir()) == []


def test_no_path_spelling_reaches_a_file_outside_the_allowed_directories(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from corral.errors import InvalidSpec
    from corral.service import hostpaths

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    (allowed / "sub" / "disk").write_bytes(b"in")
    (outside / "disk").write_bytes(b"out")
    (allowed / "out").symlink_to(outside)  # a directory link leading out
    (allowed / "sub" / "up").symlink_to("../..")
    (allowed / "sub" / "in").symlink_to("disk")  # a file link staying in
    monkeypatch.setenv("CORRAL_ALLOWED_PATHS", str(allowed))
    parts = st.sampled_from(["sub", "disk", "out", "up", "in", "..", ".", "", "allowed",
                             "outside"])

    @settings(max_examples=400, deadline=None)
    @given(st.lists(parts, min_size=1, max_size=6))
    def check(spelling: list[str]) -> None:
        text = str(allowed) + "/" + "/".join(spelling)
        try:
            real = hostpaths.check("disks.0.path", text, Paths(tmp_path / "home"))
        except InvalidSpec:
            return
        assert real.read_bytes() == b"in" and real.is_relative_to(allowed), text

    check()


async def test_the_daemons_own_files_are_never_a_clients_even_in_an_allowed_directory(
        api: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_ALLOWED_PATHS", str(tmp_path))  # holds the daemon's home
    r = await api.post("/v1/vms", json={"name": "a", "disks": [{"size": "1M"}]})
    other = r.json()["disks"][0]["path"]  # another VM's disk
    home = tmp_path / "home"
    for path in (other, str(home / "corral.db"), str(home / "images" / "tiny" / "vmlinux"),
                 str(home / "vms" / "a" / ".." / "a" / "vmstate.qcow2")):
        r = await api.post("/v1/vms", json={"name": "x", "disks": [{"path": path}]})
        assert r.status_code == 422 and "the daemon's own files" in r.json()["message"], path
    r = await api.post("/v1/vms", json={"name": "x", "kernel": str(home / "corral.db")})
    assert r.status_code == 422 and r.json()["kind"] == "path_not_allowed"
    assert [v["name"] for v in (await api.get("/v1/vms")).json()] == ["a"]

"""NoCloud seeds: written with pycdlib, read back with pycdlib."""

from __future__ import annotations

import io
from pathlib import Path

import pycdlib
import pytest
import yaml

from corral.errors import InvalidSpec
from corral.images.cloudinit import ISO_NAMES, LABEL, default_user_data, make_seed

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMz0wZ5b2Yl1p3Yv2Q user@host"


def read_iso(path: Path) -> tuple[str, dict[str, bytes], dict[str, bytes], list[str]]:
    """(volume label, files by Rock Ridge name, files by Joliet name, ISO 9660 names)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        rr: dict[str, bytes] = {}
        joliet: dict[str, bytes] = {}
        names = [child.file_identifier().decode()
                 for child in iso.list_children(iso_path="/")
                 if not (child.is_dot() or child.is_dotdot())]
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode()
            for table, kw in ((rr, {"rr_path": f"/{name}"}),
                              (joliet, {"joliet_path": f"/{name}"})):
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, **kw)
                table[name] = out.getvalue()
        assert iso.has_rock_ridge() and iso.has_joliet()
        return label, rr, joliet, sorted(names)
    finally:
        iso.close()


def test_seed_has_the_cidata_label_and_both_files(tmp_path: Path) -> None:
    user_data = default_user_data("web1", [KEY])
    seed = make_seed(tmp_path / "seed.iso", user_data=user_data,
                     meta_data={"instance-id": "iid-web1", "local-hostname": "web1"})
    assert seed == tmp_path / "seed.iso"
    label, rr, joliet, names = read_iso(seed)
    assert label == LABEL == "cidata"
    assert set(rr) == {"user-data", "meta-data"}
    assert rr == joliet                                   # same bytes under both name tables
    assert rr["user-data"].decode() == user_data
    assert yaml.safe_load(rr["meta-data"]) == {"instance-id": "iid-web1",
                                               "local-hostname": "web1"}
    assert ["/" + n for n in names] == sorted([ISO_NAMES["meta-data"], ISO_NAMES["user-data"]])
    assert [p.name for p in tmp_path.iterdir()] == ["seed.iso"]     # no temp file left


def test_seed_with_network_config_and_no_user_data(tmp_path: Path) -> None:
    net = "version: 2\nethernets:\n  id0:\n    match: {name: 'en*'}\n    dhcp4: true\n"
    seed = make_seed(tmp_path / "s.iso", user_data=None, meta_data={"instance-id": "i-1"},
                     network_config=net)
    _, rr, _, _ = read_iso(seed)
    assert rr["network-config"].decode() == net
    assert rr["user-data"] == b""


def test_seed_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "seed.iso"
    path.write_bytes(b"old")
    make_seed(path, user_data="#!/bin/sh\necho hi\n", meta_data={"instance-id": "x"})
    assert read_iso(path)[1]["user-data"] == b"#!/bin/sh\necho hi\n"


def test_seed_needs_an_instance_id(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="instance-id"):
        make_seed(tmp_path / "s.iso", user_data=None, meta_data={"local-hostname": "a"})
    assert not (tmp_path / "s.iso").exists()


@pytest.mark.parametrize(("user_data", "match"), [
    ("#cloud-config\nusers: [\n", "not valid YAML at line"),
    ("#cloud-config\n- a list\n", "must be a YAML mapping"),
    ("hostname: x\n", "must start with '#cloud-config'"),
])
def test_bad_user_data_is_refused_with_a_clear_error(tmp_path: Path, user_data: str,
                                                     match: str) -> None:
    with pytest.raises(InvalidSpec, match=match) as err:
        make_seed(tmp_path / "s.iso", user_data=user_data, meta_data={"instance-id": "i"})
    assert err.value.field == "user_data" and "\n" not in err.value.message


def test_bad_network_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="network_config"):
        make_seed(tmp_path / "s.iso", user_data=None, meta_data={"instance-id": "i"},
                  network_config="just text")


def test_default_user_data_is_cloud_config() -> None:
    text = default_user_data("db-2", [KEY + "\n", "  "], user="ops")
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert doc["hostname"] == "db-2" and doc["manage_etc_hosts"] is True
    (user,) = doc["users"]
    assert user["name"] == "ops"
    assert user["ssh_authorized_keys"] == [KEY]
    assert user["sudo"] == "ALL=(ALL) NOPASSWD:ALL" and user["lock_passwd"] is True


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"hostname": "bad_name", "ssh_keys": []}, "hostname"),
    ({"hostname": "-x", "ssh_keys": []}, "hostname"),
    ({"hostname": "ok", "ssh_keys": [], "user": "Root!"}, "user"),
    ({"hostname": "ok", "ssh_keys": ["ssh-ed25519 AAA\nssh-rsa BBB"]}, "ssh_keys"),
    ({"hostname": "ok", "ssh_keys": ["justonefield"]}, "ssh_keys"),
])
def test_default_user_data_refuses_bad_values(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        default_user_data(**kwargs)  # type: ignore[arg-type]
    assert err.value.field == field

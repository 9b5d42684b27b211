"""cloud-init NoCloud seeds: the small ISO that tells a cloud image who it is.

cloud-init's NoCloud datasource looks, at boot, for a filesystem labelled ``cidata`` (any
case) holding ``meta-data`` and ``user-data`` and, optionally, ``network-config``. Corral writes
that filesystem as an ISO 9660 image with pycdlib (pure Python, no ``genisoimage``; the host
kernel need not be able to mount iso9660 either) and attaches it read-only to the VM.

- ``meta-data`` is YAML with at least ``instance-id``. cloud-init runs its per-instance modules
  (users, keys, hostname, runcmd) once per instance-id, so a VM needs an id of its own:
  :func:`make_seed` refuses meta-data without one.
- ``user-data`` is usually a ``#cloud-config`` YAML document; that first line is what makes
  cloud-init read it as cloud-config. It may also be a shell script (``#!``) or a MIME
  multipart; those are written as given. cloud-config is parsed here first, so that a YAML
  mistake is a clear error now and not a silently unconfigured guest later.
- ``network-config`` (network config v1 or v2 YAML) is optional; without it the image's own
  network setup applies.

ISO names: ISO 9660 allows only upper-case 8.3 names (``/USERDATA.;1``); the names cloud-init
reads come from the Rock Ridge (``rr_name``) and Joliet (``joliet_path``) records, so every
file is added with all three. The image embeds its creation time, so two seeds are
byte-identical only within the same second.

How to attach the seed (q35, Debian's cloud kernel): as ``virtio-blk-pci`` with
``readonly=on``, or as ``scsi-cd`` on ``virtio-scsi-pci``. **Not** as ``ide-cd``: q35's AHCI
controller has no driver in the cloud kernel, the seed stays invisible, and cloud-init falls
back to ``DataSourceNone`` while ``cloud-init status`` still says ``done``. Check the datasource
(``cloud-init status --long`` names ``DataSourceNoCloud``), not only the status.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import pycdlib
import yaml

from corral.errors import InvalidSpec

LABEL = "cidata"
#: cloud-init's file name -> the ISO 9660 name of the same file.
ISO_NAMES = {"user-data": "/USERDATA.;1", "meta-data": "/METADATA.;1",
             "network-config": "/NETCONF.;1"}
_HOSTNAME_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def _check_yaml(field: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise InvalidSpec(field, f"not valid YAML{where}: {problem}") from err


def check_user_data(user_data: str) -> None:
    """Refuse ``#cloud-config`` user-data that is not a YAML mapping."""
    if user_data.startswith("#cloud-config"):
        doc = _check_yaml("user_data", user_data)
        if doc is not None and not isinstance(doc, dict):
            raise InvalidSpec("user_data", "#cloud-config must be a YAML mapping")
    elif user_data.strip() and not user_data.startswith(("#!", "Content-Type:", "#include")):
        raise InvalidSpec("user_data", "must start with '#cloud-config', '#!' (a script), "
                                       "'#include' or be MIME multipart")


def make_seed(path: Path, *, user_data: str | None, meta_data: dict[str, Any],
              network_config: str | None = None) -> Path:
    """Write a NoCloud seed ISO (volume label ``cidata``) to ``path`` and return ``path``.

    :param user_data: the ``user-data`` file as is; ``None`` writes an empty one.
    :param meta_data: written as YAML; must hold ``instance-id``. ``local-hostname`` sets the
        hostname when user-data does not.
    :param network_config: the ``network-config`` file as is (YAML), if any.
    :raises InvalidSpec: for meta-data without instance-id or YAML that does not parse.
    """
    if not str(meta_data.get("instance-id", "")).strip():
        raise InvalidSpec("meta_data", "needs an 'instance-id' (cloud-init runs per-instance "
                                       "modules once per id)")
    files = {"meta-data": yaml.safe_dump(meta_data, default_flow_style=False, sort_keys=True),
             "user-data": user_data or ""}
    check_user_data(files["user-data"])
    if network_config is not None:
        if not isinstance(_check_yaml("network_config", network_config), dict):
            raise InvalidSpec("network_config", "must be a YAML mapping (network config v1/v2)")
        files["network-config"] = network_config
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=LABEL,
            sys_ident="LINUX")
    for name, text in files.items():
        data = text.encode()
        iso.add_fp(io.BytesIO(data), len(data), ISO_NAMES[name], rr_name=name,
                   joliet_path=f"/{name}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        iso.write(str(tmp))
        iso.close()
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def default_user_data(hostname: str, ssh_keys: list[str], user: str = "corral") -> str:
    """A ``#cloud-config`` that sets the hostname (and ``/etc/hosts``) and creates ``user``
    with ``ssh_keys``, a locked password and passwordless sudo.

    :raises InvalidSpec: for a hostname that is not a DNS label, a bad user name, or a key
        that spans lines.
    """
    if not _HOSTNAME_RE.match(hostname):
        raise InvalidSpec("hostname", f"{hostname!r} is not a valid host name (letters, "
                                      "digits and '-', at most 63)")
    if not _USER_RE.match(user):
        raise InvalidSpec("user", f"{user!r} is not a valid user name")
    keys = [k.strip() for k in ssh_keys if k.strip()]
    for key in keys:
        if "\n" in key or len(key.split()) < 2:
            raise InvalidSpec("ssh_keys", f"not a single-line public key: {key[:40]!r}")
    doc = {
        "hostname": hostname,
        "manage_etc_hosts": True,
        "users": [{"name": user, "shell": "/bin/bash", "lock_passwd": True,
                   "sudo": "ALL=(ALL) NOPASSWD:ALL", "ssh_authorized_keys": keys}],
    }
    return "#cloud-config\n" + yaml.safe_dump(doc, default_flow_style=False, sort_keys=False)

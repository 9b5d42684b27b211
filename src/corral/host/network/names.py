"""Short, deterministic Linux names for everything the network layer makes.

Linux allows 15 characters in an interface name (``IFNAMSIZ`` is 16 with the NUL), so a name
cannot simply spell out its owners. Every name is a *prefix*, which says that Corral made the
object and what it is, followed by a *key* built from the owners' ids::

    kind      prefix    example         what
    bridge    crl-br-   crl-br-lan      the virtual switch of network "lan"
    tap       crl-t     crl-tweb.0      NIC 0 of VM "web" (QEMU opens it by name)
    leg       crl-vl    crl-vlgw.lan    veth joining router "gw" to the bridge of "lan"
    uplink    crl-vu    crl-vugw        veth from router "gw" to the host
    dhcp      crl-vd    crl-vdlan       veth of the DHCP/DNS namespace of "lan"
    vxlan     crl-vx    crl-vxlan       VXLAN port joining the bridge of "lan" to other hosts
    network   corral-n  corral-nlan     netns of dnsmasq, and the nft tables, of "lan"
    router    corral-r  corral-rgw      netns of router "gw", and its nft tables

Both ends of a veth pair carry the same name: the ends live in different namespaces.

The key is *readable* (the ids joined by dots) when every id is a lowercase name without dots
and the result is shorter than the room the prefix leaves. Otherwise it is a base32 hash that
fills exactly that room. So the two forms never meet (their lengths differ), two readable keys
differ whenever their ids do (ids contain no dots), and a hash that hits a name already in
``taken`` is salted and drawn again: names are unique as long as the caller passes every name
it has recorded. A name is made once and recorded; after a restart it is read back from the
store, never recomputed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Collection
from typing import Literal

from corral.errors import InvalidSpec

Kind = Literal["bridge", "tap", "leg", "uplink", "dhcp", "vxlan", "network", "router"]

MAX_LEN = 15
PREFIXES: dict[Kind, str] = {
    "bridge": "crl-br-",
    "tap": "crl-t",
    "leg": "crl-vl",
    "uplink": "crl-vu",
    "dhcp": "crl-vd",
    "vxlan": "crl-vx",
    "network": "corral-n",
    "router": "corral-r",
}
LINK_KINDS: tuple[Kind, ...] = ("bridge", "tap", "leg", "uplink", "dhcp", "vxlan")
NETNS_KINDS: tuple[Kind, ...] = ("network", "router")

_READABLE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_VALID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def make(kind: Kind, *ids: str | int, taken: Collection[str] = ()) -> str:
    """The name of a ``kind`` object owned by ``ids`` (for instance a VM name and a NIC index).

    Deterministic for the same ids and ``taken``; never longer than 15 characters; never in
    ``taken``.
    """
    prefix = PREFIXES[kind]
    room = MAX_LEN - len(prefix)
    parts = [str(i) for i in ids]
    readable = ".".join(parts)
    if all(_READABLE.match(p) for p in parts) and len(readable) < room:
        return prefix + readable  # cannot be taken by anything else: the key is injective
    salt = 0
    while True:
        digest = hashlib.sha256(json.dumps([kind, parts, salt]).encode()).digest()
        name = prefix + base64.b32encode(digest).decode().lower()[:room]
        if name not in taken:
            return name
        salt += 1


def check(field: str, name: str) -> str:
    """Return ``name`` if Linux accepts it as an interface or namespace name.

    :raises InvalidSpec: (naming ``field``) when it is longer than 15 characters or has
        characters such a name cannot have.
    """
    if len(name) > MAX_LEN:
        raise InvalidSpec(field, f"'{name}' is {len(name)} characters; at most {MAX_LEN}")
    if not _VALID.match(name):
        raise InvalidSpec(field, f"'{name}' may hold only letters, digits, '.', '_' and '-'")
    return name


def kind_of(name: str) -> Kind | None:
    """The kind whose prefix ``name`` carries, or None for a name Corral never makes."""
    for kind, prefix in PREFIXES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return kind
    return None

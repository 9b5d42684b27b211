"""What a NIC request means, checked before anything is planned (pure).

A VM's NIC is one of two kinds:

``user``
    QEMU's user-mode networking (slirp): the guest reaches out through QEMU's own NAT and
    needs no privilege, so it is what a daemon that does not run as root can offer. Host
    ports reach the guest through ``hostfwd`` rules, written as QEMU writes them::

        tcp:8022-:22                 host port 8022 on the host's loopback -> guest port 22
        tcp:0.0.0.0:8080-:80         on every host address (only when asked)
        udp:192.0.2.7:5353-10.0.2.15:53   one host address, to one guest address

    A forward binds 127.0.0.1 unless an address is given, so a guest's port is not open to
    the network by accident. :func:`parse_hostfwd` checks one and gives the canonical form
    QEMU accepts (``tcp:127.0.0.1:8022-:22``).
``network``
    a port on one of Corral's virtual networks (a tap on the network's bridge), with an
    address the network hands out by DHCP: a fixed one when ``ip`` is given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address

from corral.errors import InvalidSpec

LOOPBACK = "127.0.0.1"  # where a forward binds unless an address is given
_HOSTFWD = re.compile(r"^(tcp|udp):(?:([0-9.]*):)?(\d+)-([0-9.]*):(\d+)$")


@dataclass(frozen=True)
class HostFwd:
    """One user-mode port forward: ``proto`` ``host_addr``:``host_port`` -> the guest's
    ``guest_addr``:``guest_port`` (an empty guest address: the guest's own)."""

    proto: str
    host_addr: str
    host_port: int
    guest_addr: str
    guest_port: int

    def qemu(self) -> str:
        """The rule as QEMU's ``hostfwd=`` takes it."""
        return (f"{self.proto}:{self.host_addr}:{self.host_port}-"
                f"{self.guest_addr}:{self.guest_port}")


def parse_hostfwd(field: str, text: str) -> HostFwd:
    """``tcp:[HOSTADDR:]HOSTPORT-[GUESTADDR]:GUESTPORT`` as a :class:`HostFwd`.

    :raises InvalidSpec: (naming ``field``) when it is malformed, a port is out of range or
        an address is not IPv4.
    """
    m = _HOSTFWD.match(text.strip().lower())
    if m is None:
        raise InvalidSpec(field, f"'{text}' is not a port forward; write it as "
                                 "tcp:HOSTPORT-:GUESTPORT, e.g. tcp:8022-:22")
    proto, host_addr, host_port, guest_addr, guest_port = m.groups()
    for addr in (host_addr or "", guest_addr):
        if addr:
            try:
                IPv4Address(addr)
            except ValueError as err:
                raise InvalidSpec(field, f"'{addr}' in '{text}' is not an IPv4 address") from err
    for port in (host_port, guest_port):
        if not 0 < int(port) < 65536:
            raise InvalidSpec(field, f"{port} in '{text}' is not a port number (1-65535)")
    return HostFwd(proto, host_addr or LOOPBACK, int(host_port), guest_addr, int(guest_port))


def check_nic(field: str, mode: str | None, network: str | None, ip: str | None,
              hostfwd: list[str]) -> str:
    """The mode of a NIC request (``network`` when a network is named, else ``user``) once
    its fields agree with it.

    :raises InvalidSpec: (naming ``field`` and the option) when they do not, or a value is
        malformed.
    """
    mode = mode or ("network" if network else "user")
    if mode == "user":
        if network or ip:
            raise InvalidSpec(f"{field}.{'network' if network else 'ip'}",
                              "a user-mode NIC has no network or fixed address; name a "
                              "network instead of 'user' (--nic NET,ip=…)")
        for i, rule in enumerate(hostfwd):
            parse_hostfwd(f"{field}.hostfwd.{i}", rule)
        return mode
    if not network:
        raise InvalidSpec(f"{field}.network", "a network NIC needs the network's name")
    if hostfwd:
        raise InvalidSpec(f"{field}.hostfwd", "port forwards of a network NIC go through "
                                              "its router: corral router forward")
    if ip is not None:
        try:
            IPv4Address(ip)
        except ValueError as err:
            raise InvalidSpec(f"{field}.ip", f"'{ip}' is not an IPv4 address") from err
    return mode

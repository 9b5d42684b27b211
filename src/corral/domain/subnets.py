"""What a network's subnet may be (pure): checked when a network is planned, and at the plan
of a stack that makes one, before anything is made."""

from __future__ import annotations

from ipaddress import IPv4Network

from corral.errors import InvalidSpec

MAX_PREFIX = 29  # gateway, DHCP server and four NICs
# ranges no switch can carry: Linux drops them as martians, or they are not unicast
UNUSABLE = {IPv4Network("0.0.0.0/8"): "'this network' space (0.0.0.0/8)",
            IPv4Network("127.0.0.0/8"): "loopback space",
            IPv4Network("224.0.0.0/4"): "multicast space",
            IPv4Network("240.0.0.0/4"): "reserved space (240.0.0.0/4)"}


def parse_subnet(subnet: str) -> IPv4Network:
    """``subnet`` as an IPv4 network of at least /29.

    :raises InvalidSpec: (field ``subnet``) when it is not one.
    """
    try:
        net = IPv4Network(subnet, strict=True)
    except ValueError as err:
        raise InvalidSpec("subnet", f"'{subnet}' is not an IPv4 network: {err}") from err
    if net.prefixlen > MAX_PREFIX:
        raise InvalidSpec("subnet", f"{net} is too small; use /{MAX_PREFIX} or larger")
    for space, what in UNUSABLE.items():
        if net.overlaps(space):
            raise InvalidSpec("subnet", f"{net} is in {what}, which no network can carry; use "
                                        "a private range (10.0.0.0/8, 172.16.0.0/12 or "
                                        "192.168.0.0/16)")
    return net

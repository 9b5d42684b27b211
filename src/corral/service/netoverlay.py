"""This host's copy of the cluster's networks (see :mod:`corral.service.overlaynets` for
what is done with it): the shared tables, and what they held at the last look."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Address

from corral.host.network import Port
from corral.store.cluster import cluster_engine
from corral.store.clusternets import ClusterNets, ClusterNetwork, Reservation


def underlay_of(address: str) -> IPv4Address | None:
    """The IPv4 address of ``HOST[:PORT]`` (this host's cluster address), or None."""
    host = address.rpartition(":")[0] if address.count(":") == 1 else address
    host = host.strip("[]")
    if not host or host in ("0.0.0.0", "::"):
        return None
    try:
        return IPv4Address(socket.gethostbyname(host))
    except (OSError, ValueError):
        return None


def join(cluster: tuple[str, str], endpoint: tuple[str, str] | None) -> Overlay:
    """This host's part in the cluster's networks (``cluster``: the store's URL and this
    host's name); its underlay is the address peers reach it at."""
    from corral import settings

    address = str(settings.value("cluster.address") or (endpoint[0] if endpoint else ""))
    url, host = cluster
    return Overlay(ClusterNets(cluster_engine(url, host)), host, underlay_of(address))


class Overlay:
    """This host's part in the cluster's networks: the shared tables and a copy of them,
    read again on each heartbeat and before each plan."""

    def __init__(self, store: ClusterNets, host: str, underlay: IPv4Address | None) -> None:
        self.store = store
        self.host = host
        self.underlay = underlay
        self.networks: dict[str, ClusterNetwork] = {}
        self.reservations: list[Reservation] = []
        self.carriers: dict[str, dict[str, str]] = {}
        self.served: dict[str, tuple[Port, ...]] = {}  # home: what its dnsmasq was given
        self.syncing = asyncio.Lock()

    def refresh(self) -> None:
        snap = self.store.snapshot()
        self.networks, self.reservations = snap["networks"], snap["ports"]
        self.carriers = snap["carriers"]

    def ports(self, network: str) -> list[Reservation]:
        return [r for r in self.reservations if r.port.network == network]

    def close(self) -> None:
        self.store.close()

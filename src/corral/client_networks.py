"""The network calls of ``corral.Client``: virtual networks, routers, their forwards, firewall
rules and VMs' NICs (the routes of :mod:`corral.api.networks` and :mod:`corral.api.routers`)."""

from __future__ import annotations

from corral.wire import Connection, integer, seg

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    import builtins

    from corral import views


class NetworkCalls(Connection):
    def network_create(self, name: str, subnet: str, dhcp: bool = True,
                       isolated: bool = False) -> views.Network:
        """A virtual switch on ``subnet`` with DHCP and DNS (``NAME.corral``) unless
        ``dhcp=False``; ``isolated``: no router may join it."""
        seg(name)
        out: views.Network = self.request("POST", "/networks", {
            "name": name, "subnet": subnet, "dhcp": dhcp, "isolated": isolated})
        return out

    def network_list(self) -> builtins.list[views.Network]:
        out: builtins.list[views.Network] = self.request("GET", "/networks")
        return out

    def network_show(self, name: str) -> views.Network:
        """One network, with each port's DHCP lease and rx/tx counters."""
        out: views.Network = self.request("GET", f"/networks/{seg(name)}")
        return out

    def network_rm(self, name: str, force: bool = False) -> builtins.list[str]:
        """Remove a network; ``force`` first detaches what uses it. Returns what ``force``
        removed.

        :raises InUse: NICs or a router use it (and ``force`` is False).
        """
        out = self.request("DELETE", f"/networks/{seg(name)}", force=force or None)
        return list(out["removed"]) if out else []

    def network_delete(self, name: str) -> None:
        self.network_rm(name)

    def network_policy(self, name: str, policy: str) -> views.Network:
        """What happens to traffic to the network's VMs that no rule allows."""
        out: views.Network = self.request("PUT", f"/networks/{seg(name)}/policy",
                                          {"policy": policy})
        return out

    def topology(self, format: str = "text") -> str:
        """Switches, routers and VMs as a text tree, or as a Graphviz graph (``dot``)."""
        return self.raw_request("GET", "/topology", format=format).decode()

    def router_create(self, name: str, uplink: bool = False) -> views.Router:
        seg(name)
        out: views.Router = self.request("POST", "/routers", {"name": name, "uplink": uplink})
        return out

    def router_list(self) -> builtins.list[views.Router]:
        out: builtins.list[views.Router] = self.request("GET", "/routers")
        return out

    def router_show(self, name: str) -> views.Router:
        out: views.Router = self.request("GET", f"/routers/{seg(name)}")
        return out

    def router_rm(self, name: str, force: bool = False) -> builtins.list[str]:
        """Remove a router; ``force`` first detaches its legs and forwards. Returns what
        ``force`` removed.

        :raises InUse: it still has legs (and ``force`` is False).
        """
        out = self.request("DELETE", f"/routers/{seg(name)}", force=force or None)
        return list(out["removed"]) if out else []

    def router_delete(self, name: str) -> None:
        self.router_rm(name)

    def router_attach(self, name: str, network: str) -> views.Router:
        seg(network, "network")
        out: views.Router = self.request("POST", f"/routers/{seg(name)}/networks",
                                         {"network": network})
        return out

    def router_detach(self, name: str, network: str) -> views.Router:
        out: views.Router = self.request(
            "DELETE", f"/routers/{seg(name)}/networks/{seg(network, 'network')}")
        return out

    def forward_add(self, router: str, proto: str, host_port: int, vm: str, port: int
                    ) -> views.Forward:
        """Publish ``vm``:``port`` on host port ``host_port`` through ``router``'s uplink."""
        seg(vm, "vm")
        out: views.Forward = self.request("POST", f"/routers/{seg(router)}/forwards", {
            "proto": proto, "host_port": integer(host_port, "host_port", 1, 65535), "vm": vm,
            "port": integer(port, "port", 1, 65535)})
        return out

    def forward_list(self) -> builtins.list[views.Forward]:
        out: builtins.list[views.Forward] = self.request("GET", "/forwards")
        return out

    def forward_rm(self, router: str, proto: str, host_port: int) -> None:
        port = integer(host_port, "host_port", 1, 65535)
        self.request("DELETE", f"/routers/{seg(router)}/forwards/{seg(proto, 'proto')}/"
                               f"{port}")

    forward_delete = forward_rm

    def firewall_add(self, target: str, allow: str, source: str = "0.0.0.0/0"
                     ) -> views.FirewallRule:
        """Allow ``allow`` (``tcp/22``) from ``source`` to a network's VMs or to one VM."""
        out: views.FirewallRule = self.request("POST", "/firewall/rules", {
            "target": target, "allow": allow, "from": source})
        return out

    def firewall_list(self) -> views.Firewall:
        out: views.Firewall = self.request("GET", "/firewall")
        return out

    def firewall_rm(self, rule_id: int) -> None:
        self.request("DELETE", f"/firewall/rules/{integer(rule_id, 'id', 1, (1 << 63) - 1)}")

    firewall_delete = firewall_rm

    def attach_nic(self, vm: str, network: str, mac: str | None = None,
                   ip: str | None = None) -> views.VM:
        """A NIC on ``network``; a running q35 VM gets it at once (hot-plug)."""
        seg(network, "network")
        out: views.VM = self.request("POST", f"/vms/{seg(vm)}/nics", {
            "network": network, "mac": mac, "ip": ip})
        return out

    def detach_nic(self, vm: str, nic: str) -> views.VM:
        out: views.VM = self.request("DELETE", f"/vms/{seg(vm)}/nics/{seg(nic, 'nic')}")
        return out

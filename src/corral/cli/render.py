"""Human output for the CLI: tables and detail views. Stdlib only."""

from __future__ import annotations

import time

from corral.errors import InvalidSpec

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n >> 20}M"


def state(vm: Mapping[str, Any]) -> str:
    s = str(vm["state"])
    if s == "running" and vm.get("ready"):
        return "running and ready"
    return s


def brief(vm: Mapping[str, Any]) -> str:
    return f"{vm['cpus']} vCPU, {_mib(vm['memory_bytes'])}, {vm.get('image') or 'kernel'}"


def _secs(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}s"


def vm_table(vms: Sequence[Mapping[str, Any]]) -> str:
    """The VMs; with a HOST column when they carry one (a cluster)."""
    cluster = any("host" in vm for vm in vms)
    rows = [("NAME", *(("HOST",) if cluster else ()), "STATE", "READY", "CPUS", "MEMORY",
             "PID", "UPTIME")]
    for vm in vms:
        up = vm.get("uptime_seconds")
        host = (vm.get("host") or "-",) if cluster else ()
        rows.append((vm["name"], *host, vm["state"], "yes" if vm.get("ready") else "-",
                     str(vm["cpus"]), _mib(vm["memory_bytes"]), str(vm.get("pid") or "-"),
                     "-" if up is None else f"{up:.0f}s"))
    return _table(rows)


def host_table(hosts: Sequence[Mapping[str, Any]]) -> str:
    """The cluster's hosts: state, leader, allocation ratios, VM count, labels."""
    rows = [("NAME", "STATE", "LEADER", "CPU", "MEMORY", "VMS", "ACCEL", "ADDRESS", "LABELS")]
    for h in hosts:
        ratio = h["allocation_ratio"]
        rows.append((h["name"], h["state"], "yes" if h["leader"] else "-",
                     f"{ratio['cpus']:.0%} of {h['cpus']}",
                     f"{ratio['memory']:.0%} of {_mib(h['memory_bytes'])}", str(h["vms"]),
                     h["accel"], h["address"] or "-",
                     ",".join(f"{k}={v}" for k, v in h["labels"].items()) or "-"))
    return _table(rows)


def placement(p: Mapping[str, Any]) -> str:
    """Where a VM went and why each host was or was not chosen."""
    lines = [f"{p['vm']} is on {p['host'] or '(no host yet: queued)'}; placement weigher: "
             f"{p['weigher']}"]
    width = max((len(h) for h in p["hosts"]), default=0)
    lines += [f"  {h.ljust(width)}  {why}" for h, why in p["hosts"].items()]
    return "\n".join(lines)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def vm_detail(vm: Mapping[str, Any]) -> str:
    lines = [
        ("name", vm["name"]), ("project", vm.get("project") or "default"),
        ("state", state(vm)),
        *((("host", vm["host"] or "- (queued)"),) if "host" in vm else ()),
        *((("last known state", vm["last_state"]),) if "last_state" in vm else ()),
        ("qemu status", vm.get("qemu_status") or "-"),
        ("accelerator", vm.get("accel") or "-"),
        ("pid", vm.get("pid") or "-"), ("vcpus", vm["cpus"]),
        ("memory", _mib(vm["memory_bytes"])), ("machine", vm.get("machine") or "-"),
        ("image", vm.get("image") or "-"), ("uptime", _secs(vm.get("uptime_seconds"))),
        ("start to ready", _secs(vm.get("boot_seconds"))),
    ]
    for i, n in enumerate(vm.get("nics", [])):
        lines.append(("nic", nic(n, i)))
    for disk in vm.get("disks", []):
        lines.append(("disk", f"{disk['path']} ({disk['format']}"
                              f"{', read-only' if disk['readonly'] else ''})"))
    if vm.get("exit_reason"):
        lines.append(("last exit", vm["exit_reason"]))
    if vm.get("last_migration"):
        lines.append(("last migration", migrated(vm["last_migration"])))
    if vm.get("confinement"):
        lines.append(("confinement", confinement(vm["confinement"])))
    if vm.get("console_socket"):
        lines.append(("console", f"corral console {vm['name']}"))
    if vm.get("serial_log"):
        lines.append(("serial log", vm["serial_log"]))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in lines)


def migrated(m: Mapping[str, Any]) -> str:
    """A VM's last live migration: from where, when, encrypted or not."""
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(m["at"])))
    how = "encrypted (QEMU TLS)" if m.get("encrypted") else "UNENCRYPTED (in clear)"
    return f"from {m['source']} at {at}, {how}"


def confinement(c: Mapping[str, Any]) -> str:
    """What confines a VM's QEMU, as ``/proc`` tells it."""
    limits = [f"memory {_mib(c.get('memory_limit_bytes'))}" if c.get("memory_limit_bytes")
              else "no memory limit",
              f"pids {c['pids_max']}" if c.get("pids_max") else "no pids limit"]
    return ", ".join([f"user {c['user']} (uid {c['uid']})", f"seccomp {c['seccomp']}",
                      "private home" if c.get("private_home") else "whole home", *limits])


def disk_table(disks: Sequence[Mapping[str, Any]]) -> str:
    rows = [("NAME", "FORMAT", "SIZE", "USED", "ATTACHED TO")]
    for d in disks:
        rows.append((d["name"], d["format"], _mib(d.get("size_bytes")),
                     _mib(d.get("allocated_bytes")), d.get("vm") or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def read_text_file(field: str, path: str) -> str:
    """:raises InvalidSpec: when the file cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidSpec(field, f"cannot read '{path}': {getattr(err, 'strerror', err)}") \
            from err


def parse_cpus(text: str) -> list[int]:
    """``0,2-3`` -> [0, 2, 3]."""
    cpus: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            cpus.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError as err:
        raise InvalidSpec("pin", f"'{text}' is not a CPU list like 0,2-3") from err
    return cpus


def queue_table(entries: Sequence[Mapping[str, Any]]) -> str:
    if not entries:
        return "the queue is empty"
    rows = [("POS", "VM", "OWNER", "CPUS", "MEMORY", "PRIORITY", "EXPECTED", "WAITING")]
    for e in entries:
        exp = e.get("expected_runtime")
        rows.append((str(e["position"]), e["vm"], e["owner"], str(e["cpus"]),
                     _mib(e["memory_bytes"]), f"{e['effective_priority']:g}",
                     "-" if exp is None else f"{exp:g}s", f"{e['waiting_seconds']:.1f}s"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def snapshot_tree(snaps: Sequence[Mapping[str, Any]]) -> str:
    if not snaps:
        return "no snapshots"
    lines = []
    for s in snaps:
        kind = "memory+disk" if s["memory"] else "disk"
        mark = "  <- current" if s.get("current") else ""
        lines.append(f"{'  ' * s['depth']}{s['name']}  ({kind}, {s['vm_state']}){mark}")
    return "\n".join(lines)


def _capacity(sched: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    if not sched:
        return []
    cap = sched["capacity"]
    lines = []
    for kind, ratio_key in (("cpus", "cpu"), ("memory", "memory"), ("disk", "disk")):
        fmt = str if kind == "cpus" else _mib
        lines.append((f"{kind} allocated", f"{fmt(cap['allocated'][kind])} of "
                      f"{fmt(cap['total'][kind])} (overcommit {cap['overcommit'][ratio_key]:g}: "
                      f"capacity {fmt(cap['capacity'][kind])}, free {fmt(cap['free'][kind])}, "
                      f"allocation ratio {cap['allocation_ratio'][kind]:.2f})"))
    lines.append(("queue", f"{sched['queued']} waiting, policy {sched['policy']}"
                           + (" with backfill" if sched["backfill"] else "")))
    return lines


def host(info: Mapping[str, Any]) -> str:
    lines = [
        ("cpus", info["cpus"]),
        ("memory", f"{info['memory_bytes'] >> 20} MiB ({info['memory_available_bytes'] >> 20} "
                   "MiB available)"),
        ("accelerator", f"{info['accel']}: {info['accel_reason']}"),
        ("qemu", info.get("qemu_version") or "not installed"),
        ("data directory", info.get("home", "-")),
        *_capacity(info.get("scheduler")),
        ("vms", f"{info.get('vms', 0)} ({info.get('vms_running', 0)} running)"),
    ]
    conf = info.get("confinement")
    if conf:
        lines.append(("qemu confined", ", ".join(
            [f"user {conf['user'] or 'of the daemon'}",
             "seccomp filter" if conf["seccomp"] else "no seccomp",
             "private home" if conf["private_home"] else "whole home"] +
            ([f"memory guest+{_mib(conf['memory_overhead_bytes'])}, pids "
              f"{conf['pids_max']}"] if conf["cgroup_limits"] else []) +
            (["host ports closed to guests"] if conf.get("host_guard") else []))))
        for part, why in conf.get("off", {}).items():
            lines.append((f"no {part.replace('_', ' ')}", why))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in lines)


def _kv(field: str, text: str, first_key: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, part in enumerate(p for p in text.split(",") if p):
        key, eq, value = part.partition("=")
        if not eq:
            if i == 0:
                key, value = first_key, part
            else:
                raise InvalidSpec(field, f"'{part}' in '{text}' is not key=value")
        out[key.strip()] = value.strip()
    return out


def parse_disk(text: str) -> dict[str, Any]:
    """``1G`` | ``size=1G[,format=raw]`` | ``file=FILE[,format=..][,readonly=on]`` (an image
    sent to the daemon, which becomes the VM's own disk) | ``path=FILE[,...]`` (used in
    place, where the daemon's host allows it)."""
    kv = _kv("disk", text, "size")
    disk: dict[str, Any] = {}
    for key, value in kv.items():
        if key in ("size", "path", "file", "format"):
            disk[key] = value
        elif key == "readonly":
            disk[key] = value.lower() in ("on", "yes", "true", "1")
        else:
            raise InvalidSpec("disk", f"unknown option '{key}'; use size, file, path, format "
                                      "or readonly")
    return disk


def parse_nic(text: str) -> dict[str, Any]:
    """``user[,mac=52:54:00:..][,hostfwd=tcp:8022-:22]...`` (user-mode networking; forwards
    repeat) or ``NET[,mac=..][,ip=10.20.0.5]`` (a port on the network NET)."""
    head, *rest = text.split(",")
    nic: dict[str, Any] = {}
    if "=" in head:
        rest.insert(0, head)
    elif head == "user":
        nic["mode"] = "user"
    elif head:
        nic["network"] = head
    forwards: list[str] = []
    for part in rest:
        key, eq, value = (x.strip() for x in part.partition("="))
        if not eq:
            raise InvalidSpec("nic", f"'{part}' in '{text}' is not key=value")
        if key not in ("mode", "network", "mac", "ip", "hostfwd"):
            raise InvalidSpec("nic", f"unknown option '{key}'; use mac, ip or hostfwd")
        if key == "hostfwd":
            forwards.append(value)
        else:
            nic[key] = value
    if forwards:
        nic["hostfwd"] = forwards
    return nic


def human_bytes(n: int) -> str:
    """1536 -> 1.5K (powers of 1024)."""
    value, unit = float(n), ""
    for bigger in ("K", "M", "G", "T"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f}{unit}" if unit else str(n)


def counters(c: dict[str, int]) -> str:
    """rx/tx bytes and packets, as the guest sees them."""
    return (f"rx {human_bytes(c['rx_bytes'])}B/{c['rx_packets']}p "
            f"tx {human_bytes(c['tx_bytes'])}B/{c['tx_packets']}p")


def nic(n: Mapping[str, Any], index: int) -> str:
    """One NIC of ``corral show``: where it is, its addresses and counters."""
    parts = [n.get("id") or f"nic{index}"]
    if n.get("mode") == "network":
        parts += [f"network {n['network']}", f"ip {n.get('ip') or '-'}"]
        if n.get("lease"):
            parts.append(f"lease {n['lease']}")
    else:
        parts += ["user-mode", *n.get("hostfwd", [])]
    parts.append(f"mac {n['mac']}")
    if n.get("guest_interface"):
        parts.append(f"{n['guest_interface']} {' '.join(n.get('guest_addresses', []))}")
    if n.get("counters"):
        parts.append(counters(n["counters"]))
    return "  ".join(parts)

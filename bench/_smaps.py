"""Where a QEMU's memory goes, from ``/proc/PID/smaps``: each mapping put in one part
(the QEMU binary, its libraries, guest RAM, the TCG translation buffer, the heap and the
other anonymous memory), with its RSS, PSS and anonymous (private, written) KiB."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PARTS = ("guest RAM", "TCG buffer", "binary", "libraries", "heap", "other anon", "other file")


@dataclass
class Part:
    rss: int = 0        # KiB
    pss: int = 0
    anon: int = 0       # private pages (written, or never file-backed)
    mappings: int = 0


def _part(header: str, guest_bytes: int) -> str:
    fields = header.split(None, 5)
    start, _, end = fields[0].partition("-")
    size = int(end, 16) - int(start, 16)
    perms, path = fields[1], (fields[5].strip() if len(fields) > 5 else "")
    if path.endswith("/ram") or path.startswith("/memfd:") or (not path and size == guest_bytes):
        return "guest RAM"
    if "qemu-system" in path:
        return "binary"
    if ".so" in path:
        return "libraries"
    if path == "[heap]":
        return "heap"
    if not path and perms.startswith("rwx"):
        return "TCG buffer"
    if not path or path.startswith("["):
        return "other anon"
    return "other file"


def breakdown(pid: int, guest_bytes: int) -> dict[str, Part]:
    """The parts of ``pid``'s memory; ``guest_bytes``: the guest's RAM size (an anonymous
    mapping of exactly that size is its RAM)."""
    parts = {name: Part() for name in PARTS}
    current: Part | None = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        key, _, rest = line.partition(":")
        first = line.split(None, 1)[0]
        if "-" in first and not first.endswith(":"):  # a header: "start-end perms ..."
            current = parts[_part(line, guest_bytes)]
            current.mappings += 1
        elif current is not None and key in ("Rss", "Pss", "Anonymous"):
            value = int(rest.split()[0])
            if key == "Rss":
                current.rss += value
            elif key == "Pss":
                current.pss += value
            else:
                current.anon += value
    return parts


def render(parts: dict[str, Part]) -> str:
    lines = [f"  {'part':12}{'RSS MiB':>9}{'PSS MiB':>9}{'anon MiB':>10}"]
    for name, p in parts.items():
        lines.append(f"  {name:12}{p.rss / 1024:>9.1f}{p.pss / 1024:>9.1f}{p.anon / 1024:>10.1f}")
    total = Part(sum(p.rss for p in parts.values()), sum(p.pss for p in parts.values()),
                 sum(p.anon for p in parts.values()))
    lines.append(f"  {'total':12}{total.rss / 1024:>9.1f}{total.pss / 1024:>9.1f}"
                 f"{total.anon / 1024:>10.1f}")
    return "\n".join(lines)

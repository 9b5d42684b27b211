"""Is anything of Corral's networks left on this machine?

Looked for with the system's own tools rather than with the code under test: interfaces of
the host whose names start with ``crl-``, named network namespaces ``corral-*``, nft tables
``corral*`` in the host's ruleset (but the host guards, ``corral-qemu-*``), and live (not
zombie) dnsmasq processes whose command line names an interface ``crl-*``. Everything
inside a leftover namespace counts through it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

NETNS_DIR = Path("/run/netns")


def network_leftovers() -> list[str]:
    """One line per leftover object."""
    found: list[str] = []
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True,
                                      text=True, check=True).stdout)
    found += [f"link {link['ifname']}" for link in links
              if link["ifname"].startswith("crl-")]
    if NETNS_DIR.is_dir():
        found += [f"netns {p.name}" for p in NETNS_DIR.iterdir()
                  if p.name.startswith("corral-")]
    out = subprocess.run(["nft", "-j", "list", "tables"], capture_output=True, text=True,
                         check=True).stdout
    tables = json.loads(out)["nftables"] if out.strip() else []
    # (a daemon's host guard, corral-qemu-<tag>, is QEMU's confinement, not a network: it
    # stays engine.guard_linger seconds after the last QEMU; conftest.assert_nothing_left
    # checks it is gone once its daemon has stopped)
    found += [f"nft table {t['table']['family']} {t['table']['name']}" for t in tables
              if "table" in t and t["table"]["name"].startswith("corral")
              and not t["table"]["name"].startswith("corral-qemu-")]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and argv[0].endswith(b"dnsmasq") \
                and any(a.startswith(b"--interface=crl-") for a in argv):
            found.append(f"dnsmasq pid {proc.name}")
    return found


def assert_no_network_leftovers() -> None:
    leftovers = network_leftovers()
    assert leftovers == [], f"Corral network objects left behind: {leftovers}"

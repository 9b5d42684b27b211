"""Corral: a virtual machine manager on QEMU.

``from corral import Client`` talks to the daemon (``corral serve``). Imports are lazy so the
CLI starts in milliseconds.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is slow to import; keep `import corral` cheap

__version__ = "0.1.0"
__all__ = ["Client", "__version__"]

if TYPE_CHECKING:
    from corral.client import Client as Client


def __getattr__(name: str) -> object:
    if name == "Client":
        from corral.client import Client

        return Client
    raise AttributeError(name)

"""Open a VM's tap as root, for QEMU to use through the descriptor: QEMU itself never opens
``/dev/net/tun``, so it can attach no other tap on the host."""

from __future__ import annotations

import fcntl
import os
import struct

from corral.errors import CorralError

_TUNSETIFF = 0x400454CA
_IFF_TAP, _IFF_NO_PI, _IFF_VNET_HDR = 0x0002, 0x1000, 0x4000


def open_tap(name: str) -> int:
    """A descriptor attached to the (persistent) tap ``name``, with virtio-net headers.

    :raises CorralError: when the tap cannot be opened (missing, or held by another QEMU).
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(),
                                                _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR))
    except OSError as err:
        os.close(fd)
        raise CorralError(f"cannot open the tap {name}: {err.strerror}") from err
    return fd

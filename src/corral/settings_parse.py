"""How a setting's text becomes its value (:mod:`corral.settings` declares which setting
uses which). Each parser raises ``ValueError`` with the reason; the registry adds where the
text came from. Stdlib only."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def _float(lo: float, hi: float) -> Callable[[str], float]:
    """A number from ``lo`` to ``hi`` (a quantum of 0 s, or a ratio of 1e308 that overflowed
    the capacity sums, were taken before)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"'{text}' is not a number") from None
        if not lo <= value <= hi:  # (nan is neither)
            raise ValueError(f"{text} is out of range; give {lo:g} to {hi:g}")
        return value
    return parse


def _int(lo: int, hi: int) -> Callable[[str], int]:
    """A whole number from ``lo`` to ``hi``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"'{text}' is not a whole number") from None
        if not lo <= value <= hi:
            raise ValueError(f"{text} is out of range; give {lo} to {hi}")
        return value
    return parse


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _str(text: str) -> str:
    return text


def _paths(text: str) -> list[str]:
    return [p for p in text.split(":") if p]


def _listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` on a loopback address: the page's listener is plain HTTP (with tokens),
    so it is served only where the host's own users reach it; remote access is over TLS
    (``api.listen``)."""
    import ipaddress

    host, sep, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8470")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError("only a loopback address (127.0.0.1, ::1); use api.listen (TLS) "
                         "to serve other hosts")
    return host, int(port)


def _accel(text: str) -> str:
    low = text.strip().lower()
    if low not in ("", "kvm", "tcg"):
        raise ValueError("not an accelerator; use kvm or tcg")
    return low


def _labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ValueError(f"'{item}' is not key=value")
        out[key] = val
    return out


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return text
    return parse

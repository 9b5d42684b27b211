"""Every setting of the daemon, declared once: its key, its environment variable, how its
value is parsed, its default, one line of help, and whether it may change while the daemon
runs. Stdlib only: the CLI imports this on its lean path.

A setting's value comes from, in rising precedence: its default, the configuration file,
the environment, a command-line flag, and (for ``live`` settings) a change made at run
time. :func:`value` reads the layers that exist so far; new code reads settings only
through it, never ``os.environ`` directly, so that ``corral config show`` can tell every
value in force and where it came from.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing is slow to import; the CLI reads settings on its lean path
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any


class SettingError(ValueError):
    """A setting's value cannot be parsed: the message names the setting and the reason."""


def _float(text: str) -> float:
    return float(text)


def _int(text: str) -> int:
    return int(text)


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _str(text: str) -> str:
    return text


def _size(text: str) -> int:
    from corral.domain.sizes import parse_size

    return parse_size("size", text)


def _paths(text: str) -> list[str]:
    return [p for p in text.split(":") if p]


def _listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` on a loopback address: until tokens exist, the page and the API it
    calls are served only where the host's own users reach them."""
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
        raise ValueError("only a loopback address (127.0.0.1, ::1) until the API has tokens")
    return host, int(port)


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return text
    return parse


class Setting:
    """One setting. (A plain class: ``dataclasses`` is slow to import.)"""

    def __init__(self, key: str, env: str | None, parse: Callable[[str], Any], default: Any,
                 doc: str, live: bool = False) -> None:
        self.key = key
        self.env = env
        self.parse = parse
        self.default = default
        self.doc = doc
        self.live = live

    def from_text(self, text: str, where: str) -> Any:
        try:
            return self.parse(text)
        except (ValueError, TypeError) as err:
            raise SettingError(f"{where}: {self.key} = {text!r}: {err}") from err


SETTINGS: dict[str, Setting] = {}


def declare(key: str, env: str | None, parse: Callable[[str], Any], default: Any, doc: str,
            live: bool = False) -> Setting:
    setting = Setting(key, env, parse, default, doc, live)
    SETTINGS[key] = setting
    return setting


# where things live (None: computed from the user and the home, see corral.config)
declare("home", "CORRAL_HOME", _str, None,
        "the data directory (/var/lib/corral as root, ~/.local/share/corral otherwise)")
declare("socket", "CORRAL_SOCKET", _str, None, "the daemon's unix socket (HOME/corral.sock)")
declare("images.path", "CORRAL_IMAGE_PATH", _paths, [],
        "read-only image directories searched after HOME/images (':'-separated)")
# the engine
declare("engine.accel", "CORRAL_ACCEL", _str, "",
        "the accelerator, kvm or tcg (default: kvm where the host really offers it)")
declare("engine.qemu_user", "CORRAL_QEMU_USER", _str, "corral-qemu",
        "the unprivileged system user QEMU runs as (made if missing; root: the daemon's user)")
declare("engine.sandbox", "CORRAL_SANDBOX", _bool, True,
        "QEMU's seccomp filter (-sandbox on,obsolete,elevateprivileges,spawn,resourcecontrol=deny)")
declare("engine.memory_overhead", "CORRAL_QEMU_MEMORY_OVERHEAD", _size, None,
        "memory a QEMU may use over its guest's RAM (1G under TCG, 256M with KVM)")
declare("engine.pids_max", "CORRAL_QEMU_PIDS_MAX", _int, 512,
        "processes and threads one QEMU may have")
# the host's capacity and the scheduler
declare("host.cpus", "CORRAL_HOST_CPUS", _int, None, "the CPUs to offer (all the host's)")
declare("host.memory", "CORRAL_HOST_MEMORY", _size, None, "the memory to offer (all the host's)")
declare("scheduler.cpu_ratio", "CORRAL_CPU_RATIO", _float, 4.0,
        "vCPUs allowed per host CPU", live=True)
declare("scheduler.memory_ratio", "CORRAL_MEMORY_RATIO", _float, 1.0,
        "guest memory allowed per byte of host memory", live=True)
declare("scheduler.disk_ratio", "CORRAL_DISK_RATIO", _float, 1.0,
        "virtual disk bytes allowed per byte of host disk", live=True)
declare("scheduler.queue_policy", "CORRAL_QUEUE_POLICY", _choice("fcfs", "sjf", "priority", "fair"),
        "fcfs", "the admission queue's order: fcfs, sjf, priority or fair", live=True)
declare("scheduler.backfill", "CORRAL_BACKFILL", _bool, False,
        "let smaller requests pass a head of the queue that does not fit", live=True)
declare("scheduler.timeslice_slots", "CORRAL_TIMESLICE_SLOTS", _int, None,
        "time-sliced VMs running at once (one per host CPU)")
declare("scheduler.quantum", "CORRAL_QUANTUM", _float, 2.0,
        "the time slice of round-robin VMs, in seconds", live=True)
# the web page, metrics and the event stream
declare("web.listen", "CORRAL_WEB_LISTEN", _listen, None,
        "also serve the API and the web page on this loopback HOST:PORT (off by default)")
declare("events.queue", "CORRAL_EVENTS_QUEUE", _int, 1000,
        "events a stream client may fall behind before it is dropped (it then resumes)")
declare("metrics.interval", "CORRAL_METRICS_INTERVAL", _float, 2.0,
        "seconds between two gatherings of every VM's figures (CPU, memory, IO)")

# the remote API (TLS beside the unix socket) and its clients
declare("api.listen", "CORRAL_LISTEN", _str, "",
        "ADDR:PORT to serve the API over TLS with tokens (empty: the unix socket only)")
declare("api.tls_cert", "CORRAL_TLS_CERT", _str, "",
        "the server's certificate (PEM); empty: HOME/tls/server.crt, made on first start")
declare("api.tls_key", "CORRAL_TLS_KEY", _str, "",
        "the server certificate's private key (PEM); empty: HOME/tls/server.key")
declare("api.rate", "CORRAL_API_RATE", _float, 50.0,
        "requests per second one token may make (sustained); more are answered 429")
declare("api.burst", "CORRAL_API_BURST", _int, 100,
        "requests one token may make at once before the rate applies")
declare("client.url", "CORRAL_URL", _str, "",
        "the CLI and Client: a remote daemon's https://HOST:PORT instead of the socket")
declare("client.token", "CORRAL_TOKEN", _str, "", "the CLI and Client: the remote's token")
declare("client.fingerprint", "CORRAL_FINGERPRINT", _str, "",
        "the CLI and Client: the SHA-256 fingerprint the remote's certificate must have")
declare("client.ca", "CORRAL_CA", _str, "",
        "the CLI and Client: a CA (PEM file) that signs the remote's certificate")


def value(key: str, env: Mapping[str, str] | None = None) -> Any:
    """The value in force of setting ``key`` (its default when no layer sets it).

    :raises SettingError: when a layer holds a value that does not parse.
    """
    setting = SETTINGS[key]
    env = os.environ if env is None else env
    if setting.env:
        text = env.get(setting.env)
        if text:
            return setting.from_text(text, setting.env)
    return setting.default

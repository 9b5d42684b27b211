"""Every setting of the daemon, declared once: its key, its environment variable, how its
value is parsed, its default, one line of help, and whether it may change while the daemon
runs. Stdlib only: the CLI imports this on its lean path.

A setting's value comes from, in rising precedence: its default, the configuration file,
the environment, a command-line flag, and (for ``live`` settings) a change made at run
time (``corral host set``). :func:`value` reads them; code reads settings only through it,
never ``os.environ`` directly, so that :func:`table` (``corral config show``) can tell every
value in force and where it came from.

The configuration file is TOML (:func:`config_path`: ``--config``, else ``$CORRAL_CONFIG``,
else ``HOME/corral.toml``, else ``/etc/corral/corral.toml``, the first that exists). A key's
dotted name is its table and its name: ``[scheduler]`` ``cpu_ratio = 2.0`` sets
``scheduler.cpu_ratio``. An unknown key or a value that does not parse is an error naming
the file, the line and the reason.
"""

from __future__ import annotations

import os

from corral.errors import InvalidSpec
from corral.settings_parse import (
    _accel,
    _bool,
    _choice,
    _float,
    _int,
    _labels,
    _listen,
    _paths,
    _str,
)

TYPE_CHECKING = False  # typing (and pathlib) are slow to import; the CLI imports this module
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path
    from typing import Any

SYSTEM_CONFIG = "/etc/corral/corral.toml"


class SettingError(InvalidSpec, ValueError):
    """A setting's value cannot be parsed, or a file names no setting: the message names
    where (the file and line, the variable or the flag), the setting and the reason."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(key, message)
        self.message = message
        self.args = (message,)


def _size(text: str) -> int:
    from corral.domain.sizes import parse_size
    return parse_size("size", text)


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
            raise SettingError(self.key, f"{where}: {self.key} = {text!r}: {err}") from err


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
# what a client may name or send (the daemon never opens a path a client names with its
# own rights: files travel as uploads, and only disks used in place name a path)
declare("paths.allowed", "CORRAL_ALLOWED_PATHS", _paths, [],
        "directories whose files a client may name to be used in place, e.g. raw disks "
        "(':'-separated; empty: none)")
declare("uploads.max_size", "CORRAL_UPLOAD_MAX", _size, 64 << 30,
        "the largest file a client may upload (kernels, images, VM exports)")
declare("uploads.ttl", "CORRAL_UPLOAD_TTL", _float(1, 1e6), 3600.0, "seconds unused uploads last")
# the engine
declare("engine.accel", "CORRAL_ACCEL", _accel, "",
        "the accelerator, kvm or tcg (default: kvm where the host really offers it)")
declare("engine.qemu_user", "CORRAL_QEMU_USER", _str, "corral-qemu",
        "the unprivileged system user QEMU runs as (made if missing; root: the daemon's user)")
declare("engine.sandbox", "CORRAL_SANDBOX", _bool, True,
        "QEMU's seccomp filter (-sandbox on,obsolete,elevateprivileges,spawn,resourcecontrol=deny)")
declare("engine.memory_overhead", "CORRAL_QEMU_MEMORY_OVERHEAD", _size, None,
        "memory a QEMU may use over its guest's RAM (1G under TCG, 256M with KVM)")
declare("engine.pids_max", "CORRAL_QEMU_PIDS_MAX", _int(32, 99999), 512, "threads per QEMU")
declare("engine.guard_linger", "CORRAL_GUARD_LINGER", _float(0, 86400), 30.0,
        "seconds the host guard stays after the last QEMU ends (0: it goes at once)")
# the host's capacity and the scheduler
declare("host.cpus", "CORRAL_HOST_CPUS", _int(1, 4096), None, "the CPUs to offer (all the host's)")
declare("host.memory", "CORRAL_HOST_MEMORY", _size, None, "the memory to offer (all the host's)")
declare("scheduler.cpu_ratio", "CORRAL_CPU_RATIO", _float(0.01, 1000), 4.0,
        "vCPUs allowed per host CPU", live=True)
declare("scheduler.memory_ratio", "CORRAL_MEMORY_RATIO", _float(0.01, 1000), 1.0,
        "guest memory allowed per byte of host memory", live=True)
declare("scheduler.disk_ratio", "CORRAL_DISK_RATIO", _float(0.01, 1000), 1.0,
        "virtual disk bytes allowed per byte of host disk", live=True)
declare("scheduler.queue_policy", "CORRAL_QUEUE_POLICY", _choice("fcfs", "sjf", "priority", "fair"),
        "fcfs", "the admission queue's order: fcfs, sjf, priority or fair", live=True)
declare("scheduler.backfill", "CORRAL_BACKFILL", _bool, False,
        "let smaller requests pass a head of the queue that does not fit", live=True)
declare("scheduler.timeslice_slots", "CORRAL_TIMESLICE_SLOTS", _int(1, 4096), None,
        "time-sliced VMs running at once (one per host CPU)")
declare("scheduler.boot_concurrency", "CORRAL_BOOT_CONCURRENCY", _int(0, 4096), None,
        "cold boots at once until their guests answer (default: the CPUs; KVM: twice; 0: none)")
declare("scheduler.quantum", "CORRAL_QUANTUM", _float(0.05, 3600), 2.0,
        "the time slice of round-robin VMs, in seconds", live=True)
# snapshots and warm starts
declare("snapshots.background_template", "CORRAL_BACKGROUND_TEMPLATE", _bool, True,
        "make a memory snapshot's warm-start template (a copy of its disks and RAM) right "
        "after it, in the background, so that the first warm start is fast", live=True)
# the web page, metrics and the event stream
declare("web.listen", "CORRAL_WEB_LISTEN", _listen, None,
        "also serve the API and the web page on this loopback HOST:PORT (off by default)")
declare("events.queue", "CORRAL_EVENTS_QUEUE", _int(1, 1000000), 1000,
        "events a stream client may fall behind before it is dropped (it then resumes)")
declare("metrics.interval", "CORRAL_METRICS_INTERVAL", _float(0.1, 3600), 2.0,
        "seconds between two gatherings of every VM's figures (CPU, memory, IO)")
declare("scheduler.weigher", "CORRAL_WEIGHER", _choice("spread", "pack"), "spread",
        "where placement puts a VM among the hosts that fit: spread (most free memory) or "
        "pack (least free memory that fits)", live=True)
# several hosts: one cluster on PostgreSQL
declare("cluster.url", "CORRAL_CLUSTER", _str, "",
        "a PostgreSQL URL (postgresql://user@host/db): join that cluster (empty: one host, "
        "SQLite)")
declare("cluster.host", "CORRAL_HOST_NAME", _str, "",
        "this host's name in the cluster (default: the machine's host name)")
declare("cluster.address", "CORRAL_HOST_ADDRESS", _str, "",
        "the address other hosts reach this one's API at (host:port)")
declare("cluster.labels", "CORRAL_HOST_LABELS", _labels, {},
        "this host's labels, key=value,key=value (placement's --on)")
declare("cluster.token", "CORRAL_JOIN_TOKEN", _str, "",
        "the join token (corral cluster token) a host needs to join a cluster that has hosts")
declare("cluster.heartbeat", "CORRAL_HEARTBEAT", _float(0.05, 60), 1.0,
        "seconds between a host's heartbeats (and the leader's rounds)")
declare("cluster.down_after", "CORRAL_DOWN_AFTER", _float(0.5, 3600), 6.0,
        "seconds without a heartbeat after which a host is down")
declare("cluster.migrate_tls", "CORRAL_MIGRATE_TLS", _bool, True, "encrypt live migrations "
        "with QEMU TLS (a CA each) when both hosts have it on; else in clear, and show says so")
declare("cluster.shared", "CORRAL_SHARED_DIR", _str, "",
        "a directory every host mounts (NFS, Ceph…): --ha VMs keep their files there")
declare("cluster.max_skew", "CORRAL_MAX_CLOCK_SKEW", _float(0, 86400), 30.0, "how far (seconds) a "
        "joining host's clock may be from the store's")
# the remote API (TLS beside the unix socket) and its clients
declare("api.listen", "CORRAL_LISTEN", _str, "",
        "ADDR:PORT to serve the API over TLS with tokens (empty: the unix socket only)")
declare("api.tls_cert", "CORRAL_TLS_CERT", _str, "",
        "the server's certificate (PEM); empty: HOME/tls/server.crt, made on first start")
declare("api.tls_key", "CORRAL_TLS_KEY", _str, "",
        "the server certificate's private key (PEM); empty: HOME/tls/server.key")
declare("api.rate", "CORRAL_API_RATE", _float(0.01, 1000000), 50.0,
        "requests per second one token may make (sustained); more are answered 429")
declare("api.burst", "CORRAL_API_BURST", _int(1, 1000000), 100,
        "requests one token may make at once before the rate applies")
declare("client.url", "CORRAL_URL", _str, "",
        "the CLI and Client: a remote daemon's https://HOST:PORT instead of the socket")
declare("client.token", "CORRAL_TOKEN", _str, "", "the CLI and Client: the remote's token")
declare("client.fingerprint", "CORRAL_FINGERPRINT", _str, "",
        "the CLI and Client: the SHA-256 fingerprint the remote's certificate must have")
declare("client.ca", "CORRAL_CA", _str, "",
        "the CLI and Client: a CA (PEM file) that signs the remote's certificate")
# the daemon's log
declare("log.format", "CORRAL_LOG_FORMAT", _choice("text", "json"), "text",
        "the daemon's log lines: text, or json (one object per line, for a journal)")
declare("log.level", "CORRAL_LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info",
        "the daemon's least important log lines: debug, info, warning or error")


def declared(key: str) -> Setting:
    """The setting ``key``; a short name also does (``cpu-ratio`` is
    ``scheduler.cpu_ratio``) when only one setting ends with it.

    :raises SettingError: no setting (or more than one) has that name.
    """
    norm = key.strip().replace("-", "_")
    if norm in SETTINGS:
        return SETTINGS[norm]
    found = [s for k, s in SETTINGS.items() if k.rpartition(".")[2] == norm]
    if len(found) == 1:
        return found[0]
    import difflib

    close = difflib.get_close_matches(norm, list(SETTINGS), n=1)
    hint = f"; did you mean {close[0]}?" if close else "; see 'corral config show'"
    raise SettingError(key, f"no setting named '{key}'{hint}")


class _Layers:
    """The values set by the file, flags and run-time changes (the environment is read
    when asked): ``key -> (value, where)``."""

    def __init__(self) -> None:
        self.file: dict[str, tuple[Any, str]] = {}
        self.file_path: str | None = None
        self.file_stamp: tuple[float, int] | None = None
        self.explicit = False  # the file was named (--config): no search for another
        self.flags: dict[str, tuple[Any, str]] = {}
        self.live: dict[str, tuple[Any, str]] = {}


_layers = _Layers()


def reset() -> None:
    """Forget the file, the flags and the run-time changes (a new daemon, or a test)."""
    global _layers
    _layers = _Layers()


def _default_home(env: Mapping[str, str]) -> str:
    text = env.get("CORRAL_HOME")
    if text:
        return os.path.abspath(os.path.expanduser(text))
    if os.geteuid() == 0:
        return "/var/lib/corral"
    return os.path.join(os.path.expanduser("~"), ".local", "share", "corral")


def socket_file() -> str:
    """The daemon's socket: the setting ``socket``, else HOME/corral.sock (what
    :func:`corral.config.default_socket` tells, as text: the CLI's quick path has no pathlib)."""
    sock = value("socket")
    if sock:
        return os.path.abspath(os.path.expanduser(str(sock)))
    home = value("home")
    return os.path.join(_default_home({"CORRAL_HOME": home} if home else {}), "corral.sock")


def config_path(env: Mapping[str, str] | None = None) -> Path | None:
    """The configuration file to read when none is named: ``$CORRAL_CONFIG``, else
    ``HOME/corral.toml``, else ``/etc/corral/corral.toml``, the first that exists.
    :raises SettingError: ``$CORRAL_CONFIG`` names no file."""
    found = _config_file(os.environ if env is None else env)
    return None if found is None else _path(found)


def _config_file(env: Mapping[str, str]) -> str | None:
    """:func:`config_path` as text: the CLI's quick path has no pathlib."""
    named = env.get("CORRAL_CONFIG")
    found = os.path.abspath(os.path.expanduser(named)) if named else next(
        (p for p in (os.path.join(_default_home(env), "corral.toml"), SYSTEM_CONFIG)
         if os.path.isfile(p)), None)  # (False for a directory this user may not enter)
    if named and not os.path.isfile(str(found)):
        raise SettingError("config", f"CORRAL_CONFIG: no file {found}")
    return found


def _path(text: str) -> Path:
    from pathlib import Path  # (not on the CLI's quick path)
    return Path(text)


def load_file(path: Path | str) -> None:
    """Read the configuration file ``path`` (``--config``) in place of any other.

    :raises SettingError: it is missing, is not TOML, names an unknown setting or holds a
        value that does not parse (the message names the file and the line)."""
    text = str(_path(str(path)).expanduser().absolute())
    _layers.file = _read(text)
    _layers.file_path, _layers.explicit = text, True


def _read(path: str) -> dict[str, tuple[Any, str]]:
    from corral import settings_file

    try:
        return settings_file.read(path, SETTINGS)
    except settings_file.FileError as err:
        if isinstance(err.__cause__, SettingError):
            raise err.__cause__ from None
        raise SettingError(err.key or "config", err.message) from err


def _file_layer() -> dict[str, tuple[Any, str]]:
    """The file's values, (re)read when the file to use or its contents changed."""
    if _layers.explicit:
        return _layers.file
    path = _config_file(os.environ)
    if path is None:
        _layers.file, _layers.file_path, _layers.file_stamp = {}, None, None
        return _layers.file
    st = os.stat(path)
    stamp = (st.st_mtime, st.st_size)
    if path != _layers.file_path or stamp != _layers.file_stamp:
        _layers.file = _read(path)
        _layers.file_path, _layers.file_stamp = path, stamp
    return _layers.file


def file_path() -> Path | None:
    """The configuration file in use (None: none)."""
    _file_layer()
    return None if _layers.file_path is None else _path(_layers.file_path)


def set_flag(key: str, text: str, where: str | None = None) -> None:
    """A value given on the command line (``--set KEY=VALUE``).

    :raises SettingError: no such setting, or the value does not parse.
    """
    setting = declared(key)
    where = where or f"--set {setting.key}"
    _layers.flags[setting.key] = (setting.from_text(text, where), where)


def set_live(key: str, text: str, take_up: Callable[[], None] = lambda: None,
             where: str = "corral host set") -> tuple[Setting, Any, Any]:
    """Change a ``live`` setting of the running daemon and call ``take_up`` to apply it
    (when that raises, the change is undone); returns the setting, the value it had and the
    new one.

    :raises SettingError: no such setting, it cannot change at run time, or the value does
        not parse.
    """
    setting = declared(key)
    if not setting.live:
        raise SettingError(setting.key, f"{setting.key} cannot change while the daemon runs; "
                                        "set it in the configuration file and restart")
    old = value(setting.key)
    new = setting.from_text(text, where)
    before = _layers.live.get(setting.key)
    _layers.live[setting.key] = (new, where)
    try:
        take_up()
    except BaseException:
        if before is None:
            del _layers.live[setting.key]
        else:
            _layers.live[setting.key] = before
        raise
    return setting, old, new


def _lookup(setting: Setting, env: Mapping[str, str]) -> tuple[Any, str]:
    for layer in (_layers.live, _layers.flags):
        if setting.key in layer:
            return layer[setting.key]
    if setting.env:
        text = env.get(setting.env)
        if text:
            return setting.from_text(text, setting.env), f"environment {setting.env}"
    found = _file_layer().get(setting.key)
    if found is not None:
        return found
    return setting.default, "default"


def value(key: str, env: Mapping[str, str] | None = None) -> Any:
    """The value in force of setting ``key`` (its default when no layer sets it).

    :raises SettingError: when a layer holds a value that does not parse.
    """
    return _lookup(SETTINGS[key], os.environ if env is None else env)[0]


def source(key: str, env: Mapping[str, str] | None = None) -> str:
    """Where the value in force of ``key`` comes from: ``default``, ``FILE:LINE``,
    ``environment VAR``, ``--set KEY`` (or the flag) or ``corral host set``."""
    return _lookup(SETTINGS[key], os.environ if env is None else env)[1]


def table(env: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Every setting: key, value in force, where it comes from, its variable, whether it
    can change at run time, and its help.

    :raises SettingError: when a layer holds a value that does not parse.
    """
    env = os.environ if env is None else env
    out = []
    for key, setting in SETTINGS.items():
        val, where = _lookup(setting, env)
        out.append({"key": key, "value": val, "source": where, "env": setting.env,
                    "live": setting.live, "doc": setting.doc})
    return out

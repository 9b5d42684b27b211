"""The CLI without a daemon: help pages, argument parsing, clear errors, a lean import."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from corral.cli import render
from corral.cli.main import build_parser, main
from corral.errors import InvalidSpec

COMMANDS = ["serve", "create", "run", "start", "pause", "resume", "shutdown", "stop", "reboot",
            "exec", "cp", "ip", "save", "restore", "export", "import", "clone", "model",
            "simulate", "queue", "trace",
            "rm", "list", "show", "console", "logs", "disk rm", "snapshot rm", "network rm",
            "router rm", "attach-disk", "detach-disk", "attach-nic", "detach-nic"]


@pytest.mark.parametrize("command", [*COMMANDS, "host info", "image build", "image list",
                                     "image import", "image rm"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*command.split(), "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: corral " + command)


def test_top_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "exit status:" in out and "CORRAL_HOME" in out


def test_daemon_not_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["list", "--socket", str(tmp_path / "none.sock")])
    err = capsys.readouterr().err
    assert code == 8
    assert err.count("\n") == 1 and "corral serve" in err and "Traceback" not in err


class _Refused:
    """A unix socket whose connect the kernel refuses: the daemon's socket is 0600 and this
    user is not its owner."""

    def __init__(self, *_args: object) -> None:
        pass

    def settimeout(self, _timeout: float) -> None:
        pass

    def connect(self, _path: str) -> None:
        raise PermissionError(13, "Permission denied")

    def close(self) -> None:
        pass


@pytest.mark.parametrize("argv", [["list"], ["list", "--json"], ["show", "vm"], ["pause", "vm"]])
def test_a_socket_of_another_user_is_one_line(argv: list[str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from corral import wire
    from corral.cli import quick

    monkeypatch.setattr(wire, "unix_socket", _Refused)
    monkeypatch.setattr(quick, "unix_socket", _Refused)
    code = main([*argv, "--socket", str(tmp_path / "corral.sock")])
    err = capsys.readouterr().err
    assert code == 8, err
    assert err.count("\n") == 1 and "no permission to use" in err and "Traceback" not in err


def test_disk_and_nic_options() -> None:
    assert render.parse_disk("2G") == {"size": "2G"}
    assert render.parse_disk("path=/x.img,format=raw,readonly=on") == {
        "path": "/x.img", "format": "raw", "readonly": True}
    assert render.parse_nic("user,mac=52:54:00:00:00:09") == {"mode": "user",
                                                              "mac": "52:54:00:00:00:09"}
    with pytest.raises(InvalidSpec):
        render.parse_disk("size=1G,colour=red")
    with pytest.raises(InvalidSpec):
        render.parse_nic("user,vlan=3")


def test_cli_import_stays_lean() -> None:
    code = ("import sys, corral.cli.main, corral.client, corral.remote; "
            "from corral.cli import vms, guest, disks, snapshots, networks, routers, host, "
            "access, remotes; "
            "corral.client.Client(); corral.remote.current(); "  # what a local command does
            "heavy = {'fastapi', 'sqlalchemy', 'pydantic', 'uvicorn', 'qemu', 'asyncio', "
            "'typing', 'typing_extensions', 'email', 'ssl', 'cryptography'}; "
            "print(sorted(heavy & {m.split('.')[0] for m in sys.modules} "
            "| {'corral.views'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("alias", ["destroy", "delete"])
def test_rm_keeps_its_old_names(alias: str) -> None:
    args = build_parser(alias).parse_args([alias, "web"])
    assert args.func is build_parser("rm").parse_args(["rm", "web"]).func
    assert args.name == ["web"]


def test_run_accepts_wait_and_export_live() -> None:
    args = build_parser("run").parse_args(["run", "web", "--wait"])
    assert args.wait and not args.no_wait
    assert build_parser("export").parse_args(["export", "web", "f", "--live"]).live


def test_adding_a_remote_nobody_serves_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["remote", "add", "lab", f"https://127.0.0.1:{port}", "--token", "t"])
    err = capsys.readouterr().err
    assert code == 8 and err == (f"corral: error: no Corral daemon answers at "
                                 f"https://127.0.0.1:{port}; is it serving with --listen?\n")
    assert not (tmp_path / "corral" / "remotes.json").exists()


@pytest.mark.parametrize(("argv", "usage"), [
    (["disk", "resize", "d1", "--size", "1G"], "usage: corral disk resize "),
    (["pause", "web", "--bogus"], "usage: corral pause "),
    (["list", "extra"], "usage: corral list "),
    (["--remote", "lab", "snapshot", "create", "web", "s", "--zz"],
     "usage: corral snapshot create "),
])
def test_an_unknown_argument_shows_its_commands_usage(argv: list[str], usage: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Not corral's whole usage line, which says nothing of the command's arguments."""
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage) and "error: unrecognized arguments: " in err

"""The CLI's lean paths: the commands run in loops, given only their NAME (and --json), get
exactly the arguments argparse would give them, without argparse (``corral.cli.main.LEAN``);
on this host's daemon they answer exactly as the full path does, without the Client or the
json module (``corral.cli.quick``, ``corral.wire_json``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import corral
from corral import remote, wire_json
from corral.cli import quick
from corral.cli.main import LEAN, build_parser, lean, main
from corral.client import Client

from .served import Served, served


def _argvs(word: str) -> list[list[str]]:
    named = LEAN[word][2]
    base = [word, "web-1"] if named else [word]
    return [base, [*base, "--json"], [word, "--json", *base[1:]]]


@pytest.mark.parametrize("word", sorted(LEAN))
def test_a_lean_command_gets_what_argparse_would_give_it(word: str) -> None:
    for argv in _argvs(word):
        fast = lean(argv)
        assert fast is not None, argv
        assert vars(fast) == vars(build_parser(word).parse_args(argv)), argv


@pytest.mark.parametrize("argv", [
    [], ["pause"], ["pause", "a", "b"], ["pause", "web", "--bogus"], ["pause", "-h"],
    ["pause", "--help"], ["list", "--host", "h1"], ["list", "web"], ["show", "web", "--explain"],
    ["--remote", "lab", "list"], ["--socket=/s", "pause", "web"], ["exec", "web", "--", "ls"],
    ["start", "web"], ["pause", "--", "web"], ["pause", "-x"], ["list", "--json=1"],
    ["--json", "list"],
])
def test_anything_else_goes_through_argparse(argv: list[str]) -> None:
    assert lean(argv) is None


def test_the_lean_path_imports_no_argparse() -> None:
    code = ("import sys; from corral.cli.main import lean; "
            "args = lean(['pause', 'web']); "
            "import corral.client; corral.client.Client(); "
            "print(args.func.__name__, sorted({'argparse', 'gettext', 'locale', 'pathlib', "
            "'socket', 'urllib', 'contextlib'} & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "cmd_pause []"


# --- the quick path (corral.cli.quick): no argparse, no Client, no json ---------------------

@pytest.mark.parametrize("argv", [
    ["list"], ["list", "--json"], ["show", "web-1"], ["pause", "web-1"],
    ["resume", "--json", "web-1"], ["list", "--json", "--json"],
])
def test_the_quick_path_takes_what_the_lean_one_takes(argv: list[str]) -> None:
    word, name, as_json = quick.command(argv) or ("", None, False)
    args = lean(argv)
    lean_name = getattr(args, "name", None)
    if isinstance(lean_name, list):  # pause and resume take one or more names
        [lean_name] = lean_name
    assert (word, name, as_json) == (args.command, lean_name, args.json)


@pytest.mark.parametrize("argv", [
    [], ["pause"], ["pause", "a", "b"], ["pause", "web", "--bogus"], ["pause", "-h"],
    ["list", "--host", "h1"], ["show", "web", "--explain"], ["--remote", "lab", "list"],
    ["pause", "--", "web"], ["pause", "we/b"], ["pause", "."], ["pause", "w%20b"],
    ["pause", "x" * 256], ["start", "web"], ["--json", "list"],
])
def test_the_quick_path_leaves_the_rest_to_argparse(argv: list[str]) -> None:
    assert quick.command(argv) is None


def test_a_remote_in_use_takes_the_full_path(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("CORRAL_URL", raising=False)
    monkeypatch.setenv("CORRAL_SOCKET", str(tmp_path / "s.sock"))
    assert quick.socket_path() == str(tmp_path / "s.sock")
    (tmp_path / "corral").mkdir()
    remotes = tmp_path / "corral" / "remotes.json"
    for current, local in (("local", True), (None, True), ("lab", False)):
        remotes.write_text(json.dumps({"current": current, "remotes": {}}))
        assert (quick.socket_path() is not None) is local
        assert (remote.current() is None) is local
    remotes.write_text("{not json")
    assert quick.socket_path() is not None
    monkeypatch.setenv("CORRAL_URL", "https://10.0.0.1:8443")
    remotes.unlink()
    assert quick.socket_path() is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@given(JSON)
def test_json_without_the_json_module_is_the_same(value: Any) -> None:
    text = json.dumps(value, indent=2, sort_keys=True)
    assert wire_json.dumps(json.loads(text)) == text
    compact = json.dumps(value).encode()
    assert json.dumps(wire_json.loads(compact)) == json.dumps(json.loads(compact))
    assert json.dumps(wire_json.loads(b" \r\n" + compact + b"\t")) == compact.decode()


@pytest.mark.parametrize("data", [b"", b"[1,", b"[1] x", b"{'a': 1}", b"\xff\xfe", b"nul"])
def test_json_that_is_not_json_raises_as_json_does(data: bytes) -> None:
    with pytest.raises(ValueError) as ours:
        wire_json.loads(data)
    with pytest.raises(ValueError) as theirs:
        json.loads(data)
    assert str(ours.value) == str(theirs.value)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served(tmp_path_factory.mktemp("quick") / "home") as d:
        with Client(d.socket) as c:
            c.create("defined1")
            c.create("defined2", memory="128M")
        yield d


QUICK_ROWS = [["list"], ["list", "--json"], ["show", "defined1"], ["show", "defined2", "--json"],
              ["pause", "defined1"], ["resume", "defined1"], ["pause", "nope"],
              ["show", "nope", "--json"]]


@pytest.mark.parametrize("argv", QUICK_ROWS, ids=[" ".join(r) for r in QUICK_ROWS])
def test_the_quick_path_answers_as_the_full_one(
        daemon: Served, argv: list[str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_URL", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(daemon.home / "no-remotes"))
    monkeypatch.setenv("CORRAL_SOCKET", str(daemon.socket))
    quick.answered = False
    fast = (main(argv), *capsys.readouterr())
    assert quick.answered
    quick.answered = False
    full = (main([*argv, "--socket", str(daemon.socket)]), *capsys.readouterr())
    assert not quick.answered
    if argv[0] in ("list", "show"):  # (an uptime would differ; these VMs have none)
        assert "uptime_seconds" not in fast[1] or '"uptime_seconds": null' in fast[1]
    assert fast == full
    if fast[0]:
        assert fast[2].startswith("corral: error: ") and fast[2].count("\n") == 1


def test_verbs_take_several_names_and_go_on_past_an_error(
        daemon: Served, capsys: pytest.CaptureFixture[str]) -> None:
    """``corral rm a nope b`` removes a and b, says what was wrong with nope in one line, and
    exits with its status; with --json, the list of what was done."""
    sock = ["--socket", str(daemon.socket)]
    with Client(daemon.socket) as c:
        for name in ("many-a", "many-b", "many-c"):
            c.create(name)
    assert main(["pause", "many-a", "many-b", *sock]) == 5  # defined: not running
    _, err = capsys.readouterr()
    assert err.splitlines() == [f"corral: error: cannot pause VM '{name}': it is defined "
                                "(needs running)" for name in ("many-a", "many-b")]
    assert main(["rm", "many-a", "nope", "many-b", "many-a", *sock]) == 3
    out, err = capsys.readouterr()
    assert out.splitlines() == ["destroyed many-a", "destroyed many-b"]
    assert err.count("\n") == 1 and "nope" in err
    assert main(["rm", "many-c", "--json", *sock]) == 0  # one name: one object, as before
    assert json.loads(capsys.readouterr().out) == {"name": "many-c", "destroyed": True}
    with Client(daemon.socket) as c:
        c.create("many-d")
    assert main(["rm", "many-d", "nope", "--json", *sock]) == 3
    assert json.loads(capsys.readouterr().out) == [{"name": "many-d", "destroyed": True}]
    with Client(daemon.socket) as c:
        assert not {"many-a", "many-b", "many-c", "many-d"} & {v["name"] for v in c.list()}


def test_no_daemon_is_reported_by_the_full_path(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CORRAL_URL", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("CORRAL_SOCKET", str(tmp_path / "none.sock"))
    assert quick.run(["list"]) is None  # stepped aside before sending anything
    assert main(["list"]) == 8
    assert "not running" in capsys.readouterr().err


def test_the_command_without_site_imports_only_what_it_needs(daemon: Served) -> None:
    """The installed script, started with -S as `make install` writes it: the quick path
    imports neither json nor re (nor what they pull in), and the full path still works."""
    src = str(Path(corral.__file__).parents[1])
    env = {**os.environ, "CORRAL_SOCKET": str(daemon.socket), "PYTHONPATH": src,
           "XDG_CONFIG_HOME": str(daemon.home / "no-remotes")}
    env.pop("CORRAL_URL", None)
    code = ("import sys; from corral.cli.main import main; main(['list']); "
            "print(sorted({'json', 're', 'enum', 'collections', 'argparse', 'typing', "
            "'functools', 'corral.client', 'site'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]" and "defined1" in out
    script = str(Path(src).parent / "packaging" / "corral")
    for argv, expect in ((["list"], "defined2"), (["show", "defined2"], "128M"),
                         (["list", "--host", "h1"], "NAME"), (["--version"], "corral 0.1.0")):
        res = subprocess.run([sys.executable, "-S", script, *argv], env=env,
                             capture_output=True, text=True, check=False)
        assert (res.returncode, res.stderr) == (0, "") and expect in res.stdout, argv
    res = subprocess.run([sys.executable, "-S", script, "pause", "nope"], env=env,
                         capture_output=True, text=True, check=False)
    assert (res.returncode, res.stdout) == (3, "")
    assert res.stderr == "corral: error: no VM named 'nope'; see 'corral list'\n"

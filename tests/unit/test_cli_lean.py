"""The CLI's lean path (``corral.cli.main.LEAN``): the commands run in loops, given only their
NAME (and --json), get exactly the arguments argparse would give them, without argparse."""

from __future__ import annotations

import subprocess
import sys

import pytest

from corral.cli.main import LEAN, build_parser, lean


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

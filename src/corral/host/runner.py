"""The one way Corral runs a host command.

Every subprocess goes through :func:`run` (or :func:`arun` from async code) so that failures
always carry argv, exit code, stdout and stderr, and so that unit tests can swap in a fake.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.errors import CommandFailed


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(argv: Sequence[str | Path], *, check: bool = True, timeout: float | None = 600,
        cwd: Path | None = None, env: Mapping[str, str] | None = None,
        input: str | None = None, what: str | None = None) -> Result:
    """Run ``argv`` and return its output.

    :raises CommandFailed: when the command cannot be started, exits non-zero (with
        ``check``) or outlives ``timeout``.
    """
    args = [str(a) for a in argv]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              env=dict(env) if env is not None else None, input=input)
    except FileNotFoundError as err:
        raise CommandFailed(args, 127, f"{args[0]}: not installed", what=what) from err
    except subprocess.TimeoutExpired as err:
        raise CommandFailed(args, -1, f"timed out after {timeout} s", what=what) from err
    result = Result(args, proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise CommandFailed(args, proc.returncode, proc.stderr, proc.stdout, what=what)
    return result


async def arun(argv: Sequence[str | Path], *, check: bool = True, timeout: float | None = 600,
               what: str | None = None) -> Result:
    """:func:`run` for async code; does not block the event loop."""
    return await asyncio.to_thread(run, argv, check=check, timeout=timeout, what=what)


def run_streaming(argv: Sequence[str | Path], on_output: Callable[[bytes], None], *,
                  what: str | None = None) -> Result:
    """:func:`run` for a long command whose stdout reports progress: ``on_output`` gets each
    chunk of stdout as it comes (the result's ``stdout`` is empty).

    :raises CommandFailed: when the command cannot be started or exits non-zero.
    """
    args = [str(a) for a in argv]
    try:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError as err:
        raise CommandFailed(args, 127, f"{args[0]}: not installed", what=what) from err
    with proc:
        assert proc.stdout is not None and proc.stderr is not None
        while chunk := os.read(proc.stdout.fileno(), 4096):
            on_output(chunk)
        stderr = proc.stderr.read().decode(errors="replace")
        returncode = proc.wait()
    if returncode != 0:
        raise CommandFailed(args, returncode, stderr, what=what)
    return Result(args, returncode, "", stderr)
